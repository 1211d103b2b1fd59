"""The frame reader: frame-accurate random access by keyframe seek, pixel for pixel against a full decode, on
small generated videos with B-frames, long GOPs, variable frame rates, start offsets / edit lists and rotation;
and the quirks of real files (clear errors, never a crash or a hang)."""
from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from aurora.data.reader import (FrameReader, VideoDecodeError, VideoTooLarge, choose_indices, disposable,
                                full_decode, read_frames, scaled_size)


def make_video(n=60, w=64, h=48, gop=250, bframes=2, vfr=False, start=0, rotation=None, fps=25, fmt="mp4"):
    """An H.264 video whose frames all differ, with real B-frames (b-adapt off) and a fixed GOP; ``vfr`` draws
    each frame's duration at random, ``start`` offsets the first timestamp (ms), ``rotation`` writes a display
    matrix."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "20",
                     "x264-params": f"keyint={gop}:min-keyint={gop}:bframes={bframes}:b-adapt=0:scenecut=0"}
        s.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            s.set_display_rotation(rotation)
        rng = np.random.default_rng(0)
        t = start
        for i in range(n):
            a = np.zeros((h, w, 3), np.uint8)
            a[..., 0] = (i * 7) % 256
            a[(i * 3) % h, :, 1] = 255
            a[:, (i * 5) % w, 2] = 200
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts, f.time_base = t, Fraction(1, 1000)
            t += int(rng.integers(10, 90)) if vfr else 1000 // fps
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def rotated(frames: torch.Tensor, degrees: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.rot90(frames.numpy(), degrees // 90, axes=(1, 2))))


CASES = {
    "bframes-gop250": dict(n=60, gop=250),
    "short-gops": dict(n=90, gop=20),
    "vfr-start-offset": dict(n=50, gop=12, vfr=True, start=500),
    "rotation-90": dict(n=30, gop=10, rotation=90),
    "mkv": dict(n=40, gop=15, fmt="matroska"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_random_access_equals_full_decode(case):
    kw = CASES[case]
    data = make_video(**kw)
    ref = full_decode(data)
    if kw.get("rotation"):
        ref = rotated(ref, kw["rotation"])
    with FrameReader(data) as r:
        assert len(r) == len(ref) == kw["n"]
        rng = np.random.default_rng(1)
        idx = [0, len(ref) - 1, 5, 5, 6] + rng.integers(0, len(ref), 12).tolist()
        assert torch.equal(r.read(idx), ref[idx])  # any order, repeats
        assert torch.equal(torch.cat(list(r.iter_chunks(range(len(ref)), 7))), ref)  # every frame, in chunks
        assert r.info.rotation == (kw.get("rotation") or 0)


def test_seek_decodes_only_the_gops_that_hold_the_frames():
    data = make_video(n=200, gop=50)
    with FrameReader(data) as r:
        got = r.read([160, 161])  # in the 4th GOP: one seek, decoded from its keyframe (150) forward
        assert torch.equal(got, full_decode(data)[[160, 161]])
        assert r.seeks == 1 and r.decoded < 50, (r.seeks, r.decoded)
    with FrameReader(data) as r:  # a front-to-back read of all frames never seeks back
        list(r.iter_chunks(range(200), 64))
        assert r.decoded <= 200 + 4 and r.seeks == 1


def test_non_reference_frames_before_the_wanted_one_are_never_decoded():
    data = make_video(n=120, gop=60)  # 2 B-frames per P: a third of the packets are non-reference
    ref = full_decode(data)
    idx = [10, 55, 70, 119]
    with FrameReader(data) as r, FrameReader(data, skip_disposable=False) as plain:
        assert torch.equal(r.read(idx), ref[idx]) and torch.equal(plain.read(idx), ref[idx])
        assert r.skipped > 20 and plain.skipped == 0
        assert r.decoded + r.skipped == plain.decoded  # each skipped packet is a frame not decoded
    # a packet is disposable only when every NAL unit has nal_ref_idc 0 and one of them is a slice
    nal = lambda header, body=b"\x88": len(body + b"x").to_bytes(4, "big") + bytes([header]) + body
    assert disposable(nal(0x01), 4) and disposable(nal(0x06) + nal(0x01), 4)  # (SEI +) non-reference slice
    assert not disposable(nal(0x21), 4) and not disposable(nal(0x65), 4)  # reference slice, IDR
    assert not disposable(nal(0x67) + nal(0x01), 4)  # a parameter set rides along: keep it
    assert not disposable(nal(0x06), 4) and not disposable(nal(0x01)[:-1], 4)  # no slice; truncated


def test_resize_in_the_scaler_to_the_short_side():
    data = make_video(n=12, w=128, h=96, gop=6)
    with FrameReader(data, short_side=32) as r:
        got = r.read([0, 11])
    assert got.shape == (2, 32, 43, 3) and scaled_size(96, 128, 32) == (32, 43)
    ref = full_decode(data)[[0, 11]].float()  # the same picture, smaller: the mean colour is kept
    assert torch.allclose(got.float().mean((1, 2)), ref.mean((1, 2)), atol=3)
    with FrameReader(data, short_side=200) as r:  # never enlarged (the encoder's resize does that)
        assert r.read([3]).shape == (1, 96, 128, 3)


def test_sampling_rules():
    times = np.arange(100) / 10.0  # 10 s at 10 fps
    assert choose_indices(times, 10, num_frames=4) == [12, 37, 62, 87]  # uniform, as uniform_indices
    assert choose_indices(times, 10, fps=1) == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    assert choose_indices(times, 10, fps=1, max_frames=4) == [12, 37, 62, 87]
    assert choose_indices(times, 10, num_frames=2, start=2.0, end=4.0) == [25, 35]
    assert choose_indices(times, 10, fps=2, start=2.0, end=4.0) == [22, 27, 32, 37]
    assert choose_indices(times, 10, start=9.5) == [95, 96, 97, 98, 99]
    assert choose_indices(times, 10, num_frames=3, start=2.01, end=2.02) == [20, 20, 20]  # under one frame
    assert len(choose_indices(times, 10, max_frames=7)) == 7
    vfr = np.array([0.0, 0.1, 0.2, 3.0, 3.1])  # a pause: 1 fps takes the frame on screen at each second
    assert choose_indices(vfr, 0, fps=1) == [2, 2, 2, 4]  # at 0.5, 1.5, 2.5, 3.5 s
    with pytest.raises(ValueError, match="not both"):
        choose_indices(times, 10, num_frames=2, fps=1)
    with pytest.raises(VideoDecodeError, match="no timing"):
        choose_indices(np.zeros(5), 0, fps=1)


def test_read_frames_by_fps_and_window():
    data = make_video(n=50, gop=250)  # 2 s at 25 fps
    frames, idx, info = read_frames(data, fps=2)
    assert idx == [6, 18, 31, 43] and frames.shape[0] == 4 and info.frames == 50
    assert torch.equal(frames, full_decode(data)[idx])
    _, idx, _ = read_frames(data, num_frames=2, start=1.0, end=2.0)
    assert idx == [31, 43]


def test_limits_bound_what_a_sample_may_cost():
    data = make_video(n=30, w=64, h=48, gop=10)
    with pytest.raises(VideoTooLarge, match="max_pixels"):
        FrameReader(data, max_pixels=64 * 47)
    with pytest.raises(VideoTooLarge, match="max_frames"):
        FrameReader(data, max_frames=29)
    with FrameReader(data, max_pixels=64 * 48, max_frames=30) as r:
        assert r.read([29]).shape == (1, 48, 64, 3)


def test_quirks_give_clear_errors():
    data = make_video(n=60, gop=20)
    with pytest.raises(VideoDecodeError, match="cannot open"):
        FrameReader(b"not a video at all")
    with pytest.raises(VideoDecodeError):
        FrameReader(data[: len(data) // 3])  # moov at the end: truncated before it
    buf = io.BytesIO()  # audio only
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for p in list(s.encode(frame)) + list(s.encode()):
            c.mux(p)
    with pytest.raises(VideoDecodeError, match="no video stream"):
        FrameReader(buf.getvalue())
    # a corrupt codec tag (as a fuzzed shard made it): PyAV opens the stream without a codec context
    with pytest.raises(VideoDecodeError, match="no decoder for the video stream"):
        FrameReader(data.replace(b"avc1", b"zzzz"))
    from aurora.data.convert import check_decodes, transcode_mp4
    for check in (check_decodes, transcode_mp4):  # the converter's checks name it the same way
        with pytest.raises(VideoDecodeError, match="no decoder for the video stream"):
            check(data.replace(b"avc1", b"zzzz"))
    one = make_video(n=1)
    frames, idx, info = read_frames(one, num_frames=4)
    assert idx == [0, 0, 0, 0] and info.frames == 1
    frames, idx, _ = read_frames(one, fps=1)
    assert idx == [0]


def test_wrong_header_count_and_corrupt_gop(tmp_path):
    data = bytearray(make_video(n=90, w=64, h=48, gop=30, fmt="matroska"))
    ref = full_decode(bytes(data))
    with FrameReader(bytes(data)) as r:
        assert len(r) == 90  # counted from the packets, not trusted from a header
    # garble the middle GOP's bytes: either a clear error or the frames FFmpeg conceals; never a crash or hang
    mid = len(data) // 2
    data[mid : mid + 200] = bytes(200)
    try:
        with FrameReader(bytes(data)) as r:
            idx = r.indices(num_frames=8)
            got = r.read(idx)
        assert got.shape[0] == 8
        assert torch.equal(got[0], ref[idx[0]])  # the first GOP is intact
    except VideoDecodeError as e:
        assert "frame" in str(e) or "decode" in str(e)


def test_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        FrameReader(tmp_path / "missing.mp4")
    with pytest.raises(VideoDecodeError, match="regular file"):
        FrameReader(tmp_path)
    p = tmp_path / "v.mp4"
    p.write_bytes(make_video(n=10))
    with FrameReader(p) as r:
        assert r.read([9]).shape == (1, 48, 64, 3)


# ------------------------------------------------------------------------------------------------ training reader


def write_samples(path, samples):
    import json

    import webdataset as wds

    with wds.TarWriter(str(path)) as w:
        for key, video, meta in samples:
            meta = {"id": key, "conversations": [{"from": "human", "value": "<video>\nwhat?"},
                                                  {"from": "gpt", "value": "a"}], **meta}
            w.write({"__key__": key, "mp4": video, "json": json.dumps(meta).encode()})


def test_training_reader_samples_by_fps_window_and_skips_over_limit_videos(tmp_path, caplog):
    from aurora.data.shards import VideoQADataset

    small = make_video(n=50, w=64, h=48, gop=250)  # 2 s at 25 fps
    big = make_video(n=4, w=160, h=128, gop=2)
    long = make_video(n=120, w=64, h=48, gop=250)
    write_samples(tmp_path / "s.tar", [("ok", small, {}), ("window", small, {"start": 1.0, "end": 2.0}),
                                       ("big", big, {}), ("long", long, {}),
                                       ("badwin", small, {"start": "soon"})])
    ds = VideoQADataset(str(tmp_path / "s.tar"), image_size=32, fps=2.0, max_frames=3,
                        max_pixels=64 * 48, max_video_frames=100)
    with caplog.at_level("WARNING"):
        got = {s["id"]: s for s in ds}
    assert sorted(got) == ["ok", "window"]
    assert got["ok"]["pixels"].shape == (3, 3, 32, 32)  # 4 frames at 2 fps, capped at max_frames 3
    assert got["window"]["pixels"].shape == (2, 3, 32, 32)  # 1 s at 2 fps
    assert ds.skipped == {"video over limits": 2, "bad annotation": 1}
    assert "big" in caplog.text and "max_pixels" in caplog.text and "long" in caplog.text
    uniform = VideoQADataset(str(tmp_path / "s.tar"), num_frames=4, image_size=32, max_pixels=None)
    shapes = {s["id"]: tuple(s["pixels"].shape) for s in uniform}
    assert shapes["big"] == (4, 3, 32, 32) and uniform.skipped == {"bad annotation": 1}
    with pytest.raises(ValueError, match="needs max_frames"):
        VideoQADataset(str(tmp_path / "s.tar"), fps=1.0)


def test_datamodule_refuses_fps_with_batches():
    from aurora.data.datamodule import AuroraDataModule

    with pytest.raises(ValueError, match="batch_size 1"):
        AuroraDataModule(train_shards="x", fps=1.0, max_frames=8, batch_size=2)
    with pytest.raises(ValueError, match="max_pixels"):
        AuroraDataModule(train_shards="x", max_pixels=0)


@pytest.mark.parametrize("case", ["bframes-gop250", "short-gops"])
def test_torchcodec_exact_seek_gives_our_frames(case, tmp_path):
    pytest.importorskip("torchcodec.decoders", reason="torchcodec is an optional peer (pip install "
                        "'aurora-long[torchcodec]' with the system FFmpeg on CUDA, or one built for this CPU torch)")
    from aurora.data.reader import read_with

    path = tmp_path / "v.mp4"
    path.write_bytes(make_video(**CASES[case]))
    for n in (1, 7, 16):  # the same indices: pixel for pixel the same frames
        assert torch.equal(read_with("torchcodec", path, num_frames=n), read_with("aurora", path, num_frames=n))
