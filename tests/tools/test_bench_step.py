"""aurora bench step: the per-part split gives the same gradients as the plain step, and bad input is one line."""
import pytest
import torch

from aurora.tools.bench_step import PARTS, StepBench, _rnn_spec, bench_step_main, demo_batch, format_step

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
        t, cpu, _ = bench.parts() if split else ({}, {}, bench.step())
        grads.append([p.grad.clone() for p in bench.model.parameters() if p.grad is not None])
        if split:
            assert set(t) == set(cpu) == {"vision", "projector", "rnn", "head+loss", "optimizer"}
            assert all(v >= 0 for v in cpu.values()) and cpu["rnn"] > 0
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(*grads))


def test_transformer_gets_heads_of_the_rwkv_size_and_unknown_names_fail():
    assert _rnn_spec(SPEC["rnn"], "transformer") == dict(name="transformer", vocab_size=65536, d_model=32,
                                                         n_layer=1, n_head=2)
    with pytest.raises(SystemExit, match="unknown backbone nope; known: .*rwkv6"):
        bench_step_main(["--backbones", "nope"])


def test_format_prints_wall_and_cpu_tables_and_reads_old_records():
    rec = dict(backbone="rwkv6", tokens=96, step_ms=300.0, step_vs_transformer=1.2, parts_ms=dict.fromkeys(PARTS, 1.0),
               parts_total_ms=5.0)
    old = format_step({"records": [rec]})  # a record written before the CPU-time fields: the wall table alone
    assert old.count("\n") == 1 and "cpu" not in old
    rec |= dict(step_cpu_ms=150.0, step_cpu_vs_transformer=0.9, parts_cpu_ms=dict.fromkeys(PARTS, 2.0),
                parts_cpu_total_ms=10.0)
    lines = format_step({"records": [rec]}).splitlines()
    assert len(lines) == 4 and lines[3].startswith("cpu  rwkv6") and " 150.0 " in lines[3] and " 0.90 " in lines[3]
