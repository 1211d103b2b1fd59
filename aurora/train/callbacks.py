"""Callbacks and plugins used by the recipes and added by ``aurora``: atomic checkpoints, the predictions writer,
the learning-rate monitor and the progress bar with honest texts."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import BasePredictionWriter, LearningRateMonitor
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBar

from aurora.io import atomic_open, atomic_write, remove_stale_temporaries

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically: to a temporary file in the checkpoint's own folder, flushed to disk
    (fsync), then renamed over the target. A process killed mid-write leaves the previous file intact.

    Lightning's own writer goes through an fsspec transaction whose temporary file lives in the system temp
    folder and is *moved* into place: across file systems that is a copy into the target path, which a kill can
    truncate, and an interrupted save leaves a full-size orphan in /tmp. Remote URLs (``s3://``...) keep
    Lightning's writer. ``aurora`` uses this plugin by default (``trainer.plugins``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        # left by a process killed while writing (``.NAME.PID.tmp``; older runs wrote ``.NAME.tmpPID``)
        for stale in path.parent.glob(f".{path.name}.*tmp*"):
            stale.unlink(missing_ok=True)
        if path.parent.is_dir():  # and those of other checkpoint names, once their writer is gone
            remove_stale_temporaries(path.parent)
        try:
            atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), durable=True)
        except (RuntimeError, OSError) as e:
            raise disk_full_error(e, path) from e


    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Every checkpoint, local or remote, is read weights-only, whatever the caller asks: Lightning reads
        URLs with ``weights_only=False`` by default, so ``--ckpt_path http://...`` holding a pickle would run
        its code. A file that is not a readable checkpoint raises CheckpointError naming it (a clear one-line
        error on the command line, not a traceback)."""
        from aurora.checkpoint import CheckpointError

        if weights_only is False:
            log.warning("checkpoint %s: weights_only=False asked for; aurora reads every checkpoint weights-only", path)
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # UnpicklingError (a pickle weights_only refuses), zip / EOF errors, HTTP errors
            raise CheckpointError(f"cannot read checkpoint {path} weights-only ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from e


def disk_full_error(e: BaseException, path: Path) -> BaseException:
    """``e`` as "no space left on device" naming ``path`` when the disk is full (torch.save says only
    ``basic_ios::clear: iostream error``); other errors unchanged."""
    import errno
    import shutil

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) or (free is not None and free < 2**20):
        return OSError(errno.ENOSPC, f"no space left on device while writing checkpoint {path} "
                                     f"({'unknown' if free is None else free} bytes free)")
    return e


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
        with atomic_open(path) as f:
            for batch in predictions:
                for row in batch:
                    f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------------ learning rates


class LearningRates(LearningRateMonitor):
    """Lightning's LearningRateMonitor (``lr-AdamW/<group>`` every step), added by ``aurora fit`` when a recipe has
    none; a run without a logger (``trainer.logger: false``) is left alone instead of refused."""

    def __init__(self, logging_interval: str | None = "step", **kwargs: Any) -> None:
        super().__init__(logging_interval=logging_interval, **kwargs)

    def on_train_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


# ------------------------------------------------------------------------------------------------ progress texts


def _known(total: float | int | None) -> bool:
    return total is not None and total == total and total not in (float("inf"), -1)


def count_text(done: float | int, total: float | int | None = None, unit: str = "") -> str:
    """``12/800``, or just ``12`` when the total is unknown (a streamed dataset: ``inf``), never ``12/--``;
    ``unit`` in front: ``step 12/800``."""
    text = f"{int(done)}/{int(total)}" if _known(total) else f"{int(done)}"
    return f"{unit} {text}" if unit else text


def epoch_text(epoch: int, max_epochs: int | None) -> str:
    """``Epoch 1/2`` (Lightning's 0-based count of ``max_epochs`` epochs), ``Epoch 1`` when the run is not limited by
    epochs (``max_epochs`` None or -1: a ``max_steps`` run), never ``Epoch 1/-2``."""
    return f"Epoch {epoch}/{max_epochs - 1}" if max_epochs is not None and max_epochs > 0 else f"Epoch {epoch}"


def step_driven(trainer: Any) -> bool:
    """Whether training ends by ``max_steps`` (``max_epochs`` unset or -1): the bar then counts optimiser steps."""
    max_steps = getattr(trainer, "max_steps", -1)
    return max_steps is not None and max_steps > 0 and getattr(trainer, "max_epochs", None) in (None, -1)


class AuroraProgressBar(RichProgressBar):
    """Lightning's rich progress bar with honest texts: a ``max_steps`` run shows ``Epoch 1 ... step 12/800``
    (optimiser steps over the whole run, not batches of an epoch, and never ``Epoch 1/-2``); an unknown total (a
    streamed test split) is shown as the count alone (``Testing ... 4``, not ``4/--``). ``aurora fit|validate|test|
    predict`` use it unless the recipe sets a progress bar or ``trainer.enable_progress_bar: false``."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = epoch_text(current_epoch, self.trainer.max_epochs)
        return f"{text:{len(self.validation_description)}}"

    @property
    def total_train_batches(self) -> int | float:
        if step_driven(self.trainer):
            return self.trainer.max_steps
        return super().total_train_batches

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if step_driven(trainer):
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if step_driven(trainer):
            self._update(self.train_progress_bar_id, trainer.global_step)
            self.refresh()

    def configure_columns(self, trainer) -> list:
        from rich.progress import ProgressColumn
        from rich.text import Text

        bar = self

        class Count(ProgressColumn):
            def render(self, task) -> Text:
                train = task.id == bar.train_progress_bar_id and step_driven(bar.trainer)
                return Text(count_text(task.completed, task.total, "step" if train else ""),
                            style=bar.theme.batch_progress)

        cols = super().configure_columns(trainer)
        return [Count() if type(c).__name__ == "BatchesProcessedColumn" else c for c in cols]
