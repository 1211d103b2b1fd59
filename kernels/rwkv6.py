"""WKV-6: the time-mix recurrence of RWKV-6 ("Finch"), in three forms behind one dispatch.

Layout (B, T, H, N) for r, k, v and w (as fla's kernels, not head-first), bonus u (H, N), state S (B, H, N, V)
indexed [key, value]. ``w`` is the LOG decay (<= 0; RWKV-6 uses ``-exp(raw)``). For each head:

    y_t = scale * r_t · (S_{t-1} + diag(u) k_tᵀ v_t)
    S_t = diag(exp(w_t)) S_{t-1} + k_tᵀ v_t

- ``wkv6_recurrent``: the step form, one token at a time (generation; the reference).
- ``wkv6_chunked``: the training / prefill form on CPU. Inside chunks of ``chunk_size`` tokens it is a masked
  matrix product; only the state hand-over between chunks is a Python loop. With ``c`` the inclusive cumulative
  log decay inside a chunk, decays enter only as ``exp(c_{t-1} - c_s)`` (s < t), ``exp(c_{t-1})`` and
  ``exp(c_L - c_s)``: every exponent is <= 0, so it stays exact for RWKV's very strong decays (a log decay of
  -100 or less per token), where the usual ``r * exp(c)``, ``k * exp(-c)`` factorisation overflows.
- CUDA: fla's Triton kernels (``chunk_rwkv6`` for T > 1, ``fused_recurrent_rwkv6`` for T == 1).

Arithmetic is float32 at least (float64 stays float64); the output comes back in r's dtype, the state in
float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aurora.kernels.chunking import dyadic_intra, group_chunks, pow2_at_least

BACKENDS = ("auto", "chunked", "recurrent", "fla")


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None) -> None:
    if r.dim() != 4 or k.shape != r.shape or w.shape != r.shape:
        raise ValueError(f"r, k, w must share one (B, T, H, N) shape; got {tuple(r.shape)}, {tuple(k.shape)}, "
                         f"{tuple(w.shape)}")
    b, t, h, n = r.shape
    if v.dim() != 4 or v.shape[:3] != (b, t, h):
        raise ValueError(f"v must be (B, T, H, V) = ({b}, {t}, {h}, V); got {tuple(v.shape)}")
    if u.shape != (h, n):
        raise ValueError(f"u must be (H, N) = ({h}, {n}); got {tuple(u.shape)}")
    if state is not None and state.shape != (b, h, n, v.shape[-1]):
        raise ValueError(f"state must be (B, H, N, V) = ({b}, {h}, {n}, {v.shape[-1]}); got {tuple(state.shape)}")


def wkv6_recurrent(
    r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None = None, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Token-by-token WKV-6. Returns (o (B, T, H, V) in r's dtype, final state (B, H, N, V))."""
    _check(r, k, v, w, u, state)
    b, t, h, n = r.shape
    dv = v.shape[-1]
    ct = _compute_dtype(r)
    out_dtype = r.dtype
    r, k, v, w, u = (x.to(ct) for x in (r, k, v, w, u))
    s = r.new_zeros(b, h, n, dv) if state is None else state.to(ct)
    decay = w.exp()
    ys = []
    for i in range(t):
        kv = k[:, i, :, :, None] * v[:, i, :, None, :]  # (B, H, N, V): k_tᵀ v_t
        ys.append(torch.einsum("bhn,bhnv->bhv", r[:, i], s + u[:, :, None] * kv))
        s = decay[:, i, :, :, None] * s + kv
    o = torch.stack(ys, 1) if ys else r.new_zeros(b, 0, h, dv)
    if scale != 1.0:
        o = o * scale
    return o.to(out_dtype), s


