"""WKV-7: the time-mix recurrence of RWKV-7 ("Goose"), a generalized delta rule, in three forms behind one dispatch.

Layout (B, T, H, K) for r, w, k, a, b and (B, T, H, V) for v (as fla's kernels, not head-first); state S
(B, H, K, V) indexed [key, value] (fla's layout; BlinkDL's code keeps the transpose, [value, key]). ``w`` is the
LOG decay (<= 0). For each head, with row vectors r_t, w_t, k_t, a_t, b_t (K) and v_t (V):

    S_t = (diag(exp(w_t)) + b_tᵀ a_t) S_{t-1} + k_tᵀ v_t        y_t = scale * r_t S_t

i.e. the state is decayed, then ``a_t`` reads the OLD state (a_t S_{t-1}, a V-row) and ``b_t`` writes that read
back, then k_t v_t is added. In BlinkDL's [value, key] layout this is ``S_t = S_{t-1} (diag(w_t) + a_tᵀ b_t) +
v_tᵀ k_t``. RWKV-7 uses ``a = -kk`` and ``b = kk * a_lr`` (kk the normalised key, a_lr in (0, 1)): a decayed
delta rule that replaces a fraction a_lr of what the state holds along kk. The output reads the state AFTER the
update (there is no separate bonus term here; RWKV-7's ``r_k`` bonus is outside the kernel).

- ``wkv7_recurrent``: the step form, one token at a time (generation; the reference).
- ``wkv7_chunked``: the training / prefill form on CPU (see its docstring): inside a chunk a matrix form with a
  unit-lower-triangular solve (the UT transform of the WY representation), its decayed pair weights as plain
  matrix products of factors around a mid-chunk reference (an exact per-channel-segment form for chunks whose
  decay is too strong for that); only the state hand-over between chunks is a Python loop (two small batched
  products per chunk). ~10x faster than the former all-segments form (T 4096, 4 heads of 64, one core: 0.1 s).
- CUDA: fla's Triton kernels (``chunk_rwkv7`` for T > 1, ``fused_recurrent_rwkv7`` for T == 1).

Arithmetic is float32 at least (float64 stays float64); the output comes back in r's dtype, the state in
float32 (float64 for float64 inputs).
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
    """Run a PyTorch form with autocast off: its float32 arithmetic (state included) must stay float32."""

    @functools.wraps(fn)
    def run(r: Tensor, *args, **kwargs):
        with torch.autocast(r.device.type, enabled=False):
            return fn(r, *args, **kwargs)

    return run


def _check(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None) -> None:
    if r.dim() != 4:
        raise ValueError(f"r must be (B, T, H, K); got {tuple(r.shape)}")
    for name, x in (("w", w), ("k", k), ("a", a), ("b", b)):
        if x.shape != r.shape:
            raise ValueError(f"{name} must have r's (B, T, H, K) shape {tuple(r.shape)}; got {tuple(x.shape)}")
    bs, t, h, n = r.shape
    if v.dim() != 4 or v.shape[:3] != (bs, t, h):
        raise ValueError(f"v must be (B, T, H, V) = ({bs}, {t}, {h}, V); got {tuple(v.shape)}")
    if state is not None and state.shape != (bs, h, n, v.shape[-1]):
        raise ValueError(f"state must be (B, H, K, V) = ({bs}, {h}, {n}, {v.shape[-1]}); got {tuple(state.shape)}")


@_full_precision
def wkv7_recurrent(
    r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Token-by-token WKV-7. Returns (o (B, T, H, V) in r's dtype, final state (B, H, K, V))."""
    _check(r, w, k, v, a, b, state)
    bs, t, h, n = r.shape
    dv = v.shape[-1]
    ct, out_dtype = _compute_dtype(r), r.dtype
    r, w, k, v, a, b = (x.to(ct) for x in (r, w, k, v, a, b))
    s = r.new_zeros(bs, h, n, dv) if state is None else state.to(ct)
    decay = w.exp()
    ys = []
    for i in range(t):
        read = torch.einsum("bhk,bhkv->bhv", a[:, i], s)  # a_t S_{t-1}: what the state holds along a_t
        s = (decay[:, i, :, :, None] * s + b[:, i, :, :, None] * read[:, :, None, :]
             + k[:, i, :, :, None] * v[:, i, :, None, :])
        ys.append(torch.einsum("bhk,bhkv->bhv", r[:, i], s))
    o = torch.stack(ys, 1) if ys else r.new_zeros(bs, 0, h, dv)
    if scale != 1.0:
        o = o * scale
    return o.to(out_dtype), s


