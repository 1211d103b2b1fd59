"""Token merging inside the vision encoder (ToMe, Bolya et al. 2023) with size tracking, plus the paper's
sorted merge (AuroraLong, Algorithm 1).

A vision encoder asks its merge for the number of tokens ``r`` to remove in each of its layers
(:meth:`schedule`) and, in each such layer between attention and MLP, calls the merge with the frame tokens,
the attention keys averaged over heads as the similarity metric, and the running sizes (and source maps):

    schedule = merge.schedule(num_patches, num_layers)           # r for every layer
    for layer, r in zip(layers, schedule):
        ...attention (with + log(sizes) on the logits: proportional attention)...
        x, sizes, source = merge(x, keys.mean(heads), sizes, source, r)
        ...MLP...

Every frame is merged on its own (frames are rows of the batch), so the token count per frame is the same for
all frames and known in advance: :meth:`tokens_per_frame`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aurora.registry import MERGE, ORDER


@dataclass
class Match:
    """One round of bipartite soft matching, per frame. Set A = tokens[0::2], B = tokens[1::2]."""

    kept: Tensor  # (F, |A| - r) indices into A of the A tokens that stay
    merged: Tensor  # (F, r) indices into A of the A tokens merged away
    into: Tensor  # (F, r) index into B of each merged token's partner


def bipartite_soft_matching(metric: Tensor, r: int, protect_first: bool = True) -> Match:
    """Pair every A token with its most similar B token (cosine similarity of ``metric`` (F, N, C)) and choose
    the ``r`` most similar pairs to merge. The first token (A[0]) is never merged away when ``protect_first``.
    ``r`` is clamped to what one round can remove (at most half the unprotected tokens)."""
    n = metric.shape[1]
    r = max(0, min(r, (n - int(protect_first)) // 2))
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(1, 2)  # (F, |A|, |B|)
    if protect_first:
        scores[:, 0, :] = float("-inf")
    best, partner = scores.max(dim=-1)  # (F, |A|)
    order = best.argsort(dim=-1, descending=True, stable=True)
    kept = order[:, r:]
    if protect_first:
        kept = kept.sort(dim=-1).values  # ToMe keeps the protected token first this way
    merged = order[:, :r]
    return Match(kept=kept, merged=merged, into=partner.gather(1, merged))


def apply_match(x: Tensor, m: Match, mode: str = "sum") -> Tensor:
    """Merge the rows of ``x`` (F, N, C) by ``m``: kept A tokens first, then all B tokens (ToMe's order), each
    B token combined with the A tokens merged into it (``mode``: "sum" or "mean")."""
    a, b = x[:, ::2], x[:, 1::2]
    c = x.shape[-1]
    kept = a.gather(1, m.kept[..., None].expand(-1, -1, c))
    moved = a.gather(1, m.merged[..., None].expand(-1, -1, c))
    b = b.scatter_reduce(1, m.into[..., None].expand(-1, -1, c), moved, reduce=mode, include_self=True)
    return torch.cat([kept, b], dim=1)


def merge_wavg(x: Tensor, sizes: Tensor, m: Match, source: Tensor | None = None):
    """Size-weighted average of merged tokens; sizes and source maps add up. Sizes and the average are kept in
    at least fp32 (sizes up to hundreds are not exact in bf16)."""
    dt = torch.promote_types(x.dtype, torch.float32)
    wide = sizes.to(dt)
    merged_sizes = apply_match(wide[..., None], m, "sum")
    x = (apply_match(x.to(dt) * wide[..., None], m, "sum") / merged_sizes).to(x.dtype)
    if source is not None:
        source = apply_match(source, m, "sum")
    return x, merged_sizes[..., 0], source


def r_for_keep_ratio(num_patches: int, num_layers: int, keep_ratio: float) -> int:
    """The paper's constant r per layer: floor((1 - keep_ratio) * N / L)."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return int(math.floor((1.0 - keep_ratio) * num_patches / num_layers + 1e-9))


def tokens_after(num_patches: int, schedule: list[int], protect_first: bool = True) -> int:
    """Exact per-frame token count after merging with ``schedule`` (r per layer), with ToMe's clamping."""
    n = num_patches
    for r in schedule:
        n -= max(0, min(r, (n - int(protect_first)) // 2))
    return n


class TokenMerge:
    """Base of the merge strategies: a schedule of r per layer and a merge step. ``none`` merges nothing."""

    protect_first: bool = True

    def schedule(self, num_patches: int, num_layers: int) -> list[int]:
        return [0] * num_layers

    def tokens_per_frame(self, num_patches: int, num_layers: int) -> int:
        return tokens_after(num_patches, self.schedule(num_patches, num_layers), self.protect_first)

    def __call__(self, x: Tensor, metric: Tensor, sizes: Tensor, source: Tensor | None, r: int):
        return x, sizes, source


MERGE.register("none")(TokenMerge)


@MERGE.register("tome")
class ToMeMerge(TokenMerge):
    """ToMe bipartite merging in every layer, then the paper's reorder of each frame's tokens.

    Args:
        keep_ratio: fraction of the patches to keep; r = floor((1 - keep_ratio) * N / L) in each of the L layers.
        r: tokens removed per layer, overriding ``keep_ratio`` (an int, or a list with one r per layer).
        order: an ordering name (``size_ascending`` is the paper's), applied right after every merge.
        protect_first: never merge away the first token (SigLIP has no class token; the first patch stands in).
        seed: seed of the ``random`` ordering.
        trace_source: also return which original patches every token holds.
    """

    def __init__(
        self,
        keep_ratio: float = 1.0,
        r: int | list[int] | None = None,
        order: str = "size_ascending",
        protect_first: bool = True,
        seed: int = 0,
        trace_source: bool = False,
    ) -> None:
        self.keep_ratio, self.r = keep_ratio, r
        self.order_name = order
        self.order = ORDER.get(order)
        self.protect_first, self.trace_source = protect_first, trace_source
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        r_for_keep_ratio(1, 1, keep_ratio)  # validates keep_ratio

    def schedule(self, num_patches: int, num_layers: int) -> list[int]:
        if isinstance(self.r, list):
            if len(self.r) != num_layers:
                raise ValueError(f"r schedule has {len(self.r)} entries for {num_layers} merging layers")
            return list(self.r)
        r = self.r if self.r is not None else r_for_keep_ratio(num_patches, num_layers, self.keep_ratio)
        return [r] * num_layers

    def __call__(self, x: Tensor, metric: Tensor, sizes: Tensor, source: Tensor | None, r: int):
        if r <= 0:
            return x, sizes, source
        m = bipartite_soft_matching(metric, r, self.protect_first)
        x, sizes, source = merge_wavg(x, sizes, m, source)
        perm = self.order(sizes, self.protect_first, self.generator)
        x = x.gather(1, perm[..., None].expand_as(x))
        sizes = sizes.gather(1, perm)
        if source is not None:
            source = source.gather(1, perm[..., None].expand_as(source))
        return x, sizes, source

    def __repr__(self) -> str:
        return f"ToMeMerge(keep_ratio={self.keep_ratio}, r={self.r}, order={self.order_name!r})"
