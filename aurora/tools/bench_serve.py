"""``aurora bench serve``: a bounded load test of ``aurora serve`` on 127.0.0.1.

    aurora bench serve --model DIR_OR_CKPT [--clients 4] [--videos 3] [--questions 5] [--stream]
                       [--video PATH ...] [--max-tokens 16] [--cache-mib 64] [--time-limit 600]
                       [--json P.json --plot P.png]

Starts the server as a subprocess (``aurora serve`` on a free port of 127.0.0.1, the same Python), waits for
``/health``, sends one warm-up request (not counted), then ``--clients`` threads share a queue of ``videos x
questions`` requests: the first question about a video sends the video (a base64 data URL) with the question, each
later one is a follow-up in the same conversation (the video in the first user message), which the server
answers from the state it cached. The videos are synthetic moving-shape clips (``aurora data synthetic``'s
renderer, the questions its three) unless ``--video`` files are given. Meanwhile the server's resident memory is
sampled from ``/proc/PID/status`` every ``--rss-every`` seconds.

Prints and writes (``--json``, ``--plot``: latency of each request and server RSS over the run): requests/s,
latency p50 / p90 / p99 / max, failed requests (exit code 1 if any), the server's cache hits / misses and reads
(from ``GET /v1/stats``), server RSS at the start / end / peak of the load. Everything is bounded: the request
count, a timeout per request, ``--time-limit`` for the whole run; the server is stopped at the end in every case.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from aurora.io import pyplot, save_figure
from aurora.tools.measure import write_outputs


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation between order statistics (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def rss_of(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes (VmRSS from /proc), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssSampler(threading.Thread):
    """Samples ``rss_of(pid)`` every ``every`` seconds into ``samples`` [(seconds from start, bytes)]."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = rss_of(self.pid)
            if rss is not None:
                self.samples.append((time.perf_counter() - self.t0, rss))
            self._halt.wait(self.every)

    def stop(self) -> list[tuple[float, int]]:
        self._halt.set()
        self.join(5)
        return self.samples


# ------------------------------------------------------------------------------------------------ the load


def conversation(video: bytes, questions: list[str], k: int) -> list[dict[str, Any]]:
    """The messages of question ``k`` about ``video``: the video with the first question, then follow-ups."""
    url = "data:video/mp4;base64," + base64.b64encode(video).decode()
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                              {"type": "text", "text": questions[0]}]}]
    if k:
        messages += [{"role": "assistant", "content": "(earlier answer)"},
                     {"role": "user", "content": questions[k % len(questions)]}]
    return messages


def post(base: str, body: dict[str, Any], timeout: float, stream: bool) -> dict[str, Any]:
    """One request: status, latency, time to the first streamed piece, cache header, answer length."""
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    out: dict[str, Any] = {"start": t0}
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out.update(status=r.status, cache=r.headers.get("X-Aurora-Cache"))
            if stream:
                text, done = [], False
                for line in r:
                    line = line.decode().strip()
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        out.update(status=500, error=chunk["error"].get("message"))
                        break
                    piece = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
                    if piece:
                        out.setdefault("first_piece_s", time.perf_counter() - t0)
                        text.append(piece)
                out["answer_chars"] = len("".join(text))
                if not done and "error" not in out:
                    out.update(status=599, error="the stream ended without data: [DONE]")
            else:
                answer = json.loads(r.read())
                out["answer_chars"] = len(answer["choices"][0]["message"]["content"])
                out["completion_tokens"] = answer["usage"]["completion_tokens"]
    except urllib.error.HTTPError as e:
        out.update(status=e.code, error=e.read()[:300].decode(errors="replace"))
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        out.update(status=0, error=f"{type(e).__name__}: {e}")
    out["latency_s"] = time.perf_counter() - t0
    return out


