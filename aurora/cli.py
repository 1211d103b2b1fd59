"""The ``aurora`` command: a table from command name to entry point.

Each entry names the module and function that runs the command, imported only when that command runs, so
``aurora --help`` and every ``aurora CMD --help`` start without loading what other commands need. Nothing imports
this module; every entry point takes the command's own arguments (``argv`` after the command words) and returns
an exit code.

Help: every ``--help`` goes through here, is printed as plain text (reST markup such as ``x`` and :func:`f`
stripped from the docstrings it is built from) and is cached under ``~/.cache/aurora/help`` (``AURORA_CACHE``),
keyed by the command line, the files it names, the package's source files and the versions of the libraries
that build it: the Lightning commands' help needs the model classes, whose import (torch + lightning) takes
10-20 s. Every bare ``aurora CMD --help`` is printed from a committed snapshot (``aurora/help/``, see
:func:`render_snapshot`), so even the first one is instant; a help with more on the line (``--config X``) is
rendered once and cached. ``AURORA_HELP_CACHE=0`` turns both off (every help rendered live).

Flag style: the commands LightningCLI runs (``fit``, ``validate``, ``test``, ``predict``, ``pretrain-vision``)
take Lightning's dotted underscore flags (``--trainer.max_steps``, ``--ckpt_path``); every other command takes
dashed flags (``--max-new-tokens``).
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import io
import os
import sys
from pathlib import Path
from typing import Callable, NamedTuple


class Command(NamedTuple):
    target: str  # "module:function"
    summary: str  # one line for the top-level help


_LIGHTNING = "aurora.train.lightning_cli"
COMMANDS: dict[str, Command | dict[str, Command]] = {
    "fit": Command(f"{_LIGHTNING}:fit_main", "train a model from a recipe (LightningCLI)"),
    "validate": Command(f"{_LIGHTNING}:fit_main", "run the validation loop of a recipe / checkpoint"),
    "test": Command(f"{_LIGHTNING}:fit_main", "held-out accuracy of a recipe / checkpoint"),
    "predict": Command(f"{_LIGHTNING}:fit_main", "answers for a shard set, written as JSON lines"),
    "pretrain-vision": Command(f"{_LIGHTNING}:pretrain_vision_main", "the demo's vision stage: the encoder on labelled frames"),
    "demo": Command("aurora.train.demo:demo_main", "both demo stages, the held-out test and the frame-order ablation"),
    "data": {
        "synthetic": Command("aurora.data.synthetic:synthetic_main", "write the synthetic moving-shapes video QA set"),
        "convert": Command("aurora.data.convert:convert_main", "LLaVA-style annotations + videos -> WebDataset shards"),
    },
    "ask": Command("aurora.infer.ask:ask_main", "ask a question about a video (streaming, constant memory)"),
    "eval": Command("aurora.evaluation.run:eval_main", "score a checkpoint on a video benchmark (MVBench, Video-MME, ...)"),
    "bench": {
        "rnn": Command("aurora.tools.bench_rnn:bench_rnn_main", "tokens/s, step latency and memory of the backbones"),
        "memory": Command("aurora.tools.bench_memory:bench_memory_main", "streaming inference memory vs frames read"),
        "vision": Command("aurora.tools.bench_vision:bench_vision_main", "ViT frames/s and tokens per frame vs merge"),
        "decode": Command("aurora.tools.bench_decode:bench_decode_main", "seconds and memory to sample frames of long videos"),
        "loader": Command("aurora.tools.bench_loader:bench_loader_main", "DataLoader samples/s at stage-3 settings vs the step time"),
        "reuse": Command("aurora.tools.bench_reuse:bench_reuse_main", "accuracy and cost of many questions from one state"),
        "live": Command("aurora.tools.bench_live:bench_live_main", "memory of reading a live stream for an hour"),
        "serve": Command("aurora.tools.bench_serve:bench_serve_main", "load test of aurora serve: requests/s, latency, memory"),
        "step": Command("aurora.tools.bench_step:bench_step_main", "the demo's training step per backbone, per part"),
        "choice": Command("aurora.tools.bench_choice:bench_choice_main", "multiple choice by likelihood vs generated letters"),
    },
    "viz": {
        "merge": Command("aurora.tools.viz:viz_merge_main", "picture of which patches each merged token holds"),
    },
    "serve": Command("aurora.serve.server:serve_main", "an OpenAI-compatible server: chat completions about videos"),
    "ui": Command("aurora.serve.ui:ui_main", "the web page: pick or upload a video, see its frames and merges, ask"),
    "export": Command("aurora.infer.api:export_main", "a checkpoint -> safetensors + config.json + tokenizer + model card"),
    "convert": Command("aurora.tools.convert:convert_main", "a community checkpoint -> our backbone's safetensors"),
    "parts": Command("aurora.tools.parts:parts_main", "every registered part (backbones, merges, ...) with its arguments"),
    "ablate": Command("aurora.tools.ablate:ablate_main", "a grid of training runs (resumable), with a table and plot"),
}
# the Lightning subcommands get their own name back as the first argument
_KEEP_NAME = {"fit", "validate", "test", "predict"}


def _entry(target: str) -> Callable[[list[str]], int]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _wants_help(argv: list[str]) -> bool:
    args = argv[: argv.index("--")] if "--" in argv else argv
    return any(a in ("-h", "--help") for a in args)


def _help_key(words: list[str]) -> str:
    """What a help text depends on: the command line, the contents of files it names (a --config recipe), the
    package's source files (sizes and times) and the libraries' versions."""
    from importlib import metadata
    from importlib.util import find_spec

    h = hashlib.sha256(repr((words, os.getcwd(), sys.version)).encode())
    for w in words:
        value = w.split("=", 1)[-1]
        if os.path.isfile(value):
            h.update(Path(value).read_bytes())
    for pkg in ("aurora", "aurora.components", "aurora.data", "aurora.recipes"):
        spec = find_spec(pkg)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for f in sorted(Path(folder).rglob("*")):
                if f.suffix in (".py", ".yaml"):
                    st = f.stat()
                    h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    for dist in ("lightning", "jsonargparse", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            h.update(f"{dist}={metadata.version(dist)}".encode())
    return h.hexdigest()[:24]


# -- help snapshots: every command's bare --help, committed (aurora/help/*.txt), so that even the first
# `aurora fit --help` on a fresh machine needs no torch / lightning import (9-15 s; 2.5-3.5 s for the commands
# whose modules import torch). tests/core/test_help_snapshots.py regenerates them and fails when one is stale
# (AURORA_WRITE_HELP=1 rewrites them).
SNAPSHOT_DIR = Path(__file__).resolve().parent / "help"
SNAPSHOT_COLUMNS = 100  # the width they are rendered at (argparse reads COLUMNS)


def snapshot_commands() -> list[str]:
    """Every command's words, space-joined (``fit``, ``data synthetic`` ...)."""
    return [f"{name} {sub}" if sub else name for name, cmd in COMMANDS.items()
            for sub in (cmd if isinstance(cmd, dict) else [""])]


