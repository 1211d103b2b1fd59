"""`aurora bench memory`: one real point end to end (JSON + PNG), and the summary's growth and ratio arithmetic."""
import argparse
import json

import pytest

from aurora.tools.bench_memory import bench_memory_main, format_table, model_specs, parser, summary, write_plot


def _rec(name, n, added, total, state, status="ok"):
    return {"backbone": name, "frames_requested": n, "status": status, "reason": None, "peak_added_mib": added,
            "peak_total_mib": total, "state_mib": state, "positions": 9 * n, "seconds": n / 100,
            "frames_per_s": 100.0, "device": "cpu", "dtype": "float32", "d_model": 128, "n_layer": 2,
            "tokens_per_frame": 9.0, "chunk_frames": 16}


def test_summary_growth_and_ratio():
    recs = [_rec("rwkv6", 64, 10.0, 500.0, 0.1), _rec("rwkv6", 1024, 10.2, 500.5, 0.1),
            _rec("rwkv6", 4096, 10.3, 501.0, 0.1),
            _rec("transformer", 64, 11.0, 501.0, 1.0), _rec("transformer", 1024, 30.0, 520.0, 16.0),
            _rec("transformer", 4096, None, None, None, status="skipped")]
    s = summary(recs)
    assert s["growth"]["rwkv6"]["to"] == 4096 and s["growth"]["rwkv6"]["added"] == pytest.approx(0.03)
    assert s["growth"]["transformer"]["to"] == 1024  # the skipped point does not count
    r = s["ratio"]["transformer/rwkv6"]
    assert r["frames"] == 1024 and r["added"] == pytest.approx(30 / 10.2) and r["state"] == pytest.approx(160)
    table = format_table(recs)
    assert "skipped" in table and "10.30" in table


def test_only_the_backbone_differs_between_the_compared_models():
    args = parser().parse_args([])
    a, b = model_specs(args, "rwkv6"), model_specs(args, "transformer")
    assert {k: v for k, v in a.items() if k != "rnn"} == {k: v for k, v in b.items() if k != "rnn"}
    assert (a["rnn"]["d_model"], a["rnn"]["n_layer"]) == (b["rnn"]["d_model"], b["rnn"]["n_layer"])


@pytest.mark.slow
def test_one_point_end_to_end(tmp_path, capsys):
    out, png = tmp_path / "m.json", tmp_path / "m.png"
    assert bench_memory_main(["--backbones", "rwkv6", "--frames", "24", "--chunk-frames", "8", "--new-tokens", "2",
                              "--threads", "1", "--json", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    (rec,) = data["records"]
    assert rec["status"] == "ok", rec["reason"]
    assert rec["frames"] == 24 and rec["new_tokens"] == 2 and rec["positions"] > 24
    assert 0 < rec["peak_added_mib"] < rec["peak_total_mib"]
    assert 0 < rec["state_mib"] < 1  # rwkv6 at d_model 128: a few dozen KiB
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rwkv6" in capsys.readouterr().out


def test_unknown_backbone_is_named():
    with pytest.raises(KeyError, match="nope"):
        bench_memory_main(["--backbones", "nope", "--frames", "16"])


def test_plot_draws_partial_records(tmp_path):
    write_plot([_rec("rwkv6", 64, 10.0, 500.0, 0.1), _rec("transformer", 64, None, None, None, "error")],
               tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert isinstance(parser().parse_args(["--frames", "16,64"]), argparse.Namespace)
