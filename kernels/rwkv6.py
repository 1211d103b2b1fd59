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

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from aurora.kernels.chunking import (chunk_sums, dyadic_factors, dyadic_intra, dyadic_intra_backward,
                                     group_chunks, pow2_at_least)

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
    chunk_size: int = 32,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Chunk-parallel WKV-6 (same result as :func:`wkv6_recurrent`, stable for any decay <= 0).

    With autograd on, it runs as one :class:`torch.autograd.Function` whose backward is chunked too
    (:func:`_wkv6_chunked_backward`): a handful of batched products per group of chunks instead of the backward of
    every small op of the forward (3x less time at the demo's sizes)."""
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
    if torch.is_grad_enabled() and any(x.requires_grad for x in (r, k, v, w, u, s)):
        o, s = _WKV6Chunked.apply(r, k, v, w, u, s, L, scale)
    else:
        o, s = _wkv6_chunked_forward(r, k, v, w, u, s, L, scale)
    return o.to(out_dtype), s


def _to_chunks(xs: tuple[Tensor, ...], t0: int, t1: int, L: int) -> tuple[list[Tensor], int]:
    """Tokens t0:t1 of each (B, T, H, D) tensor, zero-padded to whole chunks, as contiguous (B, H, G, L, D) (one
    copy each: every later product and block view reads them without another); and G."""
    ng = -(-(t1 - t0) // L)
    pad = ng * L - (t1 - t0)
    out = []
    for x in xs:
        x = x[:, t0:t1]
        if pad:  # padded tokens have k = 0 (add nothing) and log decay 0 (keep the state as it is)
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
        out.append(x.reshape(x.shape[0], ng, L, x.shape[2], x.shape[3]).permute(0, 3, 1, 2, 4).contiguous())
    return out, ng


def _from_chunks(x: Tensor, n_tokens: int) -> Tensor:
    """(B, H, G, L, D) -> (B, n_tokens, H, D): the inverse of :func:`_to_chunks`."""
    b, h, g, L, d = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(b, g * L, h, d)[:, :n_tokens]


# The one-reference intra-chunk product is used when every chunk's total log decay is >= -FAST_LOG.
FAST_LOG = 20.0
FAST_FLOOR = math.exp(-FAST_LOG)


@functools.lru_cache(maxsize=32)
def _strictly_lower(L: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The (L, L) 0/1 mask of the pairs s < t inside a chunk."""
    with torch.inference_mode(False):  # a cached constant made under inference_mode could not enter autograd later
        return torch.ones(L, L).tril(-1).to(device=device, dtype=dtype)


def _decays(wg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per chunk (B, H, G, L, N): exp(c_{t-1}) (decay before each token), exp(w_{s+1} + ... + w_L) (from each token
    to the chunk's end) and exp(c_L) (B, H, G, N); every exponent a direct sum (:func:`chunk_sums`)."""
    return chunk_sums(wg)


def _wkv6_chunked_forward(r, k, v, w, u, s, L: int, scale: float, keep: list | None = None
                          ) -> tuple[Tensor, Tensor]:
    """The chunked forward; ``keep`` (a list) receives, per group of chunks, what the backward reuses: the decay
    factors (chunk and dyadic), the state entering each chunk and the chunked r, k, v."""
    b, t, h, _ = r.shape
    group = group_chunks(b, h, L)
    # Preallocated output, filled one group of chunks at a time: no temporary scales with T.
    o = r.new_empty(b, t, h, v.shape[-1])
    for t0 in range(0, t, group * L):
        t1 = min(t, t0 + group * L)
        (rg, kg, vg, wg), ng = _to_chunks((r, k, v, w), t0, t1, L)
        e_prev, e_rest, e_last = _decays(wg)
        kr, rq = e_rest * kg, rg * e_prev  # k_s exp(c_L - c_s), r_t exp(c_{t-1})
        # Intra-chunk: sum_{s<t} (r_t · k_s exp(c_{t-1} - c_s)) v_s, and the bonus (r_t · (u * k_t)) v_t.
        if L > 1 and bool(e_last.min() >= FAST_FLOOR):
            # Every chunk decays by at most e^-FAST_LOG: one reference (the chunk's start) is safe, exp(c_{t-1}) and
            # exp(-c_s) stay within e^(+-FAST_LOG), so the chunk's pairs are one masked product (relative error
            # ~ FAST_LOG * eps), the bonus on its diagonal. Stronger decays take the dyadic form below, exact for
            # any decay.
            kq = kr / e_last.unsqueeze(-2)  # k_s exp(-c_s)
            a = (rq @ kq.transpose(-1, -2)).mul_(_strictly_lower(L, r.device, r.dtype))
            a.diagonal(dim1=-2, dim2=-1).copy_((rg * kg * u[:, None, None, :]).sum(-1))
            y, bonus, intra = a @ vg, None, ("one-reference", kq, a)
        else:
            # The bonus term is diagonal in time: (r_t · (u * k_t)) v_t.
            bonus = (r[:, t0:t1] * u * k[:, t0:t1]).sum(-1, keepdim=True) * v[:, t0:t1]  # (B, Tg, H, V)
            if L > 1:  # dyadic products, every exponent <= 0
                factors, levels = dyadic_factors(wg, inclusive=False), [] if keep is not None else None
                y = dyadic_intra(rg, kg, vg, wg, inclusive=False, factors=factors, keep=levels)
                intra = ("dyadic", factors, levels)
            else:
                y, intra = None, None
        # What each chunk adds to the state, and how much of the incoming state survives it.
        chunk_kv = kr.transpose(-1, -2) @ vg  # (B, H, G, N, V)
        incoming = chunk_kv.new_empty(chunk_kv.shape)  # the state entering each chunk, written in place
        incoming[:, :, 0] = s
        for i in range(ng):  # the only sequential part: one cheap update per chunk
            nxt = incoming[:, :, i + 1] if i + 1 < ng else None
            s = torch.addcmul(chunk_kv[:, :, i], e_last[:, :, i, :, None], incoming[:, :, i], out=nxt)
        if keep is not None:
            keep.append((e_prev, e_rest, e_last, incoming, intra, rg, kg, vg, kr, rq))
        inter = rq @ incoming  # from the state entering each chunk
        y = inter if y is None else y.add_(inter)
        if bonus is None and ng * L == t1 - t0 and scale == 1.0:  # straight into the output's slice, one copy
            o[:, t0:t1].view(b, ng, L, h, -1).permute(0, 3, 1, 2, 4).copy_(y)
            continue
        y = _from_chunks(y, t1 - t0)
        if bonus is not None:
            y = y + bonus
        o[:, t0:t1] = y * scale if scale != 1.0 else y
    return o, s


def _wkv6_chunked_backward(r, k, v, w, u, s0, s_final, do, ds, L: int, scale: float, saved: list):
    """Gradients of :func:`_wkv6_chunked_forward` for (r, k, v, w, u, s0), chunked like the forward.

    With S_t the state after token t, G_t = dLoss/dS_t (G_T = ``ds``), dy = scale * do:

    - dv_s = G_s^T (k_s exp(decay s+1..)) + bonus: a WKV run backwards in time (intra: A^T dy, inter: G_out);
    - the state parts of dr_t = S_{t-1} dy_t and of dk_s = G_s v_s (each with its decay factor, dyadic inside
      chunks as the forward, with the state entering / the adjoint leaving each chunk between them);
    - dw from the log decay's cumulative sums C: dC_j = r_{j+1}·dr_{j+1} - k_j·dk_j (state parts only, per channel)
      plus, at the last token, sum_v ds ⊙ S_T; dw_i = sum_{j >= i} dC_j (C_j = w_1 + ... + w_j);
    - ds0 = the adjoint entering the first chunk.

    One pass over the groups of chunks in reverse, with the forward's decay factors and chunk states (``saved``):
    the adjoint and every gradient of the group's tokens."""
    b, t, h, n = r.shape
    dy = do * scale if scale != 1.0 else do
    group = group_chunks(b, h, L)
    starts = list(range(0, t, group * L))
    drs, dks, dvv = torch.empty_like(r), torch.empty_like(k), torch.empty_like(v)
    p = r.new_empty(b, t, h, 1)  # dy_t · v_t, the bonus's gradient factor
    adj = torch.zeros_like(s0) if ds is None else ds.to(s0.dtype)
    for gi in reversed(range(len(starts))):
        t0 = starts[gi]
        t1 = min(t, t0 + group * L)
        (dyg,), ng = _to_chunks((dy,), t0, t1, L)
        e_prev, e_rest, e_last, s_in, intra, rg, kg, vg, kr, rq = saved[gi]
        rq_dy = rq.transpose(-1, -2) @ dyg  # what each chunk's outputs ask of the state entering it
        g_out = rq_dy.new_empty(rq_dy.shape)  # (B, H, G, N, V), written in place
        g_out[:, :, ng - 1] = adj
        for i in reversed(range(ng)):  # the adjoint: gradient with respect to the state leaving each chunk
            prev = g_out[:, :, i - 1] if i > 0 else None
            adj = torch.addcmul(rq_dy[:, :, i], e_last[:, :, i, :, None], g_out[:, :, i], out=prev)
        d_r = dyg @ s_in.transpose(-1, -2)
        d_k = vg @ g_out.transpose(-1, -2)
        d_v = kr @ g_out
        if intra is not None and intra[0] == "one-reference":  # the masked product's three gradients
            _, kq, a = intra
            da = dyg @ vg.transpose(-1, -2)
            # its diagonal dy_t · v_t is the bonus's gradient factor p (the bonus's dv came with aᵀ dy below)
            p[:, t0:t1] = _from_chunks(da.diagonal(dim1=-2, dim2=-1).unsqueeze(-1), t1 - t0)
            da.mul_(_strictly_lower(L, r.device, r.dtype))
            d_r += da @ kq
            d_k += (da.transpose(-1, -2) @ rq) / e_last.unsqueeze(-2)
            d_v += a.transpose(-1, -2) @ dyg
            d_r *= e_prev
            d_k *= e_rest
        else:
            d_r *= e_prev
            d_k *= e_rest
            if intra is not None:
                _, factors, levels = intra
                dyadic_intra_backward(rg, kg, vg, None, dyg, d_r, d_k, d_v, factors=factors, kept=levels)
        drs[:, t0:t1], dks[:, t0:t1], dvv[:, t0:t1] = (_from_chunks(x, t1 - t0) for x in (d_r, d_k, d_v))
        if intra is None or intra[0] != "one-reference":  # the bonus term's p and dv, token by token
            p[:, t0:t1] = (v[:, t0:t1] * dy[:, t0:t1]).sum(-1, keepdim=True)
            dvv[:, t0:t1] += (r[:, t0:t1] * u * k[:, t0:t1]).sum(-1, keepdim=True) * dy[:, t0:t1]
    # dw from the state parts, with its sign folded: nc = -dC = k·dk - r_{+1}·dr_{+1} (- ds ⊙ S_T at the end)
    nc = torch.mul(k, dks)
    nc[:, :-1].addcmul_(r[:, 1:], drs[:, 1:], value=-1)
    if ds is not None:
        nc[:, -1] -= (ds.to(s_final.dtype) * s_final).sum(-1)
    # dw_i = sum_{j >= i} dC_j, summed from the end (a difference of forward sums would cancel in fp32)
    dw = nc.flip(1).cumsum_(1).flip(1).neg_()
    up = u * p  # the bonus term's gradients, added in place to the state parts
    du = torch.mul(r, k).mul_(p).sum((0, 1))
    dr = drs.addcmul_(k, up)
    dk = dks.addcmul_(r, up)
    return dr, dk, dvv, dw, du, adj


class _WKV6Chunked(torch.autograd.Function):
    """:func:`_wkv6_chunked_forward` with :func:`_wkv6_chunked_backward` as its gradient (first order)."""

    @staticmethod
    def forward(ctx, r, k, v, w, u, s0, L, scale):
        ctx.saved = []
        o, s = _wkv6_chunked_forward(r, k, v, w, u, s0, L, scale, ctx.saved)
        ctx.save_for_backward(r, k, v, w, u, s0, s)
        ctx.L, ctx.scale = L, scale
        return o, s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, ds):
        r, k, v, w, u, s0, s = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(r[..., :1]).expand(*r.shape[:3], v.shape[-1])
        grads = _wkv6_chunked_backward(r, k, v, w, u, s0, s, do.contiguous(), ds, ctx.L, ctx.scale, ctx.saved)
        return (*grads, None, None)


def wkv6(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None = None,
    backend: str = "auto",
    chunk_size: int = 32,
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
