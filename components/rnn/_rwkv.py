"""What the RWKV backbones (``rwkv6``, ``rwkv7``) share: the embedding / head / state layer and checkpoint reading."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from aurora.types import RecurrentLM

LayerState = tuple[Tensor, Tensor, Tensor]


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


def _read_weights(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return sd.get("state_dict", sd) if isinstance(sd.get("state_dict"), dict) else sd


def _read_hf_weights(directory: Path) -> dict[str, Tensor]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (directory / single).is_file():
            return _read_weights(directory / single)
        if (directory / index).is_file():
            shards = sorted(set(json.loads((directory / index).read_text())["weight_map"].values()))
            sd: dict[str, Tensor] = {}
            for shard in shards:
                sd.update(_read_weights(directory / shard))
            return sd
    raise FileNotFoundError(f"{directory} has no model.safetensors / pytorch_model.bin (or their index files)")
