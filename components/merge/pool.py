"""Spatial average pooling of the patch grid on the encoder's output (a non-learned baseline to ToMe).

``pool`` merges nothing inside the layers; its ``finalize`` averages the output tokens over ``kernel`` x
``kernel`` windows of the patch grid placed every ``stride`` patches (row-major cells). Windows are placed
like ``avg_pool2d(ceil_mode=True)``: every patch is in some window, an edge window that runs off the grid
averages the patches it has. ``sizes`` are patches per cell: with ``kernel == stride`` (the default) the cells
partition the grid; with overlapping windows (``kernel > stride``) a patch's one unit of size is shared equally
between the windows holding it (source maps hold those shares), so sizes still sum to the patch count.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from aurora.registry import MERGE

from .tome import TokenMerge


def _cells(length: int, kernel: int, stride: int) -> int:
    return 1 if length <= kernel else math.ceil((length - kernel) / stride) + 1


def _axis_windows(length: int, kernel: int, stride: int) -> Tensor:
    """(cells, length) 0/1: which positions of one axis each window covers."""
    m = _cells(length, kernel, stride)
    pos = torch.arange(length)
    start = torch.arange(m)[:, None] * stride
    return ((pos >= start) & (pos < start + kernel)).to(torch.float64)


@MERGE.register("pool")
class PoolMerge(TokenMerge):
    """Average pooling of the patch grid after the encoder.

    Args:
        stride: window step in patches (2: a 24x24 grid becomes 12x12).
        kernel: window side in patches, at least ``stride``; defaults to ``stride`` (non-overlapping cells).
        grid: (rows, cols) of the patch grid; by default the grid is taken as square (N = g * g).
        protect_first: when the token count is a square plus one (a class token in front), that first token is
            kept as it is, in front; a square count has no class token and every token is pooled.
        trace_source: also return which original patches every token holds.
    """

    def __init__(self, stride: int = 2, kernel: int | None = None, grid: list[int] | tuple[int, int] | None = None,
                 protect_first: bool = True, trace_source: bool = False) -> None:
        kernel = stride if kernel is None else kernel
        if int(stride) != stride or stride < 1:
            raise ValueError(f"pool stride must be a positive integer, got {stride!r}")
        if int(kernel) != kernel or kernel < stride:
            raise ValueError(f"pool kernel must be an integer >= stride ({stride}) so no patch is skipped, got {kernel!r}")
        if grid is not None:
            if len(grid) != 2 or any(int(g) != g or g < 1 for g in grid):
                raise ValueError(f"pool grid must be [rows, cols] of positive integers, got {grid!r}")
            grid = (int(grid[0]), int(grid[1]))
        self.stride, self.kernel, self.grid = int(stride), int(kernel), grid
        self.protect_first, self.trace_source = protect_first, trace_source
        self._mats: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def layout(self, n: int) -> tuple[int, int, int]:
        """(class tokens in front: 0 or 1, rows, cols) for ``n`` tokens."""
        if self.grid is not None:
            h, w = self.grid
            if h * w == n:
                return 0, h, w
            if self.protect_first and h * w + 1 == n:
                return 1, h, w
            extra = " (+1 class token with protect_first)" if self.protect_first else ""
            raise ValueError(f"pool grid {h}x{w}{extra} does not match {n} tokens")
        g = math.isqrt(n)
        if g * g == n:
            return 0, g, g
        g = math.isqrt(n - 1) if n > 1 else 0
        if self.protect_first and g * g == n - 1:
            return 1, g, g
        raise ValueError(
            f"pool: {n} tokens are not a square patch grid{' nor a square plus a class token' if self.protect_first else ''}; "
            "give the grid shape: grid: [rows, cols]")

    def out_grid(self, h: int, w: int) -> tuple[int, int]:
        return _cells(h, self.kernel, self.stride), _cells(w, self.kernel, self.stride)

    def tokens_per_frame(self, num_patches: int, num_layers: int) -> int:
        cls, h, w = self.layout(num_patches)
        gh, gw = self.out_grid(h, w)
        return cls + gh * gw

    def _matrices(self, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Window membership (cells, h*w) and each patch's share of its unit size (cells, h*w)."""
        if (h, w) not in self._mats:
            member = torch.kron(_axis_windows(h, self.kernel, self.stride), _axis_windows(w, self.kernel, self.stride))
            self._mats[(h, w)] = member, member / member.sum(0, keepdim=True)
        return self._mats[(h, w)]

    def finalize(self, x: Tensor, metric: Tensor | None, sizes: Tensor, source: Tensor | None):
        f, n, c = x.shape
        cls, h, w = self.layout(n)
        dt = torch.promote_types(x.dtype, torch.float32)
        member, share = (m.to(device=x.device, dtype=dt) for m in self._matrices(h, w))
        px, ps = x[:, cls:].to(dt), sizes[:, cls:].to(dt)
        # the size-weighted mean over each window (the plain mean while every output token has size 1)
        pooled = torch.einsum("tp,fpc->ftc", member, px * ps[..., None]) / (ps @ member.T)[..., None]
        new_sizes = ps @ share.T
        out_x = torch.cat([x[:, :cls], pooled.to(x.dtype)], dim=1)
        out_sizes = torch.cat([sizes[:, :cls], new_sizes.to(sizes.dtype)], dim=1)
        if source is not None:
            pooled_src = torch.einsum("tp,fpm->ftm", share.to(source.dtype), source[:, cls:])
            source = torch.cat([source[:, :cls], pooled_src], dim=1)
        return out_x, out_sizes, source

    def __repr__(self) -> str:
        return f"PoolMerge(stride={self.stride}, kernel={self.kernel}, grid={self.grid})"
