"""The shared building blocks of the language backbones (components/rnn/layers.py, the RWKV key map of _rwkv.py):
each RMSNorm cast rule in float32 and bf16, the causal convolutions and the token shift fed in pieces == in one
shot, and the fla <-> official key map there and back."""
import pytest
import torch
import torch.nn.functional as F


from _backbones import TINY, randomised
from aurora.components.rnn._rwkv import fla_to_official_names, official_to_fla_names
from aurora.components.rnn.layers import (GatedRMSNorm, RMSNorm, causal_conv1d, causal_depthwise_conv, exact_dim,
                                          token_shift)
from aurora.registry import RNN


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _norm(dim, cast, dtype=torch.float32, **kw):
    n = RMSNorm(dim, 1e-5, cast, **kw)
    with torch.no_grad():
        n.weight.copy_(1 + 0.3 * torch.randn(dim, generator=_gen(1)))
    return n.to(dtype)


def _ref(x, w, eps=1e-5):
    """The plain formula in float64."""
    x, w = x.double(), w.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


# -------------------------------------------------------------------------------------------------- norms


@pytest.mark.parametrize("cast", ["input", "weight", "llama"])
def test_rms_norm_in_float32_is_the_formula_under_every_cast(cast):
    x = 3 * torch.randn(2, 5, 48, generator=_gen())
    n = _norm(48, cast)
    y = n(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), _ref(x, n.weight), rtol=1e-6, atol=1e-6)


def test_rms_norm_casts_in_bf16_follow_each_reference():
    x = 3 * torch.randn(4, 7, 64, generator=_gen())
    xb = x.bfloat16()
    # "input" (fla, Mamba-2): float32 throughout, one rounding to x's dtype at the end
    n = _norm(64, "input")
    y = n(xb)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, _ref(xb, n.weight).float().bfloat16())
    # "weight" (Mamba v1): a float32 residual into bf16 weights comes out in the weights' dtype, and back
    nb = _norm(64, "weight", torch.bfloat16)
    assert nb(x).dtype == torch.bfloat16 and _norm(64, "weight")(xb).dtype == torch.float32
    assert torch.equal(nb(x), _ref(x, nb.weight).float().bfloat16())
    # "llama": bit for bit transformers' LlamaRMSNorm (cast to bf16 before the weight)
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ln, ours = LlamaRMSNorm(64, eps=1e-5), _norm(64, "llama", torch.bfloat16)
    ln.weight.data.copy_(ours.weight.data)
    ln = ln.bfloat16()
    assert torch.equal(ours(xb), ln(xb))
    # the rules really differ in bf16: two roundings (llama) are not one (input)
    ours_input = _norm(64, "input", torch.bfloat16)
    assert not torch.equal(ours(xb), ours_input(xb))


def test_rms_norm_groups_normalise_each_group_alone():
    x = torch.randn(2, 3, 4 * 16, generator=_gen(), dtype=torch.float64)
    n = _norm(64, "input", torch.float64, group_size=16)
    want = torch.cat([_ref(g, w) for g, w in zip(x.split(16, -1), n.weight.split(16))], -1)
    torch.testing.assert_close(n(x), want)
    assert not torch.allclose(_norm(64, "input", torch.float64)(x), want)


