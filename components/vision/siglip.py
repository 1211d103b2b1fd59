"""SigLIP vision transformer (transformers' weights) with the merge inside its layers.

The layer loop (proportional attention, the merge between attention and MLP) is :class:`MergingViT`'s; SigLIP
supplies its embeddings (no class token, no pre-norm) and its weights. With ``merge: none`` (or ``keep_ratio: 1``)
the output equals ``SiglipVisionModel(...).hidden_states[feature_layer]``.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from aurora.registry import VISION

from .base import MergingViT, load_local, resolve_feature_layer  # noqa: F401  (resolve_feature_layer: re-exported)


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings (grid_h * grid_w, dim), row-major like the patch grid: half the
    channels encode the row, half the column (as in MAE). A from-scratch encoder starts with positions that are
    as strong as the patch content and linearly decodable, instead of small random vectors."""
    if dim % 4:
        raise ValueError(f"sincos position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def axis(pos: Tensor) -> Tensor:
        angles = pos[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    return torch.cat([axis(rows.flatten()), axis(cols.flatten())], dim=1).float()


@VISION.register("siglip")
class SiglipVision(MergingViT):
    """SigLIP encoder; frames are encoded independently, features from ``feature_layer`` (hidden_states
    semantics: before the post-layernorm, which is never applied).

    Args:
        pretrained: a LOCAL Hugging Face directory (SiglipVisionModel or SiglipModel); else random weights from
            the config arguments below (the tiny defaults are the demo's; SigLIP-L/16-384 is hidden 1024,
            24 layers, 16 heads, MLP 4096, image 384, patch 16).
        merge: a merge spec from the ``MERGE`` registry (``{name: tome, keep_ratio: 0.1}``), or None.
        position_init: for random weights, ``random`` (transformers' default) or ``sincos`` (2-D sine-cosine,
            still trainable): the better start when training from scratch. Ignored with ``pretrained``.
        frozen: no gradients and no stored activations (``requires_grad=False``, forward under ``inference_mode``).
        feature_cache: a directory where a frozen encoder caches its per-sample output (see ``MergingViT``).
        hidden_act, layer_norm_eps: for random weights, the config fields of the same names (transformers'
            SigLIP defaults), so a spec can describe a checkpoint's architecture exactly (AuroraLong's xtuner
            export: :mod:`aurora.tools.xtuner`).
    """

    def __init__(
        self,
        pretrained: str | None = None,
        hidden_size: int = 64,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 128,
        image_size: int = 64,
        patch_size: int = 8,
        feature_layer: int = -2,
        merge: Mapping[str, Any] | str | None = None,
        attn_implementation: str = "sdpa",
        position_init: str = "random",
        frozen: bool = False,
        feature_cache: str | None = None,
        hidden_act: str = "gelu_pytorch_tanh",
        layer_norm_eps: float = 1e-6,
    ) -> None:
        from transformers import SiglipVisionConfig, SiglipVisionModel

        if pretrained is not None:
            hf = load_local(SiglipVisionModel, pretrained, "SigLIP", ("siglip", "siglip_vision_model"), attn_implementation)
        else:
            config = SiglipVisionConfig(
                hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                intermediate_size=intermediate_size, image_size=image_size, patch_size=patch_size,
                hidden_act=hidden_act, layer_norm_eps=layer_norm_eps,
            )
            config._attn_implementation = attn_implementation
            hf = SiglipVisionModel(config)
            if position_init == "sincos":
                grid = image_size // patch_size
                with torch.no_grad():
                    hf_body = getattr(hf, "vision_model", hf)
                    hf_body.embeddings.position_embedding.weight.copy_(sincos_2d(grid, grid, hidden_size))
            elif position_init != "random":
                raise ValueError(f"unknown position_init {position_init!r}; known: random, sincos")
        body = getattr(hf, "vision_model", hf)  # older transformers nest the encoder one level down
        super().__init__(hf.config, body.embeddings, body.encoder.layers, feature_layer=feature_layer, merge=merge, frozen=frozen,
                         feature_cache=feature_cache)
