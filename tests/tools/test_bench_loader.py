"""aurora bench loader: the loader point reads every sample at the asked shape with 0 and 1 workers, the verdict
names the slower side, bad arguments exit 2. Tiny sizes (a 1-second 64p clip, 4 frames of 32 px)."""
import pytest

from aurora.data.prompt import world_vocab_file
from aurora.tools.bench_loader import _loader_point, bench_loader_main, make_shards, verdict


def test_loader_point_reads_every_sample_with_and_without_workers(tmp_path, one_thread):
    vocab = tmp_path / "bytes_vocab.txt"  # the World vocabulary's 256 single bytes: its trie builds in no time
    with open(world_vocab_file(), encoding="utf-8") as f:
        vocab.write_text("".join(next(f) for _ in range(256)), encoding="utf-8")
    shards = make_shards(tmp_path, samples=2, seconds=1.0, height=64, log=lambda *_: None)
    assert len(list(shards.glob("train-*.tar"))) == 2  # one shard per sample: workers have shards to split
    assert make_shards(tmp_path, samples=2, seconds=1.0, height=64) == shards  # reused, not regenerated
    for workers in (0, 1):
        rec = _loader_point({"shards": str(shards), "samples": 2, "passes": 2, "frames": 4, "image_size": 32,
                             "workers": workers, "vocab_file": str(vocab)})
        assert rec["samples_read"] == 4 and rec["shape"] == [1, 4, 3, 32, 32] and rec["skipped"] == {}
        assert 0 < rec["first_batch_seconds"] <= rec["seconds"] and rec["steady_samples_per_s"] > 0


def test_verdict_names_what_bounds_training():
    loader = [{"workers": 0, "samples_per_s": 0.5, "steady_samples_per_s": 0.5},
              {"workers": 2, "samples_per_s": 0.9, "steady_samples_per_s": 1.0},
              {"workers": 1, "skipped": "timed out"}]
    slow_model = verdict({"loader": loader, "step": {"step_seconds": 3.0}})
    assert "1.00 s a sample with 2 workers" in slow_model and "the model bounds training (3.0x)" in slow_model
    fast_model = verdict({"loader": loader, "step": {"step_seconds": 0.25},
                          "vision_l": {"extrapolated_step_lower_bound_seconds": 640.0}})
    assert "the loader bounds training (4.0x)" in fast_model and "the model bounds training (640.0x)" in fast_model
    assert verdict({"loader": [{"workers": 0, "skipped": "error"}]}) == "no loader figure"


@pytest.mark.parametrize("argv", [["--samples", "0"], ["--frames", "0"], ["--workers", "-1"], ["--seconds", "0"]])
def test_bad_arguments_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench_loader_main([*argv, "--cache", str(tmp_path)])
    assert e.value.code == 2
