"""Mamba-2: the SSD kernels against each other and independent references (transformers' torch path, fla's naive
scalar-decay GLA), the model against transformers' Mamba2ForCausalLM and both community checkpoint formats."""
import json
from functools import partial

import pytest
import torch

from _backbones import close, rel_err
from _backbones import tiny as tiny_backbone
from aurora.components.rnn.mamba2 import Mamba2, load_state_dict, to_our_keys
from aurora.kernels.ssd import ssd, ssd_chunked, ssd_recurrent


def inputs(b=2, t=37, h=4, p=8, g=2, n=6, decay="mixed", dtype=torch.float64, seed=0):
    """Random x (B, T, H, P), step sizes dt (B, T, H) > 0, A (H,) < 0, B and C (B, T, G, N), D (H,) and a nonzero
    initial state (B, H, P, N)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x, B, C = randn(b, t, h, p), randn(b, t, g, n), randn(b, t, g, n)
    if decay == "strong":  # every head forgets almost everything each step: log decay dt * A in [-200, -50]
        dt, A = 1 + rand(b, t, h), -(50 + 50 * rand(h))
    elif decay == "mixed":  # log decays from ~-1e-4 (long memory) down to ~-100 (none) within one tensor
        dt, A = torch.exp(2 * randn(b, t, h) - 1), -torch.exp(randn(h))
    else:
        dt, A = torch.nn.functional.softplus(randn(b, t, h) - 2), -torch.exp(randn(h) - 1)
    D, s0 = randn(h), randn(b, h, p, n)
    return tuple(z.to(dtype) for z in (x, dt, A, B, C, D, s0))


# ---------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("decay", ["weak", "mixed", "strong"])
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_equals_recurrent_fp64(decay, chunk):
    x, dt, A, B, C, D, s0 = inputs(decay=decay)  # T = 37: not a multiple of any chunk size but 1
    a = dt * A
    if decay == "strong":
        assert a.max() <= -50 and a.min() < -150
    if decay == "mixed":
        assert a.max() > -1e-2 and a.min() < -20
    y1, s1 = ssd_recurrent(x, dt, A, B, C, D, s0)
    y2, s2 = ssd_chunked(x, dt, A, B, C, D, s0, chunk_size=chunk)
    assert y2.dtype == s2.dtype == torch.float64 and y2.shape == x.shape and s2.shape == s0.shape
    assert torch.isfinite(y2).all() and torch.isfinite(s2).all()
    assert close(y2, y1, 1e-6) and close(s2, s1, 1e-6), (rel_err(y2, y1), rel_err(s2, s1))


def test_chunked_recurrent_differ_when_they_should():
    """The comparison above is not vacuous: D, the state, the step sizes, A, B and C all move the output, and
    heads read their own group's B and C."""
    x, dt, A, B, C, D, s0 = inputs(decay="weak")
    base, _ = ssd_chunked(x, dt, A, B, C, D, s0)
    for changed in (ssd_chunked(x, dt, A, B, C, D * 1.1, s0)[0], ssd_chunked(x, dt, A, B, C, D, s0 * 1.1)[0],
                    ssd_chunked(x, dt * 0.9, A, B, C, D, s0)[0], ssd_chunked(x, dt, A * 0.9, B, C, D, s0)[0],
                    ssd_chunked(x, dt, A, C, B, D, s0)[0], ssd_chunked(x, dt, A, B.flip(2), C.flip(2), D, s0)[0]):
        assert not close(changed, base, 1e-3)


