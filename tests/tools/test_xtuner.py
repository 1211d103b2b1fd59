"""The paper's released model in AuroraCap's xtuner layout (aurora/tools/xtuner.py): a tiny checkpoint with the
export's file names, config fields and tensor names loads part by part through `Aurora.from_pretrained` and
`aurora convert`; the projector, the RWKV-6 language model and the SigLIP tower match references computed from
the raw tensors (transformers' SigLIP for the tower); every tensor is accounted for; no file's code runs."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from _xtuner import LM, VIS, executed, write_xtuner


@pytest.fixture(scope="module")
def xdir(tmp_path_factory):
    return write_xtuner(tmp_path_factory.mktemp("auroralong") / "AuroraLong-RWKV-VID-2B-xtuner")


@pytest.fixture(scope="module")
def loaded(xdir):
    from aurora import Aurora

    return Aurora.from_pretrained(xdir, device="cpu")


def raw(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_from_pretrained_builds_every_part_and_runs_no_code(xdir, loaded):
    cfg = loaded.config["model"]
    assert cfg["vision"]["name"] == "siglip" and cfg["vision"]["hidden_size"] == VIS["hidden_size"]
    assert cfg["merge"] == {"name": "tome", "r": 7, "order": "size_ascending"}  # int(16 * 0.9 / 2)
    assert cfg["projector"] == {"name": "mlp", "depth": 2}
    assert cfg["rnn"]["name"] == "rwkv6" and cfg["rnn"]["d_model"] == LM["hidden_size"]
    assert cfg["rnn"]["ln_x_eps"] == pytest.approx(64e-5) and cfg["rnn"]["mix_lora"] == 32
    assert loaded.engine.tokenizer.vocab_file.endswith("rwkv_vocab_v20230424.txt")
    assert loaded.config["preprocessing"]["image_size"] == 32
    report = "\n".join(loaded.card["load_report"])
    for why in ("layer 1 comes after feature_layer -2", "post-layernorm", "attention-pooling head", "pos_emb"):
        assert why in report
    assert executed(xdir) == []  # the remote-code files were never imported


def test_projector_matches_the_raw_tensors(xdir, loaded):
    p = raw(xdir / "projector/pytorch_model.bin")
    x = torch.randn(2, 5, VIS["hidden_size"])
    ref = F.linear(F.gelu(F.linear(x, p["model.0.weight"], p["model.0.bias"])), p["model.2.weight"], p["model.2.bias"])
    torch.testing.assert_close(loaded.engine.model.projector(x), ref, rtol=1e-6, atol=1e-6)


def rwkv6_reference(sd, embeds):
    """modeling_rwkv6.py's Rwkv6Model forward (fp32, no rescaling) from its own tensors, recurrent wkv."""
    t = {k: v.float() for k, v in sd.items()}
    c, n = LM["hidden_size"], LM["head_size"]
    h = c // n
    x = embeds
    B, T, _ = x.shape
    ln = lambda z, p: F.layer_norm(z, (c,), t[p + ".weight"], t[p + ".bias"], 1e-5)  # noqa: E731
    shift = lambda z: torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], 1)  # noqa: E731
    for i in range(LM["num_hidden_layers"]):
        b = f"rwkv.blocks.{i}."
        if i == 0:
            x = ln(x, b + "pre_ln")
        a, z = b + "attention.", ln(x, b + "ln1")
        xx = shift(z) - z
        xxx = torch.tanh((z + xx * t[a + "time_maa_x"]) @ t[a + "time_maa_w1"]).view(B * T, 5, -1).transpose(0, 1)
        mw, mk, mv, mr, mg = torch.bmm(xxx, t[a + "time_maa_w2"]).view(5, B, T, -1).unbind(0)
        mix = {m: z + xx * (t[a + f"time_maa_{m}"] + d) for m, d in zip("wkvrg", (mw, mk, mv, mr, mg))}
        wx, kx, vx, rx, gx = (mix[m] for m in "wkvrg")
        r, k, v = (F.linear(q, t[a + f"{nm}.weight"]).view(B, T, h, n) for q, nm in
                   ((rx, "receptance"), (kx, "key"), (vx, "value")))
        g = F.silu(F.linear(gx, t[a + "gate.weight"]))
        decay = t[a + "time_decay"] + torch.tanh(wx @ t[a + "time_decay_w1"]) @ t[a + "time_decay_w2"]
        w = torch.exp(-torch.exp(decay))
        w, u = w.view(B, T, h, n), t[a + "time_faaaa"]
        S, out = torch.zeros(B, h, n, n), []
        for s in range(T):
            kv = k[:, s, :, :, None] * v[:, s, :, None, :]  # (B, H, K, V)
            out.append(torch.einsum("bhk,bhkv->bhv", r[:, s], u[None, :, :, None] * kv + S))
            S = w[:, s, :, :, None] * S + kv
        o = torch.stack(out, 1).reshape(B * T, c)
        o = F.group_norm(o, h, t[a + "ln_x.weight"], t[a + "ln_x.bias"], 1e-5 * 8 ** 2).view(B, T, c) * g
        x = x + F.linear(o, t[a + "output.weight"])
        fw, z = b + "feed_forward.", ln(x, b + "ln2")
        xx = shift(z) - z
        kk = torch.relu(F.linear(z + xx * t[fw + "time_maa_k"], t[fw + "key.weight"])) ** 2
        rr = torch.sigmoid(F.linear(z + xx * t[fw + "time_maa_r"], t[fw + "receptance.weight"]))
        x = x + rr * F.linear(kk, t[fw + "value.weight"])
    return ln(x, "rwkv.ln_out"), F.linear(ln(x, "rwkv.ln_out"), t["head.weight"])


