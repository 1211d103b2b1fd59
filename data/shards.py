"""Reading WebDataset shards of video QA samples (KEY.mp4 + KEY.json, LLaVA-style conversations).

Broken samples never stop training: a corrupt or truncated video, a missing field or unreadable JSON is
skipped, counted by reason in ``dataset.skipped`` and logged with the sample's key.

At scale: shards come from local paths, HTTP(S) URLs or ``pipe:`` commands; they are split by rank, then by
DataLoader worker (the same rule as webdataset's ``split_by_node`` / ``split_by_worker``), so no sample is
read by two ranks in one epoch. Every random choice (shard order, shuffle buffer, resampling) is seeded by
(seed, epoch, rank, worker), so a pass is reproducible and a resumed run can skip exactly what it consumed.
"""
from __future__ import annotations

import glob
import itertools
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

from aurora.data.prompt import AnnotationError, PromptTemplate, Tokenizer, check_text, question_and_answer
from aurora.data.reader import DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS, FrameReader, VideoTooLarge
from aurora.data.video import DEFAULT_MEAN, DEFAULT_STD, VideoDecodeError, to_pixels
from aurora.types import IGNORE_INDEX

log = logging.getLogger(__name__)
FRAME_ORDERS = ("original", "shuffled", "reversed")
OVERLONG = ("truncate", "skip")


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


def parse_annotation(data: bytes | str) -> dict[str, Any]:
    """A sample's ``.json``: a mapping with ``conversations``, an optional string ``id`` / ``category`` and a
    list of string ``options``; AnnotationError (a ValueError) naming what is wrong otherwise, so a sample
    written by hand or by another tool is skipped and counted rather than crashing a reader downstream."""
    meta = json.loads(data)
    if not isinstance(meta, dict):
        raise AnnotationError(f"the annotation must be a JSON object, got {type(meta).__name__}")
    if "conversations" not in meta:
        raise AnnotationError("the annotation has no 'conversations'")
    for name in ("id", "category"):
        if meta.get(name) is not None:
            check_text(meta[name], f"'{name}'")
    options = meta.get("options")
    if options is not None:
        if not isinstance(options, list):
            raise AnnotationError(f"'options' must be a list of strings, got {type(options).__name__}")
        for i, o in enumerate(options):
            check_text(o, f"option {i}")
    return meta


