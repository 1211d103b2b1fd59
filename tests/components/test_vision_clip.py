"""CLIP on the shared merging ViT loop: equals transformers without merging (class token + pre-layernorm), the
class token stays first under merging, local checkpoints (vision-only and full CLIPModel), the merge's
post-encoder hook, frozen encoders that build no graph."""
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, SiglipConfig, SiglipModel, SiglipVisionConfig,
    SiglipVisionModel,
)

from aurora.components.merge.tome import TokenMerge, ToMeMerge
from aurora.components.vision.base import MergingViT
from aurora.components.vision.clip import ClipVision
from aurora.components.vision.siglip import SiglipVision
from aurora.registry import VISION

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64)
GRID = (32 // 8) ** 2  # 16 patches per 32 x 32 frame


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = CLIPVisionModel(CLIPVisionConfig(**TINY)).eval()
    path = tmp_path_factory.mktemp("clip-vision")
    hf.save_pretrained(path)
    return path, hf


@pytest.mark.parametrize("feature_layer, merge", [
    (-1, None), (-2, None), (1, None), (0, None), (0, "none"),
    (-1, {"name": "tome", "keep_ratio": 1.0}), (-2, {"name": "tome", "keep_ratio": 1.0}), (-2, {"name": "tome", "r": 0}),
])
def test_clip_without_merging_equals_transformers_hidden_states(clip_dir, merge, feature_layer):
    path, hf = clip_dir
    ours = ClipVision(pretrained=str(path), feature_layer=feature_layer, merge=merge).eval()
    assert len(ours.layers) == {-1: 3, -2: 2, 0: 0, 1: 1}[feature_layer]  # only the layers that are used
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[feature_layer]
        got = ours(pixels)
    assert got.tokens.shape == (3, GRID + 1, 32) == want.shape  # class token + patches
    assert torch.allclose(got.tokens, want, atol=1e-6, rtol=1e-6)
    assert torch.all(got.sizes == 1)
    assert ours.tokens_per_frame(32, 32) == GRID + 1


@pytest.mark.parametrize("feature_layer", [-2, 0])
def test_siglip_on_the_shared_loop_still_equals_transformers(tmp_path, feature_layer):
    torch.manual_seed(1)
    hf = SiglipVisionModel(SiglipVisionConfig(**TINY)).eval()
    hf.save_pretrained(tmp_path)
    ours = SiglipVision(pretrained=str(tmp_path), feature_layer=feature_layer).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[feature_layer]
        got = ours(pixels)
    assert got.tokens.shape == (2, GRID, 32)  # no class token
    assert torch.allclose(got.tokens, want, atol=1e-6, rtol=1e-6)
    assert isinstance(ours, MergingViT) and isinstance(ClipVision(**TINY), MergingViT)


def test_full_clip_and_siglip_model_directories_load_their_vision_tower(tmp_path):
    torch.manual_seed(2)
    clip = CLIPModel(CLIPConfig(vision_config=TINY, text_config=TEXT)).eval()
    clip.save_pretrained(tmp_path / "clip")
    siglip = SiglipModel(SiglipConfig(vision_config=TINY, text_config=TEXT)).eval()
    siglip.save_pretrained(tmp_path / "siglip")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for full, ours in ((clip, ClipVision(pretrained=str(tmp_path / "clip"))),
                           (siglip, SiglipVision(pretrained=str(tmp_path / "siglip")))):
            want = full.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
            assert torch.allclose(ours.eval()(pixels).tokens, want, atol=1e-6, rtol=1e-6)


def test_bad_checkpoint_directories_are_named(tmp_path, clip_dir):
    with pytest.raises(FileNotFoundError, match="CLIP checkpoint directory not found: .*no-such-clip"):
        ClipVision(pretrained=str(tmp_path / "no-such-clip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty has no config.json"):
        ClipVision(pretrained=str(tmp_path / "empty"))
    SiglipVisionModel(SiglipVisionConfig(**TINY)).save_pretrained(tmp_path / "siglip")
    with pytest.raises(ValueError, match="'siglip_vision_model' model, not a CLIP one"):
        ClipVision(pretrained=str(tmp_path / "siglip"))
    # a checkpoint without the pre-layernorm: the missing weights are listed, not silently initialised
    path, _ = clip_dir
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((path / "config.json").read_text())
    weights = load_file(path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "pre_layrnorm" not in k}, broken / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 2 weight\(s\).*pre_layrnorm\.bias, .*pre_layrnorm\.weight"):
        ClipVision(pretrained=str(broken))


@pytest.mark.parametrize("keep_ratio", [0.1, 0.5])
@pytest.mark.parametrize("hw", [(32, 32), (32, 48)])
def test_merging_keeps_the_class_token_first_and_counts_as_predicted(keep_ratio, hw):
    enc = ClipVision(**TINY, feature_layer=-1, merge={"name": "tome", "keep_ratio": keep_ratio, "trace_source": True}).eval()
    n = (hw[0] // 8) * (hw[1] // 8)
    with torch.no_grad():
        out = enc(torch.randn(2, 3, *hw))
    assert out.tokens.shape == (2, enc.tokens_per_frame(*hw), 32)
    assert out.tokens.shape[1] < n + 1
    assert torch.all(out.sizes.sum(1) == n + 1)  # every patch, plus the class token of size 1
    class_only = torch.zeros(n + 1)
    class_only[0] = 1
    assert torch.equal(out.source[:, 0], class_only.expand(2, -1))  # first token: the class token, alone
    assert torch.all(out.source.sum(1) == 1)  # every patch in exactly one token
    assert torch.all(out.sizes[:, 1:].diff(dim=1) >= 0)  # the paper's ascending order after the class token
    with pytest.raises(ValueError, match="class token must stay first"):
        ClipVision(**TINY, merge={"name": "tome", "keep_ratio": 0.5, "protect_first": False})


class Recording(ToMeMerge):
    """ToMe that records the metric of every merge and what the post-encoder hook receives."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.metrics, self.final = [], None

    def __call__(self, x, metric, sizes, source, r):
        self.metrics.append(metric)
        return super().__call__(x, metric, sizes, source, r)

    def finalize(self, x, metric, sizes, source):
        self.final = (x, metric, sizes, source)
        return x, sizes, source


class RecordFinal(TokenMerge):
    def finalize(self, x, metric, sizes, source):
        self.final = (x, metric, sizes, source)
        return x, sizes, source


def test_finalize_gets_the_last_layers_keys_lined_up_with_the_tokens():
    torch.manual_seed(3)
    # merge only in the last layer: the carried keys must be the size-weighted mean of that layer's keys
    merge = Recording(r=[0, 0, 5], trace_source=True)
    enc = ClipVision(**TINY, feature_layer=-1).eval()
    enc.merge = merge
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = enc(pixels)
        x, keys, sizes, source = merge.final
        assert out.tokens is x and keys.shape == (2, GRID + 1 - 5, 16)  # one key row per merged token
        (last_keys,) = merge.metrics
        assert torch.allclose(keys, source @ last_keys / sizes[..., None], atol=1e-6)
        # without merging, finalize gets exactly the last layer's head-averaged keys
        enc.merge = merge = Recording()
        out = enc(pixels)
        layer = enc.layers[-1]
        h = enc.embed(pixels)
        for lay in enc.layers[:-1]:
            h, _ = enc.attention(lay, h, None)
            h = h + lay.mlp(lay.layer_norm2(h))
        _, want = enc.attention(layer, h, None)
        assert torch.allclose(merge.final[1], want, atol=1e-6)
        assert torch.equal(want, layer.self_attn.k_proj(layer.layer_norm1(h)).view(2, GRID + 1, 2, 16).mean(2))
        # no layer run: no keys
        enc0 = ClipVision(**TINY, feature_layer=0)
        enc0.merge = merge = RecordFinal()
        enc0(pixels)
        assert merge.final[1] is None


def test_post_encoder_merge_runs_through_finalize():
    enc = ClipVision(**TINY, merge={"name": "tome_post", "keep_ratio": 0.25, "trace_source": True}).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape[1] == enc.tokens_per_frame(32, 32) < GRID + 1
    assert torch.all(out.sizes.sum(1) == GRID + 1) and torch.all(out.source[:, 0, 0] == 1)


@pytest.mark.parametrize("cls", [ClipVision, SiglipVision])
def test_frozen_encoder_builds_no_graph_and_stores_no_activations(cls):
    torch.manual_seed(4)
    live = cls(**TINY, merge={"name": "tome", "keep_ratio": 0.5})
    frozen = cls(**TINY, merge={"name": "tome", "keep_ratio": 0.5}, frozen=True)
    frozen.load_state_dict(live.state_dict())
    assert all(p.requires_grad for p in live.parameters())
    assert not any(p.requires_grad for p in frozen.parameters())
    pixels = torch.randn(2, 3, 32, 32, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        a = live(pixels)
        n_live = len(saved)
        saved.clear()
        b = frozen(pixels)
    assert a.tokens.grad_fn is not None and n_live > 0  # the hook sees what a trainable encoder stores
    assert b.tokens.grad_fn is None and not b.tokens.requires_grad and saved == []
    assert torch.equal(a.tokens.detach(), b.tokens) and torch.equal(a.sizes, b.sizes)


def test_registry_builds_clip_with_merge_and_rejects_bad_input():
    enc = VISION.build({"name": "clip", **TINY, "frozen": True}, merge={"name": "tome", "keep_ratio": 0.5})
    assert isinstance(enc, ClipVision) and enc.out_dim == 32 and enc.frozen
    assert enc.tokens_per_frame(32, 32) == ToMeMerge(keep_ratio=0.5).tokens_per_frame(GRID + 1, 2)
    with pytest.raises(ValueError, match="frames, 3, height, width"):
        enc(torch.randn(2, 32, 32))
    with pytest.raises(ValueError, match="feature_layer -5"):
        ClipVision(**TINY, feature_layer=-5)
    with pytest.raises(KeyError, match="known vision backbones: clip, open_clip, siglip, timm"):
        VISION.build("vit-huge")
