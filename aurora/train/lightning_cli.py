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
        if ckpt_path and Path(ckpt_path).is_file() and sub in ("validate", "test", "predict"):
            # after Lightning's re-parse of the config with the checkpoint's hyperparameters
            data_from_checkpoint(self.config[sub], ckpt, getattr(self, "_aurora_argv", []), ckpt_path)


def data_from_checkpoint(cfg: Any, ckpt: dict[str, Any], argv: list[str], where: str) -> list[str]:
    """``validate`` / ``test`` / ``predict`` with a checkpoint read the videos as it was trained: the inference
    settings it carries (frames or fps, image size, mean / std, template, tokenizer) replace the recipe's, except
    those given on the command line (``--data.num_frames=16`` evaluates on 16 frames). The replaced keys are said
    in one log line; returns them."""
    import logging

    from aurora.checkpoint import checkpoint_inference

    saved = checkpoint_inference(ckpt)
    data = cfg.get("data") if hasattr(cfg, "get") else None
    if saved is None or data is None:
        return []
    given = {a.split("=", 1)[0][len("--data."):].split(".")[0] for a in argv if a.startswith("--data.")}
    changed = []
    for key, value in saved.items():
        if key in given or key not in data or value is None and key in ("mean", "std", "image_size"):
            continue  # given on the command line, not a setting of this datamodule, or not recorded
        now = _plain(data.get(key))
        if key == "template":  # the recipe's fields over the defaults, as the datamodule builds it
            import dataclasses

            from aurora.data.prompt import PromptTemplate

            now = dataclasses.asdict(PromptTemplate(**(now or {})))
        now = list(now) if isinstance(now, tuple) else now
        want = list(value) if isinstance(value, tuple) else value
        if key in ("mean", "std") and now is not None:
            now = [float(x) for x in now]
        if now != want:
            changed.append(f"{key} {now!r} -> {want!r}")
            data[key] = tuple(want) if key in ("mean", "std") else want
    if changed:
        logging.getLogger(__name__).warning(
            "data settings from the checkpoint %s (as it was trained; --data.KEY=VALUE overrides): %s",
            where, "; ".join(changed))
    return changed


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


SWITCHABLE = ("vision", "merge", "projector", "rnn")


def _given(argv: list[str], prefix: str) -> dict[str, str]:
    """``--prefix.KEY=VALUE`` / ``--prefix.KEY VALUE`` on the command line: {KEY: VALUE} (the last one wins)."""
    out: dict[str, str] = {}
    for i, a in enumerate(argv):
        if a.startswith(f"--{prefix}."):
            key, eq, value = a[len(prefix) + 3:].partition("=")
            if not eq:
                value = argv[i + 1] if i + 1 < len(argv) else ""
            out[key.split(".")[0]] = value
    return out


def _recipe_name(argv: list[str], part: str) -> str | None:
    """The name the ``--config`` recipes (the last that names one) give ``model.<part>``, or None."""
    import yaml

    name = None
    for i, a in enumerate(argv):
        path = a.split("=", 1)[1] if a.startswith("--config=") else argv[i + 1] if a in ("--config", "-c") and \
            i + 1 < len(argv) else None
        if path is None or not Path(path).is_file():
            continue
        try:
            recipe = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError:
            continue
        model = recipe.get("model") if isinstance(recipe, dict) else None
        model = (model.get("init_args") or model) if isinstance(model, dict) and "init_args" in model else model
        spec = model.get(part) if isinstance(model, dict) else None
        if isinstance(spec, dict) and spec.get("name"):
            name = spec["name"]
        elif isinstance(spec, str):
            name = spec
    return name


