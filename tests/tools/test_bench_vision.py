"""`aurora bench vision`: records, tokens per frame as announced and as output, JSON + PNG, bad merge specs."""
import json
import math
import statistics

import pytest
import torch

from aurora.cli import main as cli_main
from aurora.tools.bench_vision import bench_vision_main, parse_merge
from aurora.components.vision.base import MergingViT
from aurora.registry import VISION

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--hidden-size", "32", "--layers", "2", "--heads", "2", "--mlp", "64", "--image-size", "32",
        "--patch-size", "8", "--frames", "4", "--repeat", "2", "--threads", "1"]
TINY_KW = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
               patch_size=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def output_tokens(encoder: str, feature_layer: int, spec: dict) -> int:
    """Tokens per frame a freshly built encoder outputs (independently of the benchmark)."""
    enc = VISION.build({"name": encoder, **TINY_KW, "feature_layer": feature_layer, "merge": spec}).eval()
    with torch.inference_mode():
        return enc(torch.randn(2, 3, 32, 32)).tokens.shape[1]


def test_siglip_records_json_and_png(tmp_path, capsys):
    out_json, out_png = tmp_path / "b" / "v.json", tmp_path / "b" / "v.png"
    rc = cli_main(["bench", "vision", *TINY, "--feature-layer", "-1", "--merges", "tome:0.5,tome:0.25,pool:2",
                     "--json", str(out_json), "--plot", str(out_png)])  # through `aurora bench`'s dispatch
    assert rc == 0
    captured = capsys.readouterr()
    records = json.loads(out_json.read_text())
    # 16 patches, 2 layers: tome 0.5 -> r = 4 per layer (16 -> 12 -> 8); tome 0.25 -> r = 6, clamped to the
    # round maximum (10 - 1) // 2 = 4 in the second layer (16 -> 10 -> 6); pool 2 -> a 2x2 grid
    assert [r["merge"] for r in records] == ["none", "tome:0.5", "tome:0.25", "pool:2"]  # the baseline added
    assert "'none' added" in captured.err
    assert [r["tokens_per_frame"] for r in records] == [16, 8, 6, 4]
    assert [r["keep_ratio"] for r in records] == [1.0, 0.5, 0.25, 0.25]
    for r in records:
        assert r["output_tokens"] == r["tokens_per_frame"] and r["tokens_match"] is True
        assert r["output_tokens"] == output_tokens("siglip", -1, r["merge_spec"])
        assert r["output_shape"] == [4, r["tokens_per_frame"], 32]
        assert r["achieved_keep"] == pytest.approx(r["tokens_per_frame"] / 16)
        assert (r["encoder"], r["hidden_size"], r["layers"], r["layers_run"], r["heads"], r["mlp"]) == \
               ("siglip", 32, 2, 2, 2, 64)
        assert (r["image_size"], r["patch_size"], r["patches"], r["tokens_in"]) == (32, 8, 16, 16)
        assert (r["device"], r["torch"], r["threads"], r["precision"], r["frames"]) == \
               ("cpu", torch.__version__, 1, "float32", 4)
        assert len(r["seconds"]) == 2 and r["median_s"] == pytest.approx(statistics.median(r["seconds"]))
        assert math.isfinite(r["frames_per_s"]) and r["frames_per_s"] == pytest.approx(4 / r["median_s"])
        assert r["visual_tokens_per_s"] == pytest.approx(r["frames_per_s"] * r["tokens_per_frame"])
        assert r["speedup_vs_none"] == pytest.approx(r["frames_per_s"] / records[0]["frames_per_s"])
        assert r["n_params"] == records[0]["n_params"] > 0
        assert r["merge"] in captured.out
    assert records[0]["speedup_vs_none"] == 1.0
    tomes = [r for r in records if r["merge_name"] in ("none", "tome")]  # fewer tokens as the keep ratio falls
    assert all(a["tokens_per_frame"] > b["tokens_per_frame"] for a, b in zip(tomes, tomes[1:]))
    assert records[2]["merge_spec"] == {"name": "tome", "keep_ratio": 0.25, "order": "size_ascending"}
    assert out_png.read_bytes()[:8] == PNG_MAGIC and out_png.stat().st_size > 10_000
    assert not list(out_json.parent.glob(".*.tmp"))  # temp files moved into place


def test_clip_class_token_and_merge_arguments(tmp_path):
    out_json = tmp_path / "c.json"
    rc = bench_vision_main(["--encoder", "clip", *TINY, "--merges", "none,tome:0.5:exact,tome_post:0.25,pool:2",
                            "--order", "size_descending", "--json", str(out_json)])
    assert rc == 0
    records = json.loads(out_json.read_text())
    # class token + 16 patches, feature layer -2: one layer runs; exact 0.5 of 17 -> 9 (round half up);
    # tome_post 0.25 -> round(4.25) = 4; pool 2 -> class token + 2x2
    assert [r["tokens_per_frame"] for r in records] == [17, 9, 4, 5]
    assert [r["layers_run"] for r in records] == [1] * 4
    for r in records:
        assert r["output_tokens"] == r["tokens_per_frame"] == output_tokens("clip", -2, r["merge_spec"])
    assert records[1]["merge_spec"] == {"name": "tome", "keep_ratio": 0.5, "schedule": "exact",
                                        "order": "size_descending"}
    assert records[3]["merge_spec"] == {"name": "pool", "stride": 2}  # pool takes no ordering


def test_unknown_merge_fails_listing_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        cli_main(["bench", "vision", *TINY, "--merges", "none,fancy:0.5"])
    err = capsys.readouterr().err
    assert "unknown merge strategy 'fancy'; known merge strategies: none, pool, temporal, tome, tome_post" in err
    with pytest.raises(SystemExit):
        bench_vision_main([*TINY, "--merges", "tome:1.5"])
    assert "merge 'tome:1.5': keep_ratio must be in (0, 1], got 1.5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pool takes positional arguments stride, kernel, got 3"):
        parse_merge("pool:2:2:2")


def test_a_token_count_unlike_the_announced_one_stops_the_benchmark(monkeypatch):
    announced = MergingViT.tokens_per_frame
    monkeypatch.setattr(MergingViT, "tokens_per_frame", lambda self, h, w: announced(self, h, w) + 1)
    with pytest.raises(RuntimeError, match=r"merge 'none': encoder.tokens_per_frame\(32, 32\) = 17 but the "
                                           r"encoder output 16 tokens per frame"):
        bench_vision_main([*TINY, "--merges", "none"])


def test_tokens_the_language_model_reads_per_frame(tmp_path):
    out_json = tmp_path / "t.json"
    rc = bench_vision_main([*TINY, "--feature-layer", "-1", "--merges", "none,tome:0.5,temporal:0.5:inner=tome/0.5",
                            "--json", str(out_json)])
    assert rc == 0
    none, tome, temporal = json.loads(out_json.read_text())
    assert none["visual_tokens_per_frame"] == none["tokens_per_frame"] == 16
    assert tome["visual_tokens_per_frame"] == tome["tokens_per_frame"] == 8
    # temporal: the encoder still outputs tome's 8 per frame; the 4 frames (one video) keep half of 32 tokens
    assert temporal["tokens_per_frame"] == 8 and temporal["visual_tokens_per_frame"] == 4.0
    assert temporal["merge_spec"]["inner"] == {"name": "tome", "keep_ratio": 0.5, "order": "size_ascending"}
    assert temporal["visual_tokens_per_s"] == pytest.approx(temporal["frames_per_s"] * 4.0)
