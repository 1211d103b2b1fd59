"""RWKV-7: the WKV-7 kernels against each other and fla's references, the model against BlinkDL's `rwkv` package
(x070 path) and fla-hub's Hugging Face layout."""
import importlib.util
import json
import os
from functools import partial

import pytest
import torch

from _backbones import close, randomised, rel_err
from _backbones import tiny as tiny_backbone
from aurora.components.rnn.rwkv7 import (RWKV7, fla_to_official, load_official_state_dict, official_state_dict,
                                         to_fla_state_dict)
from aurora.kernels.rwkv7 import wkv7, wkv7_chunked, wkv7_recurrent


def inputs(b=2, t=37, h=3, n=8, decay="mixed", dtype=torch.float64, seed=0):
    """Random r, log decay w, k, v, RWKV-7-style a = -kk, b = kk * lr (B, T, H, N) and an initial state."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    r, k, v = randn(b, t, h, n), randn(b, t, h, n), randn(b, t, h, n)
    if decay == "strong":  # every channel forgets almost everything each step: log decay in [-200, -50]
        w = -(50 + 150 * torch.rand(b, t, h, n, generator=g, dtype=torch.float64))
    elif decay == "mixed":  # from ~-0.01 (long memory) down to ~-1000 (none) within one tensor, even one channel
        w = -torch.exp(randn(b, t, h, n) * 2.5)
    elif decay == "rwkv7":  # the model's own range (-exp(-1/2), 0)
        w = -0.6065306597126334 * torch.sigmoid(randn(b, t, h, n) * 2)
    else:
        w = -torch.exp(randn(b, t, h, n) - 2)
    kk = torch.nn.functional.normalize(randn(b, t, h, n), dim=-1)
    lr = torch.rand(b, t, h, n, generator=g, dtype=torch.float64)
    s0 = randn(b, h, n, n)
    return tuple(x.to(dtype) for x in (r, w, k, v, -kk, kk * lr, s0))


# ---------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("decay", ["weak", "mixed", "strong", "rwkv7"])
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_equals_recurrent_fp64(decay, chunk):
    r, w, k, v, a, b, s0 = inputs(decay=decay)  # T = 37: not a multiple of any chunk size but 1
    if decay == "strong":
        assert w.max() <= -50 and w.min() < -190
    o1, s1 = wkv7_recurrent(r, w, k, v, a, b, s0, scale=0.7)
    o2, s2 = wkv7_chunked(r, w, k, v, a, b, s0, chunk_size=chunk, scale=0.7)
    assert o2.dtype == s2.dtype == torch.float64
    assert torch.isfinite(o2).all() and torch.isfinite(s2).all()
    assert close(o2, o1, 1e-9) and close(s2, s1, 1e-9), (rel_err(o2, o1), rel_err(s2, s1))


def test_general_a_b_not_only_the_rwkv7_pattern():
    """The kernel is the generalized delta rule for any a, b (not only a = -kk, b = kk * lr)."""
    r, w, k, v, _, _, s0 = inputs(t=29, decay="weak")
    g = torch.Generator().manual_seed(3)
    a, b = (0.3 * torch.randn(r.shape, generator=g, dtype=torch.float64) for _ in range(2))
    o1, s1 = wkv7_recurrent(r, w, k, v, a, b, s0)
    o2, s2 = wkv7_chunked(r, w, k, v, a, b, s0, chunk_size=8)
    assert close(o2, o1, 1e-9) and close(s2, s1, 1e-9)


def test_chunked_recurrent_differ_when_they_should():
    """The comparison above is not vacuous: decay, a, b, k, v and the state all move the output."""
    r, w, k, v, a, b, s0 = inputs(decay="weak")
    base, _ = wkv7_chunked(r, w, k, v, a, b, s0)
    for changed in (wkv7_chunked(r, w * 0.9, k, v, a, b, s0)[0], wkv7_chunked(r, w, k, v, a * 0.5, b, s0)[0],
                    wkv7_chunked(r, w, k, v, a, b * 0.5, s0)[0], wkv7_chunked(r, w, k * 1.1, v, a, b, s0)[0],
                    wkv7_chunked(r, w, k, v, a, b, s0 * 1.1)[0]):
        assert not close(changed, base, 1e-3)


def test_strong_decay_fp32_forward_and_backward_stay_exact():
    """fp32 with log decays of -50..-200 per token: no overflow, values and gradients match fp64 steps."""
    r, w, k, v, a, b, s0 = inputs(decay="strong", t=40)
    w = torch.cat([w[..., :4], -torch.exp(torch.randn_like(w[..., 4:]) - 2)], -1)  # some long-memory channels too

    def run(fn, dtype):
        xs = [x.to(dtype).requires_grad_(True) for x in (r, w, k, v, a, b, s0)]
        o, s = fn(*xs)
        (o * torch.linspace(-1, 1, o.numel(), dtype=dtype).view_as(o)).sum().add(s.pow(2).sum()).backward()
        return o, s, [x.grad for x in xs]

    o32, s32, g32 = run(lambda *x: wkv7_chunked(*x, chunk_size=16), torch.float32)
    o64, s64, g64 = run(wkv7_recurrent, torch.float64)
    assert o32.dtype == torch.float32
    assert all(torch.isfinite(g).all() for g in g32)
    assert close(o32, o64, 1e-4) and close(s32, s64, 1e-4), (rel_err(o32, o64), rel_err(s32, s64))
    for name, x, y in zip("r w k v a b s0".split(), g32, g64):
        assert close(x, y, 1e-4), (name, rel_err(x, y))


def test_both_forms_equal_fla_naive_references():
    """fla's pure-PyTorch DPLR delta-rule references (fp32, head-first, scale fixed to K^-1/2)."""
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_chunkwise, dplr_recurrence

    def hf(x):
        return x.transpose(1, 2)

    r, w, k, v, a, b, s0 = inputs(t=37, decay="rwkv7", dtype=torch.float32)
    scale = r.shape[-1] ** -0.5
    ref_o, ref_s = dplr_recurrence(*map(hf, (r, k, v, a, b, w)), initial_state=s0, output_final_state=True)
    for o, s in (wkv7_recurrent(r, w, k, v, a, b, s0, scale=scale),
                 wkv7_chunked(r, w, k, v, a, b, s0, chunk_size=16, scale=scale)):
        assert close(o, hf(ref_o), 1e-4) and close(s, ref_s, 1e-4), (rel_err(o, hf(ref_o)), rel_err(s, ref_s))

    r, w, k, v, a, b, s0 = inputs(t=64, decay="weak", dtype=torch.float32, seed=1)  # chunk reference: T % 32 == 0
    ref_o, ref_s = dplr_chunkwise(*map(hf, (r, k, v, a, b, w)), initial_state=s0, chunk_size=32)
    for o, s in (wkv7_recurrent(r, w, k, v, a, b, s0, scale=scale),
                 wkv7_chunked(r, w, k, v, a, b, s0, chunk_size=16, scale=scale)):
        assert close(o, hf(ref_o), 1e-4) and close(s, ref_s, 1e-4), (rel_err(o, hf(ref_o)), rel_err(s, ref_s))


