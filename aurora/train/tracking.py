"""Experiment tracking: MLflow, by default in a local sqlite database (``mlflow ui --backend-store-uri ...``), or any
MLflow server (``tracking_uri: http://host:5000``).

What a run holds: the resolved recipe as flattened parameters (``model/rnn/name``, ``trainer/max_steps``...), once
(not again as the module's bare ``lr``...), and as the ``config.yaml`` artifact, the metrics Lightning logs, and at
the end ``plots/loss_curve.png``. Artifacts go to ``mlartifacts/`` beside a sqlite database, never ``./mlruns``.

Every ``aurora fit|validate|test|predict`` makes its own run, named ``<run>-<subcommand>`` (``<run>``: the
``trainer.default_root_dir``'s name) and tagged ``aurora.stage`` = the subcommand (:func:`tag_runs`). A fit writes
its run's id into its checkpoints (:class:`RunLink`, key ``aurora_mlflow``); a test / predict / validate of such a
checkpoint is tagged ``aurora.train_run_id`` with it and, in the same store, ``mlflow.parentRunId`` too, so the
MLflow UI shows it nested under the training run.
"""
from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger as _LightningMLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

CURVES = ("train/loss", "val/loss")  # what the loss-curve plot shows
STAGE_TAG = "aurora.stage"  # fit, validate, test, predict (or what a tool names its runs: ablate-cell ...)
RUN_TAG = "aurora.run"  # the run folder's name
TRAIN_RUN_TAG = "aurora.train_run_id"  # the training run a checkpoint came from
RESUMED_TAG = "aurora.resumed_from_run_id"  # a fit resumed from a checkpoint of another run
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting (the UI shows the run under its parent)
CKPT_KEY = "aurora_mlflow"  # in a checkpoint: {tracking_uri, experiment_id, run_id} of the run that wrote it


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///relative/or//absolute/path`` URI, else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a/b/c": value}``; lists of mappings are indexed (``trainer/callbacks/0/class_path``)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                out.update(flatten(v, f"{name}/{i}/"))
        else:
            out[name] = value
    return out


def plot_curves(history: Mapping[str, list[tuple[int, float]]], path: str | Path) -> Path:
    """A PNG of the logged loss curves (step on x), one line per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in sorted(history.items()):
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=name, marker="o" if len(points) < 20 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class MLFlowLogger(_LightningMLFlowLogger):
    """Lightning's MLflow logger, defaulting to ``sqlite:///runs/mlflow.db`` (MLflow's file store is gone) and
    creating the database's folder; it also logs the resolved recipe (:meth:`log_recipe`) and, when the run ends,
    a loss-curve plot as an artifact."""

    def __init__(self, experiment_name: str = "aurora", tracking_uri: str = "sqlite:///runs/mlflow.db", **kwargs: Any):
        db = sqlite_path(tracking_uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            # LightningCLI passes every argument, so a recipe without one gives artifact_location=None explicitly:
            # None must mean "beside the database" too, else MLflow puts the artifacts in ./mlruns of the cwd
            if kwargs.get("artifact_location") is None:
                kwargs["artifact_location"] = str((db.parent / "mlartifacts").resolve().as_uri())
        super().__init__(experiment_name=experiment_name, tracking_uri=tracking_uri, **kwargs)
        self._curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._recipe_logged = False

    @rank_zero_only
    def log_recipe(self, config: Mapping[str, Any], path: str | Path | None = None) -> None:
        """The resolved recipe as parameters (flattened, ``model/...``, ``data/...``, ``trainer/...``) and the
        file it was saved to as an artifact. Logging the same recipe again is a no-op (MLflow parameters are
        write-once)."""
        super().log_hyperparams(flatten(config))
        self._recipe_logged = True
        if path is not None:
            self.experiment.log_artifact(self.run_id, str(path))

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Lightning logs the module's and the datamodule's arguments (``lr``, ``batch_size``...) after the CLI has
        logged the recipe, which holds them all as ``model/lr``, ``data/batch_size``: then they are not logged a
        second time under bare names. Without a recipe (a Trainer built in Python) they are logged as usual."""
        if not self._recipe_logged:
            super().log_hyperparams(params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        for name in CURVES:
            if name in metrics:
                self._curves[name].append((step or 0, float(metrics[name])))

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._initialized and any(self._curves.values()):
            with tempfile.TemporaryDirectory() as tmp:
                png = plot_curves(self._curves, Path(tmp) / "loss_curve.png")
                self.experiment.log_artifact(self.run_id, str(png), artifact_path="plots")
        super().finalize(status)


# ------------------------------------------------------------------------------------------------ run identity


def mlflow_loggers(trainer: Any) -> list[_LightningMLFlowLogger]:
    """The trainer's MLflow loggers (ours or Lightning's own)."""
    return [lg for lg in getattr(trainer, "loggers", []) or [] if isinstance(lg, _LightningMLFlowLogger)]


def canonical_uri(uri: str) -> str:
    """``sqlite:///relative.db`` -> the absolute path's URI, so two runs started in different folders compare."""
    db = sqlite_path(uri)
    return f"sqlite:///{db.resolve()}" if db is not None else uri.rstrip("/")


def run_link(logger: _LightningMLFlowLogger) -> dict[str, str] | None:
    """``{tracking_uri, experiment_id, run_id}`` of the logger's run, once it has one (None before)."""
    if not logger._initialized or logger._run_id is None:
        return None
    return {"tracking_uri": canonical_uri(logger._tracking_uri), "experiment_id": str(logger._experiment_id),
            "run_id": str(logger._run_id)}


def training_run_of(ckpt_path: str | Path | None) -> dict[str, str] | None:
    """The run link a fit wrote into a local checkpoint (:class:`RunLink`), else None (no file, an older
    checkpoint, a URL). The file is memory-mapped and read weights-only: the tensors are not read."""
    if not ckpt_path or "://" in str(ckpt_path) or not Path(ckpt_path).is_file():
        return None
    import torch

    try:
        ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)
    except Exception:  # not a zip checkpoint (mmap needs one), or unreadable: the subcommand itself says so
        return None
    link = ckpt.get(CKPT_KEY) if isinstance(ckpt, dict) else None
    return {k: str(v) for k, v in link.items()} if isinstance(link, dict) and link.get("run_id") else None


