"""``aurora bench live``: memory of reading a live stream for an hour, over stream time.

    aurora bench live [--minutes 60] [--source-fps 2] [--fps 1] [--image-size 32] [--backbones rwkv6,transformer]
                      [--every 60] [--chunk-frames 16] [--threads 1] [--json P.json] [--plot P.png]

The issue's claim: an interactive session that reads a stream continuously and answers questions at any time
keeps its memory flat over an hour of input. The benchmark writes ``--minutes`` of generated video (moving shapes
of :mod:`aurora.data.synthetic`, a new clip every 10 s, ``--source-fps`` frames a second at ``--image-size``
pixels: low, so that encoding an hour takes seconds) as one MPEG-TS file, then, for each backbone, one fresh
process builds the tiny model of ``aurora bench memory`` (random weights; only the language model differs between
backbones) and reads the file as a live source (:class:`aurora.data.stream.LiveFrames`, followed as a growing
file, sampled at ``--fps`` by stream time) with :class:`aurora.infer.live.LiveReader`, exactly what
``aurora ask --live`` / ``--interactive`` run. Every ``--every`` seconds of stream it records the process's resident
set (RSS), its high-water mark since the previous record (``VmHWM``, reset through ``/proc/self/clear_refs``),
the exact bytes of the language model's state, and a question answered from a fork of the state (seconds).
The worker fixes glibc's mmap threshold at 64 KiB (as ``aurora bench memory`` does), so the resident set follows
the live tensors rather than pages the allocator kept.

Summary per backbone: the peak RSS growth from the first record to the last (MiB) and the state's growth; a
linear RNN's state is constant, the transformer's KV cache grows with every visual token. Output: a table on
stdout, ``--json`` (records + summary) and ``--plot`` (RSS and state against stream minutes), written atomically.
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

from aurora.io import pyplot, save_figure
from aurora.tools.measure import (MEMORY_MMAP_THRESHOLD, hwm_bytes, mallopt, reset_hwm, rss_bytes, run_worker,
                                  trim_heap, write_outputs)

TAG = "@@aurora-bench-live "
QUESTION = "What is moving in the video?"
CLIP_SECONDS = 10


def write_stream(path: Path, minutes: float, fps: int, size: int) -> int:
    """``minutes`` of moving-shape clips (a new one every 10 s) as one MPEG-TS file, encoded clip by clip (never
    more than one clip of frames in memory); returns the frame count."""
    import random

    import av

    from aurora.data.synthetic import COLORS, DIRECTIONS, SHAPES, render

    total = int(round(minutes * 60 * fps))
    rng = random.Random(0)
    written = 0
    with av.open(str(path), mode="w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(fps * CLIP_SECONDS)}
        while written < total:
            n = min(fps * CLIP_SECONDS, total - written)
            clip = render(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(DIRECTIONS)), n, size, rng)
            for frame in clip:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            written += n
        for packet in stream.encode():
            container.mux(packet)
    return written


# ------------------------------------------------------------------------------------------------ worker


def _worker(spec: dict[str, Any]) -> int:
    mallopt(MEMORY_MMAP_THRESHOLD)  # before anything large exists (see aurora.tools.bench_memory)
    import torch

    from aurora.data.stream import LiveFrames
    from aurora.infer.engine import Generation, StreamEngine, flatten_state
    from aurora.infer.live import LiveReader
    from aurora.model import AuroraModel

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = AuroraModel.from_specs(**spec["model"]).eval()
    engine = StreamEngine(model, chunk_frames=spec["chunk_frames"])
    gen = Generation(max_new_tokens=spec["new_tokens"], stop=(), eos_id=None)
    context = engine.template.generic
    # warm-up: the first calls' costs (allocator, libraries, FFmpeg) stay out of the records
    warm = LiveReader(engine, LiveFrames(spec["video"], fps=spec["fps"], follow=False, max_frames=32), context).run()
    engine.answer(warm.current(), QUESTION, gen)
    del warm
    trim_heap()
    resettable = reset_hwm()
    base = rss_bytes()
    records: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    next_mark = [0.0]

    def record(reader: LiveReader) -> None:
        t = reader.stream_time
        if t is None or t + 1e-9 < next_mark[0]:
            return
        vs = reader.current()
        a0 = time.perf_counter()
        engine.answer(vs, QUESTION, gen)  # a question from a fork, as --interactive answers it
        answer_s = time.perf_counter() - a0
        rss = rss_bytes()
        records.append({
            "stream_s": t, "frames": vs.frames, "positions": vs.positions, "rss_bytes": rss,
            "hwm_bytes": hwm_bytes() if resettable else None, "added_bytes": rss - base,
            "state_bytes": sum(x.numel() * x.element_size() for x in flatten_state(vs.state)[0].values()),
            "answer_s": answer_s, "wall_s": time.perf_counter() - t0,
        })
        if resettable:
            reset_hwm()
        next_mark[0] += spec["every"]

    frames = LiveFrames(spec["video"], fps=spec["fps"], short_side=engine.image_size, live_timeout=1.0)
    reader = LiveReader(engine, frames, context, on_batch=record).run()
    print(TAG + json.dumps({
        "records": records, "frames": reader.frames_read, "decoded": frames.decoded, "base_rss_bytes": base,
        "seconds": time.perf_counter() - t0, "hwm_method": "VmHWM reset per record" if resettable else None,
        "threads": torch.get_num_threads(), "n_params": sum(p.numel() for p in model.parameters()),
        "device_name": platform.processor() or platform.machine(),
    }), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ parent


def model_spec(args: argparse.Namespace, backbone: str) -> dict[str, Any]:
    from aurora.tools.bench_memory import model_specs

    return model_specs(args, backbone)


def run_bench(args: argparse.Namespace, log=print) -> list[dict[str, Any]]:
    import torch

    from aurora.registry import RNN

    for name in args.backbones:
        RNN.get(name)  # unknown names fail now, listing the known ones
    results = []
    with tempfile.TemporaryDirectory(prefix="aurora-bench-live-") as tmp:
        video = Path(tmp) / "stream.ts"
        t0 = time.monotonic()
        total = write_stream(video, args.minutes, args.source_fps, args.image_size)
        log(f"[bench live] {args.minutes:g} min of video ({total} frames at {args.source_fps} fps, "
            f"{args.image_size} px, {video.stat().st_size / 2**20:.1f} MiB) written in {time.monotonic() - t0:.1f} s")
        for name in args.backbones:
            spec = {"model": model_spec(args, name), "video": str(video), "fps": args.fps, "every": args.every,
                    "chunk_frames": args.chunk_frames, "new_tokens": args.new_tokens, "threads": args.threads}
            t0 = time.monotonic()
            got, reason = run_worker("aurora.tools.bench_live", TAG, spec, args.max_seconds)
            res = {"backbone": name, "status": "ok" if got else "error", "reason": reason,
                   "wall_s": time.monotonic() - t0, "minutes": args.minutes, "source_fps": args.source_fps,
                   "fps": args.fps, "image_size": args.image_size, "d_model": args.d_model, "n_layer": args.n_layer,
                   "chunk_frames": args.chunk_frames, "torch": torch.__version__, **(got or {})}
            log(f"[bench live] {name}: {res['status']}" + (f" ({reason})" if reason else
                f", {res['frames']} frames read in {res['seconds']:.0f} s"))
            results.append(res)
    return results


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per backbone: RSS and state from the first record to the last (MiB), and the largest RSS seen."""
    mib = 1 / 2**20
    out = {}
    for r in results:
        recs = r.get("records") or []
        if len(recs) < 2:
            continue
        first, last = recs[0], recs[-1]
        peaks = [x["hwm_bytes"] or x["rss_bytes"] for x in recs]
        out[r["backbone"]] = {
            "from_min": first["stream_s"] / 60, "to_min": last["stream_s"] / 60,
            "rss_first_mib": first["rss_bytes"] * mib, "rss_last_mib": last["rss_bytes"] * mib,
            "rss_growth_mib": (last["rss_bytes"] - first["rss_bytes"]) * mib,
            "peak_growth_mib": (peaks[-1] - peaks[0]) * mib, "peak_max_mib": max(peaks) * mib,
            "state_first_mib": first["state_bytes"] * mib, "state_last_mib": last["state_bytes"] * mib,
            "answer_s_first": first["answer_s"], "answer_s_last": last["answer_s"],
        }
    return out


