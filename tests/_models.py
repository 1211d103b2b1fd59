"""A tiny whole Aurora model and a checkpoint of it shaped like the ones `aurora fit` writes, for the tests of
every folder (tests/_backbones.py has the language backbones alone)."""
from __future__ import annotations

from pathlib import Path

import torch

from aurora.model import AuroraModel

TINY_HPARAMS = {
    "vision": {"name": "siglip", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
               "intermediate_size": 64, "image_size": 32, "patch_size": 8},
    "merge": {"name": "tome", "keep_ratio": 0.25, "order": "size_ascending"},
    "projector": "mlp",
    "rnn": {"name": "rwkv6", "vocab_size": 65536, "d_model": 32, "n_layer": 2, "head_size": 16},
}


def tiny_checkpoint(path: Path, seed: int = 0, max_new_tokens: int = 5, inference: dict | None = None) -> AuroraModel:
    """Write ``path`` (hyperparameters + ``model.*`` weights, random) and return its model; ``inference``: the
    ``aurora_inference`` entry a checkpoint of ``aurora fit`` carries (absent: an old checkpoint)."""
    torch.manual_seed(seed)
    hp = {**TINY_HPARAMS, "max_new_tokens": max_new_tokens}
    model = AuroraModel.from_specs(vision=hp["vision"], merge=hp["merge"], projector=hp["projector"],
                                   rnn=hp["rnn"]).eval()
    blob = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hp}
    if inference is not None:
        from aurora.checkpoint import INFERENCE_KEY

        blob[INFERENCE_KEY] = inference
    torch.save(blob, path)
    return model