# The largest |exponent| the factorised pair weights of wkv7_chunked may use: e^20 ~ 5e8 stays far from float32's
# range and its reciprocal far from denormals, and the rounding of the cumulative log decays it multiplies (~|c| eps)
# stays small. Chunks whose log decay sums to less than -2 * this in some channel use the exact segment form.
SAFE_EXPONENT = 20.0


def _pair_weights_exact(w: Tensor, a: Tensor, r: Tensor, b: Tensor, k: Tensor, strict: Tensor,
                        causal: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A_ab, A_ak, A_rb, A_rk of :func:`wkv7_chunked` for chunks (N, L, K) of any decay, from the directly summed
    segments c_t - c_s (N, L, L, K): every exponent is <= 0 and exact however strong the decay; O(L^2 K) memory."""
    seg = torch.where(strict[:, :, None], w[..., :, None, :], 0).cumsum(-3)  # c_t - c_s for s < t, else 0
    incl = seg.exp() * causal[:, :, None]  # e^{c_t - c_s}, s <= t
    excl = F.pad(seg[..., :-1, :, :], (0, 0, 0, 0, 1, 0)).exp() * strict[:, :, None]  # e^{c_{t-1} - c_s}, s < t

    def pairs(x: Tensor, decay: Tensor, y: Tensor) -> Tensor:  # sum_n x_t[n] decay[t, s, n] y_s[n]
        return torch.einsum("...tn,...tsn,...sn->...ts", x, decay, y)

    return pairs(a, excl, b), pairs(a, excl, k), pairs(r, incl, b), pairs(r, incl, k)


@_full_precision
def wkv7_chunked(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None = None,
    chunk_size: int = 16,
    scale: float = 1.0,
    max_group_elements: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunk-parallel WKV-7 (same result as :func:`wkv7_recurrent`, stable for any log decay <= 0).

    Inside a chunk of L tokens, with S_0 the incoming state, c_t the inclusive cumulative log decay (c_0 = 0) and
    u_t = a_t S_{t-1} the "read" rows, unrolling the recurrence gives

        S_t = diag(e^{c_t}) S_0 + sum_{s<=t} diag(e^{c_t - c_s}) (b_sᵀ u_s + k_sᵀ v_s)
        u_t = (a_t e^{c_{t-1}}) S_0 + sum_{s<t} [A_ab]_{ts} u_s + [A_ak]_{ts} v_s,
              [A_xy]_{ts} = sum_n x_t[n] y_s[n] e^{c_{t-1}[n] - c_s[n]}     (s < t)

    so U = (I - A_ab)^{-1} (W S_0 + A_ak V) = P S_0 + Q with W = a e^{c_prev}: one unit-lower-triangular solve per
    chunk, independent of S_0 (the UT transform). The chunk then maps S_0 to
    S_L = (diag(e^{c_L}) + B̃ᵀ P) S_0 + (B̃ᵀ Q + K̃ᵀ V) with B̃ = b e^{c_L - c}, K̃ = k e^{c_L - c}, and its outputs
    are Y = (r e^{c}) S_0 + A_rb U + A_rk V = (r e^c + A_rb P) S_0 + (A_rb Q + A_rk V) with the inclusive (s <= t)
    pair weights e^{c_t - c_s}. Everything but the S_0 products is built for many chunks at once; the hand-over
    from chunk to chunk is two small batched products each (the outputs, then the next state).

    The pair weights are matrix products of factors around a per-channel reference m = c_L / 2:
    ``(x e^{c_t - m}) (y e^{m - c_s})ᵀ``, whose exponents lie within |c_L| / 2. That is exact (each term is the true
    one up to rounding) as long as nothing overflows, i.e. for chunks whose log decay sums to at least
    ``-2 * SAFE_EXPONENT`` in every channel (RWKV-7's decays, >= -0.61 per token, reach -39 over 64 tokens);
    chunks with stronger decay get the pair weights from directly summed segments instead (all exponents <= 0,
    exact for log decays of -100 per token or less). The other decay factors (e^{c_t}, e^{c_L - c_s}) have
    exponents <= 0 from direct prefix / suffix sums. Chunks run in groups of about ``max_group_elements`` entries
    (default 2^21 on CPU: bounded, cache-sized temporaries; 2^27 on CUDA).
    """
    _check(r, w, k, v, a, b, state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bs, t, h, n = r.shape
    dv = v.shape[-1]
    ct, out_dtype = _compute_dtype(r), r.dtype
    r, w, k, v, a, b = (x.to(ct) for x in (r, w, k, v, a, b))
    s = r.new_zeros(bs, h, n, dv) if state is None else state.to(ct)
    if t == 0:
        return r.new_zeros(bs, 0, h, dv).to(out_dtype), s

    # Pad T to whole chunks: padded tokens have log decay 0 and k = a = b = 0 (identity map on the state), r = 0.
    L = min(chunk_size, t)
    nc = -(-t // L)
    pad = nc * L - t
    if pad:
        r, w, k, v, a, b = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (r, w, k, v, a, b))
    bh = bs * h

    def chunks(x: Tensor) -> Tensor:  # (B, T, H, D) -> (NC, B, H, L, D), a view
        return x.reshape(bs, nc, L, h, x.shape[-1]).permute(1, 0, 3, 2, 4)

    rc, wc, kc, vc, ac, bc = (chunks(x) for x in (r, w, k, v, a, b))
    causal = torch.ones(L, L, dtype=torch.bool, device=r.device).tril()
    strict = causal.tril(-1)
    eye = torch.eye(L, dtype=ct, device=r.device)
    if max_group_elements is None:
        max_group_elements = 1 << 27 if r.is_cuda else 1 << 21
    group = max(1, max_group_elements // (bh * (L * (n + dv) + n * (n + dv))))  # chunks per group
    bound = SAFE_EXPONENT
    s = s.reshape(bh, n, dv)
    outs = []
    for g0 in range(0, nc, group):
        g1 = min(nc, g0 + group)
        # (G, B * H, L, K or V): copies of this group's chunks only, each chunk's slice contiguous
        rg, wg, kg, vg, ag, bg = (x[g0:g1].reshape(g1 - g0, bh, L, x.shape[-1]) for x in (rc, wc, kc, vc, ac, bc))
        c = wg.cumsum(-2)  # c_t, inclusive, relative to the chunk start
        c_prev = F.pad(c[..., :-1, :], (0, 0, 1, 0))  # c_{t-1}: exactly the previous row (exclusive cumsum)
        rest = F.pad(wg.flip(-2).cumsum(-2).flip(-2)[..., 1:, :], (0, 0, 0, 1))  # c_L - c_s, summed directly
        total = c[..., -1:, :]  # c_L, (G, BH, 1, K)

        # Pair weights as products of factors around m = c_L / 2 (clamped only where a chunk's decay is too strong
        # for that; those chunks are recomputed exactly below, the clamp just keeps their discarded values finite).
        mid = 0.5 * total
        left_a = ag * (c_prev - mid).clamp(-bound, bound).exp()
        left_r = rg * (c - mid).clamp(-bound, bound).exp()
        inv = (mid - c).clamp(-bound, bound).exp()
        right_b, right_k = (bg * inv).transpose(-1, -2), (kg * inv).transpose(-1, -2)
        a_ab, a_ak = (left_a @ right_b) * strict, (left_a @ right_k) * strict
        a_rb, a_rk = (left_r @ right_b) * causal, (left_r @ right_k) * causal
        strong = (total[..., 0, :] < -2 * bound).any(-1).flatten()  # (G * BH,) chunks outside the safe range
        if strong.any():
            idx = strong.nonzero()[:, 0]
            exact = _pair_weights_exact(*(x.flatten(0, 1)[idx] for x in (wg, ag, rg, bg, kg)), strict, causal)
            a_ab, a_ak, a_rb, a_rk = (m.flatten(0, 1).index_put((idx,), e).view_as(m)
                                      for m, e in zip((a_ab, a_ak, a_rb, a_rk), exact))

        # UT transform: T = (I - A_ab)^{-1} (the solver reads the strictly lower part only), [P | Q] = T [W | A_ak V].
        tinv = torch.linalg.solve_triangular(-a_ab, eye.expand_as(a_ab), upper=False, unitriangular=True)
        p = tinv @ (ag * c_prev.exp())  # (G, BH, L, K)
        q = tinv @ (a_ak @ vg)  # (G, BH, L, V)

        # The affine map each chunk applies to its incoming state, S -> G S + H, and its outputs Y = M S + Y0.
        to_end = rest.exp()
        b_end, k_end = (bg * to_end).transpose(-1, -2), (kg * to_end).transpose(-1, -2)  # (G, BH, K, L)
        gmat = torch.diag_embed(total[..., 0, :].exp()) + b_end @ p  # (G, BH, K, K)
        hmat = b_end @ q + k_end @ vg  # (G, BH, K, V)
        mmat = (rg * c.exp() + a_rb @ p) * scale  # (G, BH, L, K)
        y0 = (a_rb @ q + a_rk @ vg) * scale  # (G, BH, L, V)
        for i in range(g1 - g0):  # the only sequential part: two (B H)-batched products per chunk
            outs.append(torch.baddbmm(y0[i], mmat[i], s).view(bs, h, L, dv).transpose(1, 2))  # (B, L, H, V)
            s = torch.baddbmm(hmat[i], gmat[i], s)

    o = torch.stack(outs, 1).view(bs, nc * L, h, dv)[:, :t]  # (B, NC, L, H, V) -> (B, T, H, V)
    return o.to(out_dtype), s.view(bs, h, n, dv)


def wkv7(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None = None,
    backend: str = "auto",
    chunk_size: int = 16,
    scale: float = 1.0,
    decay_lower_bound: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One dispatch for WKV-7: (output in r's dtype, final state in float32, float64 for float64 inputs).

    ``backend``: ``auto`` (fla's kernels on CUDA; on CPU ``chunked`` for T > 1 and ``recurrent`` for T == 1),
    ``chunked``, ``recurrent`` or ``fla``. ``decay_lower_bound``: a promise that every log decay is >= this
    (RWKV-7: -exp(-0.5)); fla uses it to pick its faster tensor-core chunk scheme. The CPU forms ignore it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown wkv7 backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    t = r.shape[1]
    if backend == "fla" or (backend == "auto" and r.is_cuda):
        return _fla_wkv7(r, w, k, v, a, b, state, scale, decay_lower_bound)
    if backend == "recurrent" or (backend == "auto" and t <= 1):
        return wkv7_recurrent(r, w, k, v, a, b, state, scale)
    return wkv7_chunked(r, w, k, v, a, b, state, chunk_size, scale)


def _fla_wkv7(r, w, k, v, a, b, state, scale, decay_lower_bound):
    """fla 0.6 convention: (B, T, H, K) inputs, ``w`` the log decay, state (B, H, K, V), explicit ``scale``."""
    from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7

    _check(r, w, k, v, a, b, state)
    init = None if state is None else state.float()
    k, v, a, b = (x.to(r.dtype) for x in (k, v, a, b))
    if r.shape[1] == 1:
        o, s = fused_recurrent_rwkv7(r, w.float(), k, v, a, b, scale=scale, initial_state=init,
                                     output_final_state=True)
    else:
        o, s = chunk_rwkv7(r, w.float(), k, v, a, b, scale=scale, initial_state=init, output_final_state=True,
                           lower_bound=decay_lower_bound)
    return o.to(r.dtype), s
