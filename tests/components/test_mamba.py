"""Mamba (v1): the selective-scan kernels against each other and transformers' reference scan, the model against
transformers' MambaForCausalLM (its slow PyTorch path), and both checkpoint formats."""
import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from _backbones import close, randomised
from _backbones import tiny as tiny_backbone
from aurora.components.rnn.mamba import Mamba, load_state_dict
from aurora.kernels.selective_scan import (
    initial_state_response,
    selective_scan,
    selective_scan_chunked,
    selective_scan_recurrent,
)


def inputs(b=2, d=6, n=5, t=37, decay="mixed", dtype=torch.float64, seed=0):
    """u, delta (B, D, T), A (D, N) < 0, B, C (B, N, T), D (D,), z (B, D, T), delta_bias (D,), state (B, D, N).

    The log decay per token is dt * A with dt = softplus(delta + delta_bias)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    u, delta, z = rnd(b, d, t), rnd(b, d, t), rnd(b, d, t)
    B, C, D, bias, h0 = rnd(b, n, t), rnd(b, n, t), rnd(d), rnd(d), rnd(b, d, n)
    if decay == "strong":  # dt >= softplus(3) ~ 3, A in -15..-40: log decays of -45 to about -300 per token
        delta, bias = delta.abs() + 1, bias.abs() + 2
        A = -(15 + 25 * torch.rand(d, n, generator=g, dtype=torch.float64))
    elif decay == "mixed":  # from ~-1e-4 (long memory) to ~-100 (none) within one tensor
        A = -torch.exp(rnd(d, n) * 2.5)
    else:
        A = -torch.exp(rnd(d, n) - 2)
    return tuple(x.to(dtype) for x in (u, delta, A, B, C, D, z, bias, h0))


def scan(fn, xs, **kw):
    u, delta, A, B, C, D, z, bias, h0 = xs
    return fn(u, delta, A, B, C, D, z, bias, True, h0, **kw)


# ---------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("decay", ["weak", "mixed", "strong"])
@pytest.mark.parametrize("chunk", [1, 5, 8, 64])
def test_chunked_equals_recurrent_fp64(decay, chunk):
    xs = inputs(decay=decay)  # T = 37: not a multiple of any chunk size but 1
    if decay == "strong":
        dt = F.softplus(xs[1] + xs[7][:, None])
        log_decay = dt[..., None] * xs[2][None, :, None]
        assert log_decay.max() < -40 and log_decay.min() < -150
    y1, s1 = scan(selective_scan_recurrent, xs)
    for groups in (None, 1):  # all chunks of a group at once, and one chunk per group
        y2, s2 = scan(selective_scan_chunked, xs, chunk_size=chunk, max_group_elements=groups)
        assert y2.dtype == s2.dtype == torch.float64
        assert torch.isfinite(y2).all() and torch.isfinite(s2).all()
        assert close(y2, y1, 1e-10) and close(s2, s1, 1e-10)


def test_chunked_recurrent_differ_when_they_should():
    """The comparison above is not vacuous: the state, D, z, the decay and the time-step bias all matter."""
    xs = inputs()
    base, _ = scan(selective_scan_chunked, xs)
    for i in (8, 5, 6, 2, 7):  # h0, D, z, A, delta_bias
        changed = list(xs)
        changed[i] = changed[i] * 1.1
        assert not close(scan(selective_scan_chunked, changed)[0], base, 1e-3), i


def test_strong_decay_fp32_forward_and_backward_stay_exact():
    """fp32 with log decays down to -200 per token: no overflow, values and gradients match fp64 steps."""
    strong, weak = inputs(decay="strong", t=40), inputs(decay="weak", t=40)
    A = torch.cat([strong[2][:, :3], weak[2][:, 3:]], 1)  # some long-memory states too
    xs = strong[:2] + (A,) + strong[3:]

    def run(fn, dtype):
        leaves = [x.to(dtype).requires_grad_(True) for x in xs]
        y, s = scan(fn, leaves)
        (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum().add(s.pow(2).sum()).backward()
        return y, s, [x.grad for x in leaves]

    y32, s32, g32 = run(selective_scan_chunked, torch.float32)
    y64, s64, g64 = run(selective_scan_recurrent, torch.float64)
    assert y32.dtype == torch.float32
    assert all(torch.isfinite(g).all() for g in g32)
    assert close(y32, y64, 1e-4) and close(s32, s64, 1e-4)
    for name, a, b in zip("u delta A B C D z delta_bias h0".split(), g32, g64):
        assert close(a, b, 1e-4), name


def test_both_forms_equal_transformers_reference_scan():
    """transformers' own PyTorch selective scan and single-step update (fp32 on CPU) are the reference."""
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan, mamba_selective_state_update

    u, delta, A, B, C, D, z, bias, h0 = inputs(dtype=torch.float32, decay="weak")
    want, want_s = mamba_selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                                        return_last_state=True)  # it always starts from zero
    for fn in (selective_scan_recurrent, selective_scan_chunked):
        y, s = fn(u, delta, A, B, C, D, z, bias, True, None)
        assert close(y, want, 1e-4) and close(s, want_s, 1e-4)

    state = h0.clone()  # one step from a nonzero state (updated in place by the reference)
    want = mamba_selective_state_update(state, u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0], D, dt_bias=bias,
                                        dt_softplus=True, z=z[..., 0])
    for fn in (selective_scan_recurrent, selective_scan_chunked):
        y, s = fn(u[..., :1], delta[..., :1], A, B[..., :1], C[..., :1], D, z[..., :1], bias, True, h0)
        assert close(y[..., 0], want, 1e-5) and close(s, state, 1e-5)