def switch_parts(model: Any, argv: list[str]) -> str:
    """``--model.rnn.name=mamba`` on a recipe whose rnn arguments are rwkv6's: a part whose name the command line
    switches starts from that part's own defaults, keeping only the recipe's arguments it takes (``d_model``,
    ``n_layer`` ...; not rwkv6's ``head_size``) and every argument the command line gives for it (checked as
    usual: a wrong one is named with the closest). Same for vision, merge and projector. ``model`` (the parsed
    model section) is changed in place; returns the log line saying what was dropped ('' when nothing was
    switched)."""
    from aurora.registry import MERGE, PROJECTOR, RNN, VISION

    if model is None or not hasattr(model, "get"):
        return ""
    if model.get("init_args") is not None:
        model = model["init_args"]
    registries = {"vision": VISION, "merge": MERGE, "projector": PROJECTOR, "rnn": RNN}
    said = []
    for part in SWITCHABLE:
        given = _given(argv, f"model.{part}")
        spec = _plain(model.get(part)) if part in model else None
        if "name" not in given or not isinstance(spec, dict) or spec.get("name") is None:
            continue
        name = spec["name"]
        if _recipe_name(argv, part) in (None, name):
            continue  # not switched: the recipe's arguments stay (a typo among them is named when it is built)
        reg = registries[part]
        if name not in reg:
            continue  # an unknown name: the registry's error (with the known names) comes when it is built
        args = reg.arguments(name)
        takes = None if args is None else {a.name for a in args}
        kept, dropped = {"name": name}, []
        for key, value in spec.items():
            if key == "name":
                continue
            if key in given or takes is None or key in takes:
                kept[key] = value
            else:
                dropped.append(key)
        if dropped:
            model[part] = kept
            said.append(f"model.{part}: {name} takes no {', '.join(sorted(dropped))} (the recipe's arguments for "
                        f"another {part}); dropped, {name}'s own defaults apply")
    return "; ".join(said)


SPLIT_OF = {"fit": "train", "validate": "val", "test": "test", "predict": "test"}
SPECIAL_CKPT = ("last", "best", "hpc", "registry")  # --ckpt_path values Lightning resolves itself


def _local(path: str) -> bool:
    return "://" not in path and not path.startswith("pipe:")


def check_paths(cfg: Any, subcommand: str) -> None:
    """Every path the run needs, checked before any model is built (one line naming the key and the path, instead
    of a failure minutes later or deep in a traceback): ``--ckpt_path``, ``model.init_from``, a converted backbone
    (``model.rnn.checkpoint`` and its .json), a local ``model.vision.pretrained`` folder, and the data: the
    ``data.*_shards`` of this subcommand's split, or ``data.data_dir`` holding a dataset (unless
    ``data.synthetic`` writes one there)."""
    get = (lambda d, k: d.get(k) if hasattr(d, "get") else None)  # noqa: E731
    ckpt = get(cfg, "ckpt_path")
    if ckpt and str(ckpt) not in SPECIAL_CKPT and _local(str(ckpt)) and not Path(str(ckpt)).is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt} not found" + (" (it is a directory)" if Path(str(ckpt)).is_dir()
                                                                    else ""))
    model = get(cfg, "model")
    if model is not None and get(model, "init_args") is not None:
        model = get(model, "init_args")
    init_from = get(model, "init_from") if model is not None else None
    if init_from and _local(str(init_from)) and not Path(str(init_from)).exists():
        raise FileNotFoundError(f"model.init_from {init_from} not found: run the stage that writes it first (the "
                                "recipe's header names it), or set --model.init_from=null")
    rnn = _plain(get(model, "rnn")) if model is not None else None
    if isinstance(rnn, dict) and rnn.get("checkpoint"):
        path = Path(str(rnn["checkpoint"]))
        if not path.is_file():
            raise FileNotFoundError(f"model.rnn.checkpoint {path} not found (a file `aurora convert` writes)")
        if not path.with_suffix(".json").is_file():
            raise FileNotFoundError(f"model.rnn.checkpoint {path}: its {path.with_suffix('.json').name} (the "
                                    "constructor arguments aurora convert writes beside it) is missing")
    vision = _plain(get(model, "vision")) if model is not None else None
    pretrained = vision.get("pretrained") if isinstance(vision, dict) else None
    if pretrained and not Path(str(pretrained)).exists():
        raise FileNotFoundError(f"model.vision.pretrained {pretrained} not found (a local Hugging Face folder; "
                                "nothing is downloaded)")
    data = get(cfg, "data")
    if data is None or get(data, "init_args") is not None or not hasattr(data, "get") or "data_dir" not in data:
        return  # not an AuroraDataModule section (the vision stage's data): its own checks apply
    split = SPLIT_OF.get(subcommand, "train")
    shards = _plain(get(data, f"{split}_shards"))
    if shards:
        from aurora.data.shards import expand_shards

        try:
            expand_shards(shards)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"data.{split}_shards: {e}") from None
        return
    data_dir = get(data, "data_dir")
    if data_dir is None:
        raise FileNotFoundError(f"no data for {subcommand}: give data.data_dir or data.{split}_shards")
    if get(data, "synthetic") is not None:
        return  # written there on first use (prepare_data)
    manifest = Path(str(data_dir)) / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"data.data_dir {data_dir} holds no dataset ({'no manifest.json' if Path(str(data_dir)).is_dir() else 'no such folder'}); "
            f"write one with `aurora data synthetic --out {data_dir}` or `aurora data convert`, or give "
            f"data.{split}_shards")


