"""Imports made from inside a checkout, where the repository root is on ``sys.path``.

Our top-level folders ``kernels/`` and ``data/`` are the packages ``aurora.kernels`` and ``aurora.data`` (the
pyproject package mapping). ``python -m pytest``, ``python -c`` and a notebook started in the checkout put the
repository root first on ``sys.path``, and then those folders also answer to the bare names ``kernels`` and
``data``, which are PyPI packages: transformers >= 5.25 installs and imports ``kernels`` (the Hub kernels). When a
folder is imported under its bare name, it hands the import over to the installed package of that name, or stays
an empty module when there is none.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def hand_over(name: str, folder: str) -> None:
    """Replace the module being imported as ``name`` (our ``folder``) by the installed package of that name."""
    root = os.path.dirname(os.path.abspath(folder))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
        # none installed: stay an empty module. Raising would break transformers < 5.25, which imports a `kernels`
        # it finds without package metadata to read its version (and then, with none, leaves it alone)
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the import statement returns what sys.modules holds once this file has run
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
