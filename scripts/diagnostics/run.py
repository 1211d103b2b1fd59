"""Fast demo harness: cached decoded data (CACHE, default /tmp/aurora_demo_cache_f{frames}.pt, built from DATA, default
runs/demo/data, on first use; probe.py reads the same CACHE), fused AdamW, per-category teacher-forced first-answer-token
accuracy on the validation split and on 200 training samples every 100 steps.

JSON overrides: rnn / vision / merge (merged into recipes/demo.yaml; null drops a key), lr, bs, clip, frames,
temb (learned per-frame embedding, init scale), vision_init (+ freeze_vision), vpos (add Fourier features of each
token's frame index and patch centroid, from the merge's source maps, through a learned linear map), oracle (replace
the visual tokens by ONE token per frame: Fourier features of the true shape centroid, computed from the pixels, through
a small MLP), only (train on one question category)."""
import json, math, os, sys, time, torch, yaml
from aurora.model import AuroraModel
from aurora.types import IGNORE_INDEX
from aurora.data.datamodule import AuroraDataModule
torch.manual_seed(0)
ov = json.loads(sys.argv[1]); steps = int(sys.argv[2])
rec = yaml.safe_load(open("recipes/demo.yaml"))
m = rec["model"]
for k in ("vision", "merge", "rnn"):
    m[k].update(ov.get(k, {})); m[k] = {kk: vv for kk, vv in m[k].items() if vv is not None}
frames = ov.get("frames", 4); bs = ov.get("bs", 16); lr = ov.get("lr", 1e-3); clip = ov.get("clip", 1.0)
cache = os.environ.get("CACHE", f"/tmp/aurora_demo_cache_f{frames}.pt")
if not os.path.exists(cache):
    dm = AuroraDataModule(data_dir=os.environ.get("DATA", "runs/demo/data"), num_frames=frames, image_size=64, batch_size=50, num_workers=0)
    out = {}
    for split in ("train", "val"):
        items = []
        for b in dm._loader(dm.dataset(split), 50):
            items.append({k: b[k] for k in ("pixels", "input_ids", "labels", "category")})
        out[split] = items
    torch.save(out, cache + ".tmp"); os.replace(cache + ".tmp", cache)
data = torch.load(cache, weights_only=True)
train = data["train"]; val = data["val"]
model = AuroraModel.from_specs(vision=m["vision"], merge=m["merge"], projector=m["projector"], rnn=m["rnn"])
if ov.get("vision_init"):
    model.vision.load_state_dict(torch.load(ov["vision_init"], weights_only=True))
    if ov.get("freeze_vision"): model.vision.requires_grad_(False)
if ov.get("temb"):
    model.temb = torch.nn.Parameter(torch.randn(frames, 1, model.rnn.d_model) * ov["temb"])
    orig = model.encode_video
    def enc(pixels):
        v, vt = orig(pixels)
        b = v.shape[0]
        return (v.view(b, frames, -1, v.shape[-1]) + model.temb).view(b, -1, v.shape[-1]), vt
    model.encode_video = enc
