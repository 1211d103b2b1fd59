"""SigLIP with the merge inside: equals transformers without merging, proportional attention, local loading."""
import pytest
import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from aurora.components.merge.tome import r_for_keep_ratio
from aurora.components.vision.siglip import SiglipVision
from aurora.registry import VISION

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)




@pytest.mark.parametrize("merge", [None, {"name": "tome", "keep_ratio": 1.0}, {"name": "tome", "r": 0}])
@pytest.mark.parametrize("feature_layer", [-1, -2, 2])
def test_without_merging_equals_transformers_hidden_states(tmp_path, merge, feature_layer):
    torch.manual_seed(0)
    hf = SiglipVisionModel(SiglipVisionConfig(**TINY)).eval()
    hf.save_pretrained(tmp_path)
    ours = SiglipVision(pretrained=str(tmp_path), feature_layer=feature_layer, merge=merge).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[feature_layer]
        got = ours(pixels)
    assert torch.allclose(got.tokens, want, atol=1e-6, rtol=1e-6)
    assert torch.all(got.sizes == 1)


def test_missing_checkpoint_dir_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-siglip"):
        SiglipVision(pretrained=str(tmp_path / "no-such-siglip"))


@pytest.mark.parametrize("keep_ratio", [0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("hw", [(32, 32), (32, 48), (64, 40)])
def test_token_count_as_predicted_and_sizes_sum_to_patch_count(keep_ratio, hw):
    enc = SiglipVision(**TINY, merge={"name": "tome", "keep_ratio": keep_ratio, "trace_source": True}).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 3, *hw))
    n = (hw[0] // 8) * (hw[1] // 8)
    assert out.tokens.shape == (2, enc.tokens_per_frame(*hw), 32)
    assert (out.tokens.shape[1] < n) == (r_for_keep_ratio(n, 3, keep_ratio) > 0)
    assert torch.all(out.sizes.sum(1) == n)
    assert torch.equal(out.source.sum(-1), out.sizes)
    assert torch.all(out.source.sum(1) == 1)  # every patch in exactly one token
    assert torch.all(out.sizes[:, 1:].diff(dim=1) >= 0)  # the paper's ascending order after the protected token


def test_frames_are_merged_independently():
    enc = SiglipVision(**TINY, merge={"name": "tome", "keep_ratio": 0.25}).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        together = enc(pixels)
        alone = enc(pixels[1:2])
    assert torch.allclose(together.tokens[1], alone.tokens[0], atol=1e-6)
    assert torch.equal(together.sizes[1], alone.sizes[0])


def test_proportional_attention_duplicate_tokens_equal_one_token_of_that_size():
    enc = SiglipVision(**TINY).double().eval()
    layer = enc.layers[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 32, generator=g, dtype=torch.float64)
    k = 3
    dup = torch.cat([x, x[:, 4:5].expand(1, k - 1, 32)], 1)  # token 4 present k times
    with torch.no_grad():
        a, _ = enc.attention(layer, dup, torch.ones(1, 5 + k - 1, dtype=torch.float64))
        b, _ = enc.attention(layer, x, torch.tensor([[1.0, 1, 1, 1, k]], dtype=torch.float64))
    assert torch.allclose(a[:, :5], b, atol=1e-10)


def test_registry_and_bad_input():
    enc = VISION.build({"name": "siglip", **TINY})
    assert isinstance(enc, SiglipVision) and enc.out_dim == 32
    with pytest.raises(ValueError, match="frames, 3, height, width"):
        enc(torch.randn(2, 32, 32))
    with pytest.raises(ValueError, match="feature_layer 9"):
        SiglipVision(**TINY, feature_layer=9)
    with pytest.raises(KeyError, match="known vision backbones: .*siglip"):
        VISION.build("vit-huge")


def test_sincos_position_init_encodes_row_and_column():
    enc = SiglipVision(**TINY, position_init="sincos")
    pos = enc.embeddings.position_embedding.weight.detach().double()  # (16, 32): a 4 x 4 grid
    grid = pos.view(4, 4, 32)
    assert torch.allclose(grid[:, :1, :16].expand(4, 4, 16), grid[..., :16])  # first half: the row only
    assert torch.allclose(grid[:1, :, 16:].expand(4, 4, 16), grid[..., 16:])  # second half: the column only
    assert torch.cdist(pos, pos).fill_diagonal_(1.0).min() > 0.1  # every patch position is distinct
    assert pos.norm(dim=1).min() > 1.0  # as strong as the patch content, not 1/sqrt(width) noise
    random_init = SiglipVision(**TINY).embeddings.position_embedding.weight
    assert not torch.allclose(random_init, pos.float())
    with pytest.raises(ValueError, match="known: random, sincos"):
        SiglipVision(**TINY, position_init="learned-ish")
