"""``aurora bench rnn --peers`` at toy sizes: every pair runs against its peer with equal outputs, and a pair whose
outputs differ is recorded as skipped with the error instead of being timed."""
import json

import pytest
import torch

from aurora.tools import bench_peers
from aurora.tools.bench_rnn import bench_rnn_main


def test_peers_table_json_and_plot(tmp_path, capsys):
    pytest.importorskip("transformers")
    out, png = tmp_path / "peers.json", tmp_path / "peers.png"
    pytest.importorskip("fla", reason="fla's naive ops are the gla / gated_delta peers")
    rc = bench_rnn_main(["--peers", "--backbones", "transformer,gla,mamba,gated_delta", "--d-model", "64",
                         "--n-layer", "1", "--vocab", "64", "--peer-lengths", "32", "--threads", "1", "--peer-steps", "2",
                         "--json", str(out), "--plot", str(png)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "GEMM (1024^3 fp32 mm), 1 thread(s)" in text and "transformers Llama (SDPA)" in text
    records = json.loads(out.read_text())["records"]
    assert [r["pair"] for r in records] == ["transformer", "gla", "mamba", "gated_delta"]
    assert {r["threads"] for r in records} == {1}  # --threads 1 overrides --peer-threads' default 1,2
    for r in records:
        assert r["status"] == "ok", r
        assert r["max_rel_err"] < 1e-3 and r["speedup"] > 0 and r["matmul_flops"] > 0 and r["gemm_share"] > 0
    assert records[0]["decode_ms_ours"] > 0 and records[0]["decode_ms_peer"] > 0
    assert png.stat().st_size > 1000


def test_a_pair_that_differs_is_not_timed(monkeypatch):
    def wrong(name, t, h=8, n=64):
        return (lambda: torch.ones(3)), (lambda: torch.zeros(3) + 2), 1e-3

    monkeypatch.setattr(bench_peers, "_op_pair", wrong)
    payload = bench_peers.run_peers(["gla"], [16], [1], 64, 1, 64, 1, 1, log=lambda s: None)
    (rec,) = payload["records"]
    assert rec["status"] == "skipped" and "outputs differ" in rec["reason"] and "speedup" not in rec


def test_unknown_pair_is_named():
    with pytest.raises(SystemExit, match="no peer pair for nope"):
        bench_rnn_main(["--peers", "--backbones", "nope"])


def test_several_thread_counts_need_peers():
    with pytest.raises(SystemExit):
        bench_rnn_main(["--backbones", "gla", "--threads", "1,2"])


def test_attention_pair_is_skipped_above_its_limit():
    payload = bench_peers.run_peers(["transformer"], [32], [1], 64, 1, 64, 1, 1, log=lambda s: None,
                                    attention_max_t=16)
    (rec,) = payload["records"]
    assert rec["status"] == "skipped" and "quadratic" in rec["reason"] and "speedup" not in rec
