"""``aurora bench decode``: seconds and peak memory to sample frames from long videos, for the project's reader
(:class:`aurora.data.reader.FrameReader`: keyframe seek, resize in FFmpeg), the full decode it replaced
(every frame to RGB, then sample), ``full-stream`` (the full decode's work without holding the frames: its time
where its memory would not fit), and the peers ``decord2`` / ``torchcodec`` where installed.

The videos are generated once (H.264, GOP 250, B-frames, moving content) into ``--cache``; each point (video x
sampling x backend) runs in a fresh process, so peak RSS is that point's alone (reported as the process's
high-water mark and as the growth over its resident size before reading). The full decode holds every frame:
points whose frames would exceed ``--full-limit`` are skipped with that reason instead of swapping the machine.

    aurora bench decode --json decode.json --plot decode.png
    aurora bench decode --heights 360 --minutes 1 --json decode.json   # a reduced grid
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from aurora.tools.measure import ru_maxrss_bytes, rss_bytes, run_worker, write_outputs

TAG = "BENCH_DECODE "
SAMPLINGS = ("8", "64", "256", "1fps")
FPS = 30


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _minutes(text: str) -> list[float]:
    """Video lengths in minutes ('10') or seconds ('30s'), comma-separated."""
    return [float(x[:-1]) / 60 if x.endswith("s") else float(x) for x in text.split(",") if x]


def default_cache() -> str:
    """Where the generated videos are kept across runs (and checkouts): ``$XDG_CACHE_HOME/aurora/bench_decode``."""
    import os

    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "aurora", "bench_decode")


def make_video(path: Path, height: int, minutes: float, fps: int = FPS, log=print, preset: str = "ultrafast") -> Path:
    """An H.264 mp4 (libx264 ``preset``, GOP 250, 2 B-frames, yuv420p) of ``minutes`` of moving gradients, written
    once (to ``NAME.tmp.mp4``, renamed when complete, so an interrupted run never leaves a short video)."""
    import av
    import numpy as np

    if path.exists():
        return path
    if minutes > 1 and float(minutes).is_integer():  # whole minutes: the one-minute video, repeated
        one = make_video(path.with_name(path.name.replace(f"_{minutes:g}min", "_1min")), height, 1, fps, log, preset)
        return repeat_video(one, path, int(minutes), log)
    width = height * 16 // 9 // 2 * 2
    n = int(minutes * 60 * fps)
    log(f"writing {path.name}: {n} frames of {width}x{height} ...")
    tmp = path.with_suffix(".tmp.mp4")
    y, x = np.mgrid[0:height, 0:width]
    base = ((x + y) % 256).astype(np.uint8)
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": preset, "crf": "28",
                     "x264-params": "keyint=250:min-keyint=250:bframes=2:b-adapt=0:scenecut=0"}
        for i in range(n):
            frame = np.empty((height, width, 3), np.uint8)
            frame[..., 0] = np.roll(base, i * 3, axis=1)
            frame[..., 1] = (i * 2) % 256
            frame[..., 2] = np.roll(base, i, axis=0)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    tmp.replace(path)
    return path


def repeat_video(src: Path, path: Path, times: int, log=print) -> Path:
    """``src``'s packets ``times`` times over, each copy's timestamps shifted by the source's length: a video
    ``times`` as long with the same stream structure (every GOP starts with an IDR frame, so the copies join
    cleanly), written in seconds instead of the hour libx264 takes for 60 minutes of 720p on a busy machine."""
    import av

    log(f"writing {path.name}: {src.name} {times} times over ...")
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(src)) as probe:
        stream = probe.streams.video[0]
        packets = [(p.pts, p.dts, p.duration) for p in probe.demux(stream) if p.size]
        length = max(pts + (d or 0) for pts, _, d in packets) - min(pts for pts, _, _ in packets)
    with av.open(str(tmp), "w") as dst:
        target = None
        for k in range(times):
            with av.open(str(src)) as c:
                stream = c.streams.video[0]
                if target is None:
                    target = dst.add_stream_from_template(stream)
                for p in c.demux(stream):
                    if not p.size:
                        continue
                    p.pts, p.dts = p.pts + k * length, p.dts + k * length
                    p.stream = target
                    dst.mux(p)
    tmp.replace(path)
    return path


def _worker(spec: dict[str, Any]) -> None:
    from aurora.data.reader import read_with

    before = rss_bytes()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    sampling = spec["sampling"]
    kwargs = {"fps": 1.0} if sampling == "1fps" else {"num_frames": int(sampling)}
    ours = spec["backend"] in ("aurora", "aurora-plain", "aurora-demux")
    # the peers and the full decodes read the frames our reader chose (by presentation timestamp), so every
    # point reads the same frames; ours chooses its own (its index is part of its cost) and must agree
    stats: dict[str, Any] = {}
    frames = read_with(spec["backend"], spec["video"], short_side=spec.get("short_side"),
                       indices=None if ours else spec.get("indices"), stats=stats, **kwargs)
    seconds = time.perf_counter() - t0
    if ours and spec.get("indices") is not None and int(frames.shape[0]) != len(spec["indices"]):
        raise RuntimeError(f"read {frames.shape[0]} frames, the sampling chose {len(spec['indices'])}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = ru_maxrss_bytes()
    print(TAG + json.dumps({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu0,
                            "peak_rss": peak, "rss_before": before,
                            "peak_growth": max(0, peak - before), "frames": int(frames.shape[0]),
                            "shape": list(frames.shape[1:]), **stats}), flush=True)


def sampled_indices(video: Path, sampling: str) -> list[int]:
    """The frames a sampling reads from ``video``, as our reader chooses them (every backend reads these)."""
    from aurora.data.reader import FrameReader

    with FrameReader(video) as r:
        return r.indices(fps=1.0) if sampling == "1fps" else r.indices(num_frames=int(sampling))


def _run_point(spec: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    return run_worker("aurora.tools.bench_decode", TAG, spec, timeout)


def run_bench(args: argparse.Namespace, log=print) -> list[dict[str, Any]]:
    from aurora.data.reader import backend_unavailable

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for height in args.heights:
        for minutes in args.minutes:
            tag = "" if args.preset == "ultrafast" else f"_{args.preset}"
            video = make_video(cache / f"bench_{height}p_{minutes:g}min{tag}.mp4", height, minutes, log=log,
                               preset=args.preset)
            frames = int(minutes * 60 * FPS)
            width = height * 16 // 9 // 2 * 2
            for sampling in args.samplings:
                indices = sampled_indices(video, sampling)
                for backend in args.backends:
                    if backend == "full-stream" and sampling not in args.full_stream_samplings:
                        continue  # its cost is every frame's, whatever the sampling: measured where asked
                    rec = {"height": height, "minutes": minutes, "sampling": sampling, "backend": backend,
                           "video_frames": frames, "preset": args.preset,
                           "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                           "load_average": [round(x, 2) for x in os.getloadavg()]}
                    reason = backend_unavailable(backend)
                    held = frames * width * height * 3
                    if reason is None and backend == "full" and held > args.full_limit * 2**30:
                        reason = f"would hold {held / 2**30:.1f} GiB of RGB frames (over --full-limit {args.full_limit:g} GiB)"
                    if reason is None:
                        spec = {"video": str(video), "sampling": sampling, "backend": backend,
                                "short_side": args.short_side, "indices": indices}
                        runs = []
                        for _ in range(args.repeat):  # each run in its own fresh process
                            result, reason = _run_point(spec, args.max_seconds)
                            if reason:
                                break
                            runs.append(result)
                        if runs:  # the fastest run's record; every run's seconds beside it
                            rec.update(min(runs, key=lambda r: r["seconds"]))
                            if args.repeat > 1:
                                rec["runs_seconds"] = [r["seconds"] for r in runs]
                                rec["runs_cpu_seconds"] = [r["cpu_seconds"] for r in runs]
                    if reason:
                        rec["skipped"] = reason
                        log(f"{height}p {minutes:g} min {sampling:>5} {backend:>12}: skipped ({reason})")
                    else:
                        log(f"{height}p {minutes:g} min {sampling:>5} {backend:>12}: {rec['seconds']:8.2f} s "
                            f"({rec['cpu_seconds']:.2f} s CPU), "
                            f"peak RSS {rec['peak_rss'] / 2**20:7.0f} MiB (+{rec['peak_growth'] / 2**20:.0f} MiB "
                            f"reading), {rec['frames']} frames {rec['shape']}")
                    records.append(rec)
    return records


def _key(rec: dict[str, Any]) -> tuple:
    return rec["height"], rec["minutes"], rec.get("preset", "ultrafast"), rec["sampling"], rec["backend"]


def merge_records(old: dict[str, Any], new: list[dict[str, Any]], settings: dict[str, Any]
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``old`` (an earlier ``--json``) with the points measured again replaced in place by ``new`` and the other
    new points appended: each record keeps its own ``measured_at`` (absent: measured before that field), and
    ``runs`` lists every run's settings."""
    fresh = {_key(r): r for r in new}
    merged = [fresh.pop(_key(r), r) for r in old.get("records", [])]
    merged += [r for r in new if _key(r) in fresh]
    runs = old.get("runs") or ([old["settings"]] if "settings" in old else [])
    return merged, runs + [settings]