def wkv6_chunked(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None = None,
    chunk_size: int = 16,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Chunk-parallel WKV-6 (same result as :func:`wkv6_recurrent`, stable for any decay <= 0)."""
    _check(r, k, v, w, u, state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, t, h, n = r.shape
    dv = v.shape[-1]
    ct = _compute_dtype(r)
    out_dtype = r.dtype
    r, k, v, w, u = (x.to(ct) for x in (r, k, v, w, u))
    s = r.new_zeros(b, h, n, dv) if state is None else state.to(ct)
    if t == 0:
        return r.new_zeros(b, 0, h, dv).to(out_dtype), s
    L = pow2_at_least(min(chunk_size, t))
    group = group_chunks(b, h, L)
    # Preallocated output, filled one group of chunks at a time: no temporary scales with T.
    o = r.new_empty(b, t, h, dv)
    for t0 in range(0, t, group * L):
        t1 = min(t, t0 + group * L)
        rg, kg, vg, wg = (x[:, t0:t1] for x in (r, k, v, w))
        # The bonus term is diagonal in time: (r_t · (u * k_t)) v_t.
        bonus = (rg * u * kg).sum(-1, keepdim=True) * vg  # (B, Tg, H, V)
        ng = -(-(t1 - t0) // L)
        pad = ng * L - (t1 - t0)
        if pad:  # padded tokens have k = 0 (add nothing) and log decay 0 (keep the state as it is)
            rg, kg, vg, wg = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (rg, kg, vg, wg))
        # (B, Tg, H, D) -> (B, H, G, L, D)
        rg, kg, vg, wg = (x.reshape(b, ng, L, h, x.shape[-1]).permute(0, 3, 1, 2, 4) for x in (rg, kg, vg, wg))
        c = wg.cumsum(3)  # c_t: log decay accumulated over tokens 1..t of the chunk (inclusive)
        c_prev = c - wg  # c_{t-1}: accumulated before token t
        c_last = c[:, :, :, -1:, :]  # c_L, (B, H, G, 1, N)
        # Intra-chunk: sum_{s<t} (r_t · k_s exp(c_{t-1} - c_s)) v_s, every exponent <= 0 (dyadic products).
        y = dyadic_intra(rg, kg, vg, wg, inclusive=False) if L > 1 else None
        # What each chunk adds to the state, and how much of the incoming state survives it.
        # w_{s+1} + ... + w_L, summed directly (not c_L - c_s, which loses |c| * 1e-7 of the exponent in fp32)
        rest = F.pad(wg.flip(3).cumsum(3).flip(3)[..., 1:, :], (0, 0, 0, 1))
        chunk_kv = (rest.exp() * kg).transpose(-1, -2) @ vg  # (B, H, G, N, V)
        chunk_decay = c_last.squeeze(-2).exp().unsqueeze(-1)  # (B, H, G, N, 1)
        incoming = []
        for i in range(ng):  # the only sequential part: one cheap update per chunk
            incoming.append(s)
            s = chunk_decay[:, :, i] * s + chunk_kv[:, :, i]
        inter = (rg * c_prev.exp()) @ torch.stack(incoming, 2)  # from the state entering each chunk
        y = inter if y is None else y + inter
        y = y.permute(0, 2, 3, 1, 4).reshape(b, ng * L, h, dv)[:, :t1 - t0] + bonus
        o[:, t0:t1] = y * scale if scale != 1.0 else y
    return o.to(out_dtype), s


def wkv6(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None = None,
    backend: str = "auto",
    chunk_size: int = 16,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """One dispatch for WKV-6: (output in r's dtype, final state in float32, float64 for float64 inputs).

    ``backend``: ``auto`` (fla's kernels on CUDA; on CPU ``chunked`` for T > 1 and ``recurrent`` for T == 1),
    ``chunked``, ``recurrent`` or ``fla``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown wkv6 backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    t = r.shape[1]
    if backend == "fla" or (backend == "auto" and r.is_cuda):
        return _fla_wkv6(r, k, v, w, u, state, scale)
    # The PyTorch forms run with autocast off: under a bf16 autocast region the state matmuls would otherwise be
    # cast down and the recurrence would drift.
    with torch.autocast(r.device.type, enabled=False):
        if backend == "recurrent" or (backend == "auto" and t <= 1):
            return wkv6_recurrent(r, k, v, w, u, state, scale)
        return wkv6_chunked(r, k, v, w, u, state, chunk_size, scale)


def _fla_wkv6(r, k, v, w, u, state, scale):
    """fla 0.6 convention: (B, T, H, N) inputs, ``w`` in log space, explicit ``scale`` (its default is N^-0.5)."""
    from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6

    _check(r, k, v, w, u, state)
    fn = fused_recurrent_rwkv6 if r.shape[1] == 1 else chunk_rwkv6
    init = None if state is None else state.float()
    o, s = fn(r, k, v, w.float(), u, scale=scale, initial_state=init, output_final_state=True)
    return o.to(r.dtype), s
