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
    x, sizes, source = merge.finalize(x, keys.mean(heads), sizes, source)  # once, after the last layer

``finalize`` gets the encoder's output tokens and the last layer's head-averaged keys (``None`` when the encoder
ran no layer; merges that need a metric then use the tokens themselves). It is the identity except for merges
that work on the encoder's output (``tome_post``, ``pool``) and for ``sort_at: once`` (the ordering applied
there, once, instead of in every layer).

Every frame is merged on its own (frames are rows of the batch), so the token count per frame is the same for
all frames and known in advance: :meth:`tokens_per_frame`. Once the frames of each video are known
(:meth:`aurora.model.AuroraModel.encode_video`), :meth:`TokenMerge.video` runs the merge's video step on the
encoder's :class:`~aurora.types.VisualTokens`: the identity for per-frame merges, the regrouping into one row per
video for a video-scope ordering (``size_global``), the merge across frames for ``temporal``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aurora.registry import MERGE, ORDER
from aurora.components.merge.rows import group_frames, select
from aurora.types import VisualTokens

from .order import VIDEO, scope


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
    if num_layers <= 0:  # no layer runs (feature_layer 0): nothing merges inside the encoder
        return 0
    return int(math.floor((1.0 - keep_ratio) * num_patches / num_layers + 1e-9))


