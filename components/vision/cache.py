"""A disk cache of a FROZEN vision encoder's output, for training the projector (and language model) without
running the encoder again on every epoch.

One safetensors file per sample, under ``<root>/<config hash>/``, named by a hash of (sample key, config hash,
frame count, frame height and width). The config hash covers the encoder's class, its architecture config, the
layers it runs, its merge's settings (:meth:`TokenMerge.spec`) and a fingerprint of its weights, so a different
encoder, merge or checkpoint never reads another's features. The sample key is a hash of the sample's pixels
unless the caller passes its own keys (then they must name the exact frames: id plus frame sampling).

Files are written to a temporary name and moved into place (``os.replace``), so a crash or a second process
never leaves a half-written entry; a file that cannot be read is treated as a miss and rewritten.
What is stored is the encoder's per-frame output for the sample (``tokens``, ``sizes`` and, when the merge
traces them, ``source``): the merge's video step (``temporal``, ``size_global``) runs on it after loading.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aurora.io import atomic_write


def pixels_key(pixels: Tensor) -> str:
    """A content key for one sample's pixels (F, 3, H, W): sha256 of its dtype, shape and bytes."""
    t = pixels.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return h.hexdigest()


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 of every parameter and buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update((t.view(torch.uint8) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def config_hash(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Per-sample feature files under ``root``; counts its ``hits`` and ``misses``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, key: str, config: str, frames: int, height: int, width: int) -> Path:
        name = hashlib.sha256(f"{key}|{config}|{frames}|{height}x{width}".encode()).hexdigest()
        return self.root / config[:16] / f"{name[:40]}.safetensors"

    def load(self, path: Path, need: tuple[str, ...]) -> dict[str, Tensor] | None:
        from safetensors.torch import load_file

        if not path.is_file():
            return None
        try:
            data = load_file(str(path))
        except Exception:  # a damaged file (disk full, killed copy): a miss, rewritten below
            return None
        return data if all(k in data for k in need) else None

    def save(self, path: Path, tensors: dict[str, Tensor]) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