def test_kernel_state_carried_across_pieces_equals_one_shot():
    r, w, k, v, a, b, s0 = inputs(t=50)
    full, s_full = wkv7_chunked(r, w, k, v, a, b, s0)
    outs, s = [], s0
    for lo, hi in [(0, 7), (7, 8), (8, 33), (33, 50)]:  # the T == 1 piece goes through the step form
        o, s = wkv7(*(x[:, lo:hi] for x in (r, w, k, v, a, b)), s)
        outs.append(o)
    assert close(torch.cat(outs, 1), full, 1e-9) and close(s, s_full, 1e-9)


def test_dispatch_dtypes_and_unknown_backend():
    r, w, k, v, a, b, s0 = inputs(t=9, dtype=torch.bfloat16)
    for backend in ("auto", "chunked", "recurrent"):
        o, s = wkv7(r, w, k, v, a, b, s0, backend=backend)
        assert o.dtype == torch.bfloat16 and s.dtype == torch.float32 and o.shape == v.shape
    xs = [x.float() for x in (r, w, k, v, a, b, s0)]
    for backend in ("chunked", "recurrent"):  # autocast does not drop the float32 arithmetic to bf16
        want = wkv7(*xs, backend=backend)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = wkv7(*xs, backend=backend)
        assert got[1].dtype == torch.float32 and close(got[0], want[0], 1e-6) and close(got[1], want[1], 1e-6)
    o, s = wkv7(r[:, :0], w[:, :0], k[:, :0], v[:, :0], a[:, :0], b[:, :0], s0)  # T == 0: state unchanged
    assert o.shape == (2, 0, 3, 8) and torch.equal(s, s0.float())
    with pytest.raises(ValueError, match="known backends: auto, chunked, recurrent, fla"):
        wkv7(r, w, k, v, a, b, backend="cuda-magic")
    with pytest.raises(ValueError, match="b must have r's"):
        wkv7(r, w, k, v, a, b[..., :4])
    with pytest.raises(ValueError, match="state must be"):
        wkv7(r, w, k, v, a, b, s0[:1])


# ------------------------------------------------------------------------------------------------ model


tiny = partial(tiny_backbone, "rwkv7")  # pieces, forms, gradients, empty input: tests/components/test_backbone_contract.py


