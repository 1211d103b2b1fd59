"""The demo's vision stage: labelled synthetic frames, the VisionStage module, and AuroraModule's init_parts."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aurora.checkpoint import CheckpointError
from aurora.data.frames import SyntheticFrameData, SyntheticFrames, frame_label_classes, held_out_frames, render_clip
from aurora.data.synthetic import COLORS, SHAPES
from aurora.train.module import AuroraModule
from aurora.train.vision_stage import VisionStage

ROOT = Path(__file__).resolve().parents[2]
VISION = dict(name="siglip", hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
              image_size=32, patch_size=8)
MERGE = dict(name="tome", keep_ratio=0.5)
CLIP = dict(frames=4, size=32, image_size=32, grid=4)
RNN = dict(name="rwkv6", vocab_size=64, d_model=32, n_layer=1, head_size=16)


def test_frame_labels_match_the_pixels():
    pixels, labels = render_clip(random.Random(3), **CLIP)
    assert pixels.shape == (4, 3, 32, 32) and set(labels) == {"color", "shape", "row", "col"}
    for t in range(4):
        frame = pixels[t] * 0.5 + 0.5  # undo the normalisation
        mask = frame.sum(0) > 0.5       # the shape on the black frame (H.264 leaves the background near 0)
        ys, xs = mask.nonzero(as_tuple=True)
        cell = (int(ys.float().mean() / 32 * 4), int(xs.float().mean() / 32 * 4))
        assert cell == (int(labels["row"][t]), int(labels["col"][t]))
        rgb = frame[:, mask].mean(1) * 255
        assert int(labels["color"][t]) == min(range(len(COLORS)),
                                               key=lambda i: ((rgb - torch.tensor(list(COLORS.values())[i])) ** 2).sum())
    assert labels["color"].unique().numel() == 1 and labels["shape"].unique().numel() == 1
    assert 0 <= int(labels["shape"][0]) < len(SHAPES)
    assert frame_label_classes(4) == {"color": 4, "shape": 3, "row": 4, "col": 4}


def test_frame_stream_is_seeded_and_the_held_out_set_fixed():
    a = [s["labels"] for s, _ in zip(SyntheticFrames(5, **CLIP), range(8))]
    b = [s["labels"] for s, _ in zip(SyntheticFrames(5, **CLIP), range(8))]
    c = [s["labels"] for s, _ in zip(SyntheticFrames(6, **CLIP), range(8))]
    assert a == b and a != c
    assert [s["labels"] for s in held_out_frames(2, **CLIP)] == [s["labels"] for s in held_out_frames(2, **CLIP)]
    dm = SyntheticFrameData(**CLIP, batch_size=4, val_clips=1, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixels"].shape == (4, 3, 32, 32) and batch["labels"]["row"].shape == (4,)
    assert len(dm.val_dataloader().dataset) == 4


def test_vision_stage_mean_pools_and_needs_every_label():
    stage = VisionStage(VISION, MERGE, labels={"color": 4, "shape": 3})
    pixels = torch.randn(5, 3, 32, 32)
    assert stage.pooled(pixels).shape == (5, 32)
    loss = stage._step({"pixels": pixels, "labels": {"color": torch.zeros(5, dtype=torch.long),
                                                     "shape": torch.ones(5, dtype=torch.long)}}, "train")
    assert torch.isfinite(loss)
    loss.backward()
    assert stage.heads["shape"].weight.grad is not None
    with pytest.raises(KeyError, match="lacks the label"):
        stage._step({"pixels": pixels, "labels": {"color": torch.zeros(5, dtype=torch.long)}}, "train")
    with pytest.raises(ValueError, match="2 or more classes"):
        VisionStage(VISION, MERGE, labels={"color": 1})


def _stage_checkpoint(path, vision=VISION):
    torch.manual_seed(1)
    stage = VisionStage(vision, MERGE, labels={"color": 4})
    torch.save({"state_dict": stage.state_dict()}, path)
    return stage


def test_init_parts_takes_the_vision_stage_encoder(tmp_path):
    stage = _stage_checkpoint(tmp_path / "v.ckpt")
    torch.manual_seed(2)
    plain = AuroraModule(vision=VISION, merge=MERGE, rnn=RNN)
    torch.manual_seed(2)
    module = AuroraModule(vision=VISION, merge=MERGE, rnn=RNN, init_from=str(tmp_path / "v.ckpt"),
                          init_parts=["vision"], freeze=["vision"])
    for k, v in stage.model.vision.state_dict().items():
        assert torch.equal(module.model.vision.state_dict()[k], v)
    for k, v in plain.model.rnn.state_dict().items():  # the other parts keep their own initialisation
        assert torch.equal(module.model.rnn.state_dict()[k], v)
    assert module.model.vision.is_frozen


def test_init_parts_errors_name_the_problem(tmp_path):
    _stage_checkpoint(tmp_path / "v.ckpt", vision={**VISION, "hidden_size": 64})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        AuroraModule(vision=VISION, merge=MERGE, rnn=RNN, init_from=str(tmp_path / "v.ckpt"), init_parts=["vision"])
    with pytest.raises(CheckpointError, match="no 'model.rnn.\\*' weights"):
        AuroraModule(vision=VISION, merge=MERGE, rnn=RNN, init_from=str(tmp_path / "v.ckpt"), init_parts=["rnn"])
    with pytest.raises(KeyError, match="known parts: vision, projector, rnn"):
        AuroraModule(vision=VISION, merge=MERGE, rnn=RNN, init_from=str(tmp_path / "v.ckpt"), init_parts=["eyes"])
    with pytest.raises(FileNotFoundError, match="run the stage that writes it first"):
        AuroraModule(vision=VISION, merge=MERGE, rnn=RNN, init_from=str(tmp_path / "none.ckpt"), init_parts=["vision"])


def test_aurora_demo_runs_both_stages(tmp_path, monkeypatch):
    """`aurora demo` end to end at toy sizes: the vision stage, the video stage from its encoder, the held-out
    test with original / shuffled / reversed frames, metrics.json and the final line; each stage's MLflow run is
    named and tagged for its stage, as every other command's runs are (issue 17)."""
    tiny_video = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
                  "--trainer.max_time=null", "--trainer.default_root_dir=runs/tiny", "--data.batch_size=4",
                  "--data.num_workers=0", "--data.data_dir=runs/tiny/data", "--model.init_from=runs/tiny/vision/checkpoints/last.ckpt",
                  "--data.synthetic.train=8", "--data.synthetic.val=4", "--data.synthetic.test=6"]
    tiny_vision = ["--vision.trainer.max_steps=2", "--vision.trainer.val_check_interval=2",
                   "--vision.trainer.max_time=null", "--vision.trainer.default_root_dir=runs/tiny/vision",
                   "--vision.data.init_args.batch_size=8", "--vision.data.init_args.val_clips=1",
                   "--vision.data.init_args.num_workers=0"]
    # MLflow's file store (allowed for tests by its variable): a fresh sqlite store spends ~9 s on its migrations
    store = (tmp_path / "mlruns").as_uri()
    tracking = [f"--trainer.logger.init_args.tracking_uri={store}", f"--vision.trainer.logger.init_args.tracking_uri={store}"]
    r = subprocess.run([sys.executable, "-m", "aurora.cli", "demo", *tiny_vision, *tiny_video, *tracking], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONUNBUFFERED="1", MLFLOW_ALLOW_FILE_STORE="true"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "stage 1/2" in r.stdout and "stage 2/2" in r.stdout
    metrics = json.loads((tmp_path / "runs/tiny/metrics.json").read_text())
    assert set(metrics["frame_order_ablation"]) == {"original", "shuffled", "reversed"}
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=store)
    runs = {r.info.run_name: r.data for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    assert set(runs) == {"tiny-demo-vision", "tiny-demo-video"}
    assert runs["tiny-demo-vision"].tags["aurora.stage"] == "demo-vision"
    assert runs["tiny-demo-video"].tags["aurora.stage"] == "demo-video"
    assert {r.tags["aurora.run"] for r in runs.values()} == {"tiny"}
    assert "test/accuracy" in runs["tiny-demo-video"].metrics
    assert metrics["train_steps"] == 2 and metrics["vision_stage"]["steps"] == 2
    assert r.stdout.strip().splitlines()[-1] == f"demo accuracy: {metrics['accuracy']:.3f} (chance: {metrics['chance']:.3f})"


def test_demo_warns_when_max_time_cuts_a_stage(capsys):
    """The demo reaches its accuracy by steps; a stage the max_time safety net stopped is reported, not hidden."""
    from types import SimpleNamespace

    from aurora.train.demo import _warn_if_cut

    _warn_if_cut(SimpleNamespace(max_steps=800, global_step=800), "stage 2")
    assert capsys.readouterr().out == ""
    _warn_if_cut(SimpleNamespace(max_steps=800, global_step=512), "stage 2")
    out = capsys.readouterr().out
    assert "stage 2 stopped by trainer.max_time after 512 of 800 steps" in out