def check_sampling(num_frames: int | None, fps: float | None, max_frames: int | None, max_pixels: int | None,
                   max_video_frames: int | None) -> None:
    """Refuse sampling options that cannot work at start-up, not at the first sample."""
    if fps is not None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if max_frames is None:
            raise ValueError("fps sampling needs max_frames (it bounds a sample's frames, memory and tokens)")
    elif num_frames is None or num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 (or give fps and max_frames), got {num_frames}")
    for name, value in (("max_frames", max_frames), ("max_pixels", max_pixels),
                        ("max_video_frames", max_video_frames)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 (or null: no limit), got {value}")


class SampleError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class VideoQADataset(IterableDataset):
    """Decoded video QA samples from shards: ``pixels`` (F, 3, S, S), ``input_ids`` and ``labels`` (sandwich
    prompt with one video placeholder), and ``id``, ``question``, ``answer``, ``category``, ``options``.

    ``frame_order``: ``original``, or ``shuffled`` (a fixed random permutation per sample) / ``reversed``,
    which destroy the motion in the video: the ablation that shows the model uses time.

    Streaming at scale:
        shuffle_shards: shuffle the shard order every epoch (the same order on every rank, before the split).
        shuffle_buffer: sample shuffle buffer size per worker (0 or 1: none).
        resampled: draw shards with replacement, endlessly (each worker from all shards, its own seed); pair it
            with ``epoch_samples`` for equal, finite epochs on every rank.
        epoch_samples: samples per rank per epoch (split over the DataLoader workers); a finite stream is
            repeated to reach it. Equal counts on every rank keep DDP ranks in step.
        rank, world_size: this process's place among the ranks; None reads them from ``RANK`` / ``WORLD_SIZE``
            or torch.distributed (webdataset's ``pytorch_worker_info``).

    Length: ``max_tokens`` caps the sequence the language model sees: the text tokens plus ``num_frames *
    tokens_per_frame`` visual tokens (the video placeholder stands for them). An over-long sample is
    ``truncated`` (the answer's tail is cut; counted in ``dataset.truncated``) or ``skip``-ped (counted in
    ``dataset.skipped``); one whose prompt alone exceeds the budget is always skipped.

    Frames: ``num_frames`` spread uniformly over the video, or ``fps`` frames a second (at most ``max_frames``,
    which then also counts in the token budget); an annotation's ``start`` / ``end`` (seconds) narrows either
    to that window. Videos are read by keyframe seek (:class:`~aurora.data.reader.FrameReader`), resized to
    ``image_size`` on the short side inside FFmpeg. ``max_pixels`` (per frame) and ``max_video_frames``
    (frames considered) bound what one sample may cost whatever the file claims or holds: a video past them is
    skipped and counted as ``video over limits``.

    Position: ``epoch`` seeds the pass; ``start`` maps a worker id to (raw samples read, samples yielded) to
    skip on resume. With ``track_position`` every sample carries ``_pos`` = (worker, raw samples read,
    samples yielded) so the consumer can record how far each worker got.
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        num_frames: int = 8,
        image_size: int = 64,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
        tokenizer: Tokenizer | None = None,
        template: PromptTemplate | None = None,
        frame_order: str = "original",
        shuffle_buffer: int = 0,
        seed: int = 0,
        shuffle_shards: bool = False,
        resampled: bool = False,
        epoch_samples: int | None = None,
        max_tokens: int | None = None,
        tokens_per_frame: int = 0,
        overlong: str = "truncate",
        rank: int | None = None,
        world_size: int | None = None,
        track_position: bool = False,
        fps: float | None = None,
        max_frames: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_video_frames: int | None = DEFAULT_MAX_FRAMES,
        lead: str | None = None,
    ) -> None:
        if frame_order not in FRAME_ORDERS:
            raise ValueError(f"unknown frame_order {frame_order!r}; known: {', '.join(FRAME_ORDERS)}")
        if overlong not in OVERLONG:
            raise ValueError(f"unknown overlong {overlong!r}; known: {', '.join(OVERLONG)}")
        if epoch_samples is not None and epoch_samples < 1:
            raise ValueError(f"epoch_samples must be a positive number of samples per rank, got {epoch_samples}")
        if max_tokens is not None and max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        if (rank is None) != (world_size is None) or (rank is not None and not 0 <= rank < world_size):
            raise ValueError(f"give rank and world_size together with 0 <= rank < world_size, got {rank}, {world_size}")
        check_sampling(num_frames, fps, max_frames, max_pixels, max_video_frames)
        self.urls = expand_shards(shards)
        self.num_frames, self.image_size, self.mean, self.std = num_frames, image_size, tuple(mean), tuple(std)
        self.tokenizer = tokenizer or Tokenizer()
        self.template = template or PromptTemplate()
        self.frame_order, self.shuffle_buffer, self.seed = frame_order, shuffle_buffer, seed
        self.shuffle_shards, self.resampled, self.epoch_samples = shuffle_shards, resampled, epoch_samples
        self.max_tokens, self.tokens_per_frame, self.overlong = max_tokens, tokens_per_frame, overlong
        self.rank, self.world_size, self.track_position = rank, world_size, track_position
        self.fps, self.max_frames = fps, max_frames
        self.max_pixels, self.max_video_frames = max_pixels, max_video_frames
        self.lead = lead  # what is read before the video: None draws the template's per sample (training)
        self.epoch = 0
        self.start: dict[int, tuple[int, int]] = {}
        self.skipped: Counter = Counter()
        self.truncated: Counter = Counter()

    def _counts(self) -> Counter:
        return Counter({f"skipped/{k}": v for k, v in self.skipped.items()}) + \
            Counter({f"truncated/{k}": v for k, v in self.truncated.items()})

    def _skip(self, reason: str, key: str, detail: str) -> None:
        self.skipped[reason] += 1
        log.warning("skipping sample %s: %s (%s); skipped so far: %s", key, reason, detail, dict(self.skipped))

    def _on_shard_error(self, exn: Exception) -> bool:
        self._skip("unreadable shard data", getattr(exn, "filename", "?"), f"{type(exn).__name__}: {exn}")
        return True  # keep going with the next sample / shard

    def fit_to_budget(self, key: str, input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        """Apply ``max_tokens`` (see the class doc): the ids unchanged, truncated, or SampleError."""
        visual = (self.max_frames if self.fps is not None else self.num_frames) * self.tokens_per_frame
        total = len(input_ids) - 1 + visual  # the placeholder becomes the visual tokens
        if self.max_tokens is None or total <= self.max_tokens:
            return input_ids, labels
        detail = f"{total} tokens ({visual} visual) > max_tokens {self.max_tokens}"
        if self.overlong == "skip":
            raise SampleError("over token budget", detail)
        keep = self.max_tokens - visual + 1
        prompt = next((i for i, l in enumerate(labels) if l != IGNORE_INDEX), len(labels))
        if keep <= prompt:
            raise SampleError("over token budget", f"{detail}; the prompt alone does not fit")
        self.truncated["over token budget"] += 1
        log.warning("truncating sample %s: %s; truncated so far: %s", key, detail, dict(self.truncated))
        return input_ids[:keep], labels[:keep]

    def decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        key = raw.get("__key__", "?")
        for field in ("mp4", "json"):
            if field not in raw:
                raise SampleError(f"missing field .{field}", key)
        try:
            meta = parse_annotation(raw["json"])
            question, answer = question_and_answer(meta["conversations"])
            input_ids, labels = self.template.build(self.tokenizer, question, answer,
                                                    self.lead or self.template.choose_lead(key, self.seed))
        except (ValueError, KeyError, TypeError) as e:  # AnnotationError, UnicodeError: ValueErrors
            raise SampleError("bad annotation", f"{type(e).__name__}: {e}") from e
        input_ids, labels = self.fit_to_budget(key, input_ids, labels)  # before decoding: a skip costs nothing
        frames = self.read_frames(raw["mp4"], meta)
        if self.frame_order == "reversed":
            frames = frames.flip(0)
        elif self.frame_order == "shuffled":
            g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{key}".encode()))
            frames = frames[torch.randperm(len(frames), generator=g)]
        sample_id = meta.get("id")
        return {
            "pixels": to_pixels(frames, self.image_size, self.mean, self.std),
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "id": sample_id if isinstance(sample_id, str) else key,  # converted shards keep the original id
            "question": question,
            "answer": answer,
            "category": meta.get("category", "all"),
            "options": meta.get("options"),
        }

    def read_frames(self, data: bytes, meta: dict[str, Any]) -> torch.Tensor:
        """The sample's frames, uint8 (F, H, W, 3), by the sampling options (see the class doc)."""
        window = {k: meta.get(k) for k in ("start", "end")}
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in window.values()):
            raise SampleError("bad annotation", f"start / end must be seconds, got {window}")
        try:
            with FrameReader(data, short_side=self.image_size, max_pixels=self.max_pixels,
                             max_frames=self.max_video_frames) as reader:
                num = None if self.fps is not None else self.num_frames
                return reader.read(reader.indices(num, self.fps, self.max_frames, **window))
        except VideoTooLarge as e:
            raise SampleError("video over limits", str(e)) from e
        except (VideoDecodeError, IndexError) as e:
            raise SampleError("undecodable video", str(e)) from e
        except ValueError as e:  # a time window the video does not hold
            raise SampleError("bad annotation", str(e)) from e

    # -- which samples this worker reads -------------------------------------------------------------------
    def worker_info(self) -> tuple[int, int, int, int]:
        """(rank, world_size, worker, num_workers): explicit rank / world_size win over the environment."""
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if self.rank is not None:
            rank, world = self.rank, self.world_size
        return rank, world, worker, workers

    def worker_shards(self, rank: int, world: int, worker: int, workers: int, repeat: int = 0) -> list[str]:
        """This worker's shards for one pass: the shard list (shuffled by (seed, epoch, repeat), the same on every
        rank) split by rank, then by worker, like ``wds.split_by_node`` and ``wds.split_by_worker``."""
        urls = list(self.urls)
        if self.shuffle_shards:
            random.Random(wds.utils.make_seed(self.seed, self.epoch, repeat)).shuffle(urls)
        return urls[rank::world][worker::workers]

    def _shard_urls(self, rank: int, world: int, worker: int, workers: int) -> Iterator[tuple[str, int]]:
        """(url, pool size) in reading order: resampled draws endlessly from all shards; otherwise one pass over
        this worker's shards, repeated (with a new shard order) while ``epoch_samples`` asks for more."""
        if self.resampled:
            rng = random.Random(wds.utils.make_seed(self.seed, self.epoch, rank, worker))
            while True:
                yield rng.choice(self.urls), len(self.urls)
        for repeat in itertools.count():
            mine = self.worker_shards(rank, world, worker, workers, repeat)
            if not mine:
                log.warning("rank %d worker %d of %d has no shard: %d shards for %d ranks x %d workers; write "
                            "more, smaller shards (aurora data convert --shard-size) or use resampled: true",
                            rank, worker, workers, len(self.urls), world, workers)
                return
            yield from ((u, len(mine)) for u in mine)
            if self.epoch_samples is None:
                return

    def raw_samples(self, rank: int | None = None, world: int | None = None, worker: int | None = None,
                    workers: int | None = None) -> Iterator[dict[str, Any]]:
        """Undecoded samples (``__key__``, ``mp4``, ``json``) of one worker's pass, in its (shuffled) order."""
        info = self.worker_info()
        rank, world, worker, workers = (info[i] if v is None else v for i, v in enumerate((rank, world, worker, workers)))

        def read() -> Iterator[dict[str, Any]]:
            empty_run = 0
            for url, pool in self._shard_urls(rank, world, worker, workers):
                count = 0
                for sample in wds.tarfile_to_samples(handler=self._on_shard_error)([{"url": url}]):
                    count += 1
                    yield sample
                empty_run = 0 if count else empty_run + 1
                if empty_run >= pool * (20 if self.resampled else 1):  # a repeating stream with nothing readable
                    log.warning("stopping rank %d worker %d: its shards gave no readable sample", rank, worker)
                    return

        stream: Iterator[dict[str, Any]] = read()
        if self.shuffle_buffer > 1:
            rng = random.Random(wds.utils.make_seed(self.seed, self.epoch, rank, worker, 1))
            stream = iter(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(stream))
        return stream

    def worker_quota(self, worker: int, workers: int) -> int | None:
        """This worker's share of ``epoch_samples`` (None: the whole pass)."""
        if self.epoch_samples is None:
            return None
        return self.epoch_samples // workers + (1 if worker < self.epoch_samples % workers else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, workers = self.worker_info()
        quota = self.worker_quota(worker, workers)
        read_before, done = self.start.get(worker, (0, 0))
        if quota is not None and done >= quota:
            return
        counted = self._counts()
        for index, raw in enumerate(self.raw_samples(rank, world, worker, workers)):
            if index < read_before:  # consumed before the resume: read past it without decoding
                continue
            try:
                sample = self.decode(raw)
            except SampleError as e:
                self._skip(e.reason, raw.get("__key__", "?"), str(e))
                continue
            done += 1
            if self.track_position:
                sample["_pos"] = (worker, index + 1, done)
                # the skips and truncations since the previous sample of this worker: DataLoader workers are other
                # processes, so the counts travel with the samples to the training loop (which logs them)
                now = self._counts()
                sample["_skips"] = dict(now - counted)
                counted = now
            yield sample
            if quota is not None and done >= quota:
                return


def collate(batch: list[dict[str, Any]], pad_id: int = 0) -> dict[str, Any]:
    """Right-pad input_ids (``pad_id``) and labels (IGNORE_INDEX); stack pixels (B, F, 3, S, S). ``lengths``:
    each sample's own token count (where its padding starts: a real token may share the pad id)."""
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
    out = {"pixels": torch.stack([s["pixels"] for s in batch]), "input_ids": ids, "labels": labels,
           "lengths": torch.tensor([len(s["input_ids"]) for s in batch], dtype=torch.long)}
    for key in ("id", "question", "answer", "category", "options"):
        out[key] = [s.get(key) for s in batch]
    if "_pos" in batch[0]:  # the data position, read (and removed) by AuroraDataModule.on_before_batch_transfer
        out["_pos"] = [s["_pos"] for s in batch]
    if "_skips" in batch[0]:  # skipped / truncated samples counted by the reader, summed by the datamodule
        out["_skips"] = [s["_skips"] for s in batch]
    return out
