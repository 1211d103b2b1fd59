"""The contract every registered language backbone keeps (:class:`aurora.types.RecurrentLM`), run over the RNN
registry with each backbone's tiny float64 model (tests/_backbones.py): a sequence fed in pieces or token by token
gives what it gives at once, every part of the state matters, the two kernel forms agree, gradients reach every
parameter and the incoming state, gradient checkpointing recomputes each block with the same gradients, an empty
sequence passes the state through, and bad input is named. A backbone registered without a tiny configuration
fails here, naming itself."""
import re
import sys

import pytest
import torch
import torch.nn.functional as F

import aurora.types as aurora_types
from _backbones import TINY, close, run_in_pieces, spec, tiny
from aurora.registry import RNN

NAMES = RNN.names()
D = 64  # every tiny model's d_model


def contract_model(name: str, **kw):
    """The tiny model in the richest variant the contract runs (grouped heads, an untied head)."""
    return tiny(name, **(spec(name).contract | kw))


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def states_close(got, want, rtol) -> bool:
    return len(got) == len(want) and all(len(a) == len(b) and all(close(p, q, rtol) for p, q in zip(a, b))
                                         for a, b in zip(got, want))


def test_every_registered_backbone_has_a_tiny_config():
    missing = [n for n in NAMES if n not in TINY]
    assert not missing, f"registered rnn backbones without a tiny configuration in tests/_backbones.py: {missing}"
    assert set(TINY) <= set(NAMES), f"tiny configurations for unregistered backbones: {set(TINY) - set(NAMES)}"
    with pytest.raises(LookupError, match="'rwkv9' is registered but has no tiny configuration"):
        spec("rwkv9")


@pytest.mark.parametrize("name", NAMES)
def test_registry_builds_it_and_names_bad_choices(name):
    s = spec(name)
    built = RNN.build({"name": name, **s.config})
    assert isinstance(built, RNN.get(name))
    assert (built.d_model, built.vocab_size, built.n_layer) == (D, s.config["vocab_size"], 2)
    with pytest.raises(KeyError, match=f"known rnn backbones: .*{name}"):
        RNN.build({"name": name + "9"})
    with pytest.raises(ValueError, match=f"known backends: {re.escape(s.backends)}$"):
        RNN.build({"name": name, **s.config, "backend": "nope"})


