"""GLA: the Gated Linear Attention Transformer (Yang et al., 2023) as a language model.

The architecture of fla's ``GLAForCausalLM`` (flash-linear-attention, ``fla/models/gla`` + ``fla/layers/gla.py``):
pre-norm blocks ``x + attn(attn_norm(x))``, then ``x + mlp(mlp_norm(x))``, RMSNorm everywhere, a final norm and
an untied ``lm_head``. The attention layer projects q, k (key_dim = expand_k * d_model), v and the output gate g
(value_dim = expand_v * d_model); the per-key-channel forget gate comes from a low-rank projection,
``log_decay = logsigmoid(gk_proj(x)) / gate_logit_normalizer``; the recurrence runs through
:func:`aurora.kernels.gla.gla` (chunked on CPU, fla's kernels on CUDA); each head's output is RMS-normalised and
multiplied by ``swish(g)`` (fla's fused RMSNorm-swish gate), then ``o_proj``. The MLP is SwiGLU.

Parameter names follow the fla-hub Hugging Face checkpoints (``model.embeddings.weight``,
``model.layers.{i}.attn.q_proj.weight``, ``...attn.gk_proj.0.weight``, ``...attn.g_norm_swish_gate.weight``,
``...mlp.gate_proj.weight``, ``model.norm.weight``, ``lm_head.weight``), so :meth:`GLA.from_checkpoint` loads an
fla-hub directory (config.json + model.safetensors / pytorch_model.bin, sharded or not) directly.

State per layer: ``(S,)`` with the GLA matrix state S (B, H, K, V) (float32; float64 for a float64 model).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.components.rnn._hf import load_checked, read_config, read_weights
from aurora.components.rnn.layers import GatedRMSNorm, RMSNorm, exact_dim
from aurora.kernels.gla import BACKENDS, gla
from aurora.registry import RNN
from aurora.types import RecurrentLM

LayerState = tuple[Tensor]


class GatedLinearAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, n_kv_head: int, key_dim: int, value_dim: int,
                 gate_low_rank_dim: int, gate_logit_normalizer: float, clamp_min: float | None,
                 use_output_gate: bool, fuse_norm: bool, norm_eps: float):
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_k_dim, self.head_v_dim = key_dim // n_head, value_dim // n_head
        self.groups = n_head // n_kv_head
        self.gate_logit_normalizer, self.clamp_min = gate_logit_normalizer, clamp_min
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim // self.groups, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim // self.groups, bias=False)
        self.use_output_gate = use_output_gate
        if use_output_gate:
            self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(d_model, gate_low_rank_dim, bias=False),
                                     nn.Linear(gate_low_rank_dim, key_dim // self.groups, bias=True))
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)
        # fla names the per-head output norm after its fused kernel when there is a swish gate and fuse_norm is on
        self.norm_name = "g_norm_swish_gate" if (use_output_gate and fuse_norm) else "g_norm"
        self.add_module(self.norm_name, (GatedRMSNorm if use_output_gate else RMSNorm)(self.head_v_dim, norm_eps))

    def forward(self, x: Tensor, state: LayerState | None, backend: str, chunk_size: int):
        b, t, _ = x.shape
        h, hkv, dk, dv = self.n_head, self.n_kv_head, self.head_k_dim, self.head_v_dim
        q = self.q_proj(x).view(b, t, h, dk)
        k = self.k_proj(x).view(b, t, hkv, dk)
        v = self.v_proj(x).view(b, t, hkv, dv)
        gk = self.gk_proj(x).view(b, t, hkv, dk)
        if self.groups > 1:  # grouped keys / values: kv head j serves query heads j * groups ... (j + 1) * groups - 1
            k, v, gk = (z.repeat_interleave(self.groups, dim=2) for z in (k, v, gk))
        dt = torch.promote_types(gk.dtype, torch.float32)
        log_decay = F.logsigmoid(gk.to(dt)) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            log_decay = log_decay.clamp_min(self.clamp_min)
        o, s = gla(q, k, v, log_decay, state[0] if state is not None else None, backend=backend,
                   chunk_size=chunk_size, scale=dk ** -0.5)
        norm = getattr(self, self.norm_name)
        o = norm(o, self.g_proj(x).view(b, t, h, dv)) if self.use_output_gate else norm(o)
        return self.o_proj(o.reshape(b, t, h * dv)), (s,)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ffn, bias=False)
        self.up_proj = nn.Linear(d_model, d_ffn, bias=False)
        self.down_proj = nn.Linear(d_ffn, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """fla's pre-norm block around a recurrent token mixer ``attn(x, state, backend, chunk_size) -> (y, state)``."""

    def __init__(self, d_model: int, d_ffn: int, norm_eps: float, attn: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm(d_model, norm_eps)
        self.attn = attn
        self.mlp_norm = RMSNorm(d_model, norm_eps)
        self.mlp = SwiGLU(d_model, d_ffn)

    def forward(self, x: Tensor, state: tuple[Tensor, ...] | None, backend: str, chunk_size: int):
        a, s = self.attn(self.attn_norm(x), state, backend, chunk_size)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), s


