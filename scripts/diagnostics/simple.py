import sys, time, os, torch, torch.nn as nn, torch.nn.functional as F
from aurora.registry import RNN
import aurora.components
from aurora.components.vision.siglip import sincos_2d
torch.manual_seed(0)
name = sys.argv[1]; task = sys.argv[2]; steps = int(sys.argv[3]); lr = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-3
kw = dict(vocab_size=65536, d_model=128, n_layer=2)
if name.startswith("rwkv"): kw["head_size"] = 32
if name == "transformer": kw["n_head"] = 4
rnn = RNN.build({"name": name, **kw})
pe = sincos_2d(8, 8, 64)
proj = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128))
TEMB = os.environ.get('TEMB')
temb = nn.Parameter(torch.randn(4, 64) * 0.5)
params = list(rnn.parameters()) + list(proj.parameters()) + ([temb] if TEMB else [])
opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
ans = torch.tensor([1000, 1001, 1002, 1003]); q = torch.tensor([500, 501, 502])
F_ = 4
def batch(B):
    idx = torch.randint(0, 64, (B, F_))
    if task == "last_row": y = (idx[:, -1] // 8 >= 4).long()
    elif task == "first_row": y = (idx[:, 0] // 8 >= 4).long()
    elif task == "row_cmp": y = (idx[:, -1] // 8 > idx[:, 0] // 8).long()
    return (pe[idx] + temb) if TEMB else pe[idx], y
def run(B=16):
    v, y = batch(B)
    e = torch.cat([rnn.embed(q.expand(B, -1)), proj(v), rnn.embed(q.expand(B, -1))], 1)
    h, _ = rnn(e)
    lg = rnn.logits(h[:, -1])[:, ans[:2]]
    return F.cross_entropy(lg, y), (lg.argmax(-1) == y).float().mean()
t0 = time.time()
for step in range(1, steps + 1):
    loss, acc = run()
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 0:
        with torch.no_grad(): a = sum(run(128)[1] for _ in range(2)) / 2
        print(step, f"loss {loss.item():.3f} acc {a:.3f} {time.time()-t0:.0f}s", flush=True)
