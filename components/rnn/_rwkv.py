"""What the RWKV backbones (``rwkv6``, ``rwkv7``) share: the embedding / head / state layer and the mapping
between fla-hub's Hugging Face names and BlinkDL's official ones (each backbone keeps only its name tables);
checkpoint reading, shared with the other backbones, is in :mod:`aurora.components.rnn._hf`."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from aurora.components.rnn._hf import checkpoint_folder, read_config, read_weights
from aurora.types import RecurrentLM

LayerState = tuple[Tensor, Tensor, Tensor]

# How a tensor changes between fla's and the official layout: "same"; "t" transposed (fla's LoRA linears hold
# the transposes of the official matrices); "row" a (C,) vector in fla, a (1, 1, C) one officially.
TO_OFFICIAL: dict[str, Callable[[Tensor], Tensor]] = {
    "same": lambda x: x, "t": lambda x: x.t().contiguous(), "row": lambda x: x.reshape(1, 1, -1)}
TO_FLA: dict[str, Callable[[Tensor], Tensor]] = {
    "same": lambda x: x, "t": lambda x: x.t().contiguous(), "row": lambda x: x.reshape(-1)}
FLA_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")


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


def fla_to_official_names(state_dict: Mapping[str, Tensor], layer: Mapping[str, tuple[str, str]],
                          top: Mapping[str, str], special: Mapping[str, Callable[[str, Tensor], dict[str, Tensor]]]
                          | None = None, tie_word_embeddings: bool = False) -> dict[str, Tensor]:
    """fla-hub weights under the official names and shapes, by a backbone's tables: ``top`` (fla name -> official
    name, whole keys), ``layer`` (fla name after ``model.layers.{i}.`` -> (official name after ``blocks.{i}.``, how
    the tensor changes: a key of :data:`TO_OFFICIAL`)) and ``special`` (fla name after ``model.layers.{i}.`` ->
    ``fn(i, tensor)`` returning the official entries, for tensors fla stacks). Keys of none of them are kept as
    they are, so loading then names them as unexpected. ``tie_word_embeddings``: a missing ``head.weight`` is the
    embedding."""
    special = special or {}
    out: dict[str, Tensor] = {}
    for key, x in state_dict.items():
        m = FLA_LAYER_KEY.fullmatch(key)
        if key in top:
            out[top[key]] = x
        elif m and m.group(2) in special:
            out.update(special[m.group(2)](m.group(1), x))
        elif m and m.group(2) in layer:
            name, how = layer[m.group(2)]
            out[f"blocks.{m.group(1)}.{name}"] = TO_OFFICIAL[how](x)
        else:
            out[key] = x
    if "head.weight" not in out and tie_word_embeddings and "emb.weight" in out:
        out["head.weight"] = out["emb.weight"]
    return out


def official_to_fla_names(state_dict: Mapping[str, Tensor], layer: Mapping[str, tuple[str, str]],
                          top: Mapping[str, str], strict: bool = True) -> dict[str, Tensor]:
    """The inverse of :func:`fla_to_official_names` by the same tables: official (detached) tensors -> copies
    under fla's names and shapes. ``strict``: a ``blocks.{i}.`` key the tables do not name is a KeyError; else it
    is left out (for the caller to map, as RWKV-6 does with its stacked token-shift tensors)."""
    back = {official: (fla, how) for fla, (official, how) in layer.items()}
    top_back = {official: fla for fla, official in top.items()}
    out: dict[str, Tensor] = {}
    for key, x in state_dict.items():
        if key in top_back:
            out[top_back[key]] = x.clone()
            continue
        _, i, rest = key.split(".", 2)
        if rest in back or strict:
            fla, how = back[rest]
            out[f"model.layers.{i}.{fla}"] = TO_FLA[how](x).clone()
    return out


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

