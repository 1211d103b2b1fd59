"""Reading a run's recipe: the one place that finds the ``config.yaml`` a training run wrote and reads its
sections (``aurora ask``, ``aurora eval``, ``aurora viz`` and the Python API all use it)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping


class RecipeError(ValueError):
    """A recipe that cannot be read: not YAML, not a mapping of sections, or a section of the wrong shape."""


def load_recipe(config: str | os.PathLike) -> dict[str, Any]:
    """The recipe YAML as a dict, found the way the CLI finds it (:func:`aurora.recipes.resolve`)."""
    import yaml

    from aurora.recipes import resolve

    path = resolve(str(config))  # FileNotFoundError naming the recipe when neither the file nor a packaged one exists
    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(recipe, dict):
        raise RecipeError(f"recipe {path} is not a mapping of sections (got {type(recipe).__name__})")
    return recipe


def section(recipe: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``recipe[name]``, also in LightningCLI's ``{class_path, init_args}`` form."""
    sec = recipe.get(name) or {}
    if isinstance(sec, Mapping) and "init_args" in sec:
        sec = sec["init_args"] or {}
    if not isinstance(sec, Mapping):
        raise RecipeError(f"recipe section {name!r} must be a mapping, got {sec!r}")
    return dict(sec)


def find_run_config(ckpt: str | os.PathLike) -> Path | None:
    """The ``config.yaml`` ``aurora fit`` wrote for the run of a checkpoint (``RUN/checkpoints/last.ckpt`` ->
    ``RUN/config.yaml``; or beside the checkpoint), if there is one."""
    ckpt = Path(ckpt).resolve()
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def data_settings(config: str | os.PathLike | None) -> dict[str, Any]:
    """The data section of a recipe / run config (image size, mean, std, frames, template), or {}."""
    if config is None:
        return {}
    return section(load_recipe(config), "data")
