"""GLA: the kernels against each other and fla's naive reference, the model against fla's own GLAForCausalLM."""
import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from _backbones import TINY, close, randomised
from _backbones import tiny as tiny_backbone
from aurora.components.rnn.gla import GLA, load_fla_state_dict
from aurora.kernels.gla import gla, gla_chunked, gla_recurrent


def inputs(b=2, t=37, h=3, n=8, dv=6, decay="mixed", dtype=torch.float64, seed=0):
    """Random q, k (B, T, H, K), v (B, T, H, V), log decay g (B, T, H, K) and a nonzero state (B, H, K, V)."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, t, h, n, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, t, h, dv, generator=gen, dtype=torch.float64)
    raw = torch.randn(b, t, h, n, generator=gen, dtype=torch.float64)
    if decay == "strong":  # every channel forgets almost everything each step: log decay in [-200, -50]
        g = -(50 + 150 * torch.rand(b, t, h, n, generator=gen, dtype=torch.float64))
    elif decay == "mixed":  # from ~-0.01 (long memory) down to ~-1000 (none) within one tensor
        g = -torch.exp(raw * 2.5)
    elif decay == "spiky":  # weak decays with a token of -300 every so often in the same channel
        g = -torch.exp(raw - 3)
        g[:, ::7, :, : n // 2] = -300.0
    else:
        g = -torch.exp(raw - 2)
    s0 = torch.randn(b, h, n, dv, generator=gen, dtype=torch.float64)
    return tuple(x.to(dtype) for x in (q, k, v, g, s0))


# ---------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("decay", ["weak", "mixed", "strong", "spiky"])
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_equals_recurrent_fp64(decay, chunk):
    q, k, v, g, s0 = inputs(decay=decay)  # T = 37: not a multiple of any chunk size but 1
    o1, s1 = gla_recurrent(q, k, v, g, s0, scale=0.7)
    o2, s2 = gla_chunked(q, k, v, g, s0, chunk_size=chunk, scale=0.7)
    assert o2.dtype == s2.dtype == torch.float64
    assert torch.isfinite(o2).all() and torch.isfinite(s2).all()
    assert close(o2, o1, 1e-6) and close(s2, s1, 1e-6)


def test_chunked_recurrent_differ_when_they_should():
    """The comparison above is not vacuous: the state, the decay and the scale all move the output."""
    q, k, v, g, s0 = inputs()
    base, _ = gla_chunked(q, k, v, g, s0)
    for changed in (gla_chunked(q, k, v, g, s0 * 1.1)[0], gla_chunked(q, k, v, g * 0.9, s0)[0],
                    gla_chunked(q, k, v, g, s0, scale=0.3)[0], gla_recurrent(q, k, v, g.roll(1, 1), s0)[0]):
        assert not close(changed, base, 1e-3)


@pytest.mark.parametrize("decay", ["strong", "spiky"])
def test_strong_decay_fp32_forward_and_backward_stay_exact(decay):
    """fp32 with log decays of -50..-300 per token (alone or amid weak ones in the same channel): no overflow,
    values and gradients match fp64 steps to 2e-6 (measured ~1.5e-7). The spiky case needs the directly summed
    decay segments: differences of two cumulative sums lose |sum| * 1e-7 and miss this by ~1e-5."""
    q, k, v, g, s0 = inputs(decay=decay, t=40)
    if decay == "strong":  # some long-memory channels too
        g = torch.cat([g[..., :4], -torch.exp(torch.randn_like(g[..., 4:]) - 2)], -1)

    def run(fn, dtype):
        xs = [x.to(dtype).requires_grad_(True) for x in (q, k, v, g, s0)]
        o, s = fn(*xs)
        (o * torch.linspace(-1, 1, o.numel(), dtype=dtype).view_as(o)).sum().add(s.pow(2).sum()).backward()
        return o, s, [x.grad for x in xs]

    o32, s32, g32 = run(lambda *a: gla_chunked(*a, chunk_size=16), torch.float32)
    o64, s64, g64 = run(gla_recurrent, torch.float64)
    assert o32.dtype == torch.float32
    assert all(torch.isfinite(x).all() for x in g32)
    assert close(o32, o64, 2e-6) and close(s32, s64, 2e-6)
    for name, a, b in zip("q k v g s0".split(), g32, g64):
        assert close(a, b, 2e-6), name


def test_both_forms_equal_fla_naive_reference():
    """fla's pure-PyTorch ``naive_recurrent_gla`` (fp32 inside, scale K^-0.5, same (B, T, H, K) layout)."""
    from fla.ops.gla.naive import naive_recurrent_gla

    for decay, seed in (("weak", 0), ("mixed", 1)):
        q, k, v, g, s0 = inputs(t=45, decay=decay, dtype=torch.float32, seed=seed)
        ref_o, ref_s = naive_recurrent_gla(q, k, v, g, initial_state=s0, output_final_state=True)
        assert ref_o.abs().max() > 0.5
        for o, s in (gla_recurrent(q, k, v, g, s0), gla_chunked(q, k, v, g, s0, chunk_size=16),
                     gla_chunked(q, k, v, g, s0, chunk_size=7)):
            assert close(o, ref_o, 1e-4) and close(s, ref_s, 1e-4)


