"""RWKV-7 "Goose" (x070; Peng et al., 2025): a generalized-delta-rule RNN language model.

Parameter names and shapes follow BlinkDL's official checkpoints (``emb``, ``blocks.{i}.att.x_r``, ``att.w0``,
..., ``ln_out``, ``head``), so an official ``.pth`` loads directly (:meth:`RWKV7.from_checkpoint`); fla-hub's
Hugging Face layout (``model.layers.{i}.attn.r_proj``, ``w_lora.lora.0``, ...) is mapped on load. The time-mix
recurrence runs through :func:`aurora.kernels.rwkv7.wkv7` (chunked on CPU, fla's kernels on CUDA).

Per layer i, time mix on the normalised input x (x_{t-1} via token shift, dx = x_{t-1} - x, x_* = x + dx * x_*):

    r = W_r x_r,  k = W_k x_k,  v = W_v x_v
    log decay   = -exp(-softplus(-(w0 + tanh(x_w w1) w2)) - 0.5) = -exp(-1/2) * sigmoid(w0 + tanh(x_w w1) w2)
    a (in-context learning rate) = sigmoid(a0 + x_a a1 a2),   g = sigmoid(x_g g1) g2
    kk = normalize(k * k_k) per head,   k <- k * (1 + (a - 1) * k_a)
    v <- v + (v_first - v) * sigmoid(v0 + x_v v1 v2)   (layers > 0; v_first is layer 0's v: value residual)
    y = WKV7(r, log decay, k, v, a=-kk, b=kk*a),  out = W_o ((ln_x(y) + (r * k * r_k).sum_head * v) * g)

and the channel mix is ``value(relu(key(x + dx * x_k))^2)``; layer 0 first applies ``ln0`` to the embedding.

State per layer: ``(att_shift (B, C), wkv (B, H, N, N) [key, value], ffn_shift (B, C))``. (BlinkDL's ``rwkv``
package keeps the same three tensors with the wkv state transposed, [value, key].)

Official files also hold ``blocks.0.att.v0/v1/v2``, which RWKV-7 never uses (layer 0 has no value residual);
this model does not create them (no dead parameters), drops them on load and :func:`official_state_dict` puts
neutral ones back for tools that expect them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from aurora.components.rnn._hf import load_checked
from aurora.components.rnn._rwkv import (LayerState, RWKVLanguageModel, fla_to_official_names, official_to_fla_names,
                                         read_rwkv_checkpoint)
from aurora.components.rnn.layers import token_shift
from aurora.kernels.rwkv7 import BACKENDS, wkv7
from aurora.registry import RNN


LOG_DECAY_BOUND = -math.exp(-0.5)  # every RWKV-7 log decay lies in (LOG_DECAY_BOUND, 0)
UNUSED_LAYER0 = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def _lora_rank(d_model: int, factor: float) -> int:
    """The official LoRA size suggestion: factor * sqrt(C), rounded to a multiple of 32, at least 32."""
    return max(32, int(round(factor * d_model ** 0.5 / 32)) * 32)


def _ortho(x: Tensor, scale: float) -> None:
    """The official ``ortho_init``: orthogonal with gain scale * sqrt(rows / cols) for tall matrices."""
    rows, cols = x.shape
    nn.init.orthogonal_(x, gain=scale * (math.sqrt(rows / cols) if rows > cols else 1.0))


class TimeMix(nn.Module):
    def __init__(self, d_model: int, n_head: int, layer_id: int, n_layer: int, decay_lora: int, a_lora: int,
                 v_lora: int, gate_lora: int, ln_x_eps: float):
        super().__init__()
        c, h = d_model, n_head
        self.layer_id, self.n_head, self.head_size = layer_id, h, c // h
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, c)))
        self.w1, self.w2 = nn.Parameter(torch.zeros(c, decay_lora)), nn.Parameter(torch.zeros(decay_lora, c))
        self.a1, self.a2 = nn.Parameter(torch.zeros(c, a_lora)), nn.Parameter(torch.zeros(a_lora, c))
        if layer_id > 0:  # value residual towards layer 0's v
            self.v0 = nn.Parameter(torch.zeros(1, 1, c))
            self.v1, self.v2 = nn.Parameter(torch.zeros(c, v_lora)), nn.Parameter(torch.zeros(v_lora, c))
        self.g1, self.g2 = nn.Parameter(torch.zeros(c, gate_lora)), nn.Parameter(torch.zeros(gate_lora, c))
        self.r_k = nn.Parameter(torch.zeros(h, c // h))
        self.receptance = nn.Linear(c, c, bias=False)
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.output = nn.Linear(c, c, bias=False)
        self.ln_x = nn.GroupNorm(h, c, eps=ln_x_eps)
        self._init(n_layer)

    @torch.no_grad()
    def _init(self, n_layer: int) -> None:
        """The official RWKV-LM x070 initialisation (layer-dependent mixes, decay / a / v biases, LoRAs)."""
        c, n, i = self.x_r.shape[-1], self.head_size, self.layer_id
        r01 = i / max(1, n_layer - 1)
        r10 = 1.0 - i / n_layer
        ddd = (torch.arange(c) / c).view(1, 1, c)
        for name, p in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            getattr(self, name).copy_(1 - ddd.pow(p * r10))
        idx = torch.arange(c, dtype=torch.float32)
        linear = idx / max(1, c - 1) - 0.5
        zigzag = ((idx % n) - (n - 1) / 2) / max((n - 1) / 2, 1e-9)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (idx / max(1, c - 1)) ** (1 + r01 ** 0.3)
        self.w0.copy_((www + 0.5 + zigzag * 2.5).view(1, 1, c))  # 0.5 offsets the softplus
        self.a0.copy_((-0.19 + zigzag * 0.3 + linear * 0.4).view(1, 1, c))
        self.k_k.copy_((0.71 - linear * 0.1).view(1, 1, c))
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        lora_out = [self.w2, self.a2, self.g2]
        if i > 0:
            self.v0.copy_((0.73 - linear * 0.4).view(1, 1, c))
            lora_out.append(self.v2)
        for p in lora_out:  # w1, a1, v1, g1 stay zero
            _ortho(p, 0.1)
        bound = 0.5 / c ** 0.5
        self.receptance.weight.uniform_(-bound, bound)
        self.key.weight.uniform_(-0.1 * bound, 0.1 * bound)
        self.value.weight.uniform_(-bound, bound)
        self.output.weight.zero_()
        self.ln_x.weight.fill_(((1 + i) / n_layer) ** 0.7)  # the official layer-scaled group norm

    def forward(self, x: Tensor, shift: Tensor | None, wkv_state: Tensor | None, v_first: Tensor | None,
                backend: str, chunk_size: int):
        b, t, c = x.shape
        h, n = self.n_head, self.head_size
        dx = token_shift(x, shift) - x
        # fused forms of the official formulas (one kernel and one T x C buffer each instead of two or three):
        # x + dx * m as addcmul, bias + h @ W as linear with bias, v + (v_first - v) * s as lerp
        xr, xw, xk, xv, xa, xg = (torch.addcmul(x, dx, m) for m in (self.x_r, self.x_w, self.x_k, self.x_v,
                                                                       self.x_a, self.x_g))
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        raw_w = F.linear(torch.tanh(xw @ self.w1), self.w2.t(), self.w0.view(-1))
        a = torch.sigmoid(F.linear(xa @ self.a1, self.a2.t(), self.a0.view(-1)))
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(b, t, h, n), dim=-1)
        k = k * torch.addcmul(1 - self.k_a, a, self.k_a)  # k * (1 + (a - 1) * k_a)
        if self.layer_id == 0:
            v_first = v
        else:
            if v_first is None or v_first.shape != v.shape:
                raise ValueError(f"layer {self.layer_id} needs layer 0's values {tuple(v.shape)}, got "
                                 f"{None if v_first is None else tuple(v_first.shape)}")
            v = torch.lerp(v, v_first, torch.sigmoid(F.linear(xv @ self.v1, self.v2.t(), self.v0.view(-1))))
        # log decay = -exp(w) with the official w = -softplus(-raw) - 0.5, i.e. -exp(-1/2) * sigmoid(raw)
        log_w = LOG_DECAY_BOUND * torch.sigmoid(raw_w.to(torch.promote_types(raw_w.dtype, torch.float32)))
        a_h = a.view(b, t, h, n)
        y, wkv_state = wkv7(r.view(b, t, h, n), log_w.view(b, t, h, n), k.view(b, t, h, n), v.view(b, t, h, n),
                            -kk, kk * a_h, wkv_state, backend=backend, chunk_size=chunk_size,
                            decay_lower_bound=LOG_DECAY_BOUND)
        dt = torch.promote_types(y.dtype, torch.float32)  # group norm in at least fp32 (bf16 under autocast)
        y = F.group_norm(y.reshape(b * t, c).to(dt), h, self.ln_x.weight.to(dt), self.ln_x.bias.to(dt), self.ln_x.eps)
        y = y.view(b, t, h, n).to(x.dtype)
        # + the bonus (r * k * r_k).sum per head * v, as one addcmul
        y = torch.addcmul(y, (r.view(b, t, h, n) * k.view(b, t, h, n) * self.r_k).sum(-1, keepdim=True),
                          v.view(b, t, h, n)).view(b, t, c)
        return self.output(y * g), x[:, -1], wkv_state, v_first


class ChannelMix(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, layer_id: int, n_layer: int):
        super().__init__()
        self.x_k = nn.Parameter(torch.zeros(1, 1, d_model))
        self.key = nn.Linear(d_model, d_ffn, bias=False)
        self.value = nn.Linear(d_ffn, d_model, bias=False)
        with torch.no_grad():
            ddd = (torch.arange(d_model) / d_model).view(1, 1, d_model)
            self.x_k.copy_(1 - ddd.pow((1.0 - layer_id / n_layer) ** 4))
            nn.init.orthogonal_(self.key.weight, gain=(d_ffn / d_model) ** 0.5)
            nn.init.zeros_(self.value.weight)

    def forward(self, x: Tensor, shift: Tensor | None) -> tuple[Tensor, Tensor]:
        dx = token_shift(x, shift) - x
        h = self.key(torch.addcmul(x, dx, self.x_k))
        if torch.is_grad_enabled():
            h = torch.relu(h)
            return self.value(h * h), x[:, -1]  # relu(.)^2 (a product: pow is several times slower on the CPU)
        return self.value(h.relu_().square_()), x[:, -1]  # no autograd: the T x d_ffn buffer in place


class Block(nn.Module):
    def __init__(self, d_model, n_head, d_ffn, layer_id, n_layer, decay_lora, a_lora, v_lora, gate_lora,
                 norm_eps, ln_x_eps):
        super().__init__()
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(d_model, eps=norm_eps)
        self.ln1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.ln2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.att = TimeMix(d_model, n_head, layer_id, n_layer, decay_lora, a_lora, v_lora, gate_lora, ln_x_eps)
        self.ffn = ChannelMix(d_model, d_ffn, layer_id, n_layer)

    def forward(self, x: Tensor, state: LayerState | None, v_first: Tensor | None, backend: str, chunk_size: int):
        att_shift, wkv_state, ffn_shift = state if state is not None else (None, None, None)
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        a, att_shift, wkv_state, v_first = self.att(self.ln1(x), att_shift, wkv_state, v_first, backend, chunk_size)
        x = x + a
        f, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + f, (att_shift, wkv_state, ffn_shift), v_first


@RNN.register("rwkv7")
class RWKV7(RWKVLanguageModel):
    """RWKV-7 language model.

    ``d_ffn`` defaults to the official 4 * d_model; the LoRA ranks (decay, in-context learning rate, value
    residual, gate) to the official suggestions max(32, round(f * sqrt(d_model) / 32) * 32) with f = 2.5, 2.5,
    1.7, 5. ``norm_eps`` is the layer norms' epsilon, ``ln_x_eps`` the per-head group norm's (officially 64e-5).
    ``backend`` picks the WKV kernel (see :func:`aurora.kernels.rwkv7.wkv7`).
    """

    # the checkpoint formats from_checkpoint reads (what aurora convert --format accepts for this backbone)
    formats: tuple[str, ...] = ("official", "hf")
    # long prefills without autograd run in pieces of this many tokens (RecurrentLM.run_blocks: linear in T)
    prefill_piece: int | None = 1024

    def __init__(
        self,
        vocab_size: int = 65536,
        d_model: int = 768,
        n_layer: int = 12,
        head_size: int = 64,
        d_ffn: int | None = None,
        decay_lora: int | None = None,
        a_lora: int | None = None,
        v_lora: int | None = None,
        gate_lora: int | None = None,
        norm_eps: float = 1e-5,
        ln_x_eps: float = 64e-5,
        chunk_size: int = 16,
        backend: str = "auto",
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if d_model % head_size:
            raise ValueError(f"d_model {d_model} is not a multiple of head_size {head_size}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown wkv7 backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        self.vocab_size, self.d_model, self.n_layer = vocab_size, d_model, n_layer
        self.n_head = d_model // head_size
        self.chunk_size, self.backend, self.grad_checkpoint = chunk_size, backend, grad_checkpoint
        d_ffn = d_ffn or 4 * d_model
        decay_lora = decay_lora or _lora_rank(d_model, 2.5)
        a_lora = a_lora or _lora_rank(d_model, 2.5)
        v_lora = v_lora or _lora_rank(d_model, 1.7)
        gate_lora = gate_lora or _lora_rank(d_model, 5.0)
        self.emb = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, self.n_head, d_ffn, i, n_layer, decay_lora, a_lora, v_lora, gate_lora, norm_eps, ln_x_eps)
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

    def _run_blocks_once(self, blocks, embeds: Tensor, state: list[LayerState] | None, backend: str,
                         chunk_size: int) -> tuple[Tensor, list[LayerState]]:
        """All blocks over ``embeds`` (RecurrentLM.run_blocks calls this once, or per piece of a long no-grad
        prefill): layer 0's values ``v_first`` are per token, so each piece makes its own and pieces stay equal
        to one shot."""
        x, v_first, new_state = embeds, None, []
        for i, block in enumerate(blocks):
            s = state[i] if state is not None else None
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x, s, v_first = checkpoint(block, x, s, v_first, backend, chunk_size, use_reentrant=False)
            else:
                x, s, v_first = block(x, s, v_first, backend, chunk_size)
            new_state.append(s)
        return x, new_state

    # ------------------------------------------------------------------------------------------ checkpoints

    @staticmethod
    def config_from_state_dict(state_dict: dict[str, Any]) -> dict[str, int]:
        """The constructor sizes of an official-format state dict (vocab, width, depth, head, FFN, LoRA ranks)."""
        try:
            vocab_size, d_model = state_dict["emb.weight"].shape
            n_layer = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
            _, head_size = state_dict["blocks.0.att.r_k"].shape
            v1 = state_dict.get(f"blocks.{min(1, n_layer - 1)}.att.v1", state_dict.get("blocks.0.att.v1"))
            return dict(
                vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, head_size=head_size,
                d_ffn=state_dict["blocks.0.ffn.key.weight"].shape[0],
                decay_lora=state_dict["blocks.0.att.w1"].shape[1],
                a_lora=state_dict["blocks.0.att.a1"].shape[1],
                v_lora=None if v1 is None else v1.shape[1],
                gate_lora=state_dict["blocks.0.att.g1"].shape[1],
            )
        except (KeyError, ValueError, AttributeError) as e:
            raise ValueError(f"not an RWKV-7 (x070) checkpoint (missing or odd {e})") from None

    @classmethod
    def from_official(cls, state_dict: dict[str, Any], **kwargs: Any) -> "RWKV7":
        """Build a model of the official state dict's shape and load it; ``kwargs``: chunk_size, backend, ..."""
        model = cls(**cls.config_from_state_dict(state_dict), **kwargs)
        load_official_state_dict(model, state_dict)
        return model

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> "RWKV7":
        """Load a local checkpoint: BlinkDL's official ``.pth`` (also ``.pt`` / ``.bin`` / ``.safetensors`` with
        the official names), or fla-hub's Hugging Face format, as a directory with ``config.json`` and
        ``model.safetensors`` / ``pytorch_model.bin`` (sharded via their index files too) or such a weights
        file alone. ``kwargs`` go to the constructor (chunk_size, backend, grad_checkpoint, ...)."""
        state_dict, config, fla = read_rwkv_checkpoint(path, "RWKV-7")
        if fla:
            state_dict, fla_kwargs = fla_to_official(state_dict, config)
            kwargs = fla_kwargs | kwargs
        return cls.from_official(state_dict, **kwargs)

    def extra_repr(self) -> str:
        return f"vocab={self.vocab_size}, d_model={self.d_model}, layers={self.n_layer}, heads={self.n_head}"


