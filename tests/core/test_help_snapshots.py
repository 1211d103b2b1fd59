"""The Lightning commands' bare ``--help`` comes from committed snapshots (aurora/help/*.txt), so even the first
`aurora fit --help` on a fresh machine imports neither torch nor lightning (issue 17: it took 9-15 s). This test
renders each one now and fails when the committed text is stale; ``AURORA_WRITE_HELP=1`` rewrites them."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aurora import cli


def _lightning(command: str) -> bool:
    cmd = cli.COMMANDS[command.split()[0]]
    return isinstance(cmd, cli.Command) and cmd.target.startswith(cli._LIGHTNING)


def _render(command: str) -> str:
    """The snapshot as a user's own process renders it. The Lightning commands' help lists every imported
    subclass of Callback / Logger ..., so rendering it inside the test process would list the test modules'
    classes too: each one is rendered in a fresh interpreter that imports only what the command imports."""
    if not _lightning(command):
        return cli.render_snapshot(command)
    code = "import sys; from aurora import cli; sys.stdout.write(cli.render_snapshot(sys.argv[1]))"
    r = subprocess.run([sys.executable, "-c", code, command], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("command", cli.snapshot_commands())
def test_the_committed_help_snapshot_is_current(command):
    path = cli.SNAPSHOT_DIR / f"{command.replace(' ', '-')}.txt"
    now = _render(command)
    if os.environ.get("AURORA_WRITE_HELP") == "1":
        path.write_text(now)
    assert path.is_file(), f"{path} is missing: AURORA_WRITE_HELP=1 pytest {__file__} writes it"
    assert path.read_text() == now, (f"{path} is stale (the parser's help changed): rewrite it with "
                                     f"AURORA_WRITE_HELP=1 pytest {__file__}")
    usage = now.splitlines()[1]
    assert usage.startswith("usage: aurora ") and f" {command} " in f"{usage} "


def test_a_fresh_machine_prints_the_snapshot_without_importing_torch(tmp_path):
    code = ("import sys; from aurora import cli; rc = cli.main(['fit', '--help']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr); sys.exit(rc)")
    env = dict(os.environ, AURORA_CACHE=str(tmp_path / "fresh"))  # an empty help cache
    env.pop("AURORA_HELP_CACHE", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "NO TORCH"
    assert r.stdout == (cli.SNAPSHOT_DIR / "fit.txt").read_text().partition("\n")[2]
    assert not (tmp_path / "fresh").exists()  # nothing to cache: the snapshot served it


def test_a_snapshot_of_other_library_versions_is_not_used(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "SNAPSHOT_DIR", tmp_path)
    (tmp_path / "fit.txt").write_text("# aurora help snapshot: python 2.7, lightning 0.1\nstale text\n")
    assert cli._snapshot(["fit", "--help"]) is None
    (tmp_path / "fit.txt").write_text(f"{cli.snapshot_stamp()}\ncurrent text\n")
    assert cli._snapshot(["fit", "--help"]) == "current text\n"
    assert cli._snapshot(["fit", "--config", "demo", "--help"]) is None  # a recipe's help is rendered (and cached)


def test_fit_help_says_where_the_parts_and_their_arguments_are_listed():
    text = (cli.SNAPSHOT_DIR / "fit.txt").read_text()  # current: test_the_committed_help_snapshot_is_current
    for kind in ("vision", "rnn", "merge", "projector"):
        block = text.split(f"\n  --model.{kind} ", 1)[1].split("\n  --", 1)[0]
        assert f"aurora parts {kind}" in " ".join(block.split()), block
