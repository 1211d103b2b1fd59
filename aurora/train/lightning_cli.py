"""Our LightningCLI: :class:`AuroraCLI` for the video stages, :class:`VisionStageCLI` for the demo's vision stage,
both with the same defaults (config.yaml per run, MLflow in a local sqlite store, atomic checkpoints)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from aurora.data.datamodule import AuroraDataModule
from aurora.train.module import AuroraModule

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"


class RunConfig(SaveConfigCallback):
    """Writes the resolved recipe to ``<default_root_dir>/config.yaml`` and attaches it to the MLflow run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        out = Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / record_name(self.config_filename, str(getattr(stage, "value", stage)))
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)
        for logger in trainer.loggers:
            if hasattr(logger, "log_recipe"):  # aurora.train.tracking.MLFlowLogger: flattened params + the file
                import yaml

                logger.log_recipe(yaml.safe_load(self.parser.dump(self.config, skip_none=False)), path)
            elif hasattr(logger, "experiment") and hasattr(logger, "run_id") and logger.run_id:
                logger.experiment.log_artifact(logger.run_id, str(path))


ARCHITECTURE = ("vision", "merge", "projector", "rnn", "lora")  # model arguments that decide the weights' shapes


class SafeCheckpoints:
    """LightningCLI behaviour for ``--ckpt_path`` (mixed into both of our CLIs).

    * Every subcommand's checkpoint is read weights-only (``weights_only=True`` passed to fit / validate / test /
      predict, on top of :class:`~aurora.train.callbacks.AtomicCheckpointIO` forcing it): a checkpoint, local or
      remote, never runs code, whatever ``trainer.plugins`` a recipe sets.
    * Lightning replaces the recipe's model section with the checkpoint's hyperparameters, so a checkpoint of
      another architecture would train silently with its sizes: an architecture argument that differs between the
      recipe and the checkpoint is an error naming the keys. A checkpoint that cannot be read is a
      CheckpointError naming the file.
    """

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        kwargs["weights_only"] = True
        return kwargs

    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and Path(ckpt_path).is_file():
            import torch

            from aurora.checkpoint import CheckpointError

            try:
                ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
            except Exception as e:
                raise CheckpointError(f"cannot read --ckpt_path {ckpt_path} weights-only ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else ''})") from e
            if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
                raise CheckpointError(f"--ckpt_path {ckpt_path} is not a Lightning checkpoint: no 'state_dict'")
            hparams = ckpt.get("hyper_parameters") or {}
            diff = architecture_diff(_plain(self.config[sub].get("model")), hparams)
            if diff:
                raise CheckpointError(
                    f"--ckpt_path {ckpt_path} holds another architecture than the recipe: " + "; ".join(diff)
                    + " (give the recipe the checkpoint was trained with, or use model.init_from with init_parts)")
        super()._parse_ckpt_path()


