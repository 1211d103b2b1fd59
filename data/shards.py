"""Reading WebDataset shards of video QA samples (KEY.mp4 + KEY.json, LLaVA-style conversations).

Broken samples never stop training: a corrupt or truncated video, a missing field or unreadable JSON is
skipped, counted by reason in ``dataset.skipped`` and logged with the sample's key.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import random
import zlib
from collections import Counter
from typing import Any, Iterator, Sequence

import braceexpand
import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from aurora.data.prompt import PromptTemplate, Tokenizer, question_and_answer
from aurora.data.video import VideoDecodeError, decode_video, to_pixels
from aurora.types import IGNORE_INDEX

log = logging.getLogger(__name__)
FRAME_ORDERS = ("original", "shuffled", "reversed")


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard paths from a directory (its ``*.tar``), a glob, a brace pattern (``train-{00000..00003}.tar``),
    a URL or ``pipe:`` command, or a list of these. A local path that does not exist is an error naming it."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for s in map(str, specs):
        for item in braceexpand.braceexpand(s):
            if "://" in item or item.startswith("pipe:"):
                out.append(item)
            elif os.path.isdir(item):
                found = sorted(glob.glob(os.path.join(item, "*.tar")))
                if not found:
                    raise FileNotFoundError(f"no .tar shards in directory: {item}")
                out.extend(found)
            elif any(c in item for c in "*?["):
                found = sorted(glob.glob(item))
                if not found:
                    raise FileNotFoundError(f"no shards match: {item}")
                out.extend(found)
            elif os.path.isfile(item):
                out.append(item)
            else:
                raise FileNotFoundError(f"shard not found: {item}")
    if not out:
        raise FileNotFoundError(f"no shards given: {spec!r}")
    return out


class SampleError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class VideoQADataset(IterableDataset):
    """Decoded video QA samples from shards: ``pixels`` (F, 3, S, S), ``input_ids`` and ``labels`` (sandwich
    prompt with one video placeholder), and ``id``, ``question``, ``answer``, ``category``, ``options``.

    ``frame_order``: ``original``, or ``shuffled`` (a fixed random permutation per sample) / ``reversed``,
    which destroy the motion in the video: the ablation that shows the model uses time.
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        num_frames: int = 8,
        image_size: int = 64,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        tokenizer: Tokenizer | None = None,
        template: PromptTemplate | None = None,
        frame_order: str = "original",
        shuffle_buffer: int = 0,
        seed: int = 0,
    ) -> None:
        if frame_order not in FRAME_ORDERS:
            raise ValueError(f"unknown frame_order {frame_order!r}; known: {', '.join(FRAME_ORDERS)}")
        self.urls = expand_shards(shards)
        self.num_frames, self.image_size, self.mean, self.std = num_frames, image_size, tuple(mean), tuple(std)
        self.tokenizer = tokenizer or Tokenizer()
        self.template = template or PromptTemplate()
        self.frame_order, self.shuffle_buffer, self.seed = frame_order, shuffle_buffer, seed
        self.skipped: Counter = Counter()

    def _skip(self, reason: str, key: str, detail: str) -> None:
        self.skipped[reason] += 1
        log.warning("skipping sample %s: %s (%s); skipped so far: %s", key, reason, detail, dict(self.skipped))

    def _on_shard_error(self, exn: Exception) -> bool:
        self._skip("unreadable shard data", getattr(exn, "filename", "?"), f"{type(exn).__name__}: {exn}")
        return True  # keep going with the next sample / shard

    def decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        key = raw.get("__key__", "?")
        for field in ("mp4", "json"):
            if field not in raw:
                raise SampleError(f"missing field .{field}", key)
        try:
            meta = json.loads(raw["json"])
            question, answer = question_and_answer(meta["conversations"])
        except (ValueError, KeyError, TypeError) as e:
            raise SampleError("bad annotation", f"{type(e).__name__}: {e}") from e
        try:
            frames = decode_video(raw["mp4"], self.num_frames)
        except VideoDecodeError as e:
            raise SampleError("undecodable video", str(e)) from e
        if self.frame_order == "reversed":
            frames = frames.flip(0)
        elif self.frame_order == "shuffled":
            g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{key}".encode()))
            frames = frames[torch.randperm(len(frames), generator=g)]
        input_ids, labels = self.template.build(self.tokenizer, question, answer)
        return {
            "pixels": to_pixels(frames, self.image_size, self.mean, self.std),
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "id": key,
            "question": question,
            "answer": answer,
            "category": meta.get("category", "all"),
            "options": meta.get("options"),
        }

    def raw_samples(self) -> Iterator[dict[str, Any]]:
        ds = wds.WebDataset(
            self.urls, shardshuffle=False, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
            handler=self._on_shard_error, empty_check=False,
        )
        if self.shuffle_buffer > 1:
            # a fresh seed per pass drawn from torch's RNG: reproducible under seed_everything, new every epoch
            ds = ds.shuffle(self.shuffle_buffer, rng=random.Random(int(torch.randint(0, 2**31 - 1, (1,)))))
        return iter(ds)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for raw in self.raw_samples():
            try:
                yield self.decode(raw)
            except SampleError as e:
                self._skip(e.reason, raw.get("__key__", "?"), str(e))


def collate(batch: list[dict[str, Any]], pad_id: int = 0) -> dict[str, Any]:
    """Right-pad input_ids (``pad_id``) and labels (IGNORE_INDEX); stack pixels (B, F, 3, S, S)."""
    if not batch:
        raise ValueError("empty batch")
    frames = {tuple(s["pixels"].shape) for s in batch}
    if len(frames) != 1:
        raise ValueError(f"samples in one batch need the same frame count and size, got {sorted(frames)}")
    length = max(len(s["input_ids"]) for s in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, : len(s["input_ids"])] = s["input_ids"]
        labels[i, : len(s["labels"])] = s["labels"]
    out = {"pixels": torch.stack([s["pixels"] for s in batch]), "input_ids": ids, "labels": labels}
    for key in ("id", "question", "answer", "category", "options"):
        out[key] = [s.get(key) for s in batch]
    return out