def test_official_initialisation():
    m = RWKV7(vocab_size=300, d_model=64, n_layer=4, head_size=16)
    b0, b3 = m.blocks[0].att, m.blocks[3].att
    for zero in (b0.output.weight, m.blocks[0].ffn.value.weight, b0.w1, b0.a1, b0.g1, b3.v1):
        assert zero.abs().max() == 0
    assert b0.w1.shape == (64, 32) and b0.g1.shape == (64, 32) and m.blocks[0].ffn.key.weight.shape == (256, 64)
    assert torch.allclose(b0.k_a, torch.tensor(1.02)) and torch.allclose(b0.r_k, torch.tensor(-0.04))
    assert torch.allclose(b3.ln_x.weight, torch.tensor(1.0)) and torch.allclose(b0.ln_x.weight,
                                                                                torch.tensor(0.25 ** 0.7))
    assert abs(b0.w0[0, 0, 0].item() - (-6 + 0.5 - 2.5)) < 1e-6  # www + 0.5 + zigzag * 2.5, zigzag = -1 at n = 0
    assert b0.x_r[0, 0, 0] == 1 and b3.x_k.mean() < b0.x_k.mean() and b0.ln_x.eps == 64e-5
    assert m.emb.weight.abs().max() <= 1e-4
    assert not hasattr(m.blocks[0].att, "v0") and hasattr(m.blocks[1].att, "v0")  # layer 0: no value residual
    # the default LoRA ranks follow the official formula
    big = RWKV7(vocab_size=10, d_model=1024, n_layer=1, head_size=64)
    att = big.blocks[0].att
    assert (att.w1.shape[1], att.a1.shape[1], att.g1.shape[1]) == (64, 64, 160)


