"""Gated DeltaNet (Yang, Kautz & Hatamizadeh, 2024) as a language model.

The architecture of fla's ``GatedDeltaNetForCausalLM`` (flash-linear-attention, ``fla/models/gated_deltanet`` +
``fla/layers/gated_deltanet.py``), on the pre-norm block, SwiGLU MLP, final norm and untied ``lm_head`` shared with
:mod:`aurora.components.rnn.gla`. The token mixer of each block:

- q, k (``num_heads * head_dim`` = key_dim) and v (``num_v_heads * head_dim * expand_v`` = value_dim) projections,
  each through a causal depthwise short convolution of width ``conv_size`` and SiLU (SiLU alone without the
  convolutions); q and k L2-normalised per head (``x / sqrt(sum x² + 1e-6)``, fla's in-kernel norm);
- per value head a scalar log decay ``g = -exp(A_log) * softplus(a_proj(x) + dt_bias)`` and a write strength
  ``beta = sigmoid(b_proj(x))`` (times 2 with ``allow_neg_eigval``);
- the gated delta rule :func:`aurora.kernels.gated_delta.gated_delta` (chunked on CPU, fla's kernels on CUDA) with
  scale ``head_dim ** -0.5``; value head j reads q / k head ``j // (num_v_heads / num_heads)``;
- each head's output RMS-normalised and multiplied by the output gate ``act(g_proj(x))`` (fla's
  ``FusedRMSNormGated``; act = swish, or sigmoid) or, without the gate, RMS-normalised alone; then ``o_proj``.

Parameter names follow the fla-hub Hugging Face checkpoints (``model.embeddings.weight``,
``model.layers.{i}.attn.{q,k,v}_proj.weight``, ``...attn.{q,k,v}_conv1d.weight``, ``...attn.a_proj.weight``,
``...attn.b_proj.weight``, ``...attn.A_log``, ``...attn.dt_bias``, ``...attn.g_proj.weight``,
``...attn.o_norm.weight``, ``...attn.o_proj.weight``, ``...mlp.{gate,up,down}_proj.weight``, ``model.norm.weight``,
``lm_head.weight``), so :meth:`GatedDeltaNet.from_checkpoint` loads an fla-hub directory directly and
:meth:`GatedDeltaNet.save_checkpoint` writes one that fla's ``GatedDeltaNetForCausalLM.from_pretrained`` loads.

State per layer: ``(conv, S)`` (``(S,)`` without short convolutions): ``conv`` (B, 2 key_dim + value_dim,
conv_size) holds the last ``conv_size`` inputs of the q | k | v convolutions (channels in that order, zeros before
the start; only the newest ``conv_size - 1`` are read) in the model's dtype; ``S`` (B, num_v_heads, head_dim,
head_v_dim) is the delta-rule matrix state, float32 (float64 for a float64 model).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.components.rnn.gla import FlaCausalLM, default_d_ffn
from aurora.components.rnn.layers import GATE_ACTIVATIONS, GatedRMSNorm, RMSNorm, causal_depthwise_conv, exact_dim
from aurora.kernels.gated_delta import BACKENDS, gated_delta
from aurora.registry import RNN


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """fla's L2 norm over the last dim, ``x / sqrt(sum x² + eps)``, in float32 at least, returned in x's dtype."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)  # one pass (pow + sum would take two)
    return (xf * torch.rsqrt(norm * norm + eps)).to(x.dtype)


