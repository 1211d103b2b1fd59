"""Regrouping and reordering the rows of :class:`~aurora.types.VisualTokens`: what the merges that work on a whole
video (``temporal``, the ``size_global`` ordering) do to per-frame rows."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from aurora.types import VisualTokens


def select(vt: VisualTokens, perm: Tensor) -> VisualTokens:
    """The same tokens reordered (or a subset picked) per row by ``perm`` (R, m) indices."""
    def take(t: Optional[Tensor]) -> Optional[Tensor]:
        if t is None:
            return None
        idx = perm.to(t.device)
        if t.dim() == 3:
            idx = idx[..., None].expand(-1, -1, t.shape[-1])
        return t.gather(1, idx)

    return VisualTokens(tokens=take(vt.tokens), sizes=take(vt.sizes), source=take(vt.source),
                        frames=take(vt.frames), row_frames=vt.row_frames)


def group_frames(vt: VisualTokens, frames_per_row: int) -> VisualTokens:
    """Per-frame rows (R, n) -> one row per ``frames_per_row`` consecutive frames (R / W, W * n), frames in
    time order; source maps become block-diagonal over the row's W * N frame-major patch columns."""
    w = int(frames_per_row)
    if vt.row_frames != 1:
        raise ValueError(f"group_frames needs per-frame rows; these rows already span {vt.row_frames} frames")
    r, n = vt.sizes.shape
    if w < 1 or r % w:
        raise ValueError(f"{r} frames cannot be grouped into rows of {w} frames")
    frames = vt.frames
    if frames is None:
        frames = torch.arange(r, device=vt.sizes.device)[:, None].expand(r, n)
    source = None
    if vt.source is not None:
        p = vt.source.shape[-1]
        src = vt.source.reshape(r // w, w, n, p)
        source = src.new_zeros(r // w, w, n, w, p)
        idx = torch.arange(w, device=src.device)
        source[:, idx, :, idx] = src.transpose(0, 1)  # frame t's tokens hold columns of frame t only
        source = source.reshape(r // w, w * n, w * p)
    return VisualTokens(tokens=vt.tokens.reshape(r // w, w * n, -1), sizes=vt.sizes.reshape(r // w, w * n),
                        source=source, frames=frames.reshape(r // w, w * n), row_frames=w)
