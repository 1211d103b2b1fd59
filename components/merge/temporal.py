"""Merging across neighbouring frames (static background, a still camera), after the per-frame merge.

``temporal`` wraps a per-frame merge (``inner``: ``tome`` by default; any MERGE spec) and adds a video step
(:meth:`TemporalMerge.video`). The encoder runs the inner merge exactly as without ``temporal``; then, per window
of ``window`` consecutive frames of one video (the whole video by default):

1. every token of frame t > 0 finds its most similar token in frame t - 1 (cosine similarity of the encoder's
   output tokens: what the projector will read);
2. of those links, the ``r`` most similar are kept, r = (tokens in) - (budget); a link merges the token into
   its partner of the previous frame. Each token has at most one link, pointing back in time, so the links form
   a forest and every kept link removes exactly one token: every window ends with exactly ``budget`` tokens,
   and the batch stays rectangular;
3. each tree of linked tokens becomes one token: the size-weighted mean of its members, its size the sum
   (patches across frames: a window's sizes sum to W x the per-frame patch count), its frame the EARLIEST frame
   it covers (its root), its source map the union of its members' (over the window's W x N frame-major patches);
4. the window's tokens are put in ``order`` (``frame_then_size`` by default: frames in time order, each
   frame's tokens by size ascending; a token that spans frames counts as a token of its earliest frame).

Layout: one row of :class:`~aurora.types.VisualTokens` per window (``row_frames = window``), ``budget`` tokens
per row. The budget is ``keep_ratio`` of the window's incoming tokens (rounded half up), never fewer than one
frame's tokens plus the protected first token of every other frame (with ``protect_first``, the first token of
every frame, e.g. CLIP's class token, is never merged across frames). The language model then reads a variable
number of tokens per frame (more for frames with new content), but a fixed number per window and video.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from aurora.registry import MERGE, ORDER
from aurora.components.merge.rows import group_frames, select
from aurora.types import VisualTokens

from .order import VIDEO, scope
from .tome import TokenMerge, first_patch, keep_count


@MERGE.register("temporal")
class TemporalMerge(TokenMerge):
    """The inner per-frame merge inside the encoder, then merging across neighbouring frames.

    Args:
        keep_ratio: fraction of a window's tokens (after the per-frame merge) that stay.
        window: frames per window (a divisor of the frames per video); None: the whole video is one window.
        inner: the per-frame merge spec (name + arguments), e.g. ``{name: tome, keep_ratio: 0.25}``.
        order: ordering of each window's tokens (``frame_then_size``; ``size_global`` sorts the whole window).
        tie_break: ``merge_order`` or ``position`` (first source patch, frame-major: turns on ``trace_source``).
        trace_source: return source maps (inner's and across frames).
    """

    def __init__(self, keep_ratio: float = 0.5, window: int | None = None,
                 inner: Mapping[str, Any] | str | None = "tome", order: str = "frame_then_size",
                 tie_break: str = "merge_order", trace_source: bool = False) -> None:
        keep_count(1, keep_ratio)  # validates keep_ratio
        if window is not None and (int(window) != window or window < 1):
            raise ValueError(f"temporal window must be a positive number of frames, got {window!r}")
        if tie_break not in ("merge_order", "position"):
            raise ValueError(f"unknown tie_break {tie_break!r}; known: merge_order, position")
        self.inner = MERGE.build(inner or "none")
        if isinstance(self.inner, TemporalMerge):
            raise ValueError("temporal inside temporal: give a per-frame merge as inner")
        inner_order = getattr(self.inner, "order", None)
        if inner_order is not None and scope(inner_order) == VIDEO:
            raise ValueError(f"the inner merge sorts across frames ({self.inner.order_name!r}); temporal needs "
                             "per-frame rows: use it as temporal's order instead")
        self.keep_ratio, self.window, self.order_name, self.tie_break = keep_ratio, window, order, tie_break
        self.order = ORDER.get(order)
        self.trace_source = trace_source or tie_break == "position"

    # the encoder talks to the inner merge
    @property
    def trace_source(self) -> bool:
        return self.inner.trace_source

    @trace_source.setter
    def trace_source(self, value: bool) -> None:
        self.inner.trace_source = bool(value) or getattr(self, "tie_break", None) == "position"

    @property
    def protect_first(self) -> bool:  # type: ignore[override]
        return self.inner.protect_first

    def schedule(self, num_patches: int, num_layers: int) -> list[int]:
        return self.inner.schedule(num_patches, num_layers)

    def tokens_per_frame(self, num_patches: int, num_layers: int) -> int:
        """Tokens per frame out of the ENCODER (the inner merge's); see :meth:`tokens_per_window`."""
        return self.inner.tokens_per_frame(num_patches, num_layers)

    def __call__(self, x, metric, sizes, source, r):
        return self.inner(x, metric, sizes, source, r)

    def finalize(self, x, metric, sizes, source):
        return self.inner.finalize(x, metric, sizes, source)

    # the step across frames
    def window_for(self, frames_per_video: int) -> int:
        w = frames_per_video if self.window is None else self.window
        if frames_per_video % w:
            raise ValueError(f"temporal window {w} does not divide the {frames_per_video} frames of a video; "
                             "rows must hold whole windows to keep a fixed token budget")
        return w

    def tokens_per_window(self, tokens_per_frame: int, window: int) -> int:
        """The fixed budget of a window of ``window`` frames of ``tokens_per_frame`` tokens each."""
        total = tokens_per_frame * window
        least = tokens_per_frame + (window - 1) * int(self.protect_first)
        return min(total, max(least, keep_count(total, self.keep_ratio)))

    def tokens_per_video(self, tokens_per_frame: int, frames_per_video: int) -> int:
        w = self.window_for(frames_per_video)
        return frames_per_video // w * self.tokens_per_window(tokens_per_frame, w)

    def video(self, vt: VisualTokens, frames_per_video: int) -> VisualTokens:
        n = vt.tokens.shape[1]
        w = self.window_for(frames_per_video)
        g = group_frames(vt, w)
        budget = self.tokens_per_window(n, w)
        if budget < w * n:
            g = self._merge_across(g, n, w, w * n - budget)
        position = None
        if self.tie_break == "position":
            if g.source is None:
                raise ValueError("tie_break 'position' needs source maps (trace_source)")
            position = first_patch(g.source)
        perm = self.order(g.sizes, self.protect_first, None, position=position, frames=g.frames)
        return select(g, perm)

    def _merge_across(self, g: VisualTokens, n: int, w: int, r: int) -> VisualTokens:
        rows, total, c = g.tokens.shape
        dev = g.tokens.device
        dt = torch.promote_types(g.tokens.dtype, torch.float32)
        x = g.tokens.to(dt)
        unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        frames = unit.view(rows, w, n, c)
        sims = frames[:, 1:] @ frames[:, :-1].transpose(-1, -2)  # (rows, w - 1, n, n): frame t+1 vs frame t
        if self.protect_first:  # the first token of a frame neither merges nor receives
            sims[..., 0, :] = float("-inf")
            sims[..., :, 0] = float("-inf")
        best, partner = sims.max(dim=-1)  # (rows, w - 1, n)
        best, partner = best.flatten(1), partner.flatten(1)
        base = torch.arange(w - 1, device=dev).repeat_interleave(n) * n  # first index of the previous frame
        chosen = best.argsort(dim=-1, descending=True, stable=True)[:, :r]  # links (into frames 1..w-1)
        parent = torch.arange(total, device=dev).expand(rows, total).clone()
        parent.scatter_(1, chosen + n, (partner + base).gather(1, chosen))
        for _ in range(max(1, (w - 1).bit_length())):  # pointer jumping: depth < w, so log2(w) rounds
            parent = parent.gather(1, parent)
        root = parent
        is_root = root == torch.arange(total, device=dev)
        slot_of_root = is_root.long().cumsum(1) - 1
        slot = slot_of_root.gather(1, root)  # (rows, total): output position of every incoming token
        budget = total - r
        wide = g.sizes.to(dt)
        sizes = wide.new_zeros(rows, budget).scatter_add_(1, slot, wide)
        summed = x.new_zeros(rows, budget, c).scatter_add_(1, slot[..., None].expand(-1, -1, c), x * wide[..., None])
        tokens = (summed / sizes[..., None]).to(g.tokens.dtype)
        source = None
        if g.source is not None:
            p = g.source.shape[-1]
            source = g.source.new_zeros(rows, budget, p).scatter_add_(1, slot[..., None].expand(-1, -1, p), g.source)
        frames_out = g.frames[is_root].view(rows, budget)  # the root: the earliest frame of its tree
        return VisualTokens(tokens=tokens, sizes=sizes.to(g.sizes.dtype), source=source, frames=frames_out,
                            row_frames=w)

    def __repr__(self) -> str:
        return (f"TemporalMerge(keep_ratio={self.keep_ratio}, window={self.window}, inner={self.inner!r}, "
                f"order={self.order_name!r})")
