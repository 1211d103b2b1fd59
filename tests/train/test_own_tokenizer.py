"""A converted backbone trains with its own tokenizer (issue 17): `aurora convert` carries the source's tokenizer
files along, the recipe points at them, and the RWKV World vocabulary on a 100-token embedding is a clear error
before training starts (it was a bare `IndexError: index out of range in self` mid-step)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from aurora.data.datamodule import AuroraDataModule
from aurora.train.module import AuroraModule
from tests._models import TINY_HPARAMS
from tests.data.test_tokenizers import write_tiny_tokenizer


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A tiny transformers Mamba with a 100-token vocabulary and its tokenizer.json, converted by aurora convert."""
    from transformers import MambaConfig, MambaForCausalLM

    from aurora.tools.convert import convert_main

    tmp = tmp_path_factory.mktemp("mamba")
    torch.manual_seed(0)
    MambaForCausalLM(MambaConfig(vocab_size=100, hidden_size=32, state_size=4, num_hidden_layers=1, expand=2,
                                 conv_kernel=4)).save_pretrained(tmp / "src")
    write_tiny_tokenizer(tmp / "src")
    out = tmp / "mamba.safetensors"
    assert convert_main(["--backbone", "mamba", "--src", str(tmp / "src"), "--out", str(out)]) == 0
    return out


def _fit(tmp: Path, weights: Path, tokenizer) -> tuple[L.Trainer, AuroraModule, AuroraDataModule]:
    dm = AuroraDataModule(data_dir=str(tmp / "data"), synthetic={"train": 4, "val": 0, "test": 0, "frames": 2,
                                                                 "size": 32}, num_frames=2, image_size=32,
                          batch_size=2, shuffle_buffer=0, tokenizer=tokenizer)
    module = AuroraModule(vision=TINY_HPARAMS["vision"], merge=TINY_HPARAMS["merge"], projector="mlp",
                          rnn={"checkpoint": str(weights)}, lr=1e-3)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=str(tmp))
    trainer.fit(module, datamodule=dm)
    return trainer, module, dm


def test_convert_copies_the_tokenizer_and_says_how_a_recipe_points_at_it(converted):
    from aurora.tools.convert import recipe_lines

    tok = converted.with_name("mamba.tokenizer")
    assert sorted(p.name for p in tok.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert recipe_lines(converted) == [f"model.rnn: {{checkpoint: {converted}}}",
                                       f"data.tokenizer: {{name: tokenizer_json, path: {tok / 'tokenizer.json'}}}"]


def test_a_converted_mamba_trains_with_its_own_tokenizer_and_exports_it(converted, tmp_path, one_thread):
    tok = {"name": "tokenizer_json", "path": str(converted.with_name("mamba.tokenizer") / "tokenizer.json")}
    trainer, module, dm = _fit(tmp_path, converted, tok)
    assert trainer.global_step == 2 and module.model.rnn.vocab_size == 100
    assert dm.tokenizer.vocab_size <= 100
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    from aurora.infer.api import Aurora

    m = Aurora.from_pretrained(ckpt, device="cpu")  # the tokenizer the checkpoint names, not RWKV World
    assert m.engine.tokenizer.vocab_size == dm.tokenizer.vocab_size
    out = m.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    back = Aurora.from_pretrained(out, device="cpu")
    assert back.engine.tokenizer.encode("red circle") == dm.tokenizer.encode("red circle")


def test_the_rwkv_world_tokenizer_on_a_100_token_embedding_is_a_clear_error(converted, tmp_path, one_thread):
    with pytest.raises(ValueError, match=r"'rwkv_world' has 65,536 tokens .* embedding has 100 rows"):
        _fit(tmp_path, converted, None)