def test_kernel_state_carried_across_pieces_equals_one_shot():
    u, delta, A, B, C, D, z, bias, h0 = inputs(t=50)
    full, s_full = selective_scan_chunked(u, delta, A, B, C, D, z, bias, True, h0)
    outs, s = [], h0
    for a, b in [(0, 7), (7, 8), (8, 33), (33, 50)]:  # the T == 1 piece goes through the step form
        y, s = selective_scan(*(x[..., a:b] for x in (u, delta)), A, *(x[..., a:b] for x in (B, C)), D,
                              z[..., a:b], bias, True, s)
        outs.append(y)
    assert close(torch.cat(outs, -1), full, 1e-10) and close(s, s_full, 1e-10)


def test_initial_state_response_completes_a_scan_from_zero():
    """The correction the mamba_ssm path uses (its CUDA scan cannot start from a state) is exact, on CPU."""
    u, delta, A, B, C, D, z, bias, h0 = inputs(t=45)
    y0, s0 = selective_scan_chunked(u, delta, A, B, C, D, None, bias, True, None)
    want, want_s = selective_scan_chunked(u, delta, A, B, C, D, None, bias, True, h0)
    dt = F.softplus(delta + bias[:, None])
    for block in (7, 256):
        y_add, survive = initial_state_response(dt, A, C, h0, block_size=block)
        assert close(y0 + y_add, want, 1e-10) and close(s0 + survive * h0, want_s, 1e-10)
    assert not close(y0, want, 1e-3)


def test_dispatch_dtypes_errors_and_unknown_backend():
    u, delta, A, B, C, D, z, bias, h0 = inputs(t=9, dtype=torch.bfloat16)
    for backend in ("auto", "chunked", "recurrent"):
        y, s = selective_scan(u, delta, A.float(), B, C, D, z, bias, True, h0, backend=backend)
        assert y.dtype == torch.bfloat16 and s.dtype == torch.float32 and y.shape == u.shape
    y, s = selective_scan(u[..., :0], delta[..., :0], A, B[..., :0], C[..., :0], state=h0)
    assert y.shape == (2, 6, 0) and torch.equal(s, h0.float())
    with pytest.raises(ValueError, match="known backends: auto, chunked, recurrent, mamba_ssm"):
        selective_scan(u, delta, A, B, C, backend="cuda-magic")
    fp32 = [x.float() for x in (u, delta, A, B, C, D, z, bias, h0)]
    plain = [scan(fn, fp32)[0] for fn in (selective_scan_chunked, selective_scan_recurrent)]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the scan's own arithmetic ignores autocast
        assert all(torch.equal(scan(fn, fp32)[0], want)
                   for fn, want in zip((selective_scan_chunked, selective_scan_recurrent), plain))
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B[:, :2], C)
    with pytest.raises(ValueError, match="state must be"):
        selective_scan(u, delta, A, B, C, state=h0[:1])
    with pytest.raises(RuntimeError, match="needs CUDA"):  # on CPU tensors, whether or not mamba_ssm imports
        selective_scan(u, delta, A, B, C, backend="mamba_ssm")


