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

import functools

import torch
from torch import Tensor


def group_chunks(b: int, h: int, L: int, target: int = 4096) -> int:
    """How many chunks one pass handles: about ``target`` (batch x head x token) rows, a few MiB per temporary."""
    return max(1, target // max(1, b * h * L))


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= n (the dyadic split needs power-of-two chunks)."""
    return 1 << max(0, (n - 1).bit_length())

@functools.lru_cache(maxsize=64)
def _sum_matrix(kind: str, L: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Constant 0/1 matrices that turn per-token log decays (..., L, N) into the sums the chunked forms need, as
    one matrix product (a cumulative sum along a non-last dim is slow on the CPU; every entry is a direct sum of
    the same terms, never a difference of two long running sums):

    - ``"chunk"`` (2L + 1, L): rows 0..L-1 g_1 + ... + g_{t-1}, rows L..2L-1 g_{s+1} + ... + g_L, row 2L the total;
    - ``"dyadic"`` / ``"dyadic_inclusive"`` (log2(L) L, L): per level of :func:`dyadic_intra` (block sizes L, L/2,
      ..., 2), L/2 rows of the query-side sums (g_{m+1} + ... + g_{t-1}, or ... + g_t inclusive, for every t of a
      right half, block by block) then L/2 rows of the key-side sums (g_{s+1} + ... + g_m, every s of a left
      half)."""
    with torch.inference_mode(False):  # a cached constant made under inference_mode could not enter autograd later
        return _build_sum_matrix(kind, L).to(device=device, dtype=dtype)


def _build_sum_matrix(kind: str, L: int) -> Tensor:
    i = torch.arange(L)
    if kind == "chunk":
        return torch.cat([(i[None, :] < i[:, None]).float(), (i[None, :] > i[:, None]).float(), torch.ones(1, L)])
    rows = []
    bs = L
    while bs >= 2:  # per level: the query rows of every right half, then the key rows of every left half
        half = bs // 2
        q_rows, k_rows = [], []
        for start in range(0, L, bs):
            mid = start + half  # the first token of the right half
            for t in range(mid, start + bs):
                q_rows.append((i >= mid) & ((i <= t) if kind == "dyadic_inclusive" else (i < t)))
            for s in range(start, mid):
                k_rows.append((i > s) & (i < mid))
        rows.append(torch.stack(q_rows + k_rows).float())
        bs = half
    return torch.cat(rows)


def chunk_sums(g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For log decays g (..., L, N): exp(g_1 + ... + g_{t-1}) (the decay before each token), exp(g_{s+1} + ... +
    g_L) (from each token to the chunk's end) and exp(g_1 + ... + g_L) (..., N), from one product and one exp."""
    L = g.shape[-2]
    e = (_sum_matrix("chunk", L, g.device, g.dtype) @ g).exp()
    return e[..., :L, :], e[..., L:2 * L, :], e[..., 2 * L, :]


def dyadic_factors(g: Tensor, inclusive: bool) -> list[tuple[Tensor, Tensor]]:
    """exp of every level's query- and key-side sums (see :func:`_sum_matrix`): per level (..., nb, half, N) for
    the right halves' queries and the left halves' keys. A forward that keeps them hands them to the backward
    (``factors=``), which then recomputes neither the product nor the exp."""
    L = g.shape[-2]
    e = (_sum_matrix("dyadic_inclusive" if inclusive else "dyadic", L, g.device, g.dtype) @ g).exp()
    out, bs = [], L
    for j in range(e.shape[-2] // L):
        half = bs // 2
        lv = e[..., j * L:(j + 1) * L, :]
        out.append((lv[..., :L // 2, :].unflatten(-2, (L // bs, half)), lv[..., L // 2:, :].unflatten(-2, (L // bs, half))))
        bs = half
    return out


def dyadic_intra(q: Tensor, k: Tensor, v: Tensor, g: Tensor, inclusive: bool,
                 factors: list[tuple[Tensor, Tensor]] | None = None, keep: list | None = None) -> Tensor:
    """Sum over s < t of (q_t · (k_s * exp(D[t, s]))) v_s inside each chunk, as matrix products.

    q, k, g: (..., L, N), v: (..., L, V), L a power of two; ``g`` the per-token log decays (<= 0) and
    D[t, s] = g_{s+1} + ... + g_t (``inclusive``: GLA, the query's own decay counts) or g_{s+1} + ... + g_{t-1}
    (RWKV-6: the state is read before token t's decay). The strictly causal pairs of a chunk split dyadically: at
    block size b, the pairs with s in the left half and t in the right half of one block share the reference point
    m (the left half's last token), and D[t, s] = D[t, m] + (g_{s+1} + ... + g_m), both parts <= 0 and each summed
    directly inside its half (never as a difference of two long cumulative sums, which loses |sum| * 1e-7 in
    fp32; all levels' sums come from one product with a constant 0/1 matrix). So each level is one batched
    (b/2 x N) @ (N x b/2) product of factors <= 1: exact for any decay (no overflow, unlike the one-reference
    ``q * exp(c)``, ``k * exp(-c)`` form), log2(L) products in all instead of an L x L x N elementwise tensor.
    The last level (pairs of neighbours, 1 x 1 blocks) is elementwise: a batched product of 1 x 1 matrices costs
    more than the multiply-and-sum. ``factors``: :func:`dyadic_factors` of ``g`` if already computed; ``keep``
    (a list) receives each level's decayed queries, keys and pair scores for :func:`dyadic_intra_backward`."""
    L = q.shape[-2]
    lead = q.shape[:-2]
    y = v.new_zeros(*lead, L, v.shape[-1])
    bs = L
    for q_exp, k_exp in (factors if factors is not None else dyadic_factors(g, inclusive)):
        half, nb = bs // 2, L // bs

        def blocks(x: Tensor) -> Tensor:
            return x.reshape(*lead, nb, bs, x.shape[-1])

        qq = blocks(q)[..., half:, :] * q_exp
        kk = blocks(k)[..., :half, :] * k_exp
        yb = y.view(*lead, nb, bs, y.shape[-1])
        a = (qq * kk).sum(-1, keepdim=True) if half == 1 else qq @ kk.transpose(-1, -2)
        if half == 1:
            yb[..., 1:, :] += a * blocks(v)[..., :1, :]
        else:
            yb[..., half:, :] += a @ blocks(v)[..., :half, :]
        if keep is not None:
            keep.append((qq, kk, a))
        bs = half
    return y


def dyadic_intra_backward(q: Tensor, k: Tensor, v: Tensor, g: Tensor, do: Tensor, dq: Tensor, dk: Tensor,
                          dv: Tensor, inclusive: bool = False,
                          factors: list[tuple[Tensor, Tensor]] | None = None, kept: list | None = None) -> None:
    """Adds to ``dq``, ``dk``, ``dv`` (shaped as q, k, v, contiguous) the gradients of :func:`dyadic_intra` for the
    output gradient ``do``, at fixed decays: the same dyadic blocks and factors (all <= 1), each level's pairs
    A = qq kkᵀ read backwards (dv += Aᵀ do) and the score do vᵀ sent to both sides (dq += e_q * (S kk),
    dk += e_k * (Sᵀ qq)). The decays' own gradient follows from these (RWKV-6: its dC formula). ``factors``:
    the forward's :func:`dyadic_factors` (``g`` is then not read); ``kept``: what :func:`dyadic_intra` put in its
    ``keep`` list (then neither the decayed queries and keys nor the pair scores are recomputed)."""
    L = q.shape[-2]
    lead = q.shape[:-2]
    bs = L
    for level, (qe, ke) in enumerate(factors if factors is not None else dyadic_factors(g, inclusive)):
        half, nb = bs // 2, L // bs

        def blocks(x: Tensor) -> Tensor:
            return x.view(*lead, nb, bs, x.shape[-1])

        if kept is not None:
            qq, kk, a = kept[level]
        else:
            qq = blocks(q)[..., half:, :] * qe
            kk = blocks(k)[..., :half, :] * ke
            a = (qq * kk).sum(-1, keepdim=True) if half == 1 else qq @ kk.transpose(-1, -2)
        do_r = blocks(do)[..., half:, :]
        if half == 1:  # neighbours: 1 x 1 blocks, elementwise
            score = (do_r * blocks(v)[..., :1, :]).sum(-1, keepdim=True)
            blocks(dv)[..., :1, :] += a * do_r
            blocks(dq)[..., 1:, :] += qe * (score * kk)
            blocks(dk)[..., :1, :] += ke * (score * qq)
        else:
            score = do_r @ blocks(v)[..., :half, :].transpose(-1, -2)  # (..., nb, half, half)
            blocks(dv)[..., :half, :] += a.transpose(-1, -2) @ do_r
            blocks(dq)[..., half:, :] += qe * (score @ kk)
            blocks(dk)[..., :half, :] += ke * (score.transpose(-1, -2) @ qq)
        bs = half
