"""WKV-6: the time-mix recurrence of RWKV-6 ("Finch"), in three forms behind one dispatch.

Layout (B, T, H, N) for r, k, v and w (as fla's kernels), bonus u (H, N), state S (B, H, N, N) indexed
[key, value]. ``w`` is the LOG decay (<= 0). For each head:

    y_t = r_t · (S_{t-1} + diag(u) k_tᵀ v_t)
    S_t = diag(exp(w_t)) S_{t-1} + k_tᵀ v_t

- ``wkv6_recurrent``: the step form, one token at a time (generation; the reference).
- ``wkv6_chunked``: the training/prefill form on CPU: matrix form inside chunks of ``chunk_size`` tokens, the
  state passed between chunks. Decays enter only as exp(differences of cumulative log decays) that are <= 0, so
  it stays exact for RWKV's very strong decays (a log decay of -100 per token), where the usual
  "q * exp(cumsum), k * exp(-cumsum)" factorisation overflows.
- CUDA: fla's Triton kernels (``chunk_rwkv6``, ``fused_recurrent_rwkv6``).
"""
from __future__ import annotations

import torch
from torch import Tensor

BACKENDS = ("auto", "chunked", "recurrent", "fla")


def _state_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def wkv6_recurrent(
    r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None = None, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    b, t, h, n = r.shape
    dt = _state_dtype(r)
    r, k, v, w, u = (x.to(dt) for x in (r, k, v, w, u))
    s = r.new_zeros(b, h, n, v.shape[-1]) if state is None else state.to(dt)
    out = []
    for i in range(t):
        kv = k[:, i, :, :, None] * v[:, i, :, None, :]  # (B, H, N, V)
        out.append(torch.einsum("bhk,bhkv->bhv", r[:, i] * scale, s + u[None, :, :, None] * kv))
        s = s * w[:, i, :, :, None].exp() + kv
    o = torch.stack(out, 1) if out else v.new_zeros(b, 0, h, v.shape[-1])
    return o, s


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
    b, t, h, n = r.shape
    dv = v.shape[-1]
    dt = _state_dtype(r)
    r, k, v, w, u = (x.to(dt) for x in (r, k, v, w, u))
    r = r * scale
    s = r.new_zeros(b, h, n, dv) if state is None else state.to(dt)
    # the bonus term is diagonal in time: y_t += (r_t * u * k_t) summed over keys, times v_t
    bonus = (r * u * k).sum(-1, keepdim=True) * v  # (B, T, H, V)
    out = []
    for start in range(0, t, chunk_size):
        end = min(t, start + chunk_size)
        rc, kc, vc, wc = (x[:, start:end].transpose(1, 2) for x in (r, k, v, w))  # (B, H, L, N)
        c = wc.cumsum(2)  # inclusive cumulative log decay inside the chunk
        c_before = c - wc  # c_{t-1}: decay accumulated before token t
        # intra-chunk: A[t, s] = sum_i r_t[i] k_s[i] exp(c_{t-1}[i] - c_s[i]) for s < t
        diff = c_before[:, :, :, None, :] - c[:, :, None, :, :]  # (B, H, L, L, N)
        causal = torch.ones(end - start, end - start, dtype=torch.bool, device=r.device).tril(-1)
        diff = diff.masked_fill(~causal[:, :, None], float("-inf"))
        a = torch.einsum("bhtn,bhsn,bhtsn->bhts", rc, kc, diff.exp())
        y = a @ vc + (rc * c_before.exp()) @ s  # intra-chunk + what the incoming state contributes
        out.append(y.transpose(1, 2))
        # outgoing state: S_L = exp(c_L) S_0 + sum_s exp(c_L - c_s) k_s^T v_s
        last = c[:, :, -1:, :]  # (B, H, 1, N)
        s = s * last.transpose(2, 3).exp() + ((last - c).exp() * kc).transpose(2, 3) @ vc
    o = torch.cat(out, 1) if out else v.new_zeros(b, 0, h, dv)
    return o + bonus, s


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
    """One dispatch for WKV-6; returns (output in r's dtype, final state in fp32 or fp64)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown wkv6 backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    t = r.shape[1]
    if backend == "fla" or (backend == "auto" and r.is_cuda):
        o, s = _fla_wkv6(r, k, v, w, u, state, scale)
    elif backend == "recurrent" or (backend == "auto" and t == 1):
        o, s = wkv6_recurrent(r, k, v, w, u, state, scale)
    else:
        o, s = wkv6_chunked(r, k, v, w, u, state, chunk_size, scale)
    return o.to(r.dtype), s


def _fla_wkv6(r, k, v, w, u, state, scale):
    from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6

    fn = fused_recurrent_rwkv6 if r.shape[1] == 1 else chunk_rwkv6
    init = None if state is None else state.float()
    return fn(r, k, v, w.float(), u, scale=scale, initial_state=init, output_final_state=True)
