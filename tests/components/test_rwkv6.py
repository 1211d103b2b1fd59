"""RWKV-6: the WKV kernels against each other and fla's references, the model against BlinkDL's `rwkv` package."""
from functools import partial

import pytest
import torch

from _backbones import close
from _backbones import tiny as tiny_backbone
from aurora.components.rnn.rwkv6 import RWKV6, load_official_state_dict
from aurora.kernels.rwkv6 import wkv6, wkv6_chunked, wkv6_recurrent


def inputs(b=2, t=37, h=3, n=8, decay="mixed", dtype=torch.float64, seed=0):
    """Random r, k, v, log decay w (B, T, H, N), bonus u (H, N) and a nonzero initial state (B, H, N, N)."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(b, t, h, n, generator=g, dtype=torch.float64) for _ in range(3))
    raw = torch.randn(b, t, h, n, generator=g, dtype=torch.float64)
    if decay == "strong":  # every channel forgets almost everything each step: log decay in [-200, -50]
        w = -(50 + 150 * torch.rand(b, t, h, n, generator=g, dtype=torch.float64))
    elif decay == "mixed":  # from ~-0.01 (long memory) down to ~-1000 (none) within one tensor
        w = -torch.exp(raw * 2.5)
    else:
        w = -torch.exp(raw - 2)
    u = torch.randn(h, n, generator=g, dtype=torch.float64)
    s0 = torch.randn(b, h, n, n, generator=g, dtype=torch.float64)
    return tuple(x.to(dtype) for x in (r, k, v, w, u, s0))


# ---------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("decay", ["weak", "mixed", "strong"])
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_equals_recurrent_fp64(decay, chunk):
    r, k, v, w, u, s0 = inputs(decay=decay)  # T = 37: not a multiple of any chunk size but 1
    if decay == "strong":
        assert w.max() <= -50 and w.min() < -190
    o1, s1 = wkv6_recurrent(r, k, v, w, u, s0, scale=0.7)
    o2, s2 = wkv6_chunked(r, k, v, w, u, s0, chunk_size=chunk, scale=0.7)
    assert o2.dtype == s2.dtype == torch.float64
    assert torch.isfinite(o2).all() and torch.isfinite(s2).all()
    assert close(o2, o1, 1e-5) and close(s2, s1, 1e-5)


def test_chunked_recurrent_differ_when_they_should():
    """The comparison above is not vacuous: the bonus, the state and the decay all move the output."""
    r, k, v, w, u, s0 = inputs()
    base, _ = wkv6_chunked(r, k, v, w, u, s0)
    for changed in (wkv6_chunked(r, k, v, w, u * 1.1, s0)[0], wkv6_chunked(r, k, v, w, u, s0 * 1.1)[0],
                    wkv6_chunked(r, k, v, w * 0.9, u, s0)[0]):
        assert not close(changed, base, 1e-3)


def test_strong_decay_fp32_forward_and_backward_stay_exact():
    """fp32 with log decays of -50..-200 per token: no overflow, values and gradients match fp64 steps."""
    r, k, v, w, u, s0 = inputs(decay="strong", t=40)
    w = torch.cat([w[..., :4], -torch.exp(torch.randn_like(w[..., 4:]) - 2)], -1)  # some long-memory channels too

    def run(fn, dtype):
        xs = [x.to(dtype).requires_grad_(True) for x in (r, k, v, w, u, s0)]
        o, s = fn(*xs)
        (o * torch.linspace(-1, 1, o.numel(), dtype=dtype).view_as(o)).sum().add(s.pow(2).sum()).backward()
        return o, s, [x.grad for x in xs]

    o32, s32, g32 = run(lambda *a: wkv6_chunked(*a, chunk_size=16), torch.float32)
    o64, s64, g64 = run(wkv6_recurrent, torch.float64)
    assert o32.dtype == torch.float32
    assert all(torch.isfinite(g).all() for g in g32)
    assert close(o32, o64, 1e-4) and close(s32, s64, 1e-4)
    for name, a, b in zip("r k v w u s0".split(), g32, g64):
        assert close(a, b, 1e-4), name


def test_both_forms_equal_fla_naive_references():
    """fla's pure-PyTorch references (they compute in fp32 internally, head-first layout)."""
    from fla.ops.rwkv6.chunk_naive import naive_chunk_rwkv6
    from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

    def hf(x):
        return x.transpose(1, 2)

    r, k, v, w, u, s0 = inputs(t=37, decay="weak")
    ref_o, ref_s = naive_recurrent_rwkv6(*map(hf, (r, k, v, w)), u, scale=0.5, initial_state=s0,
                                         output_final_state=True)
    for o, s in (wkv6_recurrent(r, k, v, w, u, s0, scale=0.5), wkv6_chunked(r, k, v, w, u, s0, scale=0.5)):
        assert close(o, hf(ref_o), 1e-4) and close(s, ref_s, 1e-4)

    r, k, v, w, u, _ = inputs(t=64, decay="weak", seed=1)  # the chunk reference: no state, scale 1, T % 32 == 0
    ref_o = hf(naive_chunk_rwkv6(*map(hf, (r, k, v, w)), u, chunk_size=32))
    for o, _ in (wkv6_recurrent(r, k, v, w, u), wkv6_chunked(r, k, v, w, u)):
        assert close(o, ref_o, 1e-4)


