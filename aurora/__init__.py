"""Aurora: long-video understanding with linear-RNN language models.

``from aurora import Aurora`` gives the Python API (:mod:`aurora.infer.api`). The name is resolved on first use
(PEP 562 ``__getattr__``) so that ``import aurora`` -- which every submodule import runs -- stays cheap and the
core keeps importing no wing: the package root only points at the API, it does not load it.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"Aurora": "aurora.infer.api"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aurora' has no attribute {name!r}")
