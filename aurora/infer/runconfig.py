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


# the datamodule's default frame count, for a recipe that gives neither num_frames nor fps (a run's config.yaml
# always holds it; tests/infer/test_runconfig.py checks it against AuroraDataModule's signature)
DEFAULT_NUM_FRAMES = 8


class MissingSettings(RecipeError):
    """A checkpoint that does not say how to read a video for it (no inference settings, no run config)."""


def _normalise(data: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: data.get(k) for k in ("num_frames", "fps", "max_frames", "image_size", "mean", "std", "template",
                                    "eval_lead", "tokenizer")}
    if out["fps"] is None and out["num_frames"] is None:
        out["num_frames"] = DEFAULT_NUM_FRAMES
    if out["fps"] is not None:
        out["num_frames"] = None  # fps sampling: each video its own frame count (at most max_frames)
    return out


def inference_settings(ckpt: str | os.PathLike, config: str | os.PathLike | None = None, required: bool = True,
                       blob: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """How to read a video for a checkpoint: ``num_frames`` (or ``fps`` + ``max_frames``), ``image_size``,
    ``mean``, ``std``, ``template`` (its fields, with the lead), ``eval_lead``, ``tokenizer`` (a registry spec)
    ``source`` (where they came from, for the log line) and ``config`` (the recipe file read, if one was).

    In this order: ``config`` when given (the user named it); the settings the checkpoint carries (every checkpoint
    ``aurora fit`` writes has them, :data:`aurora.checkpoint.INFERENCE_KEY`); the run's ``config.yaml`` beside it
    (older checkpoints). With none of these it is a :class:`MissingSettings` error naming what to give, never the
    datamodule's defaults in silence; ``required=False`` (the caller has explicit settings such as ``--frames``)
    returns ``{"source": None}`` instead. ``blob``: the checkpoint already read (saves reading it again)."""
    if config is not None:
        return {**_normalise(data_settings(config)), "source": f"the recipe {config}", "config": str(config)}
    from aurora.checkpoint import checkpoint_inference, read_checkpoint

    rec = checkpoint_inference(blob if blob is not None else read_checkpoint(ckpt))
    if rec is not None:
        return {**_normalise(rec), "source": f"the checkpoint {Path(ckpt).name}", "config": None}
    run = find_run_config(ckpt)
    if run is not None:
        return {**_normalise(data_settings(run)), "source": f"the run config {run}", "config": str(run)}
    if not required:
        return {"source": None, "config": None}
    raise MissingSettings(
        f"{ckpt} carries no inference settings (written before checkpoints held them) and no run config.yaml is "
        "beside it or in its parent folder: give the recipe it was trained with (--config RECIPE), or the sampling "
        "explicitly (--frames N or --fps F)")
