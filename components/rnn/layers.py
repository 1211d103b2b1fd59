"""The building blocks several language backbones share: RMSNorm (plain and gated) with each reference's dtype
rule, the causal depthwise convolutions of the short-convolution mixers, RWKV's token shift, and a checked
integer size.

The backbones follow different reference implementations, and those differ in where they cast: fla and
state-spaces' Mamba-2 return a norm in the input's dtype, state-spaces' Mamba (v1) in the weight's, transformers'
Llama casts back to the input's dtype before the weight. These rules are kept as the ``cast`` argument of
:class:`RMSNorm` (not as copies of the class), so each backbone's results in bf16 stay those of its reference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CASTS = ("input", "weight", "llama")
GATE_ACTIVATIONS = ("swish", "silu", "sigmoid")


def exact_dim(dim: float, what: str) -> int:
    """``dim`` as an int; a size that is not a whole number (``d_model * expand_k`` = 76.8) is a ValueError naming
    ``what``."""
    if not math.isclose(dim, round(dim)):
        raise ValueError(f"{what} = {dim} is not an integer")
    return round(dim)


# -------------------------------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim (over groups of ``group_size`` channels if given), computed in at
    least float32, times the gain ``weight``.

    ``cast``, where the dtypes meet (identical in float32; in bf16 each backbone matches its reference's rounding):

    - ``"input"`` (fla, state-spaces' Mamba-2): normalised and multiplied by the weight in at least float32,
      returned in x's dtype;
    - ``"weight"`` (state-spaces' Mamba v1): computed in at least float32 and the weight's dtype, returned in the
      weight's dtype (a float32 residual stream comes out in the weights' dtype);
    - ``"llama"`` (transformers' Llama / Qwen2): normalised in at least float32 and cast back to x's dtype before
      the weight (the Llama order, so bf16 results match transformers').
    """

    def __init__(self, dim: int, eps: float, cast: str = "input", group_size: int | None = None):
        super().__init__()
        if cast not in CASTS:
            raise ValueError(f"unknown RMSNorm cast {cast!r}; known: {', '.join(CASTS)}")
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.cast, self.group_size = eps, cast, group_size

    def forward(self, x: Tensor) -> Tensor:
        if self.cast == "weight":
            ct = torch.promote_types(torch.promote_types(x.dtype, self.weight.dtype), torch.float32)
        else:
            ct = torch.promote_types(x.dtype, torch.float32)
        h = x.to(ct)
        if self.group_size is not None and self.group_size != h.shape[-1]:
            h = h.unflatten(-1, (-1, self.group_size))
            h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        else:
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.cast == "llama":
            return self.weight * h.to(x.dtype)
        return (h * self.weight.to(ct)).to(self.weight.dtype if self.cast == "weight" else x.dtype)

    def extra_repr(self) -> str:
        extra = (f", cast={self.cast}" if self.cast != "input" else "") + (
            f", group_size={self.group_size}" if self.group_size is not None else "")
        return f"{self.weight.shape[0]}, eps={self.eps}{extra}"


class GatedRMSNorm(RMSNorm):
    """An RMSNorm with a multiplicative gate ``act(gate)`` (act = swish (= silu) or sigmoid), in at least float32,
    returned in x's dtype.

    ``norm_before_gate=True`` is fla's ``FusedRMSNormGated``, ``rmsnorm(x) * act(gate)`` (GLA, Gated DeltaNet);
    ``False`` is state-spaces' Mamba-2 ``RMSNormGated``, ``rmsnorm(x * act(gate))`` (there per ``group_size``)."""

    def __init__(self, dim: int, eps: float, activation: str = "swish", norm_before_gate: bool = True,
                 cast: str = "input", group_size: int | None = None):
        super().__init__(dim, eps, cast, group_size)
        if activation not in GATE_ACTIVATIONS:
            raise ValueError(f"unknown gate activation {activation!r}; known: {', '.join(GATE_ACTIVATIONS)}")
        self.activation, self.norm_before_gate = activation, norm_before_gate

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:  # type: ignore[override]
        dt = torch.promote_types(x.dtype, torch.float32)
        act = torch.sigmoid if self.activation == "sigmoid" else F.silu
        if self.norm_before_gate:
            return (super().forward(x.to(dt)) * act(gate.to(dt))).to(x.dtype)
        return super().forward(x.to(dt) * act(gate.to(dt))).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, activation={self.activation}"
                + ("" if self.norm_before_gate else ", gate before norm"))


# ------------------------------------------------------------------------------------- causal convolutions


def causal_depthwise_conv(x: Tensor, prev: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Causal depthwise convolution of ``x`` (B, T, C) with ``weight`` (C, 1, W) (and ``bias``), the inputs before
    ``x`` being ``prev`` (B, >= W - 1, C) (only the newest W - 1 are read). Computed as a 2-D convolution of the
    channels-last (B, C, 1, W - 1 + T) view of the time-padded input: oneDNN's depthwise kernel reads and writes
    that layout directly, with no transposing copies (several times faster on a CPU core than conv1d on a
    (B, C, T) copy). Returns (B, T, C). (Mamba v1, Gated DeltaNet.)"""
    w = weight.shape[-1]
    xs = torch.cat([prev[:, prev.shape[1] - (w - 1):], x], 1)  # (B, W - 1 + T, C)
    y = F.conv2d(xs.transpose(1, 2).unsqueeze(2), weight.to(xs.dtype).unsqueeze(2),
                 None if bias is None else bias.to(xs.dtype), groups=x.shape[-1])
    return y.squeeze(2).transpose(1, 2)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None) -> tuple[Tensor, Tensor]:
    """Depthwise causal convolution over time. x (B, T, C), weight (C, 1, K), state (B, C, K - 1) = the previous
    K - 1 inputs (zeros at the start). Returns (out (B, T, C), new state). (Mamba-2.)

    The same function as :func:`causal_depthwise_conv` with the state in Mamba-2's (B, C, K - 1) layout, but
    computed by ``F.conv1d`` on a (B, C, K - 1 + T) copy: the two kernels round differently in the last bit, so
    each backbone keeps the one its results (and saved states) were made with."""
    b, t, c = x.shape
    k = weight.shape[-1]
    prev = x.new_zeros(b, c, k - 1) if state is None else state.to(x.dtype)
    seq = torch.cat([prev, x.transpose(1, 2)], -1)  # (B, C, K - 1 + T)
    out = F.conv1d(seq, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), groups=c)
    return out.transpose(1, 2), seq[:, :, seq.shape[-1] - (k - 1):]


# ------------------------------------------------------------------------------------------- token shift


def token_shift(x: Tensor, last: Tensor | None) -> Tensor:
    """x_{t-1} for every t of ``x`` (B, T, C), with the carried last token ``last`` (B, C) (zeros at the start) in
    front. (RWKV's time and channel mixes.)"""
    prev = x.new_zeros(x.shape[0], 1, x.shape[2]) if last is None else last[:, None].to(x.dtype)
    return torch.cat([prev, x[:, :-1]], 1)