def snapshot_stamp() -> str:
    """The first line of a snapshot: what its text depends on besides our own sources (the Python version's
    argparse, the libraries that build the parser). A snapshot whose stamp differs is not used."""
    from importlib import metadata

    versions = []
    for dist in ("lightning", "jsonargparse", "torch"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} absent")
    return f"# aurora help snapshot: python {sys.version_info[0]}.{sys.version_info[1]}, {', '.join(versions)}"


def _snapshot(words: list[str]) -> str | None:
    """The committed help of ``aurora CMD --help`` (nothing else on the line), when its stamp is current."""
    if len(words) < 2 or words[-1] not in ("-h", "--help") or " ".join(words[:-1]) not in snapshot_commands():
        return None
    path = SNAPSHOT_DIR / f"{'-'.join(words[:-1])}.txt"
    try:
        stamp, _, text = path.read_text().partition("\n")
    except OSError:
        return None
    return text if stamp == snapshot_stamp() and text else None


def render_help(target: str, rest: list[str]) -> tuple[int, str]:
    """Run a command's ``--help`` and return (exit code, its text stripped of reST)."""
    from aurora.registry import plain

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = _entry(target)(rest)
        except SystemExit as e:
            code = e.code
    return (code if isinstance(code, int) else (0 if code is None else 2)), plain(out.getvalue())


def render_snapshot(command: str) -> str:
    """A snapshot's contents (stamp line + text) for ``aurora COMMAND --help`` (``command``: its words,
    space-joined), rendered now at a fixed width."""
    cmd: Command | dict[str, Command] = COMMANDS
    for word in command.split():
        cmd = cmd[word]  # type: ignore[index]
    assert isinstance(cmd, Command)
    rest = [command, "--help"] if command in _KEEP_NAME else ["--help"]
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(SNAPSHOT_COLUMNS)
    try:
        code, text = render_help(cmd.target, rest)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    if code != 0:
        raise RuntimeError(f"aurora {command} --help exited {code}")
    return f"{snapshot_stamp()}\n{text}"


def _run_help(target: str, words: list[str], rest: list[str]) -> int:
    """A command's ``--help``: from its committed snapshot or the cache when current, else run, stripped of
    reST, then cached."""
    use_cache = os.environ.get("AURORA_HELP_CACHE", "1") != "0"
    snap = _snapshot(words) if use_cache else None
    if snap is not None:
        print(snap, end="")
        return 0
    cache = Path(os.environ.get("AURORA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "aurora") / "help" / f"{_help_key(words)}.txt"
    if use_cache and cache.is_file():
        print(cache.read_text(), end="")
        return 0
    code, text = render_help(target, rest)
    print(text, end="")
    if use_cache and code == 0 and text:
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(cache)
    return code


def _help(prog: str, table: dict[str, Command | dict[str, Command]]) -> str:
    width = max(len(n) for n in table) + 2
    lines = [f"usage: {prog} COMMAND [ARGS ...]   ({prog} COMMAND --help for a command's options)", "", "commands:"]
    for name, cmd in table.items():
        if isinstance(cmd, dict):
            lines.append(f"  {name:<{width}}{', '.join(cmd)}: {name} tools ({prog} {name} --help)")
        else:
            lines.append(f"  {name:<{width}}{cmd.summary}")
    return "\n".join(lines)


def _unknown(prog: str, word: str, table: dict) -> int:
    close = difflib.get_close_matches(word, list(table), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    print(f"{prog}: error: unknown command {word!r}{hint} (known: {', '.join(table)})", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    words = list(argv)
    prog, table = "aurora", COMMANDS
    while True:
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(_help(prog, table))
            return 0 if argv else 2
        word, rest = argv[0], argv[1:]
        cmd = table.get(word)
        if cmd is None:
            return _unknown(prog, word, table)
        if isinstance(cmd, dict):
            prog, table, argv = f"{prog} {word}", cmd, rest
            continue
        if prog == "aurora" and word in _KEEP_NAME:
            rest = [word, *rest]
        if _wants_help(rest):
            return _run_help(cmd.target, words, rest)
        code = _entry(cmd.target)(rest)
        return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
