"""Callbacks and plugins used by the recipes."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import BasePredictionWriter

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
