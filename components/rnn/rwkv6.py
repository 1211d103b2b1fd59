"""RWKV-6 "Finch" (Peng et al., 2024): the paper's language model.

Parameter names and shapes follow BlinkDL's official checkpoints (``emb``, ``blocks.{i}.att.time_maa_x``, ...,
``ln_out``, ``head``), so an official ``.pth`` state dict loads with ``load_state_dict``; fla-hub's Hugging Face
layout (fla's ``RWKV6ForCausalLM``: ``model.layers.{i}.attn.x_proj``, ``w_proj.linear.lora``, ``bonus``, ...) is
mapped exactly on load (:meth:`RWKV6.from_checkpoint`) and back (:func:`to_fla_state_dict`,
:meth:`RWKV6.save_hf_checkpoint`). The time-mix recurrence runs through :func:`aurora.kernels.rwkv6.wkv6`
(chunked on CPU, fla's kernels on CUDA).

fla's model computes the same function as the official one, with one difference in a constant: its per-head
group norm (``g_norm``, officially ``ln_x`` with eps 64e-5 = 1e-5 * head_size_divisor**2) takes the config's
``norm_eps`` (1e-5 in fla-hub's configs), the same eps as its layer norms. An fla-hub checkpoint therefore loads
with ``ln_x_eps = norm_eps`` (pass ``ln_x_eps=64e-5`` to get the official constant instead).

State per layer: ``(att_shift (B, C), wkv (B, H, N, N), ffn_shift (B, C))`` — the last normalised input of the
time mix and of the channel mix (token shift) and the WKV matrix state.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.components.rnn._hf import load_checked
from aurora.components.rnn._rwkv import (LayerState, RWKVLanguageModel, fla_to_official_names, official_to_fla_names,
                                         read_rwkv_checkpoint)
from aurora.kernels.rwkv6 import BACKENDS, wkv6
from aurora.registry import RNN


def _shift_delta(x: Tensor, last: Tensor | None) -> Tensor:
    out = torch.empty_like(x)
    torch.sub(x[:, :-1], x[:, 1:], out=out[:, 1:])
    if last is None:
        torch.neg(x[:, 0], out=out[:, 0])
    else:
        torch.sub(last.to(x.dtype), x[:, 0], out=out[:, 0])
    return out


class _ShiftDelta(torch.autograd.Function):
    """x_{t-1} - x_t as one pass each way (autograd through a pad and a subtraction takes four and two tensors):
    the gradient for x_s is g_{s+1} - g_s (-g_T at the end), for the carried token g_1."""

    @staticmethod
    def forward(ctx, x: Tensor, last: Tensor | None) -> Tensor:
        ctx.last_dtype = None if last is None else last.dtype
        return _shift_delta(x, last)

    @staticmethod
    def backward(ctx, g: Tensor):
        g_x = torch.empty_like(g)
        torch.sub(g[:, 1:], g[:, :-1], out=g_x[:, :-1])
        torch.neg(g[:, -1], out=g_x[:, -1])
        g_last = g[:, 0].to(ctx.last_dtype) if ctx.needs_input_grad[1] else None  # False without a carried token
        return g_x, g_last


def shift_delta(x: Tensor, last: Tensor | None) -> Tensor:
    """x_{t-1} - x_t for every t of ``x`` (B, T, C) (the token shift's difference), with the carried last token
    ``last`` (B, C) in front (zeros at the start): one pass (its own backward when autograd records)."""
    if torch.is_grad_enabled() and (x.requires_grad or (last is not None and last.requires_grad)):
        return _ShiftDelta.apply(x, last)
    return _shift_delta(x, last)


class _KeySquaredReLU(torch.autograd.Function):
    """The channel mix's key and squared ReLU, relu(x Wᵀ) ** 2, as one Function: the ReLU runs in place on the
    product and is the one tensor kept; the backward is 2 relu(z) * grad (autograd through linear, relu and pow
    takes five elementwise passes and keeps three tensors)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        a = (x @ weight.t()).relu_()
        ctx.save_for_backward(x, weight, a)
        return a * a

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, a = ctx.saved_tensors
        g_z = torch.mul(grad, a).mul_(2.0)  # = (a + a) * grad exactly
        g_x = g_z @ weight if ctx.needs_input_grad[0] else None
        g_w = g_z.reshape(-1, g_z.shape[-1]).t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        return g_x, g_w


def key_sqrelu(x: Tensor, key: nn.Module) -> Tensor:
    """relu(key(x)) ** 2, the channel mix's key: one op (its own backward when autograd records) for a plain
    ``nn.Linear``; through the layer's own forward when it is wrapped (LoRA adapters) or autocast picks the dtypes."""
    weight = key.weight
    if type(key) is not nn.Linear or torch.is_autocast_enabled(x.device.type) or x.dtype != weight.dtype:
        return torch.relu(key(x)).square()
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _KeySquaredReLU.apply(x, weight)
    a = F.linear(x, weight).relu_()
    return a.mul_(a)


def _lora_products(lora: Tensor, w2: Tensor, maa: Tensor) -> Tensor:
    """z_j = maa_j + lora[:, j-th block] @ w2[j] for the five mixes, (5, N, C): five plain products on column blocks
    (a batched product of these thin matrices runs at half their rate on the CPU), each with its bias added by the
    product itself (addmm) into one preallocated tensor, unless autocast picks their dtype."""
    r = w2.shape[1]
    blocks = [lora[:, j * r:(j + 1) * r] for j in range(5)]
    if torch.is_autocast_enabled(lora.device.type) or not lora.dtype == w2.dtype == maa.dtype:
        return torch.stack([blk @ w for blk, w in zip(blocks, w2)]) + maa
    z = lora.new_empty(5, lora.shape[0], w2.shape[2])
    for j, blk in enumerate(blocks):
        torch.addmm(maa[j], blk, w2[j], out=z[j])
    return z


class _MixFive(torch.autograd.Function):
    """The five token-shift mixes x + dx * (maa_j + m_j), m_j = lora_j @ w2_j (x, dx (N, C); lora (N, 5R); w2
    (5, R, C); maa (5, 1, C)), returned as the w mix (N, C) and the k, v, r, g mixes (4, N, C). Its backward makes
    four passes over the (5, N, C) gradient (autograd through add and addcmul takes seven, one a multiplication by
    addcmul's value 1, and a cat of the two outputs' gradients) and the LoRA's products block by block."""

    @staticmethod
    def forward(ctx, x: Tensor, dx: Tensor, lora: Tensor, w2: Tensor, maa: Tensor) -> tuple[Tensor, Tensor]:
        z = _lora_products(lora, w2, maa)
        ctx.save_for_backward(dx, z, lora, w2)
        return torch.addcmul(x, dx, z[0]), torch.addcmul(x, dx, z[1:])

    @staticmethod
    def backward(ctx, g_w: Tensor | None, g_kvrg: Tensor | None):
        dx, z, lora, w2 = ctx.saved_tensors
        g_w = torch.zeros_like(dx) if g_w is None else g_w
        g_kvrg = torch.zeros_like(z[1:]) if g_kvrg is None else g_kvrg
        r = w2.shape[1]
        g_x = g_kvrg.sum(0).add_(g_w)
        g_dx = torch.mul(g_w, z[0])
        g_lora = lora.new_empty(lora.shape)
        g_w2, g_maa = torch.empty_like(w2), z.new_empty(5, 1, z.shape[2])
        g_m = torch.empty_like(dx)  # each mix's gradient in turn, in one buffer that stays in cache for its products
        for j in range(5):
            g_j = g_w if j == 0 else g_kvrg[j - 1]
            torch.mul(g_j, dx, out=g_m)
            if j:
                g_dx.addcmul_(g_j, z[j])
            g_lora[:, j * r:(j + 1) * r] = g_m @ w2[j].t()
            torch.mm(lora[:, j * r:(j + 1) * r].t(), g_m, out=g_w2[j])
            torch.sum(g_m, 0, keepdim=True, out=g_maa[j])
        return g_x, g_dx, g_lora, g_w2, g_maa


def mix_five(x: Tensor, dx: Tensor, lora: Tensor, w2: Tensor, maa: Tensor) -> tuple[Tensor, Tensor]:
    """x + dx * (maa_j + lora_j @ w2_j) for the five mixes (see :class:`_MixFive`): (w mix (N, C), k/v/r/g mixes
    (4, N, C))."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, dx, lora, w2, maa)):
        return _MixFive.apply(x, dx, lora, w2, maa)
    z = _lora_products(lora, w2, maa)
    if z.dtype != torch.promote_types(x.dtype, dx.dtype):  # autocast picked z's dtype
        return torch.addcmul(x, dx, z[0]), torch.addcmul(x, dx, z[1:])
    # nothing keeps z without autograd: the mixes overwrite it (no fresh 4 x N x C tensor)
    return torch.addcmul(x, dx, z[0], out=z[0]), torch.addcmul(x, dx, z[1:], out=z[1:])


class TimeMix(nn.Module):
    def __init__(self, d_model: int, n_head: int, layer_id: int, n_layer: int, mix_lora: int, decay_lora: int,
                 ln_x_eps: float = 64e-5):
        super().__init__()
        c, h = d_model, n_head
        self.n_head, self.head_size = h, c // h
        self.time_maa_x = nn.Parameter(torch.zeros(1, 1, c))
        self.time_maa_w = nn.Parameter(torch.zeros(1, 1, c))
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, c))
        self.time_maa_v = nn.Parameter(torch.zeros(1, 1, c))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, c))
        self.time_maa_g = nn.Parameter(torch.zeros(1, 1, c))
        self.time_maa_w1 = nn.Parameter(torch.zeros(c, 5 * mix_lora))
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, mix_lora, c))
        self.time_decay = nn.Parameter(torch.zeros(1, 1, c))
        self.time_decay_w1 = nn.Parameter(torch.zeros(c, decay_lora))
        self.time_decay_w2 = nn.Parameter(torch.zeros(decay_lora, c))
        self.time_faaaa = nn.Parameter(torch.zeros(h, c // h))
        self.receptance = nn.Linear(c, c, bias=False)
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.gate = nn.Linear(c, c, bias=False)
        self.output = nn.Linear(c, c, bias=False)
        self.ln_x = nn.GroupNorm(h, c, eps=ln_x_eps)
        self._init(layer_id, n_layer)

    @torch.no_grad()
    def _init(self, layer_id: int, n_layer: int) -> None:
        """The official RWKV-LM v6 initialisation (layer-dependent token-shift mixes, decays and bonus)."""
        c = self.time_maa_x.shape[-1]
        r01 = layer_id / max(1, n_layer - 1)
        r10 = 1.0 - layer_id / n_layer
        ddd = (torch.arange(c) / c).view(1, 1, c)
        self.time_maa_x.copy_(1 - ddd.pow(r10))
        self.time_maa_w.copy_(1 - ddd.pow(r10))
        self.time_maa_k.copy_(1 - ddd.pow(r10))
        self.time_maa_v.copy_(1 - (ddd.pow(r10) + 0.3 * r01))
        self.time_maa_r.copy_(1 - ddd.pow(0.5 * r10))
        self.time_maa_g.copy_(1 - ddd.pow(0.5 * r10))
        self.time_maa_w2.uniform_(-0.01, 0.01)
        n = torch.arange(c)
        self.time_decay.copy_((-6 + 5 * (n / max(1, c - 1)) ** (0.7 + 1.3 * r01)).view(1, 1, c))
        self.time_decay_w2.uniform_(-0.01, 0.01)
        bonus = r01 * (1 - n / max(1, c - 1)) + ((n + 1) % 3 - 1) * 0.1
        self.time_faaaa.copy_(bonus.view(self.n_head, self.head_size))
        for lin, scale in ((self.receptance, 1.0), (self.key, 0.1), (self.value, 1.0), (self.gate, 0.1)):
            nn.init.orthogonal_(lin.weight, gain=scale)
        nn.init.zeros_(self.output.weight)
        self.ln_x.weight.fill_(((1 + layer_id) / n_layer) ** 0.7)  # the official layer-scaled group norm

    def forward(self, x: Tensor, shift: Tensor | None, wkv_state: Tensor | None, backend: str, chunk_size: int):
        b, t, c = x.shape
        h, n = self.n_head, self.head_size
        x2 = x.reshape(b * t, c)
        dx = shift_delta(x, shift).view(b * t, c)
        # The five data-dependent mixes (w, k, v, r, g: the official column order) as one (5, B*T, C) tensor: one
        # addcmul for all of them instead of three elementwise ops each.
        lora = torch.tanh(torch.addcmul(x2, dx, self.time_maa_x.view(1, c)) @ self.time_maa_w1)
        maa = torch.cat([self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g])
        xw, xkvrg = mix_five(x2, dx, lora, self.time_maa_w2, maa)  # x + dx * (maa_j + m_j), j = w / k, v, r, g
        projections = (self.key, self.value, self.receptance, self.gate)
        if all(type(p) is nn.Linear for p in projections):  # k, v, r, g in one batched product (weights stacked)
            kvrg = torch.bmm(xkvrg, torch.stack([p.weight for p in projections]).transpose(1, 2)).unbind(0)
        else:  # wrapped layers (LoRA adapters): each through its own forward
            kvrg = [p(xj) for p, xj in zip(projections, xkvrg.unbind(0))]
        k, v, r, gate = (z.view(b, t, h, n) for z in kvrg)
        decay = self.time_decay.view(1, c) + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        log_w = -torch.exp(decay.float()).view(b, t, h, n)  # log of the per-channel decay exp(-exp(.))
        y, wkv_state = wkv6(r, k, v, log_w, self.time_faaaa, wkv_state, backend=backend, chunk_size=chunk_size)
        dt = torch.promote_types(y.dtype, torch.float32)  # group norm in at least fp32 (bf16 under autocast)
        # The per-head group norm as a layer norm over each head's N channels, then the per-channel affine: the
        # same function as F.group_norm, whose CPU kernels (2-D input) take about 1.5x longer forward + backward.
        y = F.layer_norm(y.reshape(b * t, h, n).to(dt), (n,), eps=self.ln_x.eps).view(b * t, c)
        y = torch.addcmul(self.ln_x.bias.to(dt), y, self.ln_x.weight.to(dt))
        y = y.to(x.dtype) * F.silu(gate.reshape(b * t, c))
        return self.output(y).view(b, t, c), x[:, -1], wkv_state


class ChannelMix(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, layer_id: int, n_layer: int):
        super().__init__()
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, d_model))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, d_model))
        self.key = nn.Linear(d_model, d_ffn, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_ffn, d_model, bias=False)
        with torch.no_grad():
            ddd = (torch.arange(d_model) / d_model).view(1, 1, d_model)
            r10 = 1.0 - layer_id / n_layer
            self.time_maa_k.copy_(1 - ddd.pow(r10))
            self.time_maa_r.copy_(1 - ddd.pow(r10))
            nn.init.orthogonal_(self.key.weight, gain=(d_ffn / d_model) ** 0.5)
            nn.init.zeros_(self.receptance.weight)
            nn.init.zeros_(self.value.weight)

    def forward(self, x: Tensor, shift: Tensor | None) -> tuple[Tensor, Tensor]:
        dx = shift_delta(x, shift)
        k = key_sqrelu(torch.addcmul(x, dx, self.time_maa_k), self.key)
        return torch.sigmoid(self.receptance(torch.addcmul(x, dx, self.time_maa_r))) * self.value(k), x[:, -1]


class Block(nn.Module):
    def __init__(self, d_model, n_head, d_ffn, layer_id, n_layer, mix_lora, decay_lora, norm_eps=1e-5,
                 ln_x_eps=64e-5):
        super().__init__()
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(d_model, eps=norm_eps)
        self.ln1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.ln2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.att = TimeMix(d_model, n_head, layer_id, n_layer, mix_lora, decay_lora, ln_x_eps)
        self.ffn = ChannelMix(d_model, d_ffn, layer_id, n_layer)

    def forward(self, x: Tensor, state: LayerState | None, backend: str, chunk_size: int):
        att_shift, wkv_state, ffn_shift = state if state is not None else (None, None, None)
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        a, att_shift, wkv_state = self.att(self.ln1(x), att_shift, wkv_state, backend, chunk_size)
        x = x + a
        f, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + f, (att_shift, wkv_state, ffn_shift)


@RNN.register("rwkv6")
class RWKV6(RWKVLanguageModel):
    """RWKV-6 language model.

    ``d_ffn`` defaults to the official int(3.5 * d_model) rounded down to 32; ``mix_lora`` / ``decay_lora`` (the
    token-shift and decay LoRA ranks) to the official 32 / 64, doubled from d_model 4096 on. ``norm_eps`` is the
    layer norms' epsilon, ``ln_x_eps`` the per-head group norm's (officially 64e-5; fla-hub checkpoints use
    their ``norm_eps``). ``backend`` picks the WKV kernel (see :func:`aurora.kernels.rwkv6.wkv6`); ``chunk_size``
    the tokens per chunk of its CPU chunked form (32: at head size 64, 0.76x the forward time of 16 at T = 1k, d_model
    512; at the demo's head size 32, as fast as 16 or faster).
    """

    # the checkpoint formats from_checkpoint reads (what aurora convert --format accepts for this backbone)
    formats: tuple[str, ...] = ("official", "hf")
    # long prefills without autograd run in pieces of this many tokens (RecurrentLM.run_blocks: linear in T)
    prefill_piece: int | None = 2048

    def __init__(
        self,
        vocab_size: int = 65536,
        d_model: int = 2048,
        n_layer: int = 24,
        head_size: int = 64,
        d_ffn: int | None = None,
        mix_lora: int | None = None,
        decay_lora: int | None = None,
        norm_eps: float = 1e-5,
        ln_x_eps: float = 64e-5,
        chunk_size: int = 32,
        backend: str = "auto",
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if d_model % head_size:
            raise ValueError(f"d_model {d_model} is not a multiple of head_size {head_size}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown wkv6 backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        self.vocab_size, self.d_model, self.n_layer = vocab_size, d_model, n_layer
        self.n_head = d_model // head_size
        self.norm_eps, self.ln_x_eps = norm_eps, ln_x_eps
        self.chunk_size, self.backend, self.grad_checkpoint = chunk_size, backend, grad_checkpoint
        d_ffn = d_ffn or int(d_model * 3.5) // 32 * 32
        mix_lora = mix_lora or (32 if d_model < 4096 else 64)
        decay_lora = decay_lora or (64 if d_model < 4096 else 128)
        self.emb = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, self.n_head, d_ffn, i, n_layer, mix_lora, decay_lora, norm_eps, ln_x_eps)
            for i in range(n_layer)
        )
        self.ln_out = nn.LayerNorm(d_model, eps=norm_eps)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.init_embedding_and_head()

    def forward(self, embeds: Tensor, state: list[LayerState] | None = None) -> tuple[Tensor, list[LayerState]]:
        self.check_input(embeds, state)
        if embeds.shape[1] == 0:
            return self.pass_through(embeds, state, self.ln_out)
        x, new_state = self.run_blocks(self.blocks, embeds, state, self.backend, self.chunk_size)
        return self.ln_out(x), new_state

    @staticmethod
    def config_from_state_dict(state_dict: dict[str, Any]) -> dict[str, int]:
        """The constructor sizes of an official-format checkpoint (vocab, width, depth, head and LoRA sizes)."""
        try:
            vocab_size, d_model = state_dict["emb.weight"].shape
            n_layer = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
            n_head, head_size = state_dict["blocks.0.att.time_faaaa"].shape
            return dict(
                vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, head_size=head_size,
                d_ffn=state_dict["blocks.0.ffn.key.weight"].shape[0],
                mix_lora=state_dict["blocks.0.att.time_maa_w2"].shape[1],
                decay_lora=state_dict["blocks.0.att.time_decay_w1"].shape[1],
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"not an official RWKV-6 checkpoint (missing or odd {e})") from None

    @classmethod
    def from_official(cls, state_dict: dict[str, Any], **kwargs: Any) -> "RWKV6":
        """Build a model of the checkpoint's shape and load it; ``kwargs``: chunk_size, backend, grad_checkpoint."""
        model = cls(**cls.config_from_state_dict(state_dict), **kwargs)
        load_official_state_dict(model, state_dict)
        return model

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> "RWKV6":
        """Load a local checkpoint: BlinkDL's official ``.pth`` (also ``.pt`` / ``.bin`` / ``.safetensors`` with
        the official names), the RWKV organisation's Hugging Face format (``Rwkv6ForCausalLM`` of
        ``modeling_rwkv6.py``, ``rwkv.blocks.N...``: :func:`rwkv_hf_to_official`; its code is never run), or
        fla-hub's Hugging Face format (fla's ``RWKV6ForCausalLM``), as a directory with
        ``config.json`` and ``model.safetensors`` / ``pytorch_model.bin`` (sharded via their index files too) or
        such a weights file alone (beside its ``config.json``, else fla's defaults). ``kwargs`` go to the
        constructor (chunk_size, backend, grad_checkpoint, ...) and override what the config implies."""
        state_dict, config, fla = read_rwkv_checkpoint(path, "RWKV-6")
        if fla:
            state_dict, fla_kwargs = fla_to_official(state_dict, config)
            kwargs = fla_kwargs | kwargs
        elif is_rwkv_hf(state_dict):
            from aurora.components.rnn._hf import checkpoint_folder, read_config

            config = config or read_config(checkpoint_folder(path))
            state_dict, hf_kwargs = rwkv_hf_to_official(state_dict, config)
            kwargs = hf_kwargs | kwargs
        try:
            return cls.from_official(state_dict, **kwargs)
        except ValueError as e:
            notes = []
            if config.get("model_type") not in (None, "rwkv6"):
                notes.append(f"its config.json is for model_type {config['model_type']!r}")
            unmapped = sorted({re.sub(r"\.\d+\.", ".N.", k) for k in state_dict
                               if k.startswith(("model.", "lm_head."))})
            if fla and unmapped and "unexpected:" not in str(e):
                notes.append(f"keys not in fla's RWKV-6 layout: {', '.join(unmapped[:8])}"
                             f"{' ...' if len(unmapped) > 8 else ''}")
            if notes:
                raise ValueError(f"{e} ({'; '.join(notes)})") from None
            raise

    def save_hf_checkpoint(self, directory: str | Path, exact: bool = True) -> Path:
        """Write fla-hub's layout: ``config.json`` + ``model.safetensors`` that fla's ``RWKV6ForCausalLM``
        (``from_pretrained``) and :meth:`from_checkpoint` load.

        fla's config has one ``norm_eps`` for the layer norms and the group norm; a model whose ``ln_x_eps``
        differs (the official 64e-5) is refused unless ``exact=False``, which writes ``norm_eps`` and so gives
        the group norm that eps in fla."""
        from safetensors.torch import save_file

        if exact and self.ln_x_eps != self.norm_eps:
            raise ValueError(f"fla's RWKV-6 uses norm_eps for its group norm too; this model has ln_x_eps "
                             f"{self.ln_x_eps} != norm_eps {self.norm_eps} (exact=False writes it anyway)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in to_fla_state_dict(self).items()}
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        (directory / "config.json").write_text(json.dumps(fla_config(self), indent=2) + "\n")
        return directory

    def extra_repr(self) -> str:
        return f"vocab={self.vocab_size}, d_model={self.d_model}, layers={self.n_layer}, heads={self.n_head}"


def load_official_state_dict(model: RWKV6, state_dict: dict[str, Any]) -> None:
    """Load BlinkDL's official checkpoint layout; names the mismatched keys on failure."""
    load_checked(model, state_dict, "RWKV-6")


# ------------------------------------------------------------------------------------ fla-hub (HF) format

# fla name (after "model.layers.{i}.") -> (official name after "blocks.{i}.", how to convert the tensor: see
# _rwkv.TO_OFFICIAL); the shared loops of _rwkv (fla_to_official_names / official_to_fla_names) read these tables
_FLA_LAYER = {
    "pre_norm.weight": ("ln0.weight", "same"), "pre_norm.bias": ("ln0.bias", "same"),
    "attn_norm.weight": ("ln1.weight", "same"), "attn_norm.bias": ("ln1.bias", "same"),
    "ffn_norm.weight": ("ln2.weight", "same"), "ffn_norm.bias": ("ln2.bias", "same"),
    "attn.x_proj.0.mu": ("att.time_maa_x", "row"),
    "attn.r_proj.linear.weight": ("att.receptance.weight", "same"),
    "attn.k_proj.linear.weight": ("att.key.weight", "same"),
    "attn.v_proj.linear.weight": ("att.value.weight", "same"),
    "attn.g_proj.linear.weight": ("att.gate.weight", "same"),
    "attn.o_proj.weight": ("att.output.weight", "same"),
    "attn.w_proj.linear.lora.0.weight": ("att.time_decay_w1", "t"),
    "attn.w_proj.linear.lora.2.weight": ("att.time_decay_w2", "t"),
    "attn.w_proj.linear.lora.2.bias": ("att.time_decay", "row"),
    "attn.bonus": ("att.time_faaaa", "same"),
    "attn.g_norm.weight": ("att.ln_x.weight", "same"), "attn.g_norm.bias": ("att.ln_x.bias", "same"),
    "ffn.key.mu": ("ffn.time_maa_k", "row"), "ffn.key.linear.weight": ("ffn.key.weight", "same"),
    "ffn.receptance.mu": ("ffn.time_maa_r", "row"),
    "ffn.receptance.linear.weight": ("ffn.receptance.weight", "same"),
    "ffn.value.weight": ("ffn.value.weight", "same"),
}
_FLA_TOP = {"model.embeddings.weight": "emb.weight", "model.norm.weight": "ln_out.weight",
            "model.norm.bias": "ln_out.bias", "lm_head.weight": "head.weight"}

# The five data-dependent token-shift mixes. fla stacks them (x_bias rows, the x_proj LoRA blocks) as r, w, k, v, g;
# the official time_maa_w1 columns / time_maa_w2 blocks are w, k, v, r, g.
_FLA_MIXES, _OFFICIAL_MIXES = "rwkvg", "wkvrg"
_FLA_OF_OFFICIAL = [_FLA_MIXES.index(m) for m in _OFFICIAL_MIXES]  # official slot j holds fla block [j]
_OFFICIAL_OF_FLA = [_OFFICIAL_MIXES.index(m) for m in _FLA_MIXES]
_STACKED = ("attn.x_bias", "attn.x_proj.0.linear.weight", "attn.x_proj.2.weight")


def _stacked_to_official(i: str, name: str, x: Tensor) -> dict[str, Tensor]:
    """fla's stacked token-shift tensors of layer ``i`` -> the official ones (reordered, transposed)."""
    key = f"model.layers.{i}.{name}"
    if name == "attn.x_bias":  # (5, C): the static mixes
        if x.dim() != 2 or x.shape[0] != 5:
            raise ValueError(f"{key} has shape {tuple(x.shape)}, expected (5, hidden_size)")
        return {f"blocks.{i}.att.time_maa_{m}": x[j].reshape(1, 1, -1) for j, m in enumerate(_FLA_MIXES)}
    if name == "attn.x_proj.0.linear.weight":  # (5R, C), fla's blocks -> time_maa_w1 (C, 5R), official blocks
        if x.dim() != 2 or x.shape[0] % 5:
            raise ValueError(f"{key} has shape {tuple(x.shape)}, expected (5 * proj_low_rank_dim, hidden_size)")
        r, c = x.shape[0] // 5, x.shape[1]
        w1 = x.reshape(5, r, c)[_FLA_OF_OFFICIAL].reshape(5 * r, c).t().contiguous()
        return {f"blocks.{i}.att.time_maa_w1": w1}
    # attn.x_proj.2.weight (C, 5R) -> time_maa_w2 (5, R, C)
    if x.dim() != 2 or x.shape[1] % 5:
        raise ValueError(f"{key} has shape {tuple(x.shape)}, expected (hidden_size, 5 * proj_low_rank_dim)")
    c, r = x.shape[0], x.shape[1] // 5
    return {f"blocks.{i}.att.time_maa_w2": x.reshape(c, 5, r).permute(1, 2, 0)[_FLA_OF_OFFICIAL].contiguous()}


def _check_fla_config(config: dict[str, Any]) -> None:
    """Refuse the RWKV6Config variants that are not this model, naming the field."""
    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"config.json {field}={config.get(field)!r}: {why}")

    if config.get("model_type", "rwkv6") != "rwkv6":
        raise ValueError(f"config.json is for model_type {config.get('model_type')!r}, not 'rwkv6'")
    if config.get("hidden_act", "sqrelu") != "sqrelu":
        raise bad("hidden_act", "only the squared-relu channel mix (sqrelu) is RWKV-6")
    for field in ("expand_k", "expand_v"):  # fla's default expand_k is 0.5: not the RWKV-6 of the paper
        if float(config.get(field, 1.0)) != 1.0:
            raise bad(field, "only key / value width = hidden_size (1.0) is supported")
    if not config.get("norm_first", True):
        raise bad("norm_first", "without it layer 0 has no pre-norm (official ln0); not supported")
    if config.get("attn"):
        raise bad("attn", "hybrid softmax-attention layers are not supported")


def fla_to_official(state_dict: dict[str, Tensor], config: dict[str, Any] | None = None
                    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """fla-hub ``RWKV6ForCausalLM`` weights -> official names and shapes, plus constructor kwargs from its config
    (``norm_eps`` for the layer norms and, as fla does, for the group norm). Unknown keys are kept as they are, so
    loading then names them as unexpected; config fields that are not this model, or that disagree with the
    weights, are refused by name."""
    config = config or {}
    _check_fla_config(config)
    stacked = {name: (lambda i, x, name=name: _stacked_to_official(i, name, x)) for name in _STACKED}
    out = fla_to_official_names(state_dict, _FLA_LAYER, _FLA_TOP, stacked, config.get("tie_word_embeddings"))
    if not config.get("norm_bias", True):  # fla's layer norms without bias: ours with a zero one
        for key in [k for k in out if re.fullmatch(r"blocks\.\d+\.ln[012]\.weight|ln_out\.weight", k)]:
            out.setdefault(key[:-len("weight")] + "bias", torch.zeros_like(out[key]))
    if config:
        _check_config_sizes(config, out)
    norm_eps = float(config.get("norm_eps", 1e-5))
    return out, {"norm_eps": norm_eps, "ln_x_eps": norm_eps}


def _check_config_sizes(config: dict[str, Any], official: dict[str, Tensor]) -> None:
    """The sizes config.json states must be those of the weights (fla would refuse to load them otherwise)."""
    try:
        sizes = RWKV6.config_from_state_dict(official)
    except ValueError:
        return  # loading names what is missing
    hidden_ratio = config.get("hidden_ratio") or 3.5
    expect = {
        "hidden_size": sizes["d_model"], "num_hidden_layers": sizes["n_layer"], "vocab_size": sizes["vocab_size"],
        "num_heads": sizes["d_model"] // sizes["head_size"], "proj_low_rank_dim": sizes["mix_lora"],
        "gate_low_rank_dim": sizes["decay_lora"],
        "intermediate_size": sizes["d_ffn"],
    }
    stated = dict(config)
    if stated.get("intermediate_size") is None and "hidden_size" in stated:  # fla: int(C * ratio) rounded up to 32
        stated["intermediate_size"] = 32 * -(-int(stated["hidden_size"] * hidden_ratio) // 32)
    wrong = [f"{f}={stated[f]} but the weights have {v}" for f, v in expect.items()
             if stated.get(f) is not None and stated[f] != v]
    if wrong:
        raise ValueError(f"config.json does not match its weights: {'; '.join(wrong)}")


def to_fla_state_dict(model: RWKV6) -> dict[str, Tensor]:
    """The model's weights under fla-hub's ``RWKV6ForCausalLM`` names and shapes (the inverse of the mapping
    :meth:`RWKV6.from_checkpoint` applies)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out = official_to_fla_names(sd, _FLA_LAYER, _FLA_TOP, strict=False)  # the stacked token-shift tensors below
    for i in range(model.n_layer):
        att = f"blocks.{i}.att."
        out[f"model.layers.{i}.attn.x_bias"] = torch.stack([sd[att + f"time_maa_{m}"].reshape(-1) for m in _FLA_MIXES])
        w1, w2 = sd[att + "time_maa_w1"], sd[att + "time_maa_w2"]  # (C, 5R), (5, R, C)
        c, r = w1.shape[0], w2.shape[1]
        out[f"model.layers.{i}.attn.x_proj.0.linear.weight"] = (
            w1.t().reshape(5, r, c)[_OFFICIAL_OF_FLA].reshape(5 * r, c).contiguous())
        out[f"model.layers.{i}.attn.x_proj.2.weight"] = (
            w2[_OFFICIAL_OF_FLA].permute(2, 0, 1).reshape(c, 5 * r).contiguous())
    return out


def fla_config(model: RWKV6) -> dict[str, Any]:
    """An fla ``RWKV6Config`` (``config.json``) describing the model."""
    att = model.blocks[0].att
    return dict(
        architectures=["RWKV6ForCausalLM"], model_type="rwkv6", attn_mode="chunk",
        vocab_size=model.vocab_size, hidden_size=model.d_model, num_hidden_layers=model.n_layer,
        num_heads=model.n_head, expand_k=1.0, expand_v=1.0, hidden_ratio=3.5,
        intermediate_size=model.blocks[0].ffn.key.weight.shape[0],
        proj_low_rank_dim=att.time_maa_w2.shape[1], gate_low_rank_dim=att.time_decay_w1.shape[1],
        hidden_act="sqrelu", norm_first=True, norm_bias=True, norm_eps=model.norm_eps, attn=None,
        tie_word_embeddings=False, fuse_norm=True, use_cache=True,
    )


# ------------------------------------------------------------------ the RWKV organisation's HF format

# ``Rwkv6ForCausalLM`` of the ``modeling_rwkv6.py`` that RWKV/v6-Finch-*-HF and RWKV/rwkv-6-world-* ship (remote
# code; also the language model of AuroraLong's released xtuner checkpoint). Its tensors have the official names
# and shapes under other module names: rwkv.embeddings / rwkv.blocks.{i}.{pre_ln, ln1, ln2, attention.*,
# feed_forward.*} / rwkv.ln_out / head. Its group norm eps is 1e-5 * head_size_divisor ** 2 (64e-5 by default,
# the official constant), its final norm nn.LayerNorm's default 1e-5.
_RWKV_HF_TOP = {"rwkv.embeddings.weight": "emb.weight", "rwkv.ln_out.weight": "ln_out.weight",
                "rwkv.ln_out.bias": "ln_out.bias", "head.weight": "head.weight"}
_RWKV_HF_BLOCK = re.compile(
    r"rwkv\.blocks\.(\d+)\.(?:(pre_ln|ln1|ln2)\.(weight|bias)|(attention)\.(time_maa_[xwkvrg]|time_maa_w[12]|"
    r"time_decay(?:_w[12])?|time_faaaa|(?:receptance|key|value|gate|output)\.weight|ln_x\.(?:weight|bias))|"
    r"(feed_forward)\.(time_maa_[kr]|(?:key|receptance|value)\.weight))")
_RWKV_HF_MODULE = {"pre_ln": "ln0", "ln1": "ln1", "ln2": "ln2", "attention": "att", "feed_forward": "ffn"}


def is_rwkv_hf(state_dict: dict[str, Any]) -> bool:
    """The RWKV organisation's Hugging Face layout (``rwkv.blocks.N...``, ``rwkv.embeddings.weight``)."""
    return any(k.startswith(("rwkv.blocks.", "rwkv.embeddings.")) for k in state_dict)


def rwkv_hf_to_official(state_dict: dict[str, Tensor], config: dict[str, Any] | None = None
                        ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``Rwkv6ForCausalLM`` (modeling_rwkv6.py) weights -> official names, plus the constructor kwargs its
    ``config.json`` implies (``norm_eps`` = layer_norm_epsilon, ``ln_x_eps`` = 1e-5 * head_size_divisor ** 2).
    Keys outside the layout are kept as they are, so loading names them as unexpected; config fields that are
    not this model, or disagree with the weights, are refused by name."""
    config = config or {}
    if config.get("model_type", "rwkv6") != "rwkv6":
        raise ValueError(f"config.json is for model_type {config.get('model_type')!r}, not 'rwkv6'")
    out: dict[str, Tensor] = {}
    for key, x in state_dict.items():
        m = _RWKV_HF_BLOCK.fullmatch(key)
        if key in _RWKV_HF_TOP:
            out[_RWKV_HF_TOP[key]] = x
        elif m:  # only the tensors modeling_rwkv6.py has: any other stays under its own name (named unexpected)
            module, leaf = next((m.group(j), m.group(j + 1)) for j in (2, 4, 6) if m.group(j))
            out[f"blocks.{m.group(1)}.{_RWKV_HF_MODULE[module]}.{leaf}"] = x
        else:
            out[key] = x
    if "head.weight" not in out and config.get("tie_word_embeddings") and "emb.weight" in out:
        out["head.weight"] = out["emb.weight"]
    norm_eps = float(config.get("layer_norm_epsilon", 1e-5))
    if norm_eps != 1e-5:  # its ln_out is nn.LayerNorm(hidden_size) with the default eps whatever the config says
        raise ValueError(f"config.json layer_norm_epsilon={norm_eps}: modeling_rwkv6's final norm keeps eps 1e-5, "
                         "ours uses one eps for every layer norm; only 1e-5 is supported")
    try:
        sizes = RWKV6.config_from_state_dict(out)
    except ValueError:
        sizes = None  # loading names what is missing
    if sizes and config:
        stated = {"hidden_size": sizes["d_model"], "attention_hidden_size": sizes["d_model"],
                  "num_hidden_layers": sizes["n_layer"], "vocab_size": sizes["vocab_size"],
                  "head_size": sizes["head_size"], "intermediate_size": sizes["d_ffn"]}
        wrong = [f"{f}={config[f]} but the weights have {v}" for f, v in stated.items() if config.get(f) is not None
                 and config[f] != v]
        if wrong:
            raise ValueError(f"config.json does not match its weights: {'; '.join(wrong)}")
    divisor = float(config.get("head_size_divisor", 8))
    return out, {"norm_eps": norm_eps, "ln_x_eps": 1e-5 * divisor ** 2}
