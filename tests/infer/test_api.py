"""The Python API (aurora/infer/api.py): `from aurora import Aurora` is lazy, from_pretrained loads a checkpoint
or an export, the export round trip answers token for token alike, loading executes no code, streaming joins to
the engine's answer, and `aurora export` writes the directory (exit 2 with one line on a bad checkpoint)."""
import json
import pickle
import subprocess
import sys

import pytest

from aurora.infer.engine import Generation
from servefix import video_bytes, write_checkpoint

Q = "What colour is the shape?"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("run"))


def test_import_aurora_is_cheap_and_the_name_resolves():
    code = ("import sys, aurora; assert 'aurora.infer.api' not in sys.modules and 'torch' not in sys.modules; "
            "from aurora import Aurora; assert Aurora.__module__ == 'aurora.infer.api'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    import aurora

    with pytest.raises(AttributeError):
        aurora.NoSuchThing


def test_ask_read_answer_match_the_engine(ckpt):
    from aurora import Aurora
    from aurora.infer.engine import engine_from_checkpoint

    m = Aurora.from_pretrained(ckpt, device="cpu")
    v = video_bytes()
    engine, info = engine_from_checkpoint(ckpt, device="cpu")
    gen = Generation(max_new_tokens=8, stop=("\n\n",))
    ref = engine.ask(v, Q, frames=4, gen=gen)  # frames 4: the run's data.num_frames, the API's default
    assert m.ask(v, Q).tokens == ref.tokens
    st = m.read(v, context=Q)
    assert st.frames == 4 and m.answer(st, Q).tokens == ref.tokens
    assert m.answer(st, Q).tokens == ref.tokens  # the state is untouched by answering


def test_save_pretrained_round_trip_is_token_for_token(ckpt, tmp_path):
    from aurora import Aurora

    m = Aurora.from_pretrained(ckpt, device="cpu")
    out = m.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "tokenizer"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["rnn"]["name"] == "rwkv6" and cfg["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert cfg["preprocessing"]["num_frames"] == 4 and cfg["generation"]["max_new_tokens"] == 8
    card = (out / "README.md").read_text()
    assert "best val/loss: 3.25" in card and "lr" in card and "image_size" in card and "2 steps" in card
    m2 = Aurora.from_pretrained(out, device="cpu")
    v = video_bytes(1)
    for kw in ({}, {"temperature": 0.9, "top_p": 0.8, "seed": 3, "max_new_tokens": 12, "stop": []}):
        a, b = m.ask(v, Q, **kw), m2.ask(v, Q, **kw)
        assert a.tokens == b.tokens and a.text == b.text, kw
    assert m.engine.fingerprint() == m2.engine.fingerprint()  # same weights, bit for bit


def test_loading_an_export_executes_no_code(ckpt, tmp_path, monkeypatch):
    from aurora import Aurora

    out = Aurora.from_pretrained(ckpt, device="cpu").save_pretrained(tmp_path / "e")

    def refuse(*a, **k):
        raise AssertionError("unpickling during from_pretrained")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    import torch

    monkeypatch.setattr(torch, "load", refuse)
    Aurora.from_pretrained(out, device="cpu")  # safetensors + json only


def test_bad_exports_are_named(ckpt, tmp_path):
    from aurora import Aurora
    from aurora.infer.api import PretrainedError

    with pytest.raises(PretrainedError, match="no config.json"):
        Aurora.from_pretrained(tmp_path, device="cpu")
    out = Aurora.from_pretrained(ckpt, device="cpu").save_pretrained(tmp_path / "e")
    cfg = json.loads((out / "config.json").read_text())
    cfg["model"]["rnn"]["d_model"] = 64
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PretrainedError, match="does not fit"):
        Aurora.from_pretrained(out, device="cpu")
    with pytest.raises(FileNotFoundError):
        Aurora.from_pretrained(tmp_path / "nothing", device="cpu")


def test_stream_joins_to_the_answer(ckpt):
    from aurora import Aurora

    m = Aurora.from_pretrained(ckpt, device="cpu")
    st = m.read(video_bytes(2), context="Describe the video.")
    for kw in ({"max_new_tokens": 16, "stop": []}, {"max_new_tokens": 16, "temperature": 1.5, "seed": 1},
               {"max_new_tokens": 20, "temperature": 2.0, "seed": 4, "stop": ["e"]}):
        pieces = list(m.stream(st, Q, **kw))
        ans = m.answer(st, Q, **kw)
        assert "".join(pieces).strip() == ans.text, kw


def test_aurora_export_command(ckpt, tmp_path, capsys):
    from aurora.cli import main

    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x/model.safetensors").is_file()
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert main(["export", "--ckpt", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[-1].startswith("aurora export: error: cannot read checkpoint"), err