def write_plot(records: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if "seconds" in r]
    videos = sorted({(r["height"], r["minutes"]) for r in done})
    fig, axes = plt.subplots(2, max(1, len(videos)), figsize=(4.5 * max(1, len(videos)), 7), squeeze=False)
    for col, (h, m) in enumerate(videos):
        for backend in sorted({r["backend"] for r in done}):
            pts = [r for r in done if (r["height"], r["minutes"], r["backend"]) == (h, m, backend)]
            labels = [r["sampling"] for r in pts]
            axes[0][col].plot(labels, [r["seconds"] for r in pts], "o-", label=backend)
            axes[1][col].plot(labels, [r["peak_rss"] / 2**20 for r in pts], "o-", label=backend)
        axes[0][col].set_title(f"{h}p, {m:g} min")
        axes[0][col].set_yscale("log")
        axes[0][col].set_ylabel("seconds")
        axes[1][col].set_yscale("log")
        axes[1][col].set_ylabel("peak RSS (MiB)")
        axes[1][col].set_xlabel("frames sampled")
        axes[0][col].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bench_decode_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aurora bench decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heights", type=_ints, default=[360, 720], help="video heights (16:9), comma-separated")
    p.add_argument("--minutes", type=_minutes, default=[1.0, 10.0, 60.0],
                   help="video lengths in minutes, comma-separated; '30s' is 30 seconds (short clips)")
    p.add_argument("--samplings", type=lambda t: [x for x in t.split(",") if x], default=list(SAMPLINGS),
                   help="frame counts and/or '1fps', comma-separated")
    p.add_argument("--backends", type=lambda t: [x for x in t.split(",") if x],
                   default=["aurora", "full", "decord2", "torchcodec"])
    p.add_argument("--short-side", type=int, default=None, help="resize to this short side (e.g. 384)")
    p.add_argument("--full-limit", type=float, default=8.0, help="GiB of RGB the full decode may hold")
    p.add_argument("--full-stream-samplings", type=lambda t: [x for x in t.split(",") if x], default=["64"],
                   help="the samplings at which the full-stream backend runs (it decodes every frame anyway)")
    p.add_argument("--preset", default="ultrafast", help="libx264 preset of the generated videos (ultrafast)")
    p.add_argument("--repeat", type=int, default=1, help="runs per point, each in a fresh process; the fastest is kept")
    p.add_argument("--max-seconds", type=float, default=900.0, help="per point")
    p.add_argument("--cache", default=default_cache(), help="where the generated videos are kept (reused)")
    p.add_argument("--json", default=None)
    p.add_argument("--update", default=None, help="an earlier --json: keep its records, replacing the points "
                   "measured again (write the result to --json, which may be the same file)")
    p.add_argument("--plot", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0
    bad = [s for s in args.samplings if s != "1fps" and not (s.isdigit() and int(s) > 0)]
    if bad:
        p.error(f"--samplings takes frame counts or 1fps, got {bad}")
    records = run_bench(args)
    settings = {k: v for k, v in vars(args).items() if k not in ("worker",)}
    runs = [settings]
    if args.update and Path(args.update).exists():
        records, runs = merge_records(json.loads(Path(args.update).read_text()), records, settings)
    payload = {"settings": settings, "runs": runs, "records": records}
    write_outputs(args, payload, records, write_plot)
    return 0


if __name__ == "__main__":
    sys.exit(bench_decode_main(sys.argv[1:]))
