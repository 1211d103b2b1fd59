"""Fast demo harness (writes /tmp/aurora_demo_cache_f{frames}.pt on first use, which probe.py reads): cached decoded data, per-category teacher-forced first-answer-token val accuracy."""
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
cache = f"/tmp/aurora_demo_cache_f{frames}.pt"
if not os.path.exists(cache):
    dm = AuroraDataModule(data_dir="runs/demo/data", num_frames=frames, image_size=64, batch_size=50, num_workers=0)
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
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
warm = max(1, int(0.03 * steps))
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
def batches():
    while True:
        perm = torch.randperm(len(train))
        for i in perm.tolist():
            b = train[i]
            for j in range(0, 50 - bs + 1, bs):
                yield {k: (v[j:j+bs] if torch.is_tensor(v) else v[j:j+bs]) for k, v in b.items()}
def evaluate():
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
        print(step, f"loss {out.loss.item():.3f} gn {gn:.2f}", evaluate(), f"{time.time()-t0:.0f}s", flush=True)
