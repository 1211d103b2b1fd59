"""Video in and out: H.264 encoding in memory, decoding with uniform frame sampling (PyAV), frame transforms."""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)
# the preprocessing default everywhere (datamodule, streaming engine, evaluation, viz): SigLIP's normalisation
DEFAULT_MEAN = DEFAULT_STD = (0.5, 0.5, 0.5)


class VideoDecodeError(ValueError):
    """A video that cannot be decoded: corrupt, truncated, empty, or not a video."""


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


def decode_video(data: bytes, num_frames: int | None = None) -> Tensor:
    """.mp4 (or any container PyAV reads) bytes -> uint8 (F, H, W, 3), ``num_frames`` sampled uniformly
    (all frames when None). Raises :class:`VideoDecodeError` for anything undecodable."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except VideoDecodeError:
        raise
    except Exception as e:  # PyAV raises a zoo of FFmpeg errors (InvalidData, EOF, ...) for broken input
        raise VideoDecodeError(f"cannot decode video ({type(e).__name__}: {e})") from e
    if not frames:
        raise VideoDecodeError("video has no decodable frames")
    if num_frames is not None:
        frames = [frames[i] for i in uniform_indices(len(frames), num_frames)]
    return torch.from_numpy(np.stack(frames))


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


@dataclass
class VideoInfo:
    """What a streaming reader needs to know before decoding: the frame count, rate, duration and frame size."""

    frames: int
    fps: float  # average frame rate (0.0 when the container does not say)
    duration: float  # seconds (frames / fps when the container does not say)
    width: int
    height: int


VideoSource = Union[str, os.PathLike, bytes]


def _open_video(source: VideoSource):
    """A PyAV container for a path or in-memory bytes; a missing file is a FileNotFoundError naming it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        target = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"video not found: {path}")
        if not path.is_file():
            raise VideoDecodeError(f"video path is not a file: {path}")
        target = str(path)
    try:
        container = av.open(target, mode="r")
    except Exception as e:  # FFmpeg's InvalidDataError and friends
        raise VideoDecodeError(f"cannot open video ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError("no video stream")
    return container


def probe_video(source: VideoSource) -> VideoInfo:
    """Frame count, rate, duration and size from the container's headers, without decoding a frame. The count
    comes from the header when it has one, else from demuxing the packets (reads the file once, no decoding)."""
    container = _open_video(source)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0.0)
        frames = int(stream.frames or 0)
        if frames <= 0:
            frames = sum(1 for p in container.demux(stream) if p.size)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frames / fps if fps else 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(f"cannot read video headers ({type(e).__name__}: {e})") from e
    finally:
        container.close()
    if frames <= 0:
        raise VideoDecodeError("video has no frames")
    return VideoInfo(frames=frames, fps=fps, duration=duration, width=width, height=height)


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


def iter_frame_chunks(source: VideoSource, indices: Iterable[int], chunk_frames: int) -> Iterator[Tensor]:
    """Decode ``source`` front to back (no seeking) and yield the frames at ``indices`` (ascending, repeats
    allowed; any iterable, e.g. :class:`UniformIndices`) as uint8 (k, H, W, 3) chunks of at most ``chunk_frames``:
    at most one chunk of frames is ever held, and nothing grows with the video's length.

    A video that ends before its header's frame count (a stale or estimated header) repeats its last decoded
    frame for the missing indices, with a warning; a decode error mid-way is a :class:`VideoDecodeError`."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    wanted = iter(indices)
    nxt = next(wanted, None)
    if nxt is None:
        return
    pending: list[np.ndarray] = []

    def advance(prev: int) -> int | None:
        i = next(wanted, None)
        if i is not None and i < prev:
            raise ValueError(f"frame indices must be ascending (the video is read front to back): {i} after {prev}")
        return i

    container = _open_video(source)
    seen, last = 0, None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(container.decode(stream)):
                seen, last = i + 1, frame
                if nxt == i:
                    array = frame.to_ndarray(format="rgb24")
                    while nxt == i:
                        pending.append(array)
                        if len(pending) == chunk_frames:
                            yield torch.from_numpy(np.stack(pending))
                            pending = []
                        nxt = advance(i)
                if nxt is None:
                    break
        except av.FFmpegError as e:  # a corrupt or truncated file (some of these are ValueErrors too)
            raise VideoDecodeError(f"cannot decode video at frame {seen} ({type(e).__name__}: {e})") from e
        except (ValueError, GeneratorExit):  # indices out of order; the consumer closed the generator
            raise
        except Exception as e:  # anything else FFmpeg / PyAV raises mid-stream
            raise VideoDecodeError(f"cannot decode video at frame {seen} ({type(e).__name__}: {e})") from e
    finally:
        container.close()
    if seen == 0:
        raise VideoDecodeError("video has no decodable frames")
    if nxt is not None:
        array, missing = last.to_ndarray(format="rgb24"), 0
        while nxt is not None:
            missing += 1
            pending.append(array)
            if len(pending) == chunk_frames:
                yield torch.from_numpy(np.stack(pending))
                pending = []
            nxt = advance(nxt)
        log.warning("video ended after %d frames (its header said more): repeated the last frame %d times",
                    seen, missing)
    if pending:
        yield torch.from_numpy(np.stack(pending))
