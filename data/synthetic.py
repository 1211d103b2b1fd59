"""A synthetic video QA dataset that needs no download: coloured shapes moving across a black frame.

Each video shows one shape of one colour moving steadily in one direction. Questions ask its colour, its shape,
or its direction of motion. The motion answer needs the frames in time order: the same frames reversed show
the opposite direction, so a model that ignores time cannot answer it.
"""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import webdataset as wds

from aurora.data.video import encode_mp4

COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 220, 40)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
CATEGORIES = ("color", "shape", "motion")
SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "test": 2_000_003}  # disjoint streams: held-out videos


def shape_mask(shape: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        side = radius * 0.85
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if shape == "triangle":  # apex up: the width grows from the top edge to the base
        top, bottom = cy - radius, cy + radius
        half = (yy - top) / (2 * radius) * radius
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= half)
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def trajectory(direction: str, frames: int, size: int, rng: random.Random,
               shape_size: float = 0.14) -> list[tuple[float, float]]:
    """The shape's centre (x, y) in pixels in each of ``frames`` frames: crossing the frame from one side towards
    the other; ``shape_size`` is the shape's radius as a fraction of the frame size."""
    if not 0.02 <= shape_size <= 0.3:
        raise ValueError(f"shape_size must be in [0.02, 0.3] (radius / frame size), got {shape_size}")
    radius = size * shape_size
    margin = radius + size * 0.06
    travel = size - 2 * margin
    dx, dy = DIRECTIONS[direction]
    start = margin + rng.uniform(0, 0.1) * travel  # along the motion axis, from the side it leaves
    length = travel * rng.uniform(0.75, 0.9)
    across = rng.uniform(margin, size - margin)  # the other coordinate stays put
    centres = []
    for t in range(frames):
        along = start + length * t / max(1, frames - 1)
        pos = along if (dx + dy) > 0 else size - along
        centres.append((pos, across) if dx else (across, pos))
    return centres


def paint(color: str, shape: str, centres: list[tuple[float, float]], size: int, shape_size: float) -> np.ndarray:
    """(len(centres), size, size, 3) uint8: the shape at each centre on a black frame."""
    out = np.zeros((len(centres), size, size, 3), dtype=np.uint8)
    rgb = np.array(COLORS[color], dtype=np.uint8)
    for t, (cx, cy) in enumerate(centres):
        out[t][shape_mask(shape, size, cx, cy, radius=size * shape_size)] = rgb
    return out


def render(color: str, shape: str, direction: str, frames: int, size: int, rng: random.Random,
           shape_size: float = 0.14) -> np.ndarray:
    """(frames, size, size, 3) uint8: the shape moving along :func:`trajectory` on a black frame."""
    return paint(color, shape, trajectory(direction, frames, size, rng, shape_size), size, shape_size)


def question_for(category: str, color: str, shape: str, direction: str) -> tuple[str, str, list[str]]:
    if category == "color":
        return "What color is the moving shape?", color, list(COLORS)
    if category == "shape":
        return "What shape is moving?", shape, list(SHAPES)
    if category == "motion":
        return f"Which direction does the {color} {shape} move?", direction, list(DIRECTIONS)
    raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")


def generate(count: int, frames: int = 8, size: int = 64, seed: int = 0, prefix: str = "s",
             shape_size: float = 0.14) -> Iterator[dict[str, Any]]:
    """``count`` samples, categories balanced (round robin), attributes drawn at random."""
    rng = random.Random(seed)
    for i in range(count):
        color, shape, direction = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(DIRECTIONS))
        category = CATEGORIES[i % len(CATEGORIES)]
        question, answer, options = question_for(category, color, shape, direction)
        video = render(color, shape, direction, frames, size, rng, shape_size)
        yield {
            "id": f"{prefix}{i:07d}",
            "video": encode_mp4(video),
            "conversations": [
                {"from": "human", "value": f"<video>\n{question}"},
                {"from": "gpt", "value": answer},
            ],
            "category": category,
            "options": options,
            "meta": {"color": color, "shape": shape, "direction": direction},
        }


