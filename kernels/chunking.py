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

def dyadic_intra(q: Tensor, cq: Tensor, k: Tensor, ck: Tensor, v: Tensor) -> Tensor:
    """Sum over s < t of (q_t · (k_s * exp(cq_t - ck_s))) v_s inside each chunk, as matrix products.

    q, cq, k, ck: (..., L, N), v: (..., L, V), L a power of two; cq_t >= ck_s whenever s < t (log decays <= 0),
    so every true factor is <= 1. The strictly causal pairs of a chunk split dyadically: at block size b, the
    pairs with s in the left half and t in the right half of one block share the reference point m (the left
    half's last token), and exp(cq_t - ck_s) = exp(cq_t - ck_m) * exp(ck_m - ck_s) with BOTH exponents <= 0. So
    each level is one batched (b/2 x N) @ (N x b/2) product of bounded factors: exact for any decay (no overflow,
    unlike the one-reference ``q * exp(c)``, ``k * exp(-c)`` form), in log2(L) products instead of an L x L x N
    elementwise tensor."""
    L, n = q.shape[-2], q.shape[-1]
    lead = q.shape[:-2]
    y = None
    bs = L
    while bs >= 2:
        half, nb = bs // 2, L // bs
        def blocks(x: Tensor) -> Tensor:
            return x.reshape(*lead, nb, bs, x.shape[-1])
        qb, cqb, kb, ckb, vb = blocks(q), blocks(cq), blocks(k), blocks(ck), blocks(v)
        cm = ckb[..., half - 1:half, :]  # (..., nb, 1, N): the reference token of each block
        qq = qb[..., half:, :] * (cqb[..., half:, :] - cm).exp()
        kk = kb[..., :half, :] * (cm - ckb[..., :half, :]).exp()
        part = (qq @ kk.transpose(-1, -2)) @ vb[..., :half, :]  # (..., nb, half, V): right halves only
        part = F.pad(part, (0, 0, half, 0)).reshape(*lead, L, v.shape[-1])
        y = part if y is None else y + part
        bs = half
    return y
