"""Mamba-2 (Dao & Gu, 2024, "Transformers are SSMs"): the SSD language model of state-spaces/mamba.

Each block is ``x + Mixer(RMSNorm(x))``; the mixer projects to (z, x, B, C, dt), runs a causal depthwise
convolution + SiLU over (x, B, C), takes ``dt = softplus(dt + dt_bias)`` and ``A = -exp(A_log)`` (one scalar decay
per head), runs the SSD recurrence with the ``D`` skip (:func:`aurora.kernels.ssd.ssd`), gates and normalises the
result (``RMSNorm(y * silu(z))`` per group) and projects back. A final RMSNorm and the LM head follow.

Parameter names follow state-spaces/mamba's ``MambaLMHeadModel`` without its ``backbone.`` prefix
(``embedding``, ``layers.{i}.norm``, ``layers.{i}.mixer.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj}``,
``norm_f``, ``lm_head``), so both community checkpoint formats load by renaming keys (see
:meth:`Mamba2.from_checkpoint`): state-spaces' ``pytorch_model.bin`` + ``config.json`` and transformers'
``Mamba2ForCausalLM`` directories (``backbone.embeddings``, ``backbone.layers.{i}.mixer.*``).

State per layer: ``(conv_state (B, conv_dim, d_conv - 1), ssm_state (B, H, head_dim, d_state))`` — the last
``d_conv - 1`` convolution inputs (before the convolution; zeros at the start) and the SSD state.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.kernels.ssd import BACKENDS, ssd
from aurora.components.rnn._hf import checkpoint_folder, load_checked, read_config, read_weights
from aurora.components.rnn.layers import GatedRMSNorm, RMSNorm, causal_conv1d
from aurora.registry import RNN
from aurora.types import RecurrentLM

LayerState = tuple[Tensor, Tensor]


class Mixer(nn.Module):
    """The Mamba-2 mixer (state-spaces/mamba's ``Mamba2`` with d_ssm = d_inner, gated RMSNorm after the scan)."""

    def __init__(self, d_model: int, d_inner: int, head_dim: int, d_state: int, n_groups: int, d_conv: int,
                 bias: bool, conv_bias: bool, norm_eps: float, dt_min: float, dt_max: float, dt_init_floor: float,
                 A_init_range: tuple[float, float], dt_limit: tuple[float, float]):
        super().__init__()
        self.d_inner, self.head_dim, self.d_state, self.n_groups = d_inner, head_dim, d_state, n_groups
        self.n_head = d_inner // head_dim
        self.conv_dim = d_inner + 2 * n_groups * d_state
        self.dt_limit = tuple(dt_limit)
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + self.n_head, bias=bias)  # z, xBC, dt
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.n_head))
        self.A_log = nn.Parameter(torch.empty(self.n_head))
        self.D = nn.Parameter(torch.ones(self.n_head))
        # state-spaces' RMSNormGated: norm(y * silu(z)) per group of heads (the gate before the norm)
        self.norm = GatedRMSNorm(d_inner, eps=norm_eps, norm_before_gate=False, group_size=d_inner // n_groups)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        with torch.no_grad():  # state-spaces' initialisation: log-uniform step sizes, A uniform in A_init_range
            dt = torch.exp(torch.rand(self.n_head) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.A_log.copy_(torch.empty(self.n_head).uniform_(*A_init_range).log())

    def forward(self, u: Tensor, state: LayerState | None, backend: str, chunk_size: int):
        b, t, _ = u.shape
        conv_state, ssm_state = state if state is not None else (None, None)
        z, xbc, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, self.n_head], -1)
        xbc, conv_state = causal_conv1d(xbc, self.conv1d.weight, self.conv1d.bias, conv_state)
        x, B, C = F.silu(xbc).split([self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], -1)
        ct = torch.promote_types(dt.dtype, torch.float32)
        dt = F.softplus(dt.to(ct) + self.dt_bias.to(ct))
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        A = -torch.exp(self.A_log.to(ct))
        y, ssm_state = ssd(
            x.view(b, t, self.n_head, self.head_dim), dt, A,
            B.view(b, t, self.n_groups, self.d_state), C.view(b, t, self.n_groups, self.d_state), self.D,
            ssm_state, backend=backend, chunk_size=chunk_size,
        )
        y = self.norm(y.reshape(b, t, self.d_inner), z)
        return self.out_proj(y), (conv_state, ssm_state)


