"""The `aurora` command end to end: recipes parse, a 2-step fit runs through the Lightning CLI, errors are clear.

The Lightning commands run in this process (tests/_cli.py: the same ``aurora.cli.main`` the console script calls,
its exit code, stdout and stderr); a subprocess each paid the imports again, 40-50 s a command on the loaded CI
machine. test_broken_yaml_is_reported and test_pretrain_vision_help_names_itself still start the real
``python -m aurora.cli``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo.yaml"
DEMO_VISION = ROOT / "recipes" / "demo_vision.yaml"
VISION_TINY = [
    "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.max_time=null",
    "--data.init_args.batch_size=8", "--data.init_args.val_clips=1", "--data.init_args.num_workers=0",
]
TINY = [
    "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
    "--trainer.max_time=null", "--data.batch_size=4", "--data.num_workers=0",
    "--data.synthetic.train=16", "--data.synthetic.val=4", "--data.synthetic.test=4",
]


def aurora(*args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "aurora.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_print_config_resolves_the_demo_recipe(tmp_path, capfd):
    r = run_cli("fit", "--config", DEMO, "--print_config", cwd=tmp_path, capfd=capfd)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["model"]["rnn"]["name"] == "rwkv6"
    assert cfg["model"]["merge"]["order"] == "size_ascending"
    assert cfg["trainer"]["logger"]["init_args"]["tracking_uri"].startswith("sqlite:///")


def test_two_step_fit_through_the_cli(tmp_path, capfd):
    r = run_cli("fit", "--config", DEMO, *TINY, cwd=tmp_path, capfd=capfd)  # stage 2 before stage 1: says what to run
    assert r.returncode != 0 and "runs/demo/vision/checkpoints/last.ckpt not found" in r.stderr
    r = run_cli("pretrain-vision", "--config", DEMO_VISION, *VISION_TINY, cwd=tmp_path, capfd=capfd)  # stage 1
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "runs/demo/vision/checkpoints/last.ckpt").exists()
    r = run_cli("fit", "--config", DEMO, *TINY, cwd=tmp_path, capfd=capfd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "runs/demo/data/manifest.json").exists()  # the synthetic set was written on first use
    assert (tmp_path / "runs/demo/checkpoints/last.ckpt").exists()
    assert (tmp_path / "runs/mlflow.db").exists()
    import torch

    ckpt = torch.load(tmp_path / "runs/demo/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 2
    stage1 = torch.load(tmp_path / "runs/demo/vision/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    vision = {k: v for k, v in stage1["state_dict"].items() if k.startswith("model.vision.")}
    assert vision and all(torch.equal(ckpt["state_dict"][k], v) for k, v in vision.items())  # taken, kept frozen
    assert (tmp_path / "runs/demo/config.yaml").exists()

    # the checkpoint serves `aurora test` and `aurora predict` (JSON lines, one per test video)
    last = "--ckpt_path=runs/demo/checkpoints/last.ckpt"
    r = run_cli("test", "--config", DEMO, *TINY, last, cwd=tmp_path, capfd=capfd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test/accuracy" in r.stdout
    r = run_cli("predict", "--config", DEMO, *TINY, last, cwd=tmp_path, capfd=capfd)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "runs/demo/predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"id", "question", "answer", "prediction"}


def test_unknown_part_name_lists_the_known_ones(tmp_path, capfd):
    r = run_cli("fit", "--config", DEMO, *TINY, "--model.init_from=null", "--model.rnn.name=nope", cwd=tmp_path, capfd=capfd)
    assert r.returncode != 0
    assert "unknown rnn backbone 'nope'" in r.stderr and "rwkv6" in r.stderr


def test_broken_yaml_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    r = aurora("fit", "--config", bad, cwd=tmp_path)
    assert r.returncode != 0
    assert "bad.yaml" in r.stderr


def test_data_synthetic_command(tmp_path, capfd):
    r = run_cli("data", "synthetic", "--out", tmp_path / "d", "--train", 6, "--val", 3, "--test", 3, cwd=tmp_path, capfd=capfd)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 6, "val": 3, "test": 3}
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["manifest.json", "test-00000.tar",
                                                                   "train-00000.tar", "val-00000.tar"]


def test_a_run_folder_holds_its_checkpoints_and_each_subcommand_keeps_its_own_record(tmp_path, capfd):
    root = ["--trainer.default_root_dir=runs/tiny", "--model.init_from=null"]
    r = run_cli("fit", "--config", "demo", *TINY, *root, cwd=tmp_path, capfd=capfd)  # a packaged recipe by name
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "args parameter is intended" not in r.stderr
    ckpt = tmp_path / "runs/tiny/checkpoints/last.ckpt"
    assert ckpt.exists() and not (tmp_path / "runs/demo/checkpoints").exists()
    record = (tmp_path / "runs/tiny/config.yaml").read_text()
    r = run_cli("test", "--config", tmp_path / "runs/tiny/config.yaml", "--ckpt_path", ckpt, cwd=tmp_path, capfd=capfd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "runs/tiny/config.yaml").read_text() == record  # the training record is untouched
    assert "ckpt_path" in (tmp_path / "runs/tiny/config.test.yaml").read_text()


def test_config_mistakes_are_one_line_and_exit_2(tmp_path, capfd):
    r = run_cli("fit", "--config", "demo", "--model.merge.keep_ration=0.2", "--model.init_from=null", *TINY,
               cwd=tmp_path, capfd=capfd)
    assert r.returncode == 2 and "did you mean 'keep_ratio'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("fit", "--config", "no-such-recipe", cwd=tmp_path, capfd=capfd)
    assert r.returncode == 2 and "recipe not found: 'no-such-recipe'" in r.stderr and "Traceback" not in r.stderr


def test_pretrain_vision_help_names_itself(tmp_path):
    r = aurora("pretrain-vision", "--help", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: aurora pretrain-vision")


ARGPARSE_COMMANDS = [["demo"], ["data", "synthetic"], ["data", "convert"], ["ask"], ["eval"], ["bench", "rnn"],
                     ["bench", "memory"], ["bench", "vision"], ["viz", "merge"], ["convert"], ["ablate"], ["parts"]]


@pytest.mark.parametrize("words", ARGPARSE_COMMANDS, ids=" ".join)
def test_every_option_of_every_command_has_plain_help(words, monkeypatch, capsys):
    import argparse

    from aurora import cli

    parsers = []
    real = argparse.ArgumentParser.parse_known_args

    def record(self, args=None, namespace=None):
        parsers.append(self)
        return real(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", record)
    monkeypatch.setenv("AURORA_HELP_CACHE", "0")
    assert cli.main([*words, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: aurora {' '.join(words)}")
    assert not any(m in out for m in ("``", ":func:", ":class:", ":mod:", ":meth:"))
    top = parsers[0]
    bare = [a.option_strings or a.dest for a in top._actions if not (a.help and a.help.strip())]
    assert not bare, f"options without help: {bare}"


def test_help_is_cached_and_the_cache_follows_the_command_line(tmp_path, monkeypatch, capsys):
    from aurora import cli

    monkeypatch.setenv("AURORA_CACHE", str(tmp_path))
    # (a bare `aurora parts --help` comes from its committed snapshot: tests/core/test_help_snapshots.py)
    assert cli.main(["parts", "rnn", "--help"]) == 0
    first = capsys.readouterr().out
    cached = list((tmp_path / "help").glob("*.txt"))
    assert len(cached) == 1 and cached[0].read_text() == first
    cached[0].write_text("from the cache\n")
    assert cli.main(["parts", "rnn", "--help"]) == 0 and capsys.readouterr().out == "from the cache\n"
    assert cli.main(["parts", "merge", "--help"]) == 0 and capsys.readouterr().out == first  # another key


def test_top_level_help_lists_every_command_and_a_typo_gets_did_you_mean(capsys):
    from aurora import cli

    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS) and "parts" in out
    assert cli.main(["fitt"]) == 2 and "did you mean 'fit'" in capsys.readouterr().err
    assert cli.main(["bench", "rn"]) == 2 and "did you mean 'rnn'" in capsys.readouterr().err
