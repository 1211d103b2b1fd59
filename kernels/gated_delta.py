"""The gated delta rule (Gated DeltaNet, Yang, Kautz & Hatamizadeh 2024) in three forms behind one dispatch.

Layout (as fla's kernels): q, k (B, T, H, K); v (B, T, HV, V); per-head scalar log decay g (B, T, HV) (<= 0;
fla's layer uses ``-exp(A_log) * softplus(a + dt_bias)``) and write strength beta (B, T, HV) (sigmoid, in (0, 1),
or (0, 2) with negative eigenvalues); state S (B, HV, K, V) indexed [key, value]. With HV > H (grouped value
heads) value head j reads query / key head ``j // (HV / H)``. q and k come in as the layer makes them (fla's
layer L2-normalises them first). For each head:

    S_t = exp(g_t) (I - beta_t k_tᵀ k_t) S_{t-1} + beta_t k_tᵀ v_t
    o_t = scale * q_t S_t

- ``gated_delta_recurrent``: the step form, one token at a time (generation; the reference).
- ``gated_delta_chunked``: the training / prefill form on CPU (the WY / UT transform). Inside a chunk of L tokens
  with incoming state S0, the values the tokens actually write, ``d_t = beta_t (v_t - k_t exp(g_t) S_{t-1})``,
  solve one unit lower-triangular system ``(I + A) d = beta v - (beta exp(c) k) S0`` with
  ``A[t, s] = beta_t (k_t · k_s) exp(c_t - c_s)`` (s < t). ``T = (I + A)^-1`` comes from one small triangular
  solve per chunk, then ``U = T beta v`` and ``W = T beta exp(c) k`` are plain matrix products, and the outputs
  ``scale (q exp(c) S0 + QK d)`` (QK the decayed causal q kᵀ) are rewritten as ``M S0 + Y0`` with ``M`` and
  ``Y0`` built beforehand, so the loop over chunks is only three batched products each: ``d = U - W S0``,
  ``y = Y0 + M S0`` and the state update ``S = exp(c_L) S0 + sum_s exp(c_L - c_s) k_sᵀ d_s``. Chunks run in
  groups (bounded temporaries, memory flat in T without gradients). Every decay factor is the exponential of a
  directly summed segment of log decays (never a difference of two long sums): all exponents are <= 0, exact for
  very strong decays. The chunk size follows the head sizes (:func:`auto_chunk_size`): at fla's default sizes
  (heads of 256 x 512) the per-chunk state products dominate and chunks of 64 (fla's own size) are fastest,
  at heads of 64 x 64 chunks of 16.
- CUDA: fla's Triton kernels (``chunk_gated_delta_rule`` for T > 1, ``fused_recurrent_gated_delta_rule`` for
  T == 1), with the gate, beta and L2 norm already applied (the ``*_in_kernel`` options off).

``scale`` defaults to K ** -0.5 (fla's default). Arithmetic is float32 at least (float64 stays float64), and the
PyTorch forms run with autocast off so a bf16 autocast region cannot cast it down; the output comes back in q's
dtype, the state in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "chunked", "recurrent", "fla")


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _full_precision(fn):
    """Run a PyTorch form with autocast off: under a bf16 autocast region its matrix products (the triangular
    solve's right-hand sides, the state hand-over, the outputs) would otherwise drop to bf16 while the state is
    meant to stay float32."""

    @functools.wraps(fn)
    def run(q: Tensor, *args, **kwargs):
        with torch.autocast(q.device.type, enabled=False):
            return fn(q, *args, **kwargs)

    return run


def _check(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor | None) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must share one (B, T, H, K) shape; got {tuple(q.shape)}, {tuple(k.shape)}")
    b, t, h, n = q.shape
    if v.dim() != 4 or v.shape[:2] != (b, t) or v.shape[2] % h:
        raise ValueError(f"v must be (B, T, HV, V) = ({b}, {t}, HV, V) with HV a multiple of H = {h}; "
                         f"got {tuple(v.shape)}")
    hv = v.shape[2]
    if g.shape != (b, t, hv) or beta.shape != (b, t, hv):
        raise ValueError(f"g and beta must be (B, T, HV) = ({b}, {t}, {hv}); got {tuple(g.shape)}, "
                         f"{tuple(beta.shape)}")
    if state is not None and state.shape != (b, hv, n, v.shape[-1]):
        raise ValueError(f"state must be (B, HV, K, V) = ({b}, {hv}, {n}, {v.shape[-1]}); got {tuple(state.shape)}")


def _prepare(q, k, v, g, beta, state, scale):
    """Checks, compute dtype, grouped heads expanded (q, k to HV heads), default scale, zero state."""
    _check(q, k, v, g, beta, state)
    b, t, h, n = q.shape
    hv, dv = v.shape[2], v.shape[3]
    ct = _compute_dtype(q)
    q, k, v, g, beta = (x.to(ct) for x in (q, k, v, g, beta))
    if hv != h:
        q, k = (x.repeat_interleave(hv // h, dim=2) for x in (q, k))
    s = q.new_zeros(b, hv, n, dv) if state is None else state.to(ct)
    return q, k, v, g, beta, s, (n ** -0.5 if scale is None else scale)


@_full_precision
def gated_delta_recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-by-token gated delta rule. Returns (o (B, T, HV, V) in q's dtype, final state (B, HV, K, V))."""
    out_dtype = q.dtype
    q, k, v, g, beta, s, scale = _prepare(q, k, v, g, beta, state, scale)
    outs = []
    for i in range(q.shape[1]):
        s = g[:, i, :, None, None].exp() * s
        kt = k[:, i]  # (B, HV, K)
        write = beta[:, i, :, None] * (v[:, i] - torch.einsum("bhk,bhkv->bhv", kt, s))  # d_t
        s = s + kt[..., None] * write[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, i], s))
    o = torch.stack(outs, 1) if outs else v.new_zeros(v.shape)
    return (o * scale).to(out_dtype), s


