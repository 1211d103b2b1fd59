"""Frame indices and sources from every merge, the orderings across frames (frame_then_size, size_global), the
sort location (sort_at: layers | once) and the temporal merge across frames, through the encoder and the model."""
import pytest
import torch

from aurora.components.merge.temporal import TemporalMerge
from aurora.components.merge.tome import ToMeMerge
from aurora.model import AuroraModel
from aurora.registry import MERGE, ORDER, VISION
from aurora.components.merge.rows import select
from aurora.types import VisualTokens

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)
PATCHES = 16


def encoder(merge, name="siglip", seed=0):
    torch.manual_seed(seed)
    return VISION.build({"name": name, **TINY, "merge": merge}).eval()


def is_permutation(perm, n):
    return torch.equal(perm.sort(1).values, torch.arange(n).expand_as(perm))


@pytest.mark.parametrize("merge", [
    "none", {"name": "tome", "keep_ratio": 0.5}, {"name": "tome_post", "keep_ratio": 0.25},
    {"name": "pool", "stride": 2}, {"name": "temporal", "keep_ratio": 0.5, "inner": {"name": "tome", "keep_ratio": 0.5}},
])
def test_every_merge_returns_frames_and_sources(merge):
    spec = {"name": merge, "trace_source": True} if isinstance(merge, str) else {**merge, "trace_source": True}
    enc = encoder(spec)
    with torch.no_grad():
        vt = enc.encode_videos(torch.randn(2, 4, 3, 32, 32))
    assert vt.frames is not None and vt.source is not None and vt.frames.dtype == torch.int64
    rows, n = vt.sizes.shape
    assert vt.tokens.shape[:2] == (rows, n) and vt.source.shape[:2] == (rows, n)
    assert vt.frames.min() >= 0 and vt.frames.max() <= 3  # within the video
    # every patch of every frame in exactly one token; sizes are patch counts
    assert torch.allclose(vt.source.sum(1), torch.ones(rows, vt.source.shape[-1]))
    assert torch.allclose(vt.source.sum(-1), vt.sizes)
    assert torch.allclose(vt.sizes.sum(1), torch.full((rows,), float(PATCHES * vt.row_frames)))
    # a token's frame is the earliest frame its source patches come from
    first = torch.where(vt.source > 0, torch.arange(vt.source.shape[-1]), 10**6).amin(-1) // PATCHES
    row_start = (torch.arange(rows) * vt.row_frames % 4)[:, None]
    assert torch.equal(vt.frames, first + row_start)


def test_new_orderings_are_stable_permutations():
    sizes = torch.tensor([[1.0, 3, 1, 2, 5, 1, 1, 2]])
    frames = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    fts = ORDER.get("frame_then_size")(sizes, True, None, frames=frames)
    assert fts.tolist() == [[0, 2, 3, 1, 4, 5, 6, 7]]  # each frame's first token kept in front of its frame
    asc_per_frame = torch.cat([ORDER.get("size_ascending")(sizes[:, :4], True, None),
                               4 + ORDER.get("size_ascending")(sizes[:, 4:], True, None)], 1)
    assert torch.equal(fts, asc_per_frame)  # frame_then_size == size_ascending frame by frame
    glob = ORDER.get("size_global")(sizes, True, None, frames=frames)
    assert glob.tolist() == [[0, 2, 5, 6, 3, 7, 1, 4]]  # across frames; ties in time order
    for name in ORDER.names():
        perm = ORDER.get(name)(sizes, True, torch.Generator().manual_seed(0), frames=frames)
        assert is_permutation(perm, 8) and perm[0, 0] == 0
        if name != "size_global":  # every per-frame ordering keeps the frames in time order
            assert torch.all(frames.gather(1, perm).diff(dim=1) >= 0)


@pytest.mark.parametrize("order", ["size_ascending", "size_descending", "frame_then_size", "random"])
@pytest.mark.parametrize("merge", ["tome", "tome_post"])
def test_sort_once_equals_sorting_the_unsorted_output(order, merge):
    pixels = torch.randn(3, 3, 32, 32)
    keep = 0.25 if merge == "tome_post" else 0.5
    with torch.no_grad():
        plain = encoder({"name": merge, "keep_ratio": keep, "order": "original", "trace_source": True})(pixels)
        once = encoder({"name": merge, "keep_ratio": keep, "order": order, "sort_at": "once", "seed": 3,
                        "trace_source": True})(pixels)
        layers = encoder({"name": merge, "keep_ratio": keep, "order": order, "trace_source": True})(pixels)
    perm = ORDER.get(order)(plain.sizes, True, torch.Generator().manual_seed(3))
    assert is_permutation(perm, plain.sizes.shape[1])
    want = select(plain, perm)
    assert torch.allclose(once.tokens, want.tokens, atol=1e-6) and torch.equal(once.sizes, want.sizes)
    assert torch.equal(once.source, want.source)
    assert layers.tokens.shape == once.tokens.shape  # sorting in the layers: same count, valid sizes
    assert torch.all(layers.sizes.sum(1) == PATCHES) and torch.all(layers.source.sum(1) == 1)


