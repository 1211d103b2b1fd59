"""Checkpoints from anywhere never run code: ``--ckpt_path`` (local file or URL) of every Lightning subcommand is
read weights-only, a checkpoint of another architecture is refused naming the keys, unreadable files are one
clear error (exit code 2)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _cli import run_cli
from _hostile import serve, write_payload_checkpoint
from aurora.checkpoint import CheckpointError
from aurora.train.callbacks import AtomicCheckpointIO
from aurora.train.lightning_cli import architecture_diff

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo.yaml"
TINY = ["--trainer.max_steps=1", "--trainer.limit_test_batches=1", "--trainer.limit_predict_batches=1",
        "--trainer.max_time=null", "--data.batch_size=2", "--data.num_workers=0", "--model.init_from=null",
        "--data.synthetic.train=2", "--data.synthetic.val=2", "--data.synthetic.test=2"]


@pytest.fixture
def aurora(capfd):
    """The `aurora` command in this process (tests/_cli.py: a subprocess paid the imports again, 20-40 s a call on
    the loaded CI machine); a checkpoint's payload would run here as well, and create its marker all the same."""
    def run(*args, cwd, env=None):
        return run_cli(*args, cwd=cwd, capfd=capfd, env={"TORCH_HOME": str(Path(cwd) / "torch_home"), **(env or {})})

    return run


def test_the_payload_runs_when_unpickled_for_real(tmp_path):
    """The control: read without weights_only, the payload does create its marker (so the tests below can fail)."""
    marker = tmp_path / "ran"
    path = write_payload_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("asked", [None, False, True])
def test_checkpoint_io_reads_local_and_remote_files_weights_only(tmp_path, monkeypatch, asked):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    marker = tmp_path / "ran"
    write_payload_checkpoint(tmp_path / "evil.ckpt", marker)
    io = AtomicCheckpointIO()
    with pytest.raises(CheckpointError, match="weights-only"):
        io.load_checkpoint(tmp_path / "evil.ckpt", weights_only=asked)
    with serve(tmp_path) as url:
        with pytest.raises(CheckpointError, match="127.0.0.1"):
            io.load_checkpoint(f"{url}/evil.ckpt", weights_only=asked)
    assert not marker.exists()
    good = {"state_dict": {"w": torch.ones(2)}, "epoch": 3}
    torch.save(good, tmp_path / "good.ckpt")
    with serve(tmp_path) as url:
        assert io.load_checkpoint(f"{url}/good.ckpt")["epoch"] == 3  # a plain checkpoint still loads remotely


@pytest.mark.parametrize("where", ["local", "url"])
def test_cli_ckpt_path_payload_never_runs(tmp_path, where, aurora):
    marker = tmp_path / "ran"
    write_payload_checkpoint(tmp_path / "evil.ckpt", marker)
    with serve(tmp_path) as url:
        path = tmp_path / "evil.ckpt" if where == "local" else f"{url}/evil.ckpt"
        r = aurora("test", "--config", DEMO, *TINY, f"--ckpt_path={path}", cwd=tmp_path)
    assert not marker.exists(), "the checkpoint's pickle ran"
    assert r.returncode == 2, r.stderr[-3000:]
    assert "weights-only" in r.stderr and "Traceback" not in r.stderr


def test_cli_random_and_truncated_checkpoints_are_one_clear_error(tmp_path, aurora):
    (tmp_path / "random.ckpt").write_bytes(os.urandom(4096))
    torch.save({"state_dict": {"w": torch.ones(1000)}}, tmp_path / "full.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "full.ckpt").read_bytes()[:1500])
    for name in ("random.ckpt", "cut.ckpt"):
        r = aurora("test", "--config", DEMO, *TINY, f"--ckpt_path={tmp_path / name}", cwd=tmp_path)
        assert r.returncode == 2, r.stderr[-3000:]
        assert name in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(CheckpointError, match="cut.ckpt"):  # the traceback stays available: re-raised
        aurora("test", "--config", DEMO, *TINY, f"--ckpt_path={tmp_path / 'cut.ckpt'}", cwd=tmp_path,
               env={"AURORA_DEBUG": "1"})


def test_architecture_diff_names_the_keys():
    recipe = {"rnn": {"name": "rwkv6", "d_model": 64, "n_layer": 2}, "vision": {"name": "vit"}, "lr": 1e-3}
    ckpt = {"rnn": {"name": "rwkv6", "d_model": 32, "n_layer": 2}, "vision": {"name": "vit"}, "lr": 5e-4}
    diff = architecture_diff(recipe, ckpt)
    assert diff == ["rnn.d_model: recipe 64 vs checkpoint 32"]  # lr is not architecture
    assert architecture_diff(recipe, dict(recipe)) == []


def test_cli_ckpt_of_another_architecture_is_refused(tmp_path, aurora):
    import yaml

    hp = yaml.safe_load(aurora("fit", "--config", DEMO, "--print_config", cwd=tmp_path).stdout)["model"]
    hp["rnn"] = dict(hp["rnn"], d_model=int(hp["rnn"].get("d_model", 64)) * 2)
    torch.save({"state_dict": {}, "hyper_parameters": hp}, tmp_path / "other.ckpt")
    r = aurora("test", "--config", DEMO, *TINY, f"--ckpt_path={tmp_path / 'other.ckpt'}", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "another architecture" in r.stderr and "rnn.d_model" in r.stderr


def test_disk_full_says_so_and_names_the_path(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: basic_ios::clear: "
                           "iostream error")

    monkeypatch.setattr(torch, "save", full)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    path = tmp_path / "last.ckpt"
    with pytest.raises(OSError, match="no space left on device") as e:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, path)
    assert str(path) in str(e.value)
    assert not list(tmp_path.glob(".*tmp"))


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    stale = tmp_path / f".epoch=1.ckpt.{pid}.tmp"
    live = tmp_path / f".epoch=2.ckpt.{os.getppid()}.tmp"  # a writer still running
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"y")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1)}}, tmp_path / "last.ckpt")
    assert not stale.exists() and live.exists() and (tmp_path / "last.ckpt").exists()


@pytest.mark.parametrize("flag,words", [
    ("--model.rnn.d_model=abc", ["d_model", "must be int"]),
    ("--data.num_frames=0", ["data.num_frames", "positive"]),
    ("--model.merge.keep_ratio=7", ["keep_ratio"]),
    ("--model.freeze=[nose]", ["unknown model part 'nose'"]),
])
def test_bad_recipe_values_are_one_line_and_exit_2(tmp_path, flag, words, aurora):
    r = aurora("fit", "--config", DEMO, *TINY, flag, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert all(w in r.stderr for w in words) and "Traceback" not in r.stderr, r.stderr[-3000:]