def test_gated_rms_norm_gates_after_or_before_the_norm():
    x, g = (torch.randn(2, 3, 32, generator=_gen(s), dtype=torch.float64) for s in (0, 1))
    after = GatedRMSNorm(32, 1e-6).double()
    torch.testing.assert_close(after(x, g), _ref(x, after.weight, 1e-6) * F.silu(g))
    sig = GatedRMSNorm(32, 1e-6, activation="sigmoid").double()
    torch.testing.assert_close(sig(x, g), _ref(x, sig.weight, 1e-6) * torch.sigmoid(g))
    before = GatedRMSNorm(32, 1e-6, norm_before_gate=False, group_size=16).double()
    want = torch.cat([_ref(p, w, 1e-6) for p, w in zip((x * F.silu(g)).split(16, -1), before.weight.split(16))], -1)
    torch.testing.assert_close(before(x, g), want)
    assert before(x.bfloat16(), g.bfloat16()).dtype == torch.bfloat16


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown RMSNorm cast 'fp32'"):
        RMSNorm(8, 1e-6, cast="fp32")
    with pytest.raises(ValueError, match="unknown gate activation 'relu'"):
        GatedRMSNorm(8, 1e-6, activation="relu")
    assert exact_dim(64 * 0.5, "d_model * expand_k") == 32
    with pytest.raises(ValueError, match="d_model \\* expand_k = 38.4 is not an integer"):
        exact_dim(64 * 0.6, "d_model * expand_k")


# ------------------------------------------------------------------------------------- causal convolutions

B, T, C, K = 2, 13, 24, 4
SPLITS = [(0, 5, 6, 7, 13), tuple(range(T + 1)), (0, 2, 13)]  # pieces longer, one token, shorter than K - 1


def _conv_inputs():
    x = torch.randn(B, T, C, generator=_gen(), dtype=torch.float64)
    w = torch.randn(C, 1, K, generator=_gen(1), dtype=torch.float64)
    b = torch.randn(C, generator=_gen(2), dtype=torch.float64)
    return x, w, b


def test_causal_convolutions_are_the_left_padded_conv1d():
    x, w, b = _conv_inputs()
    want = F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), w, b, groups=C).transpose(1, 2)
    torch.testing.assert_close(causal_depthwise_conv(x, x.new_zeros(B, K - 1, C), w, b), want)
    y, state = causal_conv1d(x, w, b, None)
    torch.testing.assert_close(y, want)
    assert torch.equal(state, x[:, -(K - 1):].transpose(1, 2))
    # the output at t reads inputs t - K + 1 .. t only
    x2 = x.clone()
    x2[:, 6] += 1
    diff = (causal_conv1d(x2, w, b, None)[0] - y).abs().amax((0, 2))
    assert (diff[:6] == 0).all() and (diff[6:6 + K] > 0).all() and (diff[6 + K:] == 0).all()


@pytest.mark.parametrize("cuts", SPLITS)
def test_causal_conv1d_in_pieces_with_its_state_is_one_shot(cuts):
    x, w, b = _conv_inputs()
    whole, whole_state = causal_conv1d(x, w, b, None)
    state, outs = None, []
    for i, j in zip(cuts, cuts[1:]):
        y, state = causal_conv1d(x[:, i:j], w, b, state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-12, atol=1e-12)
    assert torch.equal(state, whole_state)


@pytest.mark.parametrize("cuts", SPLITS)
def test_causal_depthwise_conv_in_pieces_with_the_carried_inputs_is_one_shot(cuts):
    x, w, b = _conv_inputs()
    prev = x.new_zeros(B, K, C)  # Mamba's width: K carried inputs, the newest K - 1 read
    whole = causal_depthwise_conv(x, prev, w, b)
    outs = []
    for i, j in zip(cuts, cuts[1:]):
        outs.append(causal_depthwise_conv(x[:, i:j], prev, w, b))
        prev = torch.cat([prev, x[:, i:j]], 1)[:, -K:]
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------- token shift


@pytest.mark.parametrize("cuts", SPLITS)
def test_token_shift_in_pieces_is_one_shot(cuts):
    x = torch.randn(B, T, C, generator=_gen())
    whole = token_shift(x, None)
    assert torch.equal(whole[:, 0], torch.zeros(B, C)) and torch.equal(whole[:, 1:], x[:, :-1])
    last, outs = None, []
    for i, j in zip(cuts, cuts[1:]):
        outs.append(token_shift(x[:, i:j], last))
        last = x[:, j - 1]
    assert torch.equal(torch.cat(outs, 1), whole)
    assert token_shift(x, x[:, 0].double()).dtype == x.dtype


