"""The Transformer baseline: a Llama / Qwen2-style decoder behind the same protocol as the linear RNNs.

Each block is ``x + Attn(RMSNorm(x))`` then ``x + MLP(RMSNorm(x))``: causal self-attention with rotary position
embeddings (RoPE, base ``rope_theta``), grouped-query heads (``n_kv_head`` key/value heads shared by
``n_head // n_kv_head`` query heads each), optional biases on the q/k/v projections (Qwen2 has them) and a SwiGLU
MLP ``down(silu(gate(x)) * up(x))``. A final RMSNorm and the LM head (optionally tied to the embedding) follow.

State per layer: the key/value cache ``(k, v)``, each ``(B, n_kv_head, T_so_far, head_dim)`` with RoPE already
applied to ``k``. It grows with every token read: the memory cost the linear RNNs avoid, which is what this baseline
is here to show. Each cache is a view into a preallocated buffer that doubles when full (:func:`append_to_cache`),
so decoding appends in place (amortised constant work per token, as transformers' static cache) instead of
copying the whole cache per token. New tokens take the positions after the cached ones, so feeding a sequence in pieces (passing the
cache along) equals feeding it at once.

Parameter names are transformers' ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` names without the ``model.`` prefix
(``embed_tokens``, ``layers.{i}.input_layernorm``, ``layers.{i}.self_attn.{q,k,v,o}_proj``,
``layers.{i}.post_attention_layernorm``, ``layers.{i}.mlp.{gate,up,down}_proj``, ``norm``, ``lm_head``), so a
Hugging Face checkpoint directory loads by stripping that prefix (:meth:`Transformer.from_checkpoint`) and
:func:`save_hf_checkpoint` writes one transformers can read.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.components.rnn._hf import checkpoint_folder, load_checked, read_config, read_weights
from aurora.components.rnn.layers import RMSNorm
from aurora.registry import RNN
from aurora.types import RecurrentLM

LayerState = tuple[Tensor, Tensor]

BACKENDS = ("auto", "sdpa", "eager")
ROPE_TYPES = {"default": (), "linear": ("factor",),  # the supported RoPE types and the parameters each needs
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
ARCHITECTURES = ("llama", "qwen2")


# ---------------------------------------------------------------------------------------------- pieces


def rope_scaling_config(scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """A checked copy of a transformers-style RoPE scaling dict (``rope_type``, or the older ``type``, plus that
    type's parameters), or None for plain RoPE. Unknown types and missing parameters are a ValueError."""
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"unsupported RoPE type {kind!r} (rope_scaling {scaling}); supported: {', '.join(ROPE_TYPES)}")
    missing = [k for k in ROPE_TYPES[kind] if scaling.get(k) is None]
    if missing:
        raise ValueError(f"RoPE type {kind!r} needs {', '.join(missing)} in rope_scaling; got {scaling}")
    return None if kind == "default" else {k: scaling[k] for k in ROPE_TYPES[kind]} | {"rope_type": kind}


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> Tensor:
    """The RoPE inverse frequencies ``theta ** (-2i / head_dim)`` (fp64, (head_dim / 2,)), optionally rescaled
    (``scaling`` as for :func:`rope_scaling_config`): ``linear`` divides all by ``factor``; ``llama3`` (Llama 3.1)
    divides the low frequencies (wavelength above ``original_max_position_embeddings / low_freq_factor``) by
    ``factor``, keeps the high ones (wavelength below ``... / high_freq_factor``) and blends linearly in between."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    scaling = rope_scaling_config(scaling)
    kind = scaling["rope_type"] if scaling else "default"
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(scaling["factor"])
    factor, lo, hi, old_len = (float(scaling[k]) for k in ROPE_TYPES["llama3"])  # llama3
    wavelen = 2 * math.pi / inv
    smooth = ((old_len / wavelen - lo) / (hi - lo)).clamp(0, 1)  # 0: long waves (scaled), 1: short (kept)
    return torch.where(wavelen > old_len / lo, inv / factor,
                       torch.where(wavelen < old_len / hi, inv, (1 - smooth) * inv / factor + smooth * inv))


def rope_cos_sin(inv_freq: Tensor, start: int, length: int, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    """cos and sin (length, head_dim) of positions start .. start + length - 1, angles in fp64, cast to dtype.
    The two halves of the head share each frequency (the rotate-half layout of Llama checkpoints)."""
    pos = torch.arange(start, start + length, dtype=torch.float64, device=device)
    angles = pos[:, None] * inv_freq.to(device)[None, :]
    angles = torch.cat([angles, angles], -1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + head_dim / 2) of x (B, H, T, head_dim) by the position's angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    if torch.is_grad_enabled():
        return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)
    return rotated.mul_(sin.to(x.dtype)).addcmul_(x, cos.to(x.dtype))  # no autograd: in place, one buffer


def causal_attention(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """Softmax attention of q (B, H, T, D) over k, v (B, Hkv, S, D) with S >= T: the queries are the last T of
    the S positions, so query i sees keys 0 .. S - T + i. ``H`` must be a multiple of ``Hkv`` (query head h uses
    key/value head h // (H / Hkv)). ``sdpa``: torch's fused kernels (``is_causal`` without a cache, no mask for a
    single query, an explicit bottom-right causal mask otherwise); ``eager``: the plain formula with the softmax in
    at least fp32, the reference."""
    t, s, h, hkv = q.shape[2], k.shape[2], q.shape[1], k.shape[1]
    past = s - t
    if backend == "eager":
        rep = h // hkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        ct = torch.promote_types(q.dtype, torch.float32)
        scores = (q.to(ct) @ k.to(ct).transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if t > 1:
            allowed = torch.arange(s, device=q.device)[None, :] <= torch.arange(t, device=q.device)[:, None] + past
            scores = scores.masked_fill(~allowed, float("-inf"))
        return (scores.softmax(-1) @ v.to(ct)).to(q.dtype)
    gqa = {"enable_gqa": True} if h != hkv else {}
    if t == 1 or past == 0:  # a single new query sees everything; no cache: the ordinary causal mask
        return F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, **gqa)
    allowed = torch.arange(s, device=q.device)[None, :] <= torch.arange(t, device=q.device)[:, None] + past
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, **gqa)


# Preallocated key/value caches. A layer's cache tensor is a view of the first ``n`` positions of a buffer with room
# for more (capacity doubling), so appending a token writes it in place instead of copying the whole cache
# (``torch.cat`` per token made decode quadratic in context). The buffer remembers how far it has been written
# (an attribute on the buffer tensor):
# only a cache that ends exactly there is extended in place; appending to an older cache (branching from an
# earlier state) copies it into a new buffer first, so every state handed out keeps its values (states stay
# values, as for the RNNs). Under autograd the plain concatenation is used (in-place writes would break it).
MIN_CACHE_CAPACITY = 256


def append_to_cache(past: Tensor, new: Tensor) -> Tensor:
    """``torch.cat([past, new], 2)`` for (B, Hkv, S, D) caches, in amortised O(len(new)) time and memory."""
    if torch.is_grad_enabled() and (past.requires_grad or new.requires_grad):
        return torch.cat([past.to(new.dtype), new], 2)
    n, t = past.shape[2], new.shape[2]
    base = past._base
    if (base is not None and base.dtype == new.dtype and base.device == new.device and getattr(base, "_aurora_filled", None) == n
            and base.shape[2] >= n + t and base.shape[:2] == past.shape[:2]):
        base[:, :, n:n + t].copy_(new)
    else:
        cap = max(MIN_CACHE_CAPACITY, 2 * (n + t))
        base = new.new_empty(*new.shape[:2], cap, new.shape[3])
        base[:, :, :n].copy_(past)
        base[:, :, n:n + t].copy_(new)
    base._aurora_filled = n + t  # on the buffer's Python object, which every view's ._base returns
    return base[:, :, :n + t]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_head: int, n_kv_head: int, head_dim: int, qkv_bias: bool, o_bias: bool):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.q_proj = nn.Linear(d_model, n_head * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d_model, n_kv_head * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d_model, n_kv_head * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_head * head_dim, d_model, bias=o_bias)

    def forward(self, x: Tensor, past: LayerState | None, cos: Tensor, sin: Tensor, backend: str):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = append_to_cache(past[0], k), append_to_cache(past[1], v)
        y = causal_attention(q, k, v, backend)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)), (k, v)


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, d_model: int, d_ffn: int, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ffn, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ffn, bias=bias)
        self.down_proj = nn.Linear(d_ffn, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        # no autograd: the T x d_ffn activations in place (two fresh large buffers fewer per layer)
        return self.down_proj(F.silu(self.gate_proj(x), inplace=True).mul_(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, d_model, n_head, n_kv_head, head_dim, d_ffn, qkv_bias, o_bias, mlp_bias, norm_eps):
        super().__init__()
        self.input_layernorm = RMSNorm(d_model, norm_eps, cast="llama")
        self.self_attn = Attention(d_model, n_head, n_kv_head, head_dim, qkv_bias, o_bias)
        self.post_attention_layernorm = RMSNorm(d_model, norm_eps, cast="llama")
        self.mlp = MLP(d_model, d_ffn, mlp_bias)

    def forward(self, x: Tensor, past: LayerState | None, cos: Tensor, sin: Tensor, backend: str):
        a, cache = self.self_attn(self.input_layernorm(x), past, cos, sin, backend)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), cache


# ----------------------------------------------------------------------------------------------- model


@RNN.register("transformer")
class Transformer(RecurrentLM):
    """Llama / Qwen2-style decoder-only Transformer.

    ``n_kv_head`` defaults to ``n_head`` (plain multi-head attention), ``head_dim`` to ``d_model // n_head``,
    ``d_ffn`` to Llama's rule (8/3 d_model rounded up to a multiple of 256). ``qkv_bias``: biases on the q/k/v
    projections (True for Qwen2, Llama's ``attention_bias``); ``o_bias``: on the output projection (Llama's
    ``attention_bias`` too); ``mlp_bias``: on the MLP (Llama's ``mlp_bias``). ``rope_scaling``: None or a
    transformers-style dict with ``rope_type`` (or ``type``) ``linear`` (``factor``) or ``llama3`` (``factor``,
    ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``). ``backend``: ``sdpa``
    (torch's fused attention; ``auto`` picks it) or ``eager`` (the written-out formula, fp32 softmax).
    """

    # the checkpoint formats from_checkpoint reads (what aurora convert --format accepts for this backbone)
    formats: tuple[str, ...] = ("hf",)

    def __init__(
        self,
        vocab_size: int = 32000,
        d_model: int = 2048,
        n_layer: int = 24,
        n_head: int = 16,
        n_kv_head: int | None = None,
        head_dim: int | None = None,
        d_ffn: int | None = None,
        qkv_bias: bool = False,
        o_bias: bool = False,
        mlp_bias: bool = False,
        norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        rope_scaling: dict[str, Any] | None = None,
        tie_embeddings: bool = False,
        init_std: float = 0.02,
        backend: str = "auto",
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        n_kv_head = n_kv_head or n_head
        sizes = dict(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head,
                     head_dim=head_dim or 1, d_ffn=d_ffn or 1)
        if any(v < 1 for v in sizes.values()):
            raise ValueError(f"sizes must be positive, got {', '.join(f'{k}={v}' for k, v in sizes.items() if v < 1)}")
        if n_head % n_kv_head:
            raise ValueError(f"n_head {n_head} is not a multiple of n_kv_head {n_kv_head}")
        if head_dim is None:
            if d_model % n_head:
                raise ValueError(f"d_model {d_model} is not a multiple of n_head {n_head}; give head_dim")
            head_dim = d_model // n_head
        self.vocab_size, self.d_model, self.n_layer = vocab_size, d_model, n_layer
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.d_ffn = d_ffn or 256 * math.ceil(int(8 * d_model / 3) / 256)
        self.qkv_bias, self.o_bias, self.mlp_bias = qkv_bias, o_bias, mlp_bias
        self.norm_eps, self.rope_theta = norm_eps, float(rope_theta)
        self.rope_scaling = rope_scaling_config(rope_scaling)
        self.tie_embeddings, self.init_std = tie_embeddings, init_std
        self.backend, self.grad_checkpoint = backend, grad_checkpoint
        # fp64 on the CPU, a plain attribute (not a buffer) so model.to(bf16) cannot round the frequencies
        self._inv_freq = rope_inv_freq(head_dim, self.rope_theta, self.rope_scaling)

        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            Block(d_model, n_head, n_kv_head, head_dim, self.d_ffn, qkv_bias, o_bias, mlp_bias, norm_eps)
            for _ in range(n_layer)
        )
        self.norm = RMSNorm(d_model, norm_eps, cast="llama")
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        with torch.no_grad():  # transformers' initialisation: N(0, init_std) weights, zero biases, unit norms
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, init_std)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
        if tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def embed(self, ids: Tensor) -> Tensor:
        return self.embed_tokens(ids)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> list[LayerState]:
        """Empty key/value caches, (B, n_kv_head, 0, head_dim) each."""
        shape = (batch_size, self.n_kv_head, 0, self.head_dim)
        return [(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                for _ in range(self.n_layer)]

    @staticmethod
    def cache_length(state: list[LayerState] | None) -> int:
        """How many tokens the cache holds (the position the next token gets)."""
        return 0 if not state else state[0][0].shape[2]

    def _check_state(self, state: list[LayerState], batch: int) -> None:
        if len(state) != self.n_layer:
            raise ValueError(f"state has {len(state)} layers, the model {self.n_layer}")
        length = self.cache_length(state)
        want = (batch, self.n_kv_head, length, self.head_dim)
        for i, layer in enumerate(state):
            if len(layer) != 2 or any(tuple(t.shape) != want for t in layer):
                got = [tuple(t.shape) for t in layer]
                raise ValueError(f"layer {i} cache must be (k, v) of shape (batch, n_kv_head, cached, head_dim) "
                                 f"= {want}, got {got}")

    def forward(self, embeds: Tensor, state: list[LayerState] | None = None) -> tuple[Tensor, list[LayerState]]:
        if embeds.dim() != 3 or embeds.shape[-1] != self.d_model:
            raise ValueError(f"embeds must be (batch, time, {self.d_model}), got {tuple(embeds.shape)}")
        b, t, _ = embeds.shape
        if state is not None:
            self._check_state(state, b)
        if t == 0:  # nothing to read: the cache passes through unchanged
            return self.pass_through(embeds, state, self.norm)
        start = self.cache_length(state)
        cos, sin = rope_cos_sin(self._inv_freq, start, t, embeds.dtype, embeds.device)
        backend = "sdpa" if self.backend == "auto" else self.backend
        x, new_state = self.run_blocks(self.layers, embeds, state if start > 0 else None, cos, sin, backend)
        return self.norm(x), new_state

    # ------------------------------------------------------------------------------------------ checkpoints

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> "Transformer":
        """Load a local transformers ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` checkpoint: a directory with
        ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin`` (sharded ones too), or one such weights
        file with the ``config.json`` beside it (the head count is not in the weights). Keys may carry the
        ``model.`` prefix or not. ``kwargs`` go to the constructor (backend, grad_checkpoint, ...)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        config = read_config(checkpoint_folder(path))
        if not config:
            raise FileNotFoundError(f"{checkpoint_folder(path)} has no config.json (needed for the attention head "
                                    "count)")
        settings = config_from_hf(config)
        sd = to_our_keys(read_weights(path))
        head, emb = sd.get("lm_head.weight"), sd.get("embed_tokens.weight")
        if settings["tie_embeddings"] and head is not None and emb is not None and (
                head.shape != emb.shape or not torch.equal(head, emb)):
            settings["tie_embeddings"] = False  # a separate head in the file wins over the config (as transformers)
        model = cls(**(settings | kwargs))
        load_state_dict(model, sd)  # names missing / unexpected / wrong-shape keys
        return model

    def extra_repr(self) -> str:
        return (f"vocab={self.vocab_size}, d_model={self.d_model}, layers={self.n_layer}, heads={self.n_head}"
                f"(kv {self.n_kv_head})x{self.head_dim}, d_ffn={self.d_ffn}")


# ---------------------------------------------------------------------------------------- checkpoint formats


def to_our_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers' names -> ours: strip the ``model.`` prefix and drop the stored RoPE frequencies that old
    checkpoints carry (``rotary_emb.inv_freq``, recomputed from the config). Other keys pass through unchanged, so
    a wrong architecture is reported key by key when loading."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        out[key[len("model."):] if key.startswith("model.") else key] = value
    return out


def load_state_dict(model: Transformer, state_dict: dict[str, Tensor]) -> None:
    """Load weights in our names (see :func:`to_our_keys`); names the missing / unexpected / wrong-shape keys on
    failure. With tied embeddings the head may be absent (transformers does not save it) or equal to the
    embedding."""
    if model.tie_embeddings:
        head = state_dict.get("lm_head.weight")
        if head is not None and "embed_tokens.weight" in state_dict and (
                head.shape != state_dict["embed_tokens.weight"].shape
                or not torch.equal(head, state_dict["embed_tokens.weight"])):
            raise ValueError("the model ties lm_head to embed_tokens but the checkpoint's lm_head.weight differs")
    load_checked(model, state_dict, "Transformer", optional={"lm_head.weight"} if model.tie_embeddings else ())


def config_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    """Constructor kwargs from a transformers ``config.json`` of model_type ``llama`` or ``qwen2`` (either the
    current ``rope_parameters`` layout or the older ``rope_theta`` + ``rope_scaling`` one). Anything this model
    does not implement (other activations, sliding windows, partial rotary, other RoPE types) is a ValueError."""
    kind = config.get("model_type")
    if kind not in ARCHITECTURES:
        arch = config.get("architectures")
        raise ValueError(f"config.json is for model_type {kind!r} (architectures {arch}); this Transformer loads "
                         f"model types {', '.join(ARCHITECTURES)}")
    if config.get("hidden_act", "silu") not in ("silu", "swish"):  # transformers' two names for x * sigmoid(x)
        raise ValueError(f"only the SiLU (SwiGLU) MLP is supported; config has hidden_act {config['hidden_act']!r}")
    if kind == "qwen2" and config.get("use_sliding_window") and any(
            t == "sliding_attention" for t in (config.get("layer_types") or ["sliding_attention"])):
        raise ValueError("Qwen2 sliding-window attention (use_sliding_window) is not supported")
    # transformers >= 5 write ``rope_parameters`` (theta included); older ones ``rope_theta`` + ``rope_scaling``
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if rope and all(isinstance(v, dict) for v in rope.values()):
        raise ValueError("per-layer-type RoPE parameters are not supported")
    theta = rope.get("rope_theta") or config.get("rope_theta") or 10000.0
    if (rope.get("partial_rotary_factor") or config.get("partial_rotary_factor") or 1.0) != 1.0:
        raise ValueError("partial rotary embeddings (partial_rotary_factor < 1) are not supported")
    rope.setdefault("rope_type", rope.get("type", "default"))
    if rope["rope_type"] == "llama3":  # transformers' fallback for the pre-extension context length
        rope.setdefault("original_max_position_embeddings", config.get("max_position_embeddings"))
    scaling = rope_scaling_config(rope)  # unsupported types / missing parameters: ValueError
    n_head = config["num_attention_heads"]
    bias = config.get("attention_bias", False)
    return dict(
        vocab_size=config["vocab_size"], d_model=config["hidden_size"], n_layer=config["num_hidden_layers"],
        n_head=n_head, n_kv_head=config.get("num_key_value_heads") or n_head,
        head_dim=config.get("head_dim") or config["hidden_size"] // n_head,
        d_ffn=config["intermediate_size"],
        qkv_bias=True if kind == "qwen2" else bias, o_bias=False if kind == "qwen2" else bias,
        mlp_bias=config.get("mlp_bias", False) if kind == "llama" else False,
        norm_eps=config.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_scaling=scaling,
        tie_embeddings=config.get("tie_word_embeddings", False),
        init_std=config.get("initializer_range", 0.02),
    )


def hf_config(model: Transformer) -> dict[str, Any]:
    """A transformers ``config.json`` for the model: ``qwen2`` when it has Qwen2's biases (q/k/v only), else
    ``llama`` (which needs the q/k/v and output biases both present or both absent)."""
    qwen2 = model.qkv_bias and not model.o_bias and not model.mlp_bias
    if not qwen2 and model.qkv_bias != model.o_bias:
        raise ValueError(f"neither Llama nor Qwen2 has qkv_bias={model.qkv_bias} with o_bias={model.o_bias} "
                         f"(mlp_bias={model.mlp_bias}): Llama has both or neither, Qwen2 q/k/v biases only")
    rope = {"rope_type": "default", "rope_theta": model.rope_theta} | (model.rope_scaling or {})
    config: dict[str, Any] = dict(
        architectures=["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"], model_type="qwen2" if qwen2 else "llama",
        vocab_size=model.vocab_size, hidden_size=model.d_model, num_hidden_layers=model.n_layer,
        num_attention_heads=model.n_head, num_key_value_heads=model.n_kv_head, head_dim=model.head_dim,
        intermediate_size=model.d_ffn, hidden_act="silu", rms_norm_eps=model.norm_eps,
        tie_word_embeddings=model.tie_embeddings, max_position_embeddings=32768, initializer_range=model.init_std,
        rope_parameters=rope,  # transformers >= 5; the next two for older readers (newer ones take rope_parameters)
        rope_theta=model.rope_theta, rope_scaling=model.rope_scaling,
    )
    if not qwen2:
        config.update(attention_bias=model.qkv_bias, mlp_bias=model.mlp_bias)
    return config


def save_hf_checkpoint(model: Transformer, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in transformers' layout (``model.``-prefixed names; no
    separate head when tied), loadable by ``AutoModelForCausalLM.from_pretrained`` and :meth:`from_checkpoint`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = hf_config(model)
    tensors = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            if model.tie_embeddings:
                continue
            tensors[key] = value.detach().contiguous().clone()
        else:
            tensors["model." + key] = value.detach().contiguous().clone()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory

