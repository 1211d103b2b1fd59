"""Callbacks used by the recipes."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from lightning.pytorch.callbacks import BasePredictionWriter


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes ``aurora predict`` results as JSON lines (id, question, answer, prediction) to ``path``
    (default ``<default_root_dir>/predictions.jsonl``), through a temporary file renamed when complete.
    With several processes each rank writes ``<path>.rank<k>``."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.path = path

    def write_on_epoch_end(self, trainer, pl_module, predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        path = Path(self.path or Path(trainer.default_root_dir) / "predictions.jsonl")
        if trainer.world_size > 1:
            path = path.with_name(f"{path.name}.rank{trainer.global_rank}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as f:
            for batch in predictions:
                for row in batch:
                    f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
