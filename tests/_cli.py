"""The `aurora` command run in the test's own process (``aurora.cli.main(argv)``), for the tests whose subject is
what a command does, not how a new Python process starts it: a subprocess pays the imports of torch, Lightning,
transformers and MLflow again (40-50 s each on the loaded 2-core CI machine), an in-process call pays them once per
worker. One test per command family still runs the real ``python -m aurora.cli`` (tests/core/test_cli.py).

:func:`run_cli` returns what ``subprocess.run`` would: the exit code (a ``SystemExit`` from argparse or
jsonargparse becomes its code, as the interpreter would make it), stdout and stderr, with every warning raised
during the run appended to stderr as Python prints it (``file:line: Category: message``), so an assertion on a
warning's text reads the same as on the child's stderr. Any other exception propagates: a traceback is a test
failure, as ``"Traceback" not in stderr`` was."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _handlers() -> dict[logging.Logger, list[logging.Handler]]:
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    return {lg: list(lg.handlers) for lg in loggers}


def run_cli(*args, cwd: Path, capfd: pytest.CaptureFixture, env: dict[str, str] | None = None) -> Result:
    from aurora.cli import main

    capfd.readouterr()  # only this command's output
    before = _handlers()  # a command may add a logging handler on the stderr of this call's capture: removed after
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.chdir(cwd)
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        message = ""
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # as the interpreter ends: an int is the code, a message goes to stderr, code 1
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            message = "" if isinstance(e.code, int) or e.code is None else f"{e.code}\n"
    for lg, handlers in _handlers().items():
        for h in handlers:
            if h not in before.get(lg, ()):
                lg.removeHandler(h)
    out, err = capfd.readouterr()
    err += message
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, "") for w in caught)
    return Result(int(code or 0), out, err)
