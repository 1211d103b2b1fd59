"""The reader's index without a demux of the whole file: taken from an mp4 header where that determines every
frame exactly (constant frame rate, checked against the packets), by demux everywhere else, the same either way;
a header that turns out wrong falls back to the demux; one index per video is cached (path, size, mtime)."""
from __future__ import annotations

import os

import av
import numpy as np
import pytest
import torch

from aurora.data import reader as reader_mod
from aurora.data.reader import FrameReader, VideoDecodeError, _Index, clear_index_cache, full_decode

from tests.data.test_reader import CASES, make_video, rotated

HEADER_CASES = {**CASES, "cfr-start-offset": dict(n=50, gop=12, start=500)}
EXPECTED = {"bframes-gop250": "header", "short-gops": "header", "rotation-90": "header",
            "cfr-start-offset": "header", "vfr-start-offset": "demux", "mkv": "demux"}


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_index_cache()
    yield
    clear_index_cache()


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_header_index_is_the_demux_index_and_frames_are_exact(case):
    kw = HEADER_CASES[case]
    data = make_video(**kw)
    with FrameReader(data) as r, FrameReader(data, index="demux") as d:
        assert r.index_source == EXPECTED[case] and d.index_source == "demux"
        assert np.array_equal(r._pts, d._pts) and np.array_equal(r._key_index, d._key_index)
        ref = full_decode(data)
        if kw.get("rotation"):
            ref = rotated(ref, kw["rotation"])
        idx = [0, 3, 17 % len(ref), len(ref) - 1]
        assert torch.equal(r.read(idx), ref[idx])


def _write(path, data):
    path.write_bytes(data)
    return path


def test_truncated_faststart_mp4_is_indexed_by_demux(tmp_path):
    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:  # the header (moov) before the data
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"preset": "veryfast", "x264-params": "keyint=10:min-keyint=10:scenecut=0"}
        rng = np.random.default_rng(0)
        for _ in range(40):  # noise: the frames' data, not the header, is most of the file
            a = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    whole = path.read_bytes()
    with FrameReader(whole) as r:
        assert r.index_source == "header" and len(r) == 40
    cut = whole[: len(whole) * 2 // 3]  # the header promises 40 frames; the data holds fewer
    with FrameReader(cut) as r:
        assert r.index_source == "demux" and 0 < len(r) < 40
        assert torch.equal(r.read([0, len(r) // 2]), full_decode(whole)[[0, len(r) // 2]])


def test_a_wrong_header_index_falls_back_to_the_demux(tmp_path):
    data = make_video(n=48, gop=12)
    ref = full_decode(data)
    # keyframes claimed every 6 frames (really every 12): the first packet after a seek is not the keyframe the
    # index says, so the reader indexes by demux; the frames are the same, so the read goes on, exact
    with FrameReader(data) as r:
        i = r._index
        r._set_index(_Index(i.pts, np.arange(0, 48, 6), i.pts[::6], i.time_base, "header"))
        assert torch.equal(r.read([8, 20, 31]), ref[[8, 20, 31]])
        assert r.index_source == "demux"
    # timestamps that are not the video's: indices chosen from them mean other frames, a clear error
    with FrameReader(data) as r:
        i = r._index
        r._set_index(_Index(i.pts * 2, i.key_index, i.key_seek * 2, i.time_base, "header"))
        with pytest.raises(VideoDecodeError, match="header index disagrees"):
            r.read([5])
        assert r.index_source == "demux" and torch.equal(r.read([5]), ref[[5]])


def test_index_is_cached_per_path_size_and_mtime(tmp_path, monkeypatch):
    path = _write(tmp_path / "v.mkv", make_video(n=30, gop=10, fmt="matroska"))  # a demux index: the costly one
    with FrameReader(path) as r:
        assert r.index_source == "demux"
        first = r._pts
    calls = []
    real = FrameReader._index_by_demux
    monkeypatch.setattr(FrameReader, "_index_by_demux", lambda self, s: calls.append(1) or real(self, s))
    with FrameReader(path) as r:  # the second open reads no packet to index
        assert r._pts is first and torch.equal(r.read([29]), full_decode(path)[[29]])
    assert calls == []
    _write(path, make_video(n=20, gop=10, fmt="matroska"))  # another video at the same path
    os.utime(path, ns=(1, 1))
    with FrameReader(path) as r:
        assert len(r) == 20
    assert calls == [1]
    with pytest.raises(reader_mod.VideoTooLarge):  # a cached index still meets each reader's limits
        FrameReader(path, max_frames=10)


def test_read_with_indices_makes_every_backend_read_our_frames(tmp_path):
    from aurora.data.reader import backend_unavailable, read_with

    path = _write(tmp_path / "vfr.mp4", make_video(n=50, gop=12, vfr=True, start=500))
    with FrameReader(path) as r:
        idx = r.indices(fps=4.0)  # by presentation timestamp: a variable frame rate is sampled by time
    ours = read_with("aurora", path, fps=4.0)
    assert ours.shape[0] == len(idx)
    backends = ["aurora-demux", "full", "full-stream"] + [b for b in ("decord2", "torchcodec") if backend_unavailable(b) is None]
    for backend in backends:
        assert torch.equal(read_with(backend, path, indices=idx), ours), backend
    # without them, the rule applied to the average rate's times chooses other frames on this video
    assert not torch.equal(read_with("full", path, fps=4.0)[: len(idx)], ours)
