"""`aurora ablate`: a 2-cell grid at 2 training steps each, resumable, with Markdown + CSV + PNG reports."""
import csv
import json

import pytest
import yaml

from aurora.tools.ablate import GridError, cells, load_grid
from aurora.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_grid(tmp_path, axes=None, **extra):
    grid = {
        "base": "recipes/demo.yaml",
        "overrides": {
            "trainer.max_steps": 2, "trainer.val_check_interval": 2, "trainer.limit_val_batches": 1,
            "trainer.limit_test_batches": 1, "trainer.logger": False, "trainer.enable_checkpointing": False,
            "trainer.callbacks": [], "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False,
            "data.data_dir": str(tmp_path / "data"),
            "data.synthetic": {"train": 16, "val": 4, "test": 6, "frames": 4, "size": 32},
            "data.image_size": 32, "data.batch_size": 4, "data.num_workers": 0, "data.num_frames": 2,
            "model.vision.image_size": 32, "model.init_from": None,  # a random encoder: no vision stage here
        },
        "axes": axes or [{"name": "order", "key": "model.merge.order", "values": ["original", "size_ascending"]}],
        **extra,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_two_cell_grid_runs_resumes_and_reports(tmp_path, capsys):
    grid, out = write_grid(tmp_path), tmp_path / "out"
    assert main(["ablate", "--grid", str(grid), "--out", str(out)]) == 0
    names = ["order=original", "order=size_ascending"]
    results = [json.loads((out / "cells" / n / "result.json").read_text()) for n in names]
    for r, order in zip(results, ["original", "size_ascending"]):
        assert r["train_steps"] == 2 and r["labels"] == {"order": order}
        assert 0.0 <= r["accuracy"] <= 1.0 and set(r["per_category"]) <= {"color", "shape", "motion"}
        assert r["val_loss"] > 0 and 0 < r["chance"] < 1
        cfg = yaml.safe_load((out / "cells" / r["cell"] / "config.yaml").read_text())
        assert cfg["model"]["merge"]["order"] == order and cfg["trainer"]["max_steps"] == 2
        assert cfg["trainer"]["default_root_dir"] == str(out / "cells" / r["cell"])
    rows = list(csv.reader((out / "results.csv").open()))
    assert rows[0][:2] == ["order", "accuracy"] and [row[0] for row in rows[1:]] == ["original", "size_ascending"]
    md = (out / "results.md").read_text()
    assert md.startswith("| order | accuracy |") and "| size_ascending |" in md
    assert (out / "results.png").read_bytes()[:8] == PNG_MAGIC
    assert not list(out.rglob(".*.tmp"))
    capsys.readouterr()
    # resumable: finished cells are skipped (their results kept, the reports rebuilt from them); a cell without
    # a result (interrupted) would train again
    stamp = (out / "cells" / names[0] / "result.json").stat().st_mtime_ns
    (out / "results.md").unlink()
    assert main(["ablate", "--grid", str(grid), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"1/2 {names[0]}: finished before, skipped" in err and f"2/2 {names[1]}: finished before, skipped" in err
    assert "training" not in err
    assert (out / "cells" / names[0] / "result.json").stat().st_mtime_ns == stamp
    assert (out / "results.md").read_text() == md


def test_grid_cells_and_errors(tmp_path, capsys):
    axes = [{"name": "order", "key": "model.merge.order", "values": ["a", "b"]},
            {"name": "keep", "key": "model.merge.keep_ratio", "values": [0.1, 0.25]},
            {"name": "backbone", "key": "model.rnn", "labels": ["gla"], "values": [{"name": "gla", "d_model": 64}]}]
    grid = load_grid(write_grid(tmp_path, axes))
    cs = cells(grid)
    assert [c["name"] for c in cs][:2] == ["order=a__keep=0.1__backbone=gla", "order=a__keep=0.25__backbone=gla"]
    assert len(cs) == 4 and cs[3]["settings"]["model.rnn"] == {"name": "gla", "d_model": 64}
    assert main(["ablate", "--grid", str(write_grid(tmp_path, axes)), "--out", str(tmp_path), "--list"]) == 0
    assert capsys.readouterr().out.split() == [c["name"] for c in cs]
    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("axes: []\nbase: x", "axes must be a non-empty list"),
        ("base: x\naxes: [{name: a, key: k}]", "axis 0 needs name, key and values"),
        ("base: x\naxes: [{name: a, key: k, values: [1, 2], labels: [u]}]", "1 labels for 2 values"),
        ("axes: [{name: a, key: k, values: [1]}]", "needs a base recipe"),
        ("base: x\ngrid: 1\naxes: [{name: a, key: k, values: [1]}]", "unknown grid keys"),
    ]:
        bad.write_text(text)
        with pytest.raises(GridError, match=message):
            load_grid(bad)
    with pytest.raises(SystemExit):
        main(["ablate", "--grid", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)])
    assert "recipe not found" in capsys.readouterr().err
