"""Encoder warm-up with per-frame MEAN-pool linear heads (colour and shape-centre cell from the pixels, shape from the
labelled samples): the experiment behind the demo's vision stage. Reads the CACHE written by run.py; the optional
3rd argument saves the encoder, for run.py's vision_init (+ freeze_vision):
    python scripts/diagnostics/probe_mean.py '{}' 500 /tmp/vis_mean.pt
    python scripts/diagnostics/run.py '{"vision_init": "/tmp/vis_mean.pt", "freeze_vision": 1}' 800
"""
import json, math, os, sys, time, torch, yaml, torch.nn as nn, torch.nn.functional as F
from aurora.registry import VISION
import aurora.components
from aurora.data.prompt import Tokenizer
torch.manual_seed(0)
ov = json.loads(sys.argv[1]); steps = int(sys.argv[2])
rec = yaml.safe_load(open("recipes/demo.yaml")); m = rec["model"]
m["vision"].update(ov.get("vision", {})); m["merge"].update(ov.get("merge", {}))
data = torch.load(os.environ.get("CACHE", "/tmp/aurora_demo_cache_f4.pt"), weights_only=True)
tok = Tokenizer()
SH = ["circle", "square", "triangle"]
def shape_labels(b):
    out = []
    for i in range(len(b["category"])):
        lab = b["labels"][i]; ids = lab[lab != -100].tolist()
        t = tok.decode(ids).strip().split()[0] if ids else ""
        out.append(SH.index(t) if b["category"][i] == "shape" else -1)
    return torch.tensor(out)
def frame_targets(pix):  # (N,3,H,W) -> centroid (N,2) in [0,1], mean colour (N,3)
    bg = pix[:, :, :1, :1]; mask = ((pix - bg).abs().sum(1) > 0.5).float(); H = mask.shape[-1]
    n = mask.sum((1, 2)).clamp_min(1)
    ys = torch.arange(H).float()[None, :, None]; xs = torch.arange(H).float()[None, None, :]
    cen = torch.stack([(mask * ys).sum((1, 2)) / n / H, (mask * xs).sum((1, 2)) / n / H], -1)
    col = (pix * mask[:, None]).sum((2, 3)) / n[:, None]
    return cen, col
vis = VISION.build(m["vision"], merge=m["merge"])
D = vis.out_dim; G = ov.get("grid", 4)
head = nn.ModuleDict({"shape": nn.Linear(D, 3), "pos": nn.Linear(D, 2 * G), "col": nn.Linear(D, 3)})
opt = torch.optim.AdamW(list(vis.parameters()) + list(head.parameters()), lr=ov.get("lr", 1e-3))
pool = ov.get("pool", "mean")
def fwd(b):
    B, Fr = b["pixels"].shape[:2]
    pix = b["pixels"].flatten(0, 1)
    vt = vis(pix)
    x = vt.tokens.reshape(B * Fr, vt.tokens_per_frame, -1)
    p = x.mean(1) if pool == "mean" else x.max(1).values
    cen, col = frame_targets(pix)
    cb = (cen * G).long().clamp(0, G - 1)  # row bin, col bin
    lp = head["pos"](p).view(-1, 2, G)
    loss = F.cross_entropy(lp.flatten(0, 1), cb.flatten()) + F.mse_loss(head["col"](p), col)
    acc = {"pos": ((lp.argmax(-1) == cb).all(-1).float().sum().item(), B * Fr)}
    y = shape_labels(b).repeat_interleave(Fr); keep = y >= 0
    if keep.any():
        lg = head["shape"](p[keep]); loss = loss + F.cross_entropy(lg, y[keep])
        acc["shape"] = ((lg.argmax(-1) == y[keep]).float().sum().item(), int(keep.sum()))
    return loss, acc
t0 = time.time(); k = 0
for step in range(1, steps + 1):
    b = data["train"][k % len(data["train"])]; k += 1
    j = (step * 16) % 48
    b = {kk: v[j:j + 16] for kk, v in b.items()}
    loss, _ = fwd(b); opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 0:
        with torch.no_grad():
            tot = {}
            for vb in data["val"][:2]:
                _, a = fwd(vb)
                for c, (h, n) in a.items(): tot.setdefault(c, [0, 0]); tot[c][0] += h; tot[c][1] += n
        print(step, f"loss {loss.item():.3f}", {c: round(h / n, 3) for c, (h, n) in tot.items()}, f"{time.time()-t0:.0f}s", flush=True)
if len(sys.argv) > 3:
    torch.save(vis.state_dict(), sys.argv[3])