def test_size_global_sorts_the_whole_video_and_needs_once():
    with pytest.raises(ValueError, match="set sort_at: once"):
        ToMeMerge(keep_ratio=0.5, order="size_global")
    with pytest.raises(ValueError, match="unknown sort_at 'never'; known: layers, once"):
        ToMeMerge(sort_at="never")
    pixels = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        vt = encoder({"name": "tome", "keep_ratio": 0.5, "order": "size_global", "sort_at": "once"}).encode_videos(pixels)
        per_frame = encoder({"name": "tome", "keep_ratio": 0.5, "order": "original"})(pixels.flatten(0, 1))
    n = per_frame.sizes.shape[1]
    assert vt.tokens.shape == (2, 3 * n, 32) and vt.row_frames == 3  # one row per video
    assert torch.all(vt.sizes[:, 1:].diff(dim=1) >= 0)  # ascending across the frames (the first token kept first)
    for b in range(2):  # the same tokens as the per-frame output of that video, only reordered
        mine = per_frame.tokens[3 * b: 3 * b + 3].reshape(-1, 32)
        assert torch.allclose(vt.tokens[b].sort(0).values, mine.sort(0).values, atol=1e-6)


def static_video(frames=4):
    g = torch.Generator().manual_seed(5)
    frame = torch.randn(1, 1, 3, 32, 32, generator=g)
    video = frame.expand(1, frames, 3, 32, 32).clone()
    video[0, 2:, :, :8, :8] += 3.0  # something changes in the top-left patch from frame 2 on
    return video


def test_temporal_merges_a_static_background_across_frames():
    merge = {"name": "temporal", "keep_ratio": 0.4, "inner": {"name": "tome", "keep_ratio": 0.5},
             "trace_source": True}
    enc = encoder(merge)
    n = enc.tokens_per_frame(32, 32)
    with torch.no_grad():
        vt = enc.encode_videos(static_video())
    budget = enc.merge.tokens_per_window(n, 4)
    assert budget == round(0.4 * 4 * n) and vt.tokens.shape == (1, budget, 32) and vt.row_frames == 4
    assert vt.sizes.sum() == PATCHES * 4  # sizes: patches across frames
    assert vt.sizes.max() >= 3  # background tokens span frames
    spans = (vt.source.view(1, budget, 4, PATCHES).sum(-1) > 0).sum(-1)
    assert spans.max() >= 2
    # reading order under frame_then_size: frame indices never go back in time; by size within a frame
    assert torch.all(vt.frames.diff(dim=1) >= 0)
    for t in vt.frames.unique():
        s = vt.sizes[vt.frames == t]
        assert torch.all(s[1:].diff() >= 0)  # the frame's first (protected) token, then ascending
    # unchanged frame 1 and 3 add nothing new: every token of frame 1 merged back into frame 0
    assert (vt.frames == 1).sum() <= 1  # at most its protected first token


def test_temporal_layout_windows_and_errors():
    merge = TemporalMerge(keep_ratio=0.5, window=2, inner={"name": "tome", "keep_ratio": 0.5})
    assert merge.tokens_per_window(9, 2) == 10  # half of 18 is 9, below the floor: a frame + 1 protected token
    assert merge.tokens_per_video(9, 4) == 2 * 10  # two windows
    assert TemporalMerge(keep_ratio=0.5, window=2, inner="none").tokens_per_window(16, 2) == 17
    assert TemporalMerge(keep_ratio=0.01).tokens_per_window(9, 4) == 9 + 3  # floor: one frame + protected tokens
    vt = VisualTokens(tokens=torch.randn(6, 5, 4), sizes=torch.ones(6, 5))
    with pytest.raises(ValueError, match="window 4 does not divide the 6 frames"):
        TemporalMerge(window=4).video(vt, 6)
    with pytest.raises(ValueError, match="temporal window must be a positive"):
        TemporalMerge(window=0)
    with pytest.raises(ValueError, match="inner merge sorts across frames"):
        TemporalMerge(inner={"name": "tome", "order": "size_global", "sort_at": "once"})
    out = TemporalMerge(keep_ratio=0.5, window=3, inner="none").video(vt, 6)
    assert out.tokens.shape == (2, 8, 4) and out.row_frames == 3 and torch.all(out.sizes.sum(1) == 15)
    assert isinstance(MERGE.build({"name": "temporal", "inner": "pool"}).inner, type(MERGE.build("pool")))


def test_encode_video_feeds_the_temporal_budget_to_the_language_model():
    torch.manual_seed(0)
    model = AuroraModel.from_specs(
        vision={"name": "siglip", **TINY},
        merge={"name": "temporal", "keep_ratio": 0.5, "window": 2, "inner": {"name": "tome", "keep_ratio": 0.5}},
        projector="mlp", rnn={"name": "rwkv6", "vocab_size": 300, "d_model": 64, "n_layer": 1, "head_size": 16},
    ).eval()
    pixels = torch.randn(2, 4, 3, 32, 32)
    n = model.vision.tokens_per_frame(32, 32)
    with torch.no_grad():
        video, vt = model.encode_video(pixels)
    want = model.vision.merge.tokens_per_video(n, 4)
    assert video.shape == (2, want, 64) and want < 4 * n
    assert vt.frames.shape == (4, want // 2) and vt.frames.max() == 3
    assert torch.all(vt.frames.reshape(2, -1).diff(dim=1) >= 0)
    assert vt.tokens_per_frame == want / 4