def test_strong_decay_fp32_forward_and_backward_stay_exact():
    """fp32 with log decays of -50..-200 per token on some heads and long memory on others: no overflow,
    values and gradients (x, dt, A, B, C, D and the initial state) match fp64 steps."""
    x, dt, A, B, C, D, s0 = inputs(decay="strong", t=40)
    A = torch.cat([A[:2], -torch.rand(2, dtype=A.dtype) * 0.05])  # two long-memory heads too

    def run(fn, dtype):
        zs = [z.to(dtype).requires_grad_(True) for z in (x, dt, A, B, C, D, s0)]
        y, s = fn(*zs)
        (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum().add(s.pow(2).sum()).backward()
        return y, s, [z.grad for z in zs]

    y32, s32, g32 = run(lambda *a: ssd_chunked(*a, chunk_size=16), torch.float32)
    y64, s64, g64 = run(ssd_recurrent, torch.float64)
    assert y32.dtype == torch.float32
    assert all(torch.isfinite(g).all() for g in g32)
    assert close(y32, y64, 1e-4) and close(s32, s64, 1e-4)
    for name, a, b in zip("x dt A B C D s0".split(), g32, g64):
        assert close(a, b, 1e-4), (name, rel_err(a, b))


def test_both_forms_equal_transformers_torch_reference():
    """transformers' own PyTorch SSD (``mamba2_chunk_scan``, chunked, fp32 inside) and its one-token update
    (``mamba2_selective_state_update``, in place), fed the final dt (no bias, no softplus)."""
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan, mamba2_selective_state_update

    x, dt, A, B, C, D, s0 = inputs(t=37, decay="weak", dtype=torch.float32)
    want_y, want_s = mamba2_chunk_scan(x, dt, A, B, C, chunk_size=16, D=D, initial_states=s0,
                                       return_final_states=True)
    for y, s in (ssd_recurrent(x, dt, A, B, C, D, s0), ssd_chunked(x, dt, A, B, C, D, s0, chunk_size=8)):
        assert close(y, want_y, 1e-4) and close(s, want_s, 1e-4), (rel_err(y, want_y), rel_err(s, want_s))

    b, t, h, p = x.shape
    n = B.shape[-1]
    state, steps = s0.clone(), []
    for i in range(t):
        steps.append(mamba2_selective_state_update(
            state, x[:, i], dt[:, i, :, None].expand(b, h, p), A[:, None, None].expand(h, p, n), B[:, i], C[:, i],
            D[:, None].expand(h, p)))
    assert close(torch.stack(steps, 1), want_y, 1e-4) and close(state, want_s, 1e-4)


def test_both_forms_equal_fla_naive_scalar_decay_gla():
    """SSD is fla's simple GLA with q = C, k = B, v = dt x, log gate dt A, scale 1 (+ the D skip); fla's naive
    references keep the state as (N, P)."""
    from fla.ops.simple_gla.naive import naive_chunk_simple_gla, naive_recurrent_simple_gla

    x, dt, A, B, C, D, s0 = inputs(t=37, decay="mixed", dtype=torch.float32, seed=2)
    h = x.shape[2]
    q, k = (z.repeat_interleave(h // z.shape[2], 2) for z in (C, B))
    v, g = x * dt[..., None], dt * A
    ref_y, ref_s = naive_recurrent_simple_gla(q, k, v, g, scale=1.0, initial_state=s0.transpose(-1, -2).clone(),
                                              output_final_state=True)
    ref_y = ref_y + D[:, None] * x
    for y, s in (ssd_recurrent(x, dt, A, B, C, D, s0), ssd_chunked(x, dt, A, B, C, D, s0, chunk_size=16)):
        assert close(y, ref_y, 1e-4) and close(s, ref_s.transpose(-1, -2), 1e-4)

    ref_y, ref_s = naive_chunk_simple_gla(q, k, v, g, initial_state=s0.transpose(-1, -2).clone(),
                                          output_final_state=True, chunk_size=16, scale=1.0)
    y, s = ssd_chunked(x, dt, A, B, C, None, s0, chunk_size=5)  # no D: the raw scan
    assert close(y, ref_y, 1e-4) and close(s, ref_s.transpose(-1, -2), 1e-4)


def test_kernel_state_carried_across_pieces_equals_one_shot():
    x, dt, A, B, C, D, s0 = inputs(t=50)
    full, s_full = ssd_chunked(x, dt, A, B, C, D, s0, chunk_size=16)
    outs, s = [], s0
    for a, b in [(0, 7), (7, 8), (8, 33), (33, 50)]:  # the T == 1 piece goes through the step form
        y, s = ssd(*(z[:, a:b] for z in (x, dt)), A, *(z[:, a:b] for z in (B, C)), D, s, chunk_size=16)
        outs.append(y)
    assert close(torch.cat(outs, 1), full, 1e-9) and close(s, s_full, 1e-9)


def test_dispatch_dtypes_shape_checks_and_unknown_backend():
    x, dt, A, B, C, D, s0 = inputs(t=9, dtype=torch.bfloat16)
    for backend in ("auto", "chunked", "recurrent"):
        y, s = ssd(x, dt, A, B, C, D, s0, backend=backend)
        assert y.dtype == torch.bfloat16 and s.dtype == torch.float32 and y.shape == x.shape
    y, s = ssd(x[:, :0], dt[:, :0], A, B[:, :0], C[:, :0], D, s0)
    assert y.shape == (2, 0, 4, 8) and torch.equal(s, s0.float())
    with pytest.raises(ValueError, match="known backends: auto, chunked, recurrent, mamba_ssm, fla"):
        ssd(x, dt, A, B, C, backend="cuda-magic")
    with pytest.raises(ValueError, match="'fla' runs Triton kernels on CUDA tensors only"):
        ssd(x, dt, A, B, C, backend="fla")
    with pytest.raises(ValueError, match="do not split into 3 groups"):
        ssd(x, dt, A, B.repeat(1, 1, 2, 1)[:, :, :3], C.repeat(1, 1, 2, 1)[:, :, :3])
    with pytest.raises(ValueError, match="dt must be"):
        ssd(x, dt[..., :1], A, B, C)
    with pytest.raises(ValueError, match="state must be"):
        ssd(x, dt, A, B, C, D, s0[..., :2])


# ------------------------------------------------------------------------------------------------ model


tiny = partial(tiny_backbone, "mamba2")  # pieces, forms, gradients, empty input: tests/components/test_backbone_contract.py


def test_state_spaces_initialisation():
    m = Mamba2(vocab_size=300, d_model=64, n_layer=4, d_state=16, head_dim=16)
    mix = m.layers[0].mixer
    A = -torch.exp(mix.A_log)
    assert A.max() <= -1 and A.min() >= -16 and torch.equal(mix.D, torch.ones(8))
    dt = torch.nn.functional.softplus(mix.dt_bias)
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-7
    assert m.lm_head.weight is m.embedding.weight and m.tie_embeddings  # the official models tie them
    assert abs(m.embedding.weight.std().item() - 0.02) < 2e-3
    assert mix.in_proj.weight.shape == (2 * 128 + 2 * 16 + 8, 64) and mix.conv1d.weight.shape == (160, 1, 4)
    assert mix.norm.group_size == 128 and not Mamba2(vocab_size=30, d_model=64, n_layer=1, d_state=16,
                                                     head_dim=16, tie_embeddings=False).tie_embeddings


def test_constructor_errors():
    assert Mamba2(vocab_size=10, d_model=32, n_layer=1, d_state=8, head_dim=16).n_head == 4
    with pytest.raises(ValueError, match="not a multiple of head_dim"):
        Mamba2(vocab_size=10, d_model=32, n_layer=1, d_state=8, head_dim=24)
    with pytest.raises(ValueError, match="groups"):
        Mamba2(vocab_size=10, d_model=32, n_layer=1, d_state=8, head_dim=16, n_groups=3)


def test_bf16_model_runs_with_fp32_states():
    m = tiny(torch.bfloat16)
    h, s = m(torch.randn(1, 11, 64, dtype=torch.bfloat16))
    assert h.dtype == torch.bfloat16 and s[0][1].dtype == torch.float32 and torch.isfinite(h.float()).all()


# ------------------------------------------------------------------------------- transformers and checkpoints


def hf_model(tie=False, seed=0):
    """transformers' Mamba2ForCausalLM with random weights (norm gains, D, step sizes and decays perturbed)."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(seed)
    cfg = Mamba2Config(vocab_size=200, hidden_size=64, num_hidden_layers=2, state_size=16, num_heads=8, head_dim=16,
                       expand=2, n_groups=2, conv_kernel=4, chunk_size=16, tie_word_embeddings=tie)
    model = Mamba2ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", "D", "dt_bias", "A_log", "conv1d.bias")):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def ours_from(hf, **kw):
    sd = to_our_keys(hf.state_dict())
    model = Mamba2(**Mamba2.config_from_state_dict(sd, n_groups=hf.config.n_groups) | dict(chunk_size=8) | kw)
    load_state_dict(model, sd)
    return model.eval()


def test_logits_and_states_equal_transformers_mamba2(capsys):
    """Independent reference: transformers' Mamba2ForCausalLM (its PyTorch path on CPU), fp32 and fp64, one shot,
    its cache's states, and token-by-token steps through its cache (its one-token update) vs our pieces."""
    hf = hf_model()
    ours = ours_from(hf)
    ids = torch.randint(0, 200, (2, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids[:, :20], use_cache=True)
        hidden, state = ours(ours.embed(ids[:, :20]))
        got = ours.logits(hidden)
    assert want.logits.std() > 0.3 and close(got, want.logits, 1e-4), rel_err(got, want.logits)
    cache = want.cache
    for i, (conv_state, ssm_state) in enumerate(state):
        assert close(conv_state, cache.get_conv_state(i, state_idx=0)[..., 1:], 1e-5)  # theirs keeps d_conv inputs
        assert close(ssm_state, cache.get_recurrent_state(i, state_idx=0), 1e-4)
    with torch.no_grad():
        for j in range(20, 29):
            w = hf(ids[:, j:j + 1], cache=cache, use_cache=True).logits[:, -1]
            h, state = ours(ours.embed(ids[:, j:j + 1]), state)
            assert close(ours.logits(h)[:, -1], w, 1e-4), (j, rel_err(ours.logits(h)[:, -1], w))

    hf64, ours64 = hf.double(), ours.double()  # transformers runs its scan in fp32 even then: ~1e-6 is its floor
    with torch.no_grad():
        want = hf64(ids).logits
        got = ours64.logits(ours64(ours64.embed(ids))[0])
    assert close(got, want, 3e-6), rel_err(got, want)


@pytest.mark.parametrize("tie", [False, True])
def test_transformers_save_pretrained_loads_with_the_same_logits(tmp_path, tie):
    hf = hf_model(tie=tie)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = Mamba2.from_checkpoint(tmp_path).eval()
    assert (ours.n_layer, ours.n_head, ours.head_dim, ours.d_state, ours.n_groups) == (2, 8, 16, 16, 2)
    assert ours.tie_embeddings == tie
    ids = torch.randint(0, 200, (2, 23), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours.logits(ours(ours.embed(ids))[0])
    assert close(got, want, 1e-4), rel_err(got, want)


def state_spaces_config(hf):
    """A config.json as state-spaces/mamba writes it (MambaConfig) for the same sizes."""
    c = hf.config
    return {"d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers,
            "vocab_size": c.vocab_size, "ssm_cfg": {"layer": "Mamba2", "d_state": c.state_size,
                                                    "headdim": c.head_dim, "ngroups": c.n_groups},
            "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
            "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True}


def test_state_spaces_checkpoint_loads_with_the_same_logits(tmp_path):
    """state-spaces' pytorch_model.bin (``backbone.embedding``, tied head) + config.json. transformers' own load
    hook for that format reads the same file into Mamba2ForCausalLM: both give the same logits."""
    hf = hf_model(tie=False)
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]  # tied, as the official files are
    torch.save(sd, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(state_spaces_config(hf)))

    hf.load_state_dict(torch.load(tmp_path / "pytorch_model.bin", weights_only=True))  # its "embedding." hook
    ours = Mamba2.from_checkpoint(tmp_path).eval()
    assert ours.tie_embeddings and ours.n_groups == 2 and ours.d_state == 16
    ids = torch.randint(0, 200, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours.logits(ours(ours.embed(ids))[0])
    assert close(got, want, 1e-4), rel_err(got, want)
    # the weights file alone (no config.json beside it: n_groups unknown) loads when told the groups
    (tmp_path / "alone").mkdir()
    (tmp_path / "pytorch_model.bin").rename(tmp_path / "alone" / "weights.bin")
    alone = Mamba2.from_checkpoint(tmp_path / "alone" / "weights.bin", n_groups=2).eval()
    with torch.no_grad():
        assert torch.equal(alone.logits(alone(alone.embed(ids))[0]), got)
    # the shapes cannot tell 2 groups of 16 from 1 group of 32: without the hint it loads as the official n_groups=1
    guessed = Mamba2.from_checkpoint(tmp_path / "alone" / "weights.bin").eval()
    assert (guessed.n_groups, guessed.d_state) == (1, 32)
    with torch.no_grad():
        assert not close(guessed.logits(guessed(guessed.embed(ids))[0]), got, 1e-3)


def test_wrong_shapes_and_architectures_are_named(tmp_path):
    from transformers import MambaConfig, MambaForCausalLM

    sd = to_our_keys(hf_model().state_dict())
    small = dict(vocab_size=200, d_model=64, d_state=16, n_groups=2, tie_embeddings=False)
    with pytest.raises(ValueError, match="missing: layers.2"):
        load_state_dict(Mamba2(n_layer=3, head_dim=16, **small), sd)
    with pytest.raises(ValueError, match=r"wrong shape: layers.0.mixer.A_log \(8,\) vs \(4,\)"):
        load_state_dict(Mamba2(n_layer=2, head_dim=32, **small), sd)
    with pytest.raises(ValueError, match="differ"):
        load_state_dict(Mamba2(n_layer=2, head_dim=16, **(small | dict(tie_embeddings=True))), sd)
    with pytest.raises(ValueError, match="not a Mamba-2 checkpoint"):
        Mamba2.config_from_state_dict({"embedding.weight": sd["embedding.weight"]})

    # Mamba-1 weights (transformers' MambaForCausalLM): named key by key, and its directory is refused
    mamba1 = MambaForCausalLM(MambaConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, state_size=16))
    with pytest.raises(ValueError, match=r"unexpected: .*layers.0.mixer.dt_proj.weight"):
        load_state_dict(Mamba2(n_layer=2, head_dim=16, **small), to_our_keys(mamba1.state_dict()))
    mamba1.save_pretrained(tmp_path / "mamba1")
    with pytest.raises(ValueError, match="model_type is 'mamba'"):
        Mamba2.from_checkpoint(tmp_path / "mamba1")
    # a state-spaces Mamba-1 config is refused too
    (tmp_path / "ss").mkdir()
    torch.save({"backbone." + k: v for k, v in sd.items()}, tmp_path / "ss" / "pytorch_model.bin")
    bad = state_spaces_config(hf_model()) | {"ssm_cfg": {"layer": "Mamba1"}}
    (tmp_path / "ss" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="ssm_cfg.layer is 'Mamba1'"):
        Mamba2.from_checkpoint(tmp_path / "ss")
