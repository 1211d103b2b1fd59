"""`aurora viz merge`: the merge map it draws (every patch in exactly one token, in the language model's reading
order), the PNG, checkpoint loading, and clear errors for bad input."""
import random

import numpy as np
import pytest
import torch

from aurora.data.synthetic import render
from aurora.data.video import encode_mp4
from aurora.cli import main as cli_main
from aurora.infer.runconfig import load_recipe
from aurora.tools.viz import (
    VizError, build_vision, decode_frames, load_vision_weights, merge_map, patch_assignment, run_merge,
    token_labels,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

RECIPE = """
seed_everything: 3
model:
  vision:
    name: siglip
    hidden_size: 32
    num_hidden_layers: 2
    num_attention_heads: 2
    intermediate_size: 64
    image_size: 32
    patch_size: 8
    feature_layer: -1
  merge:
    name: tome
    keep_ratio: 0.5          # 16 patches, r = 4 in each of the 2 layers: 16 -> 12 -> 8 tokens per frame
    order: size_ascending
data:
  num_frames: 3
  image_size: 32
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("viz")
    (d / "tiny.yaml").write_text(RECIPE)
    video = render("red", "square", "right", frames=6, size=32, rng=random.Random(0))
    video[:, :, :, 2] = np.arange(32, dtype=np.uint8)[None, None, :] * 6  # a blue ramp: patches differ
    (d / "v.mp4").write_bytes(encode_mp4(video))
    (d / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 100)
    (d / "truncated.mp4").write_bytes(encode_mp4(video)[:300])
    return d


def test_viz_merge_writes_a_png_and_a_summary(files, tmp_path, capsys):
    out = tmp_path / "sub" / "merge.png"
    rc = cli_main(["viz", "merge", "--video", str(files / "v.mp4"), "--config", str(files / "tiny.yaml"), "--out", str(out)])
    assert rc == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in out.parent.iterdir()] == ["merge.png"]  # no temporary file left behind
    text = capsys.readouterr().out
    assert "8 tokens per frame from 16 patches" in text and "r per layer [4, 4]" in text
    assert text.count("sizes in reading order") == 3  # data.num_frames


def test_the_drawn_map_puts_every_patch_in_exactly_one_token_in_reading_order(files):
    mm = run_merge(str(files / "v.mp4"), str(files / "tiny.yaml"), frames=4)
    assert mm.frame_indices == [0, 2, 3, 5] and mm.total_frames == 6
    f, n = 4, 8
    assert mm.sizes.shape == (f, n) and mm.source.shape == (f, n, 16) and mm.assignment.shape == (f, 4, 4)
    flat = mm.assignment.flatten(1)
    for i in range(f):
        # the assignment is the source map read column by column: patch p belongs to token a[p] and to no other
        assert torch.equal(torch.nn.functional.one_hot(flat[i], n).T.float(), mm.source[i])
        # every token holds its size's worth of patches, and the sizes are the reading order's (ascending,
        # the protected first token in front)
        counts = torch.bincount(flat[i], minlength=n)
        assert torch.equal(counts.float(), mm.sizes[i].float()) and counts.sum() == 16 and counts.min() >= 1
        assert mm.assignment[i, 0, 0] == 0
        assert torch.all(mm.sizes[i, 2:] >= mm.sizes[i, 1:-1])
        # each label sits on a patch of its own token and shows that token's size
        labels = token_labels(mm, i)
        assert [k for k, _, _ in labels] == list(range(n))
        for k, size, (r, c) in labels:
            assert mm.assignment[i, r, c] == k and size == counts[k]
    assert mm.sizes.sum() > mm.sizes.shape[0] * n  # something was merged: not all tokens of size 1

    # the same tokens, in the same order, as the encoder's own output (the rows of VisualTokens.tokens)
    recipe = load_recipe(str(files / "tiny.yaml"))
    vision = build_vision(recipe)
    from aurora.data.video import to_pixels

    raw, _, _ = decode_frames(files / "v.mp4", 4)
    vt = vision(to_pixels(raw, 32))
    assert torch.equal(vt.sizes, mm.sizes) and torch.equal(vt.source, mm.source)


def test_patch_assignment_refuses_maps_that_miss_or_repeat_a_patch():
    eye = torch.eye(6).expand(2, 6, 6).contiguous()
    assert patch_assignment(eye, (2, 3)).tolist() == [[[0, 1, 2], [3, 4, 5]]] * 2
    merged = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])[None]  # token 0 holds patches 0 and 1
    assert patch_assignment(merged).tolist() == [[0, 0, 1, 2]]
    twice = merged.clone()
    twice[0, 1, 0] = 1.0  # patch 0 also in token 1
    with pytest.raises(VizError, match="frame 0 patch 0 is held by 2 token"):
        patch_assignment(twice)
    missing = merged.clone()
    missing[0, 2, 3] = 0.0  # patch 3 in no token
    with pytest.raises(VizError, match="patch 3 is held by 0 token"):
        patch_assignment(missing)
    # a class token in front (CLIP): its column is not a patch
    cls = torch.cat([torch.tensor([[[1.0], [0], [0]]]), merged[:, :, 1:]], dim=-1)
    assert patch_assignment(cls, prefix=1).tolist() == [[0, 1, 2]]


def test_vision_weights_come_from_a_lightning_checkpoint(files, tmp_path, capsys):
    recipe = load_recipe(str(files / "tiny.yaml"))
    torch.manual_seed(123)
    from aurora.registry import VISION

    trained = VISION.build(recipe["model"]["vision"], merge=recipe["model"]["merge"])
    trained.merge.trace_source = True
    sd = {f"model.vision.{k}": v for k, v in trained.state_dict().items()}
    sd["model.rnn.emb.weight"] = torch.zeros(3, 2)  # other parts of the model are ignored
    torch.save({"state_dict": sd, "epoch": 0}, tmp_path / "last.ckpt")

    fresh = build_vision(recipe)
    assert not torch.equal(fresh.embeddings.patch_embedding.weight, trained.embeddings.patch_embedding.weight)
    load_vision_weights(fresh, tmp_path / "last.ckpt")
    for k, v in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k

    mm = run_merge(str(files / "v.mp4"), str(files / "tiny.yaml"), ckpt=str(tmp_path / "last.ckpt"))
    raw, _, _ = decode_frames(files / "v.mp4", 3)
    from aurora.data.video import to_pixels

    want = merge_map(trained.eval(), to_pixels(raw, 32))
    assert torch.equal(mm.source, want.source) and torch.equal(mm.sizes, want.sizes)

    # a checkpoint of another size is refused with the keys and shapes named
    bigger = dict(recipe["model"]["vision"], hidden_size=48)
    other = VISION.build(bigger)
    torch.save({"state_dict": {f"model.vision.{k}": v for k, v in other.state_dict().items()}}, tmp_path / "big.ckpt")
    rc = cli_main(["viz", "merge", "--video", str(files / "v.mp4"), "--config", str(files / "tiny.yaml"),
                   "--ckpt", str(tmp_path / "big.ckpt"), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "shape mismatch" in err and "model.vision.embeddings.patch_embedding.weight" in err
    assert "(48, 3, 8, 8) vs recipe (32, 3, 8, 8)" in err
    torch.save({"state_dict": {"model.rnn.w": torch.zeros(1)}}, tmp_path / "novision.ckpt")
    with pytest.raises(VizError, match="no 'model.vision.\\*' weights"):
        load_vision_weights(fresh, tmp_path / "novision.ckpt")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "video, config, message",
    [
        ("missing.mp4", "tiny.yaml", "FileNotFoundError: video not found"),
        ("corrupt.mp4", "tiny.yaml", "VideoDecodeError: "),
        ("truncated.mp4", "tiny.yaml", "VideoDecodeError: "),
        ("v.mp4", "no_such_recipe.yaml", "FileNotFoundError: recipe not found: "),
        ("v.mp4", "novision.yaml", "no model.vision section"),
        ("v.mp4", "badname.yaml", "unknown vision backbone 'nope'"),
    ],
)
def test_bad_input_exits_2_with_a_named_error(files, tmp_path, capsys, video, config, message):
    (files / "novision.yaml").write_text("model:\n  rnn: {name: rwkv6}\n")
    (files / "badname.yaml").write_text("model:\n  vision: {name: nope}\n")
    out = tmp_path / "merge.png"
    rc = cli_main(["viz", "merge", "--video", str(files / video), "--config", str(files / config), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("aurora viz: error:")
    assert "Traceback" not in err and not out.exists()
    if "VideoDecodeError" in message:
        assert video in err  # the message names the file


def test_aurora_cli_dispatches_viz(files, tmp_path):
    from aurora.cli import main

    out = tmp_path / "m.png"
    assert main(["viz", "merge", "--video", str(files / "v.mp4"), "--config", str(files / "tiny.yaml"),
                 "--frames", "1", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_raw_frame_beside_each_merged_panel_and_neighbours_never_share_a_colour(files):
    from aurora.tools.viz import adjacent_tokens, colour_tokens, figure, frame_colours

    mm = run_merge(str(files / "v.mp4"), str(files / "tiny.yaml"), frames=3)
    raw, _, _ = decode_frames(files / "v.mp4", 3)
    fig = figure(mm, "t")
    try:
        panels = [ax for ax in fig.axes if ax.images]
        assert len(panels) == 2 * 3
        for i in range(3):
            shown = np.asarray(panels[2 * i].images[0].get_array())
            assert len(panels[2 * i].images) == 1  # the raw panel: the frame alone, as the encoder saw it
            assert np.array_equal(shown, mm.images[i].numpy())
            assert np.abs(shown * 255 - raw[i].numpy().astype(np.float64)).max() <= 1.0  # 32 px: no resize
            overlay = np.asarray(panels[2 * i + 1].images[1].get_array())
            colours = frame_colours(mm, i).numpy()
            assert np.array_equal(overlay, colours[mm.assignment[i].numpy()])
            pairs = adjacent_tokens(mm.assignment[i])
            assert pairs and all(not np.array_equal(colours[a], colours[b]) for a, b in pairs)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)

    # a hard case: token 0 is scattered over the frame (ToMe merges patches that are not neighbours), so it
    # touches every other token; the colouring still keeps every neighbour distinct, within the palette
    a = torch.tensor([[0, 1, 0, 2], [3, 0, 4, 0], [0, 5, 0, 6], [7, 0, 8, 0]])
    idx = colour_tokens(a, torch.bincount(a.flatten()).float(), palette=10)
    assert all(idx[x] != idx[y] for x, y in adjacent_tokens(a)) and max(idx) < 10
    assert adjacent_tokens(torch.tensor([[0, 0], [1, 2]])) == {(0, 1), (0, 2), (1, 2)}
    # more neighbours than the palette: it goes past it rather than repeat a neighbour's colour
    star = torch.tensor([[1, 2, 3], [4, 0, 5], [6, 7, 8]])
    ring = colour_tokens(star, torch.ones(9), palette=2)
    assert all(ring[x] != ring[y] for x, y in adjacent_tokens(star))


def test_render_returns_the_pixels_draw_writes(files, tmp_path):
    """The page shows `render`'s array; `aurora viz merge` writes `draw`'s PNG: one picture."""
    from PIL import Image

    from aurora.tools.viz import draw, render

    mm = run_merge(str(files / "v.mp4"), str(files / "tiny.yaml"), frames=2)
    img = render(mm, "a title")
    png = np.asarray(Image.open(draw(mm, tmp_path / "m.png", "a title")).convert("RGB"))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape == png.shape and np.array_equal(img, png)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # a picture, not a blank canvas
