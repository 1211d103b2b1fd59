"""CLIP vision transformer (transformers' weights) with the merge inside its layers.

The layer loop (proportional attention, the merge between attention and MLP) is :class:`MergingViT`'s; CLIP
supplies its embeddings (a class token in front of the patches), its pre-layernorm (``pre_layrnorm``, applied to
the embeddings as Hugging Face does) and its weights. The class token is the merge's protected first token: it is
never merged away and stays first. With ``merge: none`` (or ``keep_ratio: 1``) the output equals
``CLIPVisionModel(...).hidden_states[feature_layer]`` (class token included).
"""
from __future__ import annotations

from typing import Any, Mapping

from aurora.registry import VISION

from .base import MergingViT, load_local


@VISION.register("clip")
class ClipVision(MergingViT):
    """CLIP encoder; frames are encoded independently, features from ``feature_layer`` (hidden_states
    semantics: after the pre-layernorm, before the post-layernorm, which is never applied). Each frame's tokens
    are the class token followed by the patches (merged); every ``sizes`` row sums to the patch count plus one
    (the class token is a token of size 1).

    Args:
        pretrained: a LOCAL Hugging Face directory (CLIPVisionModel, CLIPVisionModelWithProjection or a full
            CLIPModel); else random weights from the config arguments below (tiny defaults; CLIP ViT-L/14-336 is
            hidden 1024, 24 layers, 16 heads, MLP 4096, image 336, patch 14).
        feature_layer: hidden_states semantics: 0 = embeddings after the pre-layernorm, -1 = last layer,
            -2 = last layer dropped (LLaVA's choice).
        merge: a merge spec from the ``MERGE`` registry (``{name: tome, keep_ratio: 0.1}``), or None; it must
            protect the first token (the class token).
        hidden_act: the MLP activation for random weights (CLIP's is ``quick_gelu``).
        frozen: no gradients and no stored activations (``requires_grad=False``, forward under ``inference_mode``).
        feature_cache: a directory where a frozen encoder caches its per-sample output (see ``MergingViT``).
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
        hidden_act: str = "quick_gelu",
        feature_layer: int = -2,
        merge: Mapping[str, Any] | str | None = None,
        attn_implementation: str = "sdpa",
        frozen: bool = False,
        feature_cache: str | None = None,
    ) -> None:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if pretrained is not None:
            hf = load_local(CLIPVisionModel, pretrained, "CLIP", ("clip", "clip_vision_model"), attn_implementation)
        else:
            config = CLIPVisionConfig(
                hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                intermediate_size=intermediate_size, image_size=image_size, patch_size=patch_size, hidden_act=hidden_act,
            )
            config._attn_implementation = attn_implementation
            hf = CLIPVisionModel(config)
        body = getattr(hf, "vision_model", hf)  # older transformers nest the encoder one level down
        super().__init__(
            hf.config, body.embeddings, body.encoder.layers, feature_layer=feature_layer, merge=merge, frozen=frozen,
            pre_norm=body.pre_layrnorm, num_prefix_tokens=1, feature_cache=feature_cache,
        )
        if not getattr(self.merge, "protect_first", True):
            raise ValueError(f"CLIP's class token must stay first: the merge must protect it (protect_first), got {self.merge!r}")