def format_table(summ: dict[str, Any]) -> str:
    rows = ["| backbone | minutes | RSS first / last (MiB) | RSS growth (MiB) | peak growth (MiB) | state first / last "
            "(MiB) | answer s first / last |", "|---|---|---|---|---|---|---|"]
    for name, s in summ.items():
        rows.append(f"| {name} | {s['from_min']:.1f}-{s['to_min']:.1f} | {s['rss_first_mib']:.1f} / "
                    f"{s['rss_last_mib']:.1f} | {s['rss_growth_mib']:+.2f} | {s['peak_growth_mib']:+.2f} | "
                    f"{s['state_first_mib']:.3f} / {s['state_last_mib']:.3f} | {s['answer_s_first']:.3f} / "
                    f"{s['answer_s_last']:.3f} |")
    return "\n".join(rows)


def write_plot(results: list[dict[str, Any]], path: str | Path) -> None:
    plt = pyplot("aurora bench live --plot")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        recs = r.get("records") or []
        if not recs:
            continue
        x = [e["stream_s"] / 60 for e in recs]
        a.plot(x, [e["rss_bytes"] / 2**20 for e in recs], marker=".", label=f"{r['backbone']} RSS")
        if recs[0].get("hwm_bytes") is not None:
            a.plot(x, [e["hwm_bytes"] / 2**20 for e in recs], linestyle=":", label=f"{r['backbone']} peak")
        b.plot(x, [e["state_bytes"] / 2**20 for e in recs], marker=".", label=r["backbone"])
    a.set(xlabel="stream minutes read", ylabel="MiB", title="process resident set")
    b.set(xlabel="stream minutes read", ylabel="MiB", title="language-model state (KV cache for the transformer)")
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("live reading (aurora ask --interactive): memory over an hour of stream", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aurora bench live", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", type=lambda s: [x for x in s.split(",") if x], default=["rwkv6", "transformer"],
                   help="comma-separated registered names (default: rwkv6,transformer)")
    p.add_argument("--minutes", type=float, default=60.0, help="minutes of stream (default: %(default)s)")
    p.add_argument("--source-fps", type=int, default=2, help="frames per second of the stream written")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second read (sampled by stream time)")
    p.add_argument("--every", type=float, default=60.0, help="seconds of stream between records")
    p.add_argument("--image-size", type=int, default=32, help="frame side in pixels (default: %(default)s)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--vision-width", type=int, default=64)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--keep-ratio", type=float, default=0.25)
    p.add_argument("--chunk-frames", type=int, default=16, help="at most this many frames per read step")
    p.add_argument("--new-tokens", type=int, default=4, help="tokens of each question's answer")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the workers")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="wall-clock limit of one backbone's run")
    p.add_argument("--json", default=None, help="write the records and summary here")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    return p


def bench_live_main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.fps <= 0 or args.every <= 0 or args.source_fps < 1:
        p.error("--minutes, --fps, --every must be > 0 and --source-fps >= 1")
    if args.image_size % 2:
        p.error("--image-size must be even (H.264 in yuv420p)")
    results = run_bench(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    summ = summary(results)
    print(format_table(summ))
    write_outputs(args, {"results": results, "summary": summ}, results, write_plot)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(json.loads(sys.argv[2])))
    sys.exit(bench_live_main(sys.argv[1:]))