def tokens_after(num_patches: int, schedule: list[int], protect_first: bool = True) -> int:
    """Exact per-frame token count after merging with ``schedule`` (r per layer), with ToMe's clamping."""
    n = num_patches
    for r in schedule:
        n -= max(0, min(r, (n - int(protect_first)) // 2))
    return n


def round_max(n: int, protect_first: bool = True) -> int:
    """The most tokens one round of bipartite matching can remove from ``n``: half the unprotected tokens."""
    return max(0, (n - int(protect_first)) // 2)


def max_removable(n: int, rounds: int, protect_first: bool = True) -> int:
    """The most tokens ``rounds`` rounds can remove from ``n`` (removing the most in every round is optimal:
    the count left after a round grows with the count before it)."""
    start = n
    for _ in range(rounds):
        n -= round_max(n, protect_first)
    return start - n


def keep_count(num_patches: int, keep_ratio: float) -> int:
    """The token count a keep ratio asks for: keep_ratio * N rounded half up (never below 1)."""
    r_for_keep_ratio(1, 1, keep_ratio)  # validates keep_ratio
    return max(1, min(num_patches, int(math.floor(keep_ratio * num_patches + 0.5))))


def allocate(total: int, weights: list[int], num_patches: int, protect_first: bool = True) -> list[int]:
    """Spread ``total`` removed tokens over the layers in proportion to the integer ``weights``, respecting the
    per-round maximum; the sum is exactly ``total`` when any schedule can reach it, else as close as it gets.

    Layer by layer: the layer's share of what is left (rounded up, so any remainder goes to the earlier layers,
    which have more tokens) is clipped from above by the round maximum and from below by the least that still
    lets the remaining layers remove the rest. Equal weights give the balanced schedule (q + 1 in the first
    ``total % L`` layers, q in the others) whenever that one is feasible."""
    out, n, left = [], num_patches, total
    for i, w in enumerate(weights):
        rest = sum(weights[i:])
        want = -(-left * w // rest) if rest > 0 else 0  # ceil, in integers
        hi = min(round_max(n, protect_first), left)
        # least r with r + max_removable(n - r, later) >= left (monotone in r): binary search on [0, hi]
        later = len(weights) - i - 1
        lo_r, hi_r = 0, hi
        while lo_r < hi_r:
            mid = (lo_r + hi_r) // 2
            if mid + max_removable(n - mid, later, protect_first) >= left:
                hi_r = mid
            else:
                lo_r = mid + 1
        r = min(max(want, lo_r), hi)
        out.append(r)
        n, left = n - r, left - r
    return out


def balance(schedule: list[int], num_patches: int, protect_first: bool = True) -> list[int]:
    """Even out a schedule without changing its total: move one token between two layers whose r differ by
    more than one while every round stays within its maximum, until no such move is left (each move lowers the
    sum of squares, so this ends)."""
    r = list(schedule)
    target = num_patches - sum(r)

    def ok(s: list[int]) -> bool:
        n = num_patches
        for v in s:
            if v > round_max(n, protect_first):
                return False
            n -= v
        return n == target

    moved = True
    while moved:
        moved = False
        for hi in sorted(range(len(r)), key=lambda i: -r[i]):
            for lo in sorted(range(len(r)), key=lambda i: r[i]):
                if r[hi] - r[lo] <= 1:
                    break
                r[hi] -= 1
                r[lo] += 1
                if ok(r):
                    moved = True
                    break
                r[hi] += 1
                r[lo] -= 1
            if moved:
                break
    return r


class TokenMerge:
    """Base of the merge strategies: a schedule of r per layer, a merge step inside the layers, a ``finalize``
    step on the encoder's output and a ``video`` step once the frames of each video are known. ``none`` merges
    nothing (``trace_source``: still return the identity source maps)."""

    protect_first: bool = True
    trace_source: bool = False

    def __init__(self, trace_source: bool = False) -> None:
        self.trace_source = trace_source

    def spec(self) -> dict:
        """The merge's settings as plain values (its class and every public scalar attribute): what a feature
        cache keys on."""
        out = {"class": type(self).__name__}
        for k, v in sorted(vars(self).items()):
            if k.startswith("_") or k == "trace_source":
                continue
            if isinstance(v, TokenMerge):
                out[k] = v.spec()
            elif isinstance(v, (str, int, float, bool, type(None))) or (
                    isinstance(v, (list, tuple)) and all(isinstance(e, (int, float, str)) for e in v)):
                out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def schedule(self, num_patches: int, num_layers: int) -> list[int]:
        return [0] * num_layers

    def tokens_per_frame(self, num_patches: int, num_layers: int) -> int:
        return tokens_after(num_patches, self.schedule(num_patches, num_layers), self.protect_first)

    def __call__(self, x: Tensor, metric: Tensor, sizes: Tensor, source: Tensor | None, r: int):
        return x, sizes, source

    def finalize(self, x: Tensor, metric: Tensor | None, sizes: Tensor, source: Tensor | None):
        """Called once on the encoder's output (F, n, C) with the last layer's head-averaged keys."""
        return x, sizes, source

    def video(self, vt: VisualTokens, frames_per_video: int) -> VisualTokens:
        """The step across the frames of a video on the encoder's per-frame output (rows of one video are
        consecutive, ``frames_per_video`` each); the identity for a per-frame merge."""
        return vt


MERGE.register("none")(TokenMerge)


SCHEDULES = ("back", "constant", "exact", "front")
TIE_BREAKS = ("merge_order", "position")
SORT_AT = ("layers", "once")


def first_patch(source: Tensor) -> Tensor:
    """The first original patch index each token holds, (F, n), from source maps (F, n, N)."""
    n = source.shape[-1]
    idx = torch.arange(n, device=source.device).expand_as(source)
    return torch.where(source > 0, idx, n).amin(dim=-1)


@MERGE.register("tome")
class ToMeMerge(TokenMerge):
    """ToMe bipartite merging in every layer, then the paper's reorder of each frame's tokens.

    Args:
        keep_ratio: fraction of the patches to keep (see ``schedule``).
        r: tokens removed per layer, overriding ``keep_ratio`` (an int, or a list with one r per layer).
        schedule: how r is spread over the L layers:
            ``constant`` (the paper's): r = floor((1 - keep_ratio) * N / L) in every layer;
            ``front`` / ``back``: the same total (L * r) linearly decreasing / increasing over the layers;
            ``exact``: per-layer r so the final count is keep_ratio * N rounded half up, exactly; r is as even
            over the layers as the per-round maximum allows (q + 1 then q where that fits).
            ``front``, ``back`` and ``exact`` respect the per-round maximum (half the unprotected tokens) by
            moving the excess to other layers; ``constant`` is clamped per round (ToMe's behaviour).
        order: an ordering name (``size_ascending`` is the paper's), applied where ``sort_at`` says.
        sort_at: ``layers`` (the paper's Algorithm 1): the frame is reordered right after every merge, so the
            next layer's A/B split runs over the sorted order; ``once``: the layers keep ToMe's own order and the
            ordering is applied once to the encoder's output (per frame; for ``size_global``, to the whole video
            in the video step). ``size_global`` needs ``once``.
        tie_break: how the ordering breaks ties of equal size: ``merge_order`` (keep the merge's order) or
            ``position`` (the token's first original patch; turns on ``trace_source``).
        protect_first: never merge away the first token (SigLIP has no class token; the first patch stands in).
        seed: seed of the ``random`` ordering.
        trace_source: also return which original patches every token holds.
    """

    def __init__(
        self,
        keep_ratio: float = 1.0,
        r: int | list[int] | None = None,
        schedule: str = "constant",
        order: str = "size_ascending",
        tie_break: str = "merge_order",
        protect_first: bool = True,
        seed: int = 0,
        trace_source: bool = False,
        sort_at: str = "layers",
    ) -> None:
        r_for_keep_ratio(1, 1, keep_ratio)  # validates keep_ratio
        if sort_at not in SORT_AT:
            raise ValueError(f"unknown sort_at {sort_at!r}; known: {', '.join(SORT_AT)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown r schedule {schedule!r}; known schedules: {', '.join(SCHEDULES)}")
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"unknown tie_break {tie_break!r}; known: {', '.join(TIE_BREAKS)}")
        if isinstance(r, (list, tuple)):
            if schedule != "constant":
                raise ValueError(f"an explicit r list is its own schedule; drop schedule: {schedule}")
            if any(int(v) != v or v < 0 for v in r):
                raise ValueError(f"r list entries must be non-negative integers, got {list(r)}")
            r = [int(v) for v in r]
        elif r is not None:
            if int(r) != r or r < 0:
                raise ValueError(f"r must be a non-negative integer, got {r!r}")
            if schedule == "exact":
                raise ValueError("schedule 'exact' takes its count from keep_ratio; drop r")
            r = int(r)
        self.keep_ratio, self.r, self.schedule_name = keep_ratio, r, schedule
        self.order_name, self.tie_break, self.sort_at = order, tie_break, sort_at
        self.order = ORDER.get(order)
        if scope(self.order) == VIDEO and sort_at != "once":
            raise ValueError(f"order {order!r} sorts across the frames of a video, which the layers (one frame "
                             "each) never see: set sort_at: once")
        self.protect_first = protect_first
        self.trace_source = trace_source or tie_break == "position"
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._schedules: dict[tuple[int, int], list[int]] = {}

    def schedule(self, num_patches: int, num_layers: int) -> list[int]:
        if isinstance(self.r, list):
            if len(self.r) != num_layers:
                raise ValueError(f"r schedule has {len(self.r)} entries for {num_layers} merging layers")
            return list(self.r)
        key = (num_patches, num_layers)
        if key not in self._schedules:
            self._schedules[key] = self._make_schedule(num_patches, num_layers)
        return list(self._schedules[key])

    def _make_schedule(self, n: int, layers: int) -> list[int]:
        r = self.r if self.r is not None else r_for_keep_ratio(n, layers, self.keep_ratio)
        if self.schedule_name == "constant":
            return [r] * layers
        if self.schedule_name == "front":
            return allocate(r * layers, [layers - i for i in range(layers)], n, self.protect_first)
        if self.schedule_name == "back":
            return allocate(r * layers, [i + 1 for i in range(layers)], n, self.protect_first)
        target = keep_count(n, self.keep_ratio)  # exact
        out = allocate(n - target, [1] * layers, n, self.protect_first)
        if tokens_after(n, out, self.protect_first) == target:
            out = balance(out, n, self.protect_first)  # where the round maximum pushed r around: even it out
        else:
            least = n - max_removable(n, layers, self.protect_first)
            raise ValueError(
                f"schedule 'exact' cannot reach {target} tokens (keep_ratio {self.keep_ratio} of {n}) in {layers} "
                f"layers: at most half the unprotected tokens go per layer, so {least} is the fewest; "
                "raise keep_ratio or merge in more layers")
        return out

    def _order(self, sizes: Tensor, source: Tensor | None, frames: Tensor | None = None) -> Tensor:
        if self.tie_break == "position":
            if source is None:
                raise ValueError("tie_break 'position' needs source maps; the encoder must pass source "
                                 "(it does when merge.trace_source is true)")
            return self.order(sizes, self.protect_first, self.generator, position=first_patch(source), frames=frames)
        return self.order(sizes, self.protect_first, self.generator, frames=frames)

    def _reorder(self, x: Tensor, sizes: Tensor, source: Tensor | None, metric: Tensor | None = None):
        perm = self._order(sizes, source)
        x = x.gather(1, perm[..., None].expand_as(x))
        sizes = sizes.gather(1, perm)
        if source is not None:
            source = source.gather(1, perm[..., None].expand_as(source))
        if metric is not None:
            metric = metric.gather(1, perm[..., None].expand_as(metric))
        return x, sizes, source, metric

    def finalize(self, x: Tensor, metric: Tensor | None, sizes: Tensor, source: Tensor | None):
        """With ``sort_at: once`` and a per-frame ordering: the ordering, applied once to every output frame."""
        if self.sort_at == "once" and scope(self.order) != VIDEO:
            x, sizes, source, _ = self._reorder(x, sizes, source)
        return x, sizes, source

    def video(self, vt: VisualTokens, frames_per_video: int) -> VisualTokens:
        """A video-scope ordering (``size_global``): every video's frames become one row, sorted as a whole."""
        if scope(self.order) != VIDEO:
            return vt
        vt = group_frames(vt, frames_per_video)
        return select(vt, self._order(vt.sizes, vt.source, vt.frames))

    def _merge_round(self, x: Tensor, metric: Tensor, sizes: Tensor, source: Tensor | None, r: int,
                     carry_metric: bool = False):
        """One bipartite merge of ``r`` tokens and the reorder; ``carry_metric`` also merges the metric
        (size-weighted) for a further round on the same keys."""
        m = bipartite_soft_matching(metric, r, self.protect_first)
        new_metric = merge_wavg(metric, sizes, m)[0] if carry_metric else None
        x, sizes, source = merge_wavg(x, sizes, m, source)
        if self.sort_at == "layers":
            x, sizes, source, new_metric = self._reorder(x, sizes, source, new_metric)
        return x, sizes, source, new_metric

    def __call__(self, x: Tensor, metric: Tensor, sizes: Tensor, source: Tensor | None, r: int):
        if r <= 0:
            return x, sizes, source
        return self._merge_round(x, metric, sizes, source, r)[:3]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(keep_ratio={self.keep_ratio}, r={self.r}, schedule={self.schedule_name!r}, "
                f"order={self.order_name!r}, sort_at={self.sort_at!r}, tie_break={self.tie_break!r})")


@MERGE.register("tome_post")
class ToMePostMerge(ToMeMerge):
    """ToMe on the encoder's OUTPUT: no merging inside the layers; ``finalize`` runs bipartite rounds (each
    removing as many as it can, at most half the unprotected tokens) on the last layer's keys until exactly
    keep_ratio * N (rounded half up; at least 1 + protect_first) tokens are left. Between rounds the keys are
    merged along with the tokens (size-weighted) and the ordering is applied after every round (``sort_at:
    layers``) or once after the last (``once``).

    Args: ``keep_ratio``, ``order``, ``sort_at``, ``tie_break``, ``protect_first``, ``seed``, ``trace_source`` as
    ``tome``.
    """

    def __init__(
        self,
        keep_ratio: float = 1.0,
        order: str = "size_ascending",
        tie_break: str = "merge_order",
        protect_first: bool = True,
        seed: int = 0,
        trace_source: bool = False,
        sort_at: str = "layers",
    ) -> None:
        super().__init__(keep_ratio=keep_ratio, order=order, tie_break=tie_break, protect_first=protect_first,
                         seed=seed, trace_source=trace_source, sort_at=sort_at)

    def schedule(self, num_patches: int, num_layers: int) -> list[int]:
        return [0] * num_layers

    def rounds(self, n: int) -> list[int]:
        """The r of every post-encoder round for ``n`` output tokens."""
        target = max(keep_count(n, self.keep_ratio), min(n, 1 + int(self.protect_first)))
        out = []
        while n > target:
            r = min(n - target, round_max(n, self.protect_first))
            if r <= 0:
                break
            out.append(r)
            n -= r
        return out

    def tokens_per_frame(self, num_patches: int, num_layers: int) -> int:
        n = super().tokens_per_frame(num_patches, num_layers)
        return n - sum(self.rounds(n))

    def finalize(self, x: Tensor, metric: Tensor | None, sizes: Tensor, source: Tensor | None):
        metric = x if metric is None else metric
        if metric.shape[:2] != x.shape[:2]:
            raise ValueError(f"finalize metric {tuple(metric.shape)} does not match the tokens {tuple(x.shape)}")
        for r in self.rounds(x.shape[1]):
            x, sizes, source, metric = self._merge_round(x, metric, sizes, source, r, carry_metric=True)
        return super().finalize(x, metric, sizes, source)
