"""The sorted token merge: bipartite matching, size tracking, orderings, token counts."""
import pytest
import torch

from aurora.components.merge.tome import (
    ToMeMerge, TokenMerge, bipartite_soft_matching, merge_wavg, r_for_keep_ratio, tokens_after,
)
from aurora.registry import MERGE, ORDER


def test_paper_r_and_token_counts():
    assert r_for_keep_ratio(576, 24, 0.1) == 21
    assert r_for_keep_ratio(576, 24, 1.0) == 0
    assert r_for_keep_ratio(576, 0, 0.1) == 0  # no layer runs (feature_layer 0)
    # the paper's trace 576 -> 451 -> 325 -> 199 -> 73 counts one extra (class) token; ours has no class token
    assert [tokens_after(576, [21] * k) for k in (0, 6, 12, 18, 24)] == [576, 450, 324, 198, 72]
    assert tokens_after(32, [16]) == 17  # clamped: at most half the unprotected tokens per round
    assert tokens_after(32, [16], protect_first=False) == 16
    with pytest.raises(ValueError, match="keep_ratio"):
        r_for_keep_ratio(576, 24, 0.0)


def reference_matching(metric, r, protect_first):
    """Straightforward per-token loops: the most similar B partner of every A token, r best pairs merged."""
    out = []
    for frame in metric:
        a, b = frame[0::2], frame[1::2]
        pairs = []
        for i in range(len(a)):
            if protect_first and i == 0:
                continue
            sims = [torch.nn.functional.cosine_similarity(a[i], b[j], dim=0).item() for j in range(len(b))]
            j = max(range(len(b)), key=lambda j: sims[j])
            pairs.append((sims[j], i, j))
        pairs.sort(key=lambda p: -p[0])
        out.append({(i, j) for _, i, j in pairs[:r]})
    return out


@pytest.mark.parametrize("protect_first", [True, False])
def test_matching_equals_loop_reference(protect_first):
    metric = torch.randn(3, 15, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = bipartite_soft_matching(metric, 4, protect_first)
    want = reference_matching(metric, 4, protect_first)
    for f in range(3):
        assert set(zip(m.merged[f].tolist(), m.into[f].tolist())) == want[f]
        assert sorted(m.merged[f].tolist() + m.kept[f].tolist()) == list(range(8))
        if protect_first:
            assert m.kept[f, 0] == 0


def test_merge_is_size_weighted_and_sizes_sum_to_patch_count():
    x = torch.randn(2, 10, 4, dtype=torch.float64)
    sizes = torch.tensor([[1.0, 2, 1, 3, 1, 1, 2, 1, 1, 1]] * 2, dtype=torch.float64)
    source = torch.eye(10, dtype=torch.float64).expand(2, 10, 10).contiguous()
    m = bipartite_soft_matching(x, 3)
    y, s, src = merge_wavg(x, sizes, m, source)
    assert y.shape == (2, 7, 4) and torch.allclose(s.sum(1), sizes.sum(1))
    assert torch.allclose((src * sizes[:, None, :]).sum(-1), s) and torch.all(src.sum(1) == 1)
    # every output token is the size-weighted mean of the inputs its source map names
    for f in range(2):
        for t in range(7):
            members = src[f, t].nonzero().flatten()
            w = sizes[f, members]
            assert torch.allclose(y[f, t], (x[f, members] * w[:, None]).sum(0) / w.sum())
            assert s[f, t] == w.sum()


def test_orderings_are_stable_per_frame_permutations_with_protected_first():
    sizes = torch.tensor([[5.0, 1, 3, 1, 2, 3, 1], [1.0, 4, 4, 1, 9, 1, 2]])
    asc = ORDER.get("size_ascending")(sizes, True, None)
    desc = ORDER.get("size_descending")(sizes, True, None)
    assert asc.tolist() == [[0, 1, 3, 6, 4, 2, 5], [0, 3, 5, 6, 1, 2, 4]]  # ties keep their order
    assert desc.tolist() == [[0, 2, 5, 4, 1, 3, 6], [0, 4, 1, 2, 6, 3, 5]]
    assert ORDER.get("size_ascending")(sizes, False, None)[0].tolist() == [1, 3, 6, 4, 2, 5, 0]
    assert ORDER.get("original")(sizes, True, None).tolist() == [list(range(7))] * 2
    r1 = ORDER.get("random")(sizes, True, torch.Generator().manual_seed(1))
    r1b = ORDER.get("random")(sizes, True, torch.Generator().manual_seed(1))
    r2 = ORDER.get("random")(sizes, True, torch.Generator().manual_seed(2))
    assert torch.equal(r1, r1b) and not torch.equal(r1, r2)
    for perm in (asc, desc, r1, r2):
        assert torch.all(perm[:, 0] == 0)
        assert torch.equal(perm.sort(1).values, torch.arange(7).expand(2, 7))


@pytest.mark.parametrize("order", ["size_ascending", "size_descending", "original", "random"])
def test_merge_step_reorders_each_frame(order):
    x = torch.randn(3, 20, 8)
    merge = ToMeMerge(r=5, order=order, trace_source=True)
    y, s, src = merge(x, x, torch.ones(3, 20), torch.eye(20).expand(3, 20, 20).contiguous(), 5)
    assert y.shape == (3, 15, 8) and torch.all(s.sum(1) == 20)
    assert torch.equal(src.sum(-1), s)
    if order == "size_ascending":
        assert torch.all(s[:, 1:].diff(dim=1) >= 0)
    if order == "size_descending":
        assert torch.all(s[:, 1:].diff(dim=1) <= 0)
    assert torch.all(src[:, 0, 0] == 1)  # the protected first patch stays first


def test_schedules_and_registry():
    assert ToMeMerge(keep_ratio=0.1).schedule(576, 24) == [21] * 24
    assert ToMeMerge(r=[4, 0, 2]).schedule(64, 3) == [4, 0, 2]
    assert ToMeMerge(r=[4, 0, 2]).tokens_per_frame(64, 3) == 58
    assert TokenMerge().tokens_per_frame(64, 3) == 64
    with pytest.raises(ValueError, match="3 entries for 2"):
        ToMeMerge(r=[1, 2, 3]).schedule(64, 2)
    assert isinstance(MERGE.build("none"), TokenMerge)
    with pytest.raises(KeyError, match="known token orderings: frame_then_size, original, random, size_ascending, size_descending, size_global"):
        ToMeMerge(order="sideways")
    with pytest.raises(KeyError, match="known merge strategies: none, pool, temporal, tome, tome_post"):
        MERGE.build("pool9")
