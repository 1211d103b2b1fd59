"""LoRA adapters on the language model's linear layers (peft).

Adapters are part of a model's architecture, not only of its training: a checkpoint trained with ``lora`` holds
``lora_*`` weights, and rebuilding it for inference (:func:`aurora.model.load_model`) must inject the same
adapter modules first. So this lives in the core, and the training wing only chooses what trains.
"""
from __future__ import annotations

from typing import Any

from torch import nn

LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "bias")


def apply_lora(model: nn.Module, spec: dict[str, Any]) -> None:
    """Inject LoRA adapters (peft) into the language model's linear layers named by ``target_modules``; afterwards
    only the adapters of the language model train (the other parts keep their own ``freeze`` setting)."""
    unknown = sorted(set(spec) - set(LORA_KEYS))
    if unknown:
        raise ValueError(f"unknown lora keys {unknown}; known: {', '.join(LORA_KEYS)}")
    if "target_modules" not in spec:
        raise ValueError("lora needs target_modules: names of the language model's linear layers "
                         "(suffixes like att.key, or one regex)")
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:  # pragma: no cover - peft is in the lora extra
        raise ImportError("lora needs peft: pip install 'aurora[lora]'") from e
    targets = spec["target_modules"]
    linear = [n for n, m in model.rnn.named_modules() if isinstance(m, nn.Linear)]
    if isinstance(targets, str):
        import re

        matched = [n for n in linear if re.fullmatch(targets, n)]
    else:
        targets = list(targets)
        matched = [n for n in linear if any(n == t or n.endswith("." + t) for t in targets)]
    if not matched:
        shown = sorted({n.split(".", 2)[-1] if n.startswith(("blocks.", "layers.")) else n for n in linear})
        raise ValueError(f"lora target_modules {targets!r} match no linear layer of the language model; its linear "
                         f"layers are named like: {', '.join(shown[:20])}")
    config = LoraConfig(r=int(spec.get("r", 8)), lora_alpha=int(spec.get("alpha", 16)),
                        lora_dropout=float(spec.get("dropout", 0.0)), target_modules=targets,
                        bias=spec.get("bias", "none"))
    model.rnn.requires_grad_(False)
    inject_adapter_in_model(config, model.rnn)
    for name, p in model.rnn.named_parameters():
        p.requires_grad_("lora_" in name)
