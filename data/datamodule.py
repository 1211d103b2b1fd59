"""The LightningDataModule: WebDataset video QA shards -> padded batches, with a resumable data position."""
from __future__ import annotations

import json
import logging
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import lightning as L
import webdataset as wds
from torch.utils.data import DataLoader

from aurora.data.prompt import PromptFields, PromptTemplate
from aurora.data.tokenizers import build_tokenizer
from aurora.data.reader import DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS
from aurora.data.shards import FRAME_ORDERS, OVERLONG, VideoQADataset, check_sampling, collate, expand_shards
from aurora.data.video import DEFAULT_MEAN, DEFAULT_STD

log = logging.getLogger(__name__)


DEFAULT_MAX_TOKENS = 4096  # text + visual tokens of one training sample, unless the recipe says otherwise


def check_sizes(**sizes: Any) -> None:
    """Refuse at start-up the sizes that would only fail (or silently do nothing) mid-run: each must be a
    positive whole number (``None`` allowed for ``max_tokens``: no cap)."""
    for name, value in sizes.items():
        if value is None and name in ("max_tokens", "num_frames"):  # no cap; num_frames: fps sampling instead
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"data.{name} must be a positive whole number, got {value!r}")


class _PassLoader(DataLoader):
    """A DataLoader that calls ``on_iter(dataset)`` when a pass starts: the epoch and resume position are set on
    the dataset then, before the worker processes copy it."""

    def __init__(self, *args: Any, on_iter: Callable[[VideoQADataset], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_iter = on_iter

    def __iter__(self):
        self.on_iter(self.dataset)
        return super().__iter__()


class AuroraDataModule(L.LightningDataModule):
    """Video QA from WebDataset shards.

    Args:
        data_dir: a folder written by ``aurora data ...`` (``manifest.json`` + ``{split}-*.tar``). Explicit
            ``train_shards`` / ``val_shards`` / ``test_shards`` (directory, glob, brace pattern, HTTP(S) URL,
            ``pipe:`` command, or a list of these) win over it.
        synthetic: when given and ``data_dir`` holds no dataset yet, the synthetic dataset is written there first
            with these arguments (``train``, ``val``, ``test``, ``frames``, ``size``, ``seed``).
        num_frames: frames sampled uniformly from every video; or ``fps`` frames a second, at most
            ``max_frames`` (each video then has its own frame count: batch_size 1). An annotation's ``start`` /
            ``end`` seconds narrow sampling to that window. image_size, mean, std: the vision encoder's input.
        max_pixels, max_video_frames: a video whose frames hold more pixels, or which has more frames, is skipped
            and counted (``skipped/video over limits``): what one sample may cost is bounded whatever the file.
        frame_order: ``original``, ``shuffled`` or ``reversed`` frames for evaluation (the motion ablation).
        template: the prompt template's fields (sandwich prompting by default; ``lead`` says what is read
            before the video in training: ``question``, ``generic``, ``none`` or a seeded per-sample ``mix``).
        eval_lead: what validation / test / predict read before the video (default: the sandwich, or the
            template's lead): ``generic`` or ``none`` measure answering from one state reused for any question.
        shuffle_buffer, shuffle_shards: training sample shuffle buffer (per worker) and per-epoch shard order.
        resampled, epoch_samples: draw training shards with replacement, endlessly, and end an epoch after
            ``epoch_samples`` samples per rank (see :class:`VideoQADataset`).
        max_tokens, tokens_per_frame, overlong: the token budget of a sample and what happens past it
            (``truncate`` or ``skip``). ``max_tokens`` defaults to DEFAULT_MAX_TOKENS (4096): without a cap one
            1 MB question took a fit to 22 GB; ``null`` lifts it.
        tokenizer: the tokenizer, a registry part (``aurora parts tokenizer``): ``rwkv_world`` (the default),
            ``{name: tokenizer_json, path: .../tokenizer.json}`` or ``{name: hf, path: DIR}`` for a backbone with
            its own vocabulary (local files only).
        seed: seeds every data shuffle, per epoch: a pass is reproducible, so a resumed run skips what it saw.

    Training position: the batches the training loop takes are recorded per rank and DataLoader worker
    (``on_before_batch_transfer``); :meth:`state_dict` (saved in Lightning checkpoints) holds the epoch and
    those positions, and after :meth:`load_state_dict` the next pass over that epoch starts where it stopped.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        synthetic: dict[str, Any] | None = None,
        num_frames: int = 8,
        image_size: int = 64,
        mean: tuple[float, float, float] = DEFAULT_MEAN,
        std: tuple[float, float, float] = DEFAULT_STD,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle_buffer: int = 256,
        shuffle_shards: bool = True,
        resampled: bool = False,
        epoch_samples: int | None = None,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        tokens_per_frame: int = 0,
        overlong: str = "truncate",
        frame_order: str = "original",
        template: PromptFields | None = None,
        eval_lead: str | None = None,
        seed: int = 0,
        fps: float | None = None,
        max_frames: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_video_frames: int | None = DEFAULT_MAX_FRAMES,
        tokenizer: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_sizes(num_frames=num_frames, image_size=image_size, batch_size=batch_size, max_tokens=max_tokens)
        check_sampling(num_frames, fps, max_frames, max_pixels, max_video_frames)
        if fps is not None and max(batch_size, eval_batch_size or batch_size) > 1:
            raise ValueError("fps sampling gives every video its own frame count: use batch_size 1 (and "
                             "eval_batch_size 1), or num_frames")
        if data_dir is None and train_shards is None and test_shards is None:
            raise ValueError("give data_dir or train_shards / val_shards / test_shards")
        if frame_order not in FRAME_ORDERS:
            raise ValueError(f"unknown frame_order {frame_order!r}; known: {', '.join(FRAME_ORDERS)}")
        if overlong not in OVERLONG:
            raise ValueError(f"unknown overlong {overlong!r}; known: {', '.join(OVERLONG)}")
        self.data_dir, self.synthetic = data_dir, synthetic
        self.shards = {"train": train_shards, "val": val_shards, "test": test_shards}
        self.num_frames, self.image_size, self.mean, self.std = num_frames, image_size, mean, std
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.shuffle_buffer, self.seed = num_workers, shuffle_buffer, seed
        self.shuffle_shards, self.resampled, self.epoch_samples = shuffle_shards, resampled, epoch_samples
        self.length = {"max_tokens": max_tokens, "tokens_per_frame": tokens_per_frame, "overlong": overlong}
        self.frame_order = frame_order
        self.sampling = {"fps": fps, "max_frames": max_frames, "max_pixels": max_pixels,
                         "max_video_frames": max_video_frames}
        self.template = PromptTemplate(**(template or {}))
        if eval_lead is not None and eval_lead not in ("question", "generic", "none"):
            raise ValueError(f"unknown eval_lead {eval_lead!r}; known: question, generic, none")
        self.eval_lead = eval_lead
        self.tokenizer = build_tokenizer(tokenizer)
        # the training position of this rank: the epoch, and per worker (raw samples read, samples yielded)
        self.epoch, self._next_epoch = 0, 0
        self.positions: dict[int, tuple[int, int]] = {}
        # training samples skipped or truncated by the reader so far ("skipped/<reason>", "truncated/<reason>"),
        # summed over DataLoader workers; the LightningModule logs them (MLflow: data/skipped/...)
        self.data_counts: Counter = Counter()

    # -- where the data is ---------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any] | None:
        if self.data_dir is None:
            return None
        path = Path(self.data_dir) / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def categories(self) -> list[str] | None:
        m = self.manifest
        return list(m["categories"]) if m and "categories" in m else None

    def prepare_data(self) -> None:
        if self.synthetic is None or self.data_dir is None:
            return
        from aurora.data.synthetic import write_synthetic_dataset, synthetic_mismatch

        m = self.manifest
        if m is None:
            write_synthetic_dataset(self.data_dir, **self.synthetic)
        elif (diff := synthetic_mismatch(m, self.synthetic)):
            # never overwrite what is there: a stale dataset would silently train the wrong task
            raise ValueError(
                f"{self.data_dir} holds a synthetic dataset written with other settings ({diff}); delete it or "
                f"point data.data_dir elsewhere to have it written with data.synthetic"
            )

    def split_shards(self, split: str) -> str | list[str]:
        if self.shards[split] is not None:
            return self.shards[split]
        m = self.manifest
        if m is None:
            raise FileNotFoundError(
                f"no dataset in {self.data_dir} (manifest.json missing) and no {split}_shards given; "
                f"write one with `aurora data synthetic --out {self.data_dir}` or `aurora data convert`"
            )
        if split not in m["splits"] or not m["splits"][split]["shards"]:
            raise FileNotFoundError(f"dataset in {self.data_dir} has no {split} split")
        return [os.path.join(self.data_dir, s) for s in m["splits"][split]["shards"]]

    def _rank_world(self) -> tuple[int, int]:
        """From the trainer when attached, else RANK / WORLD_SIZE or torch.distributed (webdataset's rule)."""
        if self.trainer is not None:
            return int(self.trainer.global_rank), int(self.trainer.world_size)
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        return rank, world

    # -- loaders -------------------------------------------------------------------------------------------
    def dataset(self, split: str, frame_order: str = "original") -> VideoQADataset:
        train = split == "train"
        rank, world = self._rank_world() if self.trainer is not None else (None, None)
        return VideoQADataset(
            self.split_shards(split), num_frames=self.num_frames, image_size=self.image_size, mean=self.mean,
            std=self.std, tokenizer=self.tokenizer, template=self.template, frame_order=frame_order,
            shuffle_buffer=self.shuffle_buffer if train else 0, seed=self.seed,
            shuffle_shards=self.shuffle_shards and train, resampled=self.resampled and train,
            epoch_samples=self.epoch_samples if train else None, rank=rank, world_size=world,
            track_position=train, lead=None if train else (self.eval_lead or self.template.lead_at_inference),
            **self.length, **self.sampling,
        )

    def _loader(self, ds: VideoQADataset, batch_size: int) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, num_workers=self.num_workers, collate_fn=collate,
                          persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return _PassLoader(self.dataset("train"), batch_size=self.batch_size, num_workers=self.num_workers,
                           collate_fn=collate, persistent_workers=False, on_iter=self._begin_pass)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test", self.frame_order), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test", self.frame_order), self.eval_batch_size)

    # -- the training position -----------------------------------------------------------------------------
    def _begin_pass(self, ds: VideoQADataset) -> None:
        """A pass over the training loader starts: the trainer's epoch (or our own count without a trainer);
        the recorded position is kept only when the pass continues the epoch it was recorded in."""
        if self.trainer is not None:
            epoch = int(self.trainer.current_epoch)
        else:
            epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        if epoch != self.epoch:
            self.positions = {}
        self.epoch = epoch
        ds.epoch, ds.start = epoch, dict(self.positions)
        if self.positions:
            log.info("resuming epoch %d of the training data at %s (worker: samples read, yielded)",
                     epoch, self.positions)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record how far each worker got with the batches the loop takes (and drop the bookkeeping)."""
        if isinstance(batch, dict) and "_pos" in batch:
            for worker, read, done in batch.pop("_pos"):
                self.positions[worker] = max(self.positions.get(worker, (0, 0)), (read, done))
        if isinstance(batch, dict) and "_skips" in batch:
            for counts in batch.pop("_skips"):
                self.data_counts.update(counts)
        return batch

    def _fingerprint(self) -> int | None:
        """A checksum of the training shard list: a position only means something for the same shards."""
        try:
            names = [os.path.basename(u) for u in expand_shards(self.split_shards("train"))]  # the folder may move
            return zlib.crc32("\n".join(names).encode())
        except FileNotFoundError:
            return None

    def state_dict(self) -> dict[str, Any]:
        """The epoch and, for every rank, each worker's position (gathered from all ranks: a checkpoint is
        written by rank 0 only). Lightning calls this on every rank when it saves a checkpoint."""
        import torch.distributed as dist

        rank, world = self._rank_world()
        mine = {int(w): [int(r), int(d)] for w, (r, d) in self.positions.items()}
        ranks = {rank: mine}
        if world > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, (rank, mine))
            ranks = dict(gathered)
        return {
            "epoch": int(self.epoch), "world_size": world, "num_workers": int(self.num_workers),
            "seed": int(self.seed), "shards": self._fingerprint(), "positions": ranks,
            "samples": {r: sum(d for _, d in p.values()) for r, p in ranks.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position. The layout must match (ranks, workers, seed, shards) for the
        position to mean the same samples; otherwise the saved epoch restarts from its beginning (logged)."""
        rank, world = self._rank_world()
        self.epoch = self._next_epoch = int(state["epoch"])
        now = {"world_size": world, "num_workers": self.num_workers, "seed": self.seed, "shards": self._fingerprint()}
        changed = [f"{k} {state.get(k)} -> {v}" for k, v in now.items() if state.get(k) != v]
        if changed:
            log.warning("data position not restored (%s): epoch %d of the training data restarts from its "
                        "beginning", ", ".join(changed), self.epoch)
            self.positions = {}
            return
        mine = state["positions"].get(rank, state["positions"].get(str(rank), {}))
        self.positions = {int(w): (int(r), int(d)) for w, (r, d) in mine.items()}
