"""Reading checkpoints: the Lightning checkpoints ``aurora fit`` writes (the whole model, or one part of it) and the
backbone files ``aurora convert`` writes, with every missing, unexpected or mis-shaped key named in the error.

The checkpoint is read with ``torch.load(weights_only=True)``: the module's hyperparameters are plain values
(``save_hyperparameters`` of registry specs), so no pickled object is ever executed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from aurora.registry import RNN

MODEL_PREFIX = "model."  # AuroraModule keeps the AuroraModel as ``self.model``
# what inference needs, saved in every checkpoint ``aurora fit`` writes (frames or fps + max_frames, image size,
# mean / std, the prompt template with its lead, the tokenizer's spec): aurora.infer.runconfig.inference_settings
INFERENCE_KEY = "aurora_inference"
INFERENCE_FIELDS = ("num_frames", "fps", "max_frames", "image_size", "mean", "std", "template", "eval_lead",
                    "tokenizer")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not a Lightning checkpoint, or not fitting the model."""


def read_checkpoint(ckpt: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's dict (tensors on the CPU); it must hold a ``state_dict`` mapping."""
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors, or objects weights_only refuses
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e})") from e
    if not isinstance(blob, Mapping) or not isinstance(blob.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not a Lightning checkpoint: no 'state_dict' mapping")
    return dict(blob)


def load_weights(module: torch.nn.Module, ckpt: str | os.PathLike | Mapping[str, Any], prefix: str,
                 target: str = "the model") -> None:
    """Load the ``prefix*`` tensors of a checkpoint (a path, or the dict :func:`read_checkpoint` returned) into
    ``module`` strictly; ``target`` names the module in the error."""
    blob = ckpt if isinstance(ckpt, Mapping) else read_checkpoint(ckpt)
    path = blob.get("__path__", ckpt if not isinstance(ckpt, Mapping) else "checkpoint")
    state = blob["state_dict"]
    sd = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sd:
        prefixes = sorted({k.split(".")[0] + "." + k.split(".")[1] if k.count(".") else k for k in state})
        raise CheckpointError(f"{path} has no '{prefix}*' weights; its keys start with: {', '.join(prefixes[:8])}")
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{prefix}{k}: checkpoint {tuple(sd[k].shape)} vs recipe {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:6]) + (" ..." if len(shapes) > 6 else ""))
        if missing:
            parts.append("missing " + ", ".join(prefix + k for k in missing[:6]) + (" ..." if len(missing) > 6 else ""))
        if unexpected:
            parts.append("unexpected " + ", ".join(prefix + k for k in unexpected[:6])
                         + (" ..." if len(unexpected) > 6 else ""))
        raise CheckpointError(f"checkpoint {path} does not fit {target}: " + " | ".join(parts))
    module.load_state_dict(sd, strict=True)


def checkpoint_inference(blob: Mapping[str, Any]) -> dict[str, Any] | None:
    """The inference settings a checkpoint carries (``blob[INFERENCE_KEY]``), or None for one written before
    checkpoints carried them (or by another program)."""
    rec = blob.get(INFERENCE_KEY)
    if rec is None:
        return None
    if not isinstance(rec, Mapping):
        raise CheckpointError(f"the checkpoint's {INFERENCE_KEY!r} entry must be a mapping, got {type(rec).__name__}")
    return {k: rec.get(k) for k in INFERENCE_FIELDS}


# -- a backbone written by ``aurora convert`` ------------------------------------------------------------------
def key_report(sd_keys: list[str], own: Mapping[str, Any], given: Mapping[str, Any] | None = None) -> str:
    """Missing, unexpected and wrong-shape keys of a state dict against a model's own, one phrase each."""
    missing = sorted(set(own) - set(sd_keys))
    unexpected = sorted(set(sd_keys) - set(own))
    wrong = []
    if given is not None:
        wrong = [f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(given))
                 if tuple(given[k].shape) != tuple(own[k].shape)]
    return "; ".join(f"{what}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                     for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                     if keys)


def load_converted(path: str | Path, **overrides: Any):
    """Build the backbone a conversion wrote: ``RNN.build`` on the ``.json`` beside ``path`` (``overrides``, e.g.
    ``backend`` or ``chunk_size``, replace its entries), then load ``path`` strictly; a file that does not fit
    raises ``ValueError`` naming the missing / unexpected / wrong-shape keys."""
    from safetensors.torch import load_file

    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"no converted checkpoint at {path}")
    if not side.is_file():
        raise FileNotFoundError(f"{side} (the constructor arguments written beside {path.name}) is missing")
    spec = json.loads(side.read_text())
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{side} is not a backbone spec (a mapping with 'name'); got {str(spec)[:200]}")
    cls = RNN.get(spec["name"])
    kwargs = {k: v for k, v in spec.items() if k != "name"} | overrides
    model = cls(**kwargs)
    sd = load_file(str(path))
    own = model.state_dict()
    report = key_report(list(sd), own, sd)
    if report:
        raise ValueError(f"{path} does not fit the {spec['name']} that {side.name} describes: {report}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
    return model
