"""`aurora test` / `aurora predict` of a checkpoint (issue 17): the checkpoint's prompt template wins over the
recipe's (a template with ``User: {question}`` once crashed: jsonargparse read the strings as YAML mappings), and
the prompt ends where the batch says it does, not at the first token id 0."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from aurora.data.prompt import PromptTemplate
from tests._models import TINY_HPARAMS, tiny_checkpoint

TRAINED = {"before": "Q: {question}\n", "after": "\nQ: {question}\nA:", "answer": " {answer}", "stop": "\n\n",
           "lead": "question", "generic": "Describe the video.", "mix": None}


def _recipe(tmp: Path) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp / "run")},
        "model": {**TINY_HPARAMS, "max_new_tokens": 1},
        "data": {"data_dir": str(tmp / "data"), "synthetic": {"train": 0, "val": 0, "test": 2, "frames": 2, "size": 32},
                 "num_frames": 2, "image_size": 32, "batch_size": 2, "num_workers": 0},
    }  # the recipe's template: the default sandwich ("User: {question}\n" ...), not the checkpoint's
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_the_checkpoints_prompt_template_wins_over_the_recipes(tmp_path, monkeypatch, subcommand, one_thread):
    ckpt = tmp_path / "trained.ckpt"
    tiny_checkpoint(ckpt, max_new_tokens=1, inference={"num_frames": 2, "image_size": 32, "template": TRAINED,
                                                       "tokenizer": {"name": "rwkv_world"}})
    blob = torch.load(ckpt, weights_only=True)
    import lightning

    torch.save(blob | {"pytorch-lightning_version": lightning.__version__}, ckpt)  # as Lightning writes it
    used: list[tuple[str, str]] = []  # (before, after) of every prompt built for the held-out clips
    real = PromptTemplate.build_prompt
    monkeypatch.setattr(PromptTemplate, "build_prompt",
                        lambda self, *a, **k: (used.append((self.before, self.after)), real(self, *a, **k))[1])
    from aurora.cli import main

    assert main([subcommand, "--config", str(_recipe(tmp_path)), f"--ckpt_path={ckpt}"]) == 0
    assert used and set(used) == {(TRAINED["before"], TRAINED["after"])}


def test_a_recipes_template_with_colons_reaches_the_datamodule_as_text(tmp_path):
    from aurora.train.lightning_cli import AuroraCLI

    class ParseOnly(AuroraCLI):
        def instantiate_classes(self) -> None:
            pass

    cli = ParseOnly(args=["--config", str(_recipe(tmp_path)), "--data.template.lead=generic",
                          f"--data.template={yaml.safe_dump({'before': 'User: {question}'})}"], run=False)
    template = cli.config["data"]["template"]
    assert dict(template)["before"] == "User: {question}"