def _plain(value: Any) -> Any:
    """A jsonargparse Namespace (and what it holds) as plain dicts and lists, for comparison."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def architecture_diff(recipe: Any, hparams: dict[str, Any], keys: tuple[str, ...] = ARCHITECTURE) -> list[str]:
    """``part.arg: recipe X vs checkpoint Y`` for every architecture argument that differs (a missing entry counts:
    a checkpoint without ``lora`` differs from a recipe with it)."""
    recipe = recipe if isinstance(recipe, dict) else {}
    out: list[str] = []

    def walk(name: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(f"{name}.{k}", a.get(k), b.get(k))
        elif _plain(a) != _plain(b):
            out.append(f"{name}: recipe {a!r} vs checkpoint {b!r}")

    for key in keys:
        if key in hparams or key in recipe:
            walk(key, recipe.get(key), _plain(hparams.get(key)))
    return out




def record_name(filename: str, stage: str) -> str:
    """``config.yaml`` for ``fit``, ``config.<stage>.yaml`` otherwise: ``aurora test --config RUN/config.yaml``
    must not overwrite the training run's record (it would add ``ckpt_path``, ``verbose``... and a later
    ``aurora predict --config`` on it would fail)."""
    if stage == "fit":
        return filename
    stem, dot, ext = filename.rpartition(".")
    return f"{stem}.{stage}.{ext}" if dot else f"{filename}.{stage}"


def checkpoints_follow_root(config: Any) -> None:
    """A ModelCheckpoint whose ``dirpath`` is the recipe's ``<recipe default_root_dir>/checkpoints`` follows a
    changed ``trainer.default_root_dir``: ``--trainer.default_root_dir=runs/tiny`` puts the checkpoints in
    runs/tiny/checkpoints, beside that run's config.yaml, not in the recipe's runs/demo/checkpoints."""
    trainer = config.get("trainer") if hasattr(config, "get") else None
    if trainer is None:
        return
    root = trainer.get("default_root_dir")
    for cb in trainer.get("callbacks") or []:
        cls = cb.get("class_path", "") if hasattr(cb, "get") else ""
        args = cb.get("init_args") if cls.endswith("ModelCheckpoint") else None
        if args is None or root is None:
            continue
        dirpath = args.get("dirpath")
        if dirpath is None or Path(str(dirpath)).name == "checkpoints" and Path(str(dirpath)).parent != Path(root):
            args["dirpath"] = str(Path(root) / "checkpoints")


class _OwnArgv:
    """LightningCLI warns ("args parameter is intended to run from within Python") when both ``args`` and
    sys.argv are given; ``aurora`` passes the command's own arguments as ``args``, so sys.argv is hidden while
    they are parsed."""

    def parse_arguments(self, parser, args) -> None:
        import sys

        saved, sys.argv = sys.argv, sys.argv[:1]
        try:
            super().parse_arguments(parser, args)
        finally:
            sys.argv = saved

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand) if self.subcommand else self.config
        checkpoints_follow_root(cfg)


class _Tracked:
    """What ``aurora`` adds to every trainer (mixed into both of our CLIs): a learning-rate monitor on a fit that has
    none, the progress bar with honest texts (:class:`~aurora.train.callbacks.AuroraProgressBar`) unless the recipe
    sets one or turns bars off, the run link written into checkpoints, and each MLflow run named and tagged for its
    subcommand, linked to the training run of ``--ckpt_path`` (:func:`aurora.train.tracking.tag_runs`)."""

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar

        from aurora.train.callbacks import AuroraProgressBar, LearningRates
        from aurora.train.tracking import RunLink, tag_runs

        have = [*(config.get("callbacks") or []), *callbacks]
        extra = [RunLink()]
        if not any(isinstance(c, LearningRateMonitor) for c in have):
            extra.append(LearningRates())
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in have):
            extra.append(AuroraProgressBar())
        trainer = super()._instantiate_trainer(config, [*callbacks, *extra])
        sub = self.subcommand
        if sub:  # run=False (aurora demo / ablate): the caller names its runs
            tag_runs(trainer, sub, ckpt_path=(self.config.get(sub) or {}).get("ckpt_path"))
        return trainer


class AuroraCLI(_Tracked, SafeCheckpoints, _OwnArgv, LightningCLI):
    """LightningCLI over :class:`AuroraModule` and :class:`AuroraDataModule` with our defaults: MLflow in a local
    sqlite store, a config.yaml per run that a re-run may overwrite, and weights-only checkpoints
    (:class:`SafeCheckpoints`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(AuroraModule, AuroraDataModule, *args, **with_defaults(kwargs, "aurora"))


def with_defaults(kwargs: dict[str, Any], experiment: str) -> dict[str, Any]:
    """Our LightningCLI defaults: the recipe saved as config.yaml (a re-run may overwrite it), MLflow in the local
    sqlite store under ``experiment``, checkpoints written atomically (tmp + rename)."""
    kwargs.setdefault("save_config_callback", RunConfig)
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    kwargs.setdefault(
        "trainer_defaults",
        {
            "logger": {
                "class_path": "aurora.train.tracking.MLFlowLogger",
                "init_args": {"experiment_name": experiment, "tracking_uri": DEFAULT_TRACKING_URI},
            },
            "plugins": [{"class_path": "aurora.train.callbacks.AtomicCheckpointIO"}],
        },
    )
    return kwargs


class VisionStageCLI(_Tracked, SafeCheckpoints, _OwnArgv, LightningCLI):
    """LightningCLI over :class:`aurora.train.vision_stage.VisionStage` and any LightningDataModule of labelled images
    (``data: {class_path: aurora.data.frames.SyntheticFrameData, ...}``), with :class:`AuroraCLI`'s defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import lightning as L

        from aurora.train.vision_stage import VisionStage

        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(VisionStage, L.LightningDataModule, *args, **with_defaults(kwargs, "aurora-vision"))

    def _add_subcommands(self, parser, **kwargs: Any) -> None:
        """Its only subcommand is ``fit``, run as ``aurora pretrain-vision``: the help says so."""
        super()._add_subcommands(parser, **kwargs)
        parser._subcommands_action._name_parser_map["fit"].prog = "aurora pretrain-vision"


def packaged_configs(argv: list[str]) -> list[str]:
    """``--config demo`` (or ``-c demo``, ``--config=recipes/demo.yaml``) -> the packaged recipe's path, as
    ``viz merge`` and ``ask`` already resolve it (:func:`aurora.recipes.resolve`); a missing recipe is one line."""
    from aurora.recipes import resolve

    def checked(name: str) -> str:
        import yaml

        path = resolve(name)
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as e:  # named here: jsonargparse's message does not say which file
            raise ValueError(f"recipe {path} is not valid YAML: {' '.join(str(e).split())}") from e
        return path

    out, it = [], iter(argv)
    for a in it:
        if a in ("--config", "-c"):
            out += [a, checked(next(it, ""))]
        elif a.startswith("--config="):
            out.append("--config=" + checked(a.split("=", 1)[1]))
        else:
            out.append(a)
    return out


def clear_errors(command: str, run) -> int:
    """Run ``run()``; bad input (a checkpoint that cannot be read or does not fit, an unknown part name, a wrong
    value or a missing file) is one line on stderr and exit code 2, not a traceback. ``AURORA_DEBUG=1`` re-raises
    it, traceback and all."""
    import os
    import sys

    from aurora.checkpoint import CheckpointError

    try:
        run()
    except (CheckpointError, KeyError, ValueError, TypeError, FileNotFoundError, OSError) as e:
        if os.environ.get("AURORA_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"aurora {command}: error: {type(e).__name__}: {msg} (AURORA_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 2
    return 0


def fit_main(argv: list[str]) -> int:
    """``aurora fit|validate|test|predict ...``: the Lightning subcommands over the video model."""
    return clear_errors(argv[0] if argv else "fit", lambda: AuroraCLI(args=packaged_configs(argv)))


def pretrain_vision_main(argv: list[str]) -> int:
    """``aurora pretrain-vision --config ...``: the demo's vision stage (the encoder on labelled frames)."""
    return clear_errors("pretrain-vision", lambda: VisionStageCLI(args=["fit", *packaged_configs(argv)]))
