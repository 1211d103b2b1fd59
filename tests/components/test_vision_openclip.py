"""open_clip and timm ViTs on the merging loop. The libraries need torchvision (a CUDA-only extra), so the
equality tests run only where they are installed; the missing-package error is tested everywhere else."""
import importlib.util

import pytest
import torch

from aurora.registry import VISION

REASON = "open_clip/timm need torchvision, CUDA-only extra"


def have(module):
    try:
        return importlib.util.find_spec(module) is not None and bool(__import__(module))
    except Exception:  # installed but broken (e.g. torchvision against a CPU torch)
        return False


def need(module):
    if not have(module):
        pytest.skip(f"{REASON}: {module} is not importable here")
    return __import__(module)


def capture(module):
    """A forward hook that records the module's first input and its output."""
    seen = {}

    def hook(m, args, out):
        seen["input"], seen["output"] = args[0], out

    return seen, module.register_forward_hook(hook)


def test_registry_names_and_a_clear_error_without_the_package():
    assert "open_clip" in VISION and "timm" in VISION
    for name, module in (("open_clip", "open_clip"), ("timm", "timm")):
        if have(module):
            continue
        with pytest.raises(ImportError, match="CUDA-only extra: pip install 'aurora-long\\[openclip\\]'"):
            VISION.build({"name": name, "model_name": "ViT-B-32" if name == "open_clip" else "vit_base_patch16_224"})
    with pytest.raises(ValueError, match="give model_name"):
        VISION.build({"name": "open_clip"})
    with pytest.raises(ValueError, match="give model_name"):
        VISION.build({"name": "timm"})


def tiny_open_clip():
    open_clip = need("open_clip")
    torch.manual_seed(0)
    return open_clip.transformer.VisionTransformer(image_size=32, patch_size=8, width=32, layers=3, heads=2,
                                                   mlp_ratio=2.0, output_dim=16).eval()


def tiny_timm():
    timm = need("timm")
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3,
                                                            num_heads=2, mlp_ratio=2.0, num_classes=0).eval()


def test_open_clip_without_merging_equals_its_own_transformer():
    visual = tiny_open_clip()
    pixels = torch.randn(2, 3, 32, 32)
    seen, handle = capture(visual.transformer)
    with torch.no_grad():
        visual(pixels)
    handle.remove()
    enc = VISION.build({"name": "open_clip", "visual": visual, "feature_layer": -1}).eval()
    with torch.no_grad():
        x0 = enc.embed(pixels)
        out = enc(pixels)
    assert torch.allclose(x0, seen["input"], atol=1e-5)
    assert out.tokens.shape == (2, 17, 32) and torch.allclose(out.tokens, seen["output"], atol=1e-4)


def test_timm_without_merging_equals_its_own_blocks():
    model = tiny_timm()
    pixels = torch.randn(2, 3, 32, 32)
    seen, handle = capture(model.blocks)
    with torch.no_grad():
        model.forward_features(pixels)
    handle.remove()
    enc = VISION.build({"name": "timm", "model": model, "feature_layer": -1}).eval()
    with torch.no_grad():
        out = enc(pixels)
    assert torch.allclose(enc.embed(pixels), seen["input"], atol=1e-5)
    assert out.tokens.shape == (2, 17, 32) and torch.allclose(out.tokens, seen["output"], atol=1e-4)


@pytest.mark.parametrize("which", ["open_clip", "timm"])
def test_tome_inside_the_library_blocks(which):
    built = tiny_open_clip() if which == "open_clip" else tiny_timm()
    arg = "visual" if which == "open_clip" else "model"
    merge = {"name": "tome", "keep_ratio": 0.5, "trace_source": True}
    enc = VISION.build({"name": which, arg: built, "feature_layer": -2, "merge": merge}).eval()
    assert len(enc.layers) == 2
    with torch.no_grad():
        out = enc.encode_videos(torch.randn(1, 3, 3, 32, 32))
    n = enc.tokens_per_frame(32, 32)
    assert n < 17 and out.tokens.shape == (3, n, 32)
    assert torch.all(out.sizes.sum(1) == 17)  # 16 patches + the class token
    assert torch.all(out.source[:, 0, 0] == 1) and torch.all(out.source.sum(1) == 1)  # class token first, alone
    assert torch.equal(out.frames, torch.arange(3)[:, None].expand(3, n))
