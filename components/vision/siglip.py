"""SigLIP vision transformer (transformers' weights) with the merge inside its layers.

We run the layers ourselves, on the Hugging Face modules' own weights, because the merge has to sit between
attention and MLP and attention must be proportional (+ log size on the logits). With ``merge: none`` (or
``keep_ratio: 1``) the output equals ``SiglipVisionModel(...).hidden_states[feature_layer]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.registry import MERGE, VISION
from aurora.types import VisionEncoder, VisualTokens


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


def resolve_feature_layer(feature_layer: int, num_layers: int) -> int:
    """Number of layers to run so the output is ``hidden_states[feature_layer]`` (0 = the embeddings,
    -1 = the last layer's output, -2 = the paper's choice: the last layer dropped)."""
    k = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
    if not 0 <= k <= num_layers:
        raise ValueError(f"feature_layer {feature_layer} is out of range for a {num_layers}-layer encoder")
    return k


@VISION.register("siglip")
class SiglipVision(VisionEncoder):
    """SigLIP encoder; frames are encoded independently, features from ``feature_layer`` (hidden_states
    semantics: before the post-layernorm, which is never applied).

    Args:
        pretrained: a LOCAL Hugging Face directory (SiglipVisionModel or SiglipModel); else random weights from
            the config arguments below (the tiny defaults are the demo's; SigLIP-L/16-384 is hidden 1024,
            24 layers, 16 heads, MLP 4096, image 384, patch 16).
        merge: a merge spec from the ``MERGE`` registry (``{name: tome, keep_ratio: 0.1}``), or None.
        position_init: for random weights, ``random`` (transformers' default) or ``sincos`` (2-D sine-cosine,
            still trainable): the better start when training from scratch. Ignored with ``pretrained``.
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
    ) -> None:
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        if pretrained is not None:
            if not Path(pretrained).is_dir():
                raise FileNotFoundError(f"SigLIP checkpoint directory not found: {pretrained}")
            hf = SiglipVisionModel.from_pretrained(pretrained, local_files_only=True, attn_implementation=attn_implementation)
        else:
            config = SiglipVisionConfig(
                hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                intermediate_size=intermediate_size, image_size=image_size, patch_size=patch_size,
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
        self.config = hf.config
        body = getattr(hf, "vision_model", hf)  # older transformers nest the encoder one level down
        self.embeddings = body.embeddings
        depth = resolve_feature_layer(feature_layer, self.config.num_hidden_layers)
        # only the layers that produce the features are kept: no unused parameters (DDP), less memory
        self.layers = nn.ModuleList(list(body.encoder.layers)[:depth])
        self.out_dim = self.config.hidden_size
        self.patch_size = self.config.patch_size
        self.num_heads = self.config.num_attention_heads
        self.merge = MERGE.build(merge or "none")

    def num_patches(self, height: int, width: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size)

    def tokens_per_frame(self, height: int, width: int) -> int:
        return self.merge.tokens_per_frame(self.num_patches(height, width), len(self.layers))

    def forward(self, pixels: Tensor) -> VisualTokens:
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (frames, 3, height, width), got {tuple(pixels.shape)}")
        x = self.embeddings(pixels, interpolate_pos_encoding=True)  # bicubic for other grids; no new parameters
        f, n, _ = x.shape
        sizes = torch.ones(f, n, device=x.device, dtype=torch.float32)
        source = None
        if getattr(self.merge, "trace_source", False):
            source = torch.eye(n, device=x.device, dtype=torch.float32).expand(f, n, n).contiguous()
        merged = False
        for layer, r in zip(self.layers, self.merge.schedule(n, len(self.layers))):
            x, keys = self._attention(layer, x, sizes if merged else None)
            if r > 0:
                x, sizes, source = self.merge(x, keys, sizes, source, r)
                merged = True
            x = x + layer.mlp(layer.layer_norm2(x))
        return VisualTokens(tokens=x, sizes=sizes, source=source)

    def _attention(self, layer: nn.Module, x: Tensor, sizes: Tensor | None) -> tuple[Tensor, Tensor]:
        """Residual self-attention of one layer; proportional (+ log size) once tokens have been merged.
        Also returns the keys averaged over heads: the merge's similarity metric."""
        attn = layer.self_attn
        f, n, c = x.shape
        h = layer.layer_norm1(x)
        q, k, v = (proj(h).view(f, n, self.num_heads, -1).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        bias = None if sizes is None else sizes.log().to(q.dtype)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
        x = x + attn.out_proj(out.transpose(1, 2).reshape(f, n, c))
        return x, k.mean(dim=1)
