"""Experiment tracking: MLflow, by default in a local sqlite database (``mlflow ui --backend-store-uri ...``), or any
MLflow server (``tracking_uri: http://host:5000``).

What a run holds: the resolved recipe as flattened parameters (``model/rnn/name``, ``trainer/max_steps``...) and as
the ``config.yaml`` artifact, the metrics Lightning logs, and at the end ``plots/loss_curve.png``.
"""
from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

from lightning.pytorch.loggers import MLFlowLogger as _LightningMLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

CURVES = ("train/loss", "val/loss")  # what the loss-curve plot shows


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
            kwargs.setdefault("artifact_location", str((db.parent / "mlartifacts").resolve().as_uri()))
        super().__init__(experiment_name=experiment_name, tracking_uri=tracking_uri, **kwargs)
        self._curves: dict[str, list[tuple[int, float]]] = defaultdict(list)

    @rank_zero_only
    def log_recipe(self, config: Mapping[str, Any], path: str | Path | None = None) -> None:
        """The resolved recipe as parameters (flattened, ``model/...``, ``data/...``, ``trainer/...``) and the
        file it was saved to as an artifact. Logging the same recipe again is a no-op (MLflow parameters are
        write-once)."""
        self.log_hyperparams(flatten(config))
        if path is not None:
            self.experiment.log_artifact(self.run_id, str(path))

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
