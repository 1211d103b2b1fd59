"""What the RWKV backbones (``rwkv6``, ``rwkv7``) share: the embedding / head / state layer (checkpoint
reading, shared with the other backbones, is in :mod:`aurora.components.rnn._hf`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aurora.components.rnn._hf import checkpoint_folder, read_config, read_weights
from aurora.types import RecurrentLM

LayerState = tuple[Tensor, Tensor, Tensor]


def is_fla(state_dict: dict[str, Any]) -> bool:
    """fla-hub's Hugging Face layout (``model.layers.N...``) rather than BlinkDL's official names."""
    return any(k.startswith(("model.layers.", "model.embeddings.")) for k in state_dict)


def read_rwkv_checkpoint(path: str | Path, what: str) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(state dict, config.json or {}, is fla's layout) of a local RWKV checkpoint: an official ``.pth`` (no
    config) or fla-hub's files (a directory, or a weights file beside its ``config.json``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} checkpoint at {path}")
    state_dict = read_weights(path)
    fla = is_fla(state_dict)
    config = read_config(checkpoint_folder(path)) if path.is_dir() or fla else {}
    return state_dict, config, fla


class RWKVLanguageModel(RecurrentLM):
    """What RWKV-6 and RWKV-7 share: ``emb`` / ``ln_out`` / ``head`` with the official initialisation, and a
    per-layer state ``(att_shift (B, C), wkv (B, H, N, N), ffn_shift (B, C))``."""

    emb: nn.Embedding
    head: nn.Linear
    n_head: int

    @torch.no_grad()
    def init_embedding_and_head(self) -> None:
        """Official RWKV-LM: a tiny uniform embedding (ln0 normalises it) and an orthogonal head."""
        vocab_size, d_model = self.head.weight.shape
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
        gain = 0.5 * (vocab_size / d_model) ** 0.5 if vocab_size > d_model else 0.5
        nn.init.orthogonal_(self.head.weight, gain=gain)

    def embed(self, ids: Tensor) -> Tensor:
        return self.emb(ids)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.head(hidden)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> list[LayerState]:
        c, h, n = self.d_model, self.n_head, self.d_model // self.n_head
        wkv_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return [
            (torch.zeros(batch_size, c, device=device, dtype=dtype),
             torch.zeros(batch_size, h, n, n, device=device, dtype=wkv_dtype),
             torch.zeros(batch_size, c, device=device, dtype=dtype))
            for _ in range(self.n_layer)
        ]