def test_kernel_state_carried_across_pieces_equals_one_shot():
    r, k, v, w, u, s0 = inputs(t=50)
    full, s_full = wkv6_chunked(r, k, v, w, u, s0)
    outs, s = [], s0
    for a, b in [(0, 7), (7, 8), (8, 33), (33, 50)]:  # the T == 1 piece goes through the step form
        o, s = wkv6(*(x[:, a:b] for x in (r, k, v, w)), u, s)
        outs.append(o)
    assert close(torch.cat(outs, 1), full, 1e-9) and close(s, s_full, 1e-9)


def test_dispatch_dtypes_and_unknown_backend():
    r, k, v, w, u, s0 = inputs(t=9, dtype=torch.bfloat16)
    for backend in ("auto", "chunked", "recurrent"):
        o, s = wkv6(r, k, v, w, u, s0, backend=backend)
        assert o.dtype == torch.bfloat16 and s.dtype == torch.float32 and o.shape == v.shape
    xs = inputs(t=9, dtype=torch.float32)
    for backend in ("chunked", "recurrent"):  # autocast does not drop the float32 arithmetic to bf16
        want = wkv6(*xs, backend=backend)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = wkv6(*xs, backend=backend)
        assert got[1].dtype == torch.float32 and torch.allclose(got[0], want[0], atol=1e-6)
        assert torch.allclose(got[1], want[1], atol=1e-6)
    with pytest.raises(ValueError, match="known backends: auto, chunked, recurrent, fla"):
        wkv6(r, k, v, w, u, backend="cuda-magic")
    with pytest.raises(ValueError, match="u must be"):
        wkv6(r, k, v, w, u[:1])


# ------------------------------------------------------------------------------------------------ model


tiny = partial(tiny_backbone, "rwkv6")  # pieces, forms, gradients, empty input: tests/components/test_backbone_contract.py


def test_official_initialisation():
    m = RWKV6(vocab_size=300, d_model=64, n_layer=4, head_size=16)
    b0, b3 = m.blocks[0], m.blocks[3]
    for zero in (b0.att.output.weight, b0.ffn.value.weight, b0.ffn.receptance.weight, b0.att.time_maa_w1,
                 b0.att.time_decay_w1):
        assert zero.abs().max() == 0
    assert abs(b0.att.time_decay.min().item() + 6) < 1e-6 and abs(b0.att.time_decay.max().item() + 1) < 1e-6
    assert torch.allclose(b3.att.ln_x.weight, torch.tensor(1.0)) and torch.allclose(b0.att.ln_x.weight,
                                                                                    torch.tensor(0.25 ** 0.7))
    assert b0.att.time_maa_x[0, 0, 0] == 1 and b3.att.time_maa_v.max() < b0.att.time_maa_v.max()
    assert m.emb.weight.abs().max() <= 1e-4 and b0.att.ln_x.eps == 64e-5
    assert b0.ffn.key.weight.shape == (224, 64)  # int(64 * 3.5) // 32 * 32


