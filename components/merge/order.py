"""Token orderings: in which order the language model reads the merged tokens.

Each ordering maps the sizes of a row of tokens, (R, n), to a per-row permutation (R, n) that is applied with
``gather``. All are stable and keep a protected first token in front. The paper's is ``size_ascending``:
never-merged tokens first, the largest merged tokens last, nearest the text.

Ties between equal sizes keep the tokens' current order (the merge's own order, ``tie_break: merge_order``), or,
when the merge passes ``position`` (R, n), the first original patch index of every token
(``tie_break: position``), are broken by that: among equal sizes, the token whose patches start earliest in
the frame comes first (descending sorts too: the tie-break is always by ascending position).

Scope. A row is usually one frame (the merge sorts inside the encoder's layers, frame by frame). A row can also
span several frames (after a ``temporal`` merge, or when the sort runs ``once`` over a whole video); the caller
then passes ``frames`` (R, n), each token's frame index. The per-frame orderings (``original``,
``size_ascending``, ``size_descending``, ``random``, ``frame_then_size``) then sort within each frame and keep the
frames in time order (frame index first, the ordering's key second); protection applies to the first token of
every frame. ``size_global`` is the one video-scope ordering: it sorts the whole row by size and DISCARDS time
order (a large background token of the last frame can come before a small token of the first); only the row's
first token is protected.
"""
from __future__ import annotations

import torch
from torch import Tensor

from aurora.registry import ORDER

FRAME, VIDEO = "frame", "video"


def scope(order) -> str:
    """``frame`` (sorts within each frame) or ``video`` (sorts across the frames of a row) for an ordering."""
    return getattr(order, "scope", FRAME)


def _protected(key: Tensor, protect_first: bool, frames: Tensor | None) -> Tensor:
    """(R, n) bool: the tokens kept in front: the row's first, and with ``frames`` the first of every frame."""
    mask = torch.zeros(key.shape, dtype=torch.bool, device=key.device)
    if protect_first:
        mask[:, 0] = True
        if frames is not None:
            mask[:, 1:] = frames[:, 1:] != frames[:, :-1]
    return mask


def _check(name: str, t: Tensor | None, shape: torch.Size) -> None:
    if t is not None and t.shape != shape:
        raise ValueError(f"{name} must have the sizes' shape {tuple(shape)}, got {tuple(t.shape)}")


def _sort(key: Tensor, protect_first: bool, position: Tensor | None, frames: Tensor | None = None,
          by_frame: bool = True) -> Tensor:
    """Stable per-row argsort of ``key``; ties broken by ascending ``position`` when given, else kept in place;
    with ``frames`` and ``by_frame``, the frame index is the primary key (sort within each frame)."""
    _check("position", position, key.shape)
    _check("frames", frames, key.shape)
    frames = None if frames is None else frames.to(key.device)
    key = key.masked_fill(_protected(key, protect_first, frames if by_frame else None), float("-inf"))
    # least significant key first, each sort stable: position, then the ordering's key, then the frame
    perm = torch.arange(key.shape[1], device=key.device).expand_as(key)
    if position is not None:
        perm = torch.sort(position.to(key.device), dim=1, stable=True).indices
    perm = perm.gather(1, torch.sort(key.gather(1, perm), dim=1, stable=True).indices)
    if frames is not None and by_frame:
        perm = perm.gather(1, torch.sort(frames.gather(1, perm), dim=1, stable=True).indices)
    return perm


@ORDER.register("original")
def original(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None,
             position: Tensor | None = None, frames: Tensor | None = None) -> Tensor:
    """ToMe's own order, unsorted (the paper's "unsorted" ablation); ``position`` is not used; with ``frames``
    the tokens are only grouped by frame (stable)."""
    return _sort(torch.zeros_like(sizes, dtype=torch.float64), False, None, frames)


@ORDER.register("size_ascending")
def size_ascending(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None,
                   position: Tensor | None = None, frames: Tensor | None = None) -> Tensor:
    """Each frame's tokens from the smallest (fewest patches) to the largest: the paper's sorted merge."""
    return _sort(sizes.to(torch.float64), protect_first, position, frames)


@ORDER.register("size_descending")
def size_descending(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None,
                    position: Tensor | None = None, frames: Tensor | None = None) -> Tensor:
    """Each frame's tokens from the largest to the smallest (the reverse of the paper's order, an ablation)."""
    return _sort(-sizes.to(torch.float64), protect_first, position, frames)


@ORDER.register("frame_then_size")
def frame_then_size(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None,
                    position: Tensor | None = None, frames: Tensor | None = None) -> Tensor:
    """Frames in time order, each frame's tokens by size ascending: the paper's order read over a video (equals
    ``size_ascending`` per frame); the natural order after a ``temporal`` merge, whose tokens may span frames
    (each then counts as a token of its earliest frame)."""
    return size_ascending(sizes, protect_first, generator, position, frames)


@ORDER.register("size_global")
def size_global(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None,
                position: Tensor | None = None, frames: Tensor | None = None) -> Tensor:
    """Size ascending across the whole row (a whole video once the merge groups its frames; needs
    ``sort_at: once``). Discards time order: only the row's first token stays in front; ties keep the time
    order (or ``position``)."""
    return _sort(sizes.to(torch.float64), protect_first, position, frames, by_frame=False)


size_global.scope = VIDEO


@ORDER.register("random")
def random(sizes: Tensor, protect_first: bool = True, generator: torch.Generator | None = None,
           position: Tensor | None = None, frames: Tensor | None = None) -> Tensor:
    """A random permutation per frame, drawn from ``generator`` (seeded by the merge for reproducibility);
    ``position`` is not used."""
    f, n = sizes.shape
    key = torch.rand(f, n, generator=generator).to(sizes.device)
    return _sort(key, protect_first, None, frames)
