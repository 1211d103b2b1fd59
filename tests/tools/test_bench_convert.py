"""`aurora bench rnn` (records, JSON, PNG, timeouts) and `aurora convert` (round trips, wrong inputs refused)."""
import json
import math

import pytest
import torch

from aurora.cli import main as cli_main
from aurora.tools.bench_rnn import targets
from aurora.components.rnn.mamba import Mamba
from aurora.components.rnn.rwkv6 import RWKV6
from aurora.checkpoint import load_converted
from aurora.tools.convert import convert_main
from aurora.registry import RNN

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------- bench


def test_bench_writes_records_json_and_png(tmp_path, capsys):
    out_json, out_png = tmp_path / "b" / "r.json", tmp_path / "b" / "r.png"
    rc = cli_main(["bench", "rnn", "--backbones", "rwkv6,gla", "--d-model", "64", "--n-layer", "1", "--vocab", "64",
                     "--lengths", "64,128", "--piece", "32", "--steps", "4", "--threads", "1",
                     "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    printed = capsys.readouterr().out
    records = json.loads(out_json.read_text())
    assert [(r["backbone"], r["T"]) for r in records] == [("rwkv6", 64), ("rwkv6", 128), ("gla", 64), ("gla", 128)]
    for r in records:
        assert r["status"] == "ok" and r["reason"] is None and r["skipped_modes"] == {}, r
        assert (r["device"], r["torch"], r["dtype"]) == ("cpu", torch.__version__, "float32")
        assert (r["d_model"], r["n_layer"], r["piece"], r["steps"], r["threads"]) == (64, 1, 32, 4, 1)
        assert r["n_params"] == sum(p.numel() for p in RNN.build({"name": r["backbone"], **r["kwargs"]}).parameters())
        for key in ("chunked_tok_s", "streamed_tok_s", "step_tok_s", "step_ms"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["chunked_tok_s"] == pytest.approx(r["T"] / r["chunked_s"])
        assert r["step_ms"] == pytest.approx(1000 * r["step_s"] / 4)
        assert r["chunked_over_step"] == pytest.approx(r["chunked_tok_s"] / r["step_tok_s"])
        for key in ("peak_mem_chunked_mib", "peak_mem_streamed_mib", "peak_mem_step_mib"):
            assert r[key] is not None and 0 <= r[key] < 500, key
        assert r["mem_method"].startswith("VmHWM")
        assert f"{r['backbone']:<8} {r['T']:>4}"[:6] in printed
    # the chunked forward at T = 128 holds more than at T = 64 (its (1, T, 64) activations at least)
    for name in ("rwkv6", "gla"):
        a, b = (r["peak_mem_chunked_mib"] for r in records if r["backbone"] == name)
        assert b > a, (name, a, b)
    assert out_png.read_bytes()[:8] == PNG_MAGIC and out_png.stat().st_size > 10_000
    assert not list(out_json.parent.glob(".*.tmp"))  # temp files moved into place
    assert "target rwkv6" in printed and "target gla" in printed


def test_bench_timeout_is_recorded_as_skipped(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    rc = cli_main(["bench", "rnn", "--backbones", "rwkv6", "--d-model", "64", "--n-layer", "1", "--lengths", "64,128",
                     "--max-seconds", "0.3", "--json", str(out_json)])
    assert rc == 0
    first, second = json.loads(out_json.read_text())
    assert first["status"] == "skipped" and first["reason"].startswith("timed out: over --max-seconds 0.3")
    assert set(first["skipped_modes"]) == {"streamed", "step", "chunked"} and first["chunked_tok_s"] is None
    assert second["status"] == "skipped" and "T=64 did not finish" in second["reason"]
    assert "skipped: timed out" in capsys.readouterr().out


def test_bench_refuses_unknown_backbones():
    with pytest.raises(KeyError, match="unknown rnn backbone 'nope'; known rnn backbones: .*rwkv6"):
        cli_main(["bench", "rnn", "--backbones", "nope", "--lengths", "64"])


def test_targets_summary():
    rec = lambda name, t, ratio, mem: dict(backbone=name, T=t, piece=1024, chunked_over_step=ratio,  # noqa: E731
                                           peak_mem_streamed_mib=mem)
    got = targets([rec("a", 1024, 5.0, 50.0), rec("a", 4096, 12.0, 55.0), rec("a", 16384, 12.0, 55.5),
                   rec("b", 4096, 4.0, 60.0), rec("b", 16384, 3.0, 240.0),
                   rec("kv", 1024, 1.0, 1.4), rec("kv", 4096, 1.0, 3.4)])  # a small KV cache still grows
    assert [(g["backbone"], g["speedup_ok"], g["flat_memory"]) for g in got] == [
        ("a", True, True), ("b", False, False), ("kv", False, False)]


# ------------------------------------------------------------------------------------------------- convert


def perturbed(model, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model.eval()


def logits(model, ids):
    with torch.no_grad():
        return model.logits(model(model.embed(ids))[0])


IDS = torch.randint(0, 100, (2, 23), generator=torch.Generator().manual_seed(1))


def test_convert_rwkv6_official_pth_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    original = perturbed(RWKV6(vocab_size=100, d_model=64, n_layer=2, head_size=16))
    torch.save({k: v.clone() for k, v in original.state_dict().items()}, tmp_path / "rwkv6.pth")  # official layout
    out = tmp_path / "conv" / "rwkv6.safetensors"
    assert convert_main(["--backbone", "rwkv6", "--src", str(tmp_path / "rwkv6.pth"), "--out", str(out),
                         "--format", "official"]) == 0
    spec = json.loads(out.with_suffix(".json").read_text())
    assert spec == {"name": "rwkv6", "vocab_size": 100, "d_model": 64, "n_layer": 2, "head_size": 16,
                    "d_ffn": 224, "mix_lora": 32, "decay_lora": 64}
    want = logits(original, IDS)
    assert torch.equal(logits(load_converted(out).eval(), IDS), want)
    # the documented two-step way: the registry spec, then a strict load of the safetensors file
    from safetensors.torch import load_file

    rebuilt = RNN.build(spec)
    rebuilt.load_state_dict(load_file(str(out)))
    assert torch.equal(logits(rebuilt.eval(), IDS), want)
    assert "wrote" in capsys.readouterr().out
    # a recipe starts the language model from the converted file: rnn: {checkpoint: PATH}
    from aurora.model import AuroraModel

    vision = {"name": "siglip", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 64, "image_size": 16, "patch_size": 8}
    model = AuroraModel.from_specs(vision=vision, merge=None, projector="mlp",
                                   rnn={"name": "rwkv6", "checkpoint": str(out), "chunk_size": 8})
    assert model.rnn.chunk_size == 8 and torch.allclose(logits(model.rnn.eval(), IDS), want, atol=1e-5)
    with pytest.raises(ValueError, match="rnn.name is 'mamba' but .* holds a 'rwkv6' backbone"):
        AuroraModel.from_specs(vision=vision, merge=None, projector="mlp", rnn={"name": "mamba", "checkpoint": str(out)})


def test_convert_mamba_transformers_round_trip(tmp_path):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=100, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4)
    hf = perturbed(MambaForCausalLM(cfg))
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "mamba.safetensors"
    assert convert_main(["--backbone", "mamba", "--src", str(tmp_path / "hf"), "--out", str(out),
                         "--format", "hf"]) == 0
    converted = load_converted(out).eval()
    assert converted.tie_embeddings and converted.lm_head.weight is converted.backbone.embedding.weight
    direct = Mamba.from_checkpoint(tmp_path / "hf").eval()
    got = logits(converted, IDS)
    assert torch.equal(got, logits(direct, IDS))  # before / after conversion: the same model
    with torch.no_grad():
        want = hf(IDS).logits
    assert got.std() > 0.1 and (got - want).abs().max() < 1e-4  # and the same as transformers' own
    other = load_converted(out, chunk_size=4).eval()  # runtime settings may be overridden
    assert other.chunk_size == 4 and (logits(other, IDS) - got).abs().max() < 1e-4


def test_wrong_architecture_and_wrong_format_are_named(tmp_path, capsys):
    from transformers import MambaConfig, MambaForCausalLM

    MambaForCausalLM(MambaConfig(vocab_size=100, hidden_size=32, state_size=8, num_hidden_layers=1)).save_pretrained(
        tmp_path / "hf")
    out = tmp_path / "x.safetensors"
    assert convert_main(["--backbone", "rwkv6", "--src", str(tmp_path / "hf"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not convert to rwkv6" in err and "'emb.weight'" in err
    assert "rwkv6 keys the source lacks" in err and "blocks.N.att.gate.weight" in err
    assert "source keys a rwkv6 does not have" in err and "backbone.layers.N.mixer.A_log" in err
    assert not out.exists() and not out.with_suffix(".json").exists()

    assert convert_main(["--backbone", "mamba", "--src", str(tmp_path / "hf"), "--out", str(out),
                         "--format", "state-spaces"]) == 2
    assert "--format state-spaces given, but" in capsys.readouterr().err and not out.exists()
    assert convert_main(["--backbone", "gla", "--src", str(tmp_path / "hf"), "--out", str(out),
                         "--format", "official"]) == 2
    assert "gla reads hf checkpoints, not 'official'" in capsys.readouterr().err
    assert convert_main(["--backbone", "mamba", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


def test_load_converted_names_keys_of_a_file_that_does_not_fit(tmp_path):
    original = RWKV6(vocab_size=50, d_model=32, n_layer=2, head_size=16)
    torch.save(original.state_dict(), tmp_path / "m.pth")
    out = tmp_path / "m.safetensors"
    assert convert_main(["--backbone", "rwkv6", "--src", str(tmp_path / "m.pth"), "--out", str(out)]) == 0
    side = out.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "n_layer": 3}))
    with pytest.raises(ValueError, match=r"does not fit the rwkv6 .*missing: blocks\.2\.att\.gate\.weight"):
        load_converted(out)
    side.unlink()
    with pytest.raises(FileNotFoundError, match=r"m\.json .* is missing"):
        load_converted(out)


def test_bench_skips_a_length_its_predecessor_says_cannot_finish(monkeypatch, capsys, tmp_path):
    """The parent's extrapolation (the worker is replaced: each mode 'took' T / 1000 s)."""
    import aurora.tools.bench_rnn as bench

    ran = []

    def fake_point(spec, timeout):
        ran.append((spec["backbone"], spec["T"]))
        res = {m: {"mode": m, "seconds": spec["T"] / 1000, "tokens": spec["T"], "peak_bytes": 2**20}
               for m in spec["modes"]}
        return {"results": res, "skips": {}, "info": {}}, None

    monkeypatch.setattr(bench, "_run_point", fake_point)
    out = tmp_path / "r.json"
    # rwkv6: 3 modes x 1 s at T=1000 -> 6 s predicted at T=2000 (ok, <= 7), 12 s at 4000 (> 7: skipped);
    # transformer (quadratic): 3 s -> 12 s at T=2000, skipped.
    assert cli_main(["bench", "rnn", "--backbones", "rwkv6,transformer", "--lengths", "1000,2000,4000",
                       "--max-seconds", "7", "--json", str(out)]) == 0
    assert ran == [("rwkv6", 1000), ("rwkv6", 2000), ("transformer", 1000)]
    recs = {(r["backbone"], r["T"]): r for r in json.loads(out.read_text())}
    assert recs[("rwkv6", 4000)]["status"] == "skipped"
    assert recs[("rwkv6", 4000)]["reason"] == "estimated 12 s from T=2000 exceeds --max-seconds 7"
    assert recs[("transformer", 2000)]["reason"] == "estimated 12 s from T=1000 exceeds --max-seconds 7"
    assert recs[("transformer", 4000)]["reason"].startswith("T=2000 did not finish (estimated")
    assert recs[("rwkv6", 1000)]["status"] == "ok" and recs[("rwkv6", 1000)]["peak_mem_chunked_mib"] == 1.0


def test_plot_has_a_step_latency_panel_per_backbone():
    from aurora.tools.bench_rnn import plot_figure

    rec = lambda name, t, ms: dict(backbone=name, T=t, piece=64, steps=8, batch=1, chunked_tok_s=1e4,  # noqa: E731
                                   streamed_tok_s=5e3, step_ms=ms, peak_mem_chunked_mib=2.0,
                                   peak_mem_streamed_mib=1.0)
    fig = plot_figure([rec("rwkv6", 256, 1.5), rec("rwkv6", 1024, 1.6), rec("transformer", 256, 2.0),
                       rec("transformer", 1024, None)])  # a step not measured: left out, not drawn as 0
    try:
        (step,) = [ax for ax in fig.axes if "step latency" in ax.get_title()]
        assert step.get_ylabel() == "ms per decode step" and "mean of 8 steps" in step.get_title()
        lines = {ln.get_label(): ln.get_xydata().tolist() for ln in step.get_lines()}
        assert lines == {"rwkv6": [[256, 1.5], [1024, 1.6]], "transformer": [[256, 2.0]]}
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
