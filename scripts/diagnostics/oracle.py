import sys, time, math, torch, torch.nn as nn, torch.nn.functional as F
sys.argv += [] 
from aurora.registry import RNN
import aurora.components
from aurora.components.vision.siglip import sincos_2d
torch.manual_seed(0)
name = sys.argv[1] if len(sys.argv) > 1 else "rwkv6"
lr = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-3
F_ = int(sys.argv[3]) if len(sys.argv) > 3 else 4
kw = dict(vocab_size=65536, d_model=int(sys.argv[6]) if len(sys.argv) > 6 else 128, n_layer=int(sys.argv[5]) if len(sys.argv) > 5 else 2)
if name.startswith("rwkv"): kw["head_size"] = 32
rnn = RNN.build({"name": name, **kw})
pe = sincos_2d(8, 8, 64)  # 64 positions
proj = nn.Sequential(nn.Linear(65, 128), nn.GELU(), nn.Linear(128, 128))
TEMB = __import__('os').environ.get('TEMB')
temb = nn.Parameter(torch.randn(F_, 1, 65) * 0.5)
params = list(rnn.parameters()) + list(proj.parameters()) + ([temb] if TEMB else [])
opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
ans = torch.tensor([1000, 1001, 1002, 1003])
q = torch.tensor([500, 501, 502])
def batch(B):
    d = torch.randint(0, 4, (B,))
    start = torch.randint(1, 3, (B,)); across = torch.randint(1, 7, (B,))
    toks = []
    for f in range(F_):
        along = start + (torch.arange(1) * 0 + f) * 4 // max(1, F_ - 1)  # moves ~4 patches
        pos_fwd = along; pos = torch.where(d % 2 == 0, 7 - pos_fwd, pos_fwd)  # 0:left 1:right 2:up 3:down
        row = torch.where(d < 2, across, pos); col = torch.where(d < 2, pos, across)
        idx = row * 8 + col
        shape_tok = torch.cat([pe[idx], torch.ones(B, 1)], 1)
        NBG = int(__import__('os').environ.get('NBG', 15))
        groups = torch.rand(B, 64) if NBG else None
        if NBG: groups = groups.argsort(1).view(B, max(NBG, 1), -1)  # merged background: mean position of a random group
        bg_tok = torch.cat([pe[groups].mean(2), torch.zeros(B, NBG, 1)], 2)
        toks.append(torch.cat([shape_tok[:, None], bg_tok], 1) if NBG else shape_tok[:, None])
    if TEMB: toks = [t + temb[f] for f, t in enumerate(toks)]
    return torch.cat(toks, 1), d
def run(B=16):
    v, d = batch(B)
    e = torch.cat([rnn.embed(q.expand(B, -1)), proj(v), rnn.embed(q.expand(B, -1))], 1)
    h, _ = rnn(e)
    lg = rnn.logits(h[:, -1])[:, ans]
    return F.cross_entropy(lg, d), (lg.argmax(-1) == d).float().mean()
t0 = time.time()
for step in range(1, int(sys.argv[4]) + 1 if len(sys.argv) > 4 else 601):
    loss, acc = run()
    opt.zero_grad(); loss.backward(); gn = torch.nn.utils.clip_grad_norm_(params, float(__import__("os").environ.get("CLIP", 1e9))); opt.step()
    if step % 50 == 0:
        with torch.no_grad():
            accs = [run(64)[1] for _ in range(4)]
        print(step, f"gn {gn:.2f} loss {loss.item():.3f} val acc {sum(accs)/4:.3f} {time.time()-t0:.0f}s", flush=True)
