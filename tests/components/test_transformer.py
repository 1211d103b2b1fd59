"""Transformer baseline: logits against transformers' own LlamaForCausalLM / Qwen2ForCausalLM loaded from their
saved checkpoints, the KV cache as the recurrent state (one shot == pieces == steps), gradients, checkpoint formats."""
import json
from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, Qwen2RotaryEmbedding

from _backbones import LLAMA3, close, randomised, run_in_pieces
from _backbones import tiny as tiny_backbone
from aurora.components.rnn.transformer import (Transformer, config_from_hf, load_state_dict, rope_inv_freq,
                                               save_hf_checkpoint, to_our_keys)


SIZES = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96)
CASES = {  # GQA with an explicit head_dim != hidden / heads, all Llama biases, Llama 3.1 RoPE
    "llama-gqa-bias-llama3": (LlamaForCausalLM, LlamaConfig(**SIZES | dict(head_dim=24), attention_bias=True,
                                                            mlp_bias=True,
                                                            rope_parameters=LLAMA3 | dict(rope_theta=500.0))),
    # one key/value head, tied embeddings, linear RoPE scaling (the older rope_theta / rope_scaling arguments)
    "llama-mqa-tied-linear": (LlamaForCausalLM, LlamaConfig(**SIZES | dict(num_key_value_heads=1),
                                                            tie_word_embeddings=True, rope_theta=1000.0,
                                                            rope_scaling=dict(type="linear", factor=4.0))),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**SIZES, rope_parameters=dict(rope_type="default", rope_theta=1e6))),
}


def reference(name, dtype=torch.float32):
    cls, config = CASES[name]
    config = type(config).from_dict(config.to_dict())  # a fresh copy per model: the shared one stays untouched
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    return randomised(cls(config), seed=1).to(dtype).eval()


