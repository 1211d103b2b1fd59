"""Live sources (data/stream.py): a file still being written is followed until it stops growing, an HTTP URL
is read as it is served, frames are sampled by stream time, and a bad source is named."""
from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest

from aurora.data.reader import VideoDecodeError
from aurora.data.stream import LiveFrames, is_live_url, ready_batches
from aurora.data.video import encode_mp4
from _live import FPS, QuietHandler, encode_ts, grow



@pytest.fixture(scope="module")
def ts() -> bytes:  # 16 frames at 4 fps: 4 s
    return encode_ts(np.random.RandomState(1).randint(0, 255, (16, 32, 32, 3), np.uint8))


def test_sources_that_are_live_by_name():
    for s in ("pipe:", "pipe:3", "-", "http://127.0.0.1:8000/v.ts", "RTSP://cam/1", "udp://0.0.0.0:5000"):
        assert is_live_url(s), s
    for s in ("clip.mp4", "/tmp/pipe:x", "http.mp4", "pipe:x"):
        assert not is_live_url(s), s


def test_a_growing_file_is_followed_and_sampled_by_time(ts, tmp_path):
    path = tmp_path / "live.ts"
    writer = grow(path, ts)
    frames = LiveFrames(path, fps=2, live_timeout=1.0)
    got = list(frames)
    writer.join()
    assert [t for t, _ in got] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]  # every other frame of 4 fps
    assert frames.decoded == 16 and frames.kept == 8 and not frames.skipped
    # the same frames as the finished file read in one go
    done = list(LiveFrames(path, fps=2, follow=False))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, done)) and len(done) == 8
    # limits: a frame count, a stream time; a short side resized inside FFmpeg
    assert len(list(LiveFrames(path, fps=4, max_frames=3, follow=False))) == 3
    assert [t for t, _ in LiveFrames(path, fps=1, until=2.2, follow=False)] == [0.0, 1.0, 2.0]
    assert next(iter(LiveFrames(path, fps=1, short_side=16, follow=False)))[1].shape == (16, 16, 3)


def test_batches_are_what_has_arrived(ts, tmp_path):
    path = tmp_path / "v.ts"
    path.write_bytes(ts)
    batches = list(ready_batches(LiveFrames(path, fps=FPS, follow=False), 5))
    assert sum(len(b) for b in batches) == 16 and all(1 <= len(b) <= 5 for b in batches)
    assert [t for b in batches for t, _ in b] == [i / FPS for i in range(16)]


def test_an_http_url_is_read_as_a_stream(ts, tmp_path):
    (tmp_path / "v.ts").write_bytes(ts)
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v.ts"
        got = list(LiveFrames(url, fps=1, live_timeout=5))
        assert [t for t, _ in got] == [0.0, 1.0, 2.0, 3.0]
        with pytest.raises(VideoDecodeError, match="cannot open the live source http://127.0.0.1.*/missing.ts"):
            list(LiveFrames(f"http://127.0.0.1:{server.server_address[1]}/missing.ts", live_timeout=5))
    finally:
        server.shutdown()
        server.server_close()


def test_bad_live_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="video not found"):
        list(LiveFrames(tmp_path / "nothing.ts", live_timeout=0.2))
    (tmp_path / "junk.ts").write_bytes(b"\x00not a video" * 50)
    with pytest.raises(VideoDecodeError, match="cannot open the live source .*junk.ts"):
        list(LiveFrames(tmp_path / "junk.ts", live_timeout=0.2))
    # a plain MP4 can be read live once finished, and the error for a growing one says which formats grow
    (tmp_path / "v.mp4").write_bytes(encode_mp4(np.zeros((4, 32, 32, 3), np.uint8), fps=4))
    assert len(list(LiveFrames(tmp_path / "v.mp4", fps=4, live_timeout=0.2, follow=False))) == 4
    (tmp_path / "half.mp4").write_bytes((tmp_path / "v.mp4").read_bytes()[:400])
    with pytest.raises(VideoDecodeError, match="MPEG-TS, Matroska or fragmented MP4"):
        list(LiveFrames(tmp_path / "half.mp4", live_timeout=0.2))
    for bad in ({"fps": 0}, {"live_timeout": 0}):
        with pytest.raises(ValueError, match="must be > 0"):
            LiveFrames("pipe:", **bad)
