"""GPU parity: every RNN backbone's CUDA kernels (fla / mamba-ssm, backend ``auto``) against our own chunked
PyTorch form run on the same GPU, forward and backward, in fp32 and under bf16 autocast.

Targets (the backbone issue): relative error under 1e-3 in fp32 and 1e-2 in bf16. Skipped without CUDA; on a
GPU machine `pytest tests/kernels/test_gpu_parity.py -q` is the whole check.
"""
import pytest
import torch

import aurora.components  # noqa: F401  (fills the registries)
from aurora.registry import RNN

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the fla / mamba-ssm kernels need a CUDA device")

VOCAB = 512
BACKBONES = {
    "rwkv6": dict(d_model=256, n_layer=2, head_size=64),
    "rwkv7": dict(d_model=256, n_layer=2, head_size=64),
    "mamba": dict(d_model=256, n_layer=2),
    "mamba2": dict(d_model=256, n_layer=2, head_dim=64, d_state=64),
    "gla": dict(d_model=256, n_layer=2, n_head=4),
    "gated_deltanet": dict(d_model=256, n_layer=2, n_head=4, head_dim=64),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def run(model, ids, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        hidden, _ = model(model.embed(ids))
        logits = model.logits(hidden).float()
    logits.pow(2).mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@needs_cuda
@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("bf16", 1e-2)])
def test_cuda_kernels_equal_our_chunked_form(name, precision, tol):
    torch.manual_seed(0)
    kwargs = dict(vocab_size=VOCAB, **BACKBONES[name])
    ours = RNN.build({"name": name, **kwargs, "backend": "chunked"}).cuda()
    kernel = RNN.build({"name": name, **kwargs, "backend": "auto"}).cuda()
    kernel.load_state_dict(ours.state_dict())
    ids = torch.randint(0, VOCAB, (2, 300), device="cuda")  # not a multiple of any chunk size
    autocast = precision == "bf16"
    want_logits, want_grads = run(ours, ids, autocast)
    got_logits, got_grads = run(kernel, ids, autocast)
    assert rel(got_logits, want_logits) < tol, (name, precision, rel(got_logits, want_logits))
    assert set(got_grads) == set(want_grads)
    worst = max(want_grads, key=lambda n: rel(got_grads[n], want_grads[n]))
    assert rel(got_grads[worst], want_grads[worst]) < tol, (name, precision, worst, rel(got_grads[worst], want_grads[worst]))


@needs_cuda
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_cuda_pieces_equal_one_shot(name):
    """State hand-over through the CUDA kernels (chunk kernel for the pieces, fused recurrent for T == 1)."""
    torch.manual_seed(0)
    model = RNN.build({"name": name, "vocab_size": VOCAB, **BACKBONES[name]}).cuda().eval()
    ids = torch.randint(0, VOCAB, (2, 130), device="cuda")
    with torch.no_grad():
        whole, _ = model(model.embed(ids))
        state, parts = None, []
        for a, b in ((0, 64), (64, 65), (65, 130)):
            h, state = model(model.embed(ids[:, a:b]), state)
            parts.append(h)
    assert rel(torch.cat(parts, 1), whole) < 1e-3


@pytest.mark.parametrize("name", ["rwkv6", "mamba2"])
def test_the_parity_harness_on_cpu(name):
    """The same comparison on CPU, step form against chunked form: the harness itself sees agreement, and sees a
    difference when one model's weights differ."""
    torch.manual_seed(0)
    kwargs = dict(vocab_size=64, d_model=64, n_layer=1) | ({"head_size": 32} if name == "rwkv6" else {"head_dim": 32, "d_state": 16})
    ours = RNN.build({"name": name, **kwargs, "backend": "chunked"})
    step = RNN.build({"name": name, **kwargs, "backend": "recurrent"})
    step.load_state_dict(ours.state_dict())
    ids = torch.randint(0, 64, (1, 40))
    (a, ga), (b, gb) = run(ours, ids, False), run(step, ids, False)
    assert rel(b, a) < 1e-4 and max(rel(gb[n], ga[n]) for n in ga) < 1e-4
    with torch.no_grad():
        next(p for n, p in step.named_parameters() if n.endswith("weight") and p.dim() == 2).mul_(1.5)
    assert rel(run(step, ids, False)[0], a) > 1e-3
