"""The LightningDataModule: WebDataset video QA shards -> padded batches."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from aurora.data.prompt import PromptTemplate, Tokenizer
from aurora.data.shards import FRAME_ORDERS, VideoQADataset, collate


class AuroraDataModule(L.LightningDataModule):
    """Video QA from WebDataset shards.

    Args:
        data_dir: a folder written by ``aurora data ...`` (``manifest.json`` + ``{split}-*.tar``). Explicit
            ``train_shards`` / ``val_shards`` / ``test_shards`` (directory, glob, brace pattern, URL) win over it.
        synthetic: when given and ``data_dir`` holds no dataset yet, the synthetic dataset is written there first
            with these arguments (``train``, ``val``, ``test``, ``frames``, ``size``, ``seed``).
        num_frames: frames sampled uniformly from every video; image_size, mean, std: the vision encoder's input.
        frame_order: ``original``, ``shuffled`` or ``reversed`` frames for evaluation (the motion ablation).
        template: the prompt template's fields (sandwich prompting by default).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        train_shards: str | None = None,
        val_shards: str | None = None,
        test_shards: str | None = None,
        synthetic: dict[str, Any] | None = None,
        num_frames: int = 8,
        image_size: int = 64,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle_buffer: int = 256,
        frame_order: str = "original",
        template: dict[str, str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if data_dir is None and train_shards is None and test_shards is None:
            raise ValueError("give data_dir or train_shards / val_shards / test_shards")
        if frame_order not in FRAME_ORDERS:
            raise ValueError(f"unknown frame_order {frame_order!r}; known: {', '.join(FRAME_ORDERS)}")
        self.data_dir, self.synthetic = data_dir, synthetic
        self.shards = {"train": train_shards, "val": val_shards, "test": test_shards}
        self.num_frames, self.image_size, self.mean, self.std = num_frames, image_size, mean, std
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.shuffle_buffer, self.seed = num_workers, shuffle_buffer, seed
        self.frame_order = frame_order
        self.template = PromptTemplate(**(template or {}))
        self.tokenizer = Tokenizer()

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
        if self.synthetic is not None and self.data_dir is not None and self.manifest is None:
            from aurora.data.synthetic import write_synthetic_dataset

            write_synthetic_dataset(self.data_dir, **self.synthetic)

    def split_shards(self, split: str) -> str | list[str]:
        if self.shards[split] is not None:
            return self.shards[split]
        m = self.manifest
        if m is None:
            raise FileNotFoundError(
                f"no dataset in {self.data_dir} (manifest.json missing) and no {split}_shards given; "
                f"write one with `aurora data synthetic --out {self.data_dir}`"
            )
        if split not in m["splits"] or not m["splits"][split]["shards"]:
            raise FileNotFoundError(f"dataset in {self.data_dir} has no {split} split")
        return [os.path.join(self.data_dir, s) for s in m["splits"][split]["shards"]]

    # -- loaders -------------------------------------------------------------------------------------------
    def dataset(self, split: str, frame_order: str = "original") -> VideoQADataset:
        return VideoQADataset(
            self.split_shards(split), num_frames=self.num_frames, image_size=self.image_size, mean=self.mean,
            std=self.std, tokenizer=self.tokenizer, template=self.template, frame_order=frame_order,
            shuffle_buffer=self.shuffle_buffer if split == "train" else 0, seed=self.seed,
        )

    def _loader(self, ds: VideoQADataset, batch_size: int) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, num_workers=self.num_workers, collate_fn=collate,
                          persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train"), self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test", self.frame_order), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test", self.frame_order), self.eval_batch_size)
