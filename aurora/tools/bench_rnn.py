"""``aurora bench rnn``: throughput, step latency and peak memory of the registered language backbones.

For every backbone (``--backbones``, default: all registered) at one size (``--d-model``, ``--n-layer``) and each
sequence length T of ``--lengths``, one fresh Python process builds the model (random weights, inputs are random
embeddings of shape (``--batch``, T, d_model)) and measures, under ``torch.no_grad()``:

* **chunked** — one forward over all T embeddings (the chunked / parallel form); tokens/s.
* **streamed** — the same T tokens in ``--piece``-sized pieces, passing the state along; tokens/s.
* **step** — ``--steps`` forwards of one token each (the recurrent step form), starting from the state the
  streamed prefill left (so a Transformer steps against a T-token cache); ms per token, tokens/s, and the ratio
  chunked tokens/s over step-loop tokens/s.
* **peak memory** of each of the three, in MiB above what the process held just before it (weights, inputs and
  the prefill state are already there, so the figure is what the computation itself adds: activations, chunk
  intermediates, outputs, the new state or cache).
  On CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, read in the timed runs.
  On the CPU (Python tracers such as tracemalloc do not see torch's allocations, so the figure is the process's):
  the resident-set high-water mark, Linux's ``VmHWM`` (``/proc/self/status``), reset before each measurement by
  writing ``5`` to ``/proc/self/clear_refs``, minus the resident set size just before. glibc's allocator keeps
  freed blocks in its heap and reuses them, which makes that difference depend on what ran before (we saw
  +-20 MiB from run to run and chunked peaks 2x the live memory); so memory comes from a separate, untimed run of
  each mode, made first, in a process started with ``mallopt(M_MMAP_THRESHOLD, 64 KiB)`` (every block of 64 KiB
  or more is its own mmap, unmapped when freed) and with ``malloc_trim(0)`` before each run: the resident set then
  follows the live tensors (repeat runs agree to 0.1 MiB). That setting costs speed (up to 2.5x on page faults),
  so the timed runs come after it with the mmap / trim thresholds at 32 / 64 MiB, the values glibc's dynamic
  thresholds grow to (timings as with the untouched allocator, within noise). Where the mark cannot be reset,
  and with ``--process-per-mode`` as a cross-check, each run gets a fresh process of its own, the timed ones
  with the untouched allocator, and ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is read instead (the step form
  then has no memory figure: its prefill comes first in the same process).

Each (backbone, T) point runs under a wall-clock limit (``--max-seconds``, process start included). A point that
runs past it is killed and recorded as skipped with the reason (measurements it finished are kept); a point whose
time, extrapolated from the previous length (linearly; quadratically for softmax attention), would exceed the
limit is skipped without running, also with the reason; a point after a timed-out or failed one is skipped.

Output: a table on stdout, ``--json PATH`` (one record per point, with device, torch version and sizes) and
``--plot PATH.png`` (tokens/s and peak memory against T, log axes, one colour per backbone: solid chunked,
dashed streamed). Both files are written to a temporary name first and moved into place.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aurora.io import pyplot, save_figure
from aurora.tools.measure import (MEMORY_MMAP_THRESHOLD, TIMING_MALLOPT, Meter, mallopt, reset_hwm,
                                  write_outputs)

MODES = ("streamed", "step", "chunked")  # the step form continues from the streamed prefill's state
TAG = "@@aurora-bench "  # prefix of the worker's result lines (anything else it prints is ignored)
# how a point's time grows with T, for skipping a length that could not finish (softmax attention is quadratic)
TIME_EXPONENT = {"transformer": 2.0}
# bench-only defaults that keep the backbones comparable at small widths (64-wide heads, as the RNNs use)
BENCH_DEFAULTS = {"transformer": lambda d_model: {"n_head": max(1, d_model // 64)}}


# ------------------------------------------------------------------------------------------------ worker


def _worker(spec: dict[str, Any]) -> int:
    """Measure one (backbone, T) point; one ``TAG`` + JSON line per result, flushed as soon as it is known.

    ``spec["passes"]``, in order: ``memory`` (one untimed run per mode, peak memory only, under the 64 KiB mmap
    threshold), ``time`` (the timed runs) or ``both`` (CUDA: timed runs whose peak is read as well)."""
    import torch

    def emit(**record: Any) -> None:
        print(TAG + json.dumps(record), flush=True)

    cpu_memory = spec["device"] == "cpu" and "memory" in spec["passes"]
    if cpu_memory:  # before the model and inputs exist, so that no large block ever sits in the heap
        mallopt(MEMORY_MMAP_THRESHOLD)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from aurora.registry import RNN

    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    meter = Meter(device, spec["resettable"])
    torch.manual_seed(spec.get("seed", 0))
    model = RNN.build({"name": spec["backbone"], **spec["kwargs"]}).to(device=device, dtype=dtype).eval()
    b, t, piece, steps = spec["batch"], spec["T"], spec["piece"], spec["steps"]
    x = torch.randn(b, t, model.d_model, device=device, dtype=dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    emit(kind="info", n_params=sum(p.numel() for p in model.parameters()), mem_method=meter.method,
         threads=torch.get_num_threads(),
         device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or
         platform.machine())

    def streamed(state=None):
        for i in range(0, t, piece):
            _, state = model(x[:, i:i + piece], state)
        return state

    def steps_from(state):
        for i in range(steps):
            _, state = model(x[:, i % t: i % t + 1], state)
        return state

    with torch.no_grad():
        _, s = model(x[:, : min(t, 64)])  # warm-up: first-call costs (allocator, kernel compilation) stay out
        model(x[:, :1], s)
        sync()
        for pass_ in spec["passes"]:
            if pass_ == "time" and cpu_memory:  # back to (what glibc's dynamic threshold grows to) for timing
                mallopt(*TIMING_MALLOPT)
            prefill = None  # the state after the streamed prefill; the step form starts from it
            for mode in spec["modes"]:
                try:
                    if mode == "step":
                        if prefill is None:  # not measured in this process: prefill first (untimed)
                            prefill = streamed()
                        start = model(x[:, :1], prefill)[1]  # one untimed step first
                    best, peak = math.inf, 0
                    for _ in range(spec["repeat"] if pass_ != "memory" and mode != "step" else 1):
                        meter.start()
                        sync()
                        t0 = time.perf_counter()
                        if mode == "chunked":
                            out = model(x)
                        elif mode == "streamed":
                            out = prefill = streamed()
                        else:
                            out = steps_from(start)
                        sync()
                        best = min(best, time.perf_counter() - t0)
                        peak = max(peak, meter.peak())
                        del out
                    if pass_ == "memory" and mode == "step" and not meter.resettable:
                        emit(kind="result", mode=mode, peak_bytes=None)  # the prefill before it set the mark
                    elif pass_ == "memory":
                        emit(kind="result", mode=mode, peak_bytes=peak)
                    else:
                        emit(kind="result", mode=mode, seconds=best, tokens=b * (steps if mode == "step" else t),
                             **({"peak_bytes": peak} if pass_ == "both" else {}))
                except torch.cuda.OutOfMemoryError as e:  # type: ignore[attr-defined]
                    torch.cuda.empty_cache()
                    emit(kind="skip", mode=mode, reason=f"out of memory: {str(e).splitlines()[0]}")
    return 0


# ------------------------------------------------------------------------------------------------ parent


def _jobs(spec: dict[str, Any]) -> list[tuple[list[str], list[str]]]:
    """(modes, passes) of each worker process of one point."""
    if spec["device"].startswith("cuda"):
        return [(list(spec["modes"]), ["both"])]
    if spec["resettable"]:
        return [(list(spec["modes"]), ["memory", "time"])]
    return [([m], ["time"]) for m in spec["modes"]] + [([m], ["memory"]) for m in spec["modes"]]


def _run_point(spec: dict[str, Any], timeout: float) -> tuple[dict[str, Any], str | None]:
    """Run the worker(s) of one point; returns the parsed results and an error / timeout reason (or None)."""
    results: dict[str, Any] = {"results": {}, "skips": {}, "info": {}}
    deadline = time.monotonic() + timeout
    for modes, passes in _jobs(spec):
        left = deadline - time.monotonic()
        if left <= 0:
            return results, f"timed out: over --max-seconds {timeout:g} s"
        cmd = [sys.executable, "-m", "aurora.tools.bench_rnn", "--worker",
               json.dumps({**spec, "modes": modes, "passes": passes})]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        reason = None
        try:
            out, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            reason = f"timed out: over --max-seconds {timeout:g} s"
        for line in out.splitlines():
            if line.startswith(TAG):
                rec = json.loads(line[len(TAG):])
                kind = rec.pop("kind")
                if kind == "info":
                    results["info"] = rec
                elif kind == "result":
                    results["results"].setdefault(rec["mode"], {}).update(rec)
                else:
                    results["skips"][rec["mode"]] = rec["reason"]
        if reason is None and proc.returncode == -9:
            reason = "killed (SIGKILL: out of memory?)"
        elif reason is None and proc.returncode != 0:
            tail = [ln for ln in err.strip().splitlines() if ln.strip()]
            reason = f"error (exit {proc.returncode}): {tail[-1] if tail else 'no message'}"
        if reason:
            return results, reason
    return results, None


def _record(base: dict[str, Any], got: dict[str, Any], reason: str | None, wall: float) -> dict[str, Any]:
    res, skips = got["results"], dict(got["skips"])
    for mode in base["modes"]:
        if mode in skips:
            continue
        if "seconds" not in res.get(mode, {}):
            skips[mode] = reason or "not measured"
        elif "peak_bytes" not in res[mode]:
            skips[f"{mode} memory"] = reason or "not measured"
    rec = dict(base)
    rec.pop("modes")
    rec.update(got["info"])
    seconds = {m: res[m]["seconds"] for m in base["modes"] if "seconds" in res.get(m, {})}
    tok_s = {m: res[m]["tokens"] / s for m, s in seconds.items()}
    mib = {m: res[m]["peak_bytes"] / 2**20 for m in base["modes"] if res.get(m, {}).get("peak_bytes") is not None}
    rec.update(
        chunked_tok_s=tok_s.get("chunked"), streamed_tok_s=tok_s.get("streamed"), step_tok_s=tok_s.get("step"),
        step_ms=1000 * seconds["step"] / base["steps"] if "step" in seconds else None,
        chunked_s=seconds.get("chunked"), streamed_s=seconds.get("streamed"), step_s=seconds.get("step"),
        peak_mem_chunked_mib=mib.get("chunked"), peak_mem_streamed_mib=mib.get("streamed"),
        peak_mem_step_mib=mib.get("step"), skipped_modes=skips, wall_s=wall,
    )
    rec["chunked_over_step"] = (rec["chunked_tok_s"] / rec["step_tok_s"]
                                if rec["chunked_tok_s"] and rec["step_tok_s"] else None)
    rec["status"] = "ok" if not skips else ("partial" if seconds or mib else
                                            "error" if reason and reason.startswith(("error", "killed")) else "skipped")
    rec["reason"] = reason if reason else (next(iter(skips.values())) if skips else None)
    return rec


def _skipped(base: dict[str, Any], reason: str) -> dict[str, Any]:
    return _record(base, {"results": {}, "skips": {m: reason for m in base["modes"]}, "info": {}}, reason, 0.0)


def run_bench(args: argparse.Namespace, log=print) -> list[dict[str, Any]]:
    import torch

    from aurora.registry import RNN

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("aurora bench: --device cuda but torch sees no CUDA device")
    lengths = args.lengths or ([1024, 4096, 16384] if device == "cpu" else [2**k for k in range(12, 18)])
    dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    names = args.backbones or RNN.names()
    for name in names:
        RNN.get(name)  # unknown names fail now, listing the known ones
    resettable = device.startswith("cuda") or (not args.process_per_mode and reset_hwm())
    extra = json.loads(args.kwargs) if args.kwargs else {}
    records = []
    for name in names:
        kwargs = {"vocab_size": args.vocab, "d_model": args.d_model, "n_layer": args.n_layer}
        kwargs.update(BENCH_DEFAULTS.get(name, lambda d: {})(args.d_model))
        kwargs.update(extra.get(name, {}))
        prev: dict[str, Any] | None = None
        for t in sorted(lengths):
            base = dict(backbone=name, T=t, batch=args.batch, piece=min(args.piece, t), steps=args.steps,
                        repeat=args.repeat, device=device, dtype=dtype, d_model=args.d_model, n_layer=args.n_layer,
                        vocab_size=args.vocab, kwargs=kwargs, torch=torch.__version__, seed=0,
                        threads=args.threads, resettable=resettable, modes=list(MODES))
            reason = None
            if prev is not None and prev["status"] != "ok":
                reason = f"T={prev['T']} did not finish ({prev['reason']})"
            elif prev is not None:
                spent = sum(prev[f"{m}_s"] or 0 for m in MODES)
                est = spent * (t / prev["T"]) ** TIME_EXPONENT.get(name, 1.0)
                if est > args.max_seconds:
                    reason = (f"estimated {est:.0f} s from T={prev['T']} exceeds --max-seconds "
                              f"{args.max_seconds:g}")
            if reason:
                rec = _skipped(base, reason)
            else:
                t0 = time.monotonic()
                got, why = _run_point(base, args.max_seconds)
                rec = _record(base, got, why, time.monotonic() - t0)
            for key in ("resettable", "seed"):
                rec.pop(key, None)
            log(f"[bench] {name} T={t}: {rec['status']}" + (f" ({rec['reason']})" if rec["reason"] else "")
                + (f", {rec['wall_s']:.1f} s" if rec["wall_s"] else ""))
            records.append(rec)
            prev = rec
    return records


# ------------------------------------------------------------------------------------------------ output


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(records: list[dict[str, Any]]) -> str:
    head = ["backbone", "T", "chunked tok/s", "streamed tok/s", "step ms/tok", "step tok/s", "chunked/step",
            "mem chunked MiB", "mem streamed MiB", "status"]
    rows = [[r["backbone"], str(r["T"]), _fmt(r["chunked_tok_s"], ",.0f"), _fmt(r["streamed_tok_s"], ",.0f"),
             _fmt(r["step_ms"], ".2f"), _fmt(r["step_tok_s"], ",.0f"), _fmt(r["chunked_over_step"], ".1f"),
             _fmt(r["peak_mem_chunked_mib"], ".1f"), _fmt(r["peak_mem_streamed_mib"], ".1f"),
             r["status"] + (f": {r['reason']}" if r["status"] != "ok" else "")] for r in records]
    width = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head) - 1)]
    lines = []
    for row in [head, *rows]:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, width)))
                     + "  " + row[-1])
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def targets(records: list[dict[str, Any]], at: int = 4096, speedup: float = 10.0) -> list[dict[str, Any]]:
    """The issue's CPU targets per backbone: chunked >= ``speedup`` x the step loop at T = ``at``; streamed-prefill
    peak memory flat in T (at the largest measured T at most 1.2x, plus 0.5 MiB for page-level noise, what it is
    at the smallest measured T >= the piece size; 2 MiB of slack called the transformer's KV cache, 1.4 -> 3.4 MiB,
    flat). None where the points needed were not measured."""
    out = []
    for name in dict.fromkeys(r["backbone"] for r in records):
        rs = [r for r in records if r["backbone"] == name]
        ratio = next((r["chunked_over_step"] for r in rs if r["T"] == at), None)
        mem = [(r["T"], r["peak_mem_streamed_mib"]) for r in rs
               if r["peak_mem_streamed_mib"] is not None and r["T"] >= r["piece"]]
        flat = None
        if len(mem) >= 2:
            (_, lo), (_, hi) = min(mem), max(mem)
            flat = hi <= 1.2 * lo + 0.5
        out.append(dict(backbone=name, T=at, chunked_over_step=ratio,
                        speedup_ok=None if ratio is None else ratio >= speedup, streamed_mem=mem, flat_memory=flat))
    return out


def plot_figure(records: list[dict[str, Any]]):
    """Three panels over the sequence length T, one colour per backbone: prefill throughput (chunked solid,
    streamed dashed), step latency (ms per single-token decode step after a T-token prefill: a recurrent state
    stays flat, a Transformer's KV cache grows) and peak memory. Returns the matplotlib figure."""
    plt = pyplot("aurora bench")

    fig, (ax_t, ax_s, ax_m) = plt.subplots(1, 3, figsize=(17, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(dict.fromkeys(r["backbone"] for r in records))
    for i, name in enumerate(names):
        rs = sorted((r for r in records if r["backbone"] == name), key=lambda r: r["T"])
        c = colours[i % len(colours)]
        for ax, key, style, label in ((ax_t, "chunked_tok_s", "-o", name), (ax_t, "streamed_tok_s", "--x", None),
                                      (ax_s, "step_ms", "-o", name),
                                      (ax_m, "peak_mem_chunked_mib", "-o", name),
                                      (ax_m, "peak_mem_streamed_mib", "--x", None)):
            pts = [(r["T"], r[key]) for r in rs if r.get(key)]
            if pts:
                ax.plot(*zip(*pts), style, color=c, label=label)
    r0 = records[0] if records else {}
    where = f"{r0.get('device', '?')} {r0.get('dtype', '')}, d_model {r0.get('d_model')}, {r0.get('n_layer')} layers"
    steps = r0.get("steps")
    for ax, title, ylabel in ((ax_t, "prefill throughput\n(solid: chunked, dashed: streamed)", "tokens / s"),
                              (ax_s, f"step latency: one token after a T-token prefill\n(mean of {steps} steps, "
                                     f"batch {r0.get('batch')})", "ms per decode step"),
                              (ax_m, "peak memory above weights + inputs\n(solid: chunked, dashed: streamed)", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (context)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}; {where}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if names:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_plot(records: list[dict[str, Any]], path: str | Path) -> None:
    """:func:`plot_figure` written to ``path`` (PNG, atomically)."""
    save_figure(plot_figure(records), path)


# ------------------------------------------------------------------------------------------------ command


def _lengths(text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--lengths must be positive integers, got {text!r}")
    return values


def bench_rnn_main(argv: list[str]) -> int:
    """``aurora bench rnn``: tokens/s, step latency and peak memory of the language backbones."""
    parser = p = argparse.ArgumentParser(prog="aurora bench rnn", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="comma-separated registered names (default: all registered)")
    p.add_argument("--d-model", type=int, default=256, help="the language model's width (default: %(default)s)")
    p.add_argument("--n-layer", type=int, default=2, help="the language model's layers (default: %(default)s)")
    p.add_argument("--vocab", type=int, default=1024, help="vocabulary size (unused by the measurements)")
    p.add_argument("--lengths", type=_lengths, default=None,
                   help="comma-separated T (default: 1024,4096,16384 on CPU; 4096..131072 on CUDA)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step (default: %(default)s)")
    p.add_argument("--piece", type=int, default=1024, help="piece size of the streamed prefill")
    p.add_argument("--steps", type=int, default=64, help="timed single-token steps")
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each prefill (the fastest is kept)")
    p.add_argument("--max-seconds", type=float, default=300.0,
                   help="wall-clock limit of one (backbone, T) point, process start included")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--process-per-mode", action="store_true",
                   help="CPU: a fresh process per measurement, memory from ru_maxrss (a cross-check of the default)")
    p.add_argument("--threads", type=_lengths, default=None,
                   help="torch.set_num_threads in the workers (one count; with --peers a comma list, e.g. 1,2)")
    p.add_argument("--kwargs", default=None,
                   help='JSON of extra constructor arguments per backbone, e.g. \'{"mamba2": {"d_state": 64}}\'')
    p.add_argument("--json", default=None, help="write the records here")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    _add_peer_arguments(p)
    args = parser.parse_args(argv)
    if args.peers:
        return peers_main(args)
    if args.threads is not None and len(args.threads) != 1:
        parser.error(f"--threads takes one count without --peers; got {','.join(map(str, args.threads))}")
    args.threads = args.threads[0] if args.threads else None
    if min(args.d_model, args.n_layer, args.batch, args.piece, args.steps, args.repeat) < 1:
        parser.error("--d-model, --n-layer, --batch, --piece, --steps and --repeat must be >= 1")
    records = run_bench(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    r0 = records[0] if records else {}
    print(f"device {r0.get('device')} ({r0.get('device_name', '?')}), torch {r0.get('torch')}, {r0.get('dtype')}, "
          f"d_model {args.d_model}, {args.n_layer} layers, batch {args.batch}, piece {args.piece}, "
          f"{args.steps} steps; memory: {r0.get('mem_method', '?')}")
    print(format_table(records))
    for tg in targets(records):
        ratio, flat = tg["chunked_over_step"], tg["flat_memory"]
        print(f"target {tg['backbone']}: chunked/step at T={tg['T']} "
              f"{'not measured' if ratio is None else f'{ratio:.1f}x'}"
              f"{'' if tg['speedup_ok'] is None else (' (>= 10x: yes)' if tg['speedup_ok'] else ' (>= 10x: NO)')}; "
              f"streamed peak memory flat in T: {'not measured' if flat is None else ('yes' if flat else 'NO')} "
              f"({', '.join(f'T={t}: {m:.1f} MiB' for t, m in tg['streamed_mem'])})")
    write_outputs(args, records, records, write_plot)
    return 0


# ------------------------------------------------------------------------------------------------ --peers


def _add_peer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peers", action="store_true",
                   help="instead: ours against peer implementations side by side in one process "
                        "(aurora.tools.bench_peers); uses --backbones (pairs), --d-model, --n-layer, --vocab, "
                        "--repeat, --json, --plot")
    p.add_argument("--peer-lengths", type=_lengths, default=[1024, 4096, 16384],
                   help="T of the peer comparison (default 1024,4096,16384)")
    p.add_argument("--peer-threads", type=_lengths, default=[1, 2],
                   help="thread counts (default 1,2; --threads, when given, takes precedence)")
    p.add_argument("--peer-steps", type=int, default=16, help="decode tokens timed for the transformer pair")
    p.add_argument("--peer-attention-max-t", type=int, default=4096,
                   help="the transformer pair (quadratic in T) is skipped, with the reason, above this T "
                        "(default %(default)s; 0: no limit)")


def peers_main(args: argparse.Namespace) -> int:
    from aurora.tools.bench_peers import PEERS, format_peers, run_peers, write_peers_plot

    names = args.backbones or list(PEERS)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"aurora bench rnn --peers: no peer pair for {', '.join(unknown)}; pairs: {', '.join(PEERS)}")
    payload = run_peers(names, args.peer_lengths, args.threads or args.peer_threads, args.d_model, args.n_layer, args.vocab,
                        max(args.repeat, 3), args.peer_steps, log=lambda s: print(s, file=sys.stderr, flush=True),
                        attention_max_t=args.peer_attention_max_t or None)
    print(f"peers: d_model {args.d_model}, {args.n_layer} layers, batch 1, fp32, median of {max(args.repeat, 3)} "
          f"interleaved runs, torch {payload['torch']}")
    print(format_peers(payload))
    write_outputs(args, payload, payload, write_peers_plot)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(json.loads(sys.argv[2])))
    sys.exit(bench_rnn_main(sys.argv[1:]))
