"""Labelled single frames of the synthetic moving-shapes videos: the data of the demo's vision stage.

The paper starts from a pretrained SigLIP; the demo's tiny encoder starts from random weights. Its first stage
(``aurora pretrain-vision --config recipes/demo_vision.yaml``) stands in for that pretraining: the encoder
learns, one frame at a time, what a pretrained encoder already knows about an image (the object's colour, its
shape, where it is). Frames are rendered like the videos and passed through the same H.264 encode / decode and
normalisation, so the encoder sees exactly what it will see in the video stage. No frame carries any label about
time: the direction of motion is left to the language model, which only sees the frames in order.

Labels per frame: ``color`` (4 classes), ``shape`` (3), ``row`` and ``col``: the grid cell (``grid`` x ``grid``)
holding the shape's centre.
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from aurora.data.synthetic import COLORS, DIRECTIONS, SHAPES, paint, trajectory
from aurora.data.video import DEFAULT_MEAN, DEFAULT_STD, decode_video, encode_mp4, to_pixels

VAL_SEED = 7_000_003  # a stream of its own, apart from the video splits' seeds


def frame_label_classes(grid: int) -> dict[str, int]:
    """Classes of each frame label: ``{"color": 4, "shape": 3, "row": grid, "col": grid}``."""
    return {"color": len(COLORS), "shape": len(SHAPES), "row": grid, "col": grid}


def render_clip(rng: random.Random, frames: int = 8, size: int = 64, shape_size: float = 0.14, grid: int = 4,
                image_size: int = 64, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
                ) -> tuple[Tensor, dict[str, Tensor]]:
    """One clip as the video pipeline sees it (rendered, H.264 round trip, normalised): pixels (frames, 3, S, S)
    and per-frame labels (each a (frames,) long tensor)."""
    color, shape, direction = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(DIRECTIONS))
    centres = trajectory(direction, frames, size, rng, shape_size)
    pixels = to_pixels(decode_video(encode_mp4(paint(color, shape, centres, size, shape_size))), image_size, mean, std)
    cells = torch.tensor([[min(grid - 1, int(cy / size * grid)), min(grid - 1, int(cx / size * grid))]
                          for cx, cy in centres])
    labels = {"color": torch.full((frames,), list(COLORS).index(color)),
              "shape": torch.full((frames,), SHAPES.index(shape)), "row": cells[:, 0], "col": cells[:, 1]}
    return pixels, labels


def split_frames(pixels: Tensor, labels: dict[str, Tensor]) -> list[dict[str, Any]]:
    """A clip's frames as samples: ``{"pixels": (3, S, S), "labels": {name: int}}``."""
    return [{"pixels": pixels[t], "labels": {k: int(v[t]) for k, v in labels.items()}} for t in range(pixels.shape[0])]


class SyntheticFrames(IterableDataset):
    """An endless stream of labelled frames (``{"pixels": (3, S, S), "labels": {name: int}}``); each DataLoader
    worker renders its own seeded stream."""

    def __init__(self, seed: int = 0, **clip: Any) -> None:
        self.seed, self.clip = seed, clip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        rng = random.Random(self.seed * 1_000_003 + (info.id if info else 0))
        while True:
            yield from split_frames(*render_clip(rng, **self.clip))


def held_out_frames(clips: int, seed: int = VAL_SEED, **clip: Any) -> list[dict[str, Any]]:
    """A fixed validation set: every frame of ``clips`` clips from a stream of its own."""
    rng = random.Random(seed)
    return [sample for _ in range(clips) for sample in split_frames(*render_clip(rng, **clip))]


class SyntheticFrameData(L.LightningDataModule):
    """Labelled frames for the vision stage (see the module docstring).

    Args:
        frames, size, shape_size: the videos' settings (as ``data.synthetic`` in the video recipe).
        grid: the position labels' grid (``grid`` x ``grid`` cells).
        image_size, mean, std: the vision encoder's input (as in the video recipe).
        batch_size: frames per batch; val_clips: held-out clips (all their frames) for validation.
        seed: the training stream's seed.
    """

    def __init__(self, frames: int = 8, size: int = 64, shape_size: float = 0.14, grid: int = 4,
                 image_size: int = 64, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
                 batch_size: int = 64, val_clips: int = 64, num_workers: int = 1, seed: int = 0) -> None:
        super().__init__()
        if grid < 1:
            raise ValueError(f"grid must be at least 1, got {grid}")
        self.clip = {"frames": frames, "size": size, "shape_size": shape_size, "grid": grid,
                     "image_size": image_size, "mean": tuple(mean), "std": tuple(std)}
        self.classes = frame_label_classes(grid)
        self.batch_size, self.val_clips, self.num_workers, self.seed = batch_size, val_clips, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(SyntheticFrames(self.seed, **self.clip), batch_size=self.batch_size,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(held_out_frames(self.val_clips, **self.clip), batch_size=256)
