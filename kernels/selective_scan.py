"""The selective scan of Mamba (v1, Gu & Dao 2023), in three forms behind one dispatch.

Layout as mamba_ssm's ``selective_scan_fn`` (channels first, time last): ``u``, ``delta``, ``z`` (B, D, T);
``A`` (D, N) (already negative: Mamba uses ``-exp(A_log)``); input-dependent ``B`` and ``C`` (B, N, T); skip
``D`` (D,); ``delta_bias`` (D,); state ``h`` (B, D, N). With ``dt = softplus(delta + delta_bias)`` (the softplus
and the bias are optional), for every channel d and state index n:

    h_t[d, n] = exp(dt_t[d] * A[d, n]) * h_{t-1}[d, n] + dt_t[d] * B_t[n] * u_t[d]
    y_t[d]    = (sum_n C_t[n] * h_t[d, n] + D[d] * u_t[d]) * silu(z_t[d])

- ``selective_scan_recurrent``: the step form, one token at a time (generation; the reference).
- ``selective_scan_chunked``: the training / prefill form on CPU, a blocked scan (see its docstring). The
  tokens are cut into chunks laid out position-major, so one vectorised step advances every chunk of a group by
  one position: each chunk's end state from zero (``chunk_size`` steps), the hand-over of the state from chunk to
  chunk (one cheap step per chunk, with the chunk's total decay ``exp(A sum(dt))``), then every position's state
  from the true incoming state (``chunk_size`` steps again) and the outputs as one batched product. Every factor
  is a decay ``exp(dt A) <= 1`` multiplied exactly as in the step form, so it is exact for arbitrarily strong
  decays. (Mamba's decay differs per (channel, state) pair, so the intra-chunk matrix form of Mamba-2 / GLA
  would cost ``chunk_size`` times the scan's O(T D N) work.) Measured on one CPU core at Mamba-130M sizes
  (d_inner 1536, N 16, T 512): 0.08 s without gradients (the token loop 0.12 s), forward + backward 0.65 s
  (the token loop 1.3 s); at d_inner 512, T 4096, ~0.11 s a layer (the former diagonal-by-diagonal chunk
  matrix form: ~0.9 s).
- CUDA: mamba_ssm's kernels when ``import mamba_ssm`` works (``selective_scan_fn`` for T > 1,
  ``selective_state_update`` for T == 1). fla 0.6 ships no Mamba-1 scan of its own (its Mamba layer calls
  mamba_ssm), so without mamba_ssm CUDA tensors go through the chunked form above.

Arithmetic is float32 at least (float64 stays float64); the output comes back in u's dtype, the state in float32
(float64 for float64 inputs).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "chunked", "recurrent", "mamba_ssm")


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
           delta_bias: Tensor | None, state: Tensor | None) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, d_inner, time); got {tuple(u.shape)}")
    b, d, t = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape (B, D, T) = {(b, d, t)}; got {tuple(delta.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape (B, D, T) = {(b, d, t)}; got {tuple(z.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (D, N) with D = {d}; got {tuple(A.shape)}")
    n = A.shape[1]
    for name, x in (("B", B), ("C", C)):
        if x.shape != (b, n, t):
            raise ValueError(f"{name} must be (B, N, T) = {(b, n, t)} (input-dependent); got {tuple(x.shape)}")
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and x.shape != (d,):
            raise ValueError(f"{name} must be (D,) = ({d},); got {tuple(x.shape)}")
    if state is not None and state.shape != (b, d, n):
        raise ValueError(f"state must be (B, D, N) = {(b, d, n)}; got {tuple(state.shape)}")


def _full_precision(fn):
    """Run ``fn`` with autocast off for the first argument's device: the scan's exponentials, cumulative sums and
    contractions must stay in the compute dtype even inside a bf16 autocast region."""

    @functools.wraps(fn)
    def run(x: Tensor, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            return fn(x, *args, **kwargs)

    return run


def _time_step(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, ct: torch.dtype) -> Tensor:
    """dt = softplus(delta + delta_bias) in the compute dtype (the bias and the softplus are optional)."""
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[:, None]
    return F.softplus(dt) if delta_softplus else dt


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """y + D u, gated by silu(z), in the output dtype."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


