"""RWKV-6 "Finch" (Peng et al., 2024): the paper's language model.

Parameter names and shapes follow BlinkDL's official checkpoints (``emb``, ``blocks.{i}.att.time_maa_x``, ...,
``ln_out``, ``head``), so an official ``.pth`` state dict loads with ``load_state_dict``. The time-mix
recurrence runs through :func:`aurora.kernels.rwkv6.wkv6` (chunked on CPU, fla's kernels on CUDA).

State per layer: ``(att_shift (B, C), wkv (B, H, N, N), ffn_shift (B, C))`` — the last normalised input of the
time mix and of the channel mix (token shift) and the WKV matrix state.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from aurora.kernels.rwkv6 import BACKENDS, wkv6
from aurora.registry import RNN
from aurora.types import RecurrentLM

LayerState = tuple[Tensor, Tensor, Tensor]


def _shifted(x: Tensor, last: Tensor | None) -> Tensor:
    """x_{t-1} for every t, with the carried last token (zeros at the start) in front."""
    prev = x.new_zeros(x.shape[0], 1, x.shape[2]) if last is None else last[:, None].to(x.dtype)
    return torch.cat([prev, x[:, :-1]], 1)


class TimeMix(nn.Module):
    def __init__(self, d_model: int, n_head: int, layer_id: int, n_layer: int, mix_lora: int, decay_lora: int):
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
        self.ln_x = nn.GroupNorm(h, c, eps=64e-5)
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
        dx = _shifted(x, shift) - x
        lora = torch.tanh((x + dx * self.time_maa_x) @ self.time_maa_w1).view(b * t, 5, -1).transpose(0, 1)
        mw, mk, mv, mr, mg = torch.bmm(lora, self.time_maa_w2).view(5, b, t, c).unbind(0)
        xw = x + dx * (self.time_maa_w + mw)
        xk = x + dx * (self.time_maa_k + mk)
        xv = x + dx * (self.time_maa_v + mv)
        xr = x + dx * (self.time_maa_r + mr)
        xg = x + dx * (self.time_maa_g + mg)
        r = self.receptance(xr).view(b, t, h, n)
        k = self.key(xk).view(b, t, h, n)
        v = self.value(xv).view(b, t, h, n)
        g = F.silu(self.gate(xg))
        decay = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        log_w = -torch.exp(decay.float()).view(b, t, h, n)  # log of the per-channel decay exp(-exp(.))
        y, wkv_state = wkv6(r, k, v, log_w, self.time_faaaa, wkv_state, backend=backend, chunk_size=chunk_size)
        dt = torch.promote_types(y.dtype, torch.float32)  # group norm in at least fp32 (bf16 under autocast)
        y = F.group_norm(y.reshape(b * t, c).to(dt), h, self.ln_x.weight.to(dt), self.ln_x.bias.to(dt), self.ln_x.eps)
        y = y.view(b, t, c).to(x.dtype)
        return self.output(y * g), x[:, -1], wkv_state


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
        dx = _shifted(x, shift) - x
        k = torch.relu(self.key(x + dx * self.time_maa_k)) ** 2
        return torch.sigmoid(self.receptance(x + dx * self.time_maa_r)) * self.value(k), x[:, -1]


class Block(nn.Module):
    def __init__(self, d_model, n_head, d_ffn, layer_id, n_layer, mix_lora, decay_lora):
        super().__init__()
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(d_model)
        self.ln1 = nn.LayerNorm(d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.att = TimeMix(d_model, n_head, layer_id, n_layer, mix_lora, decay_lora)
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
class RWKV6(RecurrentLM):
    """RWKV-6 language model.

    ``d_ffn`` defaults to the official int(3.5 * d_model) rounded down to 32; ``mix_lora`` / ``decay_lora`` (the
    token-shift and decay LoRA ranks) to the official 32 / 64, doubled from d_model 4096 on. ``backend`` picks
    the WKV kernel (see :func:`aurora.kernels.rwkv6.wkv6`).
    """

    def __init__(
        self,
        vocab_size: int = 65536,
        d_model: int = 2048,
        n_layer: int = 24,
        head_size: int = 64,
        d_ffn: int | None = None,
        mix_lora: int | None = None,
        decay_lora: int | None = None,
        chunk_size: int = 16,
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
        self.chunk_size, self.backend, self.grad_checkpoint = chunk_size, backend, grad_checkpoint
        d_ffn = d_ffn or int(d_model * 3.5) // 32 * 32
        mix_lora = mix_lora or (32 if d_model < 4096 else 64)
        decay_lora = decay_lora or (64 if d_model < 4096 else 128)
        self.emb = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, self.n_head, d_ffn, i, n_layer, mix_lora, decay_lora) for i in range(n_layer)
        )
        self.ln_out = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        with torch.no_grad():
            nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
            gain = 0.5 * (vocab_size / d_model) ** 0.5 if vocab_size > d_model else 0.5
            nn.init.orthogonal_(self.head.weight, gain=gain)

    def embed(self, ids: Tensor) -> Tensor:
        return self.emb(ids)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.head(hidden)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> list[LayerState]:
        c, h, n = self.d_model, self.n_head, self.d_model // self.n_head
        wkv_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return [
            (torch.zeros(batch_size, c, device=device, dtype=dtype),
             torch.zeros(batch_size, h, n, n, device=device, dtype=wkv_dtype),
             torch.zeros(batch_size, c, device=device, dtype=dtype))
            for _ in range(self.n_layer)
        ]

    def forward(self, embeds: Tensor, state: list[LayerState] | None = None) -> tuple[Tensor, list[LayerState]]:
        if embeds.dim() != 3 or embeds.shape[-1] != self.d_model:
            raise ValueError(f"embeds must be (batch, time, {self.d_model}), got {tuple(embeds.shape)}")
        if state is not None and len(state) != self.n_layer:
            raise ValueError(f"state has {len(state)} layers, the model {self.n_layer}")
        if embeds.shape[1] == 0:  # nothing to read: the state passes through unchanged
            return self.ln_out(embeds), (state if state is not None else
                                         self.init_state(embeds.shape[0], embeds.device, embeds.dtype))
        x, new_state = embeds, []
        for i, block in enumerate(self.blocks):
            s = state[i] if state is not None else None
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x, s = checkpoint(block, x, s, self.backend, self.chunk_size, use_reentrant=False)
            else:
                x, s = block(x, s, self.backend, self.chunk_size)
            new_state.append(s)
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

    def extra_repr(self) -> str:
        return f"vocab={self.vocab_size}, d_model={self.d_model}, layers={self.n_layer}, heads={self.n_head}"


def load_official_state_dict(model: RWKV6, state_dict: dict[str, Any]) -> None:
    """Load BlinkDL's official checkpoint layout; names the mismatched keys on failure."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected),
                               ("wrong shape", [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in wrong]))
            if keys
        )
        raise ValueError(f"checkpoint does not fit this RWKV-6 ({model.extra_repr()}): {detail}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()})