def test_logits_and_states_equal_the_rwkv_package_on_an_official_checkpoint(tmp_path, monkeypatch):
    """Independent check: BlinkDL's `rwkv` package runs the same official-format .pth file."""
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    from rwkv.model import RWKV

    vocab = 1000
    ours = tiny(torch.float32, vocab_size=vocab, d_model=128, head_size=64)
    # fp32 file: the package pre-applies ln0 to the embedding in the file's dtype, bf16 would round it
    path = tmp_path / "rwkv6-tiny.pth"
    torch.save({k: v.clone() for k, v in ours.state_dict().items()}, path)
    ref = RWKV(model=str(path)[: -len(".pth")], strategy="cpu fp32", verbose=False)
    assert ref.version == 6.0
    tokens = torch.randint(0, vocab, (24,), generator=torch.Generator().manual_seed(1)).tolist()

    want, want_state = ref.forward(tokens, None, full_output=True)
    with torch.no_grad():
        hidden, state = ours(ours.embed(torch.tensor([tokens])))
        got = ours.logits(hidden)[0]
    assert got.std() > 0.1 and close(got, want, 1e-4)
    ours_flat = [t[0] for layer in state for t in layer]  # the package keeps 3 tensors per layer, same order
    assert len(ours_flat) == len(want_state)
    for a, b in zip(ours_flat, want_state):
        assert close(a, b, 1e-4)

    # in three pieces (the single token takes the package's one-token path and our step form)
    st, outs = None, []
    with torch.no_grad():
        s = None
        for a, b in [(0, 10), (10, 11), (11, 24)]:
            h, s = ours(ours.embed(torch.tensor([tokens[a:b]])), s)
            outs.append(ours.logits(h)[0, -1])
            w, st = ref.forward(tokens[a:b], st)
            assert close(outs[-1], w, 1e-4)
    assert close(outs[-1], want[-1], 1e-4)


def test_official_checkpoint_loads_and_wrong_shapes_are_named(tmp_path):
    ours = tiny(torch.float32, vocab_size=300, d_model=64, head_size=32)
    path = tmp_path / "official.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in ours.state_dict().items()}, path)  # official files: bf16
    sd = torch.load(path, weights_only=True)
    fresh = RWKV6.from_official(sd)
    assert (fresh.d_model, fresh.vocab_size, fresh.n_layer, fresh.n_head) == (64, 300, 2, 2)
    assert fresh.head.weight.dtype == torch.float32
    assert torch.equal(fresh.head.weight, ours.head.weight.to(torch.bfloat16).float())
    with pytest.raises(ValueError, match="missing: blocks.2"):
        load_official_state_dict(RWKV6(vocab_size=300, d_model=64, n_layer=3, head_size=32), sd)
    with pytest.raises(ValueError, match="wrong shape: .*time_faaaa"):
        load_official_state_dict(RWKV6(vocab_size=300, d_model=64, n_layer=2, head_size=16), sd)
    with pytest.raises(ValueError, match="not an official RWKV-6 checkpoint"):
        RWKV6.from_official({"emb.weight": sd["emb.weight"]})



@pytest.mark.parametrize("chunk,t", [(1, 3), (4, 11), (8, 19)])
def test_chunked_backward_is_the_exact_gradient(chunk, t):
    """The chunked form's own backward (a custom autograd Function) against finite differences, in fp64, with a
    scale, an initial state and a length that is no multiple of the chunk."""
    r, k, v, w, u, s0 = inputs(b=1, t=t, h=2, n=3, decay="weak")
    xs = [x.clone().requires_grad_(True) for x in (r, k, v, w, u, s0)]
    assert torch.autograd.gradcheck(lambda *a: wkv6_chunked(*a, chunk_size=chunk, scale=0.7), xs, fast_mode=True)


def test_chunked_backward_over_several_groups_equals_recurrent_autograd():
    """Long enough for several passes over groups of chunks (4 x 8 rows x 16 tokens: 8 chunks a pass)."""
    r, k, v, w, u, s0 = inputs(b=4, t=300, h=8, n=4, decay="mixed")

    def run(fn):
        xs = [x.clone().requires_grad_(True) for x in (r, k, v, w, u, s0)]
        o, s = fn(*xs)
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum().add(s.pow(2).sum()).backward()
        return [o, s] + [x.grad for x in xs]

    want = run(lambda *a: wkv6_recurrent(*a, scale=0.5))
    got = run(lambda *a: wkv6_chunked(*a, chunk_size=16, scale=0.5))
    for name, a, b in zip("o s r k v w u s0".split(), got, want):
        assert close(a, b, 1e-9), name