@_full_precision
def selective_scan_recurrent(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False, state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-by-token selective scan. Returns (y (B, D, T) in u's dtype, final state (B, D, N))."""
    _check(u, delta, A, B, C, D, z, delta_bias, state)
    b, d, t = u.shape
    ct = _compute_dtype(u)
    dt = _time_step(delta, delta_bias, delta_softplus, ct)
    uc, A, B, C = u.to(ct), A.to(ct), B.to(ct), C.to(ct)
    h = uc.new_zeros(b, d, A.shape[1]) if state is None else state.to(ct)
    ys = []
    for i in range(t):
        h = torch.exp(dt[:, :, i, None] * A) * h + (dt[:, :, i] * uc[:, :, i])[:, :, None] * B[:, None, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    y = torch.stack(ys, -1) if ys else uc.new_zeros(b, d, 0)
    return _finish(y, uc, D, z, u.dtype), h


def _scan_positions(dA: Tensor, dBx: Tensor, h0: Tensor | None, keep_all: bool, grad: bool) -> Tensor:
    """``h_l = dA[l] * h_{l-1} + dBx[l]`` along the first dim from ``h_{-1} = h0`` (zero if None), every slice a
    whole batch of independent scans. Returns all ``h_l`` (``keep_all``) or only the last. Without autograd the
    steps write in place (``keep_all``: into ``dBx`` itself; no list to stack, no new buffer)."""
    if not grad and keep_all:  # overwrites dBx: entry l is read only by step l
        if h0 is not None:
            torch.addcmul(dBx[0], dA[0], h0, out=dBx[0])
        for i in range(1, dA.shape[0]):
            torch.addcmul(dBx[i], dA[i], dBx[i - 1], out=dBx[i])
        return dBx
    first = dBx[0] if h0 is None else torch.addcmul(dBx[0], dA[0], h0)
    if grad:
        hs = [first]
        for i in range(1, dA.shape[0]):
            hs.append(torch.addcmul(dBx[i], dA[i], hs[-1]))
        return torch.stack(hs) if keep_all else hs[-1]
    h = first.clone() if h0 is None else first
    for i in range(1, dA.shape[0]):
        torch.addcmul(dBx[i], dA[i], h, out=h)
    return h


@_full_precision
def selective_scan_chunked(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False, state: Tensor | None = None,
    chunk_size: int = 8, max_group_elements: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunk-parallel selective scan (same result as :func:`selective_scan_recurrent`, stable for any decay).

    A blocked scan. The tokens are cut into chunks of ``chunk_size`` and laid out position-major, (L, chunks, B, N,
    D), so that one vectorised step advances every chunk of a group by one position. Per group of chunks:

    1. the per-token factors ``dA = exp(dt A)`` (every exponent <= 0) and inputs ``dBx = dt u B``, all at once;
    2. each chunk's own end state from zero, ``L`` vectorised steps ``h = dA h + dBx``;
    3. the hand-over, one cheap step per chunk: ``h_in' = exp(A sum(dt)) h_in + end state`` (the chunk's total
       decay from its summed time steps, exponent <= 0);
    4. every position's state from the true incoming state, ``L`` vectorised steps again, and
       ``y_t = sum_n C_t[n] h_t[n]`` as one batched product.

    So a group costs ``2 L + chunks`` small Python steps and a few passes over its (L, chunks, B, D, N) entries,
    never a loop over single tokens, and every factor is a decay <= 1 exactly as the step form multiplies them
    (strong decays underflow to 0, nothing can overflow). Chunks run in groups of about ``max_group_elements``
    (B, D, L, N) entries (default 2^19 on CPU: the temporaries stay in cache, ~1.4x faster on one core than
    2^21, and peak memory is bounded and flat in T; 2^27 on CUDA).
    """
    _check(u, delta, A, B, C, D, z, delta_bias, state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, d, t = u.shape
    n = A.shape[1]
    ct = _compute_dtype(u)
    uc = u.to(ct)
    h = uc.new_zeros(b, d, n) if state is None else state.to(ct)
    if t == 0:
        return uc.new_zeros(b, d, 0).to(u.dtype), h

    dt = _time_step(delta, delta_bias, delta_softplus, ct)
    A = A.to(ct)
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad
                                           for x in (u, delta, A, B, C, delta_bias, state))
    # Pad T to whole chunks: padded tokens have dt = 0, so they add nothing and keep the state (decay exp(0) = 1).
    L = min(chunk_size, t)
    nc = -(-t // L)
    pad = nc * L - t

    def positions(x: Tensor) -> Tensor:  # (B, X, T) -> (L, NC, B, X), a view
        return (F.pad(x, (0, pad)) if pad else x).view(b, x.shape[1], nc, L).permute(3, 2, 0, 1)

    # The state is kept as (B, N, D) inside: D, the long axis, is the contiguous one of every (.., N, D) entry.
    dtc, dtuc, Bc, Cc = positions(dt), positions(dt * uc), positions(B.to(ct)), positions(C.to(ct))
    At = A.t().contiguous()  # (N, D)
    h = h.transpose(1, 2)
    if max_group_elements is None:
        max_group_elements = 1 << 27 if u.is_cuda else 1 << 19
    group = max(1, max_group_elements // max(1, b * d * L * n))  # chunks per vectorised group
    outs = []
    for g0 in range(0, nc, group):  # groups bound the temporaries; the chunks of a group run side by side
        g1 = min(nc, g0 + group)
        dtg = dtc[:, g0:g1].contiguous()[..., None, :]  # (L, G, B, 1, D)
        dA = (dtg * At).exp_()  # (L, G, B, N, D), every exponent <= 0
        dBx = dtuc[:, g0:g1].contiguous()[..., None, :] * Bc[:, g0:g1].contiguous()[..., None]
        ends = _scan_positions(dA, dBx, None, False, grad)  # (G, B, N, D): each chunk's end state from zero
        kept = (dtg.sum(0) * At).exp_()  # (G, B, N, D): how much of the incoming state survives a chunk
        incoming = []
        for i in range(g1 - g0):  # the hand-over: one cheap step per chunk
            incoming.append(h)
            h = torch.addcmul(ends[i], kept[i], h)
        states = _scan_positions(dA, dBx, torch.stack(incoming), True, grad)  # (L, G, B, N, D)
        outs.append((Cc[:, g0:g1, :, None, :] @ states)[..., 0, :])  # (L, G, B, D)

    # y comes back as a (B, D, T) view of a (B, T, D) tensor: the layout of u, delta and z when they are views of a
    # (B, T, channels) projection, as in the Mamba layer (no transposing copies on either side).
    y = torch.cat(outs, 1).permute(2, 1, 0, 3).reshape(b, nc * L, d)[:, :t].transpose(1, 2)
    return _finish(y, uc, D, z, u.dtype), h.transpose(1, 2).contiguous()


@_full_precision
def initial_state_response(
    dt: Tensor, A: Tensor, C: Tensor, state: Tensor, block_size: int = 256
) -> tuple[Tensor, Tensor]:
    """What a nonzero initial state adds to a scan that started from zero (the scan is linear in it).

    ``dt`` (B, D, T) the time steps after bias and softplus; returns ``(y_add (B, D, T), survive (B, D, N))``
    with ``y_add_t = sum_n C_t[n] exp(c_t[d, n]) h0[d, n]`` (to add before the D skip and the z gate) and
    ``survive = exp(c_T)`` (the final state gains ``survive * h0``), where ``c_t = sum_{s<=t} dt_s A``.
    Used to give mamba_ssm's ``selective_scan_fn``, which always starts from zero, an initial state. Runs over
    blocks of ``block_size`` tokens so the (B, D, block, N) decay tensor stays small.
    """
    ct = state.dtype
    A, C, dt = A.to(ct), C.to(ct), dt.to(ct)
    offset = torch.zeros_like(state)  # c at the end of the previous block
    ys = []
    for t0 in range(0, dt.shape[-1], block_size):
        c = offset[:, :, None] + (dt[:, :, t0:t0 + block_size, None] * A[:, None]).cumsum(2)  # (B, D, Tb, N)
        ys.append(torch.einsum("bdtn,bnt,bdn->bdt", c.exp(), C[:, :, t0:t0 + block_size], state))
        offset = c[:, :, -1]
    y = torch.cat(ys, -1) if ys else state.new_zeros(*state.shape[:2], 0)
    return y, offset.exp()


@functools.lru_cache(maxsize=None)
def mamba_ssm_available() -> bool:
    """Whether ``import mamba_ssm`` works (asked once per process)."""
    try:
        import mamba_ssm  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA extension
        return False
    return True


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False, state: Tensor | None = None,
    backend: str = "auto", chunk_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """One dispatch for the selective scan: (y in u's dtype, final state in float32, float64 for float64 inputs).

    ``backend``: ``auto`` (mamba_ssm's kernels for CUDA tensors when it imports, else ``chunked`` for T > 1 and
    ``recurrent`` for T <= 1), ``chunked``, ``recurrent`` or ``mamba_ssm``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    t = u.shape[-1]
    if backend == "mamba_ssm" or (backend == "auto" and u.is_cuda and u.dtype != torch.float64
                                  and mamba_ssm_available()):
        return _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state)
    if backend == "recurrent" or (backend == "auto" and t <= 1):
        return selective_scan_recurrent(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state)
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state, chunk_size)


def _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state):
    """mamba_ssm's CUDA kernels (A, D, delta_bias in float32, as its Mamba module passes them).

    T == 1 without gradients: the Triton ``selective_state_update`` (in place, on a float32 copy of the state).
    Otherwise ``selective_scan_fn``, which starts from a zero state; a given state is added exactly by linearity
    (:func:`initial_state_response`). That kernel does not back-propagate into its returned final state (only
    into the outputs), so train on whole sequences in one call with this backend.
    """
    if not u.is_cuda or not mamba_ssm_available():
        raise RuntimeError("the mamba_ssm backend needs CUDA tensors and an importable mamba_ssm; use "
                           "backend='chunked' or 'recurrent' (or 'auto')")
    _check(u, delta, A, B, C, D, z, delta_bias, state)
    b, d, t = u.shape
    A32 = A.float()
    D32 = None if D is None else D.float()
    bias32 = None if delta_bias is None else delta_bias.float()
    h0 = None if state is None else state.float()
    if t == 0:
        return u.new_zeros(b, d, 0), (u.new_zeros(b, d, A.shape[1], dtype=torch.float32) if h0 is None else h0)
    grads = torch.is_grad_enabled() and any(x is not None and x.requires_grad
                                            for x in (u, delta, A, B, C, D, z, delta_bias, state))
    if t == 1 and not grads:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update

        h = u.new_zeros(b, d, A.shape[1], dtype=torch.float32) if h0 is None else h0.clone()
        y = selective_state_update(h, u[..., 0], delta[..., 0], A32, B[..., 0], C[..., 0], D32,
                                   z=None if z is None else z[..., 0], dt_bias=bias32, dt_softplus=delta_softplus)
        return y[..., None].to(u.dtype), h

    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    y, h = selective_scan_fn(u, delta, A32, B, C, D32, z=z, delta_bias=bias32, delta_softplus=delta_softplus,
                             return_last_state=True)
    h = h.float()
    if h0 is not None:
        dt = _time_step(delta, delta_bias, delta_softplus, torch.float32)
        y_add, survive = initial_state_response(dt, A32, C, h0)
        if z is not None:
            y_add = y_add * F.silu(z.float())
        y = (y.float() + y_add).to(u.dtype)
        h = h + survive * h0
    return y, h
