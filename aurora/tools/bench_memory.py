"""``aurora bench memory``: peak memory and time of streaming inference against the number of frames read.

    aurora bench memory [--backbones rwkv6,transformer] [--frames 16,64,256,1024,4096] [--d-model 128 --n-layer 2]
                        [--chunk-frames 16] [--device auto|cpu|cuda] [--json P.json] [--plot P.png]

The question the paper's Figure 1 asks: how does the memory needed to answer a question about a video grow with
its length? For every backbone and every frame count N, one fresh Python process builds the same tiny model
(random weights, seeded: a SigLIP-style ViT with the ToMe sorted merge, the MLP projector, the backbone; every
setting shared by all backbones, so the backbones differ only in the language model) and answers one question
about an N-frame synthetic video (moving shapes, H.264) through the streaming engine (:mod:`aurora.infer.engine`): the
video is decoded, encoded and read ``--chunk-frames`` frames at a time, then ``--new-tokens`` tokens are
generated. An RNN carries a fixed-size state from chunk to chunk; the ``transformer`` carries its key/value
cache, which grows with every visual token.

Memory (the same meter as ``aurora bench rnn``, :class:`aurora.tools.measure.Meter`):

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``: live tensor bytes, exactly.
* CPU: Python tracers (tracemalloc) do not see torch's allocations, so the figure is the process's resident set:
  its high-water mark ``VmHWM``, reset before the run through ``/proc/self/clear_refs``. The worker runs with
  glibc's mmap threshold fixed at 64 KiB (every block of 64 KiB or more is its own mapping, returned to the OS
  when freed) and ``malloc_trim`` before the run, so the resident set follows the live tensors instead of pages
  the allocator kept from earlier work (see :mod:`aurora.tools.bench_rnn`). Decoder buffers (FFmpeg) count too: they are
  part of what streaming costs. Where the mark cannot be reset, ``ru_maxrss`` of the fresh process is read.

Reported per point: ``peak_added_mib`` (the peak above what the process held once the model was built and warmed
up on a short video: what reading this video costs), ``peak_total_mib`` (weights included, what Figure 1 plots:
the allocator's peak on CUDA; on the CPU the weights' bytes plus the added peak, since the process's resident set
also holds the Python, torch and FFmpeg libraries, reported apart as ``process_peak_mib``), ``state_mib`` (the
exact bytes of the language model's state after the video: the fixed RNN state, or the KV cache),
``seconds`` (a separate timed run, on the CPU with the allocator at its usual thresholds) and frames/s.

The summary gives the RNN's growth in added peak memory from 64 to the largest frame count (the target: under
5 %) and the transformer / RNN ratio of total and added peak memory at 1,024 frames. Output: a table on stdout,
``--json`` (one record per point plus the summary) and ``--plot`` (memory against frames, log x), written
atomically.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aurora.tools.measure import (MEMORY_MMAP_THRESHOLD, TIMING_MALLOPT, Meter, hwm_bytes, mallopt, reset_hwm, run_worker,
                                  write_outputs)
from aurora.io import pyplot, save_figure

TAG = "@@aurora-bench-memory "
QUESTION = "What is moving in the video?"
CPU_FRAMES = [16, 64, 256, 1024, 4096]
CUDA_FRAMES = [16, 64, 256, 1024, 4096, 16384]


def model_specs(args: argparse.Namespace, backbone: str) -> dict[str, Any]:
    """The registry specs of the benchmarked model: everything but the backbone is shared."""
    rnn: dict[str, Any] = {"name": backbone, "vocab_size": 65536, "d_model": args.d_model, "n_layer": args.n_layer}
    if backbone == "transformer":
        rnn["n_head"] = max(1, args.d_model // 64)  # 64-wide heads, as the RNNs use (aurora bench rnn does too)
    return {
        "vision": {"name": "siglip", "hidden_size": args.vision_width, "num_hidden_layers": args.vision_layers,
                   "num_attention_heads": max(1, args.vision_width // 32), "intermediate_size": 2 * args.vision_width,
                   "image_size": args.image_size, "patch_size": args.patch_size},
        "merge": {"name": "tome", "keep_ratio": args.keep_ratio, "order": "size_ascending"},
        "projector": "mlp",
        "rnn": rnn,
    }


# ------------------------------------------------------------------------------------------------ worker


def _worker(spec: dict[str, Any]) -> int:
    """One (backbone, frames) point: a memory run, then (CPU) a timed run; one ``TAG`` + JSON line of results."""
    cpu = spec["device"] == "cpu"
    if cpu:  # before anything large exists, so that no large block ever sits in the heap
        mallopt(MEMORY_MMAP_THRESHOLD)
    import torch

    from aurora.model import AuroraModel
    from aurora.infer.engine import Generation, StreamEngine, flatten_state

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    torch.manual_seed(0)
    model = AuroraModel.from_specs(**spec["model"]).to(device=device, dtype=dtype).eval()
    engine = StreamEngine(model, chunk_frames=spec["chunk_frames"])
    gen = Generation(max_new_tokens=spec["new_tokens"], stop=(), eos_id=None)  # always the same length
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    meter = Meter(device, spec["resettable"])

    def run():
        vs = engine.read_video(spec["video"], QUESTION)
        ans = engine.answer(vs, QUESTION, gen)
        sync()
        return vs, ans

    engine.ask(spec["warmup_video"], QUESTION, gen=gen)  # first-call costs (allocator, libraries) stay out
    sync()
    meter.start()
    t0 = time.perf_counter()
    vs, ans = run()
    memory_pass_s = time.perf_counter() - t0
    added = meter.peak()
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    # CUDA: the allocator's peak, weights included; CPU: the same quantity, weights + the peak added
    total = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else weights + added
    process = hwm_bytes() if cpu and spec["resettable"] else None
    state_bytes = sum(t.numel() * t.element_size() for t in flatten_state(vs.state)[0].values())
    frames, positions, new = vs.frames, vs.positions, len(ans.tokens)
    del vs, ans
    seconds = memory_pass_s
    if cpu:  # timed again with glibc's usual thresholds: the 64 KiB mmap threshold costs page faults
        mallopt(*TIMING_MALLOPT)
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
    print(TAG + json.dumps({
        "frames": frames, "positions": positions, "new_tokens": new, "peak_added_bytes": added,
        "peak_total_bytes": total, "weights_bytes": weights, "process_peak_bytes": process,
        "baseline_bytes": meter.base, "state_bytes": state_bytes, "seconds": seconds,
        "memory_pass_seconds": memory_pass_s, "mem_method": meter.method, "threads": torch.get_num_threads(),
        "n_params": sum(p.numel() for p in model.parameters()),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(),
    }), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ parent


def write_videos(folder: Path, counts: list[int], size: int, warmup: int) -> dict[int, Path]:
    """One synthetic moving-shape video per frame count (and a short warm-up one), written once."""
    import random

    from aurora.data.synthetic import render
    from aurora.data.video import encode_mp4

    out = {}
    for n in sorted(set(counts) | {warmup}):
        frames = render("red", "circle", "right", n, size, random.Random(n))
        path = folder / f"video_{n}.mp4"
        path.write_bytes(encode_mp4(frames, fps=8))
        out[n] = path
    return out


def _run_point(spec: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    return run_worker("aurora.tools.bench_memory", TAG, spec, timeout)


def run_bench(args: argparse.Namespace, log=print) -> list[dict[str, Any]]:
    import torch

    from aurora.registry import RNN

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("aurora bench memory: --device cuda but torch sees no CUDA device")
    counts = sorted(args.frames or (CPU_FRAMES if device == "cpu" else CUDA_FRAMES))
    dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    for name in args.backbones:
        RNN.get(name)  # unknown names fail now, listing the known ones
    resettable = device.startswith("cuda") or reset_hwm()
    records = []
    with tempfile.TemporaryDirectory(prefix="aurora-bench-memory-") as tmp:
        videos = write_videos(Path(tmp), counts, args.image_size, warmup=2 * args.chunk_frames)
        for name in args.backbones:
            prev = None
            for n in counts:
                base = {"backbone": name, "frames_requested": n, "device": device, "dtype": dtype,
                        "d_model": args.d_model, "n_layer": args.n_layer, "chunk_frames": args.chunk_frames,
                        "image_size": args.image_size, "keep_ratio": args.keep_ratio, "torch": torch.__version__}
                reason = None
                if prev is not None and prev["status"] != "ok":
                    reason = f"{prev['frames_requested']} frames did not finish ({prev['reason']})"
                elif prev is not None:
                    # two runs (memory, time), at least linear in the frames (the transformer's attention grows
                    # faster, which the per-point time limit catches)
                    est = 2 * prev["seconds"] * n / prev["frames_requested"]
                    if est > args.max_seconds:
                        reason = (f"estimated {est:.0f} s from {prev['frames_requested']} frames exceeds "
                                  f"--max-seconds {args.max_seconds:g}")
                got = None
                t0 = time.monotonic()
                if reason is None:
                    spec = {"model": model_specs(args, name), "device": device, "dtype": dtype,
                            "chunk_frames": args.chunk_frames, "new_tokens": args.new_tokens,
                            "video": str(videos[n]), "warmup_video": str(videos[2 * args.chunk_frames]),
                            "resettable": resettable, "threads": args.threads}
                    got, reason = _run_point(spec, args.max_seconds)
                rec = dict(base, status="ok" if got else ("error" if reason.startswith(("error", "killed"))
                                                          else "skipped"), reason=reason,
                           wall_s=time.monotonic() - t0)
                if got:
                    mib = 1 / 2**20
                    rec.update(got)
                    rec.update(
                        peak_added_mib=got["peak_added_bytes"] * mib,
                        peak_total_mib=None if got["peak_total_bytes"] is None else got["peak_total_bytes"] * mib,
                        state_mib=got["state_bytes"] * mib, weights_mib=got["weights_bytes"] * mib,
                        process_peak_mib=(None if got["process_peak_bytes"] is None
                                          else got["process_peak_bytes"] * mib),
                        frames_per_s=got["frames"] / got["seconds"],
                        tokens_per_frame=(got["positions"]) / got["frames"],
                    )
                log(f"[bench memory] {name} {n} frames: {rec['status']}"
                    + (f" ({reason})" if reason else f", {rec['peak_added_mib']:.1f} MiB added, "
                       f"{rec['seconds']:.1f} s"))
                records.append(rec)
                prev = rec
    return records


def summary(records: list[dict[str, Any]], lo: int = 64, ratio_at: int = 1024) -> dict[str, Any]:
    """Growth of each backbone's peak memory from ``lo`` frames to its largest measured count, and every other
    backbone's peak over the first RNN's at ``ratio_at`` frames (added and total)."""
    ok = [r for r in records if r["status"] == "ok"]
    names = list(dict.fromkeys(r["backbone"] for r in records))
    out: dict[str, Any] = {"growth": {}, "ratio": {}}
    for name in names:
        rs = {r["frames_requested"]: r for r in ok if r["backbone"] == name}
        if lo in rs and max(rs) > lo:
            hi = max(rs)
            out["growth"][name] = {
                "from": lo, "to": hi,
                "added": rs[hi]["peak_added_mib"] / rs[lo]["peak_added_mib"] - 1 if rs[lo]["peak_added_mib"] else None,
                "total": (rs[hi]["peak_total_mib"] / rs[lo]["peak_total_mib"] - 1
                          if rs[lo]["peak_total_mib"] else None),
                "state": rs[hi]["state_mib"] / rs[lo]["state_mib"] - 1 if rs[lo]["state_mib"] else None,
            }
    rnn = next((n for n in names if n != "transformer"), None)
    ref = {r["backbone"]: r for r in ok if r["frames_requested"] == ratio_at}
    if rnn in ref:
        for name in names:
            if name != rnn and name in ref:
                a, b = ref[name], ref[rnn]
                out["ratio"][f"{name}/{rnn}"] = {
                    "frames": ratio_at,
                    "added": a["peak_added_mib"] / b["peak_added_mib"] if b["peak_added_mib"] else None,
                    "total": a["peak_total_mib"] / b["peak_total_mib"] if b["peak_total_mib"] else None,
                    "state": a["state_mib"] / b["state_mib"] if b["state_mib"] else None,
                }
    return out


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(records: list[dict[str, Any]]) -> str:
    head = ["backbone", "frames", "tokens", "peak added MiB", "peak total MiB", "state MiB", "seconds", "frames/s",
            "status"]
    rows = [[r["backbone"], str(r["frames_requested"]), _fmt(r.get("positions"), "d"),
             _fmt(r.get("peak_added_mib"), ".2f"), _fmt(r.get("peak_total_mib"), ".1f"),
             _fmt(r.get("state_mib"), ".3f"), _fmt(r.get("seconds"), ".2f"), _fmt(r.get("frames_per_s"), ".0f"),
             r["status"] + (f": {r['reason']}" if r["status"] != "ok" else "")] for r in records]
    width = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, width)))
             + "  " + row[-1] for row in [head, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_plot(records: list[dict[str, Any]], path: str | Path) -> None:
    """Figure 1's picture: peak memory against frames (log x), one colour per backbone; time beside it."""
    plt = pyplot("aurora bench memory")

    fig, (ax_m, ax_a, ax_t) = plt.subplots(1, 3, figsize=(15, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(dict.fromkeys(r["backbone"] for r in records))
    for i, name in enumerate(names):
        rs = sorted((r for r in records if r["backbone"] == name and r["status"] == "ok"),
                    key=lambda r: r["frames_requested"])
        c = colours[i % len(colours)]
        for ax, key in ((ax_m, "peak_total_mib"), (ax_a, "peak_added_mib"), (ax_t, "seconds")):
            pts = [(r["frames_requested"], r[key]) for r in rs if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), "-o", color=c, label=name)
        pts = [(r["frames_requested"], r["state_mib"]) for r in rs]
        if pts:
            ax_a.plot(*zip(*pts), ":", color=c, label=f"{name}: state only")
    r0 = next((r for r in records if r["status"] == "ok"), records[0] if records else {})
    where = (f"{r0.get('device', '?')} {r0.get('dtype', '')}, d_model {r0.get('d_model')}, {r0.get('n_layer')} layers, "
             f"{_fmt(r0.get('tokens_per_frame'), '.1f')} tokens/frame, chunks of {r0.get('chunk_frames')} frames")
    for ax, title, ylabel, logy in ((ax_m, "peak memory (weights included)", "MiB", False),
                                    (ax_a, "peak memory added by reading the video", "MiB", True),
                                    (ax_t, "time to answer", "seconds", True)):
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("frames read")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if names:
            ax.legend(fontsize=8)
    fig.suptitle(f"streaming inference: memory vs video length ({where})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _ints(text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aurora bench memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", type=lambda s: [x for x in s.split(",") if x], default=["rwkv6", "transformer"],
                   help="comma-separated registered names (default: rwkv6,transformer)")
    p.add_argument("--frames", type=_ints, default=None,
                   help="comma-separated frame counts (default: 16,64,256,1024,4096 on CPU; up to 16384 on CUDA)")
    p.add_argument("--d-model", type=int, default=128, help="the language model's width (default: %(default)s)")
    p.add_argument("--n-layer", type=int, default=2, help="the language model's layers (default: %(default)s)")
    p.add_argument("--vision-width", type=int, default=64, help="the vision encoder's width (default: %(default)s)")
    p.add_argument("--vision-layers", type=int, default=2, help="the vision encoder's layers (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=32, help="frame side in pixels (default: %(default)s)")
    p.add_argument("--patch-size", type=int, default=8, help="ViT patch side in pixels (default: %(default)s)")
    p.add_argument("--keep-ratio", type=float, default=0.25, help="ToMe keep ratio (same for every backbone)")
    p.add_argument("--chunk-frames", type=int, default=16, help="frames read per streaming step (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=8, help="tokens generated after the video")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the workers")
    p.add_argument("--max-seconds", type=float, default=300.0, help="wall-clock limit of one point")
    p.add_argument("--json", default=None, help="write the records and summary here")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    return p


def bench_memory_main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if min(args.d_model, args.n_layer, args.vision_width, args.vision_layers, args.chunk_frames) < 1:
        p.error("--d-model, --n-layer, --vision-width, --vision-layers and --chunk-frames must be >= 1")
    records = run_bench(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    summ = summary(records)
    r0 = next((r for r in records if r["status"] == "ok"), {})
    print(f"device {r0.get('device')} ({r0.get('device_name', '?')}), torch {r0.get('torch')}, {r0.get('dtype')}, "
          f"d_model {args.d_model}, {args.n_layer} layers, chunks of {args.chunk_frames} frames; "
          f"memory: {r0.get('mem_method', '?')}")
    print(format_table(records))
    def pct(v):
        return _fmt(None if v is None else 100 * v, "+.1f")

    for name, g in summ["growth"].items():
        print(f"{name}: peak memory growth from {g['from']} to {g['to']} frames: added {pct(g['added'])} %, "
              f"total {pct(g['total'])} %, state {pct(g['state'])} %")
    for pair, r in summ["ratio"].items():
        print(f"{pair} at {r['frames']} frames: total peak {_fmt(r['total'], '.2f')}x, added peak "
              f"{_fmt(r['added'], '.2f')}x, state {_fmt(r['state'], '.0f')}x")
    write_outputs(args, {"records": records, "summary": summ}, records, write_plot)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(json.loads(sys.argv[2])))
    sys.exit(bench_memory_main(sys.argv[1:]))
