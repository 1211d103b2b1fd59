"""Token orderings: in which order the language model reads a frame's merged tokens.

Each ordering maps the sizes of a frame's tokens, (F, n), to a per-frame permutation (F, n) that is applied with
``gather``. All are stable (ties keep their current order) and keep a protected first token in front.
The paper's is ``size_ascending``: never-merged tokens first, the largest merged tokens last, nearest the text.
"""
from __future__ import annotations

import torch
from torch import Tensor

from aurora.registry import ORDER


def _protected_key(key: Tensor, protect_first: bool) -> Tensor:
    if protect_first:
        key = key.clone()
        key[:, 0] = float("-inf")
    return key


@ORDER.register("original")
def original(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """ToMe's own order, unsorted (the paper's "unsorted" ablation)."""
    return torch.arange(sizes.shape[1], device=sizes.device).expand_as(sizes)


@ORDER.register("size_ascending")
def size_ascending(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None) -> Tensor:
    key = _protected_key(sizes.to(torch.float64), protect_first)
    return torch.sort(key, dim=1, stable=True).indices


@ORDER.register("size_descending")
def size_descending(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None) -> Tensor:
    key = _protected_key(-sizes.to(torch.float64), protect_first)
    return torch.sort(key, dim=1, stable=True).indices


@ORDER.register("random")
def random(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation per frame, drawn from ``generator`` (seeded by the merge for reproducibility)."""
    f, n = sizes.shape
    key = torch.rand(f, n, generator=generator).to(sizes.device)
    return torch.sort(_protected_key(key, protect_first), dim=1, stable=True).indices
