"""Reading the Lightning checkpoints ``aurora fit`` writes: the whole model, or one part of it, with every missing,
unexpected or mis-shaped key named in the error.

The checkpoint is read with ``torch.load(weights_only=True)``: the module's hyperparameters are plain values
(``save_hyperparameters`` of registry specs), so no pickled object is ever executed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

MODEL_PREFIX = "model."  # AuroraModule keeps the AuroraModel as ``self.model``


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


def load_model(ckpt: str | os.PathLike):
    """The :class:`~aurora.model.AuroraModel` of a checkpoint written by ``aurora fit``, built from the module's
    saved hyperparameters (the registry specs) and loaded with its weights; returns ``(model.eval(), hparams)``."""
    from aurora.model import AuroraModel

    blob = read_checkpoint(ckpt)
    blob["__path__"] = str(ckpt)
    hp = blob.get("hyper_parameters")
    if not isinstance(hp, Mapping) or "vision" not in hp or "rnn" not in hp:
        raise CheckpointError(f"{ckpt} has no AuroraModule hyperparameters (vision, rnn): not written by `aurora fit`?")
    try:
        model = AuroraModel.from_specs(vision=hp["vision"], merge=hp.get("merge"),
                                       projector=hp.get("projector", "mlp"), rnn=hp["rnn"])
    except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise CheckpointError(f"cannot build the model of {ckpt} from its hyperparameters: {msg}") from e
    if hp.get("lora"):  # trained with LoRA adapters: the same adapter modules first, then every weight
        from aurora.lit import apply_lora

        apply_lora(model, dict(hp["lora"]))
    load_weights(model, blob, MODEL_PREFIX, "the model its hyperparameters describe")
    return model.eval(), dict(hp)