# ------------------------------------------------------------------------------------------------ model


tiny = partial(tiny_backbone, "mamba")  # pieces, forms, gradients, empty input: tests/components/test_backbone_contract.py


def test_the_oldest_conv_column_is_never_read():
    """The conv state keeps d_conv columns (mamba_ssm / transformers' layout) but only the newest d_conv - 1 are
    read: changing the oldest leaves the output exactly as it was; changing the next one does not."""
    m = tiny()
    x = torch.randn(2, 9, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, s = m(x[:, :5])
        want, _ = m(x[:, 5:], s)
        for col, same in ((0, True), (1, False)):
            moved = [(c.clone().index_fill_(-1, torch.tensor([col]), 3.0), h) for c, h in s]
            assert torch.equal(m(x[:, 5:], moved)[0], want) == same, col


def test_state_spaces_initialisation_and_tying():
    m = Mamba(vocab_size=100, d_model=32, n_layer=4, d_state=16)
    mixer = m.backbone.layers[0].mixer
    assert (m.d_inner, m.dt_rank, mixer.conv1d.weight.shape) == (64, 2, (64, 1, 4))
    assert torch.allclose(-torch.exp(mixer.A_log), -torch.arange(1, 17.0).expand(64, 16))
    assert torch.equal(mixer.D, torch.ones(64))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert m.lm_head.weight is m.backbone.embedding.weight
    assert abs(m.backbone.embedding.weight.std().item() - 0.02) < 0.003
    assert Mamba(vocab_size=100, d_model=32, n_layer=1, tie_embeddings=False).lm_head.weight is not \
        Mamba(vocab_size=100, d_model=32, n_layer=1).backbone.embedding.weight


def test_bad_states_are_named():
    m = tiny()
    _, s = m(torch.randn(1, 4, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="state of layer 0 must be"):
        m(torch.randn(1, 4, 64, dtype=torch.float64), [(c[..., 1:], h) for c, h in s])


# ----------------------------------------------------------------------- against transformers + checkpoints


def hf_reference(vocab=200, seed=0):
    """A tiny transformers MambaForCausalLM with every weight perturbed away from its initialisation."""
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    cfg = MambaConfig(vocab_size=vocab, hidden_size=64, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4)
    return randomised(MambaForCausalLM(cfg), seed=seed).eval()


def test_logits_and_generation_states_equal_transformers(tmp_path):
    """Independent check: transformers' MambaForCausalLM (slow PyTorch path on CPU), saved with save_pretrained
    and read back with our from_checkpoint; then token-by-token generation against its cache."""
    ref = hf_reference()
    ref.save_pretrained(tmp_path)
    ours = Mamba.from_checkpoint(tmp_path).eval()
    assert (ours.d_model, ours.n_layer, ours.d_inner, ours.d_state, ours.dt_rank) == (64, 2, 128, 8, 4)
    assert ours.tie_embeddings and ours.lm_head.weight is ours.backbone.embedding.weight
    ids = torch.randint(0, 200, (2, 29), generator=torch.Generator().manual_seed(1))

    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-6)):  # transformers' fp64 still has fp32 casts
        ref, ours = ref.to(dtype), ours.to(dtype)
        with torch.no_grad():
            want = ref(ids).logits
            hidden, _ = ours(ours.embed(ids))
            got = ours.logits(hidden)
            assert got.std() > 0.1 and close(got, want, tol)

            out = ref(ids[:, :20], use_cache=True)  # prefill, then one token at a time against the cache
            hidden, state = ours(ours.embed(ids[:, :20]))
            assert close(ours.logits(hidden), out.logits, tol)
            cache = out.cache
            for i in range(20, 24):
                out = ref(ids[:, i:i + 1], cache=cache, use_cache=True)
                cache = out.cache
                hidden, state = ours(ours.embed(ids[:, i:i + 1]), state)
                assert close(ours.logits(hidden), out.logits, tol)
                for layer, (conv, ssm) in enumerate(state):
                    assert close(conv, cache.get_conv_state(layer), tol)
                    assert close(ssm, cache.get_recurrent_state(layer), tol)