class _OwnArgv:
    """LightningCLI warns ("args parameter is intended to run from within Python") when both ``args`` and
    sys.argv are given; ``aurora`` passes the command's own arguments as ``args``, so sys.argv is hidden while
    they are parsed."""

    def parse_arguments(self, parser, args) -> None:
        import sys

        saved, sys.argv = sys.argv, sys.argv[:1]
        self._aurora_argv = [str(a) for a in (args or [])]
        try:
            super().parse_arguments(parser, args)
        finally:
            sys.argv = saved
        sub = self.config.get("subcommand")
        cfg = self.config.get(sub) if sub else self.config
        self._switched = switch_parts(cfg.get("model") if hasattr(cfg, "get") else None, self._aurora_argv)

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand) if self.subcommand else self.config
        checkpoints_follow_root(cfg)
        check_paths(cfg, self.subcommand or "fit")
        switch_report = getattr(self, "_switched", None)
        if switch_report:
            import logging

            logging.getLogger(__name__).warning("%s", switch_report)


class _Tracked:
    """What ``aurora`` adds to every trainer (mixed into both of our CLIs): a learning-rate monitor on a fit that has
    none, the progress bar with honest texts (:class:`~aurora.train.callbacks.AuroraProgressBar`) unless the recipe
    sets one or turns bars off, the run link written into checkpoints, and each MLflow run named and tagged for its
    subcommand, linked to the training run of ``--ckpt_path`` (:func:`aurora.train.tracking.tag_runs`).

    A CLI made with ``run=False`` has no subcommand: its caller names the stage (``stage=``, and ``run_name=`` for
    the ``<run>`` part of the name), as ``aurora demo`` does for its two stages; without one its runs stay
    untagged (``aurora ablate`` tags its cells itself)."""

    _aurora_stage: str | None = None
    _aurora_run: str | None = None

    def _take_stage(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        self._aurora_stage, self._aurora_run = kwargs.pop("stage", None), kwargs.pop("run_name", None)
        return kwargs

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
        stage = self._aurora_stage or sub
        if stage:
            ckpt = (self.config.get(sub) or {}).get("ckpt_path") if sub else None
            tag_runs(trainer, stage, ckpt_path=ckpt, run=self._aurora_run)
        return trainer


class AuroraCLI(_Tracked, SafeCheckpoints, _OwnArgv, LightningCLI):
    """LightningCLI over :class:`AuroraModule` and :class:`AuroraDataModule` with our defaults: MLflow in a local
    sqlite store, a config.yaml per run that a re-run may overwrite, and weights-only checkpoints
    (:class:`SafeCheckpoints`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs = self._take_stage(kwargs)
        super().__init__(AuroraModule, AuroraDataModule, *args, **with_defaults(kwargs, "aurora"))


def with_defaults(kwargs: dict[str, Any], experiment: str) -> dict[str, Any]:
    """Our LightningCLI defaults: the recipe saved as config.yaml (a re-run may overwrite it), MLflow in the local
    sqlite store under ``experiment``, checkpoints written atomically (tmp + rename)."""
    kwargs.setdefault("parser_kwargs", {"prog": "aurora"})  # not sys.argv[0] (cli.py, __main__.py under pytest)
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
        kwargs = self._take_stage(kwargs)
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