class Backbone(nn.Module):
    """The ``model.`` part of fla's ...ForCausalLM: embeddings, layers, final norm."""

    def __init__(self, vocab_size: int, d_model: int, d_ffn: int, norm_eps: float, mixers: list[nn.Module]):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(Block(d_model, d_ffn, norm_eps, attn) for attn in mixers)
        self.norm = RMSNorm(d_model, norm_eps)


def default_d_ffn(d_model: int, hidden_ratio: float = 4) -> int:
    """fla's GatedMLP default: 2/3 of ``hidden_ratio * d_model``, rounded up to a multiple of 256."""
    d = int(d_model * hidden_ratio * 2 / 3)
    return 256 * ((d + 255) // 256)


class FlaCausalLM(RecurrentLM):
    """What fla's ...ForCausalLM models share: ``model.embeddings``, ``model.layers``, ``model.norm``, ``lm_head``,
    the layer loop with optional gradient checkpointing, and fla-hub checkpoint reading / writing.

    Subclasses set ``vocab_size``, ``d_model``, ``n_layer``, ``backend``, ``chunk_size``, ``grad_checkpoint``,
    ``config`` (constructor arguments) and ``model`` / ``lm_head`` (via :meth:`_build`), and provide
    ``init_state``, ``config_from_state_dict``, ``config_from_hf`` and ``hf_config``.
    """

    config: dict[str, Any]

    def _build(self, d_ffn: int, norm_eps: float, mixers: list[nn.Module]) -> None:
        self.model = Backbone(self.vocab_size, self.d_model, d_ffn, norm_eps, mixers)
        self.lm_head = nn.Linear(self.d_model, self.vocab_size, bias=False)
        self._init_weights(self.config["initializer_range"])
        if self.config["tie_word_embeddings"]:
            self.lm_head.weight = self.model.embeddings.weight

    @torch.no_grad()
    def _init_weights(self, std: float) -> None:
        """fla's initialisation: N(0, std) for every linear, conv and embedding weight, zero biases (norm gains
        stay 1; parameters that are not weights of such modules keep their own initialisation)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv1d)):
                nn.init.normal_(m.weight, 0.0, std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.embeddings(ids)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)

    def forward(self, embeds: Tensor, state: list | None = None) -> tuple[Tensor, list]:
        self.check_input(embeds, state)
        if embeds.shape[1] == 0:
            return self.pass_through(embeds, state, self.model.norm)
        x, new_state = self.run_blocks(self.model.layers, embeds, state, self.backend, self.chunk_size)
        return self.model.norm(x), new_state

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any):
        """Load an fla-hub checkpoint: a HF directory (config.json + weights) or a single weights file.

        Weights: ``model.safetensors`` / ``pytorch_model.bin`` (or their sharded ``*.index.json`` forms) in a
        directory; a ``.safetensors`` / ``.bin`` / ``.pt(h)`` file alone gets its sizes from the state dict.
        ``kwargs``: chunk_size, backend, grad_checkpoint (or overrides of the configuration).
        """
        path = Path(path)
        state_dict = read_weights(path)
        hf = read_config(path) if path.is_dir() else {}
        config = cls.config_from_hf(hf) if hf else cls.config_from_state_dict(state_dict)
        model = cls(**(config | kwargs))
        load_fla_state_dict(model, state_dict)
        return model

    def save_checkpoint(self, path: str | Path) -> None:
        """Write an fla-hub directory: config.json + model.safetensors (fla's ...ForCausalLM loads it too)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.hf_config(), indent=2))
        sd = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if self.config["tie_word_embeddings"]:
            sd.pop("lm_head.weight")  # shared with the embeddings (HF drops tied copies)
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})

    @staticmethod
    def config_from_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def config_from_hf(config: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def hf_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> list:
        raise NotImplementedError


@RNN.register("gla")
class GLA(FlaCausalLM):
    """GLA language model (fla-hub layout).

    Sizes as fla's ``GLAConfig``: ``key_dim = expand_k * d_model`` and ``value_dim = expand_v * d_model`` split
    over ``n_head`` heads (keys and values over ``n_kv_head`` heads, shared by groups of query heads);
    ``d_ffn`` defaults to fla's rule (2/3 of 4 d_model, rounded up to 256). ``backend`` picks the GLA kernel
    (see :func:`aurora.kernels.gla.gla`).
    """

    # the checkpoint formats from_checkpoint reads (what aurora convert --format accepts for this backbone)
    formats: tuple[str, ...] = ("hf",)
    # long prefills without autograd run in pieces of this many tokens (RecurrentLM.run_blocks: linear in T)
    prefill_piece: int | None = 1024

    def __init__(
        self,
        vocab_size: int = 32000,
        d_model: int = 2048,
        n_layer: int = 24,
        n_head: int = 4,
        n_kv_head: int | None = None,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        d_ffn: int | None = None,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16,
        clamp_min: float | None = None,
        use_output_gate: bool = True,
        fuse_norm: bool = True,
        norm_eps: float = 1e-6,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        chunk_size: int = 16,
        backend: str = "auto",
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown gla backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        n_kv_head = n_kv_head or n_head
        key_dim = exact_dim(d_model * expand_k, "d_model * expand_k")
        value_dim = exact_dim(d_model * expand_v, "d_model * expand_v")
        if key_dim % n_head or value_dim % n_head:
            raise ValueError(f"key_dim {key_dim} and value_dim {value_dim} must be multiples of n_head {n_head}")
        if n_head % n_kv_head:
            raise ValueError(f"n_head {n_head} is not a multiple of n_kv_head {n_kv_head}")
        self.vocab_size, self.d_model, self.n_layer = vocab_size, d_model, n_layer
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_k_dim, self.head_v_dim = key_dim // n_head, value_dim // n_head
        self.chunk_size, self.backend, self.grad_checkpoint = chunk_size, backend, grad_checkpoint
        self.config = dict(
            vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head,
            expand_k=expand_k, expand_v=expand_v, d_ffn=d_ffn or default_d_ffn(d_model),
            gate_low_rank_dim=gate_low_rank_dim, gate_logit_normalizer=gate_logit_normalizer, clamp_min=clamp_min,
            use_output_gate=use_output_gate, fuse_norm=fuse_norm, norm_eps=norm_eps,
            tie_word_embeddings=tie_word_embeddings, initializer_range=initializer_range,
        )
        attn = dict(n_head=n_head, n_kv_head=n_kv_head, key_dim=key_dim, value_dim=value_dim,
                    gate_low_rank_dim=gate_low_rank_dim, gate_logit_normalizer=gate_logit_normalizer,
                    clamp_min=clamp_min, use_output_gate=use_output_gate, fuse_norm=fuse_norm, norm_eps=norm_eps)
        self._build(self.config["d_ffn"], norm_eps, [GatedLinearAttention(d_model, **attn) for _ in range(n_layer)])

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> list[LayerState]:
        s_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return [(torch.zeros(batch_size, self.n_head, self.head_k_dim, self.head_v_dim, device=device,
                             dtype=s_dtype),) for _ in range(self.n_layer)]

    def extra_repr(self) -> str:
        return (f"vocab={self.vocab_size}, d_model={self.d_model}, layers={self.n_layer}, heads={self.n_head}, "
                f"head_k={self.head_k_dim}, head_v={self.head_v_dim}")

    # ------------------------------------------------------------------------------------- checkpoints

    @staticmethod
    def config_from_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
        """The constructor sizes of an fla-hub-format state dict (shapes alone; options keep their defaults)."""
        try:
            vocab_size, d_model = state_dict["model.embeddings.weight"].shape
            n_layer = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("model.layers."))
            p = "model.layers.0.attn."
            fuse_norm = p + "g_norm_swish_gate.weight" in state_dict
            head_v_dim = state_dict[p + ("g_norm_swish_gate.weight" if fuse_norm else "g_norm.weight")].shape[0]
            key_dim = state_dict[p + "q_proj.weight"].shape[0]
            value_dim = state_dict[p + "o_proj.weight"].shape[1]
            n_head = value_dim // head_v_dim
            return dict(
                vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, n_head=n_head,
                n_kv_head=n_head * state_dict[p + "k_proj.weight"].shape[0] // key_dim,
                expand_k=key_dim / d_model, expand_v=value_dim / d_model,
                d_ffn=state_dict["model.layers.0.mlp.gate_proj.weight"].shape[0],
                gate_low_rank_dim=state_dict[p + "gk_proj.0.weight"].shape[0],
                use_output_gate=p + "g_proj.weight" in state_dict, fuse_norm=fuse_norm,
                tie_word_embeddings="lm_head.weight" not in state_dict,
            )
        except (KeyError, ValueError, IndexError) as e:
            raise ValueError(f"not an fla-hub GLA checkpoint (missing or odd {e})") from None

    @staticmethod
    def config_from_hf(config: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments from an fla ``GLAConfig`` (config.json); unsupported variants raise ValueError."""
        if config.get("model_type") != "gla":
            raise ValueError(f"config.json is for model_type {config.get('model_type')!r}, not 'gla'")
        unsupported = {
            "use_short_conv": (False, config.get("use_short_conv", False)),
            "feature_map": (None, config.get("feature_map")),
            "hidden_act": ("swish", config.get("hidden_act", "swish")),
            "elementwise_affine": (True, config.get("elementwise_affine", True)),
            "attn (hybrid softmax-attention layers)": (None, config.get("attn")),
            "attnres_block_size": (None, config.get("attnres_block_size")),
        }
        bad = [f"{k}={got!r} (supported: {want!r})" for k, (want, got) in unsupported.items() if got != want]
        if bad:
            raise ValueError(f"unsupported GLA variant: {', '.join(bad)}")
        d_model = config.get("hidden_size", 2048)
        d_ffn = config.get("intermediate_size") or default_d_ffn(d_model, config.get("hidden_ratio") or 4)
        return dict(
            vocab_size=config.get("vocab_size", 32000), d_model=d_model,
            n_layer=config.get("num_hidden_layers", 24), n_head=config.get("num_heads", 4),
            n_kv_head=config.get("num_kv_heads"), expand_k=config.get("expand_k", 0.5),
            expand_v=config.get("expand_v", 1.0), d_ffn=d_ffn, clamp_min=config.get("clamp_min"),
            use_output_gate=config.get("use_output_gate", True), fuse_norm=config.get("fuse_norm", True),
            norm_eps=config.get("norm_eps", 1e-6), tie_word_embeddings=config.get("tie_word_embeddings", False),
            initializer_range=config.get("initializer_range", 0.02),
        )

    def hf_config(self) -> dict[str, Any]:
        """This model as an fla ``GLAConfig`` dict (what config.json of an fla-hub checkpoint holds)."""
        c = self.config
        if c["gate_low_rank_dim"] != 16 or c["gate_logit_normalizer"] != 16:
            raise ValueError("fla's GLAConfig fixes gate_low_rank_dim and gate_logit_normalizer at 16")
        return dict(
            model_type="gla", architectures=["GLAForCausalLM"], vocab_size=c["vocab_size"],
            hidden_size=c["d_model"], num_hidden_layers=c["n_layer"], num_heads=c["n_head"],
            num_kv_heads=None if c["n_kv_head"] == c["n_head"] else c["n_kv_head"], expand_k=c["expand_k"],
            expand_v=c["expand_v"], hidden_ratio=4, intermediate_size=c["d_ffn"], clamp_min=c["clamp_min"],
            use_output_gate=c["use_output_gate"], fuse_norm=c["fuse_norm"], norm_eps=c["norm_eps"],
            tie_word_embeddings=c["tie_word_embeddings"], initializer_range=c["initializer_range"],
            hidden_act="swish", use_short_conv=False, feature_map=None, elementwise_affine=True, attn_mode="chunk",
            bos_token_id=1, eos_token_id=2,
        )


def load_fla_state_dict(model: "FlaCausalLM", state_dict: dict[str, Any]) -> None:
    """Load an fla-hub state dict into ``model``; names the missing / unexpected / wrong-shape keys on failure."""
    state_dict = dict(state_dict)
    if model.config.get("tie_word_embeddings") and "lm_head.weight" not in state_dict:
        if "model.embeddings.weight" in state_dict:
            state_dict["lm_head.weight"] = state_dict["model.embeddings.weight"]
    load_checked(model, state_dict)