class Block(nn.Module):
    def __init__(self, d_model: int, norm_eps: float, residual_in_fp32: bool, **mixer_kwargs: Any):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = Mixer(d_model, norm_eps=norm_eps, **mixer_kwargs)

    def forward(self, x: Tensor, state: LayerState | None, backend: str, chunk_size: int):
        # normalised in fp32, handed on in the weights' dtype (the residual stream may be wider)
        out, state = self.mixer(self.norm(x).to(self.norm.weight.dtype), state, backend, chunk_size)
        if self.residual_in_fp32:  # the residual stream in at least fp32 (as state-spaces' default)
            return x.to(torch.promote_types(x.dtype, torch.float32)) + out, state
        return x + out.to(x.dtype), state


@RNN.register("mamba2")
class Mamba2(RecurrentLM):
    """Mamba-2 language model.

    Sizes as state-spaces/mamba: ``d_inner = expand * d_model`` split into ``d_inner / head_dim`` heads;
    ``n_groups`` groups of B and C (``d_state`` each) shared by consecutive heads. ``tie_embeddings`` shares the
    embedding with the LM head (the official checkpoints do). ``backend`` picks the SSD kernel (see
    :func:`aurora.kernels.ssd.ssd`); ``chunk_size`` is its chunk length.
    """

    # the checkpoint formats from_checkpoint reads (what aurora convert --format accepts for this backbone)
    formats: tuple[str, ...] = ("hf", "state-spaces")
    # long prefills without autograd run in pieces of this many tokens (RecurrentLM.run_blocks: linear in T)
    prefill_piece: int | None = 1024

    def __init__(
        self,
        vocab_size: int = 50288,
        d_model: int = 768,
        n_layer: int = 24,
        d_state: int = 128,
        head_dim: int = 64,
        expand: int = 2,
        n_groups: int = 1,
        d_conv: int = 4,
        bias: bool = False,
        conv_bias: bool = True,
        norm_eps: float = 1e-5,
        residual_in_fp32: bool = True,
        tie_embeddings: bool = True,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        chunk_size: int = 64,
        backend: str = "auto",
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        if d_inner % head_dim:
            raise ValueError(f"d_inner = expand * d_model = {d_inner} is not a multiple of head_dim {head_dim}")
        if (d_inner // head_dim) % n_groups:
            raise ValueError(f"the {d_inner // head_dim} heads do not split into n_groups = {n_groups} groups")
        if d_conv < 2:
            raise ValueError(f"d_conv must be >= 2, got {d_conv}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown ssd backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        self.vocab_size, self.d_model, self.n_layer = vocab_size, d_model, n_layer
        self.d_inner, self.d_state, self.head_dim, self.n_groups = d_inner, d_state, head_dim, n_groups
        self.n_head, self.d_conv = d_inner // head_dim, d_conv
        self.chunk_size, self.backend, self.grad_checkpoint = chunk_size, backend, grad_checkpoint
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            Block(d_model, norm_eps, residual_in_fp32, d_inner=d_inner, head_dim=head_dim, d_state=d_state,
                  n_groups=n_groups, d_conv=d_conv, bias=bias, conv_bias=conv_bias, dt_min=dt_min, dt_max=dt_max,
                  dt_init_floor=dt_init_floor, A_init_range=A_init_range, dt_limit=dt_limit)
            for _ in range(n_layer)
        )
        self.norm_f = RMSNorm(d_model, eps=norm_eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        with torch.no_grad():  # state-spaces' _init_weights: N(0, 0.02) embedding, zero biases, out_proj / sqrt(L)
            nn.init.normal_(self.embedding.weight, std=0.02)
            for layer in self.layers:
                for lin in (layer.mixer.in_proj, layer.mixer.out_proj):
                    if lin.bias is not None:
                        nn.init.zeros_(lin.bias)
                layer.mixer.out_proj.weight.div_(math.sqrt(n_layer))
        if tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    @property
    def tie_embeddings(self) -> bool:
        return self.lm_head.weight is self.embedding.weight

    def embed(self, ids: Tensor) -> Tensor:
        return self.embedding(ids)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> list[LayerState]:
        conv_dim = self.d_inner + 2 * self.n_groups * self.d_state
        ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return [
            (torch.zeros(batch_size, conv_dim, self.d_conv - 1, device=device, dtype=dtype),
             torch.zeros(batch_size, self.n_head, self.head_dim, self.d_state, device=device, dtype=ssm_dtype))
            for _ in range(self.n_layer)
        ]

    def forward(self, embeds: Tensor, state: list[LayerState] | None = None) -> tuple[Tensor, list[LayerState]]:
        self.check_input(embeds, state)
        if embeds.shape[1] == 0:
            return self.pass_through(embeds, state, self.norm_f)
        x, new_state = self.run_blocks(self.layers, embeds, state, self.backend, self.chunk_size)
        return self.norm_f(x).to(embeds.dtype), new_state

    # ------------------------------------------------------------------------------------------- checkpoints

    @staticmethod
    def config_from_state_dict(state_dict: dict[str, Any], n_groups: int | None = None) -> dict[str, Any]:
        """The constructor sizes of a checkpoint in our key layout (``embedding.weight``, ``layers.{i}...``).

        The weights fix everything but how ``2 * n_groups * d_state`` splits; ``n_groups`` defaults to 1 (the
        official models') unless given (from a config file).
        """
        try:
            vocab_size, d_model = state_dict["embedding.weight"].shape
            n_layer = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("layers."))
            pre = "layers.0.mixer."
            d_inner = state_dict[pre + "norm.weight"].shape[0]
            n_head = state_dict[pre + "A_log"].shape[0]
            conv_dim, _, d_conv = state_dict[pre + "conv1d.weight"].shape
        except (KeyError, ValueError) as e:
            raise ValueError(f"not a Mamba-2 checkpoint (missing or odd {e})") from None
        n_groups = n_groups or 1
        if d_inner % d_model or d_inner % n_head or (conv_dim - d_inner) % (2 * n_groups):
            raise ValueError(f"not a Mamba-2 checkpoint: d_model {d_model}, d_inner {d_inner}, {n_head} heads, "
                             f"conv width {conv_dim} and {n_groups} groups do not fit together")
        return dict(
            vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, expand=d_inner // d_model,
            head_dim=d_inner // n_head, d_state=(conv_dim - d_inner) // (2 * n_groups), n_groups=n_groups,
            d_conv=d_conv, bias=pre + "in_proj.bias" in state_dict, conv_bias=pre + "conv1d.bias" in state_dict,
            tie_embeddings="lm_head.weight" not in state_dict
            or torch.equal(state_dict["lm_head.weight"], state_dict["embedding.weight"]),
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> "Mamba2":
        """Load a local checkpoint: a transformers ``Mamba2ForCausalLM`` directory (config.json with
        ``model_type: mamba2`` + model.safetensors or pytorch_model.bin, sharded or not), a state-spaces/mamba
        directory (config.json with ``ssm_cfg`` + pytorch_model.bin), or a single weights file in either key layout
        (a config.json beside it is read if present). ``kwargs``: chunk_size, backend, grad_checkpoint, or
        overrides of the sizes.
        """
        path = Path(path)
        config = read_config(checkpoint_folder(path))
        _check_architecture(config)
        sd = to_our_keys(read_weights(path))
        n_groups = kwargs.pop("n_groups", None) or _config_n_groups(config)
        derived = cls.config_from_state_dict(sd, n_groups=n_groups)
        derived.update(_config_extras(config, derived))
        if derived["tie_embeddings"] and "lm_head.weight" in sd:
            # an untied head in the file wins over a config that says tied
            derived["tie_embeddings"] = torch.equal(sd["lm_head.weight"], sd["embedding.weight"])
        model = cls(**(derived | kwargs))
        load_state_dict(model, sd)
        return model

    def extra_repr(self) -> str:
        return (f"vocab={self.vocab_size}, d_model={self.d_model}, layers={self.n_layer}, heads={self.n_head}x"
                f"{self.head_dim}, d_state={self.d_state}, groups={self.n_groups}")


# ---------------------------------------------------------------------------------------- checkpoint formats


def to_our_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename state-spaces (``backbone.embedding``) or transformers (``backbone.embeddings``) keys to ours.

    Other keys pass through unchanged (so a wrong architecture is reported key by key when loading).
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            key = key[len("backbone."):]
            if key.startswith("embeddings."):
                key = "embedding." + key[len("embeddings."):]
        out[key] = value
    return out


def _as_float(v: Any) -> float:
    """A float from config.json; transformers writes infinity as ``{"__float__": "Infinity"}``."""
    return float(v["__float__"] if isinstance(v, dict) and "__float__" in v else v)


def _config_n_groups(config: dict[str, Any]) -> int | None:
    if "ssm_cfg" in config:
        return (config.get("ssm_cfg") or {}).get("ngroups", 1)
    return config.get("n_groups")


def _check_architecture(config: dict[str, Any]) -> None:
    """Refuse (ValueError) configs of architectures this model does not implement, before reading weights."""
    if "ssm_cfg" in config:  # state-spaces/mamba MambaConfig
        ssm = config.get("ssm_cfg") or {}
        if ssm.get("layer", "Mamba1") != "Mamba2":
            raise ValueError(f"not a Mamba-2 checkpoint: ssm_cfg.layer is {ssm.get('layer', 'Mamba1 (default)')!r}")
        if config.get("d_intermediate", 0) or config.get("attn_layer_idx"):
            raise ValueError("state-spaces hybrid checkpoints (MLP or attention layers) are not supported")
        if not config.get("rms_norm", True) or not ssm.get("rmsnorm", True) or ssm.get("norm_before_gate", False):
            raise ValueError("only Mamba-2 with RMSNorm blocks and the gated norm after the gate is supported")
        if ssm.get("D_has_hdim", False):
            raise ValueError("Mamba-2 with a per-channel D (D_has_hdim) is not supported")
    elif config and config.get("model_type", "mamba2") != "mamba2":
        raise ValueError(f"not a Mamba-2 checkpoint: model_type is {config['model_type']!r}")


def _config_extras(config: dict[str, Any], derived: dict[str, Any]) -> dict[str, Any]:
    """Settings the weights do not show (norm epsilon, residual dtype, tying, dt clamp), from either format's
    config.json, checked against the sizes the weights show."""
    if not config:
        return {}
    if "ssm_cfg" in config:
        ssm = config.get("ssm_cfg") or {}
        if ssm.get("d_ssm") not in (None, derived["expand"] * derived["d_model"]):
            raise ValueError("Mamba-2 with d_ssm < d_inner (a parallel gated MLP) is not supported")
        extras = dict(residual_in_fp32=config.get("residual_in_fp32", True),
                      tie_embeddings=config.get("tie_embeddings", True),
                      dt_limit=tuple(_as_float(v) for v in ssm.get("dt_limit", (0.0, float("inf")))))
        if "d_state" in ssm and ssm["d_state"] != derived["d_state"]:
            raise ValueError(f"config d_state {ssm['d_state']} does not match the weights ({derived['d_state']})")
        return extras
    extras = dict(norm_eps=config.get("layer_norm_epsilon", 1e-5),
                  residual_in_fp32=config.get("residual_in_fp32", True),
                  tie_embeddings=config.get("tie_word_embeddings", False))
    if "time_step_limit" in config:
        extras["dt_limit"] = tuple(_as_float(v) for v in config["time_step_limit"])
    if "state_size" in config and config["state_size"] != derived["d_state"]:
        raise ValueError(f"config state_size {config['state_size']} does not match the weights ({derived['d_state']})")
    return extras


def load_state_dict(model: Mamba2, state_dict: dict[str, Tensor]) -> None:
    """Load a state dict in our key layout (see :func:`to_our_keys`); names the mismatched keys on failure.

    A tied model accepts a file with or without ``lm_head.weight`` (it must then equal the embedding).
    """
    given = dict(state_dict)
    if model.tie_embeddings and "lm_head.weight" not in given and "embedding.weight" in given:
        given["lm_head.weight"] = given["embedding.weight"]
    head, emb = given.get("lm_head.weight"), given.get("embedding.weight")
    if model.tie_embeddings and head is not None and emb is not None and head.shape == emb.shape and not \
            torch.equal(head, emb):
        raise ValueError("the model ties lm_head.weight to embedding.weight but the checkpoint's differ; "
                         "build it with tie_embeddings=False")
    load_checked(model, given, "Mamba-2")
