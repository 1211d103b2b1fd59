"""Shared pieces of the chunked (training / prefill) forms of the linear recurrences on CPU.

Two things keep those forms linear in T and near the matrix-product rate:

- **Passes over groups of chunks** (:func:`group_chunks`): each pass handles a bounded number of chunks and writes
  its slice of a preallocated output, so no temporary scales with T. Whole-sequence intermediates of size
  T x L x N (all chunks at once) are fresh large allocations on every call (glibc serves blocks above its mmap
  threshold, at most 32 MiB, from new mappings: a page fault on every first touch, ~127k per forward measured) and
  gathers over them fall out of the cache, which is what made time per token grow with T.
- **Dyadic intra-chunk products** (:func:`dyadic_intra`): the causal pairs of a chunk as log2(L) batched matrix
  products whose decay factors are all <= 1, instead of an L x L x N elementwise tensor or an index gather.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def group_chunks(b: int, h: int, L: int, target: int = 4096) -> int:
    """How many chunks one pass handles: about ``target`` (batch x head x token) rows, a few MiB per temporary."""
    return max(1, target // max(1, b * h * L))


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= n (the dyadic split needs power-of-two chunks)."""
    return 1 << max(0, (n - 1).bit_length())

def dyadic_intra(q: Tensor, k: Tensor, v: Tensor, g: Tensor, inclusive: bool) -> Tensor:
    """Sum over s < t of (q_t · (k_s * exp(D[t, s]))) v_s inside each chunk, as matrix products.

    q, k, g: (..., L, N), v: (..., L, V), L a power of two; ``g`` the per-token log decays (<= 0) and
    D[t, s] = g_{s+1} + ... + g_t (``inclusive``: GLA, the query's own decay counts) or g_{s+1} + ... + g_{t-1}
    (RWKV-6: the state is read before token t's decay). The strictly causal pairs of a chunk split dyadically: at
    block size b, the pairs with s in the left half and t in the right half of one block share the reference point
    m (the left half's last token), and D[t, s] = D[t, m] + (g_{s+1} + ... + g_m), both parts <= 0 and each summed
    directly inside its half (never as a difference of two long cumulative sums, which loses |sum| * 1e-7 in
    fp32). So each level is one batched (b/2 x N) @ (N x b/2) product of factors <= 1: exact for any decay (no
    overflow, unlike the one-reference ``q * exp(c)``, ``k * exp(-c)`` form), log2(L) products in all instead of
    an L x L x N elementwise tensor."""
    L = q.shape[-2]
    lead = q.shape[:-2]
    y = None
    bs = L
    while bs >= 2:
        half, nb = bs // 2, L // bs

        def blocks(x: Tensor) -> Tensor:
            return x.reshape(*lead, nb, bs, x.shape[-1])

        qb, kb, vb, gb = blocks(q), blocks(k), blocks(v), blocks(g)
        right, left = gb[..., half:, :], gb[..., :half, :]
        if not inclusive:  # g_{m+1} + ... + g_{t-1}: the right half's exclusive running sum
            right = F.pad(right[..., :-1, :], (0, 0, 1, 0))
        q_exp = right.cumsum(-2)
        k_exp = F.pad(left[..., 1:, :].flip(-2).cumsum(-2).flip(-2), (0, 0, 0, 1))  # g_{s+1} + ... + g_m
        qq = qb[..., half:, :] * q_exp.exp()
        kk = kb[..., :half, :] * k_exp.exp()
        part = (qq @ kk.transpose(-1, -2)) @ vb[..., :half, :]  # (..., nb, half, V): right halves only
        part = F.pad(part, (0, 0, half, 0)).reshape(*lead, L, v.shape[-1])
        y = part if y is None else y + part
        bs = half
    return y
