"""Token orderings: in which order the language model reads a frame's merged tokens.

Each ordering maps the sizes of a frame's tokens, (F, n), to a per-frame permutation (F, n) that is applied with
``gather``. All are stable and keep a protected first token in front. The paper's is ``size_ascending``:
never-merged tokens first, the largest merged tokens last, nearest the text.

Ties between equal sizes keep the tokens' current order (the merge's own order, ``tie_break: merge_order``), or,
when the merge passes ``position`` (F, n), the first original patch index of every token
(``tie_break: position``), are broken by that: among equal sizes, the token whose patches start earliest in
the frame comes first (descending sorts too: the tie-break is always by ascending position).

Frames are ordered one after the other by the model (a frame's tokens are never mixed with another frame's),
so ``size_ascending`` read over a clip is already "frame, then size".
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


def _sort(key: Tensor, protect_first: bool, position: Tensor | None) -> Tensor:
    """Stable per-row argsort of ``key``; ties broken by ascending ``position`` when given, else kept in place."""
    key = _protected_key(key, protect_first)
    if position is None:
        return torch.sort(key, dim=1, stable=True).indices
    if position.shape != key.shape:
        raise ValueError(f"position must have the sizes' shape {tuple(key.shape)}, got {tuple(position.shape)}")
    by_position = torch.sort(position.to(key.device), dim=1, stable=True).indices
    inner = torch.sort(key.gather(1, by_position), dim=1, stable=True).indices
    return by_position.gather(1, inner)


@ORDER.register("original")
def original(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None,
             position: Tensor | None = None) -> Tensor:
    """ToMe's own order, unsorted (the paper's "unsorted" ablation); ``position`` is not used."""
    return torch.arange(sizes.shape[1], device=sizes.device).expand_as(sizes)


@ORDER.register("size_ascending")
def size_ascending(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None,
                   position: Tensor | None = None) -> Tensor:
    return _sort(sizes.to(torch.float64), protect_first, position)


@ORDER.register("size_descending")
def size_descending(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None,
                    position: Tensor | None = None) -> Tensor:
    return _sort(-sizes.to(torch.float64), protect_first, position)


@ORDER.register("random")
def random(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None,
           position: Tensor | None = None) -> Tensor:
    """A random permutation per frame, drawn from ``generator`` (seeded by the merge for reproducibility);
    ``position`` is not used."""
    f, n = sizes.shape
    key = torch.rand(f, n, generator=generator).to(sizes.device)
    return torch.sort(_protected_key(key, protect_first), dim=1, stable=True).indices
