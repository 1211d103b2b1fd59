"""SSD: the state-space recurrence of Mamba-2 (Dao & Gu, 2024), in three forms behind one dispatch.

Layout (as mamba_ssm's kernels): ``x`` (B, T, H, P), step sizes ``dt`` (B, T, H), per-head ``A`` (H,) (negative:
``-exp(A_log)``), ``B`` and ``C`` (B, T, G, N) shared by the H / G consecutive heads of each group, skip ``D`` (H,),
state S (B, H, P, N). ``dt`` arrives final (after ``softplus(dt + dt_bias)`` and any clamping). For each head,
with the scalar log decay ``a_t = dt_t * A <= 0``:

    S_t = exp(a_t) S_{t-1} + dt_t x_t B_tᵀ          (P x N)
    y_t = S_t C_t + D x_t

The output reads the state *after* the current token (unlike WKV, there is no separate bonus term).

- ``ssd_recurrent``: the step form, one token at a time (generation; the reference).
- ``ssd_chunked``: the training / prefill form on CPU. Inside chunks of ``chunk_size`` tokens it is a masked
  matrix product ("attention" with weights ``(C_t · B_s) exp(a_{s+1} + ... + a_t)``); only the state hand-over
  between chunks is a Python loop. The decay sums are built directly as segment sums (never as a difference of
  two long cumulative sums, which loses precision), and every exponent is <= 0, so it stays exact for decays of
  -100 or less per token.
- CUDA: mamba_ssm's Triton kernels (``mamba_chunk_scan_combined``, ``selective_state_update`` for T == 1) when
  ``import mamba_ssm`` works, else fla's scalar-decay gated linear attention (``chunk_simple_gla`` /
  ``fused_recurrent_simple_gla`` with q = C, k = B, v = dt x, g = a, scale 1; SSD is exactly that), else ours.

Arithmetic is float32 at least (float64 stays float64); the output comes back in x's dtype, the state in float32
(float64 for float64 inputs).
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "chunked", "recurrent", "mamba_ssm", "fla")


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, state: Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be (B, T, H, P); got {tuple(x.shape)}")
    b, t, h, p = x.shape
    if dt.shape != (b, t, h):
        raise ValueError(f"dt must be (B, T, H) = ({b}, {t}, {h}); got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must be (H,) = ({h},); got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, t) or C.shape != B.shape:
        raise ValueError(f"B and C must share one (B, T, G, N) shape with (B, T) = ({b}, {t}); got "
                         f"{tuple(B.shape)}, {tuple(C.shape)}")
    g, n = B.shape[2:]
    if g == 0 or h % g:
        raise ValueError(f"the {h} heads do not split into {g} groups of B and C")
    if D is not None and D.shape != (h,):
        raise ValueError(f"D must be (H,) = ({h},); got {tuple(D.shape)}")
    if state is not None and state.shape != (b, h, p, n):
        raise ValueError(f"state must be (B, H, P, N) = ({b}, {h}, {p}, {n}); got {tuple(state.shape)}")


def _per_head(z: Tensor, h: int) -> Tensor:
    """(B, T, G, N) -> (B, T, H, N): each group's B or C for its H / G consecutive heads."""
    return z.repeat_interleave(h // z.shape[2], dim=2)


def ssd_recurrent(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token SSD. Returns (y (B, T, H, P) in x's dtype, final state (B, H, P, N))."""
    _check(x, dt, A, B, C, D, state)
    b, t, h, p = x.shape
    n = B.shape[-1]
    ct, out_dtype = _compute_dtype(x), x.dtype
    x, dt, A, B, C = (z.to(ct) for z in (x, dt, A, B, C))
    s = x.new_zeros(b, h, p, n) if state is None else state.to(ct)
    Bh, Ch = _per_head(B, h), _per_head(C, h)
    decay = (dt * A).exp()  # (B, T, H)
    xdt = x * dt[..., None]
    ys = []
    for i in range(t):
        s = decay[:, i, :, None, None] * s + xdt[:, i, :, :, None] * Bh[:, i, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", s, Ch[:, i]))
    y = torch.stack(ys, 1) if ys else x.new_zeros(b, 0, h, p)
    if D is not None:
        y = y + D.to(ct)[:, None] * x
    return y.to(out_dtype), s


def _segment_sums(a: Tensor) -> Tensor:
    """(..., L) -> (..., L, L) with [t, s] = a_{s+1} + ... + a_t for s <= t (0 on the diagonal), -inf above.

    Built as a cumulative sum down the columns of a strictly-lower-triangular copy of ``a``, so every entry is a
    sum of its own terms only (no cancellation between two long prefix sums).
    """
    L = a.shape[-1]
    strict = torch.ones(L, L, dtype=torch.bool, device=a.device).tril(-1)
    sums = a[..., :, None].expand(*a.shape, L).masked_fill(~strict, 0).cumsum(-2)
    return sums.masked_fill(~strict.logical_or(torch.eye(L, dtype=torch.bool, device=a.device)), float("-inf"))


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Chunk-parallel SSD (same result as :func:`ssd_recurrent`, stable for any decay <= 0)."""
    _check(x, dt, A, B, C, D, state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, t, h, p = x.shape
    g, n = B.shape[2:]
    k = h // g  # heads per group
    ct, out_dtype = _compute_dtype(x), x.dtype
    x, dt, A, B, C = (z.to(ct) for z in (x, dt, A, B, C))
    s = x.new_zeros(b, h, p, n) if state is None else state.to(ct)
    if t == 0:
        return x.new_zeros(b, 0, h, p).to(out_dtype), s

    skip = D.to(ct)[:, None] * x if D is not None else None
    a = dt * A  # (B, T, H) log decay per token and head, <= 0
    xdt = x * dt[..., None]  # the input as it enters the state

    # Pad T to whole chunks: padded tokens have dt = 0, so they add nothing and leave the state as it is.
    L = min(chunk_size, t)
    nc = -(-t // L)
    pad = nc * L - t
    if pad:
        xdt, B, C = (F.pad(z, (0, 0, 0, 0, 0, pad)) for z in (xdt, B, C))
        a = F.pad(a, (0, 0, 0, pad))

    # Chunked layouts; heads split as (group, head within group) so B and C are never copied per head.
    xc = xdt.view(b, nc, L, g, k, p).permute(0, 3, 4, 1, 2, 5)  # (B, G, K, NC, L, P)
    ac = a.view(b, nc, L, g, k).permute(0, 3, 4, 1, 2)  # (B, G, K, NC, L)
    Bc = B.view(b, nc, L, g, n).permute(0, 3, 1, 2, 4)  # (B, G, NC, L, N)
    Cc = C.view(b, nc, L, g, n).permute(0, 3, 1, 2, 4)

    seg = _segment_sums(ac)  # (B, G, K, NC, L, L): log decay from token s (exclusive) to t (inclusive)
    into = ac.cumsum(-1)  # (B, G, K, NC, L): log decay from the chunk start to t (inclusive)

    # Intra-chunk: y_t = sum_{s <= t} (C_t · B_s) exp(seg[t, s]) dt_s x_s.
    cb = Cc @ Bc.transpose(-1, -2)  # (B, G, NC, L, L), shared by the group's heads
    y = (cb[:, :, None] * seg.exp()) @ xc  # (B, G, K, NC, L, P)

    # What each chunk adds to the state (decayed to its end), and how much of the incoming state survives it.
    to_end = seg[..., -1, :].exp()  # (B, G, K, NC, L): exp(a_{s+1} + ... + a_L)
    chunk_add = torch.einsum("bgkclp,bgcln->bgkcpn", xc * to_end[..., None], Bc)  # (B, G, K, NC, P, N)
    chunk_decay = into[..., -1].exp()  # (B, G, K, NC)
    s = s.view(b, g, k, p, n)
    incoming = []
    for i in range(nc):  # the only sequential part: one cheap update per chunk
        incoming.append(s)
        s = chunk_decay[..., i, None, None] * s + chunk_add[:, :, :, i]
    s_in = torch.stack(incoming, 3)  # (B, G, K, NC, P, N): state entering each chunk

    # Inter-chunk: the incoming state, decayed to token t, read by C_t.
    y = y + into.exp()[..., None] * torch.einsum("bgcln,bgkcpn->bgkclp", Cc, s_in)

    y = y.permute(0, 3, 4, 1, 2, 5).reshape(b, nc * L, h, p)[:, :t]
    if skip is not None:
        y = y + skip
    return y.to(out_dtype), s.reshape(b, h, p, n)


def mamba_ssm_available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def fla_available() -> bool:
    return importlib.util.find_spec("fla") is not None


def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    state: Tensor | None = None,
    backend: str = "auto",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """One dispatch for SSD: (output in x's dtype, final state in float32, float64 for float64 inputs).

    ``backend``: ``auto`` (on CUDA mamba_ssm's kernels if it imports, else fla's, else ``chunked``; on CPU
    ``chunked`` for T > 1 and ``recurrent`` for T == 1), ``chunked``, ``recurrent``, ``mamba_ssm`` or ``fla``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown ssd backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    if backend == "auto" and x.is_cuda and x.dtype != torch.float64:
        backend = "mamba_ssm" if mamba_ssm_available() else "fla" if fla_available() else "auto"
    if backend in ("mamba_ssm", "fla"):
        if not (mamba_ssm_available() if backend == "mamba_ssm" else fla_available()):
            raise ValueError(f"ssd backend {backend!r} needs the {backend} package, which is not importable here")
        if not x.is_cuda:
            raise ValueError(f"ssd backend {backend!r} runs Triton kernels on CUDA tensors only; on CPU use "
                             "'chunked' or 'recurrent' (or 'auto')")
    if backend == "mamba_ssm":
        return _mamba_ssm_ssd(x, dt, A, B, C, D, state, chunk_size)
    if backend == "fla":
        return _fla_ssd(x, dt, A, B, C, D, state)
    if backend == "recurrent" or (backend == "auto" and x.shape[1] <= 1):
        return ssd_recurrent(x, dt, A, B, C, D, state)
    return ssd_chunked(x, dt, A, B, C, D, state, chunk_size)


def _mamba_ssm_ssd(x, dt, A, B, C, D, state, chunk_size):
    """mamba_ssm: the same layout and meaning; ``dt`` goes in final (no bias, no softplus inside)."""
    _check(x, dt, A, B, C, D, state)
    b, t, h, p = x.shape
    n = B.shape[-1]
    s = x.new_zeros(b, h, p, n, dtype=torch.float32) if state is None else state.float().clone()
    if t == 0:
        return x[:, :0], s
    if t == 1:  # the step kernel updates the state in place; tie_hdim layouts (stride 0) take its fast path
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update

        y = selective_state_update(
            s, x[:, 0], dt[:, 0, :, None].expand(b, h, p), A.float()[:, None, None].expand(h, p, n),
            B[:, 0], C[:, 0], D=None if D is None else D.float()[:, None].expand(h, p),
        )
        return y[:, None].to(x.dtype), s
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    y, s = mamba_chunk_scan_combined(x, dt, A.float(), B, C, chunk_size, D=None if D is None else D.float(),
                                     initial_states=s, return_final_states=True)
    return y.to(x.dtype), s.float()


def _fla_ssd(x, dt, A, B, C, D, state):
    """fla's scalar-decay GLA: q = C, k = B, v = dt x, g = dt A, scale 1, state (P, N) = its value-first layout."""
    from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

    _check(x, dt, A, B, C, D, state)
    b, t, h, p = x.shape
    n = B.shape[-1]
    s = None if state is None else state.float()
    if t == 0:
        return x[:, :0], (x.new_zeros(b, h, p, n, dtype=torch.float32) if s is None else s)
    v = (x.float() * dt.float()[..., None]).to(x.dtype)
    g = dt.float() * A.float()
    fn = fused_recurrent_simple_gla if t == 1 else chunk_simple_gla
    y, s = fn(_per_head(C, h).to(x.dtype), _per_head(B, h).to(x.dtype), v, g, scale=1.0, initial_state=s,
              output_final_state=True, state_v_first=True)
    if D is not None:
        y = y.float() + D.float()[:, None] * x.float()
    return y.to(x.dtype), s.float()
