"""Reading local checkpoints in the Hugging Face layout, shared by every backbone's ``from_checkpoint`` and by
``aurora convert``: the weights files of a directory (``model.safetensors`` / ``pytorch_model.bin``, single or
sharded), one weights file alone, ``config.json``, and loading a state dict with every missing, unexpected and
wrong-shape key named (a checkpoint of another architecture or size then says what does not fit).

Tensors are read with safetensors or ``torch.load(weights_only=True)``: no pickled object is ever executed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SHARDS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")  # shards without their index file
SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def weights_files(path: str | Path) -> list[Path]:
    """The weights file(s) of a checkpoint directory (single, sharded via the index, or shards alone; else its one
    weights file), or the file itself."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    for name in WEIGHTS:
        if (path / name).is_file():
            return [path / name]
        index = path / f"{name}.index.json"
        if index.is_file():
            return [path / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    for pattern in SHARDS:
        if shards := sorted(path.glob(pattern)):
            return shards
    found = sorted(p.name for p in path.iterdir() if p.suffix in SUFFIXES)
    if len(found) == 1:
        return [path / found[0]]
    raise FileNotFoundError(f"{path} has no model.safetensors / pytorch_model.bin (or sharded index)"
                            + (f"; weights files there: {', '.join(found)}" if found else ""))


def _torch_load(path: Path) -> Any:
    try:  # memory-mapped: reading the keys of a large .pth costs nothing
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def _unwrap(sd: Any, path: Path) -> dict[str, Any]:
    """A plain state dict, or the ``state_dict`` entry of a training checkpoint."""
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return sd


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a weights file (``.safetensors``, or ``.bin`` / ``.pt`` / ``.pth`` read with
    ``weights_only=True``) or of a checkpoint directory (see :func:`weights_files`)."""
    from safetensors.torch import load_file

    sd: dict[str, Tensor] = {}
    for f in weights_files(path):
        sd.update(load_file(str(f)) if f.suffix == ".safetensors" else _unwrap(_torch_load(f), f))
    return sd


def weight_names(path: str | Path) -> list[str]:
    """The tensor names of a checkpoint, without reading the tensors where the format allows."""
    from safetensors import safe_open

    keys: list[str] = []
    for f in weights_files(path):
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as h:
                keys += list(h.keys())
        else:
            keys += list(_unwrap(_torch_load(f), f))
    return sorted(keys)


def read_config(folder: str | Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict; ``{}`` when there is none. Invalid JSON is a ValueError naming the file."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def checkpoint_folder(path: str | Path) -> Path:
    """Where a checkpoint's ``config.json`` lives: the directory itself, or the folder of a weights file."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def load_checked(model: nn.Module, state_dict: dict[str, Any], what: str | None = None,
                 optional: Iterable[str] = ()) -> None:
    """Load ``state_dict`` (the model's own key names) into ``model``, each tensor cast to the model's dtype;
    ``what`` names the model in the error (its class name by default).

    Every missing, unexpected and wrong-shape key is named in one ValueError (eight of each at most).
    ``optional``: the model's keys the checkpoint may leave out (a head tied to the embedding); given ones are
    ignored here, the caller checks them."""
    optional = set(optional)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:
        shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in wrong]
        detail = "; ".join(
            f"{what}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
            if keys
        )
        raise ValueError(f"checkpoint does not fit this {what or type(model).__name__} ({model.extra_repr()}): {detail}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items() if k not in optional},
                          strict=not optional)
