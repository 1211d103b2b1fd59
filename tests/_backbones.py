"""Test helpers shared by the language backbones' tests: one tiny configuration per registered backbone, the
randomised weights its tests use, and the relative closeness every comparison is held to.

``tests/components/test_backbone_contract.py`` runs the contract every backbone keeps (pieces == one shot, the two kernel
forms agree, gradients, gradient checkpointing, empty sequences, bad input) over :data:`TINY`; each backbone's
own file keeps what only it has (kernels, reference parity, checkpoint formats) and builds its models here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import aurora.components  # noqa: F401  (fills the registries)
from aurora.registry import RNN


@dataclass(frozen=True)
class TinyBackbone:
    """A tiny float64 model of one backbone and what its contract tests expect of it."""

    config: dict[str, Any]  # constructor arguments: d_model 64, n_layer 2
    rtol: float  # pieces vs one shot, and the two forms against each other (float64)
    backends: str  # the list an unknown backend's error names
    forms: tuple[dict[str, Any], dict[str, Any]] = ({"backend": "chunked"}, {"backend": "recurrent"})
    contract: dict[str, Any] = field(default_factory=dict)  # the richest variant the contract runs (GQA, untied)
    scales: dict[str, float] = field(default_factory=dict)  # parameter-name suffix -> noise scale (others 0.1)
    state_grows: bool = False  # a KV cache instead of a fixed-size state


LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=64)
FLA = "auto, chunked, recurrent, fla"

TINY: dict[str, TinyBackbone] = {
    "rwkv6": TinyBackbone(dict(vocab_size=500, d_model=64, n_layer=2, head_size=16), 1e-6, FLA,
                          scales={"time_decay": 0.3}),
    "rwkv7": TinyBackbone(dict(vocab_size=200, d_model=64, n_layer=2, head_size=16, decay_lora=8, a_lora=8,
                               v_lora=8, gate_lora=16), 1e-9, FLA),
    "mamba": TinyBackbone(dict(vocab_size=300, d_model=64, n_layer=2, d_state=8), 1e-10,
                          "auto, chunked, recurrent, mamba_ssm", contract=dict(tie_embeddings=False)),
    "mamba2": TinyBackbone(dict(vocab_size=200, d_model=64, n_layer=2, d_state=16, head_dim=16, n_groups=2,
                                chunk_size=8), 1e-6, "auto, chunked, recurrent, mamba_ssm, fla",
                           contract=dict(tie_embeddings=False), scales={"A_log": 0.5, "dt_bias": 0.5}),
    "gla": TinyBackbone(dict(vocab_size=200, d_model=64, n_layer=2, n_head=2), 1e-6, FLA,
                        forms=({"backend": "chunked", "chunk_size": 8}, {"backend": "recurrent"}),
                        contract=dict(n_kv_head=1), scales={"bias": 1.5}),
    "gated_deltanet": TinyBackbone(dict(vocab_size=200, d_model=64, n_layer=2, n_head=2, head_dim=16), 1e-10, FLA,
                                   forms=({"backend": "chunked", "chunk_size": 8}, {"backend": "recurrent"}),
                                   contract=dict(n_v_head=4, allow_neg_eigval=True), scales={"bias": 1.5}),
    "transformer": TinyBackbone(dict(vocab_size=200, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ffn=96,
                                     qkv_bias=True, rope_theta=500.0, rope_scaling=LLAMA3), 1e-10, "auto, sdpa, eager",
                                forms=({"backend": "sdpa"}, {"backend": "eager"}), state_grows=True),
}


def spec(name: str) -> TinyBackbone:
    """The tiny configuration of a registered backbone; a backbone without one fails, naming itself."""
    if name not in TINY:
        raise LookupError(f"rnn backbone {name!r} is registered but has no tiny configuration: add one to TINY in "
                          f"tests/_backbones.py so the backbone contract covers it (have: {', '.join(TINY)})")
    return TINY[name]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max error relative to the largest magnitude of the reference, at least 1 (outputs span many orders)."""
    return (got.double() - want.double()).abs().max().item() / max(1.0, want.double().abs().max().item())


def close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> bool:
    return rel_err(got, want) <= rtol


def randomised(model: torch.nn.Module, scale: float = 0.1, seed: int = 0,
               scales: dict[str, float] | None = None) -> torch.nn.Module:
    """Perturb every weight (zero-initialised projections, norm gains, biases included) so each code path carries
    signal; ``scales`` gives other noise scales to the parameters whose names end with a key."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            s = next((v for k, v in (scales or {}).items() if name.endswith(k)), scale)
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * s)
    return model


def tiny(name: str, dtype: torch.dtype = torch.float64, **kw: Any) -> torch.nn.Module:
    """The backbone ``name`` built from its tiny configuration (``kw`` override it), randomised, in eval mode."""
    s = spec(name)
    torch.manual_seed(0)
    return randomised(RNN.get(name)(**(s.config | kw)), scales=s.scales).to(dtype).eval()


def run_in_pieces(model: torch.nn.Module, x: torch.Tensor, cuts: list[int]) -> tuple[torch.Tensor, Any]:
    """``x`` fed as the pieces between consecutive ``cuts``, the state carried along: (hidden, final state)."""
    outs, state = [], None
    for a, b in zip(cuts[:-1], cuts[1:]):
        h, state = model(x[:, a:b], state)
        outs.append(h)
    return torch.cat(outs, 1), state
