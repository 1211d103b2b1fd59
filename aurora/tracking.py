"""Experiment tracking defaults: MLflow in a local sqlite database (``mlflow ui --backend-store-uri ...``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger as _LightningMLFlowLogger


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///relative/or//absolute/path`` URI, else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


class MLFlowLogger(_LightningMLFlowLogger):
    """Lightning's MLflow logger, defaulting to ``sqlite:///runs/mlflow.db`` (MLflow's file store is gone)
    and creating the database's folder."""

    def __init__(self, experiment_name: str = "aurora", tracking_uri: str = "sqlite:///runs/mlflow.db", **kwargs: Any):
        db = sqlite_path(tracking_uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            kwargs.setdefault("artifact_location", str((db.parent / "mlartifacts").resolve().as_uri()))
        super().__init__(experiment_name=experiment_name, tracking_uri=tracking_uri, **kwargs)
