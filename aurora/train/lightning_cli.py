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
        path = out / self.config_filename
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)
        for logger in trainer.loggers:
            if hasattr(logger, "log_recipe"):  # aurora.train.tracking.MLFlowLogger: flattened params + the file
                import yaml

                logger.log_recipe(yaml.safe_load(self.parser.dump(self.config, skip_none=False)), path)
            elif hasattr(logger, "experiment") and hasattr(logger, "run_id") and logger.run_id:
                logger.experiment.log_artifact(logger.run_id, str(path))


class AuroraCLI(LightningCLI):
    """LightningCLI over :class:`AuroraModule` and :class:`AuroraDataModule` with our defaults: MLflow in a local
    sqlite store, and a config.yaml per run that a re-run may overwrite."""

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


class VisionStageCLI(LightningCLI):
    """LightningCLI over :class:`aurora.train.vision_stage.VisionStage` and any LightningDataModule of labelled images
    (``data: {class_path: aurora.data.frames.SyntheticFrameData, ...}``), with :class:`AuroraCLI`'s defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import lightning as L

        from aurora.train.vision_stage import VisionStage

        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(VisionStage, L.LightningDataModule, *args, **with_defaults(kwargs, "aurora-vision"))


def fit_main(argv: list[str]) -> int:
    """``aurora fit|validate|test|predict ...``: the Lightning subcommands over the video model."""
    AuroraCLI(args=argv)
    return 0


def pretrain_vision_main(argv: list[str]) -> int:
    """``aurora pretrain-vision --config ...``: the demo's vision stage (the encoder on labelled frames)."""
    VisionStageCLI(args=["fit", *argv])
    return 0