def test_one_reference_and_dyadic_passes_mix_in_one_call_and_equal_the_steps(monkeypatch):
    """Passes whose chunks all decay by at most e^-20 take the one-reference masked product, the others the dyadic
    form: one call with both (weak decays first, strong after), fp64, outputs, state and every gradient."""
    import aurora.kernels.rwkv6 as K

    r, k, v, w, u, s0 = inputs(b=2, t=37, h=2, n=4, decay="weak")
    w = torch.where(torch.arange(37).view(1, -1, 1, 1) < 16, w.clamp(min=-2.0), -(50 + w.abs()))
    monkeypatch.setattr(K, "group_chunks", lambda b, h, L: 2)  # 5 chunks of 8: passes of 2, 2, 1 chunks
    calls = []
    real = K.dyadic_intra
    monkeypatch.setattr(K, "dyadic_intra", lambda *a, **kw: calls.append(1) or real(*a, **kw))

    def run(fn):
        xs = [x.clone().requires_grad_(True) for x in (r, k, v, w, u, s0)]
        o, s = fn(*xs)
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum().add(s.pow(2).sum()).backward()
        return [o, s] + [x.grad for x in xs]

    got = run(lambda *a: wkv6_chunked(*a, chunk_size=8, scale=0.7))
    assert len(calls) == 2  # the first pass (tokens 0-15, weak) took the one-reference product
    want = run(lambda *a: wkv6_recurrent(*a, scale=0.7))
    for name, a, b in zip("o s r k v w u s0".split(), got, want):
        assert close(a, b, 1e-9), name


def test_one_reference_fp32_at_the_threshold_stays_within_fp32_tolerance():
    """Chunk decays just inside e^-20 (the most the one-reference product accepts), fp32 against fp64 steps; the
    worst case for its factors exp(c_{t-1}) exp(-c_s): a strong decay first in each chunk, weak ones after (both
    factors far from 1, their product near it)."""
    r, k, v, w, u, s0 = inputs(b=2, t=64, h=2, n=8, decay="weak")
    weak = -0.9 / 15 * torch.rand(w.shape, generator=torch.Generator().manual_seed(1), dtype=w.dtype)
    w = torch.where(torch.arange(64).view(1, -1, 1, 1) % 16 == 0, -19.0, weak)

    def run(fn, dtype):
        xs = [x.to(dtype).requires_grad_(True) for x in (r, k, v, w, u, s0)]
        o, s = fn(*xs)
        (o * torch.linspace(-1, 1, o.numel(), dtype=dtype).view_as(o)).sum().add(s.pow(2).sum()).backward()
        return [o, s] + [x.grad for x in xs]

    got = run(lambda *a: wkv6_chunked(*a, chunk_size=16), torch.float32)
    want = run(wkv6_recurrent, torch.float64)
    for name, a, b in zip("o s r k v w u s0".split(), got, want):  # measured: <= 1.6e-6 (7.5e-6 at e^-80)
        assert close(a, b, 4e-6), name


@pytest.mark.parametrize("t", [1, 9])
def test_model_fast_parts_equal_plain_autograd(t):
    """The time mix's five-mix Function and the channel mix's squared ReLU against plain autograd, fp64 gradcheck."""
    from aurora.components.rnn.rwkv6 import _KeySquaredReLU, _MixFive, key_sqrelu, shift_delta

    g = torch.Generator().manual_seed(t)
    x, dx = (torch.randn(t, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    lora = torch.randn(t, 5 * 3, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(5, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    maa = torch.randn(5, 1, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_MixFive.apply, (x, dx, lora, w2, maa))
    xw, xkvrg = _MixFive.apply(x, dx, lora, w2, maa)
    want = x + dx * (torch.bmm(lora.view(t, 5, 3).transpose(0, 1), w2) + maa)
    assert close(xw, want[0], 1e-14) and close(xkvrg, want[1:], 1e-14)  # addcmul: a fused multiply-add
    xs = torch.randn(2, t, 6, generator=g, dtype=torch.float64, requires_grad=True)
    wk = torch.randn(7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_KeySquaredReLU.apply, (xs, wk))
    want = torch.relu(xs @ wk.t()) ** 2
    assert torch.equal(_KeySquaredReLU.apply(xs, wk), want)
    key = torch.nn.Linear(6, 7, bias=False, dtype=torch.float64)
    key.weight.data.copy_(wk.detach())
    with torch.no_grad():
        assert torch.equal(key_sqrelu(xs, key), want)
    seq = torch.randn(2, t, 6, generator=g, dtype=torch.float64)
    last = torch.randn(2, 6, generator=g, dtype=torch.float64)
    prev = torch.cat([torch.zeros(2, 1, 6, dtype=torch.float64), seq[:, :-1]], 1)
    assert torch.equal(shift_delta(seq, None), prev - seq)
    assert torch.equal(shift_delta(seq, last), torch.cat([last[:, None], seq[:, :-1]], 1) - seq)
    seq.requires_grad_(), last.requires_grad_()  # its own backward, with and without the carried token
    assert torch.autograd.gradcheck(shift_delta, (seq, last)) and torch.autograd.gradcheck(shift_delta, (seq, None))
    assert torch.equal(shift_delta(seq, last), torch.cat([last[:, None], seq[:, :-1]], 1) - seq)