def auto_chunk_size(k_dim: int, v_dim: int) -> int:
    """The CPU chunk size for heads of k_dim x v_dim: a power of two near sqrt(K V) / 4, within 16 .. 64.

    Work inside a chunk grows with L (L x L products per token), the state hand-over does not (K x V per token,
    but a Python step per chunk): measured on one core (T 2048-4096, process time), K = V = 64 is fastest at 16
    (2.2x faster than 64), 128 x 128 at 16-32, fla's default 256 x 512 at 64."""
    target = max(1, int((k_dim * v_dim) ** 0.5 / 4))
    return min(64, max(16, 1 << (target - 1).bit_length()))


@_full_precision
def gated_delta_chunked(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor | None = None,
    chunk_size: int | None = None, scale: float | None = None, max_group_elements: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunk-parallel gated delta rule (same result as :func:`gated_delta_recurrent`).

    ``chunk_size`` None picks :func:`auto_chunk_size` for the head sizes.

    Chunks run in groups of about ``max_group_elements`` (chunk tokens x heads x (K + V)) entries (default 2^21
    on CPU, 2^27 on CUDA): everything a group needs is built at once, then its chunks hand the state on one by
    one. Groups bound the temporaries (peak memory flat in T without gradients) and keep them in cache.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dtype = q.dtype
    q, k, v, g, beta, s, scale = _prepare(q, k, v, g, beta, state, scale)
    b, t, h, n = q.shape  # h: value heads from here on
    dv = v.shape[-1]
    if t == 0:
        return v.new_zeros(v.shape).to(out_dtype), s

    # Pad T to whole chunks: padded tokens have beta = 0 (write nothing) and log decay 0 (keep the state).
    L = min(chunk_size or auto_chunk_size(n, dv), t)
    nc = -(-t // L)
    pad = nc * L - t
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, 0, 0, pad)) for x in (g, beta))
    bh = b * h

    def chunks(x: Tensor) -> Tensor:  # (B, T, H, D) -> (NC, B, H, L, D), a view
        return x.reshape(b, nc, L, h, x.shape[-1]).permute(1, 0, 3, 2, 4)

    def group_of(x: Tensor, g0: int, g1: int) -> Tensor:  # chunks g0..g1 as (G, B * H, L, D), contiguous per chunk
        return x[g0:g1].reshape(g1 - g0, bh, L, x.shape[-1])

    qc, kc, vc, gc, bc = (chunks(x) for x in (q, k, v, g[..., None], beta[..., None]))
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    strict = causal.tril(-1)
    eye = torch.eye(L, dtype=q.dtype, device=q.device)
    if max_group_elements is None:
        max_group_elements = 1 << 27 if q.is_cuda else 1 << 21
    group = max(1, max_group_elements // (bh * L * (n + dv)))  # chunks per group
    s = s.reshape(bh, n, dv)
    # Without autograd every L x L temporary is scaled in place and the outputs are written group by group into
    # one buffer (no list of per-chunk outputs to stack); with it, the same products out of place.
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, g, beta, s))
    mul = (lambda x, y: x * y) if grad else (lambda x, y: x.mul_(y))
    exp = torch.exp if grad else torch.exp_
    o = None if grad else v.new_empty(b, nc, L, h, dv)
    ys = []
    for g0 in range(0, nc, group):
        g1 = min(nc, g0 + group)
        qg, kg, vg, gg, bg = (group_of(x, g0, g1) for x in (qc, kc, vc, gc, bc))
        gg = gg[..., 0]  # (G, BH, L); beta stays (G, BH, L, 1)
        # seg[t, s] = g_{s+1} + ... + g_t for s < t (0 on and above the diagonal); all log decays are <= 0, so
        # these direct sums are well conditioned (a difference of two cumulative sums would not be).
        decay = mul(exp((gg[..., :, None] * strict).cumsum(-2)), causal)  # exp(c_t - c_s) for s <= t, else 0
        c_exp = exp(gg.cumsum(-1)[..., None])  # (G, BH, L, 1): exp(g_1 + ... + g_t)
        rest = F.pad(gg.flip(-1).cumsum(-1).flip(-1)[..., 1:], (0, 1))[..., None]  # g_{s+1} + ... + g_L

        # The WY / UT transform: T = (I + A)^-1 by one unit lower-triangular solve per chunk (the solver reads only
        # the strictly lower part of A: its diagonal and the zero upper part of ``decay`` are never read, so no
        # mask), A[t, s] = beta_t (k_t . k_s) exp(c_t - c_s); then u = T beta v, w = T beta e^c k, and the chunk's
        # tokens write d = u - w S0. The L x L products are scaled in place (no mask or scale temporaries).
        a = mul(mul(kg @ kg.transpose(-1, -2), decay), bg)
        tinv = torch.linalg.solve_triangular(a, eye.expand_as(a), upper=False, unitriangular=True)
        u = tinv @ (bg * vg)  # (G, BH, L, V)
        w = tinv @ ((bg * c_exp) * kg)  # (G, BH, L, K)

        # Outputs y = scale (q e^c S0 + QK d), QK the decayed causal q k^T, i.e. y = m S0 + y0 with
        # m = scale (q e^c - QK w) and y0 = scale QK u: both built here, so a chunk's turn costs three products.
        qs = qg * scale
        qk = mul(qs @ kg.transpose(-1, -2), decay)  # (G, BH, L, L), s <= t, scale included
        m = qs * c_exp - qk @ w  # (G, BH, L, K)
        y0 = qk @ u  # (G, BH, L, V), completed chunk by chunk below
        k_out = (rest.exp() * kg).transpose(-1, -2)  # k_s as the end of its chunk sees it, (G, BH, K, L)
        chunk_decay = c_exp[..., -1:, :]  # (G, BH, 1, 1)
        for i in range(g1 - g0):  # the sequential part: three (B H)-batched products per chunk
            d = torch.baddbmm(u[i], w[i], s, alpha=-1)  # (BH, L, V): what the chunk's tokens write
            if grad:
                ys.append(torch.baddbmm(y0[i], m[i], s))
            else:
                y0[i].baddbmm_(m[i], s)  # the chunk's outputs, in place
            s = (chunk_decay[i] * s).baddbmm_(k_out[i], d)
        if not grad:
            o[:, g0:g1] = y0.view(g1 - g0, b, h, L, dv).permute(1, 0, 3, 2, 4)

    if grad:  # (NC, B H, L, V) -> (B, NC, L, H, V)
        o = torch.stack(ys, 0).view(nc, b, h, L, dv).permute(1, 0, 3, 2, 4)
    o = o.reshape(b, nc * L, h, dv)[:, :t]  # (B, NC, L, H, V) -> (B, T, H, V)
    return o.to(out_dtype), s.view(b, h, n, dv)


