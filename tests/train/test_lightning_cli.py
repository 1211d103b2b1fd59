"""The Lightning CLI's recipe handling (issue 17): switching a part's name starts from that part's own defaults,
and every path a run needs is checked before any model is built (one line, exit 2)."""
from __future__ import annotations

import logging

import pytest

from aurora.train.lightning_cli import AuroraCLI, fit_main, packaged_configs, switch_parts


class ParseOnly(AuroraCLI):
    """The CLI up to the point where it would build the model and datamodule."""

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass


def parsed_model(*args: str) -> dict:
    cli = ParseOnly(args=packaged_configs(["--config", "demo", "--model.init_from=null", *args]), run=False)
    from aurora.train.lightning_cli import _plain

    return _plain(cli.config["model"])


def test_switching_the_rnn_name_keeps_only_the_arguments_the_new_part_takes(caplog):
    with caplog.at_level(logging.WARNING, logger="aurora.train.lightning_cli"):
        model = parsed_model("--model.rnn.name=mamba")
    assert model["rnn"] == {"name": "mamba", "vocab_size": 65536, "d_model": 128, "n_layer": 2}  # head_size dropped
    said = [r.getMessage() for r in caplog.records if "takes no" in r.getMessage()]
    assert len(said) == 1 and "model.rnn: mamba takes no head_size" in said[0]
    from aurora.registry import RNN

    RNN.build(model["rnn"] | {"vocab_size": 64})  # the switched spec builds (a small vocabulary: fast)


def test_switching_keeps_what_the_command_line_gives_and_a_wrong_name_is_still_named():
    model = parsed_model("--model.rnn.name=mamba", "--model.rnn.d_state=8")
    assert model["rnn"]["d_state"] == 8 and "head_size" not in model["rnn"]
    model = parsed_model("--model.merge.name=pool")
    assert "keep_ratio" not in model["merge"] or "keep_ratio" in _args("merge", "pool")
    model = parsed_model()  # no switch: the recipe as written (a typo there still fails when the part is built)
    assert model["rnn"]["head_size"] == 32
    from aurora.recipes import resolve

    spec = {"rnn": {"name": "rwkv6", "head_size": 32, "hed_size": 1}}
    argv = ["--config", resolve("demo"), "--model.rnn.name=rwkv6"]
    assert switch_parts(spec, argv) == "" and "hed_size" in spec["rnn"]  # the recipe's own name: nothing switched


def _args(kind: str, name: str) -> set[str]:
    from aurora.registry import PARTS

    return {a.name for a in PARTS[kind].arguments(name) or []}


@pytest.mark.parametrize("flag, said", [
    ("--model.init_from=nowhere/last.ckpt", "model.init_from nowhere/last.ckpt not found"),
    ("--ckpt_path=nowhere.ckpt", "--ckpt_path nowhere.ckpt not found"),
    ("--model.rnn.checkpoint=nowhere.safetensors", "model.rnn.checkpoint nowhere.safetensors not found"),
    ("--data.synthetic=null", "holds no dataset"),
    ("--data.train_shards=nowhere/train-*.tar", "data.train_shards: no shards match: nowhere/train-*.tar"),
])
def test_missing_paths_are_one_line_before_any_model_is_built(tmp_path, monkeypatch, capsys, flag, said):
    monkeypatch.chdir(tmp_path)
    from aurora.model import AuroraModel

    def never(*a, **k):
        raise AssertionError("the model was built before the paths were checked")

    monkeypatch.setattr(AuroraModel, "from_specs", never)
    extra = [] if flag.startswith("--model.init_from") else ["--model.init_from=null"]
    assert fit_main(["fit", "--config", "demo", *extra, flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0] and "FileNotFoundError" in err[0]