def test_state_spaces_checkpoint_round_trip(tmp_path):
    """state-spaces' format: pytorch_model.bin with its own key names + config.json with d_model / ssm_cfg."""
    ref = hf_reference(vocab=200)
    ours = Mamba(vocab_size=200, d_model=64, n_layer=2, d_state=8)
    load_state_dict(ours, ref.state_dict())  # transformers' names, tied head left out or equal
    torch.save(ours.state_dict(), tmp_path / "pytorch_model.bin")  # state-spaces names, lm_head included (tied)
    config = dict(d_model=64, n_layer=2, vocab_size=197, ssm_cfg={"d_state": 8}, rms_norm=True,
                  residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8)  # 197 -> 200 rows
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = Mamba.from_checkpoint(tmp_path).eval()
    assert loaded.vocab_size == 200 and loaded.tie_embeddings
    ids = torch.randint(0, 200, (1, 17))
    with torch.no_grad():
        want = ref(ids).logits
        got = loaded.logits(loaded(loaded.embed(ids))[0])
        assert close(got, want, 1e-4)
        # the bare state-dict file (no config beside it): sizes read from the weights
        bare = tmp_path / "bare"
        bare.mkdir()
        torch.save(ours.state_dict(), bare / "mamba.pt")
        got2 = Mamba.from_checkpoint(bare / "mamba.pt", backend="recurrent")
        assert got2.backend == "recurrent" and close(got2.logits(got2(got2.embed(ids))[0]), want, 1e-4)
    assert Mamba.config_from_state_dict(ours.state_dict()) == dict(
        vocab_size=200, d_model=64, n_layer=2, d_inner=128, d_state=8, d_conv=4, dt_rank=4, conv_bias=True,
        bias=False, tie_embeddings=True)


def test_untied_head_round_trip(tmp_path):
    m = tiny(torch.float32, tie_embeddings=False)
    torch.save(m.state_dict(), tmp_path / "untied.pth")
    back = Mamba.from_checkpoint(tmp_path / "untied.pth")
    assert not back.tie_embeddings and torch.equal(back.lm_head.weight, m.lm_head.weight)
    with pytest.raises(ValueError, match="ties them"):
        load_state_dict(Mamba(vocab_size=300, d_model=64, n_layer=2, d_state=8), m.state_dict())


def test_wrong_shapes_and_architectures_are_named(tmp_path):
    sd = tiny(torch.float32).state_dict()
    with pytest.raises(ValueError, match="missing: backbone.layers.2"):
        load_state_dict(Mamba(vocab_size=300, d_model=64, n_layer=3, d_state=8), sd)
    with pytest.raises(ValueError, match=r"wrong shape: backbone.layers.0.mixer.A_log \(128, 8\) vs \(128, 16\)"):
        load_state_dict(Mamba(vocab_size=300, d_model=64, n_layer=2, d_state=16), sd)
    with pytest.raises(ValueError, match="unexpected: backbone.layers.0.norm.bias"):  # a LayerNorm-style model
        load_state_dict(Mamba(vocab_size=300, d_model=64, n_layer=2, d_state=8),
                        sd | {"backbone.layers.0.norm.bias": torch.zeros(64)})
    # a config.json that disagrees with the weights
    torch.save(sd, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(dict(d_model=64, n_layer=2, vocab_size=300,
                                                          ssm_cfg={"d_state": 16})))
    with pytest.raises(ValueError, match="wrong shape: .*A_log"):
        Mamba.from_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(d_model=64, n_layer=2, vocab_size=300,
                                                          ssm_cfg={"layer": "Mamba2"})))
    with pytest.raises(ValueError, match="not a Mamba \\(v1\\) checkpoint: ssm_cfg.layer is 'Mamba2'"):
        Mamba.from_checkpoint(tmp_path)
    # another architecture's weights (an RWKV-6 state dict) with no config
    from aurora.components.rnn.rwkv6 import RWKV6

    (tmp_path / "other").mkdir()
    torch.save(RWKV6(vocab_size=50, d_model=32, n_layer=1, head_size=16).state_dict(), tmp_path / "other/rwkv.pth")
    with pytest.raises(ValueError, match="not a Mamba \\(v1\\) checkpoint .*backbone.embedding.weight"):
        Mamba.from_checkpoint(tmp_path / "other/rwkv.pth")
