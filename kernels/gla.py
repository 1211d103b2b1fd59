"""Gated linear attention (GLA, Yang et al. 2023): the recurrence in three forms behind one dispatch.

Layout (B, T, H, K) for q, k and the log forget gate g, (B, T, H, V) for v (as fla's kernels, not head-first),
state S (B, H, K, V) indexed [key, value] (fla's default ``state_v_first=False`` layout). ``g`` is the LOG of the
per-key-channel decay (<= 0; fla's GLA layer uses ``logsigmoid(x) / 16``). For each head:

    S_t = diag(exp(g_t)) S_{t-1} + k_tᵀ v_t
    o_t = scale * q_t S_t                       (the current token is included; no bonus term)

- ``gla_recurrent``: the step form, one token at a time (generation; the reference).
- ``gla_chunked``: the training / prefill form on CPU. Inside chunks of ``chunk_size`` tokens it is a masked
  matrix product; only the state hand-over between chunks is a Python loop. Decays enter only as exponentials of
  segment sums ``g_{s+1} + ... + g_t`` (s <= t) inside a chunk, each summed directly (never as a difference of
  two cumulative sums, which loses precision in fp32): every exponent is <= 0, so it stays exact for very strong
  decays, where the usual ``q * exp(c)``, ``k * exp(-c)`` factorisation overflows.
- CUDA: fla's Triton kernels (``chunk_gla`` for T > 1, ``fused_recurrent_gla`` for T == 1).

``scale`` defaults to K ** -0.5 (fla's default). Arithmetic is float32 at least (float64 stays float64); the
output comes back in q's dtype, the state in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aurora.kernels.chunking import dyadic_intra, group_chunks, pow2_at_least

BACKENDS = ("auto", "chunked", "recurrent", "fla")


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor | None) -> None:
    if q.dim() != 4 or k.shape != q.shape or g.shape != q.shape:
        raise ValueError(f"q, k, g must share one (B, T, H, K) shape; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(g.shape)}")
    b, t, h, n = q.shape
    if v.dim() != 4 or v.shape[:3] != (b, t, h):
        raise ValueError(f"v must be (B, T, H, V) = ({b}, {t}, {h}, V); got {tuple(v.shape)}")
    if state is not None and state.shape != (b, h, n, v.shape[-1]):
        raise ValueError(f"state must be (B, H, K, V) = ({b}, {h}, {n}, {v.shape[-1]}); got {tuple(state.shape)}")


def gla_recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor | None = None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token GLA. Returns (o (B, T, H, V) in q's dtype, final state (B, H, K, V))."""
    _check(q, k, v, g, state)
    b, t, h, n = q.shape
    dv = v.shape[-1]
    scale = n ** -0.5 if scale is None else scale
    ct = _compute_dtype(q)
    out_dtype = q.dtype
    q, k, v, g = (x.to(ct) for x in (q, k, v, g))
    s = q.new_zeros(b, h, n, dv) if state is None else state.to(ct)
    decay = g.exp()
    outs = []
    for i in range(t):
        s = decay[:, i, :, :, None] * s + k[:, i, :, :, None] * v[:, i, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, i], s))
    o = torch.stack(outs, 1) if outs else q.new_zeros(b, 0, h, dv)
    return (o * scale).to(out_dtype), s


