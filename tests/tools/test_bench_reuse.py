"""aurora bench reuse: accuracy per mode and choice rule from real answers, the cost table, and its files."""
import json

from _models import tiny_checkpoint


def test_bench_reuse_end_to_end(tmp_path, capsys):
    from aurora.cli import main
    from aurora.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "d", train=0, val=0, test=4, frames=4, size=32, seed=0,
                            samples_per_shard=10, shape_size=0.14)
    tiny_checkpoint(tmp_path / "m.ckpt", max_new_tokens=3, inference={"num_frames": 4})  # as aurora fit writes
    rc = main(["bench", "reuse", "--ckpt", str(tmp_path / "m.ckpt"), "--shards", str(tmp_path / "d/test-*.tar"),
               "--limit", "3", "--questions", "1,3", "--cost-videos", "1", "--json", str(tmp_path / "r.json"),
               "--plot", str(tmp_path / "r.png")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| reuse:generic | loglik |" in out and "| 3 |" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    acc = doc["accuracy"]
    assert acc["videos"] == 3 and acc["questions"] == 9
    assert set(acc["table"]) == {f"{m}/{c}" for m in ("scratch", "reuse:generic", "reuse:none")
                                 for c in ("generate", "loglik")}
    for row in acc["table"].values():
        assert set(row["per_category"]) == {"color", "shape", "motion"}
        assert all(x * 3 == round(x * 3) for x in row["per_category"].values())  # counts of 3 questions each
    assert {(r["questions"], r["how"]) for r in doc["cost"]} == {(1, "re-read"), (1, "reuse"), (3, "re-read"),
                                                                 (3, "reuse")}
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert main(["bench", "reuse", "--ckpt", str(tmp_path / "none.ckpt"), "--shards", "x"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