def set_identity(logger: _LightningMLFlowLogger, name: str, tags: Mapping[str, str]) -> None:
    """Give a logger's run ``name`` (unless the recipe named it) and ``tags``; before the run exists they go into
    its creation, after, they are set on it."""
    if logger._initialized:
        for k, v in tags.items():
            logger.experiment.set_tag(logger.run_id, k, v)
        return
    if logger._run_name is None:
        logger._run_name = name
    logger.tags = {**(logger.tags or {}), **tags}


def tag_runs(trainer: Any, stage: str, ckpt_path: str | Path | None = None, run: str | None = None,
             parent: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """Name and tag the trainer's MLflow runs for ``stage``: ``<run>-<stage>``, ``aurora.stage``, ``aurora.run``;
    linked to the training run written in ``ckpt_path`` (``aurora.train_run_id``, and ``mlflow.parentRunId``
    when it is in the same store; a resumed fit gets ``aurora.resumed_from_run_id`` instead), or to ``parent``
    (``{tracking_uri, run_id}``: a grid's run). Returns the checkpoint's link, if any."""
    run = run or Path(str(trainer.default_root_dir)).name
    link = training_run_of(ckpt_path) if ckpt_path else None
    for lg in mlflow_loggers(trainer):
        tags = {STAGE_TAG: stage, RUN_TAG: run}
        same_store = canonical_uri(lg._tracking_uri)
        if link is not None:
            tags[RESUMED_TAG if stage == "fit" else TRAIN_RUN_TAG] = link["run_id"]
            if stage != "fit" and link.get("tracking_uri") == same_store:
                tags[PARENT_TAG] = link["run_id"]
        if parent is not None and canonical_uri(parent["tracking_uri"]) == same_store:
            tags[PARENT_TAG] = parent["run_id"]
        set_identity(lg, f"{run}-{stage}", tags)
    return link



class RunLink(Callback):
    """Writes the MLflow run of the fit into every checkpoint it saves (``checkpoint["aurora_mlflow"]``), so a later
    ``aurora test --ckpt_path`` can tag its own run with the training run (:func:`tag_runs`)."""

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        for lg in mlflow_loggers(trainer):
            link = run_link(lg)
            if link is not None:
                checkpoint[CKPT_KEY] = link
                return