def gated_delta(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor | None = None,
    backend: str = "auto", chunk_size: int | None = None, scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One dispatch for the gated delta rule: (output in q's dtype, final state in float32, float64 for float64).

    ``backend``: ``auto`` (fla's kernels on CUDA; on CPU ``chunked`` for T > 1 and ``recurrent`` for T == 1),
    ``chunked``, ``recurrent`` or ``fla``. An empty sequence (T == 0) returns the state as it came in.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown gated delta backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    t = q.shape[1]
    if (backend == "fla" or (backend == "auto" and q.is_cuda)) and t > 0:
        return _fla_gated_delta(q, k, v, g, beta, state, scale)
    if backend == "recurrent" or (backend == "auto" and t <= 1):
        return gated_delta_recurrent(q, k, v, g, beta, state, scale)
    return gated_delta_chunked(q, k, v, g, beta, state, chunk_size, scale)


def _fla_gated_delta(q, k, v, g, beta, state, scale):
    """fla 0.6 convention: (B, T, H, K) inputs, g the log decay, beta after its sigmoid, state (B, HV, K, V)."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    _check(q, k, v, g, beta, state)
    init = None if state is None else state.float()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    fn = fused_recurrent_gated_delta_rule if q.shape[1] == 1 else chunk_gated_delta_rule
    k, v = k.to(q.dtype), v.to(q.dtype)  # the Triton kernels take q, k, v in one dtype
    o, s = fn(q, k, v, g=g.float(), beta=beta.to(q.dtype), scale=scale, initial_state=init,
              output_final_state=True)
    return o.to(q.dtype), s
