"""The optimiser's rules: which weights decay, and the learning-rate schedules (linear warm-up, then cosine,
linear or constant). Shared by the video stage (:class:`aurora.train.module.AuroraModule`) and the vision stage."""
from __future__ import annotations

import math
from typing import Callable

import torch

SCHEDULES = ("cosine", "linear", "constant")


def decays(name: str, p: torch.nn.Parameter) -> bool:
    """Weight decay applies to the matrix weights of linear maps only; never to norms, biases, embeddings (position
    embeddings included) or RNN mixing vectors."""
    return p.ndim >= 2 and name.endswith("weight") and "emb" not in name


def lr_schedule(kind: str, total_steps: int | None, warmup_ratio: float, min_ratio: float,
                warmup_steps: int | None = None) -> Callable[[int], float]:
    """Multiplier for step s: linear warm-up (``warmup_steps``, else ``warmup_ratio`` of the total), then
    ``cosine`` or ``linear`` decay to ``min_ratio``, or ``constant``; constant after warm-up when the total is
    unknown (e.g. an endless stream without ``max_steps``)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}")
    warmup = max(1, warmup_steps if warmup_steps is not None else int(round((total_steps or 0) * warmup_ratio)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if total_steps is None or kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
        return min_ratio + (1 - min_ratio) * shape

    return factor
