"""The model a serving command loads: ``Aurora.from_pretrained`` with its errors as one line (``aurora serve``,
``aurora ui``)."""
from __future__ import annotations

import os
import sys
from typing import Any


def open_model(command: str, path: str, **kw: Any):
    """``Aurora.from_pretrained(path, **kw)`` for a command (``aurora serve`` / ``aurora ui``), or None after one
    line on stderr naming what is wrong with the model (``AURORA_DEBUG=1``: the traceback instead)."""
    from aurora.checkpoint import CheckpointError
    from aurora.infer.api import Aurora, PretrainedError
    from aurora.infer.engine import StreamError

    try:
        return Aurora.from_pretrained(path, **kw)
    except (CheckpointError, PretrainedError, StreamError, FileNotFoundError, ValueError) as e:
        if os.environ.get("AURORA_DEBUG"):
            raise
        print(f"aurora {command}: error: " + " ".join(str(e).split()) + " (AURORA_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return None