if ov.get("vpos"):
    model.vision.merge.trace_source = True
    if hasattr(model.vision.merge, "inner"): model.vision.merge.inner.trace_source = True
    nf = ov.get("vpos_freqs", 4)
    model.vpos = torch.nn.Linear(3 * 2 * nf, model.rnn.d_model)
    orig2 = model.encode_video
    def enc2(pixels):
        v, vt = orig2(pixels)
        b, f = pixels.shape[:2]
        src = vt.source.float()                      # (R, n, W*N)
        W = vt.row_frames; N = src.shape[-1] // W; gg = int(round(N ** 0.5))
        idx = torch.arange(W * N) % N; coords = torch.stack([idx // gg, idx % gg], -1).float() / (gg - 1)
        cen = (src @ coords) / src.sum(-1, keepdim=True)
        t = vt.frames.float()[..., None] / max(1, f - 1)
        pos = torch.cat([t, cen], -1).reshape(b, -1, 3)
        fr = (2.0 ** torch.arange(nf)) * torch.pi
        ang = pos[..., None] * fr
        feat = torch.cat([ang.sin(), ang.cos()], -1).flatten(-2)
        return v + model.vpos(feat), vt
    model.encode_video = enc2
if ov.get("oracle"):
    model.oproj = torch.nn.Sequential(torch.nn.Linear(16, 128), torch.nn.GELU(), torch.nn.Linear(128, model.rnn.d_model))
    def enc3(pixels):
        b, f = pixels.shape[:2]
        im = pixels.flatten(0, 1)                                  # (bf, 3, H, W)
        bgv = im[:, :, :1, :1]
        mask = ((im - bgv).abs().sum(1) > 0.5).float()             # (bf, H, W)
        H = mask.shape[-1]
        ys = torch.arange(H).float()[None, :, None]; xs = torch.arange(H).float()[None, None, :]
        n = mask.sum((1, 2)).clamp_min(1)
        cy = (mask * ys).sum((1, 2)) / n / H; cx = (mask * xs).sum((1, 2)) / n / H
        pos = torch.stack([cy, cx], -1)
        fr = (2.0 ** torch.arange(4)) * torch.pi
        ang = pos[..., None] * fr
        feat = torch.cat([ang.sin(), ang.cos()], -1).flatten(-2)   # (bf, 16)
        return model.oproj(feat).view(b, f, -1), None
    model.encode_video = enc3
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=True)
warm = max(1, int(0.03 * steps))
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
def batches():
    only = ov.get("only")
    if only:
        pool = [(b, j) for b in train for j in range(len(b["category"])) if b["category"][j] == only]
        while True:
            pick = [pool[i] for i in torch.randint(len(pool), (bs,)).tolist()]
            L = max(b["input_ids"].shape[1] for b, _ in pick)
            ids = torch.zeros(bs, L, dtype=torch.long); lab = torch.full((bs, L), -100, dtype=torch.long)
            for r, (b, j) in enumerate(pick):
                n = b["input_ids"].shape[1]; ids[r, :n] = b["input_ids"][j]; lab[r, :n] = b["labels"][j]
            yield {"pixels": torch.stack([b["pixels"][j] for b, j in pick]), "input_ids": ids, "labels": lab,
                   "category": [only] * bs}
    while True:
        perm = torch.randperm(len(train))
        for i in perm.tolist():
            b = train[i]
            for j in range(0, 50 - bs + 1, bs):
                yield {k: (v[j:j+bs] if torch.is_tensor(v) else v[j:j+bs]) for k, v in b.items()}
def evaluate(val=val):
    model.eval(); hit = {}; tot = {}
    with torch.no_grad():
        for b in val:
            video, _ = model.encode_video(b["pixels"])
            emb, lab = model.splice(b["input_ids"], video, b["labels"])
            h, _ = model.rnn(emb)
            tgt = lab[:, 1:]
            for i in range(tgt.shape[0]):
                pos = (tgt[i] != IGNORE_INDEX).nonzero()[0, 0]
                ok = int(model.rnn.logits(h[i, pos]).argmax()) == int(tgt[i, pos])
                c = b["category"][i]; hit[c] = hit.get(c, 0) + ok; tot[c] = tot.get(c, 0) + 1
    model.train()
    return {c: round(hit[c] / tot[c], 3) for c in sorted(tot)}
t0 = time.time(); it = batches()
for step in range(1, steps + 1):
    b = next(it)
    out = model(b["pixels"], b["input_ids"], b["labels"])
    opt.zero_grad(); out.loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), clip); opt.step(); sched.step()
    if step % 100 == 0 or step == steps:
        print(step, f"loss {out.loss.item():.3f} gn {gn:.2f}", "val", evaluate(), "train", evaluate(train[:4]), f"{time.time()-t0:.0f}s", flush=True)