def _rwkv_package_x070():
    """A private copy of `rwkv.model` with its x070 code path on (the switch is read at import time; the shared
    `rwkv.model` module, which the RWKV-6 test uses, is left as it is)."""
    import rwkv

    spec = importlib.util.spec_from_file_location("_rwkv_model_x070", os.path.join(os.path.dirname(rwkv.__file__),
                                                                                   "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_logits_and_states_equal_the_rwkv_package_on_an_official_checkpoint(tmp_path, monkeypatch):
    """Independent check: BlinkDL's `rwkv` package (RWKV_x070, 'cpu fp32') runs the same official-format .pth."""
    monkeypatch.setenv("RWKV_V7_ON", "1")
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    jit_autocast = torch._C._jit_set_autocast_mode(True)  # the package switches it off globally; restored below
    try:
        package = _rwkv_package_x070()
        vocab = 300
        ours = tiny(torch.float32, vocab_size=vocab, d_model=128, head_size=64, n_layer=3)
        path = tmp_path / "rwkv7-tiny.pth"
        sd = official_state_dict(ours)
        assert {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"} <= set(sd)
        torch.save(sd, path)  # fp32 file: the package pre-applies ln0 to the embedding in the file's dtype
        ref = package.RWKV(model=str(path)[: -len(".pth")], strategy="cpu fp32")
        assert type(ref).__name__ == "RWKV_x070" and ref.n_layer == 3
        tokens = torch.randint(0, vocab, (24,), generator=torch.Generator().manual_seed(1)).tolist()

        want, want_state = ref.forward(tokens, None, full_output=True)
        fresh = RWKV7.from_checkpoint(path).eval()
        with torch.no_grad():
            hidden, state = fresh(fresh.embed(torch.tensor([tokens])))
            got = fresh.logits(hidden)[0]
        assert got.std() > 0.1 and close(got, want, 1e-4), rel_err(got, want)
        # the package keeps the same 3 tensors per layer, the wkv state transposed ([value, key])
        ours_flat = [t[0] for layer in state for t in (layer[0], layer[1].transpose(-1, -2), layer[2])]
        assert len(ours_flat) == len(want_state)
        for x, y in zip(ours_flat, want_state):
            assert close(x, y, 1e-4), rel_err(x, y)

        # in three pieces (the single token takes the package's one-token path and our step form)
        st, s = None, None
        with torch.no_grad():
            for lo, hi in [(0, 10), (10, 11), (11, 24)]:
                h, s = fresh(fresh.embed(torch.tensor([tokens[lo:hi]])), s)
                w, st = ref.forward(tokens[lo:hi], st)
                assert close(fresh.logits(h)[0, -1], w, 1e-4)
        assert close(fresh.logits(h)[0, -1], want[-1], 1e-4)
    finally:
        torch._C._jit_set_autocast_mode(jit_autocast)


def test_official_checkpoint_loads_and_wrong_shapes_are_named(tmp_path):
    ours = tiny(torch.float32)
    path = tmp_path / "official.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in official_state_dict(ours).items()}, path)  # official: bf16
    fresh = RWKV7.from_checkpoint(path)
    assert (fresh.d_model, fresh.vocab_size, fresh.n_layer, fresh.n_head) == (64, 200, 2, 4)
    assert fresh.head.weight.dtype == torch.float32
    assert torch.equal(fresh.blocks[1].att.w2, ours.blocks[1].att.w2.to(torch.bfloat16).float())
    sd = torch.load(path, weights_only=True)
    with pytest.raises(ValueError, match="missing: blocks.2"):
        load_official_state_dict(RWKV7(**RWKV7.config_from_state_dict(sd) | {"n_layer": 3}), sd)
    with pytest.raises(ValueError, match=r"wrong shape: .*att\.r_k"):
        load_official_state_dict(RWKV7(**RWKV7.config_from_state_dict(sd) | {"head_size": 32}), sd)
    with pytest.raises(ValueError, match=r"unexpected: blocks\.1\.att\.time_faaaa"):
        RWKV7.from_official(sd | {"blocks.1.att.time_faaaa": torch.zeros(4, 16)})
    with pytest.raises(ValueError, match="not an RWKV-7"):  # an RWKV-6 file: no r_k, w1, a1, ...
        RWKV7.from_official({"emb.weight": sd["emb.weight"], "blocks.0.att.time_faaaa": torch.zeros(4, 16)})


def test_fla_hub_format_round_trip(tmp_path):
    """fla's own RWKV7ForCausalLM (built on CPU, never run) saves an HF directory that we load; our weights
    written under fla's names load strictly into fla's model."""
    from fla.models import RWKV7Config, RWKV7ForCausalLM

    cfg = RWKV7Config(hidden_size=64, num_hidden_layers=2, head_dim=32, vocab_size=200, decay_low_rank_dim=8,
                      a_low_rank_dim=8, v_low_rank_dim=8, gate_low_rank_dim=16, intermediate_size=96,
                      norm_eps=2e-5)
    torch.manual_seed(0)
    fla_model = randomised(RWKV7ForCausalLM(cfg), scale=0.3)
    fla_model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "rwkv7"

    ours = RWKV7.from_checkpoint(tmp_path, backend="chunked")
    assert (ours.d_model, ours.n_layer, ours.n_head, ours.vocab_size) == (64, 2, 2, 200)
    assert ours.blocks[0].ffn.key.weight.shape == (96, 64) and ours.blocks[1].att.v1.shape == (64, 8)
    assert ours.ln_out.eps == 2e-5 and ours.blocks[0].att.ln_x.eps == pytest.approx(32 * 2e-5)
    fla_sd = fla_model.state_dict()
    att, fla_att = ours.blocks[1].att, "model.layers.1.attn."
    assert torch.equal(att.w1, fla_sd[fla_att + "w_lora.lora.0.weight"].t())
    assert torch.equal(att.w2, fla_sd[fla_att + "w_lora.lora.2.weight"].t())
    assert torch.equal(att.w0.flatten(), fla_sd[fla_att + "w_lora.lora.2.bias"])
    assert torch.equal(att.g2, fla_sd[fla_att + "g_lora.lora.2.weight"].t())
    assert torch.equal(att.receptance.weight, fla_sd[fla_att + "r_proj.weight"])
    assert torch.equal(ours.blocks[0].ln0.weight, fla_sd["model.layers.0.pre_norm.weight"])

    back = to_fla_state_dict(ours)
    assert set(back) == set(fla_sd)
    for key, x in fla_sd.items():
        assert torch.equal(back[key], x), key
    fla_model.load_state_dict(back, strict=True)

    # a single weights file next to its config.json loads too; a wrong-architecture HF file names its keys
    converted, _ = fla_to_official(fla_sd, {"model_type": "rwkv7"})
    assert set(converted) - set(ours.state_dict()) == set()
    bad = dict(fla_sd)
    bad["model.layers.1.attn.r_k"] = torch.zeros(4, 16)
    bad["model.layers.1.attn.q_proj.weight"] = torch.zeros(64, 64)
    torch.save(bad, tmp_path / "bad.bin")
    with pytest.raises(ValueError, match=r"unexpected: model\.layers\.1\.attn\.q_proj\.weight.*wrong shape: "
                                         r"blocks\.1\.att\.r_k"):
        RWKV7.from_checkpoint(tmp_path / "bad.bin")
    with pytest.raises(ValueError, match="not 'rwkv7'"):
        fla_to_official(fla_sd, {"model_type": "rwkv6"})


def test_constructor_errors():
    with pytest.raises(ValueError, match="not a multiple of head_size"):
        RWKV7(vocab_size=10, d_model=48, n_layer=1, head_size=32)
