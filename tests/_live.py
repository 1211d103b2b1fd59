"""Test helpers for live sources (tests/data/test_live_source.py, tests/infer/test_live.py): an MPEG-TS
encoder, a file written while it is read, and a silent HTTP handler."""
from __future__ import annotations

import http.server
import io
import threading
import time

import av
import numpy as np

FPS = 4


def encode_ts(frames: np.ndarray, fps: int = FPS) -> bytes:
    """MPEG-TS: a format that can be read before it is finished (a growing file, a pipe, a live URL)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mpegts") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"preset": "veryfast", "g": "4"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def grow(path, data: bytes, pieces: int = 4, pause: float = 0.15) -> threading.Thread:
    """Append ``data`` to ``path`` in ``pieces`` with pauses, from a thread (the file exists, empty, at once)."""
    path.write_bytes(b"")

    def write() -> None:
        step = -(-len(data) // pieces)
        with open(path, "ab") as f:
            for i in range(0, len(data), step):
                time.sleep(pause)
                f.write(data[i:i + step])
                f.flush()

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines in the test output
        pass
