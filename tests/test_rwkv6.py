"""RWKV-6: the WKV kernels against each other and fla's reference, the model against the `rwkv` package."""
import os

import pytest
import torch

from aurora.components.rnn.rwkv6 import RWKV6, load_official_state_dict
from aurora.kernels.rwkv6 import wkv6, wkv6_chunked, wkv6_recurrent
from aurora.registry import RNN


def inputs(b=2, t=37, h=3, n=8, strong=False, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(b, t, h, n, generator=g, dtype=dtype) for _ in range(3))
    raw = torch.randn(b, t, h, n, generator=g, dtype=dtype)
    w = -torch.exp(raw * 2 + 4) if strong else -torch.exp(raw - 1)  # log decay; strong: down to about -1000
    u = torch.randn(h, n, generator=g, dtype=dtype)
    s0 = torch.randn(b, h, n, n, generator=g, dtype=dtype)
    return r, k, v, w, u, s0


@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("chunk", [1, 8, 16, 64])
def test_chunked_equals_recurrent_fp64(strong, chunk):
    r, k, v, w, u, s0 = inputs(strong=strong)
    if strong:
        assert w.min() < -200
    o1, s1 = wkv6_recurrent(r, k, v, w, u, s0)
    o2, s2 = wkv6_chunked(r, k, v, w, u, s0, chunk_size=chunk)
    assert torch.allclose(o1, o2, rtol=1e-5, atol=1e-8)
    assert torch.allclose(s1, s2, rtol=1e-5, atol=1e-8)
    assert torch.isfinite(o2).all()


def test_matches_fla_naive_reference():
    from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

    r, k, v, w, u, s0 = inputs(dtype=torch.float32)
    ref_o, ref_s = naive_recurrent_rwkv6(*(x.transpose(1, 2) for x in (r, k, v, w)), u, scale=1.0,
                                         initial_state=s0, output_final_state=True)
    o, s = wkv6(r, k, v, w, u, s0)
    assert torch.allclose(o, ref_o.transpose(1, 2), rtol=1e-4, atol=1e-4)
    assert torch.allclose(s, ref_s, rtol=1e-4, atol=1e-4)


def test_state_carried_across_pieces_equals_one_shot_kernel():
    r, k, v, w, u, s0 = inputs(t=50)
    full, s_full = wkv6_chunked(r, k, v, w, u, s0)
    outs, s = [], s0
    for a, b in [(0, 7), (7, 8), (8, 33), (33, 50)]:
        o, s = wkv6(*(x[:, a:b] for x in (r, k, v, w)), u, s)
        outs.append(o)
    assert torch.allclose(torch.cat(outs, 1), full, rtol=1e-6, atol=1e-9)
    assert torch.allclose(s, s_full, rtol=1e-6, atol=1e-9)


def test_unknown_backend_lists_known():
    r, k, v, w, u, _ = inputs(t=2)
    with pytest.raises(ValueError, match="known backends: auto, chunked, recurrent, fla"):
        wkv6(r, k, v, w, u, backend="cuda-magic")


def randomised(model, scale=0.1, seed=0):
    """Perturb every weight (zero-initialised projections included) so each code path carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("time_decay"):
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def tiny(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    args = dict(vocab_size=500, d_model=64, n_layer=2, head_size=16) | kw
    return randomised(RWKV6(**args)).to(dtype).eval()


def test_model_pieces_equal_one_shot():
    m = tiny()
    x = torch.randn(2, 41, 64, dtype=torch.float64)
    full, s_full = m(x)
    outs, s = [], None
    for a, b in [(0, 5), (5, 6), (6, 41)]:
        h, s = m(x[:, a:b], s)
        outs.append(h)
    assert torch.allclose(torch.cat(outs, 1), full, rtol=1e-6, atol=1e-9)
    for got, want in zip(s, s_full):
        for a, b in zip(got, want):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def test_step_form_equals_chunked_form():
    chunked, stepped = tiny(backend="chunked"), tiny(backend="recurrent")
    x = torch.randn(1, 23, 64, dtype=torch.float64)
    a, _ = chunked(x)
    b, _ = stepped(x)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def test_gradients_reach_parameters_and_initial_state():
    m = tiny().train()
    x = torch.randn(2, 19, 64, dtype=torch.float64, requires_grad=True)
    state = [tuple(t.clone().requires_grad_(True) for t in layer) for layer in m.init_state(2, dtype=torch.float64)]
    h, _ = m(x, state)
    h.pow(2).sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for layer in state for t in layer)
    silent = [n for n, p in m.named_parameters() if n not in ("emb.weight", "head.weight") and
              (p.grad is None or p.grad.abs().sum() == 0)]
    assert not silent, silent


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, ckpt = tiny().train(), tiny(grad_checkpoint=True).train()
    x = torch.randn(2, 19, 64, dtype=torch.float64)
    for m in (plain, ckpt):
        m(x)[0].pow(2).sum().backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-8, atol=1e-12), n


def test_registry_entry():
    assert isinstance(RNN.build({"name": "rwkv6", "vocab_size": 10, "d_model": 32, "n_layer": 1, "head_size": 16}), RWKV6)
    with pytest.raises(KeyError, match="known rnn backbones: .*rwkv6"):
        RNN.build({"name": "rwkv9"})


def test_logits_equal_the_rwkv_package_on_an_official_checkpoint(tmp_path, monkeypatch):
    """Independent check: BlinkDL's `rwkv` package runs the same official-format .pth file."""
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    from rwkv.model import RWKV

    ours = tiny(torch.float32, vocab_size=1000, d_model=128, head_size=32)
    path = tmp_path / "rwkv6-tiny.pth"
    torch.save({k: v.clone() for k, v in ours.state_dict().items()}, path)
    ref = RWKV(model=str(path), strategy="cpu fp32", verbose=False)
    tokens = torch.randint(0, 1000, (24,), generator=torch.Generator().manual_seed(1)).tolist()
    want, _ = ref.forward(tokens, None, full_output=True)
    with torch.no_grad():
        hidden, _ = ours(ours.embed(torch.tensor([tokens])))
        got = ours.logits(hidden)[0]
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
        # and in pieces, each side carrying its own state
        h1, s = ours(ours.embed(torch.tensor([tokens[:10]])))
        h2, _ = ours(ours.embed(torch.tensor([tokens[10:]])), s)
    w1, st = ref.forward(tokens[:10], None)
    w2, _ = ref.forward(tokens[10:], st)
    assert torch.allclose(ours.logits(h2)[0, -1], w2, rtol=1e-4, atol=1e-4 * w2.abs().max().item())

    # loading the official file into a fresh model reproduces it; a wrong architecture names the keys
    fresh = RWKV6(vocab_size=1000, d_model=128, n_layer=2, head_size=32)
    load_official_state_dict(fresh, torch.load(path, weights_only=True))
    assert torch.equal(fresh.head.weight, ours.head.weight)
    with pytest.raises(ValueError, match="missing: blocks.2"):
        load_official_state_dict(RWKV6(vocab_size=1000, d_model=128, n_layer=3, head_size=32),
                                 torch.load(path, weights_only=True))
