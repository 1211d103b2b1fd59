"""Video in and out: H.264 encoding in memory, frame sampling and reading (through :mod:`aurora.data.reader`, which
decodes only the GOPs that hold the frames kept), frame transforms."""
from __future__ import annotations

import io
import logging
from typing import Iterable, Iterator, Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aurora.data.reader import FrameReader, VideoDecodeError, VideoInfo, VideoSource, VideoTooLarge

__all__ = ["DEFAULT_MEAN", "DEFAULT_STD", "FrameReader", "VideoDecodeError", "VideoInfo", "VideoSource",
           "VideoTooLarge", "UniformIndices", "decode_video", "encode_mp4", "iter_frame_chunks", "probe_video",
           "sample_indices", "to_pixels", "uniform_indices"]
log = logging.getLogger(__name__)
# the preprocessing default everywhere (datamodule, streaming engine, evaluation, viz): SigLIP's normalisation
DEFAULT_MEAN = DEFAULT_STD = (0.5, 0.5, 0.5)


def encode_mp4(frames: np.ndarray, fps: int = 8, crf: int = 12) -> bytes:
    """(F, H, W, 3) uint8 RGB -> H.264 .mp4 bytes (yuv420p, so H and W must be even)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 in yuv420p needs even frame sizes, got {h}x{w}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def uniform_indices(total: int, num: int) -> list[int]:
    """``num`` frame indices spread uniformly over ``total`` frames (the centre of each of ``num`` segments)."""
    return [min(total - 1, int((i + 0.5) * total / num)) for i in range(num)]


def decode_video(data: VideoSource, num_frames: int | None = None, short_side: int | None = None) -> Tensor:
    """A video (bytes or path) -> uint8 (F, H, W, 3), ``num_frames`` sampled uniformly (all frames when None),
    read by :class:`~aurora.data.reader.FrameReader` (only the GOPs holding the sampled frames are decoded).
    Raises :class:`VideoDecodeError` for anything undecodable."""
    with FrameReader(data, short_side=short_side) as reader:
        indices = range(len(reader)) if num_frames is None else uniform_indices(len(reader), num_frames)
        return reader.read(indices)


def to_pixels(
    frames: Tensor,
    image_size: int,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    crop: bool = True,
) -> Tensor:
    """uint8 (F, H, W, 3) -> normalised float (F, 3, S, S): short side resized to ``image_size`` (bicubic,
    antialiased), then centre-cropped to a square (``crop``) or kept at its aspect ratio (the encoder then
    interpolates its position embeddings). SigLIP's mean and std are 0.5."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    scale = image_size / min(h, w)
    size = (max(image_size, round(h * scale)), max(image_size, round(w * scale)))
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    if crop:
        top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        x = x[..., top : top + image_size, left : left + image_size]
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


# ------------------------------------------------------------------------------------ streaming (long videos)


def probe_video(source: VideoSource) -> VideoInfo:
    """Frame count, rate, duration and size without decoding a frame: the count is that of the packets the
    demuxer finds (a header's count may be stale), the times are their timestamps."""
    with FrameReader(source) as reader:
        return reader.info


class UniformIndices(Sequence[int]):
    """:func:`uniform_indices` as a lazy sequence: O(1) memory however many frames are sampled."""

    def __init__(self, total: int, num: int) -> None:
        if total < 1 or num < 1:
            raise ValueError(f"need total >= 1 and num >= 1, got total={total}, num={num}")
        self.total, self.num = int(total), int(num)

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.num))]
        if i < 0:
            i += self.num
        if not 0 <= i < self.num:
            raise IndexError(i)
        return min(self.total - 1, int((i + 0.5) * self.total / self.num))

    def __repr__(self) -> str:
        return f"UniformIndices(total={self.total}, num={self.num})"


def sample_indices(info: VideoInfo, num_frames: int | None = None, fps: float | None = None) -> Sequence[int]:
    """Frame indices to read (ascending, a lazy sequence): ``num_frames`` spread uniformly over the video (the
    same indices as :func:`uniform_indices`, which the training pipeline samples with), or ``fps`` frames per
    second of its duration, spread the same way; every frame when neither is given."""
    if num_frames is not None and fps is not None:
        raise ValueError("give num_frames or fps, not both")
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        seconds = info.duration if info.duration > 0 else info.frames / (info.fps or 1.0)
        num_frames = min(info.frames, max(1, round(seconds * fps)))
    if num_frames is None:
        return range(info.frames)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return UniformIndices(info.frames, num_frames)


def iter_frame_chunks(source: VideoSource | FrameReader, indices: Iterable[int], chunk_frames: int,
                      short_side: int | None = None) -> Iterator[Tensor]:
    """The frames at ``indices`` (ascending, repeats allowed; any iterable, e.g. :class:`UniformIndices`) as
    uint8 (k, H, W, 3) chunks of at most ``chunk_frames``, read by keyframe seek
    (:class:`~aurora.data.reader.FrameReader`): at most one chunk of frames is ever held, and nothing grows
    with the video's length. ``source`` may be an open reader (it stays open).

    Indices past the frames the video holds (sampled from a stale header) repeat its last frame, with a
    warning; a decode error is a :class:`VideoDecodeError`."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    own = not isinstance(source, FrameReader)
    reader = FrameReader(source, short_side=short_side) if own else source
    try:
        last, past = len(reader) - 1, 0

        def clipped() -> Iterator[int]:
            nonlocal past
            for i in indices:
                if i > last:
                    past += 1
                yield min(int(i), last)

        yield from reader.iter_chunks(clipped(), chunk_frames)
        if past:
            log.warning("video has %d frames (fewer than the sampled indices assumed): repeated the last frame "
                        "%d times", last + 1, past)
    finally:
        if own:
            reader.close()
