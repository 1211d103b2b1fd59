"""What every ``aurora bench`` command measures with and writes: peak memory of a block of work (the resident
high-water mark on the CPU, the allocator's peak on CUDA), glibc's allocator settings for fair measurements, and
the ``--json`` / ``--plot`` outputs. See :mod:`aurora.tools.bench_rnn` for why memory is measured this way."""
from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
from typing import Any

from aurora.io import write_json

# glibc settings on the CPU (see the module docstring): the memory runs', and the timed runs' after them
MEMORY_MMAP_THRESHOLD = 1 << 16
TIMING_MALLOPT = (32 << 20, 64 << 20)  # mmap / trim thresholds: the most glibc's dynamic thresholds grow to


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def reset_hwm() -> bool:
    """Reset the resident-set high-water mark (Linux >= 4.0); True if it took effect."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return hwm_bytes() <= rss_bytes() + (1 << 20)
    except OSError:
        return False


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so that a measurement cannot hide in pages an
    earlier one freed but the allocator kept resident. A no-op where there is no glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def mallopt(mmap_threshold: int, trim_threshold: int | None = None) -> None:
    """glibc: a fixed mmap threshold (blocks of that size or more get their own mmap, unmapped when freed; a fixed
    value also stops glibc from moving it as it sees large frees) and optionally the heap-top trim threshold.
    A no-op where there is no glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD
        if trim_threshold is not None:
            libc.mallopt(-1, trim_threshold)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


class Meter:
    """Peak memory added by a block of work, by the method chosen for the device (see the module docstring)."""

    def __init__(self, device: Any, resettable: bool) -> None:
        import torch

        self.torch, self.device, self.resettable = torch, device, resettable
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.method = "torch.cuda.max_memory_allocated"
        elif resettable:
            self.method = "VmHWM (reset via /proc/self/clear_refs) - RSS before"
        else:
            self.method = "ru_maxrss (fresh process per measurement) - RSS before"

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)
            self.base = self.torch.cuda.memory_allocated(self.device)
        else:
            trim_heap()
            if self.resettable:
                reset_hwm()
            self.base = rss_bytes()

    def peak(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            return self.torch.cuda.max_memory_allocated(self.device) - self.base
        top = hwm_bytes() if self.resettable else ru_maxrss_bytes()
        return max(0, top - self.base)


def write_outputs(args: argparse.Namespace, payload: Any, records: list[dict[str, Any]], write_plot) -> None:
    """What every ``aurora bench`` command writes when asked: ``--json`` (``payload``) and ``--plot``
    (``write_plot(records, path)``), each atomically and announced on stdout."""
    if args.json:
        write_json(args.json, payload)
        print(f"records written to {args.json}")
    if args.plot:
        write_plot(records, args.plot)
        print(f"plot written to {args.plot}")


def run_worker(module: str, tag: str, spec: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    """One benchmark point in a fresh process (``python -m module --worker SPEC``): the record the worker printed
    behind ``tag``, or None and why not (over ``timeout`` seconds, killed, or its last error line)."""
    import json
    import subprocess

    cmd = [sys.executable, "-m", module, "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired:
        return None, f"timed out: over --max-seconds {timeout:g} s"
    for line in proc.stdout.splitlines():
        if line.startswith(tag):
            return json.loads(line[len(tag):]), None
    if proc.returncode == -9:
        return None, "killed (SIGKILL: out of memory?)"
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return None, f"error (exit {proc.returncode}): {tail[-1] if tail else 'no message'}"