def test_rwkv6_matches_modeling_rwkv6_from_the_raw_tensors(xdir, loaded):
    sd = raw(xdir / "pytorch_model.bin")
    embeds = torch.randn(1, 9, LM["hidden_size"])
    ref_hidden, ref_logits = rwkv6_reference(sd, embeds)
    rnn = loaded.engine.model.rnn
    hidden, _ = rnn(embeds)
    torch.testing.assert_close(hidden, ref_hidden, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rnn.logits(hidden), ref_logits, rtol=1e-4, atol=1e-4)
    ids = torch.tensor([[3, 70, 65000]])
    torch.testing.assert_close(rnn.embed(ids), sd["rwkv.embeddings.weight"][ids].float())


def test_siglip_tower_matches_transformers(xdir):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from aurora.tools.xtuner import load_xtuner

    model, _ = load_xtuner(xdir, keep_ratio=1.0)  # no merge: the tower alone
    sd = raw(xdir / "visual_encoder/pytorch_model.bin")
    ref = SiglipVisionModel(SiglipVisionConfig(**VIS)).eval()
    ref.load_state_dict({k[len("vision_model."):]: v.float() for k, v in sd.items() if k != "pos_emb"})
    pixels = torch.randn(3, 3, VIS["image_size"], VIS["image_size"])
    with torch.no_grad():
        want = ref(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        got = model.vision(pixels).tokens
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_ask_and_export_round_trip(xdir, loaded, tmp_path):
    from aurora import Aurora
    from aurora.data.video import encode_mp4
    import numpy as np

    video = encode_mp4(np.random.RandomState(0).randint(0, 255, (6, 32, 32, 3), np.uint8), fps=2)
    a = loaded.ask(video, "What is shown?", frames=3, max_new_tokens=4)
    out = loaded.save_pretrained(tmp_path / "export")
    b = Aurora.from_pretrained(out, device="cpu").ask(video, "What is shown?", frames=3, max_new_tokens=4)
    assert len(a.tokens) == 4 and a.tokens == b.tokens


def broken(xdir, tmp_path, where, edit):
    bad = shutil.copytree(xdir, tmp_path / "bad")
    sd = raw(bad / where)
    edit(sd)
    torch.save(sd, bad / where)
    return bad


@pytest.mark.parametrize("where, edit, named", [
    ("projector/pytorch_model.bin", lambda sd: sd.__setitem__("model.4.weight", torch.zeros(2, 2)), "model.4.weight"),
    ("pytorch_model.bin", lambda sd: sd.pop("rwkv.blocks.1.attention.key.weight"), "blocks.1.att.key.weight"),
    ("pytorch_model.bin", lambda sd: sd.__setitem__("rwkv.blocks.0.attention.extra", torch.zeros(1)),
     "rwkv.blocks.0.attention.extra"),
    ("visual_encoder/pytorch_model.bin", lambda sd: sd.__setitem__("vision_model.adapter.weight", torch.zeros(1)),
     "vision_model.adapter.weight"),
    ("visual_encoder/pytorch_model.bin", lambda sd: sd.pop("vision_model.encoder.layers.0.mlp.fc1.bias"),
     "layers.0.mlp.fc1.bias"),
    ("visual_encoder/pytorch_model.bin", lambda sd: sd.__setitem__("pos_emb", sd["pos_emb"] + 1), "pos_emb"),
])
def test_every_tensor_is_accounted_for(xdir, tmp_path, where, edit, named):
    from aurora import Aurora
    from aurora.infer.api import PretrainedError

    bad = broken(xdir, tmp_path, where, edit)
    with pytest.raises(PretrainedError, match=named.replace(".", r"\.")):
        Aurora.from_pretrained(bad, device="cpu")


def test_convert_recognises_the_layout(xdir, loaded, tmp_path, capsys):
    from aurora.checkpoint import load_converted
    from aurora.tools.convert import convert_main

    assert convert_main(["--backbone", "rwkv6", "--src", str(xdir), "--out", str(tmp_path / "lm.safetensors")]) == 0
    lm = load_converted(tmp_path / "lm.safetensors")
    embeds = torch.randn(1, 4, LM["hidden_size"])
    torch.testing.assert_close(lm(embeds)[0], loaded.engine.model.rnn(embeds)[0])
    assert convert_main(["--src", str(xdir), "--out", str(tmp_path / "whole")]) == 0  # the whole model: an export
    assert (tmp_path / "whole/model.safetensors").is_file() and (tmp_path / "whole/config.json").is_file()
    assert convert_main(["--src", str(tmp_path / "nothing"), "--out", str(tmp_path / "w2")]) == 2
    assert "--backbone" in capsys.readouterr().err
