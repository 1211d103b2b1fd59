"""Merges beyond the paper's: post-encoder finalize (tome_post, pool), r schedules, position tie-break, and
correctness of the bipartite matching and proportional attention against straightforward references."""
import math

import pytest
import torch
import torch.nn.functional as F

from types import SimpleNamespace

from torch import nn

from aurora.components.merge.pool import PoolMerge
from aurora.components.merge.tome import (
    ToMeMerge, ToMePostMerge, TokenMerge, bipartite_soft_matching, keep_count, merge_wavg, r_for_keep_ratio,
    tokens_after,
)
from aurora.registry import MERGE, ORDER

# ---------------------------------------------------------------- references written with plain loops


def loop_matching(metric, sizes, x, r, protect_first):
    """Per frame: the set of (A index, B index) merged pairs, the kept A indices, and the merged tokens as
    {frozenset of original token indices: (size-weighted mean, size)}."""
    out = []
    for f in range(metric.shape[0]):
        n = metric.shape[1]
        a_idx, b_idx = list(range(0, n, 2)), list(range(1, n, 2))
        r_eff = max(0, min(r, (n - int(protect_first)) // 2))
        cands = []
        for i, ai in enumerate(a_idx):
            if protect_first and i == 0:
                continue
            best_j, best_s = None, -math.inf
            for j, bj in enumerate(b_idx):
                u, v = metric[f, ai], metric[f, bj]
                s = (u @ v).item() / (u.norm().item() * v.norm().item())
                if s > best_s:
                    best_j, best_s = j, s
            cands.append((best_s, i, best_j))
        cands.sort(key=lambda t: -t[0])
        pairs = {(i, j) for _, i, j in cands[:r_eff]}
        merged_a = {i for i, _ in pairs}
        kept = [i for i in range(len(a_idx)) if i not in merged_a]
        groups = {}
        for i in kept:
            groups[frozenset([a_idx[i]])] = [a_idx[i]]
        for j, bj in enumerate(b_idx):
            members = [bj] + [a_idx[i] for i, jj in pairs if jj == j]
            groups[frozenset(members)] = members
        tokens = {}
        for key, members in groups.items():
            w = sum(sizes[f, m].item() for m in members)
            mean = sum(x[f, m] * sizes[f, m] for m in members) / w
            tokens[key] = (mean, w)
        out.append((pairs, set(kept), tokens))
    return out


@pytest.mark.parametrize("protect_first", [True, False])
@pytest.mark.parametrize("n", [15, 16])
@pytest.mark.parametrize("r", [0, 1, 3, 7, 20])
def test_bipartite_matching_and_merge_equal_loop_reference(protect_first, n, r):
    g = torch.Generator().manual_seed(100 * n + r)
    metric = torch.randn(2, n, 5, generator=g, dtype=torch.float64)
    x = torch.randn(2, n, 3, generator=g, dtype=torch.float64)
    sizes = torch.randint(1, 5, (2, n), generator=g).to(torch.float64)
    source = torch.eye(n, dtype=torch.float64).expand(2, n, n).contiguous()
    m = bipartite_soft_matching(metric, r, protect_first)
    y, s, src = merge_wavg(x, sizes, m, source)
    want = loop_matching(metric, sizes, x, r, protect_first)
    for f, (pairs, kept, tokens) in enumerate(want):
        assert set(zip(m.merged[f].tolist(), m.into[f].tolist())) == pairs
        assert set(m.kept[f].tolist()) == kept
        if protect_first:
            assert m.kept[f, 0] == 0 and src[f, 0, 0] == 1
        assert y.shape[1] == len(tokens) == n - len(pairs)
        for t in range(y.shape[1]):
            key = frozenset(src[f, t].nonzero().flatten().tolist())
            mean, w = tokens[key]
            assert torch.allclose(y[f, t], mean, atol=1e-12) and s[f, t] == w


# ---------------------------------------------------------------- a tiny ViT on the encoders' shared layer loop


class TinyAttention(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(c, c) for _ in range(4))
        self.scale = (c // heads) ** -0.5


class TinyLayer(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.self_attn = TinyAttention(c, heads)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))


class TinyPatches(nn.Module):
    def __init__(self, c, patch):
        super().__init__()
        self.conv = nn.Conv2d(3, c, patch, patch)

    def forward(self, pixels, interpolate_pos_encoding=True):
        return self.conv(pixels).flatten(2).transpose(1, 2)


def tiny_vit(merge=None, layers=3, c=32, heads=2, patch=8):
    """The encoders' shared layer loop (MergingViT: proportional attention, merge, finalize) on small plain
    modules laid out like the Hugging Face ones."""
    from aurora.components.vision import base
    config = SimpleNamespace(num_hidden_layers=layers, hidden_size=c, num_attention_heads=heads, patch_size=patch)
    torch.manual_seed(0)
    return base.MergingViT(config, TinyPatches(c, patch), [TinyLayer(c, heads) for _ in range(layers)],
                           feature_layer=-1, merge=merge).eval()


# ---------------------------------------------------------------- proportional attention


def test_proportional_attention_direct_softmax():
    """softmax(q.k + log s) over tokens with sizes equals plain softmax over the tokens repeated s times."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, generator=g, dtype=torch.float64)
    k = torch.randn(5, 8, generator=g, dtype=torch.float64)
    v = torch.randn(5, 3, generator=g, dtype=torch.float64)
    sizes = torch.tensor([1, 3, 1, 4, 2], dtype=torch.float64)
    rep = sizes.long()
    plain = torch.softmax(q @ k.repeat_interleave(rep, 0).T, -1) @ v.repeat_interleave(rep, 0)
    prop = torch.softmax(q @ k.T + sizes.log(), -1) @ v
    assert torch.allclose(plain, prop, atol=1e-12)
    # the same through sdpa with the additive bias, as the encoders call it
    sdpa = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=sizes.log()[None, None], scale=1.0)
    assert torch.allclose(sdpa[0], plain, atol=1e-12)


def test_encoder_attention_merged_duplicates_equal_unmerged():
    """Two identical tokens merged by ToMe into one of size 2, under the encoder's proportional attention,
    give the other tokens exactly what they got from the two copies; also a token of size 2 repeated 3 times
    equals one token of size 6."""
    enc = tiny_vit(layers=1).double()
    layer = enc.layers[0]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, 32, generator=g, dtype=torch.float64)
    x[:, 5] = x[:, 2]  # A token 2 (index 1 of A) duplicates B token 5 (index 2 of B): cosine 1, merged first
    with torch.no_grad():
        full, keys = enc.attention(layer, x, None)
        m = bipartite_soft_matching(keys, 1)
        assert m.merged.tolist() == [[1]] and m.into.tolist() == [[2]]
        xm, sm, _ = merge_wavg(x, torch.ones(1, 8, dtype=torch.float64), m)
        merged, _ = enc.attention(layer, xm, sm)
        # the unmerged outputs put in the merge's layout (the pair's two equal outputs averaged into one)
        ym, _, _ = merge_wavg(full, torch.ones(1, 8, dtype=torch.float64), m)
        others = [i for i in range(7) if sm[0, i] == 1]  # every token but the merged pair
        assert len(others) == 6
        assert torch.allclose(merged[:, others], ym[:, others], atol=1e-10)
        # size-2 token repeated 3 times == size 6
        y = x[:, :5]
        dup = torch.cat([y, y[:, 3:4].expand(1, 2, 32)], 1)
        s_dup = torch.tensor([[1.0, 1, 1, 2, 1, 2, 2]], dtype=torch.float64)
        a, _ = enc.attention(layer, dup, s_dup)
        b, _ = enc.attention(layer, y, torch.tensor([[1.0, 1, 1, 6, 1]], dtype=torch.float64))
    assert torch.allclose(a[:, :5], b, atol=1e-10)


# ---------------------------------------------------------------- a small encoder loop (the MergingViT protocol)


def run_encoder(merge, x, num_layers=3, seed=0):
    """The encoder protocol on a toy residual stack: schedule, merge per layer, finalize once."""
    g = torch.Generator().manual_seed(seed)
    f, n, c = x.shape
    ws = [torch.randn(c, c, generator=g, dtype=x.dtype) / c**0.5 for _ in range(2 * num_layers)]
    sizes = torch.ones(f, n, dtype=torch.float32)
    source = torch.eye(n).expand(f, n, n).contiguous() if getattr(merge, "trace_source", False) else None
    keys = None
    for i, r in enumerate(merge.schedule(n, num_layers)):
        keys = x @ ws[2 * i]
        if r > 0:
            x, sizes, source = merge(x, keys, sizes, source, r)
        x = x + torch.tanh(x @ ws[2 * i + 1])
    x, sizes, source = merge.finalize(x, x if keys is None else keys, sizes, source)
    return x, sizes, source


IDENTITY_SPECS = [
    {"name": "tome", "keep_ratio": 1.0},
    {"name": "tome", "r": 0},
    {"name": "tome", "r": [0, 0, 0]},
    {"name": "tome", "keep_ratio": 1.0, "schedule": "exact"},
    {"name": "tome", "keep_ratio": 1.0, "schedule": "front"},
    {"name": "tome", "keep_ratio": 1.0, "schedule": "back", "tie_break": "position"},
    {"name": "tome_post", "keep_ratio": 1.0},
    {"name": "pool", "stride": 1},
]


@pytest.mark.parametrize("spec", IDENTITY_SPECS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_no_merging_is_bit_identical(spec):
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(3))
    want = run_encoder(MERGE.build("none"), x)[0]
    merge = MERGE.build(spec)
    got, sizes, _ = run_encoder(merge, x)
    assert torch.equal(got, want) and torch.all(sizes == 1)
    assert merge.tokens_per_frame(16, 3) == 16


ALL_SPECS = [
    {"name": "none"},
    {"name": "tome", "keep_ratio": 0.25},
    {"name": "tome", "keep_ratio": 0.1, "schedule": "front"},
    {"name": "tome", "keep_ratio": 0.3, "schedule": "back"},
    {"name": "tome", "keep_ratio": 0.2, "schedule": "exact"},
    {"name": "tome", "keep_ratio": 0.4, "schedule": "exact", "tie_break": "position", "order": "size_descending"},
    {"name": "tome", "r": [9, 0, 5]},
    {"name": "tome", "r": 40},  # clamped per round
    {"name": "tome_post", "keep_ratio": 0.1},
    {"name": "tome_post", "keep_ratio": 0.5, "tie_break": "position", "protect_first": False},
    {"name": "pool", "stride": 2},
    {"name": "pool", "stride": 3},
    {"name": "pool", "stride": 2, "kernel": 3},
]


@pytest.mark.parametrize("n", [64, 65, 49])
@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_sizes_sum_to_patch_count_and_counts_are_exact(spec, n):
    merge = MERGE.build(spec if spec["name"] == "none" else {**spec, "trace_source": True})
    merge.trace_source = True
    x = torch.randn(2, n, 8, generator=torch.Generator().manual_seed(n))
    y, sizes, source = run_encoder(merge, x)
    assert y.shape == (2, merge.tokens_per_frame(n, 3), 8)
    assert torch.allclose(sizes.sum(1), torch.full((2,), float(n)), atol=1e-4)
    assert torch.allclose(source.sum(-1), sizes, atol=1e-5)  # a token's size is the patches it holds
    assert torch.allclose(source.sum(1), torch.ones(2, n), atol=1e-6)  # every patch is held once in all
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("n,layers", [(576, 24), (729, 26), (64, 3), (196, 12), (50, 2), (17, 4)])
@pytest.mark.parametrize("keep", [0.05, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_exact_schedule_hits_the_exact_count(n, layers, keep):
    target = max(1, math.floor(keep * n + 0.5))
    for protect in (True, False):
        merge = ToMeMerge(keep_ratio=keep, schedule="exact", protect_first=protect)
        try:
            sched = merge.schedule(n, layers)
        except ValueError as err:
            # only when no schedule can reach the count: greedy removal (the most possible) still falls short
            m = n
            for _ in range(layers):
                m -= (m - int(protect)) // 2
            assert m > target and "cannot reach" in str(err)
            continue
        assert len(sched) == layers and sum(sched) == n - target
        # no round asks for more than it can do (the clamp never bites), so the count is exact
        m = n
        for r in sched:
            assert 0 <= r <= (m - int(protect)) // 2
            m -= r
        assert m == target == tokens_after(n, sched, protect) == merge.tokens_per_frame(n, layers)
        q, extra = divmod(n - target, layers)
        balanced = [q + 1] * extra + [q] * (layers - extra)
        if tokens_after(n, balanced, protect) == target:  # the per-round cap allows the near-constant r
            assert sched == balanced
        # as even as the cap allows: no move of one token between layers that differ by 2+ stays within the caps
        for hi in range(layers):
            for lo in range(layers):
                if sched[hi] - sched[lo] > 1:
                    moved = list(sched)
                    moved[hi] -= 1
                    moved[lo] += 1
                    m = n
                    fits = True
                    for r in moved:
                        fits &= r <= (m - int(protect)) // 2
                        m -= r
                    assert not fits, (sched, hi, lo)


def test_front_and_back_schedules():
    for n, layers, keep in [(576, 24, 0.1), (196, 12, 0.25), (729, 26, 0.5)]:
        r = r_for_keep_ratio(n, layers, keep)
        front = ToMeMerge(keep_ratio=keep, schedule="front").schedule(n, layers)
        back = ToMeMerge(keep_ratio=keep, schedule="back").schedule(n, layers)
        const = ToMeMerge(keep_ratio=keep).schedule(n, layers)
        assert const == [r] * layers
        assert sum(front) == sum(back) == r * layers  # same budget as the paper's constant r
        assert all(a >= b for a, b in zip(front, front[1:])) and front[0] > front[-1]
        assert all(a <= b for a, b in zip(back, back[1:])) and back[0] < back[-1]
        # the linear profile: r_l ~ 2R(L - l)/(L(L+1)) up to rounding
        for i, v in enumerate(front):
            assert abs(v - 2 * r * layers * (layers - i) / (layers * (layers + 1))) <= 1.0
        assert tokens_after(n, front) == tokens_after(n, back) == n - r * layers
    # the per-round maximum is respected: 64 tokens, 2 layers, 60 to go: front would want 40 then 20
    front = ToMeMerge(r=30, schedule="front").schedule(64, 2)
    assert front[0] <= 31 and tokens_after(64, front) == 64 - sum(front)
    assert ToMeMerge(r=[3, 1], protect_first=False).schedule(10, 2) == [3, 1]


def test_tome_post_counts_and_rounds():
    x = torch.randn(3, 64, 8, generator=torch.Generator().manual_seed(5))
    for keep, protect, want in [(0.1, True, 6), (0.5, True, 32), (0.01, True, 2), (0.01, False, 1), (0.3, False, 19)]:
        merge = ToMePostMerge(keep_ratio=keep, protect_first=protect, trace_source=True)
        assert merge.schedule(64, 4) == [0] * 4
        assert merge.tokens_per_frame(64, 4) == want
        assert want == max(keep_count(64, keep), 1 + int(protect))  # the keep count, or the fewest reachable
        src = torch.eye(64).expand(3, 64, 64).contiguous()
        y, s, src = merge.finalize(x, x @ torch.randn(8, 8, generator=torch.Generator().manual_seed(6)),
                                   torch.ones(3, 64), src)
        assert y.shape == (3, want, 8) and torch.all(s.sum(1) == 64)
        assert torch.equal(src.sum(-1), s)
        if protect:
            assert torch.all(src[:, 0, 0] == 1)
    assert ToMePostMerge(keep_ratio=0.1).rounds(64) == [31, 16, 8, 3]
    # one round of tome_post == one tome merge of the same r on the same keys
    k = torch.randn(3, 64, 8, generator=torch.Generator().manual_seed(7))
    post = ToMePostMerge(keep_ratio=0.75).finalize(x, k, torch.ones(3, 64), None)
    one = ToMeMerge(r=16)(x, k, torch.ones(3, 64), None, 16)
    assert torch.equal(post[0], one[0]) and torch.equal(post[1], one[1])


def test_pool_counts_values_and_grids():
    g = torch.Generator().manual_seed(8)
    for side, stride, kernel in [(8, 2, 2), (7, 2, 2), (8, 3, 3), (9, 2, 3), (24, 2, 2), (6, 4, 5)]:
        x = torch.randn(2, side * side, 4, generator=g, dtype=torch.float64)
        merge = PoolMerge(stride=stride, kernel=kernel)
        y, s, _ = merge.finalize(x, x, torch.ones(2, side * side, dtype=torch.float64), None)
        grid = x.transpose(1, 2).reshape(2, 4, side, side)
        want = F.avg_pool2d(grid, kernel, stride, ceil_mode=True, count_include_pad=False)
        assert y.shape[1] == merge.tokens_per_frame(side * side, 3) == want.shape[-1] * want.shape[-2]
        assert torch.allclose(y, want.flatten(2).transpose(1, 2), atol=1e-12)
        assert torch.allclose(s.sum(1), torch.full((2,), float(side * side), dtype=torch.float64))
        if kernel == stride:  # partition: sizes are the patches per cell
            ones = torch.ones(1, 1, side, side, dtype=torch.float64)
            counts = F.avg_pool2d(ones, kernel, stride, ceil_mode=True, divisor_override=1).flatten()
            assert torch.equal(s[0], counts)
    assert PoolMerge(stride=2).tokens_per_frame(576, 24) == 144
    assert PoolMerge(stride=2).tokens_per_frame(577, 24) == 145  # class token kept in front
    # class token in front stays as it is
    x = torch.randn(1, 17, 4, generator=g)
    y, s, _ = PoolMerge(stride=2).finalize(x, x, torch.ones(1, 17), None)
    assert y.shape == (1, 5, 4) and torch.equal(y[:, 0], x[:, 0]) and s.tolist() == [[1.0, 4, 4, 4, 4]]
    assert torch.allclose(y[0, 1], x[0, [1, 2, 5, 6]].mean(0), atol=1e-6)
    # non-square grids need the shape
    with pytest.raises(ValueError, match=r"48 tokens are not a square patch grid.*grid: \[rows, cols\]"):
        PoolMerge().tokens_per_frame(48, 2)
    with pytest.raises(ValueError, match="17 tokens are not a square patch grid; give"):
        PoolMerge(protect_first=False).tokens_per_frame(17, 2)
    assert PoolMerge(grid=[6, 8]).tokens_per_frame(48, 2) == 12
    assert PoolMerge(grid=[6, 8]).tokens_per_frame(49, 2) == 13
    with pytest.raises(ValueError, match="grid 6x8 .* does not match 50 tokens"):
        PoolMerge(grid=[6, 8]).tokens_per_frame(50, 2)
    with pytest.raises(ValueError, match="kernel must be an integer >= stride"):
        PoolMerge(stride=3, kernel=2)


# ---------------------------------------------------------------- tie-break by position


def test_position_tie_break():
    sizes = torch.tensor([[5.0, 1, 3, 1, 2, 3, 1]])
    position = torch.tensor([[0, 40, 9, 3, 7, 2, 20]])
    asc = ORDER.get("size_ascending")
    desc = ORDER.get("size_descending")
    assert asc(sizes, True, None).tolist() == [[0, 1, 3, 6, 4, 2, 5]]  # default: the merge's order on ties
    assert asc(sizes, True, None, position=position).tolist() == [[0, 3, 6, 1, 4, 5, 2]]
    assert desc(sizes, True, None, position=position).tolist() == [[0, 5, 2, 4, 3, 6, 1]]
    assert asc(sizes, False, None, position=position).tolist() == [[3, 6, 1, 4, 5, 2, 0]]
    # through the merge: equal sizes end up in first-patch order, and the protected patch stays first
    x = torch.randn(2, 30, 6, generator=torch.Generator().manual_seed(9))
    merge = ToMeMerge(r=8, tie_break="position")
    assert merge.trace_source  # position needs source maps, so the merge asks the encoder for them
    src = torch.eye(30).expand(2, 30, 30).contiguous()
    y, s, src = merge(x, x, torch.ones(2, 30), src, 8)
    first = torch.where(src > 0, torch.arange(30), 30).amin(-1)
    assert torch.all(first[:, 0] == 0)
    for f in range(2):
        for t in range(1, y.shape[1] - 1):
            assert s[f, t] < s[f, t + 1] or (s[f, t] == s[f, t + 1] and first[f, t] < first[f, t + 1])
    with pytest.raises(ValueError, match="tie_break 'position' needs source maps"):
        merge(x, x, torch.ones(2, 30), None, 8)


# ---------------------------------------------------------------- names and errors


def test_unknown_names_are_listed():
    with pytest.raises(ValueError, match="unknown r schedule 'sideways'; known schedules: back, constant, exact, front"):
        ToMeMerge(keep_ratio=0.5, schedule="sideways")
    with pytest.raises(ValueError, match="unknown tie_break 'age'; known: merge_order, position"):
        ToMeMerge(tie_break="age")
    with pytest.raises(KeyError, match="known merge strategies: none, pool, temporal, tome, tome_post"):
        MERGE.build("pool9")
    with pytest.raises(KeyError, match="known token orderings: frame_then_size, original, random, size_ascending, size_descending, size_global"):
        ToMePostMerge(order="time_reversed")
    with pytest.raises(ValueError, match="explicit r list is its own schedule"):
        ToMeMerge(r=[1, 2], schedule="front")
    with pytest.raises(ValueError, match="'exact' takes its count from keep_ratio"):
        ToMeMerge(r=3, schedule="exact")
    with pytest.raises(ValueError, match="cannot reach 1 tokens .* 2 is the fewest"):
        ToMeMerge(keep_ratio=0.01, schedule="exact").schedule(64, 8)
    with pytest.raises(ValueError, match="cannot reach 6 tokens .* 17 is the fewest"):
        ToMeMerge(keep_ratio=0.1, schedule="exact").schedule(64, 2)
    assert isinstance(MERGE.build({"name": "tome_post", "keep_ratio": 0.5}), TokenMerge)
    assert TokenMerge().finalize(1, 2, 3, 4) == (1, 3, 4)


# ---------------------------------------------------------------- through the encoder loop, when it calls finalize


def test_through_encoder_loop():
    calls = []

    class Spy(TokenMerge):
        def finalize(self, x, metric, sizes, source):
            calls.append((x.shape, metric.shape))
            return x, sizes, source

    enc = tiny_vit()
    enc.merge = Spy()
    with torch.no_grad():
        enc(torch.randn(1, 3, 32, 32))
    assert len(calls) == 1 and calls[0][0][:2] == calls[0][1][:2]  # once; metric lined up with the tokens
    pixels = torch.randn(2, 3, 32, 48)  # a 4x6 grid: 24 patches
    for spec in [{"name": "tome_post", "keep_ratio": 0.25}, {"name": "pool", "stride": 2, "grid": [4, 6]},
                 {"name": "tome", "keep_ratio": 0.3, "schedule": "exact", "tie_break": "position"},
                 {"name": "tome", "keep_ratio": 0.2, "schedule": "back"}]:
        enc = tiny_vit({**spec, "trace_source": True})
        with torch.no_grad():
            out = enc(pixels)
        assert out.tokens.shape == (2, enc.tokens_per_frame(32, 48), 32)
        assert torch.allclose(out.sizes.sum(1), torch.full((2,), 24.0))
        assert torch.allclose(out.source.sum(1), torch.ones(2, 24))
        assert torch.allclose(out.source.sum(-1), out.sizes)
    assert tiny_vit({"name": "tome_post", "keep_ratio": 0.25}).tokens_per_frame(32, 48) == 6
    assert tiny_vit({"name": "tome", "keep_ratio": 0.3, "schedule": "exact"}).tokens_per_frame(32, 48) == 7
    assert tiny_vit({"name": "pool", "grid": [4, 6]}).tokens_per_frame(32, 48) == 6
    # tome_post on the encoder equals the plain encoder's output merged by finalize with its last keys
    plain, post = tiny_vit(), tiny_vit({"name": "tome_post", "keep_ratio": 0.5})
    with torch.no_grad():
        x = plain(pixels).tokens
        h = plain.layers[-1]
        f, n, c = x.shape
        # rerun the last layer's attention on its input to get the keys the encoder hands to finalize
        y = plain.embed(pixels)
        for layer in plain.layers[:-1]:
            y, _ = plain.attention(layer, y, None)
            y = y + layer.mlp(layer.layer_norm2(y))
        _, keys = plain.attention(h, y, None)
        want = post.merge.finalize(x, keys, torch.ones(f, n), None)
        got = post(pixels)
    assert torch.allclose(got.tokens, want[0], atol=1e-6) and torch.equal(got.sizes, want[1])
