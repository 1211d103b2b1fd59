"""Shared by the API, server and lmms-eval plugin tests: a tiny Lightning-layout checkpoint with its run config,
and a short test video (no `aurora fit` needed: the checkpoint has exactly the layout `aurora fit` writes)."""
from pathlib import Path

import numpy as np
import torch
import yaml

from aurora.data.video import encode_mp4
from _models import TINY_HPARAMS
from aurora.model import AuroraModel

SPECS = TINY_HPARAMS  # the tiny model every folder's tests share (tests/_models.py)


def write_checkpoint(run: Path, seed: int = 0, num_frames: int = 4) -> Path:
    """RUN/checkpoints/last.ckpt (state_dict under ``model.``, hyper_parameters, a ModelCheckpoint score) and
    RUN/config.yaml (a data section), as `aurora fit` leaves them."""
    torch.manual_seed(seed)
    model = AuroraModel.from_specs(**SPECS)
    hp = {**SPECS, "lr": 1e-3, "max_new_tokens": 8, "freeze": None}
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    ckpt = run / "checkpoints/last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hp,
                "epoch": 0, "global_step": 2,
                "callbacks": {"ModelCheckpoint{'monitor': 'val/loss'}": {"monitor": "val/loss",
                                                                         "best_model_score": torch.tensor(3.25)}}},
               ckpt)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"image_size": 32, "num_frames": num_frames,
                                                              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    return ckpt


def video_bytes(seed: int = 0, frames: int = 12) -> bytes:
    return encode_mp4(np.random.RandomState(seed).randint(0, 255, (frames, 32, 32, 3), np.uint8), fps=8)
