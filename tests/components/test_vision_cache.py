"""A frozen encoder runs under inference mode and caches its per-sample features on disk (safetensors)."""
import pytest
import torch

from aurora.model import AuroraModel
from aurora.registry import VISION

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)


def frozen(cache, merge=None, seed=0, **kw):
    torch.manual_seed(seed)
    return VISION.build({"name": "siglip", **TINY, "frozen": True, "feature_cache": str(cache), **kw},
                        merge=merge or {"name": "tome", "keep_ratio": 0.5}).eval()


def test_hit_miss_and_the_cached_features_equal_a_fresh_run(tmp_path):
    enc = frozen(tmp_path)
    pixels = torch.randn(2, 3, 3, 32, 32)
    first = enc.encode_videos(pixels)
    assert (enc.feature_cache.hits, enc.feature_cache.misses) == (0, 2)
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 2 and not list(tmp_path.rglob("*.tmp"))  # written atomically
    again = enc.encode_videos(pixels)
    assert (enc.feature_cache.hits, enc.feature_cache.misses) == (2, 2)
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.sizes, again.sizes)
    assert torch.equal(first.frames, again.frames)
    fresh = frozen(tmp_path / "elsewhere", seed=0)  # no cache entries there: computed
    assert torch.equal(fresh.encode_videos(pixels).tokens, first.tokens)
    # one known video and one new one: one hit, one miss, the batch assembled in order
    mixed = torch.stack([pixels[1], torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(99))])
    out = enc.encode_videos(mixed)
    assert (enc.feature_cache.hits, enc.feature_cache.misses) == (3, 3)
    n = first.tokens.shape[1]
    assert torch.equal(out.tokens[:3], first.tokens[3:]) and out.tokens.shape == (6, n, 32)
    # explicit sample keys name the entries instead of the pixels' hash
    enc.encode_videos(pixels, keys=["a", "b"])
    enc.encode_videos(pixels + 1, keys=["a", "b"])  # same keys: read back, whatever the pixels
    assert (enc.feature_cache.hits, enc.feature_cache.misses) == (5, 5)


def test_a_different_config_or_weights_or_frame_count_does_not_reuse_the_cache(tmp_path):
    pixels = torch.randn(1, 4, 3, 32, 32)
    base = frozen(tmp_path)
    base.encode_videos(pixels)
    other_merge = frozen(tmp_path, merge={"name": "tome", "keep_ratio": 0.25})
    other_order = frozen(tmp_path, merge={"name": "tome", "keep_ratio": 0.5, "order": "size_descending"})
    other_layer = frozen(tmp_path, feature_layer=-1)
    other_weights = frozen(tmp_path, seed=1)
    for enc in (other_merge, other_order, other_layer, other_weights):
        enc.encode_videos(pixels)
        assert (enc.feature_cache.hits, enc.feature_cache.misses) == (0, 1)
    assert len({e.cache_config() for e in (base, other_merge, other_order, other_layer, other_weights)}) == 5
    base.encode_videos(pixels[:, :2])  # fewer frames: another entry
    assert (base.feature_cache.hits, base.feature_cache.misses) == (0, 2)
    # weights changed in place (a checkpoint loaded after construction): the fingerprint follows
    before = base.cache_config()
    base.load_state_dict(other_weights.state_dict())
    assert base.cache_config() == other_weights.cache_config() != before


def test_frozen_runs_in_inference_mode_and_the_projector_still_trains(tmp_path):
    torch.manual_seed(0)
    model = AuroraModel.from_specs(
        vision={"name": "siglip", **TINY, "frozen": True, "feature_cache": str(tmp_path)},
        merge={"name": "tome", "keep_ratio": 0.5}, projector="mlp",
        rnn={"name": "rwkv6", "vocab_size": 300, "d_model": 64, "n_layer": 1, "head_size": 16})
    seen = []
    layer = model.vision.layers[0].mlp
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(torch.is_inference_mode_enabled()))
    pixels = torch.randn(2, 2, 3, 32, 32)
    for _ in range(2):  # the second pass reads the cache: no encoder call
        video, vt = model.encode_video(pixels)
        video.sum().backward()
        assert not vt.tokens.is_inference() and model.projector.net[0].weight.grad is not None
    handle.remove()
    assert seen == [True]
    assert (model.vision.feature_cache.hits, model.vision.feature_cache.misses) == (2, 2)


def test_a_trainable_encoder_refuses_the_cache(tmp_path):
    torch.manual_seed(0)
    enc = VISION.build({"name": "siglip", **TINY, "feature_cache": str(tmp_path)})
    with pytest.raises(ValueError, match="feature_cache is set but the encoder is trainable"):
        enc.encode_videos(torch.randn(1, 2, 3, 32, 32))
    enc.requires_grad_(False)  # freeze: [vision] has the same effect as frozen: true
    assert enc.is_frozen and enc.encode_videos(torch.randn(1, 2, 3, 32, 32)).tokens.shape[0] == 2