def test_kernel_state_carried_across_pieces_equals_one_shot():
    q, k, v, g, s0 = inputs(t=50)
    full, s_full = gla_chunked(q, k, v, g, s0)
    outs, s = [], s0
    for a, b in [(0, 7), (7, 8), (8, 33), (33, 50)]:  # the T == 1 piece goes through the step form
        o, s = gla(*(x[:, a:b] for x in (q, k, v, g)), s)
        outs.append(o)
    assert close(torch.cat(outs, 1), full, 1e-9) and close(s, s_full, 1e-9)


def test_dispatch_dtypes_and_errors():
    q, k, v, g, s0 = inputs(t=9, dtype=torch.bfloat16)
    for backend in ("auto", "chunked", "recurrent"):
        o, s = gla(q, k, v, g.float(), s0, backend=backend)
        assert o.dtype == torch.bfloat16 and s.dtype == torch.float32 and o.shape == v.shape
    o, s = gla(q, k, v, g, backend="chunked")  # no state: starts from zeros
    assert s.shape == (2, 3, 8, 6)
    o, s = gla(q[:, :0], k[:, :0], v[:, :0], g[:, :0], s0.float())
    assert o.shape == (2, 0, 3, 6) and torch.equal(s, s0.float())
    with pytest.raises(ValueError, match="known backends: auto, chunked, recurrent, fla"):
        gla(q, k, v, g, backend="cuda-magic")
    with pytest.raises(ValueError, match="state must be"):
        gla(q, k, v, g, s0[:, :1])
    with pytest.raises(ValueError, match="q, k, g must share"):
        gla(q, k[..., :4], v, g)


# ------------------------------------------------------------------------------------------------ model


tiny = partial(tiny_backbone, "gla")  # pieces, forms, gradients, empty input: tests/components/test_backbone_contract.py


def test_constructor_errors():
    with pytest.raises(ValueError, match="multiples of n_head"):
        GLA(vocab_size=10, d_model=32, n_layer=1, n_head=3)


# ------------------------------------------------------------------- fla's own model and checkpoint format


@pytest.fixture
def fla_on_cpu(monkeypatch):
    """fla's GLAForCausalLM with its Triton-only pieces swapped for fla's own pure-PyTorch references.

    fla's layers have no CPU path (every norm, the SwiGLU and the GLA kernels are Triton). The model code itself
    (blocks, residuals, projections, gates, head split, final norm, lm_head) runs as fla wrote it; only these
    leaves change: the GLA kernels -> ``naive_recurrent_gla``; ``RMSNorm`` -> ``layernorm.rms_norm_ref``;
    ``FusedRMSNormGated`` (swish) -> ``layernorm_gated.rms_norm_ref`` with the gate; fused SwiGLU-linear ->
    ``linear(silu(gate) * up)``.
    """
    import fla.layers.gla as fla_gla_layer
    from fla.models.gla import GLAConfig, GLAForCausalLM
    from fla.modules import FusedRMSNormGated, RMSNorm
    from fla.modules.mlp import SwiGLULinear
    from fla.modules.norm import layernorm, layernorm_gated
    from fla.ops.gla.naive import naive_recurrent_gla

    def kernel(q, k, v, gk=None, g=None, initial_state=None, output_final_state=False, state_v_first=False,
               scale=None, **unused):
        assert initial_state is None and scale is None and unused.get("cu_seqlens") is None
        return naive_recurrent_gla(q, k, v, gk if gk is not None else g, output_final_state=output_final_state)

    monkeypatch.setattr(fla_gla_layer, "fused_recurrent_gla", kernel)
    monkeypatch.setattr(fla_gla_layer, "chunk_gla", kernel)
    monkeypatch.setattr(RMSNorm, "forward", lambda self, x, residual=None, prenorm=False, residual_in_fp32=False:
                        layernorm.rms_norm_ref(x, self.weight, self.bias, residual, self.eps, prenorm))
    monkeypatch.setattr(FusedRMSNormGated, "forward", lambda self, x, g, **kw:
                        layernorm_gated.rms_norm_ref(x, self.weight, self.bias, z=g, eps=self.eps))
    monkeypatch.setattr(SwiGLULinear, "forward", lambda self, x, y, w, b: F.linear(F.silu(x) * y, w, b))
    return GLAConfig, GLAForCausalLM


def fla_model(fla_on_cpu, **cfg):
    GLAConfig, GLAForCausalLM = fla_on_cpu
    torch.manual_seed(1)
    config = GLAConfig(**(dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_heads=2) | cfg))
    return randomised(GLAForCausalLM(config), seed=1, scales=TINY["gla"].scales).eval()  # as our tiny one


