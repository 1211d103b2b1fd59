"""aurora eval's frame sampling through the frame reader: uniform (as training), by fps with a cap, and inside a
segment; equal to a full decode at the same indices."""
from fractions import Fraction

import av
import numpy as np
import torch

from aurora.data.benchmarks import Segment
from aurora.data.reader import full_decode
from aurora.evaluation.run import sample_frames


def _video(path, n=60, fps=10):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"x264-params": "keyint=25:min-keyint=25:bframes=2:b-adapt=0:scenecut=0"}
        for i in range(n):
            a = np.full((48, 64, 3), (i * 4) % 256, np.uint8)
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_sample_frames_uniform_fps_and_segment(tmp_path):
    path = _video(tmp_path / "v.mp4")  # 6 s at 10 fps
    ref = full_decode(path)
    assert torch.equal(sample_frames(path, 4), ref[[7, 22, 37, 52]])
    got = sample_frames(path, fps=1.0, max_frames=8)
    assert torch.equal(got, ref[[5, 15, 25, 35, 45, 55]])
    assert sample_frames(path, fps=2.0, max_frames=5).shape[0] == 5  # capped
    seg = Segment(start=2.0, end=4.0)
    assert torch.equal(sample_frames(path, fps=1.0, max_frames=8, segment=seg), ref[[25, 35]])
    assert sample_frames(path, 2, short_side=24).shape == (2, 24, 32, 3)  # resized in FFmpeg