def write_shards(samples: Iterator[dict[str, Any]], out_dir: Path, split: str, samples_per_shard: int) -> dict:
    """WebDataset shards ``{split}-{i:05d}.tar`` of KEY.mp4 + KEY.json. Each shard is written to a temporary
    file and renamed when complete: an interrupted run never leaves a half-written shard."""
    shards, count, cats = [], 0, Counter()
    writer, tmp, path = None, None, None

    def close():
        if writer is not None:
            writer.close()
            os.replace(tmp, path)
            shards.append(path.name)

    for sample in samples:
        if count % samples_per_shard == 0:
            close()
            path = out_dir / f"{split}-{len(shards):05d}.tar"
            tmp = path.with_name(path.name + ".tmp")
            writer = wds.TarWriter(str(tmp))
        meta = {k: v for k, v in sample.items() if k not in ("video", "id")}
        writer.write({"__key__": sample["id"], "mp4": sample["video"], "json": json.dumps(meta).encode()})
        count += 1
        cats[sample["category"]] += 1
    close()
    return {"count": count, "shards": shards, "categories": dict(cats)}


DEFAULT_PARAMS = {"frames": 8, "size": 64, "seed": 0, "samples_per_shard": 500, "shape_size": 0.14}


def synthetic_mismatch(manifest: dict[str, Any], spec: dict[str, Any]) -> str:
    """What differs between a written dataset's manifest and the arguments of :func:`write_synthetic_dataset`
    (empty when it matches): the split sizes and the rendering parameters; a manifest written before a parameter
    existed counts as that parameter's default."""
    params = {**DEFAULT_PARAMS, **manifest.get("params", {})}
    splits = {k: v.get("count") for k, v in manifest.get("splits", {}).items()}
    diff = []
    for key, want in spec.items():
        have = splits.get(key) if key in ("train", "val", "test") else params.get(key)
        if have != want:
            diff.append(f"{key}: {have} written, {want} asked")
    return ", ".join(diff)


def write_synthetic_dataset(
    out_dir: str | Path,
    train: int = 3000,
    val: int = 200,
    test: int = 300,
    frames: int = 8,
    size: int = 64,
    seed: int = 0,
    samples_per_shard: int = 500,
    shape_size: float = 0.14,
) -> dict[str, Any]:
    """Write the train/val/test splits (different random streams: held-out videos) and ``manifest.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = {"frames": frames, "size": size, "seed": seed, "samples_per_shard": samples_per_shard,
              "shape_size": shape_size}
    manifest: dict[str, Any] = {"dataset": "aurora-synthetic-shapes", "params": params,
                                "categories": list(CATEGORIES), "splits": {}}
    for split, count in (("train", train), ("val", val), ("test", test)):
        samples = generate(count, frames, size, seed + SPLIT_SEEDS[split], prefix=f"{split}-", shape_size=shape_size)
        manifest["splits"][split] = write_shards(samples, out, split, samples_per_shard)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / "manifest.json")
    return manifest


def synthetic_main(argv: list[str]) -> int:
    """``aurora data synthetic``: write the synthetic moving-shapes video QA dataset as WebDataset shards."""
    import argparse

    parser = argparse.ArgumentParser(prog="aurora data synthetic", description=synthetic_main.__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train", type=int, default=3000, help="training videos (default: %(default)s)")
    parser.add_argument("--val", type=int, default=200, help="validation videos (default: %(default)s)")
    parser.add_argument("--test", type=int, default=300, help="held-out test videos (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the whole set (default: %(default)s)")
    parser.add_argument("--samples-per-shard", type=int, default=500, help="samples per .tar shard (default: %(default)s)")
    parser.add_argument("--shape-size", type=float, default=0.14,
                        help="shape radius as a fraction of the frame size (default: %(default)s)")
    args = parser.parse_args(argv)
    manifest = write_synthetic_dataset(
        args.out, train=args.train, val=args.val, test=args.test, frames=args.frames, size=args.size,
        seed=args.seed, samples_per_shard=args.samples_per_shard, shape_size=args.shape_size,
    )
    print(json.dumps(manifest, indent=2))
    return 0
