"""``aurora bench loader``: how fast the training DataLoader delivers samples at the paper's stage-3 settings
(64 frames a sample, 384 px, SigLIP-shaped preprocessing: resize in FFmpeg's scaler to the short side, centre
crop, normalise with mean = std = 0.5) with 0, 1 and 2 workers, against the model's training step time, so the
figures say which one bounds training.

The samples are generated once into ``--cache``: one H.264 clip (libx264 ultrafast, GOP 250, 2 B-frames, 30 fps,
``--seconds`` long, ``--height`` p) written by ``aurora bench decode``'s generator, converted by ``aurora data
convert`` (original bytes) into one shard per sample, ``--samples`` samples. Every point runs in a fresh process:

- ``loader``: ``VideoQADataset`` + ``DataLoader(batch_size=1, num_workers=W)`` (what ``AuroraDataModule``
  builds), ``--passes`` passes over the samples; the seconds to the first batch (worker start-up included) and
  the steady samples/s after it.
- ``step``: one training step (forward, backward, AdamW) of the demo model's shape (``recipes/demo.yaml``: its
  vision encoder, merge, projector and RWKV-6, randomly initialised, every part trained) on ``--frames`` frames
  at the demo's own image size (its encoder is built for 64 px), the median of ``--steps`` after a warm-up.
- ``vision-l`` (``--vision-l``): the stage-3 encoder's shape (SigLIP-L/16 at 384 px: 24 layers, width 1024, ToMe
  keep 0.1), one frame forward with no gradient; a stage-3 step costs at least ``--frames`` times that (a lower
  bound, labelled as an extrapolation: the backward and the language model come on top).

    aurora bench loader --vision-l --json docs/bench/loader.json
    aurora bench loader --samples 2 --seconds 2 --frames 4 --image-size 32 --workers 0,1 --steps 1   # tiny
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from aurora.tools.measure import ru_maxrss_bytes, run_worker, write_outputs

TAG = "BENCH_LOADER "
QA = [{"from": "human", "value": "<video>\nWhat moves in the video?"}, {"from": "gpt", "value": "a gradient"}]
SIGLIP_L = {"name": "siglip", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "intermediate_size": 4096, "image_size": 384, "patch_size": 16, "feature_layer": -2}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def default_cache() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "aurora", "bench_loader")


def make_shards(cache: Path, samples: int, seconds: float, height: int, log=print) -> Path:
    """``samples`` samples of one generated clip, one shard each (so 2 workers have shards to split); reused."""
    from aurora.data.convert import convert
    from aurora.tools.bench_decode import make_video

    root = cache / f"{height}p_{seconds:g}s_{samples}"
    out = root / "shards"
    if (out / "manifest.json").is_file():
        return out
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    clip = make_video(videos / f"clip_{height}p_{seconds:g}s.mp4", height, seconds / 60, log=log)
    records = [{"id": f"s{i}", "video": clip.name, "conversations": QA} for i in range(samples)]
    (root / "ann.json").write_text(json.dumps(records))
    convert(root / "ann.json", videos, out, shard_size=clip.stat().st_size + 1, workers=1, progress=False)
    return out


def _loader_point(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from aurora.data.prompt import Tokenizer
    from aurora.data.shards import VideoQADataset, collate

    shards = sorted(str(p) for p in Path(spec["shards"]).glob("train-*.tar"))
    total = spec["samples"] * spec["passes"]
    ds = VideoQADataset(shards, num_frames=spec["frames"], image_size=spec["image_size"], mean=(0.5,) * 3,
                        std=(0.5,) * 3, epoch_samples=total, tokenizer=Tokenizer(spec.get("vocab_file")))
    loader = DataLoader(ds, batch_size=1, num_workers=spec["workers"], collate_fn=collate,
                        persistent_workers=False)
    arrivals, shape = [], None
    cpu0, t0 = time.process_time(), time.perf_counter()
    for batch in loader:
        arrivals.append(time.perf_counter() - t0)
        shape = list(batch["pixels"].shape)
        assert batch["pixels"].dtype == torch.float32
    cpu = time.process_time() - cpu0
    steady = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else None
    return {"samples_read": len(arrivals), "shape": shape, "first_batch_seconds": arrivals[0],
            "seconds": arrivals[-1], "samples_per_s": len(arrivals) / arrivals[-1],
            "steady_samples_per_s": steady, "main_cpu_seconds": cpu, "skipped": dict(ds.skipped),
            "peak_rss_main": ru_maxrss_bytes()}


def _demo_specs() -> dict[str, Any]:
    from aurora.infer.runconfig import load_recipe, section

    model = section(load_recipe("demo"), "model")
    return {k: model[k] for k in ("vision", "merge", "projector", "rnn")}


def _step_point(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from aurora.data.prompt import PromptTemplate, Tokenizer
    from aurora.data.shards import collate
    from aurora.model import AuroraModel

    torch.manual_seed(0)
    specs = _demo_specs()
    model = AuroraModel.from_specs(**specs).train()
    size = specs["vision"]["image_size"]
    ids, labels = PromptTemplate().build(Tokenizer(), QA[0]["value"].split("\n", 1)[1], QA[1]["value"], "question")
    batch = collate([{"pixels": torch.randn(spec["frames"], 3, size, size), "input_ids": torch.tensor(ids),
                      "labels": torch.tensor(labels), "id": "x", "question": "", "answer": "", "category": "all",
                      "options": None}])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(spec["steps"] + 1):  # the first is a warm-up
        t = time.perf_counter()
        loss = model(batch["pixels"], batch["input_ids"], batch["labels"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return {"model": "demo (recipes/demo.yaml shape, random init, all parts trained)", "frames": spec["frames"],
            "image_size": size, "params": sum(p.numel() for p in model.parameters()),
            "step_seconds": statistics.median(times[1:]), "runs_seconds": times[1:], "threads": torch.get_num_threads()}


def _vision_l_point(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from aurora.registry import VISION

    torch.manual_seed(0)
    vis = VISION.build(SIGLIP_L, merge={"name": "tome", "keep_ratio": 0.1, "order": "size_ascending"}).eval()
    pixels = torch.randn(1, 1, 3, 384, 384)
    times = []
    with torch.no_grad():
        for _ in range(2):  # a warm-up, then the measured one
            t = time.perf_counter()
            vt = vis.encode_videos(pixels)
            times.append(time.perf_counter() - t)
    return {"model": "SigLIP-L/16 384 px shape (24 x 1024), ToMe keep 0.1, random init", "frames": 1,
            "params": sum(p.numel() for p in vis.parameters()), "forward_seconds_per_frame": times[-1],
            "tokens_per_frame": int(vt.tokens.shape[-2]), "threads": torch.get_num_threads()}


def _worker(spec: dict[str, Any]) -> None:
    point = {"loader": _loader_point, "step": _step_point, "vision-l": _vision_l_point}[spec["kind"]]
    print(TAG + json.dumps(point(spec)), flush=True)


def run_bench(args: argparse.Namespace, log=print) -> dict[str, Any]:
    shards = make_shards(Path(args.cache), args.samples, args.seconds, args.height, log)
    module = "aurora.tools.bench_loader"
    loader = []
    for workers in args.workers:
        spec = {"kind": "loader", "shards": str(shards), "samples": args.samples, "passes": args.passes,
                "frames": args.frames, "image_size": args.image_size, "workers": workers}
        rec, reason = run_worker(module, TAG, spec, args.max_seconds)
        rec = {"workers": workers, **(rec or {"skipped": reason})}
        loader.append(rec)
        if reason:
            log(f"loader, {workers} workers: skipped ({reason})")
        else:
            log(f"loader, {workers} workers: {rec['samples_per_s']:.3f} samples/s over {rec['samples_read']} "
                f"(steady {rec['steady_samples_per_s'] or float('nan'):.3f}/s, first batch after "
                f"{rec['first_batch_seconds']:.2f} s), batch {rec['shape']}")
    out: dict[str, Any] = {"loader": loader}
    if args.steps > 0:
        rec, reason = run_worker(module, TAG, {"kind": "step", "frames": args.frames, "steps": args.steps},
                                 args.max_seconds)
        out["step"] = rec or {"skipped": reason}
        log(f"demo step ({args.frames} frames): " + (f"{rec['step_seconds']:.3f} s" if rec else f"skipped ({reason})"))
    if args.vision_l:
        rec, reason = run_worker(module, TAG, {"kind": "vision-l"}, args.max_seconds)
        if rec:
            rec["extrapolated_step_lower_bound_seconds"] = rec["forward_seconds_per_frame"] * args.frames
        out["vision_l"] = rec or {"skipped": reason}
        log("SigLIP-L forward, 1 frame: " + (f"{rec['forward_seconds_per_frame']:.2f} s (x {args.frames} frames: "
            f">= {rec['extrapolated_step_lower_bound_seconds']:.0f} s a step, extrapolated)" if rec else
            f"skipped ({reason})"))
    out["verdict"] = verdict(out)
    log(out["verdict"])
    return out


def verdict(out: dict[str, Any]) -> str:
    """Which one bounds training: the loader's seconds per sample against the step's (per sample: batch 1)."""
    rates = [r for r in out["loader"] if "samples_per_s" in r]
    if not rates:
        return "no loader figure"
    best = max(rates, key=lambda r: r["steady_samples_per_s"] or r["samples_per_s"])
    per_sample = 1 / (best["steady_samples_per_s"] or best["samples_per_s"])
    steps = []
    if "step_seconds" in out.get("step", {}):
        steps.append(("the demo model's step", out["step"]["step_seconds"]))
    if "extrapolated_step_lower_bound_seconds" in out.get("vision_l", {}):
        steps.append(("the stage-3 step (lower bound, extrapolated)", out["vision_l"]["extrapolated_step_lower_bound_seconds"]))
    parts = [f"loader: {per_sample:.2f} s a sample with {best['workers']} workers"]
    for name, s in steps:
        side = "the loader" if per_sample > s else "the model"
        parts.append(f"{name}: {s:.2f} s a sample -> {side} bounds training ({max(s, per_sample) / min(s, per_sample):.1f}x)")
    return "; ".join(parts)


def bench_loader_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aurora bench loader", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=8, help="samples (one shard each)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the generated clip")
    p.add_argument("--height", type=int, default=360, help="height of the generated clip (16:9)")
    p.add_argument("--frames", type=int, default=64, help="frames a sample (stage 3: 64)")
    p.add_argument("--image-size", type=int, default=384, help="short side and crop (stage 3: 384)")
    p.add_argument("--workers", type=_ints, default=[0, 1, 2], help="DataLoader worker counts, comma-separated")
    p.add_argument("--passes", type=int, default=2, help="passes over the samples per point")
    p.add_argument("--steps", type=int, default=3, help="measured demo-model steps (0: none)")
    p.add_argument("--vision-l", action="store_true", help="also time one SigLIP-L/16 384 px frame forward")
    p.add_argument("--max-seconds", type=float, default=900.0, help="per point")
    p.add_argument("--cache", default=default_cache(), help="where the generated clip and shards are kept")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0
    for name in ("samples", "frames", "image_size", "passes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.seconds <= 0 or any(w < 0 for w in args.workers):
        p.error("--seconds must be > 0 and --workers >= 0")
    result = run_bench(args)
    args.plot = None
    payload = {"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "plot")}, **result}
    write_outputs(args, payload, [], None)
    return 0


if __name__ == "__main__":
    sys.exit(bench_loader_main(sys.argv[1:]))
