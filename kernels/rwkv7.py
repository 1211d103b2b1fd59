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
  unit-lower-triangular solve (the UT transform of the WY representation); only the state hand-over between
  chunks is a Python loop (one K x K by K x V product per chunk).
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
) -> tuple[Tensor, Tensor]:
    """Chunk-parallel WKV-7 (same result as :func:`wkv7_recurrent`, stable for any log decay <= 0).

    Inside a chunk of L tokens, with S_0 the incoming state, c_t the inclusive cumulative log decay (c_0 = 0) and
    u_t = a_t S_{t-1} the "read" rows, unrolling the recurrence gives

        S_t = diag(e^{c_t}) S_0 + sum_{s<=t} diag(e^{c_t - c_s}) (b_sᵀ u_s + k_sᵀ v_s)
        u_t = (a_t e^{c_{t-1}}) S_0 + sum_{s<t} [A_ab]_{ts} u_s + [A_ak]_{ts} v_s,
              [A_xy]_{ts} = sum_n x_t[n] y_s[n] e^{c_{t-1}[n] - c_s[n]}     (s < t)

    so U = (I - A_ab)^{-1} (W S_0 + A_ak V) = P S_0 + Q with W = a e^{c_prev}: one unit-lower-triangular solve per
    chunk, independent of S_0 (the UT transform). The chunk then maps S_0 to
    S_L = (diag(e^{c_L}) + B̃ᵀ P) S_0 + (B̃ᵀ Q + K̃ᵀ V) with B̃ = b e^{c_L - c}, K̃ = k e^{c_L - c}: only this
    affine map is applied sequentially, chunk by chunk. Outputs: Y = (r e^{c}) S_0 + A_rb U + A_rk V, with the
    inclusive (s <= t) pair weights e^{c_t - c_s}.

    Every decay factor has an exponent <= 0, and the pairwise differences c_t - c_s are summed directly over the
    tokens between s and t (not as a difference of two large cumulative sums), so strong decays (log decay -100 or
    less per token) neither overflow nor lose precision.
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

    def chunks(x: Tensor) -> Tensor:  # (B, T, H, D) -> (B, H, NC, L, D)
        return x.view(bs, nc, L, h, x.shape[-1]).permute(0, 3, 1, 2, 4)

    rc, wc, kc, vc, ac, bc = (chunks(x) for x in (r, w, k, v, a, b))
    c = wc.cumsum(3)  # c_t, inclusive, relative to the chunk start
    c_prev = F.pad(c[..., :-1, :], (0, 0, 1, 0))  # c_{t-1}: exactly the previous row (exclusive cumsum)

    # seg[t, s] = c_t - c_s = sum of w over tokens s+1..t (t >= s; 0 above the diagonal), (B, H, NC, L, L, K).
    strict = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
    seg = torch.where(strict[:, :, None], wc[..., :, None, :], 0).cumsum(-3)
    incl = seg.exp() * strict.logical_or(torch.eye(L, dtype=torch.bool, device=r.device))[:, :, None]
    excl = F.pad(seg[..., :-1, :, :], (0, 0, 0, 0, 1, 0)).exp() * strict[:, :, None]  # e^{c_{t-1} - c_s}, s < t

    def pairs(x: Tensor, decay: Tensor, y: Tensor) -> Tensor:  # sum_n x_t[n] decay[t, s, n] y_s[n]
        return torch.einsum("...tn,...tsn,...sn->...ts", x, decay, y)

    a_ab, a_ak = pairs(ac, excl, bc), pairs(ac, excl, kc)
    a_rb, a_rk = pairs(rc, incl, bc), pairs(rc, incl, kc)

    # UT transform: [P | Q] = (I - A_ab)^{-1} [a e^{c_prev} | A_ak V].
    eye = torch.eye(L, dtype=ct, device=r.device)
    rhs = torch.cat([ac * c_prev.exp(), a_ak @ vc], -1)
    pq = torch.linalg.solve_triangular(eye - a_ab, rhs, upper=False, unitriangular=True)
    p, q = pq[..., :n], pq[..., n:]

    # The affine map each chunk applies to its incoming state: S -> G S + H.
    to_end = seg[..., -1, :, :].exp()  # e^{c_L - c_s}, (B, H, NC, L, K)
    b_end, k_end = bc * to_end, kc * to_end
    g = torch.diag_embed(c[..., -1, :].exp()) + b_end.transpose(-1, -2) @ p  # (B, H, NC, K, K)
    hh = b_end.transpose(-1, -2) @ q + k_end.transpose(-1, -2) @ vc  # (B, H, NC, K, V)
    incoming = []
    for i in range(nc):  # the only sequential part: one cheap update per chunk
        incoming.append(s)
        s = g[:, :, i] @ s + hh[:, :, i]
    s_in = torch.stack(incoming, 2)  # (B, H, NC, K, V): state entering each chunk

    u = p @ s_in + q
    y = (rc * c.exp()) @ s_in + a_rb @ u + a_rk @ vc
    o = y.permute(0, 2, 3, 1, 4).reshape(bs, nc * L, h, dv)[:, :t]
    if scale != 1.0:
        o = o * scale
    return o.to(out_dtype), s


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