def gla_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    state: Tensor | None = None,
    chunk_size: int = 16,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunk-parallel GLA (same result as :func:`gla_recurrent`, stable for any log decay <= 0)."""
    _check(q, k, v, g, state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, t, h, n = q.shape
    dv = v.shape[-1]
    scale = n ** -0.5 if scale is None else scale
    ct = _compute_dtype(q)
    out_dtype = q.dtype
    q, k, v, g = (x.to(ct) for x in (q, k, v, g))
    s = q.new_zeros(b, h, n, dv) if state is None else state.to(ct)
    if t == 0:
        return q.new_zeros(b, 0, h, dv).to(out_dtype), s

    L = pow2_at_least(min(chunk_size, t))
    group = group_chunks(b, h, L)
    # Preallocated output, filled one group of chunks at a time: no temporary scales with T.
    o = q.new_empty(b, t, h, dv)
    for t0 in range(0, t, group * L):
        t1 = min(t, t0 + group * L)
        qg, kg, vg, gg = (x[:, t0:t1] for x in (q, k, v, g))
        diag = (qg * kg).sum(-1, keepdim=True) * vg  # the current token: (q_t · k_t) v_t, decay exp(0)
        ng = -(-(t1 - t0) // L)
        pad = ng * L - (t1 - t0)
        if pad:  # padded tokens have k = 0 (add nothing) and log decay 0 (keep the state as it is)
            qg, kg, vg, gg = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (qg, kg, vg, gg))
        # (B, Tg, H, D) -> (B, H, G, L, D)
        qg, kg, vg, gg = (x.reshape(b, ng, L, h, x.shape[-1]).permute(0, 3, 1, 2, 4) for x in (qg, kg, vg, gg))
        c = gg.cumsum(3)  # g_1 + ... + g_t (inclusive, from the chunk start)
        # g_{s+1} + ... + g_L, summed directly (not c_L - c_s, which loses |c| * 1e-7 of the exponent in fp32)
        rest = F.pad(gg.flip(3).cumsum(3).flip(3)[..., 1:, :], (0, 0, 0, 1))
        # Intra-chunk, s < t: (q_t · k_s exp(c_t - c_s)) v_s, every exponent <= 0 (dyadic products).
        y = dyadic_intra(qg, kg, vg, gg, inclusive=True) if L > 1 else None
        # What each chunk adds to the state, and how much of the incoming state survives it.
        chunk_kv = (rest.exp() * kg).transpose(-1, -2) @ vg  # (B, H, G, K, V)
        chunk_decay = c[:, :, :, -1].exp().unsqueeze(-1)  # (B, H, G, K, 1)
        incoming = []
        for i in range(ng):  # the only sequential part: one cheap update per chunk
            incoming.append(s)
            s = chunk_decay[:, :, i] * s + chunk_kv[:, :, i]
        inter = (qg * c.exp()) @ torch.stack(incoming, 2)  # from the state entering each chunk
        y = inter if y is None else y + inter
        y = y.permute(0, 2, 3, 1, 4).reshape(b, ng * L, h, dv)[:, :t1 - t0] + diag
        o[:, t0:t1] = y * scale
    return o.to(out_dtype), s


def gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    state: Tensor | None = None,
    backend: str = "auto",
    chunk_size: int = 16,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One dispatch for GLA: (output in q's dtype, final state in float32, float64 for float64 inputs).

    ``backend``: ``auto`` (fla's kernels on CUDA; on CPU ``chunked`` for T > 1 and ``recurrent`` for T == 1),
    ``chunked``, ``recurrent`` or ``fla``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown gla backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    t = q.shape[1]
    if backend == "fla" or (backend == "auto" and q.is_cuda):
        return _fla_gla(q, k, v, g, state, scale)
    if backend == "recurrent" or (backend == "auto" and t <= 1):
        return gla_recurrent(q, k, v, g, state, scale)
    return gla_chunked(q, k, v, g, state, chunk_size, scale)


def _fla_gla(q, k, v, g, state, scale):
    """fla 0.6 convention: (B, T, H, K) inputs, ``g`` in log space, state (B, H, K, V) in float32."""
    from fla.ops.gla import chunk_gla, fused_recurrent_gla

    _check(q, k, v, g, state)
    init = None if state is None else state.float()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.shape[1] == 1:
        o, s = fused_recurrent_gla(q, k, v, gk=g.float(), scale=scale, initial_state=init, output_final_state=True)
    else:
        o, s = chunk_gla(q, k, v, g.float(), scale=scale, initial_state=init, output_final_state=True)
    return o.to(q.dtype), s