# ---------------------------------------------------------------------------------------- fla <-> official

LAYER = {"attn.w": ("att.w", "same"), "attn.lora": ("att.w1", "t"), "attn.mu": ("att.maa", "row")}
TOP = {"model.embeddings.weight": "emb.weight", "lm_head.weight": "head.weight"}


def test_key_map_converts_each_way_and_back():
    g = _gen()
    official = {"emb.weight": torch.randn(10, 4, generator=g), "head.weight": torch.randn(10, 4, generator=g)}
    for i in range(2):
        official |= {f"blocks.{i}.att.w": torch.randn(4, 4, generator=g),
                     f"blocks.{i}.att.w1": torch.randn(4, 3, generator=g),
                     f"blocks.{i}.att.maa": torch.randn(1, 1, 4, generator=g)}
    fla = official_to_fla_names(official, LAYER, TOP)
    assert sorted(fla) == sorted(["model.embeddings.weight", "lm_head.weight"] + [
        f"model.layers.{i}.attn.{n}" for i in range(2) for n in ("w", "lora", "mu")])
    assert fla["model.layers.1.attn.lora"].shape == (3, 4) and fla["model.layers.0.attn.mu"].shape == (4,)
    assert fla["model.layers.0.attn.w"].data_ptr() != official["blocks.0.att.w"].data_ptr()  # copies
    back = fla_to_official_names(fla, LAYER, TOP)
    assert list(back) == list(official) and all(torch.equal(back[k], official[k]) for k in official)


def test_key_map_keeps_unknown_keys_splits_special_ones_and_ties_the_head():
    x = torch.arange(8.0).view(2, 4)
    sd = {"model.embeddings.weight": torch.ones(10, 4), "model.layers.0.attn.stacked": x,
          "model.layers.0.attn.other": torch.zeros(3), "stray": torch.zeros(1)}
    split = {"attn.stacked": lambda i, t: {f"blocks.{i}.att.a": t[0], f"blocks.{i}.att.b": t[1]}}
    out = fla_to_official_names(sd, LAYER, TOP, split, tie_word_embeddings=True)
    assert torch.equal(out["blocks.0.att.a"], x[0]) and torch.equal(out["blocks.0.att.b"], x[1])
    assert "model.layers.0.attn.other" in out and "stray" in out  # loading names them as unexpected
    assert out["head.weight"] is out["emb.weight"]
    assert "head.weight" not in fla_to_official_names(sd, LAYER, TOP, split)
    with pytest.raises(KeyError, match="att.unmapped"):
        official_to_fla_names({"blocks.0.att.unmapped": x}, LAYER, TOP)
    assert official_to_fla_names({"blocks.0.att.unmapped": x}, LAYER, TOP, strict=False) == {}


@pytest.mark.parametrize("name", ["rwkv6", "rwkv7"])
def test_rwkv_models_go_to_fla_names_and_back_unchanged(name):
    model = randomised(RNN.build({"name": name, **TINY[name].config}))
    mod = __import__(type(model).__module__, fromlist=["_"])
    back, _ = mod.fla_to_official(mod.to_fla_state_dict(model))
    own = model.state_dict()
    assert sorted(back) == sorted(own) and all(torch.equal(back[k], own[k]) for k in own)


# ------------------------------------------------------------------------------------------------ formats


def test_each_backbone_states_the_checkpoint_formats_it_reads():
    from aurora.tools.convert import FORMAT_CHOICES

    formats = {name: RNN.get(name).formats for name in RNN.names()}
    assert formats == {"rwkv6": ("official", "hf"), "rwkv7": ("official", "hf"), "mamba": ("hf", "state-spaces"),
                       "mamba2": ("hf", "state-spaces"), "gla": ("hf",), "gated_deltanet": ("hf",),
                       "transformer": ("hf",)}
    assert all(set(f) <= set(FORMAT_CHOICES) - {"auto"} for f in formats.values())
