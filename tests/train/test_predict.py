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


def _word_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer.json whose id 0 is the word "User" (a real token of every prompt) and whose
    padding is ``<pad>`` (id 7), as a converted model's own vocabulary may number them."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["User", ":", "What", "colour", "?", "Assistant", "<eos>", "<pad>", "red", "shape", "is", "the", "<unk>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def test_the_prompt_ends_where_the_sample_ends_when_id_0_is_a_real_token(tmp_path):
    from aurora.data.shards import collate
    from aurora.data.tokenizers import build_tokenizer
    from aurora.train.module import AuroraModule, _lengths
    from aurora.types import IGNORE_INDEX

    tok = build_tokenizer({"name": "tokenizer_json", "path": str(_word_tokenizer(tmp_path / "tok")),
                           "eos_token": "<eos>", "pad_token": "<pad>"})
    assert tok.encode("User")[0] == 0 and tok.pad_id == 7
    template = PromptTemplate()
    prompts = [template.build_prompt(tok, q) for q in ("What colour?", "What colour is the shape?")]
    assert all(p.count(0) >= 2 for p in prompts)  # "User" before and after the video
    # no answers (predict on unlabelled clips): the prompt is the whole sample, however many of its ids are 0
    batch = collate([{"pixels": torch.zeros(2, 3, 32, 32), "input_ids": torch.tensor(p),
                      "labels": torch.full((len(p),), IGNORE_INDEX)} for p in prompts], pad_id=tok.pad_id)
    module = AuroraModule(**{**TINY_HPARAMS, "rnn": TINY_HPARAMS["rnn"] | {"n_layer": 1}}, max_new_tokens=1)
    module._tokenizer, module._template = tok, template
    seen: list[list[int]] = []

    def generate_batch(pixels, ids, **kwargs):
        seen.extend(i.tolist() for i in ids)
        return [[8] for _ in ids]

    module.model.generate_batch = generate_batch
    assert module.predict_answers(batch) == ["red", "red"]
    assert seen == prompts
    # a batch without recorded lengths (built by hand): the right padding (the tokenizer's pad id) is cut
    del batch["lengths"]
    assert _lengths(batch, tok) == [len(p) for p in prompts]
    assert _lengths({"input_ids": batch["input_ids"], "attention_mask": batch["input_ids"] != tok.pad_id},
                    tok) == [len(p) for p in prompts]