class GatedDeltaNetMixer(nn.Module):
    """The token mixer of one block (fla's ``GatedDeltaNet`` layer)."""

    def __init__(self, d_model: int, n_head: int, n_v_head: int, head_dim: int, head_v_dim: int, use_gate: bool,
                 use_short_conv: bool, conv_size: int, allow_neg_eigval: bool, output_gate_activation: str,
                 norm_eps: float):
        super().__init__()
        self.n_head, self.n_v_head, self.head_k_dim, self.head_v_dim = n_head, n_v_head, head_dim, head_v_dim
        self.key_dim, self.value_dim = n_head * head_dim, n_v_head * head_v_dim
        self.use_gate, self.use_short_conv, self.conv_size = use_gate, use_short_conv, conv_size
        self.allow_neg_eigval = allow_neg_eigval
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.a_proj = nn.Linear(d_model, n_v_head, bias=False)
        self.b_proj = nn.Linear(d_model, n_v_head, bias=False)
        # fla's initialisation: A ~ U(0, 16); dt = exp(U(log 1e-3, log 0.1)) (>= 1e-4), dt_bias its inverse softplus
        self.A_log = nn.Parameter(torch.empty(n_v_head).uniform_(0, 16).log())
        dt = torch.exp(torch.rand(n_v_head) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        if use_short_conv:  # depthwise causal convolutions (fla's ShortConvolution: an nn.Conv1d, no bias)
            for name, dim in (("q_conv1d", self.key_dim), ("k_conv1d", self.key_dim), ("v_conv1d", self.value_dim)):
                self.add_module(name, nn.Conv1d(dim, dim, conv_size, groups=dim, padding=conv_size - 1, bias=False))
        if use_gate:  # fla's FusedRMSNormGated: rmsnorm(o) * act(g)
            self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
            self.o_norm: nn.Module = GatedRMSNorm(head_v_dim, norm_eps, output_gate_activation)
        else:
            self.o_norm = RMSNorm(head_v_dim, norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)

    @property
    def conv_channels(self) -> int:
        return 2 * self.key_dim + self.value_dim

    def forward(self, x: Tensor, state: tuple[Tensor, ...] | None, backend: str, chunk_size: int | None):
        b, t, _ = x.shape
        h, hv, dk, dv = self.n_head, self.n_v_head, self.head_k_dim, self.head_v_dim
        if state is not None and len(state) != (2 if self.use_short_conv else 1):
            raise ValueError(f"a layer state must be {'(conv, S)' if self.use_short_conv else '(S,)'}; "
                             f"got {len(state)} tensors")
        dims = (self.key_dim, self.key_dim, self.value_dim)
        projs = (self.q_proj, self.k_proj, self.v_proj)
        conv_state = None
        if self.use_short_conv:
            c, w = self.conv_channels, self.conv_size
            if state is None:
                prev = x.new_zeros(b, c, w)
            else:
                prev = state[0]
                if prev.shape != (b, c, w):
                    raise ValueError(f"conv state must be (B, 2 key_dim + value_dim, conv_size) = ({b}, {c}, {w}); "
                                     f"got {tuple(prev.shape)}")
            convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
            outs, news = [], []
            for proj, conv, part in zip(projs, convs, prev.split(dims, 1)):
                xp = proj(x)  # (B, T, C_part)
                part = part.to(xp.dtype).transpose(1, 2)  # (B, conv_size, C_part): the newest inputs last
                outs.append(F.silu(causal_depthwise_conv(xp, part, conv.weight)))
                news.append(torch.cat([part, xp[:, -w:]], 1)[:, -w:])
            conv_state = torch.cat(news, 2).transpose(1, 2).contiguous()  # (B, C, conv_size), a small copy
            q, k, v = outs
        else:
            q, k, v = (F.silu(proj(x)) for proj in projs)
        q, k = l2_normalize(q.reshape(b, t, h, dk)), l2_normalize(k.reshape(b, t, h, dk))
        v = v.reshape(b, t, hv, dv)

        dt = torch.promote_types(x.dtype, torch.float32)
        beta = torch.sigmoid(self.b_proj(x).to(dt))
        if self.allow_neg_eigval:
            beta = 2 * beta
        g = -self.A_log.to(dt).exp() * F.softplus(self.a_proj(x).to(dt) + self.dt_bias.to(dt))
        o, s = gated_delta(q, k, v, g, beta, state[-1] if state is not None else None, backend=backend,
                           chunk_size=chunk_size, scale=dk ** -0.5)
        o = self.o_norm(o, self.g_proj(x).reshape(b, t, hv, dv)) if self.use_gate else self.o_norm(o)
        y = self.o_proj(o.reshape(b, t, hv * dv).to(x.dtype))
        return y, ((conv_state, s) if self.use_short_conv else (s,))


@RNN.register("gated_deltanet")
class GatedDeltaNet(FlaCausalLM):
    """Gated DeltaNet language model (fla-hub layout).

    Sizes as fla's ``GatedDeltaNetConfig``: ``n_head`` query / key heads of ``head_dim``, ``n_v_head`` value heads
    (default ``n_head``; more make grouped value attention) of ``head_dim * expand_v``; ``d_ffn`` defaults to
    fla's rule (2/3 of 4 d_model, rounded up to 256). ``backend`` picks the delta-rule kernel (see
    :func:`aurora.kernels.gated_delta.gated_delta`); ``chunk_size`` is the CPU chunked form's (None: chosen from the
    head sizes, :func:`aurora.kernels.gated_delta.auto_chunk_size`; fla's kernels on CUDA use their own 64).
    """

    # the checkpoint formats from_checkpoint reads (what aurora convert --format accepts for this backbone)
    formats: tuple[str, ...] = ("hf",)
    # long prefills without autograd run in pieces of this many tokens (RecurrentLM.run_blocks: linear in T)
    prefill_piece: int | None = 1024

    def __init__(
        self,
        vocab_size: int = 32000,
        d_model: int = 2048,
        n_layer: int = 21,
        n_head: int = 6,
        n_v_head: int | None = None,
        head_dim: int = 256,
        expand_v: float = 2.0,
        d_ffn: int | None = None,
        use_gate: bool = True,
        use_short_conv: bool = True,
        conv_size: int = 4,
        allow_neg_eigval: bool = False,
        output_gate_activation: str = "swish",
        norm_eps: float = 1e-6,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        chunk_size: int | None = None,
        backend: str = "auto",
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown gated_deltanet backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        n_v_head = n_v_head or n_head
        if min(vocab_size, d_model, n_layer, n_head, head_dim, conv_size) < 1:
            raise ValueError("vocab_size, d_model, n_layer, n_head, head_dim and conv_size must be >= 1")
        if n_v_head % n_head:
            raise ValueError(f"n_v_head {n_v_head} must be a multiple of n_head {n_head} (grouped value heads)")
        if output_gate_activation not in GATE_ACTIVATIONS:
            raise ValueError(f"output_gate_activation must be one of {', '.join(GATE_ACTIVATIONS)}; "
                             f"got {output_gate_activation!r}")
        head_v_dim = exact_dim(head_dim * expand_v, "head_dim * expand_v")
        self.vocab_size, self.d_model, self.n_layer = vocab_size, d_model, n_layer
        self.n_head, self.n_v_head, self.head_k_dim, self.head_v_dim = n_head, n_v_head, head_dim, head_v_dim
        self.use_short_conv, self.conv_size = use_short_conv, conv_size
        self.chunk_size, self.backend, self.grad_checkpoint = chunk_size, backend, grad_checkpoint
        self.config = dict(
            vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, n_head=n_head, n_v_head=n_v_head,
            head_dim=head_dim, expand_v=expand_v, d_ffn=d_ffn or default_d_ffn(d_model), use_gate=use_gate,
            use_short_conv=use_short_conv, conv_size=conv_size, allow_neg_eigval=allow_neg_eigval,
            output_gate_activation=output_gate_activation, norm_eps=norm_eps,
            tie_word_embeddings=tie_word_embeddings, initializer_range=initializer_range,
        )
        mixer = dict(n_head=n_head, n_v_head=n_v_head, head_dim=head_dim, head_v_dim=head_v_dim, use_gate=use_gate,
                     use_short_conv=use_short_conv, conv_size=conv_size, allow_neg_eigval=allow_neg_eigval,
                     output_gate_activation=output_gate_activation, norm_eps=norm_eps)
        self._build(self.config["d_ffn"], norm_eps, [GatedDeltaNetMixer(d_model, **mixer) for _ in range(n_layer)])

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> list[tuple[Tensor, ...]]:
        s_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        channels = 2 * self.n_head * self.head_k_dim + self.n_v_head * self.head_v_dim
        states = []
        for _ in range(self.n_layer):
            s = torch.zeros(batch_size, self.n_v_head, self.head_k_dim, self.head_v_dim, device=device, dtype=s_dtype)
            conv = torch.zeros(batch_size, channels, self.conv_size, device=device, dtype=dtype)
            states.append((conv, s) if self.use_short_conv else (s,))
        return states

    def extra_repr(self) -> str:
        return (f"vocab={self.vocab_size}, d_model={self.d_model}, layers={self.n_layer}, heads={self.n_head}, "
                f"v_heads={self.n_v_head}, head_k={self.head_k_dim}, head_v={self.head_v_dim}")

    # ------------------------------------------------------------------------------------- checkpoints

    @staticmethod
    def config_from_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
        """The constructor sizes of an fla-hub-format state dict (shapes alone; options keep their defaults).

        The weights cannot tell how key_dim splits into heads: this assumes as many query / key heads as value heads
        (fla's default, ``num_v_heads=None``). A checkpoint with grouped value heads needs its config.json.
        """
        try:
            vocab_size, d_model = state_dict["model.embeddings.weight"].shape
            n_layer = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("model.layers."))
            p = "model.layers.0.attn."
            n_v_head = state_dict[p + "A_log"].shape[0]
            head_v_dim = state_dict[p + "o_norm.weight"].shape[0]
            key_dim = state_dict[p + "q_proj.weight"].shape[0]
            use_short_conv = p + "q_conv1d.weight" in state_dict
            sizes = dict(
                vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, n_head=n_v_head, n_v_head=n_v_head,
                d_ffn=state_dict["model.layers.0.mlp.gate_proj.weight"].shape[0],
                use_gate=p + "g_proj.weight" in state_dict, use_short_conv=use_short_conv,
                conv_size=state_dict[p + "q_conv1d.weight"].shape[-1] if use_short_conv else 4,
                tie_word_embeddings="lm_head.weight" not in state_dict,
            )
        except (KeyError, ValueError, IndexError) as e:
            raise ValueError(f"not an fla-hub Gated DeltaNet checkpoint (missing or odd {e})") from None
        if n_v_head < 1 or key_dim % n_v_head:
            raise ValueError(f"key_dim {key_dim} does not split over the {n_v_head} value heads: the weights alone "
                             "cannot give the head layout; load the checkpoint directory with its config.json")
        head_dim = key_dim // n_v_head
        return sizes | dict(head_dim=head_dim, expand_v=head_v_dim / head_dim)

    @staticmethod
    def config_from_hf(config: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments from an fla ``GatedDeltaNetConfig`` (config.json); unsupported variants raise."""
        if config.get("model_type") != "gated_deltanet":
            raise ValueError(f"config.json is for model_type {config.get('model_type')!r}, not 'gated_deltanet'")
        unsupported = {
            "hidden_act": ("swish", config.get("hidden_act", "swish")),
            "attn (hybrid softmax-attention layers)": (None, config.get("attn")),
            "attnres_block_size": (None, config.get("attnres_block_size")),
        }
        bad = [f"{k}={got!r} (supported: {want!r})" for k, (want, got) in unsupported.items() if got != want]
        if bad:
            raise ValueError(f"unsupported Gated DeltaNet variant: {', '.join(bad)}")
        d_model = config.get("hidden_size", 2048)
        d_ffn = config.get("intermediate_size") or default_d_ffn(d_model, config.get("hidden_ratio") or 4)
        return dict(
            vocab_size=config.get("vocab_size", 32000), d_model=d_model,
            n_layer=config.get("num_hidden_layers", 21), n_head=config.get("num_heads", 6),
            n_v_head=config.get("num_v_heads"), head_dim=config.get("head_dim", 256),
            expand_v=config.get("expand_v", 2.0), d_ffn=d_ffn, use_gate=config.get("use_gate", True),
            use_short_conv=config.get("use_short_conv", True), conv_size=config.get("conv_size", 4),
            allow_neg_eigval=config.get("allow_neg_eigval", False),
            output_gate_activation=config.get("output_gate_activation", "swish"),
            norm_eps=config.get("norm_eps", 1e-6), tie_word_embeddings=config.get("tie_word_embeddings", False),
            initializer_range=config.get("initializer_range", 0.02),
        )

    def hf_config(self) -> dict[str, Any]:
        """This model as an fla ``GatedDeltaNetConfig`` dict (what config.json of an fla-hub checkpoint holds)."""
        c = self.config
        return dict(
            model_type="gated_deltanet", architectures=["GatedDeltaNetForCausalLM"], attn_mode="chunk",
            vocab_size=c["vocab_size"], hidden_size=c["d_model"], num_hidden_layers=c["n_layer"],
            num_heads=c["n_head"], num_v_heads=None if c["n_v_head"] == c["n_head"] else c["n_v_head"],
            head_dim=c["head_dim"], expand_v=c["expand_v"], hidden_ratio=4, intermediate_size=c["d_ffn"],
            use_gate=c["use_gate"], use_short_conv=c["use_short_conv"], conv_size=c["conv_size"],
            allow_neg_eigval=c["allow_neg_eigval"], output_gate_activation=c["output_gate_activation"],
            norm_eps=c["norm_eps"], tie_word_embeddings=c["tie_word_embeddings"],
            initializer_range=c["initializer_range"], hidden_act="swish", fuse_norm=True, attn=None,
            attnres_block_size=None, bos_token_id=1, eos_token_id=2,
        )
