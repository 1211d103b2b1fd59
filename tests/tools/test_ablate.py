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
            "trainer.limit_test_batches": 1, "trainer.enable_checkpointing": False,
            "trainer.logger.init_args.tracking_uri": f"sqlite:///{tmp_path}/runs/mlflow.db",
            "trainer.logger.init_args.experiment_name": "grid",
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


def _grid_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/runs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("grid").experiment_id])
    return client, {r.info.run_name: r for r in runs}


def test_two_cell_grid_runs_resumes_and_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid, out = write_grid(tmp_path), tmp_path / "out"
    # --override for every cell, after the grid's own overrides (2 steps there, 1 here)
    assert main(["ablate", "--grid", str(grid), "--out", str(out), "--override", "trainer.max_steps=1",
                 "--override", "trainer.val_check_interval=1"]) == 0
    names = ["order=original", "order=size_ascending"]
    results = [json.loads((out / "cells" / n / "result.json").read_text()) for n in names]
    for r, order in zip(results, ["original", "size_ascending"]):
        assert r["train_steps"] == 1 and r["labels"] == {"order": order}
        assert 0.0 <= r["accuracy"] <= 1.0 and set(r["per_category"]) <= {"color", "shape", "motion"}
        assert r["val_loss"] > 0 and 0 < r["chance"] < 1
        cfg = yaml.safe_load((out / "cells" / r["cell"] / "config.yaml").read_text())
        assert cfg["model"]["merge"]["order"] == order and cfg["trainer"]["max_steps"] == 1
        assert cfg["trainer"]["default_root_dir"] == str(out / "cells" / r["cell"])
    # MLflow: one run for the grid, one per cell nested under it with its labels and metrics
    client, runs = _grid_runs(tmp_path)
    assert set(runs) == {"ablate-out", *(f"{n}-ablate-cell" for n in names)}
    grid_id = runs["ablate-out"].info.run_id
    for r, order in zip(results, ["original", "size_ascending"]):
        cell = runs[f"{r['cell']}-ablate-cell"]
        assert cell.data.tags["mlflow.parentRunId"] == grid_id and cell.data.tags["aurora.axis.order"] == order
        assert cell.data.tags["aurora.stage"] == "ablate-cell"
        assert cell.data.metrics["test/accuracy"] == pytest.approx(r["accuracy"]) and "val/loss" in cell.data.metrics
    assert {"results.md", "results.png"} <= {a.path for a in client.list_artifacts(grid_id)}
    assert runs["ablate-out"].data.metrics["cells"] == 2 and not (tmp_path / "mlruns").exists()
    rows = list(csv.reader((out / "results.csv").open()))
    assert rows[0][:2] == ["order", "accuracy"] and [row[0] for row in rows[1:]] == ["original", "size_ascending"]
    md = (out / "results.md").read_text()
    assert md.startswith("| order | accuracy |") and "| size_ascending |" in md
    assert (out / "results.png").read_bytes()[:8] == PNG_MAGIC
    assert not list(out.rglob(".*.tmp"))
    capsys.readouterr()
    # resumable: finished cells are skipped (their results kept, the reports rebuilt from them) while their
    # settings, --override's included, are the same; a cell without a result (interrupted) would train again
    stamp = (out / "cells" / names[0] / "result.json").stat().st_mtime_ns
    (out / "results.md").unlink()
    assert main(["ablate", "--grid", str(grid), "--out", str(out), "--override", "trainer.max_steps=1",
                 "--override", "trainer.val_check_interval=1"]) == 0
    err = capsys.readouterr().err
    assert f"1/2 {names[0]}: finished before, skipped" in err and f"2/2 {names[1]}: finished before, skipped" in err
    assert "training" not in err
    assert (out / "cells" / names[0] / "result.json").stat().st_mtime_ns == stamp
    assert (out / "results.md").read_text() == md
    assert len(_grid_runs(tmp_path)[1]) == 3  # the resumed grid reuses its run