def load_official_state_dict(model: RWKV7, state_dict: dict[str, Any]) -> None:
    """Load BlinkDL's official checkpoint layout; names the mismatched keys on failure.

    Layer 0's unused value-residual weights (``blocks.0.att.v0/v1/v2``, present in official files) are dropped.
    """
    state_dict = {k: v for k, v in state_dict.items() if k not in UNUSED_LAYER0}
    load_checked(model, state_dict, "RWKV-7")


def official_state_dict(model: RWKV7) -> dict[str, Tensor]:
    """The model's weights as an official ``.pth`` holds them: with neutral (never used) layer-0 value-residual
    entries ``blocks.0.att.v0/v1/v2``, which official tools expect to find."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    c, ref = model.d_model, sd["blocks.0.att.x_r"]
    v_lora = model.blocks[1].att.v1.shape[1] if model.n_layer > 1 else _lora_rank(c, 1.7)
    sd["blocks.0.att.v0"] = torch.ones(1, 1, c, dtype=ref.dtype)
    sd["blocks.0.att.v1"] = torch.zeros(c, v_lora, dtype=ref.dtype)
    sd["blocks.0.att.v2"] = torch.zeros(v_lora, c, dtype=ref.dtype)
    return sd


# ------------------------------------------------------------------------------------ fla-hub (HF) format

# fla name (after "model.layers.{i}.") -> (official name after "blocks.{i}.", how to convert the tensor: see
# _rwkv.TO_OFFICIAL); the shared loops of _rwkv (fla_to_official_names / official_to_fla_names) read these tables
_FLA_LAYER = {
    "pre_norm.weight": ("ln0.weight", "same"), "pre_norm.bias": ("ln0.bias", "same"),
    "attn_norm.weight": ("ln1.weight", "same"), "attn_norm.bias": ("ln1.bias", "same"),
    "ffn_norm.weight": ("ln2.weight", "same"), "ffn_norm.bias": ("ln2.bias", "same"),
    **{f"attn.x_{m}": (f"att.x_{m}", "same") for m in "rwkvag"},
    "attn.k_k": ("att.k_k", "row"), "attn.k_a": ("att.k_a", "row"), "attn.r_k": ("att.r_k", "same"),
    "attn.r_proj.weight": ("att.receptance.weight", "same"), "attn.k_proj.weight": ("att.key.weight", "same"),
    "attn.v_proj.weight": ("att.value.weight", "same"), "attn.o_proj.weight": ("att.output.weight", "same"),
    **{f"attn.{m}_lora.lora.0.weight": (f"att.{m}1", "t") for m in "wavg"},
    **{f"attn.{m}_lora.lora.2.weight": (f"att.{m}2", "t") for m in "wavg"},
    **{f"attn.{m}_lora.lora.2.bias": (f"att.{m}0", "row") for m in "wav"},
    "attn.g_norm.weight": ("att.ln_x.weight", "same"), "attn.g_norm.bias": ("att.ln_x.bias", "same"),
    "ffn.x_k": ("ffn.x_k", "row"), "ffn.key.weight": ("ffn.key.weight", "same"),
    "ffn.value.weight": ("ffn.value.weight", "same"),
}
_FLA_TOP = {"model.embeddings.weight": "emb.weight", "model.norm.weight": "ln_out.weight",
            "model.norm.bias": "ln_out.bias", "lm_head.weight": "head.weight"}


def _split_x_x(i: str, x: Tensor) -> dict[str, Tensor]:
    """fla's first RWKV7Attention version: the six token-shift mixes stacked in ``attn.x_x`` (6, C)."""
    return {f"blocks.{i}.att.x_{name}": x[j].reshape(1, 1, -1) for j, name in enumerate("rwkvag")}


