import json, math, sys, time, torch, yaml, torch.nn as nn, torch.nn.functional as F
from aurora.model import AuroraModel
from aurora.registry import VISION
import aurora.components
torch.manual_seed(0)
ov = json.loads(sys.argv[1]); steps = int(sys.argv[2])
rec = yaml.safe_load(open("recipes/demo.yaml")); m = rec["model"]
m["vision"].update(ov.get("vision", {})); m["merge"].update(ov.get("merge", {}))
data = torch.load(__import__("os").environ.get("CACHE", "/tmp/aurora_demo_cache_f4.pt"), weights_only=True)  # written by run.py (run it first)
from aurora.data.prompt import Tokenizer
tok = Tokenizer()
NAMES = {"shape": ["circle", "square", "triangle"], "motion": ["left", "right", "up", "down"]}
def labels(b, cat):
    out = []
    for i in range(len(b["category"])):
        lab = b["labels"][i]; ids = lab[lab != -100].tolist()
        text = tok.decode(ids).strip().split()[0] if ids else ""
        out.append(NAMES[cat].index(text) if b["category"][i] == cat else -1)
    return torch.tensor(out)
vis = VISION.build(m["vision"], merge=m["merge"])
head = nn.ModuleDict({"shape": nn.Linear(vis.out_dim, 3), "motion": nn.Linear(vis.out_dim * 4, 4)})
opt = torch.optim.AdamW(list(vis.parameters()) + list(head.parameters()), lr=ov.get("lr", 1e-3))
def fwd(b):
    B = b["pixels"].shape[0]
    vt = vis(b["pixels"].flatten(0, 1))
    x = vt.tokens.reshape(B, 4, vt.tokens_per_frame, -1)
    pooled = x.max(2).values  # (B, 4, D)
    loss = 0; acc = {}
    for cat in ("shape", "motion"):
        y = labels(b, cat); keep = y >= 0
        if not keep.any(): continue
        feat = pooled[:, 0] if cat == "shape" else pooled.flatten(1)
        lg = head[cat](feat[keep]); loss = loss + F.cross_entropy(lg, y[keep])
        acc[cat] = ((lg.argmax(-1) == y[keep]).float().sum().item(), int(keep.sum()))
    return loss, acc
t0 = time.time(); k = 0
for step in range(1, steps + 1):
    b = data["train"][k % len(data["train"])]; k += 1
    b = {kk: v[:16] for kk, v in b.items()}
    loss, _ = fwd(b); opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 0:
        with torch.no_grad():
            tot = {}
            for vb in data["val"]:
                _, a = fwd(vb)
                for c, (h, n) in a.items(): tot.setdefault(c, [0, 0]); tot[c][0] += h; tot[c][1] += n
        print(step, f"loss {loss.item():.3f}", {c: round(h / n, 3) for c, (h, n) in tot.items()}, f"{time.time()-t0:.0f}s", flush=True)
if len(sys.argv) > 3:
    torch.save(vis.state_dict(), sys.argv[3])
