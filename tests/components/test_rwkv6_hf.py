"""RWKV-6 in fla-hub's Hugging Face format: fla's own RWKV6ForCausalLM (run on CPU) against our model loaded from
its saved directory, our model written in fla's format and run by fla, and wrong checkpoints named."""
import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from aurora.components.rnn.rwkv6 import RWKV6, fla_to_official, to_fla_state_dict

pytestmark = pytest.mark.filterwarnings("ignore")  # fla warns about Triton on CPU and about "buggy" RWKV

IDS = torch.randint(0, 120, (2, 40), generator=torch.Generator().manual_seed(2))
CFG = dict(vocab_size=120, hidden_size=64, num_hidden_layers=3, num_heads=4, expand_k=1.0, expand_v=1.0,
           proj_low_rank_dim=8, gate_low_rank_dim=16, intermediate_size=96, norm_eps=2e-5)


def rel_err(got, want):
    return (got.double() - want.double()).abs().max().item() / want.double().abs().max().item()


@pytest.fixture
def fla_on_cpu(monkeypatch):
    """fla's RWKV6ForCausalLM with its Triton-only leaves swapped for fla's own pure-PyTorch references.

    The model code (blocks, fused pre-norm residuals, x_proj / DDLerpLinear token-shift mixes, decay LoRA, gate,
    group norm, channel mix, lm_head) runs as fla wrote it; only these change: ``chunk_rwkv6`` /
    ``fused_recurrent_rwkv6`` -> ``naive_recurrent_rwkv6`` (head-first, so transposed around it);
    ``token_shift`` -> ``token_shift_ref``; ``LayerNorm`` / ``GroupNorm`` -> ``layer_norm_ref`` /
    ``group_norm_ref``; the Triton swish gate and the torch.compiled squared relu -> ``silu`` and
    ``relu(x) ** 2``.
    """
    import fla.layers.rwkv6 as fla_layer
    import fla.models.rwkv6.modeling_rwkv6 as fla_modeling
    import fla.modules.activations.ops as fla_act
    from fla.models import RWKV6Config, RWKV6ForCausalLM
    from fla.modules import GroupNorm, LayerNorm
    from fla.modules.norm import layernorm
    from fla.modules.token_shift import token_shift_ref
    from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

    def kernel(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
        assert cu_seqlens is None and scale == 1.0
        o, s = naive_recurrent_rwkv6(*(x.transpose(1, 2) for x in (r, k, v, w)), u, scale=scale,
                                     initial_state=initial_state, output_final_state=output_final_state)
        return o.transpose(1, 2), s

    monkeypatch.setattr(fla_layer, "chunk_rwkv6", kernel)
    monkeypatch.setattr(fla_layer, "fused_recurrent_rwkv6", kernel)
    for module in (fla_layer, fla_modeling):
        monkeypatch.setattr(module, "token_shift", lambda x, cu_seqlens=None: token_shift_ref(x, cu_seqlens))
    monkeypatch.setattr(LayerNorm, "forward", lambda self, x, residual=None, prenorm=False, residual_in_fp32=False:
                        layernorm.layer_norm_ref(x, self.weight, self.bias, residual, self.eps, prenorm))
    monkeypatch.setattr(GroupNorm, "forward", lambda self, x, residual=None, prenorm=False, residual_in_fp32=False:
                        layernorm.group_norm_ref(x, self.weight, self.bias, self.num_groups, residual, self.eps,
                                                 self.is_rms_norm, prenorm))
    monkeypatch.setattr(fla_act, "sqrelu_fwd", lambda x: F.relu(x.float()).square().to(x.dtype))
    monkeypatch.setattr(fla_act, "swish_fwd", lambda x, output_contiguous=False: F.silu(x))
    return RWKV6Config, RWKV6ForCausalLM


def randomised(model, seed=0):
    """Every weight random and in a working range: the zero-initialised mixes, LoRAs, biases and output
    projections all carry signal; decays -exp(raw) spread from ~0.3 to ~0.99 per token; norms ~1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith(("w_proj.linear.lora.2.bias", "att.time_decay")):
                p.copy_(noise * 0.5 - 2.0)
            elif name.endswith(("mu", "x_bias")) or ".time_maa_" in name and not name.endswith(("w1", "w2")):
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype))
            elif "norm" in name or ".ln" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            elif p.dim() == 2 and "emb" not in name:  # projections: unit-scale outputs
                p.copy_(noise * (0.5 if "lora" in name or "x_proj" in name or "_w" in name[-4:] else 1.0)
                        / p.shape[1] ** 0.5)
            else:
                p.copy_(noise * 0.5)
    return model.eval()


def fla_logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def our_logits(model, ids):
    with torch.no_grad():
        return model.logits(model(model.embed(ids))[0])


def fla_model(fla_on_cpu, **cfg):
    RWKV6Config, RWKV6ForCausalLM = fla_on_cpu
    torch.manual_seed(0)
    return randomised(RWKV6ForCausalLM(RWKV6Config(**(CFG | cfg))))


# --------------------------------------------------------------------------------------------- fla -> ours


def test_fla_checkpoint_gives_fla_logits(fla_on_cpu, tmp_path):
    ref = fla_model(fla_on_cpu)
    ref.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "rwkv6"
    ours = RWKV6.from_checkpoint(tmp_path, backend="chunked").eval()
    assert (ours.vocab_size, ours.d_model, ours.n_layer, ours.n_head) == (120, 64, 3, 4)
    assert ours.blocks[0].ffn.key.weight.shape == (96, 64)
    assert ours.blocks[2].att.time_maa_w2.shape == (5, 8, 64) and ours.blocks[2].att.time_decay_w1.shape == (64, 16)
    assert ours.ln_out.eps == ours.blocks[2].ln1.eps == ours.blocks[0].ln0.eps == 2e-5
    assert ours.blocks[1].att.ln_x.eps == 2e-5  # fla's g_norm takes norm_eps (official: 64e-5)

    # the stacked token-shift mixes: fla order r, w, k, v, g -> official w, k, v, r, g
    fla_sd, att, pre = ref.state_dict(), ours.blocks[1].att, "model.layers.1.attn."
    lin, up = fla_sd[pre + "x_proj.0.linear.weight"], fla_sd[pre + "x_proj.2.weight"].view(64, 5, 8)
    for j, m in enumerate("wkvrg"):
        n = "rwkvg".index(m)
        assert torch.equal(getattr(att, f"time_maa_{m}").flatten(), fla_sd[pre + "x_bias"][n])
        assert torch.equal(att.time_maa_w1[:, 8 * j:8 * (j + 1)], lin[8 * n:8 * (n + 1)].t())
        assert torch.equal(att.time_maa_w2[j], up[:, n].t())
    assert torch.equal(att.time_decay.flatten(), fla_sd[pre + "w_proj.linear.lora.2.bias"])
    assert torch.equal(att.time_decay_w2, fla_sd[pre + "w_proj.linear.lora.2.weight"].t())
    assert torch.equal(att.time_faaaa, fla_sd[pre + "bonus"])
    assert torch.equal(ours.blocks[1].ffn.time_maa_r.flatten(), fla_sd["model.layers.1.ffn.receptance.mu"])

    want = fla_logits(ref, IDS)
    got = our_logits(ours, IDS)
    assert want.std() > 0.5  # a real signal, not a near-constant
    err = rel_err(got, want)
    assert err < 1e-5, err
    # in pieces (chunked, one step through the recurrent form, chunked) from the carried state
    with torch.no_grad():
        h1, s = ours(ours.embed(IDS[:, :19]))
        h2, s = ours(ours.embed(IDS[:, 19:20]), s)
        h3, _ = ours(ours.embed(IDS[:, 20:]), s)
    assert rel_err(ours.logits(torch.cat([h1, h2, h3], 1)), want) < 1e-5

    # the comparison can fail: two mixes swapped (r, w: fla's order read as the official one), or the official
    # group-norm eps 64e-5 instead of fla's norm_eps, give other logits
    swapped, official_eps = copy.deepcopy(ours), copy.deepcopy(ours)
    with torch.no_grad():
        for blk in swapped.blocks:
            w = blk.att.time_maa_w.clone()
            blk.att.time_maa_w.copy_(blk.att.time_maa_r)
            blk.att.time_maa_r.copy_(w)
    for blk in official_eps.blocks:
        blk.att.ln_x.eps = 64e-5
    assert rel_err(our_logits(swapped, IDS), want) > 1e-2
    assert rel_err(our_logits(official_eps, IDS), want) > 1e-3


def test_tied_embeddings_no_norm_bias_and_a_lone_weights_file(fla_on_cpu, tmp_path):
    ref = fla_model(fla_on_cpu, tie_word_embeddings=True, norm_bias=False, num_hidden_layers=2, norm_eps=1e-5)
    ref.save_pretrained(tmp_path)
    ours = RWKV6.from_checkpoint(tmp_path / "model.safetensors").eval()  # its config.json beside it is read
    assert torch.equal(ours.head.weight, ours.emb.weight) and not ours.blocks[1].ln2.bias.any()
    err = rel_err(our_logits(ours, IDS), fla_logits(ref, IDS))
    assert err < 1e-5, err


# --------------------------------------------------------------------------------------------- ours -> fla


def test_our_model_in_fla_format_runs_in_fla(fla_on_cpu, tmp_path):
    _, RWKV6ForCausalLM = fla_on_cpu
    torch.manual_seed(1)
    ours = randomised(RWKV6(vocab_size=120, d_model=64, n_layer=2, head_size=32, d_ffn=128, mix_lora=8,
                            decay_lora=16, norm_eps=1e-5, ln_x_eps=1e-5), seed=1)
    ours.save_hf_checkpoint(tmp_path / "hf")
    ref, info = RWKV6ForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    fla_sd = ref.state_dict()
    back = to_fla_state_dict(ours)
    assert set(back) == set(fla_sd) and all(torch.equal(back[k], fla_sd[k]) for k in fla_sd)
    want = fla_logits(ref.eval(), IDS)
    assert want.std() > 0.5
    err = rel_err(our_logits(ours, IDS), want)
    assert err < 1e-5, err

    again = RWKV6.from_checkpoint(tmp_path / "hf")  # and back: the same weights, the same eps
    assert (again.norm_eps, again.ln_x_eps) == (1e-5, 1e-5)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())

    official = RWKV6(vocab_size=120, d_model=64, n_layer=1, head_size=32)  # ln_x eps 64e-5: not in fla's config
    with pytest.raises(ValueError, match="ln_x_eps 0.00064 != norm_eps 1e-05"):
        official.save_hf_checkpoint(tmp_path / "official")
    official.save_hf_checkpoint(tmp_path / "official", exact=False)
    assert RWKV6.from_checkpoint(tmp_path / "official").ln_x_eps == 1e-5


def test_official_pth_still_loads_through_from_checkpoint(tmp_path):
    model = randomised(RWKV6(vocab_size=50, d_model=32, n_layer=2, head_size=16))
    torch.save(model.state_dict(), tmp_path / "rwkv6.pth")
    back = RWKV6.from_checkpoint(tmp_path / "rwkv6.pth", chunk_size=8)
    assert back.chunk_size == 8 and back.blocks[0].att.ln_x.eps == 64e-5 and back.ln_out.eps == 1e-5
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match="no RWKV-6 checkpoint"):
        RWKV6.from_checkpoint(tmp_path / "nothing")


def test_convert_reads_the_fla_format(fla_on_cpu, tmp_path):
    from aurora.checkpoint import load_converted
    from aurora.tools.convert import convert

    ref = fla_model(fla_on_cpu, num_hidden_layers=2)
    ref.save_pretrained(tmp_path / "hf")
    spec = convert("rwkv6", tmp_path / "hf", tmp_path / "out.safetensors", fmt="hf")
    assert spec["norm_eps"] == spec["ln_x_eps"] == 2e-5 and spec["d_ffn"] == 96
    err = rel_err(our_logits(load_converted(tmp_path / "out.safetensors").eval(), IDS), fla_logits(ref, IDS))
    assert err < 1e-5, err


# ------------------------------------------------------------------------------------------ wrong checkpoints


def test_wrong_checkpoints_and_configs_are_named(fla_on_cpu, tmp_path):
    RWKV6Config, RWKV6ForCausalLM = fla_on_cpu
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = RWKV6ForCausalLM(RWKV6Config(**(CFG | {"num_hidden_layers": 2})))
    ref.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    sd = ref.state_dict()

    bad = dict(sd)
    bad["model.layers.1.attn.r_proj.linear.weight"] = torch.zeros(64, 32)
    bad["model.layers.1.attn.q_proj.weight"] = torch.zeros(64, 64)
    del bad["model.layers.0.attn.g_proj.linear.weight"]
    torch.save(bad, tmp_path / "bad.bin")
    with pytest.raises(ValueError, match=r"missing: blocks\.0\.att\.gate\.weight; unexpected: "
                                         r"model\.layers\.1\.attn\.q_proj\.weight; wrong shape: "
                                         r"blocks\.1\.att\.receptance\.weight \(64, 32\) vs \(64, 64\)"):
        RWKV6.from_checkpoint(tmp_path / "bad.bin")
    with pytest.raises(ValueError, match=r"model\.layers\.0\.attn\.x_proj\.0\.linear\.weight has shape \(39, 64\)"):
        fla_to_official(sd | {"model.layers.0.attn.x_proj.0.linear.weight": torch.zeros(39, 64)})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.attn\.x_bias has shape \(4, 64\)"):
        fla_to_official(sd | {"model.layers.1.attn.x_bias": torch.zeros(4, 64)})

    for field, value, message in (
            ("expand_k", 0.5, "expand_k=0.5: only key / value width = hidden_size"),
            ("hidden_act", "swish", "hidden_act='swish'"),
            ("norm_first", False, "norm_first=False"),
            ("attn", {"layers": [1], "num_heads": 4}, "attn=.*hybrid"),
            ("hidden_size", 128, "hidden_size=128 but the weights have 64"),
            ("intermediate_size", 224, "intermediate_size=224 but the weights have 96"),
            ("proj_low_rank_dim", 32, "proj_low_rank_dim=32 but the weights have 8"),
            ("model_type", "rwkv7", "model_type 'rwkv7', not 'rwkv6'")):
        (tmp_path / "hf" / "config.json").write_text(json.dumps(config | {field: value}))
        with pytest.raises(ValueError, match=message):
            RWKV6.from_checkpoint(tmp_path / "hf")

    # another architecture: fla's RWKV-7 directory, and its weights file without the config
    from fla.models import RWKV7Config, RWKV7ForCausalLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        RWKV7ForCausalLM(RWKV7Config(hidden_size=64, num_hidden_layers=2, head_dim=16, vocab_size=120,
                                     decay_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=8,
                                     gate_low_rank_dim=8, intermediate_size=96)).save_pretrained(tmp_path / "r7")
    with pytest.raises(ValueError, match="model_type 'rwkv7', not 'rwkv6'"):
        RWKV6.from_checkpoint(tmp_path / "r7")
    (tmp_path / "r7" / "config.json").unlink()
    with pytest.raises(ValueError, match=r"not an official RWKV-6 checkpoint \(missing or odd 'blocks\.0\.att\."
                                         r"time_faaaa'\) \(keys not in fla's RWKV-6 layout: .*"
                                         r"model\.layers\.N\.attn\.k_k, "):
        RWKV6.from_checkpoint(tmp_path / "r7")
