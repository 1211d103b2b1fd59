"""Mamba (v1, Gu & Dao 2023): the selective-state-space language model of state-spaces' ``MambaLMHeadModel``.

Embedding, ``n_layer`` residual blocks ``x + Mixer(RMSNorm(x))``, a final RMSNorm and a (tied by default) LM
head. The mixer: ``in_proj`` to (x, z); a causal depthwise conv1d of width ``d_conv`` on x, then SiLU;
``x_proj`` to (dt of rank ``dt_rank``, B, C); ``dt_proj`` (its bias enters the scan and goes through softplus);
the selective scan with ``A = -exp(A_log)`` and skip ``D``; ``y * silu(z)``; ``out_proj``. The scan runs
through :func:`aurora.kernels.selective_scan.selective_scan` (chunked on CPU, mamba_ssm's kernels on CUDA).

Parameter names are state-spaces' own (``backbone.embedding``, ``backbone.layers.{i}.norm`` /
``.mixer.{in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj}``, ``backbone.norm_f``, ``lm_head``), so their
``pytorch_model.bin`` loads as it is; transformers' ``MambaForCausalLM`` differs only in
``backbone.embeddings`` (renamed on load) and leaves out a tied ``lm_head``. See :meth:`Mamba.from_checkpoint`.

State per layer: ``(conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state))``: the last ``d_conv``
inputs of the convolution (zeros before the start; only the newest ``d_conv - 1`` are read, the width matches
mamba_ssm's and transformers' caches) and the SSM state (float32, float64 for a float64 model).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.kernels.selective_scan import BACKENDS, selective_scan
from aurora.components.rnn._hf import checkpoint_folder, load_checked, read_config, read_weights
from aurora.components.rnn.layers import RMSNorm, causal_depthwise_conv
from aurora.registry import RNN
from aurora.types import RecurrentLM

LayerState = tuple[Tensor, Tensor]


class MambaMixer(nn.Module):
    """The selective-SSM mixer of one block (state-spaces' ``Mamba`` module, ``modules/mamba_simple.py``)."""

    def __init__(self, d_model: int, d_inner: int, d_state: int, d_conv: int, dt_rank: int, conv_bias: bool,
                 bias: bool, dt_min: float, dt_max: float, dt_init_floor: float):
        super().__init__()
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = d_inner, d_state, d_conv, dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, bias=conv_bias, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self._init(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """state-spaces' initialisation: S4D-real A, unit D, dt log-uniform in [dt_min, dt_max] via the bias."""
        self.A_log.copy_(torch.arange(1, self.d_state + 1, dtype=torch.float32).log().expand(self.d_inner, -1))
        self.D.fill_(1.0)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # the inverse of softplus
        for lin in (self.in_proj, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, h: Tensor, state: LayerState | None, backend: str, chunk_size: int):
        b, t, _ = h.shape
        x, z = self.in_proj(h).chunk(2, dim=-1)  # (B, T, d_inner) each
        if state is None:
            prev = x.new_zeros(b, self.d_conv, self.d_inner)
            ssm_state = None
        else:
            prev, ssm_state = state
            prev = prev.to(x.dtype).transpose(1, 2)  # (B, d_conv, d_inner): the newest input last
        # Causal depthwise conv: the last d_conv - 1 inputs of earlier pieces stand before x. Everything stays in
        # the (B, T, channels) layout of the projections; the scan gets (B, channels, T) views of it.
        new_conv = torch.cat([prev, x[:, -self.d_conv:]], 1)[:, -self.d_conv:].transpose(1, 2).contiguous()
        x = F.silu(causal_depthwise_conv(x, prev, self.conv1d.weight, self.conv1d.bias))

        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # (B, T, d_inner); the bias goes to the scan
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))
        y, ssm_state = selective_scan(
            x.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), self.D,
            z=z.transpose(1, 2), delta_bias=self.dt_proj.bias, delta_softplus=True, state=ssm_state,
            backend=backend, chunk_size=chunk_size,
        )
        return self.out_proj(y.transpose(1, 2)), (new_conv, ssm_state)


