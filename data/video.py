"""Video in and out: H.264 encoding in memory, decoding with uniform frame sampling (PyAV), frame transforms."""
from __future__ import annotations

import io
from typing import Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


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
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
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