def fla_to_official(state_dict: dict[str, Tensor], config: dict[str, Any] | None = None
                    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """fla-hub ``RWKV7ForCausalLM`` weights -> official names and shapes, plus constructor kwargs from its config
    (layer-norm eps, group-norm eps = head_dim * norm_eps). Unknown keys are kept as they are, so loading then
    names them as unexpected."""
    config = config or {}
    if config.get("model_type", "rwkv7") != "rwkv7":
        raise ValueError(f"config.json is for model_type {config.get('model_type')!r}, not 'rwkv7'")
    if config.get("hidden_act", "sqrelu") != "sqrelu":
        raise ValueError(f"only the squared-relu channel mix is RWKV-7; config has {config.get('hidden_act')!r}")
    hidden = config.get("hidden_size")
    value_dim = config.get("value_dim")
    if hidden is not None and value_dim is not None and any(
            d != hidden for d in (value_dim if isinstance(value_dim, list) else [value_dim])):
        raise ValueError(f"value_dim {value_dim} != hidden_size {hidden} is not supported")
    out = fla_to_official_names(state_dict, _FLA_LAYER, _FLA_TOP, {"attn.x_x": _split_x_x},
                                config.get("tie_word_embeddings"))
    kwargs: dict[str, Any] = {}
    if "norm_eps" in config:
        kwargs["norm_eps"] = config["norm_eps"]
        head_dim = config.get("head_dim") or (hidden // config["num_heads"] if config.get("num_heads") else 64)
        kwargs["ln_x_eps"] = head_dim * config["norm_eps"]
    return out, kwargs


def to_fla_state_dict(model: RWKV7) -> dict[str, Tensor]:
    """The model's weights under fla-hub's ``RWKV7ForCausalLM`` names and shapes (the inverse of the mapping
    :meth:`RWKV7.from_checkpoint` applies)."""
    return official_to_fla_names({k: v.detach() for k, v in model.state_dict().items()}, _FLA_LAYER, _FLA_TOP)
