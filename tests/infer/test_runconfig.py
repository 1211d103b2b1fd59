"""A checkpoint carries what inference needs (issue 17): ask, eval, viz, predict and the Python API read it from
the checkpoint, from any working directory, and never fall back to defaults silently."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from aurora.checkpoint import INFERENCE_KEY
from aurora.data.datamodule import AuroraDataModule
from aurora.data.video import encode_mp4
from aurora.infer.runconfig import DEFAULT_NUM_FRAMES, MissingSettings, inference_settings
from aurora.train.module import AuroraModule
from tests._models import TINY_HPARAMS, tiny_checkpoint


def _fit_one_step(tmp: Path, frames: int = 4) -> Path:
    """A real one-step fit (Lightning writes the checkpoint, with the datamodule attached) on 4-frame clips."""
    torch.manual_seed(0)
    dm = AuroraDataModule(data_dir=str(tmp / "data"), synthetic={"train": 2, "val": 0, "test": 0, "frames": frames,
                                                                 "size": 32}, num_frames=frames, image_size=32,
                          batch_size=2, shuffle_buffer=0, template={"lead": "generic"})
    hp = {k: v for k, v in TINY_HPARAMS.items()}
    module = AuroraModule(vision=hp["vision"], merge=hp["merge"], projector=hp["projector"],
                          rnn=hp["rnn"] | {"n_layer": 1}, lr=1e-3)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=str(tmp))
    trainer.fit(module, datamodule=dm)
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    trainer.save_checkpoint(ckpt)
    return ckpt


def test_a_checkpoint_carries_its_inference_settings_and_ask_reads_them_from_anywhere(tmp_path, monkeypatch,
                                                                                    capsys, one_thread):
    ckpt = _fit_one_step(tmp_path)
    blob = torch.load(ckpt, weights_only=True, map_location="cpu")  # plain values: weights_only reads them
    rec = blob[INFERENCE_KEY]
    assert rec["num_frames"] == 4 and rec["fps"] is None and rec["image_size"] == 32
    assert rec["template"]["lead"] == "generic" and rec["tokenizer"] == {"name": "rwkv_world"}
    assert not list(ckpt.parents[1].glob("config*.yaml"))  # no run config anywhere near it

    settings = inference_settings(ckpt)
    assert settings["num_frames"] == 4 and "checkpoint" in settings["source"]

    # an 8-frame clip of one second, asked from another working directory: 4 frames, as trained (not 1 fps)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(encode_mp4(np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), fps=8))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from aurora.infer.ask import ask_main

    code = ask_main(["--ckpt", str(ckpt), "--video", str(clip), "--question", "What colour?", "--json",
                     "--no-progress", "--max-new-tokens", "2"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out.strip().splitlines()[-1])["frames"] == 4
    assert "inference settings from the checkpoint last.ckpt" in out.err and "reading 4 frames" in out.err


def test_a_checkpoint_without_settings_or_run_config_is_a_clear_error(tmp_path, capsys):
    ckpt = tmp_path / "old.ckpt"
    tiny_checkpoint(ckpt)  # written the old way: weights and hyperparameters only
    with pytest.raises(MissingSettings, match="carries no inference settings.*--frames N"):
        inference_settings(ckpt)
    assert inference_settings(ckpt, required=False) == {"source": None, "config": None}
    from aurora.infer.ask import ask_main

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(encode_mp4(np.zeros((4, 32, 32, 3), dtype=np.uint8), fps=4))
    args = ["--ckpt", str(ckpt), "--video", str(clip), "--question", "q", "--no-progress", "--max-new-tokens", "1"]
    assert ask_main(args) == 2
    err = capsys.readouterr().err
    assert "carries no inference settings" in err and len(err.strip().splitlines()) == 1
    assert ask_main([*args, "--frames", "2"]) == 0  # an explicit sampling is what the user asked for
    assert "no saved settings" in capsys.readouterr().err

    from aurora.evaluation.run import AuroraPredictor
    from aurora.infer.api import Aurora

    with pytest.raises(MissingSettings):
        AuroraPredictor(ckpt)
    with pytest.raises(MissingSettings):
        Aurora.from_pretrained(ckpt, device="cpu")
    assert AuroraPredictor(ckpt, frames=3).num_frames == 3


def test_the_default_frame_count_is_the_datamodules():
    assert inspect.signature(AuroraDataModule).parameters["num_frames"].default == DEFAULT_NUM_FRAMES