def run_load(base: str, model: str, videos: list[tuple[bytes, list[str]]], questions: int, clients: int,
             max_tokens: int, stream: bool = False, timeout: float = 120.0,
             deadline: float | None = None) -> list[dict[str, Any]]:
    """``clients`` threads send ``len(videos) x questions`` requests (question k of video v, v by v); returns one
    record per request sent (requests left when ``deadline`` passes are not sent)."""
    jobs: queue.Queue = queue.Queue()
    for k in range(questions):
        for v in range(len(videos)):
            jobs.put((v, k))
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        while True:
            try:
                v, k = jobs.get_nowait()
            except queue.Empty:
                return
            if deadline is not None and time.perf_counter() > deadline:
                return
            video, qs = videos[v]
            body = {"model": model, "messages": conversation(video, qs, k), "temperature": 0,
                    "max_tokens": max_tokens, "stream": stream}
            rec = post(base, body, timeout, stream)
            rec.update(client=i, video=v, question=k)
            with lock:
                records.append(rec)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def summarize(records: list[dict[str, Any]], seconds: float, rss: list[tuple[float, int]],
              stats: dict[str, Any] | None) -> dict[str, Any]:
    ok = [r for r in records if r.get("status") == 200]
    lat = [r["latency_s"] * 1000 for r in ok]
    first = [r["first_piece_s"] * 1000 for r in ok if "first_piece_s" in r]
    mib = [b / 2**20 for _, b in rss]
    out = {
        "requests": len(records), "failed": len(records) - len(ok), "seconds": round(seconds, 3),
        "requests_per_s": round(len(ok) / seconds, 3) if seconds > 0 else None,
        "latency_ms": {**{f"p{q}": _round(percentile(lat, q)) for q in (50, 90, 99)},
                       "max": _round(max(lat, default=None))},
        "cache_header": {h: sum(r.get("cache") == h for r in ok) for h in ("hit", "miss")},
        "server_rss_mib": {"start": _round(mib[0] if mib else None), "end": _round(mib[-1] if mib else None),
                           "max": _round(max(mib, default=None)), "min": _round(min(mib, default=None)),
                           "samples": len(mib)},
        "errors": sorted({str(r.get("error"))[:200] for r in records if r.get("status") != 200}),
    }
    if first:
        out["first_piece_ms"] = {f"p{q}": _round(percentile(first, q)) for q in (50, 99)}
    if stats is not None:
        out["server"] = {"cache": stats.get("cache"), "reads": stats.get("reads"),
                         "model_busy_seconds": stats.get("model_busy_seconds"), "errors": stats.get("errors")}
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# ------------------------------------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_for(base: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it served")
        try:
            get_json(base + "/health", 2.0)
            return
        except (OSError, ValueError):
            time.sleep(0.25)
    raise RuntimeError(f"the server did not answer /health within {timeout:g} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly on SIGINT
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def synthetic_videos(count: int, frames: int, size: int, seed: int) -> list[tuple[bytes, list[str]]]:
    """``count`` moving-shape clips, each with its three questions (colour, shape, motion)."""
    from aurora.data.synthetic import CATEGORIES, generate, question_for

    out = []
    for s in generate(count, frames=frames, size=size, seed=seed, prefix="bench"):
        m = s["meta"]
        out.append((s["video"], [question_for(c, m["color"], m["shape"], m["direction"])[0] for c in CATEGORIES]))
    return out


def write_plot(payload: dict[str, Any], path: str) -> None:
    plt = pyplot("aurora bench serve")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    recs = payload["records"]
    t0 = payload["load_start"]
    for hit, color in (("hit", "tab:green"), ("miss", "tab:orange"), (None, "tab:red")):
        pts = [(r["start"] - t0 + r["latency_s"], r["latency_s"] * 1000) for r in recs if r.get("cache") == hit]
        if pts:
            label = {"hit": "cache hit", "miss": "cache miss"}.get(hit, "failed")
            a.scatter(*zip(*pts), s=14, color=color, label=label)
    a.set(xlabel="seconds into the load (request done)", ylabel="latency (ms)",
          title=f"{payload['summary']['requests']} requests, {payload['config']['clients']} clients")
    a.legend()
    rss = [(t, m) for t, m in payload["rss"] if t >= 0] or payload["rss"]  # from the moment it served (not startup)
    if rss:
        b.plot([t for t, _ in rss], [m / 2**20 for _, m in rss], color="tab:blue")
        s = payload["summary"]["server_rss_mib"]
        b.text(0.02, 0.04, f"during the load: {s['start']} -> {s['end']} MiB (peak {s['max']})",
               transform=b.transAxes)
    b.axvline(payload["load_start_rss_t"], color="gray", ls=":", label="load starts")
    b.axvline(payload["load_end_rss_t"], color="gray", ls="--", label="load ends")
    b.set(xlabel="seconds since the server was up", ylabel="server RSS (MiB)", title="server resident memory")
    b.legend()
    fig.tight_layout()
    save_figure(fig, path)


def format_report(s: dict[str, Any]) -> str:
    lat, rss = s["latency_ms"], s["server_rss_mib"]
    lines = [f"requests {s['requests']} (failed {s['failed']}) in {s['seconds']} s: {s['requests_per_s']} requests/s",
             f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
             f"server RSS MiB: start {rss['start']}  end {rss['end']}  max {rss['max']}  ({rss['samples']} samples)"]
    if "first_piece_ms" in s:
        lines.append(f"first streamed piece ms: p50 {s['first_piece_ms']['p50']}  p99 {s['first_piece_ms']['p99']}")
    if "server" in s:
        c = s["server"]["cache"] or {}
        lines.append(f"server cache: {c.get('hits')} hits, {c.get('misses')} misses, {s['server']['reads']} video "
                     f"reads, {c.get('entries')} states ({c.get('bytes')} bytes), {c.get('evictions')} evictions")
    lines += [f"error: {e}" for e in s["errors"]]
    return "\n".join(lines)


def bench_serve_main(argv: list[str]) -> int:
    """``aurora bench serve``: a bounded load test of the server on 127.0.0.1 (see the module docstring)."""
    p = argparse.ArgumentParser(prog="aurora bench serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="what `aurora serve --model` takes (export dir or checkpoint)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default: %(default)s)")
    p.add_argument("--videos", type=int, default=3, help="synthetic videos (default: %(default)s)")
    p.add_argument("--questions", type=int, default=5, help="questions per video (default: %(default)s)")
    p.add_argument("--video", action="append", default=None, help="use these video files instead (repeatable)")
    p.add_argument("--frames", type=int, default=16, help="frames of each synthetic clip (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="side of each synthetic clip (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each request (default: %(default)s)")
    p.add_argument("--stream", action="store_true", help="ask with stream: true (and time the first piece)")
    p.add_argument("--cache-mib", type=float, default=64, help="the server's --cache-mib (default: %(default)s)")
    p.add_argument("--server-arg", action="append", default=[], help="one more argument for aurora serve")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds for the server to come up")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole load (then stop sending)")
    p.add_argument("--rss-every", type=float, default=0.1, help="seconds between RSS samples")
    p.add_argument("--json", default=None, help="write the figures and every request here")
    p.add_argument("--plot", default=None, help="write a PNG (latency per request, server RSS over time)")
    args = p.parse_args(argv)
    for flag in ("clients", "videos", "questions", "max_tokens", "frames"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if not os.path.exists(args.model):
        p.error(f"--model {args.model}: no such file or directory")
    if args.video:
        missing = [v for v in args.video if not Path(v).is_file()]
        if missing:
            p.error(f"--video: no such file: {', '.join(missing)}")
        generic = ["What happens in the video?", "What colour is the main object?", "Where does it move?"]
        videos = [(Path(v).read_bytes(), generic) for v in args.video]
    else:
        videos = synthetic_videos(args.videos + 1, args.frames, args.size, args.seed)  # one more: the warm-up
    warm = videos[0] if args.video else videos.pop()  # the warm-up: a synthetic clip of its own, or the first file
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "aurora.cli", "serve", "--model", args.model, "--host", "127.0.0.1", "--port",
           str(port), "--cache-mib", str(args.cache_mib), "--log-level", "warning", *args.server_arg]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    log(f"aurora bench serve: starting {' '.join(cmd[1:])}")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    sampler = RssSampler(proc.pid, args.rss_every)
    sampler.start()
    try:
        try:
            wait_for(base, proc, args.startup_timeout)
        except RuntimeError as e:
            print(f"aurora bench serve: error: {e}", file=sys.stderr)
            return 2
        up = time.perf_counter() - sampler.t0
        name = get_json(base + "/v1/models")["data"][0]["id"]
        w = post(base, {"model": name, "messages": conversation(warm[0], warm[1], 0), "temperature": 0,
                        "max_tokens": args.max_tokens, "stream": args.stream}, args.request_timeout, args.stream)
        if w.get("status") != 200:
            print(f"aurora bench serve: error: the warm-up request failed: {w.get('error')}", file=sys.stderr)
            return 2
        before = get_json(base + "/v1/stats")
        t0 = time.perf_counter()
        start_rss_t = t0 - sampler.t0
        records = run_load(base, name, videos, args.questions, args.clients, args.max_tokens, args.stream,
                           args.request_timeout, deadline=t0 + args.time_limit)
        seconds = time.perf_counter() - t0
        end_rss_t = time.perf_counter() - sampler.t0
        after = get_json(base + "/v1/stats")
    finally:
        rss = sampler.stop()  # the memory while serving, not while shutting down
        stop(proc)
    during = [(t - up, b) for t, b in rss if start_rss_t <= t <= end_rss_t] or [(t - up, b) for t, b in rss[-1:]]
    server = {"cache": {k: after["cache"][k] - before["cache"].get(k, 0) if k in ("hits", "misses", "evictions",
                                                                                   "too_large") else after["cache"][k]
                        for k in after["cache"]},
              "reads": after["reads"] - before["reads"], "model_busy_seconds": round(
                  after["model_busy_seconds"] - before["model_busy_seconds"], 3),
              "errors": after["errors"]}
    summary = summarize(records, seconds, during, server)
    payload = {"command": "aurora bench serve " + " ".join(argv), "load_average": os.getloadavg(),
               "config": {"clients": args.clients, "videos": len(videos), "questions": args.questions,
                          "max_tokens": args.max_tokens, "stream": args.stream, "cache_mib": args.cache_mib,
                          "frames": None if args.video else args.frames, "model": args.model},
               "summary": summary, "records": [{k: (round(v - t0, 4) if k == "start" else v) for k, v in r.items()}
                                               for r in sorted(records, key=lambda r: r["start"])],
               "load_start": 0.0, "load_start_rss_t": start_rss_t - up, "load_end_rss_t": end_rss_t - up,
               "rss": [(round(t - up, 3), b) for t, b in rss]}
    print(format_report(summary))
    write_outputs(args, payload, payload, write_plot)
    return 0 if summary["failed"] == 0 and len(records) == len(videos) * args.questions else 1


if __name__ == "__main__":
    sys.exit(bench_serve_main(sys.argv[1:]))