def test_overrides_parse_as_yaml_and_refuse_axis_keys(tmp_path):
    from aurora.tools.ablate import parse_overrides

    grid = load_grid(write_grid(tmp_path))
    assert parse_overrides(["trainer.max_steps=50", "model.merge={name: tome, keep_ratio: 0.5}", "a.b=", "c=x=y"],
                           grid) == {"trainer.max_steps": 50, "model.merge": {"name": "tome", "keep_ratio": 0.5},
                                     "a.b": None, "c": "x=y"}
    with pytest.raises(GridError, match="give KEY=VALUE"):
        parse_overrides(["trainer.max_steps"], grid)
    with pytest.raises(GridError, match="axis 'order'"):
        parse_overrides(["model.merge.order=random"], grid)
    with pytest.raises(GridError, match="not YAML"):
        parse_overrides(["a=[unclosed"], grid)


def test_the_plot_shows_values_even_when_all_are_zero_or_equal(tmp_path):
    from aurora.tools.ablate import plot_figure

    grid = load_grid(write_grid(tmp_path))
    rows = [{"cell": f"order={o}", "labels": {"order": o}, "accuracy": 0.0, "chance": 0.3, "train_steps": 1,
             "per_category": {"color": 0.0, "shape": 0.0}} for o in ("original", "size_ascending")]
    for value in (0.0, 0.5):
        for r in rows:
            r["accuracy"] = value
            r["per_category"] = {"color": value, "shape": value}
        fig = plot_figure(grid, rows)
        try:
            (ax,) = fig.axes
            labels = [t.get_text() for t in ax.texts]
            assert labels.count(f"{value:.2f}") == 2 * 3  # every bar (2 cells x overall, color, shape) labelled
            assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 1.0
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)


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


def test_a_resumed_grid_trains_again_the_cells_whose_settings_changed(tmp_path, capsys, monkeypatch):
    """A finished cell is reused only while its whole resolved recipe is the same: a changed --override (or grid
    override) trains it again, and the log line names the key (issue 17: the old result was reused silently)."""
    import aurora.tools.ablate as ablate

    trained = []

    def fake_run_cell(cfg_path, *args, **kwargs):  # the grid's bookkeeping only: no model is trained here
        cfg = yaml.safe_load(cfg_path.read_text())
        trained.append((cfg_path.parent.name, cfg["trainer"]["max_steps"]))
        return {"train_steps": cfg["trainer"]["max_steps"], "accuracy": 0.5, "chance": 0.3, "val_loss": 1.0,
                "val_token_acc": 0.4, "train_seconds": 0.0, "train_loss_last": 1.0, "encoder_tokens_per_frame": None,
                "per_category": {"color": 0.5}}

    monkeypatch.setattr(ablate, "run_cell", fake_run_cell)
    grid, out = write_grid(tmp_path), tmp_path / "out"
    base = ["ablate", "--grid", str(grid), "--out", str(out), "--override", "trainer.logger=false"]
    names = ["order=original", "order=size_ascending"]
    assert main([*base, "--override", "trainer.max_steps=1"]) == 0
    assert trained == [(n, 1) for n in names]
    assert main([*base, "--override", "trainer.max_steps=1"]) == 0  # the same settings: both reused
    assert len(trained) == 2
    capsys.readouterr()
    assert main([*base, "--override", "trainer.max_steps=3"]) == 0  # changed: both trained again
    assert trained[2:] == [(n, 3) for n in names]
    err = capsys.readouterr().err
    assert f"1/2 {names[0]}: its settings changed since it finished (trainer.max_steps: 1 -> 3): training it again" in err
    results = [json.loads((out / "cells" / n / "result.json").read_text()) for n in names]
    assert [r["train_steps"] for r in results] == [3, 3]
    assert main([*base]) == 0  # the override dropped: the grid's own 2 steps differ from the results' 3
    assert trained[4:] == [(n, 2) for n in names]
