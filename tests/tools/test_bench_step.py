"""aurora bench step: the per-part split gives the same gradients as the plain step, and bad input is one line."""
import pytest
import torch

from aurora.tools.bench_step import StepBench, _rnn_spec, bench_step_main, demo_batch

SPEC = dict(vision=dict(name="siglip", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, image_size=32, patch_size=8),
            merge=None, projector="mlp", rnn=dict(name="rwkv6", vocab_size=65536, d_model=32, n_layer=1, head_size=16))


def test_parts_split_gives_the_step_gradients():
    batch = demo_batch(2, 2, 32)
    grads = []
    for split in (False, True):
        bench = StepBench(SPEC, batch)
        bench.opt.step = lambda: None  # keep the gradients to compare
        bench.opt.zero_grad = lambda set_to_none=True: None
        t, _ = bench.parts() if split else ({}, bench.step())
        grads.append([p.grad.clone() for p in bench.model.parameters() if p.grad is not None])
        if split:
            assert set(t) == {"vision", "projector", "rnn", "head+loss", "optimizer"}
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(*grads))


def test_transformer_gets_heads_of_the_rwkv_size_and_unknown_names_fail():
    assert _rnn_spec(SPEC["rnn"], "transformer") == dict(name="transformer", vocab_size=65536, d_model=32,
                                                         n_layer=1, n_head=2)
    with pytest.raises(SystemExit, match="unknown backbone nope; known: .*rwkv6"):
        bench_step_main(["--backbones", "nope"])
