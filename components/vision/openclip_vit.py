"""open_clip and timm ViTs on the shared merging loop (``open_clip``, ``timm`` in the VISION registry).

Both libraries need torchvision, so they live in the ``openclip`` extra (``pip install 'aurora-long[openclip]'``,
CUDA machines; the CPU test suite skips them). The imports happen when an encoder is built; a missing package
raises an ImportError that names the extra.

The layers are the libraries' own modules, run by :class:`MergingViT`'s loop (ToMe between attention and MLP,
proportional attention, size tracking, ``finalize`` and the video step); only the embeddings and the two halves
of a block are written against each library's module structure:

* open_clip ``VisionTransformer`` (``model.visual``): ``conv1`` -> class token + ``positional_embedding``
  -> ``ln_pre`` -> ``transformer.resblocks[i]`` with ``ln_1``, ``attn`` (``nn.MultiheadAttention`` or open_clip's
  ``Attention``: ``in_proj_weight``/``in_proj_bias``, ``out_proj``), ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``;
* timm ``VisionTransformer``: ``patch_embed`` -> ``_pos_embed`` (class/register tokens + position embedding)
  -> ``patch_drop`` -> ``norm_pre`` -> ``blocks[i]`` with ``norm1``, ``attn`` (``qkv``, ``q_norm``, ``k_norm``,
  ``proj``, ``scale``), ``ls1``, ``drop_path1``, ``norm2``, ``mlp``, ``ls2``, ``drop_path2``.

Features are ``hidden_states[feature_layer]`` before the final norm (``ln_post`` / ``norm``, never applied), class
(and register) tokens included, the first being the merge's protected token. The tower is trimmed to the layers
that run (the pooling head and later layers are dropped), so a passed-in model is modified.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.registry import VISION

from .base import MergingViT

EXTRA_HINT = "open_clip/timm need torchvision, CUDA-only extra: pip install 'aurora-long[openclip]'"


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the {module!r} vision backbone needs the {module} package ({e}); {EXTRA_HINT}") from e


def _grid(size: Any) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def interpolate_positions(pos: Tensor, grid: tuple[int, int], new: tuple[int, int], prefix: int) -> Tensor:
    """(prefix + h*w, D) position embeddings resized bicubically to another patch grid (prefix rows kept)."""
    if tuple(grid) == tuple(new):
        return pos
    head, body = pos[:prefix], pos[prefix:]
    body = body.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    body = F.interpolate(body.float(), size=new, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([head, body.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1)])


@VISION.register("open_clip")
class OpenClipVision(MergingViT):
    """An open_clip ViT image tower with the merge inside its layers.

    Args:
        model_name: an open_clip model name (``ViT-L-14``, ``ViT-SO400M-14-SigLIP-384``, ...) built with
            ``open_clip.create_model``; ``pretrained``: a LOCAL checkpoint file or an open_clip tag already in its
            cache (nothing is downloaded in tests). Or ``visual``: an already built ``VisionTransformer``.
        feature_layer, merge, frozen, feature_cache: as :class:`MergingViT`.
    """

    def __init__(self, model_name: str | None = None, pretrained: str | None = None, visual: nn.Module | None = None,
                 feature_layer: int = -2, merge: Mapping[str, Any] | str | None = None, frozen: bool = False,
                 feature_cache: str | None = None) -> None:
        if visual is None:
            if model_name is None:
                raise ValueError("open_clip encoder: give model_name (and pretrained) or a built visual tower")
            open_clip = _require("open_clip")
            visual = open_clip.create_model(model_name, pretrained=pretrained).visual
        for part in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer"):
            if not hasattr(visual, part):
                raise ValueError(f"open_clip encoder: {type(visual).__name__} has no {part!r}: only open_clip's "
                                 "VisionTransformer towers are supported (not timm-backed or ModifiedResNet ones)")
        blocks = visual.transformer.resblocks
        attn = blocks[0].attn
        heads = attn.num_heads
        for block in blocks:
            if getattr(block.attn, "logit_scale", None) is not None or getattr(block.attn, "head_scale", None) is not None:
                raise ValueError("open_clip encoder: scaled-cosine / head-scaled attention is not supported")
            if not isinstance(getattr(block, "ln_attn", nn.Identity()), nn.Identity):
                raise ValueError("open_clip encoder: blocks with ln_attn (scale_attn) are not supported")
        width = visual.conv1.out_channels
        config = SimpleNamespace(hidden_size=width, num_attention_heads=heads, patch_size=visual.conv1.kernel_size[0],
                                 num_hidden_layers=len(blocks), model_name=model_name,
                                 image_size=list(_grid(getattr(visual, "image_size", 0))))
        self._grid = _grid(getattr(visual, "grid_size"))
        super().__init__(config, visual, blocks, feature_layer=feature_layer, merge=merge, frozen=frozen,
                         num_prefix_tokens=1, feature_cache=feature_cache)
        if not getattr(self.merge, "protect_first", True):
            raise ValueError(f"the class token must stay first: the merge must protect it, got {self.merge!r}")
        # the tower keeps only what runs (no unused parameters under DDP): the layers up to feature_layer, no
        # pooling head
        visual.transformer.resblocks = nn.ModuleList(list(self.layers))
        visual.ln_post, visual.proj = nn.Identity(), None
        for part in ("attn_pool", "attn_pool_contrastive"):
            if getattr(visual, part, None) is not None:
                setattr(visual, part, None)

    def embed(self, pixels: Tensor) -> Tensor:
        v = self.embeddings
        x = v.conv1(pixels.to(v.conv1.weight.dtype))  # (F, D, h, w)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + interpolate_positions(v.positional_embedding, self._grid, grid, 1).to(x.dtype)
        return v.ln_pre(x)  # patch_dropout is skipped: it drops tokens at random and is off at inference

    def attention(self, layer: nn.Module, x: Tensor, sizes: Tensor | None) -> tuple[Tensor, Tensor]:
        attn = layer.attn
        f, n, c = x.shape
        h = layer.ln_1(x)
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(f, n, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = self.proportional_attention(q, k, v, sizes, 1.0 / math.sqrt(q.shape[-1]))
        x = x + layer.ls_1(attn.out_proj(out.transpose(1, 2).reshape(f, n, c)))
        return x, k.mean(dim=1)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        return x + layer.ls_2(layer.mlp(layer.ln_2(x)))


@VISION.register("timm")
class TimmVision(MergingViT):
    """A timm ``VisionTransformer`` with the merge inside its blocks.

    Args:
        model_name: a timm model name (``vit_large_patch14_clip_336``, ``vit_so400m_patch14_siglip_384``, ...)
            built with ``timm.create_model(model_name, pretrained=False, checkpoint_path=..., dynamic_img_size=True,
            **model_kwargs)``; ``checkpoint_path``: a LOCAL weights file. Or ``model``: an already built model.
        feature_layer, merge, frozen, feature_cache: as :class:`MergingViT`.
    """

    def __init__(self, model_name: str | None = None, checkpoint_path: str | None = None, model: nn.Module | None = None,
                 model_kwargs: Mapping[str, Any] | None = None, feature_layer: int = -2,
                 merge: Mapping[str, Any] | str | None = None, frozen: bool = False,
                 feature_cache: str | None = None) -> None:
        if model is None:
            if model_name is None:
                raise ValueError("timm encoder: give model_name (and checkpoint_path) or a built model")
            timm = _require("timm")
            model = timm.create_model(model_name, pretrained=False, checkpoint_path=checkpoint_path or "",
                                      num_classes=0, dynamic_img_size=True, **dict(model_kwargs or {}))
        for part in ("patch_embed", "_pos_embed", "blocks", "norm_pre"):
            if not hasattr(model, part):
                raise ValueError(f"timm encoder: {type(model).__name__} has no {part!r}: only timm "
                                 "VisionTransformer models are supported")
        blocks = list(model.blocks)
        if not hasattr(blocks[0].attn, "qkv"):
            raise ValueError("timm encoder: the blocks' attention has no fused qkv projection")
        config = SimpleNamespace(hidden_size=model.embed_dim, num_attention_heads=blocks[0].attn.num_heads,
                                 patch_size=_grid(model.patch_embed.patch_size)[0], num_hidden_layers=len(blocks),
                                 model_name=model_name)
        super().__init__(config, model, blocks, feature_layer=feature_layer, merge=merge, frozen=frozen,
                         num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)), feature_cache=feature_cache)
        if self.num_prefix_tokens and not getattr(self.merge, "protect_first", True):
            raise ValueError(f"the class token must stay first: the merge must protect it, got {self.merge!r}")
        model.blocks = nn.Sequential(*self.layers)  # only what runs: the blocks up to feature_layer, no head
        model.norm, model.head = nn.Identity(), nn.Identity()
        for part in ("fc_norm", "attn_pool"):
            if getattr(model, part, None) is not None:
                setattr(model, part, None if part == "attn_pool" else nn.Identity())

    def embed(self, pixels: Tensor) -> Tensor:
        m = self.embeddings
        x = m.patch_embed(pixels)
        x = m._pos_embed(x)  # prefix tokens + position embedding (interpolated with dynamic_img_size)
        x = m.patch_drop(x) if hasattr(m, "patch_drop") else x
        return m.norm_pre(x)

    def attention(self, layer: nn.Module, x: Tensor, sizes: Tensor | None) -> tuple[Tensor, Tensor]:
        attn = layer.attn
        f, n, c = x.shape
        qkv = attn.qkv(layer.norm1(x)).reshape(f, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        out = self.proportional_attention(q, k, v, sizes, attn.scale)
        out = out.transpose(1, 2).reshape(f, n, c)
        out = attn.proj(getattr(attn, "norm", nn.Identity())(out))
        x = x + layer.drop_path1(layer.ls1(out))
        return x, k.mean(dim=1)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        return x + layer.drop_path2(layer.ls2(layer.mlp(layer.norm2(x))))