@pytest.mark.parametrize("form", [0, 1])
@pytest.mark.parametrize("name", NAMES)
def test_pieces_and_steps_equal_one_shot(name, form):
    """Uneven pieces (one shorter than a convolution's memory, a single token) and a prefix followed by one token
    at a time (the step form), in both kernel forms; the state matters: the last piece from scratch differs."""
    s = spec(name)
    m = contract_model(name, **s.forms[form])
    x = randn(2, 41, D)
    with torch.no_grad():
        full, s_full = m(x)
        pieces, s_pieces = run_in_pieces(m, x, [0, 2, 3, 6, 41])
        steps, s_steps = run_in_pieces(m, x, [0, 9, *range(10, 42)])
        cold = m(x[:, 6:])[0]
    for got, state in ((pieces, s_pieces), (steps, s_steps)):
        assert close(got, full, s.rtol) and states_close(state, s_full, s.rtol)
    assert not close(cold, full[:, 6:], 1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_every_part_of_the_state_matters(name):
    """Resetting any one tensor of every layer's state (a conv window, a shift, the matrix state, keys or values)
    changes what follows."""
    m = contract_model(name)
    x = randn(2, 41, D)
    with torch.no_grad():
        full, _ = m(x)
        _, mid = m(x[:, :6])
        for j in range(len(mid[0])):
            reset = [tuple(torch.zeros_like(t) if i == j else t for i, t in enumerate(layer)) for layer in mid]
            assert not close(m(x[:, 6:], reset)[0], full[:, 6:], 1e-3), f"state part {j} is never read"


@pytest.mark.parametrize("name", NAMES)
def test_the_two_forms_agree(name):
    s = spec(name)
    a, b = (contract_model(name, **form) for form in s.forms)
    x = randn(1, 23, D)
    with torch.no_grad():
        (h1, s1), (h2, s2) = a(x), b(x)
    assert close(h1, h2, s.rtol) and states_close(s1, s2, s.rtol)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter_and_the_state(name):
    m = contract_model(name).train()
    ids = torch.randint(0, spec(name).config["vocab_size"], (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, past = m(m.embed(ids[:, :7]))
    state = [tuple(t.clone().requires_grad_(True) for t in layer) for layer in past]
    h, _ = m(m.embed(ids[:, 7:]), state)
    F.cross_entropy(m.logits(h).flatten(0, 1), ids[:, 7:].roll(-1, 1).flatten()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for layer in state for t in layer)
    silent = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not silent, silent


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_is_used_and_gives_the_same_gradients(name, monkeypatch):
    calls = []
    own = sys.modules[RNN.get(name).__module__]  # the shared block loop (aurora.types), or the backbone's own
    for module in {aurora_types, own}:
        if hasattr(module, "checkpoint"):
            real = module.checkpoint
            monkeypatch.setattr(module, "checkpoint", lambda *a, real=real, **k: calls.append(1) or real(*a, **k))
    plain, ckpt = contract_model(name).train(), contract_model(name, grad_checkpoint=True).train()
    x = randn(2, 19, D)
    for m in (plain, ckpt):
        h, s = run_in_pieces(m, x, [0, 8, 19])  # the second piece reads the (checkpointed) first one's state
        (h.pow(2).sum() + sum(t.pow(2).sum() for layer in s for t in layer)).backward()
    assert len(calls) == 4  # one per block and piece, only for the checkpointed model
    unused = {n for n, p in plain.named_parameters() if p.grad is None}
    assert unused == {n for n, p in ckpt.named_parameters() if p.grad is None}
    vocab = spec(name).config["vocab_size"]  # only the embedding / head: forward() takes embeddings
    assert all(vocab in p.shape for n, p in plain.named_parameters() if n in unused), unused
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if n not in unused:
            assert torch.allclose(p.grad, q.grad, rtol=1e-8, atol=1e-12), n
    with torch.no_grad():  # no checkpointing outside training with gradients
        ckpt(x)
    assert len(calls) == 4


@pytest.mark.parametrize("name", NAMES)
def test_empty_sequence_passes_the_state_through(name):
    m = contract_model(name)
    x = randn(1, 4, D)
    with torch.no_grad():
        want, s = m(x)
        h, s2 = m(x[:, :0], s)
        assert h.shape == (1, 0, D) and s2 is s
        h, fresh = m(x[:, :0])  # no state yet: a fresh one, which the next call continues from
        assert h.shape == (1, 0, D)
        new = m.init_state(1, dtype=torch.float64)
        assert len(fresh) == len(new) and all(a.dtype == b.dtype and torch.equal(a, b)
                                              for la, lb in zip(fresh, new) for a, b in zip(la, lb, strict=True))
        assert all(a.dtype == b.dtype for la, lb in zip(fresh, s) for a, b in zip(la, lb, strict=True))
        if not spec(name).state_grows:  # a fixed-size state: a fresh one has the shapes of a used one
            assert [[t.shape for t in layer] for layer in fresh] == [[t.shape for t in layer] for layer in s]
        assert close(m(x, fresh)[0], want, 1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_named(name):
    m = contract_model(name)
    with pytest.raises(ValueError, match=rf"embeds must be \(batch, time, {D}\)"):
        m(torch.zeros(1, 3, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match=rf"embeds must be \(batch, time, {D}\)"):
        m(torch.zeros(3, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="state has 1 layers, the model 2"):
        m(torch.zeros(1, 3, D, dtype=torch.float64), m.init_state(1, dtype=torch.float64)[:1])


@pytest.mark.parametrize("name", [n for n in RNN.names() if getattr(RNN.get(n), "prefill_piece", None)])
def test_long_prefill_in_pieces_equals_one_shot_and_keeps_autograd_whole(name):
    """Backbones with ``prefill_piece`` run a long no-grad prefill piece by piece (bounded activations); the result
    and the state equal the one-shot pass, and with autograd on the one-shot path (one graph) is kept."""
    model = tiny(name)
    x = torch.randn(2, 37, model.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model.prefill_piece = None
    with torch.no_grad():
        want, want_state = model(x)
    model.prefill_piece = 8  # 37 tokens: four whole pieces and a short one
    calls = []
    orig = model._run_blocks_once
    model._run_blocks_once = lambda *a: calls.append(a[1].shape[1]) or orig(*a)
    with torch.no_grad():
        got, got_state = model(x)
    assert calls == [8, 8, 8, 8, 5]
    assert close(got, want, spec(name).rtol)
    flat = lambda s: [t for layer in s for t in (layer if isinstance(layer, (tuple, list)) else [layer])  # noqa: E731
                      if isinstance(t, torch.Tensor)]
    assert all(close(a, b, spec(name).rtol) for a, b in zip(flat(got_state), flat(want_state)))
    calls.clear()
    model(x)[0].sum().backward()  # autograd on: one shot
    assert calls == [37]