class MambaBlock(nn.Module):
    """``residual + Mixer(RMSNorm(residual))``; the residual stream in float32 at least when asked."""

    def __init__(self, d_model: int, norm_eps: float, residual_in_fp32: bool, **mixer: Any):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.norm = RMSNorm(d_model, eps=norm_eps, cast="weight")
        self.mixer = MambaMixer(d_model, **mixer)

    def forward(self, x: Tensor, state: LayerState | None, backend: str, chunk_size: int):
        residual = x.to(torch.promote_types(x.dtype, torch.float32)) if self.residual_in_fp32 else x
        out, state = self.mixer(self.norm(x), state, backend, chunk_size)
        return residual + out, state


class _Backbone(nn.Module):
    """Holds the parameters under state-spaces' names (``backbone.embedding`` / ``layers`` / ``norm_f``)."""

    def __init__(self, vocab_size: int, d_model: int, n_layer: int, norm_eps: float, residual_in_fp32: bool,
                 **mixer: Any):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(MambaBlock(d_model, norm_eps, residual_in_fp32, **mixer) for _ in range(n_layer))
        self.norm_f = RMSNorm(d_model, eps=norm_eps, cast="weight")


@RNN.register("mamba")
class Mamba(RecurrentLM):
    """Mamba (v1) language model.

    ``d_inner`` defaults to ``int(expand * d_model)``, ``dt_rank`` to ``ceil(d_model / 16)`` (both as
    state-spaces). ``dt_min`` / ``dt_max`` / ``dt_init_floor`` shape the initial time steps; ``residual_in_fp32``
    keeps the residual stream in float32 under lower-precision weights (as the released models). ``backend``
    picks the selective-scan kernel (see :func:`aurora.kernels.selective_scan.selective_scan`).
    """

    # the checkpoint formats from_checkpoint reads (what aurora convert --format accepts for this backbone)
    formats: tuple[str, ...] = ("hf", "state-spaces")
    # long prefills without autograd run in pieces of this many tokens (RecurrentLM.run_blocks: linear in T)
    prefill_piece: int | None = 1024

    def __init__(
        self,
        vocab_size: int = 50280,
        d_model: int = 768,
        n_layer: int = 24,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        d_inner: int | None = None,
        dt_rank: int | str = "auto",
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        residual_in_fp32: bool = True,
        tie_embeddings: bool = True,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 8,
        backend: str = "auto",
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown selective-scan backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        d_inner = d_inner or int(expand * d_model)
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        if min(vocab_size, d_model, n_layer, d_state, d_conv, d_inner, dt_rank) < 1:
            raise ValueError("vocab_size, d_model, n_layer, d_state, d_conv, d_inner and dt_rank must be >= 1")
        self.vocab_size, self.d_model, self.n_layer = vocab_size, d_model, n_layer
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = d_inner, d_state, d_conv, dt_rank
        self.tie_embeddings = tie_embeddings
        self.chunk_size, self.backend, self.grad_checkpoint = chunk_size, backend, grad_checkpoint
        self.backbone = _Backbone(
            vocab_size, d_model, n_layer, norm_eps, residual_in_fp32, d_inner=d_inner, d_state=d_state,
            d_conv=d_conv, dt_rank=dt_rank, conv_bias=conv_bias, bias=bias, dt_min=dt_min, dt_max=dt_max,
            dt_init_floor=dt_init_floor,
        )
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        with torch.no_grad():  # state-spaces' _init_weights: embedding N(0, 0.02), out_proj scaled by 1/sqrt(depth)
            nn.init.normal_(self.backbone.embedding.weight, std=0.02)
            for layer in self.backbone.layers:
                nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
                layer.mixer.out_proj.weight /= math.sqrt(n_layer)
        if tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def embed(self, ids: Tensor) -> Tensor:
        return self.backbone.embedding(ids)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> list[LayerState]:
        ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return [
            (torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
             torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype))
            for _ in range(self.n_layer)
        ]

    def forward(self, embeds: Tensor, state: list[LayerState] | None = None) -> tuple[Tensor, list[LayerState]]:
        self.check_input(embeds, state)
        if state is not None:
            b, want = embeds.shape[0], ((self.d_inner, self.d_conv), (self.d_inner, self.d_state))
            for i, layer in enumerate(state):
                if len(layer) != 2 or any(tuple(s.shape) != (b, *w) for s, w in zip(layer, want)):
                    raise ValueError(f"state of layer {i} must be (conv (B, {self.d_inner}, {self.d_conv}), ssm "
                                     f"(B, {self.d_inner}, {self.d_state})) with B = {b}; got "
                                     f"{[tuple(s.shape) for s in layer]}")
        if embeds.shape[1] == 0:
            return self.pass_through(embeds, state, self.backbone.norm_f)
        x, new_state = self.run_blocks(self.backbone.layers, embeds, state, self.backend, self.chunk_size)
        return self.backbone.norm_f(x), new_state

    def extra_repr(self) -> str:
        return (f"vocab={self.vocab_size}, d_model={self.d_model}, layers={self.n_layer}, d_inner={self.d_inner}, "
                f"d_state={self.d_state}, d_conv={self.d_conv}, dt_rank={self.dt_rank}, tied={self.tie_embeddings}")

    # ------------------------------------------------------------------------------------------ checkpoints

    @staticmethod
    def config_from_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
        """The constructor sizes of a state-spaces or transformers Mamba state dict (names as either uses)."""
        sd = normalize_state_dict(state_dict)
        p = "backbone.layers.0.mixer."
        try:
            vocab_size, d_model = sd["backbone.embedding.weight"].shape
            n_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("backbone.layers."))
            d_inner, d_state = sd[p + "A_log"].shape
            d_conv = sd[p + "conv1d.weight"].shape[-1]
            dt_rank = sd[p + "dt_proj.weight"].shape[1]
        except (KeyError, ValueError) as e:
            raise ValueError(f"not a Mamba (v1) checkpoint (missing or odd {e}); keys start with "
                             f"{sorted(state_dict)[:5]}") from None
        head = sd.get("lm_head.weight")
        return dict(
            vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, d_inner=d_inner, d_state=d_state,
            d_conv=d_conv, dt_rank=dt_rank, conv_bias=p + "conv1d.bias" in sd, bias=p + "in_proj.bias" in sd,
            tie_embeddings=head is None or torch.equal(head, sd["backbone.embedding.weight"]),
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> "Mamba":
        """Load a Mamba checkpoint from LOCAL files and return a model of its shape with its weights.

        ``path``: a directory with ``config.json`` and ``model.safetensors`` (or sharded ``*.safetensors`` with
        an index) or ``pytorch_model.bin``, as written by transformers' ``MambaForCausalLM.save_pretrained`` or
        released by state-spaces (``config.json`` with ``d_model``, ``n_layer``, ``vocab_size``, ``ssm_cfg``); or
        one ``.safetensors`` / ``.bin`` / ``.pt`` / ``.pth`` state-dict file (then a ``config.json`` beside it is
        used when present, else the sizes come from the weights). With a config the model is built from it, and
        weights that do not fit raise ``ValueError`` naming the keys. ``kwargs`` (chunk_size, backend,
        grad_checkpoint, ...) override the constructor arguments. Weights are cast to float32 (the model's dtype).
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no Mamba checkpoint at {path}")
        sd = normalize_state_dict(read_weights(path))
        config = read_config(checkpoint_folder(path))
        if config:
            args = config_from_json(config)
            emb = sd.get("backbone.embedding.weight")
            if "lm_head.weight" in sd and emb is not None and args.get("tie_embeddings", True):
                args["tie_embeddings"] = torch.equal(sd["lm_head.weight"], emb)
        else:
            args = cls.config_from_state_dict(sd)
        model = cls(**(args | kwargs))
        load_state_dict(model, sd)
        return model


def normalize_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """transformers' names -> state-spaces' (ours): ``embeddings`` -> ``embedding``, a missing ``backbone.``
    prefix (a bare ``MambaModel``) added."""
    keys = list(state_dict)
    bare = not any(k.startswith("backbone.") for k in keys) and any(
        k.startswith(("embeddings.", "embedding.", "layers.")) for k in keys)
    out = {}
    for k, v in state_dict.items():
        if bare and k != "lm_head.weight":
            k = "backbone." + k
        if k.startswith("backbone.embeddings."):
            k = "backbone.embedding." + k[len("backbone.embeddings."):]
        out[k] = v
    return out


def config_from_json(config: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments from a transformers ``MambaConfig`` or a state-spaces ``config.json``."""
    if "hidden_size" in config or config.get("model_type") == "mamba":  # transformers
        if config.get("model_type", "mamba") != "mamba":
            raise ValueError(f"not a Mamba (v1) config: model_type {config.get('model_type')!r}")
        if config.get("hidden_act", "silu") not in ("silu", "swish"):
            raise ValueError(f"only SiLU Mamba is supported, the config has hidden_act {config['hidden_act']!r}")
        d_model = config["hidden_size"]
        return dict(
            vocab_size=config["vocab_size"], d_model=d_model, n_layer=config["num_hidden_layers"],
            d_state=config.get("state_size", 16), d_conv=config.get("conv_kernel", 4),
            d_inner=config.get("intermediate_size") or int(config.get("expand", 2) * d_model),
            dt_rank=config.get("time_step_rank", "auto"), conv_bias=config.get("use_conv_bias", True),
            bias=config.get("use_bias", False), norm_eps=config.get("layer_norm_epsilon", 1e-5),
            residual_in_fp32=config.get("residual_in_fp32", True),
            tie_embeddings=config.get("tie_word_embeddings", True),
        )
    if "d_model" in config and "n_layer" in config:  # state-spaces MambaConfig
        ssm = dict(config.get("ssm_cfg") or {})
        layer = ssm.pop("layer", "Mamba1")
        if layer != "Mamba1":
            raise ValueError(f"not a Mamba (v1) checkpoint: ssm_cfg.layer is {layer!r}")
        if not config.get("rms_norm", True):
            raise ValueError("only RMSNorm Mamba checkpoints are supported (the config has rms_norm: false)")
        if config.get("attn_layer_idx"):
            raise ValueError("hybrid Mamba / attention checkpoints (attn_layer_idx) are not supported")
        vocab, multiple = config["vocab_size"], config.get("pad_vocab_size_multiple", 1)
        vocab += -vocab % multiple  # state-spaces pads the table to a multiple
        known = {"d_state", "d_conv", "expand", "dt_rank", "conv_bias", "bias", "dt_min", "dt_max",
                 "dt_init_floor"}
        ignored = {"dt_init", "dt_scale", "use_fast_path"}
        odd = set(ssm) - known - ignored
        if odd:
            raise ValueError(f"unsupported ssm_cfg entries: {sorted(odd)}")
        return dict(vocab_size=vocab, d_model=config["d_model"], n_layer=config["n_layer"],
                    norm_eps=config.get("norm_epsilon", 1e-5), residual_in_fp32=config.get("residual_in_fp32", True),
                    tie_embeddings=config.get("tie_embeddings", True),
                    **{k: v for k, v in ssm.items() if k in known})
    raise ValueError(f"not a Mamba config.json (neither transformers' hidden_size nor state-spaces' d_model / "
                     f"n_layer); keys: {sorted(config)}")


def load_state_dict(model: Mamba, state_dict: dict[str, Any]) -> None:
    """Load a state-spaces / transformers Mamba state dict into ``model``; names the mismatched keys on failure.

    A tied model needs no ``lm_head.weight`` (transformers leaves it out); if one is given it must equal the
    embedding.
    """
    sd = normalize_state_dict(state_dict)
    head, emb = sd.get("lm_head.weight"), sd.get("backbone.embedding.weight")
    if model.tie_embeddings and head is not None and emb is not None and head.shape == emb.shape and not \
            torch.equal(head, emb):
        raise ValueError("checkpoint has an lm_head.weight different from backbone.embedding.weight, but the model "
                         "ties them (build it with tie_embeddings=False)")
    load_checked(model, sd, "Mamba", optional={"lm_head.weight"} if model.tie_embeddings else ())