@pytest.mark.parametrize("cfg", [{}, dict(num_kv_heads=1, expand_v=2.0, clamp_min=-0.05, num_hidden_layers=3)])
def test_logits_equal_fla_glaforcausallm_from_its_saved_checkpoint(fla_on_cpu, tmp_path, cfg):
    """fla builds, saves (save_pretrained: config.json + model.safetensors) and runs the model; we load that
    directory and must give the same logits (T = 70 > 64 so fla's layer takes its chunk-mode branch)."""
    ref = fla_model(fla_on_cpu, **cfg)
    ref.save_pretrained(tmp_path)
    ours = GLA.from_checkpoint(tmp_path)
    assert (ours.n_layer, ours.n_head, ours.n_kv_head) == (cfg.get("num_hidden_layers", 2), 2,
                                                           cfg.get("num_kv_heads") or 2)
    ids = torch.randint(0, 300, (2, 70), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(ids).logits
        hidden, _ = ours(ours.embed(ids))
        got = ours.logits(hidden)
        # and in pieces through both of our forms
        h1, s = ours(ours.embed(ids[:, :33]))
        h2, s = ours(ours.embed(ids[:, 33:34]), s)
        h3, _ = ours(ours.embed(ids[:, 34:]), s)
    assert want.std() > 0.3
    assert close(got, want, 1e-4)
    assert close(ours.logits(torch.cat([h1, h2, h3], 1)), want, 1e-4)


def test_our_checkpoint_loads_in_fla_and_round_trips(fla_on_cpu, tmp_path):
    _, GLAForCausalLM = fla_on_cpu
    ours = tiny(torch.float32, vocab_size=300, n_kv_head=1)
    ours.save_checkpoint(tmp_path / "ours")
    ref, info = GLAForCausalLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    fla_sd = ref.state_dict()
    assert sorted(fla_sd) == sorted(ours.state_dict())
    assert all(torch.equal(fla_sd[k], v) for k, v in ours.state_dict().items())
    back = GLA.from_checkpoint(tmp_path / "ours", backend="recurrent")
    assert back.backend == "recurrent" and back.config == ours.config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items())

    # a bare weights file (sizes from the state dict), .bin and .safetensors, and tied embeddings
    torch.save(ours.state_dict(), tmp_path / "weights.bin")
    single = GLA.from_checkpoint(tmp_path / "weights.bin")
    assert single.config == ours.config
    tied = tiny(torch.float32, vocab_size=300, tie_word_embeddings=True)
    tied.save_checkpoint(tmp_path / "tied")
    back = GLA.from_checkpoint(tmp_path / "tied" / "model.safetensors")
    assert back.config["tie_word_embeddings"] and back.lm_head.weight is back.model.embeddings.weight
    assert torch.equal(back.lm_head.weight, tied.lm_head.weight)


def test_wrong_checkpoints_fail_naming_the_keys(tmp_path):
    ours = tiny(torch.float32, vocab_size=300)
    sd = ours.state_dict()
    with pytest.raises(ValueError, match="missing: model.layers.2"):
        load_fla_state_dict(GLA(vocab_size=300, d_model=64, n_layer=3, n_head=2), sd)
    with pytest.raises(ValueError, match=r"wrong shape: .*g_norm_swish_gate.weight \(32,\) vs \(16,\)"):
        load_fla_state_dict(GLA(vocab_size=300, d_model=64, n_layer=2, n_head=4), sd)
    with pytest.raises(ValueError, match="unexpected: .*attn.g_norm_swish_gate.weight"):
        load_fla_state_dict(GLA(vocab_size=300, d_model=64, n_layer=2, n_head=2, fuse_norm=False), sd)
    # another architecture's weights
    from aurora.components.rnn.rwkv6 import RWKV6
    rwkv = RWKV6(vocab_size=300, d_model=64, n_layer=2, head_size=32).state_dict()
    with pytest.raises(ValueError, match="not an fla-hub GLA checkpoint"):
        GLA.config_from_state_dict(rwkv)
    with pytest.raises(ValueError, match="missing: lm_head.weight, model.embeddings.weight.*unexpected: blocks"):
        load_fla_state_dict(ours, rwkv)
    # another architecture's config.json, and GLA variants we do not implement
    ours.save_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"model_type": "gated_deltanet"}))
    with pytest.raises(ValueError, match="model_type 'gated_deltanet', not 'gla'"):
        GLA.from_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config | {"use_short_conv": True}))
    with pytest.raises(ValueError, match="unsupported GLA variant: use_short_conv=True"):
        GLA.from_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config | {"num_heads": 4}))  # config disagrees with weights
    with pytest.raises(ValueError, match="wrong shape: .*g_norm_swish_gate"):
        GLA.from_checkpoint(tmp_path)