def ids(t=40, seed=2):
    return torch.randint(0, 300, (2, t), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- transformers parity


@pytest.mark.parametrize("name", list(CASES))
def test_logits_equal_transformers_fp32(tmp_path, name):
    """transformers builds, saves (save_pretrained) and runs the model as written (fp32 RoPE table, eager
    attention); we load the directory and give the same logits, at once and through the cache in pieces."""
    ref = reference(name)
    ref.save_pretrained(tmp_path)
    tokens = ids()
    for backend in ("sdpa", "eager"):
        ours = Transformer.from_checkpoint(tmp_path, backend=backend).eval()
        with torch.no_grad():
            want = ref(tokens).logits
            got = ours.logits(ours(ours.embed(tokens))[0])
            pieces = ours.logits(run_in_pieces(ours, ours.embed(tokens), [0, 17, 18, 40])[0])
        assert want.std() > 0.3
        assert close(got, want, 1e-5) and close(pieces, want, 1e-5), (name, backend)
    c = CASES[name][1]
    head_dim = getattr(c, "head_dim", None) or 16  # Qwen2Config has none: hidden / heads
    assert (ours.n_head, ours.n_kv_head, ours.head_dim) == (4, c.num_key_value_heads, head_dim)
    assert ours.tie_embeddings == c.tie_word_embeddings and ours.qkv_bias == (name != "llama-mqa-tied-linear")


def rope_fp64(self, x, position_ids):
    """transformers' default RoPE with the table computed in fp64 (it computes it in fp32 whatever the model
    dtype, which alone puts ~1e-6 into the logits)."""
    theta, dim = self.config.rope_parameters["rope_theta"], 2 * self.inv_freq.shape[0]
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = position_ids[..., None].double() * inv_freq
    angles = torch.cat([angles, angles], -1)
    return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def rms_norm_fp64(self, x):
    """transformers' RMSNorm without its cast to fp32."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


@pytest.mark.parametrize("name", ["llama-gqa-bias-llama3", "qwen2"])
def test_logits_equal_transformers_fp64(tmp_path, monkeypatch, name):
    """In fp64 with the three places where transformers computes in fp32 whatever the dtype lifted to fp64: the
    RoPE table, RMSNorm (patched here, same formulas) and the softmax (its sdpa attention instead of eager)."""
    for cls_ in (LlamaRotaryEmbedding, Qwen2RotaryEmbedding):
        monkeypatch.setattr(cls_, "forward", rope_fp64)
    for cls_ in (LlamaRMSNorm, Qwen2RMSNorm):
        monkeypatch.setattr(cls_, "forward", rms_norm_fp64)
    cls, config = CASES[name]
    config = type(config).from_dict(config.to_dict() | dict(rope_parameters=dict(rope_type="default",
                                                                                   rope_theta=500.0)))
    config._attn_implementation = "sdpa"
    torch.manual_seed(1)
    ref = randomised(cls(config), seed=1).double().eval()
    ref.save_pretrained(tmp_path)
    ours = Transformer.from_checkpoint(tmp_path).double().eval()
    tokens = ids()
    with torch.no_grad():
        want = ref(tokens).logits
        got = ours.logits(ours(ours.embed(tokens))[0])
        pieces = ours.logits(run_in_pieces(ours, ours.embed(tokens), [0, 9, 10, 11, 40])[0])
    assert want.dtype == got.dtype == torch.float64 and want.std() > 0.3
    assert close(got, want, 1e-12) and close(pieces, want, 1e-12)  # measured ~3e-15


@pytest.mark.parametrize("rope", [dict(rope_type="linear", factor=4.0), LLAMA3])
def test_rope_frequencies_equal_transformers(rope):
    config = LlamaConfig(**SIZES, rope_parameters=rope | dict(rope_theta=500.0))
    want, scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config)
    got, plain = rope_inv_freq(16, 500.0, rope), rope_inv_freq(16, 500.0)
    assert scale == 1.0 and torch.allclose(got.float(), want, rtol=1e-6, atol=0)
    ratio = got / plain  # linear: all 1/4; llama3: kept (1), scaled (1/8) and blended frequencies all occur
    if rope["rope_type"] == "linear":
        assert torch.allclose(ratio, torch.full_like(ratio, 0.25))
    else:
        assert ratio.max() == 1.0 and ratio.min() == 0.125 and ((ratio > 0.125) & (ratio < 1.0)).any()


# ----------------------------------------------------------------------------------------- the cache as state


tiny = partial(tiny_backbone, "transformer")  # pieces, both backends, gradients: tests/components/test_backbone_contract.py


def test_sdpa_equals_eager_and_low_precision_runs():
    x = torch.randn(2, 23, 64, dtype=torch.float64)
    with torch.no_grad():
        want = run_in_pieces(tiny(backend="eager"), x, [0, 11, 12, 23])[0]
        got = run_in_pieces(tiny(backend="sdpa"), x, [0, 11, 12, 23])[0]
        low = run_in_pieces(tiny(torch.bfloat16), x.bfloat16(), [0, 11, 12, 23])
    assert all(k.shape == v.shape == (2, 2, 23, 16) for k, v in low[1])  # (batch, kv heads, tokens, head_dim)
    assert close(got, want, 1e-10)
    assert low[0].dtype == low[1][0][0].dtype == torch.bfloat16 and close(low[0], want, 0.1)


def test_default_sizes_and_constructor_errors():
    small = dict(vocab_size=10, d_model=32, n_layer=1)
    built = Transformer(**small, n_head=2)
    assert (built.n_kv_head, built.head_dim, built.d_ffn) == (2, 16, 256)  # MHA; Llama's 8/3 rule rounded to 256
    with pytest.raises(ValueError, match="n_head 4 is not a multiple of n_kv_head 3"):
        Transformer(**small, n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="d_model 32 is not a multiple of n_head 3; give head_dim"):
        Transformer(**small, n_head=3)
    assert Transformer(**small, n_head=3, head_dim=10).layers[0].self_attn.q_proj.weight.shape == (30, 32)
    with pytest.raises(ValueError, match="RoPE needs an even head_dim, got 9"):
        Transformer(**small, n_head=3, head_dim=9)
    with pytest.raises(ValueError, match="sizes must be positive, got n_layer=0"):
        Transformer(vocab_size=10, d_model=32, n_layer=0, n_head=2)
    with pytest.raises(ValueError, match="unsupported RoPE type 'yarn'"):
        Transformer(**small, n_head=2, rope_scaling=dict(rope_type="yarn", factor=4.0))
    with pytest.raises(ValueError, match="'llama3' needs low_freq_factor, high_freq_factor"):
        Transformer(**small, n_head=2, rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                         original_max_position_embeddings=64))
    legacy = Transformer(**small, n_head=2, rope_scaling=dict(type="linear", factor=2.0))  # the older key
    assert legacy.rope_scaling == dict(rope_type="linear", factor=2.0)
    assert torch.allclose(legacy._inv_freq, Transformer(**small, n_head=2)._inv_freq / 2)


def test_an_empty_cache_and_bad_caches_are_named():
    m = tiny()
    x = torch.randn(1, 4, 64, dtype=torch.float64)
    _, s = m(x)
    assert all(k.shape == (1, 2, 0, 16) for k, _ in m(x[:, :0])[1])  # an empty sequence: an empty cache
    with pytest.raises(ValueError, match=r"layer 0 cache must be .* = \(2, 2, 4, 16\)"):
        m(torch.cat([x, x]), s)  # a batch-1 cache for a batch of 2


# ------------------------------------------------------------------------------------------------ checkpoints


def test_wrong_checkpoints_fail_naming_the_keys(tmp_path):
    from transformers import MambaConfig, MambaForCausalLM

    from aurora.components.rnn.gla import GLA

    ref = reference("llama-gqa-bias-llama3")
    ref.save_pretrained(tmp_path / "llama")
    llama_config = json.loads((tmp_path / "llama" / "config.json").read_text())
    # another architecture's HF checkpoint: its config.json says so; with a Llama config.json the keys say so
    GLA(vocab_size=300, d_model=64, n_layer=2, n_head=2).save_checkpoint(tmp_path / "gla")
    MambaForCausalLM(MambaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, state_size=4)).save_pretrained(
        tmp_path / "mamba")
    for arch, keys in (("gla", r"missing: embed_tokens.weight, .*unexpected: embeddings.weight, layers.0.attn"),
                       ("mamba", r"missing: embed_tokens.weight, .*unexpected: backbone.embeddings.weight")):
        with pytest.raises(ValueError, match=f"model_type '{arch}'.*loads model types llama, qwen2"):
            Transformer.from_checkpoint(tmp_path / arch)
        (tmp_path / arch / "config.json").write_text(json.dumps(llama_config))
        with pytest.raises(ValueError, match=keys):
            Transformer.from_checkpoint(tmp_path / arch)
    # the config.json disagrees with the weights' shapes
    for change, message in ((dict(intermediate_size=128), r"wrong shape: layers.0.mlp.down_proj.weight \(64, 96\) "
                                                          r"vs \(64, 128\), layers.0.mlp.gate_proj.bias"),
                            (dict(num_key_value_heads=4), r"wrong shape: layers.0.self_attn.k_proj.bias \(48,\) vs "
                                                          r"\(96,\), layers.0.self_attn.k_proj.weight"),
                            (dict(num_hidden_layers=3), "missing: layers.2.input_layernorm.weight"),
                            (dict(attention_bias=False), "unexpected: layers.0.self_attn.k_proj.bias")):
        (tmp_path / "llama" / "config.json").write_text(json.dumps(llama_config | change))
        with pytest.raises(ValueError, match=message):
            Transformer.from_checkpoint(tmp_path / "llama")
    # variants this model does not implement
    for change, message in ((dict(hidden_act="gelu"), "only the SiLU"),
                            (dict(rope_parameters=dict(rope_type="yarn", factor=4.0, rope_theta=1e4)),
                             "unsupported RoPE type 'yarn'"),
                            (dict(model_type="qwen2", use_sliding_window=True, sliding_window=8,
                                  layer_types=["sliding_attention"] * 2), "sliding-window")):
        with pytest.raises(ValueError, match=message):
            config_from_hf(llama_config | change)
    # a tied model refuses a different head
    sd = to_our_keys(ref.state_dict())
    tied = Transformer(vocab_size=300, d_model=64, n_layer=2, n_head=4, n_kv_head=2, head_dim=24, d_ffn=96,
                       qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=True)
    with pytest.raises(ValueError, match="ties lm_head to embed_tokens but the checkpoint's lm_head.weight differs"):
        load_state_dict(tied, sd)
    (tmp_path / "bare").mkdir()  # a weights file alone: the head count is not in the weights
    (tmp_path / "bare" / "model.safetensors").write_bytes((tmp_path / "llama" / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        Transformer.from_checkpoint(tmp_path / "bare" / "model.safetensors")


@pytest.mark.parametrize("kind", ["llama", "qwen2-tied"])
def test_save_hf_checkpoint_round_trips_and_loads_in_transformers(tmp_path, kind):
    if kind == "llama":
        ours = tiny(torch.float32, vocab_size=300, head_dim=24, o_bias=True, mlp_bias=True)
    else:
        ours = tiny(torch.float32, vocab_size=300, rope_scaling=None, rope_theta=1e6, tie_embeddings=True)
    save_hf_checkpoint(ours, tmp_path / "ours")
    ref, info = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", output_loading_info=True,
                                                     attn_implementation="eager")
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(ref) is (LlamaForCausalLM if kind == "llama" else Qwen2ForCausalLM)
    assert (ref.lm_head.weight is ref.model.embed_tokens.weight) == (kind == "qwen2-tied")
    tokens = ids()
    with torch.no_grad():
        want = ref.eval()(tokens).logits
        got = ours.logits(ours(ours.embed(tokens))[0])
    assert want.std() > 0.3 and close(got, want, 1e-5)

    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    sources = {"directory": tmp_path / "ours", "safetensors file": tmp_path / "ours" / "model.safetensors"}
    torch.save(ref.state_dict(), tmp_path / "ours" / "pytorch_model.bin")  # transformers' names, a .bin file
    sources["bin file"] = tmp_path / "ours" / "pytorch_model.bin"
    (tmp_path / "legacy").mkdir()  # an older transformers' config.json: rope_theta + rope_scaling only
    (tmp_path / "legacy" / "config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                                 if k != "rope_parameters"}))
    (tmp_path / "legacy" / "model.safetensors").write_bytes((tmp_path / "ours" / "model.safetensors").read_bytes())
    sources["legacy config"] = tmp_path / "legacy"
    settings = ("vocab_size", "d_model", "n_layer", "n_head", "n_kv_head", "head_dim", "d_ffn", "qkv_bias", "o_bias",
                "mlp_bias", "norm_eps", "rope_theta", "rope_scaling", "tie_embeddings")
    for what, source in sources.items():
        back = Transformer.from_checkpoint(source, backend="eager")
        assert back.backend == "eager"
        assert all(getattr(back, k) == getattr(ours, k) for k in settings), what
        assert sorted(back.state_dict()) == sorted(ours.state_dict()), what
        assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items()), what
        assert (back.lm_head.weight is back.embed_tokens.weight) == (kind == "qwen2-tied")
    with pytest.raises(ValueError, match="neither Llama nor Qwen2 has qkv_bias=False with o_bias=True"):
        save_hf_checkpoint(tiny(qkv_bias=False, o_bias=True), tmp_path / "bad")


@torch.no_grad()
def test_the_cache_grows_in_place_and_older_states_keep_their_values():
    """Decoding appends into a preallocated buffer (no copy of the whole cache per token), while a state handed
    out earlier still holds its own values when another continuation is fed from it (branching copies)."""
    torch.manual_seed(0)
    model = Transformer(vocab_size=32, d_model=32, n_layer=2, n_head=2, n_kv_head=1, d_ffn=48).eval()
    x = torch.randn(1, 12, 32)
    _, s8 = model(x[:, :8])
    _, s9 = model(x[:, 8:9], s8)
    _, s10 = model(x[:, 9:10], s9)
    k8, k9, k10 = s8[0][0], s9[0][0], s10[0][0]
    assert k9.data_ptr() == k10.data_ptr()  # one buffer (the first append copies the prefill's), written in place
    assert k8.shape[2] == 8 and k9.shape[2] == 9 and k10.shape[2] == 10
    before = [t.clone() for layer in s9 for t in layer]
    y_a, _ = model(x[:, 10:12], s9)  # branch from s9 (s10 already extended its buffer): must copy, not overwrite
    assert [t.data_ptr() for t in _[0]] != [t.data_ptr() for t in s9[0]]
    assert all(torch.equal(a, b) for a, b in zip(before, [t for layer in s9 for t in layer]))
    assert torch.equal(s10[0][0][:, :, 9], k10[:, :, 9])
    y_b, _ = model(x[:, 10:12], [tuple(t.clone() for t in layer) for layer in s9])  # a plain-tensor cache
    assert torch.allclose(y_a, y_b, atol=1e-6)
