"""The layer loop shared by the ViT encoders (SigLIP, CLIP) that run Hugging Face weights with the merge inside.

We run the layers ourselves, on the Hugging Face modules' own weights, because the merge has to sit between
attention and MLP and attention must be proportional (+ log size on the logits):

    x = embeddings(pixels)  [-> pre-norm]                      # the encoder's own part
    for layer, r in zip(layers, merge.schedule(n, L)):
        x = x + attention(norm1(x), + log(sizes))               # keys averaged over heads: the merge metric
        x, sizes, source = merge(x, keys, sizes, source, r)
        x = x + mlp(norm2(x))
    x, sizes, source = merge.finalize(x, keys, sizes, source)   # post-encoder hook of the merge, if it has one

Each encoder supplies only its embeddings (and pre-norm) and how its weights are loaded; with ``merge: none`` (or
``keep_ratio: 1``) the output equals the Hugging Face model's ``hidden_states[feature_layer]``. Encoders whose
layers are laid out differently (open_clip, timm) override :meth:`MergingViT.embed`, :meth:`MergingViT.attention`
and :meth:`MergingViT.mlp` and keep the loop.

:meth:`MergingViT.encode_videos` is the entry for whole videos (B, F, 3, H, W): the frames through the loop
(or from the feature cache, for a frozen encoder), then the merge's video step (``temporal``, ``size_global``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from aurora.registry import MERGE
from aurora.types import VisionEncoder, VisualTokens

from .cache import FeatureCache, config_hash, pixels_key, weights_fingerprint


def resolve_feature_layer(feature_layer: int, num_layers: int) -> int:
    """Number of layers to run so the output is ``hidden_states[feature_layer]`` (0 = the embeddings,
    -1 = the last layer's output, -2 = the paper's choice: the last layer dropped)."""
    k = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
    if not 0 <= k <= num_layers:
        raise ValueError(f"feature_layer {feature_layer} is out of range for a {num_layers}-layer encoder")
    return k


def load_local(model_cls: Any, path: str, family: str, model_types: Iterable[str], attn_implementation: str):
    """``model_cls.from_pretrained`` from a LOCAL directory only, with clear errors: a missing directory or
    config names the path, a directory of another model family names its ``model_type``, weights the encoder
    needs but the checkpoint lacks (or has with another shape) are listed. Weights of other towers (a full
    CLIP/SigLIP model's text tower, projection heads) are expected and ignored quietly."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{family} checkpoint directory not found: {path}")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{family} checkpoint directory {path} has no config.json")
    model_type = json.loads(config_file.read_text()).get("model_type")
    model_types = tuple(model_types)
    if model_type not in model_types:
        raise ValueError(
            f"{path} holds a {model_type!r} model, not a {family} one (expected model_type {' or '.join(model_types)})"
        )
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists every text-tower key of a full model; we check below
    try:
        hf, info = model_cls.from_pretrained(
            str(root), local_files_only=True, attn_implementation=attn_implementation,
            output_loading_info=True, ignore_mismatched_sizes=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(f"{family} checkpoint {path} lacks {len(missing)} weight(s) the encoder needs: {shown}")
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        shown = ", ".join(f"{k} {tuple(a)} vs {tuple(b)} expected" for k, a, b in mismatched[:8])
        raise ValueError(f"{family} checkpoint {path} has weights of the wrong shape: {shown}")
    return hf


class MergingViT(VisionEncoder):
    """A pre-norm ViT run layer by layer with the merge inside every layer; frames are encoded independently.

    Args:
        config: the Hugging Face vision config (hidden_size, num_attention_heads, patch_size, num_hidden_layers).
        embeddings: the Hugging Face embeddings module, called as ``embeddings(pixels, interpolate_pos_encoding=True)``
            (bicubic position interpolation for other grids; no new parameters).
        layers: all encoder layers (``layer_norm1``, ``self_attn`` with q/k/v/out_proj and ``scale``,
            ``layer_norm2``, ``mlp``); only the first ones that produce ``feature_layer`` are kept, so no
            parameter goes unused (DDP) and no memory is spent on dropped layers.
        feature_layer: hidden_states semantics (0 = after the embeddings and pre-norm, -1 = last layer,
            -2 = last layer dropped).
        merge: a merge spec from the ``MERGE`` registry, or None.
        frozen: parameters get ``requires_grad=False`` and the forward runs under ``torch.inference_mode()``
            (outputs cloned out of it, so the projector can still train on them): no activations stored. An
            encoder whose parameters all have ``requires_grad=False`` (``freeze: [vision]``) runs the same way.
        feature_cache: a directory: a frozen encoder keeps its per-sample output there
            (:mod:`aurora.components.vision.cache`) and reads it back instead of running again.
        pre_norm: a norm applied to the embeddings before the first layer (CLIP's ``pre_layrnorm``), or None.
        num_prefix_tokens: tokens before the patches (CLIP's class token); they take part in merging like any
            token, the first one being the merge's protected token.
    """

    def __init__(
        self,
        config: Any,
        embeddings: nn.Module,
        layers: Iterable[nn.Module],
        feature_layer: int = -2,
        merge: Mapping[str, Any] | str | None = None,
        frozen: bool = False,
        pre_norm: nn.Module | None = None,
        num_prefix_tokens: int = 0,
        feature_cache: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.pre_norm = pre_norm
        depth = resolve_feature_layer(feature_layer, config.num_hidden_layers)
        self.layers = nn.ModuleList(list(layers)[:depth])
        self.out_dim = config.hidden_size
        self.patch_size = config.patch_size
        self.num_heads = config.num_attention_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.merge = MERGE.build(merge or "none")
        self.frozen = frozen
        self.grad_checkpoint = False  # recompute each layer's attention and MLP in the backward pass
        if frozen:
            self.requires_grad_(False)
        self.feature_cache = FeatureCache(feature_cache) if feature_cache else None
        self._fingerprint: tuple[tuple[int, ...], str] | None = None

    @property
    def is_frozen(self) -> bool:
        """Frozen by ``frozen`` or because no parameter is trainable (``freeze: [vision]``)."""
        return self.frozen or not any(p.requires_grad for p in self.parameters())

    def num_patches(self, height: int, width: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size)

    def num_tokens(self, height: int, width: int) -> int:
        """Tokens per frame entering the first layer: the patches plus the prefix (class) tokens."""
        return self.num_patches(height, width) + self.num_prefix_tokens

    def tokens_per_frame(self, height: int, width: int) -> int:
        return self.merge.tokens_per_frame(self.num_tokens(height, width), len(self.layers))

    def forward(self, pixels: Tensor) -> VisualTokens:
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (frames, 3, height, width), got {tuple(pixels.shape)}")
        if not self.is_frozen:
            return self._encode(pixels)
        with torch.inference_mode():
            vt = self._encode(pixels)
        # inference tensors cannot be saved for backward: clone them out so the projector can train on them
        return VisualTokens(*(None if t is None else t.clone() for t in (vt.tokens, vt.sizes, vt.source, vt.frames)))

    # -- whole videos: the cache and the merge's video step ----------------------------------------------------
    def encode_videos(self, pixels: Tensor, keys: list[str] | None = None) -> VisualTokens:
        """(B, F, 3, H, W) -> :class:`VisualTokens` with the rows of one video consecutive and ``frames`` the
        index of each token's frame within its video. ``keys`` (one per video) name the samples for the
        feature cache (default: a hash of the pixels)."""
        if pixels.dim() != 5:
            raise ValueError(f"pixels must be (batch, frames, 3, height, width), got shape {tuple(pixels.shape)}")
        f = pixels.shape[1]
        vt = self._cached(pixels, keys) if self.feature_cache is not None else self(pixels.flatten(0, 1))
        vt = self.merge.video(vt, f)
        vt.frames = vt.frames % f
        return vt

    def cache_config(self) -> str:
        """The hash the feature cache keys on: class, architecture config, layers run, prefix tokens, the merge's
        settings and a fingerprint of the weights (recomputed when any parameter was modified in place)."""
        version = tuple(p._version for p in self.parameters())
        if self._fingerprint is None or self._fingerprint[0] != version:
            self._fingerprint = (version, weights_fingerprint(self))
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else dict(vars(self.config))
        return config_hash({"class": type(self).__name__, "config": cfg, "layers_run": len(self.layers),
                            "prefix": self.num_prefix_tokens, "merge": self.merge.spec(),
                            "weights": self._fingerprint[1]})

    def _cached(self, pixels: Tensor, keys: list[str] | None) -> VisualTokens:
        if not self.is_frozen:
            raise ValueError("vision.feature_cache is set but the encoder is trainable: its features change every "
                             "step; set vision.frozen: true (or freeze: [vision]) or drop feature_cache")
        b, f, _, h, w = pixels.shape
        if keys is None:
            keys = [pixels_key(p) for p in pixels]
        if len(keys) != b:
            raise ValueError(f"{len(keys)} cache keys for {b} videos")
        cache, config = self.feature_cache, self.cache_config()
        need = ("tokens", "sizes") + (("source",) if self.merge.trace_source else ())
        paths = [cache.path(str(k), config, f, h, w) for k in keys]
        found = [cache.load(p, need) for p in paths]
        miss = [i for i, d in enumerate(found) if d is None]
        cache.hits += b - len(miss)
        cache.misses += len(miss)
        if miss:
            out = self(pixels[miss].flatten(0, 1))
            for j, i in enumerate(miss):
                rows = slice(j * f, (j + 1) * f)
                entry = {"tokens": out.tokens[rows], "sizes": out.sizes[rows]}
                if out.source is not None:
                    entry["source"] = out.source[rows]
                cache.save(paths[i], entry)
                found[i] = entry
        dtype = found[miss[0]]["tokens"].dtype if miss else found[0]["tokens"].dtype
        dev = pixels.device

        def cat(name: str) -> Tensor | None:
            if name not in need:
                return None
            return torch.cat([d[name].to(dev) for d in found]).to(dtype if name == "tokens" else found[0][name].dtype)

        tokens, sizes = cat("tokens"), cat("sizes")
        frames = torch.arange(b * f, device=dev)[:, None].expand(b * f, tokens.shape[1])
        return VisualTokens(tokens=tokens, sizes=sizes, source=cat("source"), frames=frames)

    # -- the layer loop ----------------------------------------------------------------------------------------
    def embed(self, pixels: Tensor) -> Tensor:
        """(F, 3, H, W) -> the tokens entering the first layer, ``hidden_states[0]``."""
        x = self.embeddings(pixels, interpolate_pos_encoding=True)
        return x if self.pre_norm is None else self.pre_norm(x)

    def _encode(self, pixels: Tensor) -> VisualTokens:
        x = self.embed(pixels)
        f, n, _ = x.shape
        sizes = torch.ones(f, n, device=x.device, dtype=torch.float32)
        source = None
        if getattr(self.merge, "trace_source", False):
            source = torch.eye(n, device=x.device, dtype=torch.float32).expand(f, n, n).contiguous()
        finalize = getattr(self.merge, "finalize", None)
        keys = None
        merged = False
        last = len(self.layers) - 1
        for i, (layer, r) in enumerate(zip(self.layers, self.merge.schedule(n, len(self.layers)))):
            x, keys = self._run(self.attention, layer, x, sizes if merged else None)
            if r > 0:
                if finalize is not None and i == last:
                    x, keys, sizes, source = self._merge_with_keys(x, keys, sizes, source, r)
                else:
                    x, sizes, source = self.merge(x, keys, sizes, source, r)
                merged = True
            x = self._run(self.mlp, layer, x)
        if finalize is not None:
            # keys: the last run layer's head-averaged keys, lined up with x (merged alongside it when that layer
            # merged); None when no layer ran (feature_layer 0): merges that need a metric then use the tokens
            x, sizes, source = finalize(x, keys, sizes, source)
        frames = torch.arange(f, device=x.device)[:, None].expand(f, x.shape[1])
        return VisualTokens(tokens=x, sizes=sizes, source=source, frames=frames)

    def _run(self, fn, *args: Any) -> Any:
        """One layer step, checkpointed with ``grad_checkpoint`` while training (the merge between the attention and
        the MLP is cheap and not recomputed)."""
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _merge_with_keys(self, x: Tensor, keys: Tensor, sizes: Tensor, source: Tensor | None, r: int):
        """The layer's merge, with the keys carried as extra channels: they are merged (size-weighted average)
        and reordered exactly like the tokens, so they stay one row per token. The matching still uses the
        unmerged keys; every channel is merged independently, so ``x`` comes out as without the passengers."""
        c = x.shape[-1]
        both, sizes, source = self.merge(torch.cat([x, keys.to(x.dtype)], dim=-1), keys, sizes, source, r)
        return both[..., :c], both[..., c:], sizes, source

    @staticmethod
    def proportional_attention(q: Tensor, k: Tensor, v: Tensor, sizes: Tensor | None, scale: float) -> Tensor:
        """softmax(q k^T * scale + log size) v over (F, heads, n, d); plain attention when ``sizes`` is None."""
        bias = None if sizes is None else sizes.log().to(q.dtype)[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)

    def attention(self, layer: nn.Module, x: Tensor, sizes: Tensor | None) -> tuple[Tensor, Tensor]:
        """Residual self-attention of one layer; proportional (+ log size) once tokens have been merged.
        Also returns the keys averaged over heads: the merge's similarity metric."""
        attn = layer.self_attn
        f, n, c = x.shape
        h = layer.layer_norm1(x)
        q, k, v = (proj(h).view(f, n, self.num_heads, -1).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        out = self.proportional_attention(q, k, v, sizes, attn.scale)
        x = x + attn.out_proj(out.transpose(1, 2).reshape(f, n, c))
        return x, k.mean(dim=1)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        """Residual MLP of one layer."""
        return x + layer.mlp(layer.layer_norm2(x))
