"""One read, many questions (issue 18): what is read before the video (the prompt's lead), states as of moments
in time (snapshots), and answering from a snapshot equal, token for token, to reading up to that moment from
scratch."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from aurora.data.prompt import PromptTemplate, Tokenizer
from aurora.data.video import encode_mp4
from aurora.infer.engine import Generation, StreamEngine, StreamError, parse_moment
from aurora.types import VIDEO_TOKEN
from _models import tiny_checkpoint
from test_stream import Q, tiny_model

FPS = 8


@pytest.fixture(scope="module")
def video() -> bytes:  # 40 frames at 8 fps: 5 s
    return encode_mp4(np.random.RandomState(3).randint(0, 255, (40, 32, 32, 3), np.uint8), fps=FPS)


# ------------------------------------------------------------------------------------------------ the lead


def test_each_lead_reads_its_text_before_the_video():
    tok, tpl = Tokenizer(), PromptTemplate(generic="Describe the video.")
    after = tok.encode(tpl.after.format(question=Q))
    assert tpl.build_prompt(tok, Q) == tok.encode(tpl.before.format(question=Q)) + [VIDEO_TOKEN] + after
    assert tpl.build_prompt(tok, Q, "generic") == (tok.encode(tpl.before.format(question="Describe the video."))
                                                   + [VIDEO_TOKEN] + after)
    assert tpl.build_prompt(tok, Q, "none") == [VIDEO_TOKEN] + after
    ids, labels = tpl.build(tok, Q, "red", "none")
    assert ids[0] == VIDEO_TOKEN and labels[: len(after) + 1] == [-100] * (len(after) + 1)
    with pytest.raises(ValueError, match="unknown prompt lead 'sometimes'"):
        PromptTemplate(lead="sometimes")
    with pytest.raises(ValueError, match="prompt mix must give non-negative weights"):
        PromptTemplate(lead="mix", mix={"question": 1.0, "maybe": 1.0})


def test_the_mix_is_seeded_per_sample_with_its_weights():
    tpl = PromptTemplate(lead="mix", mix={"question": 0.5, "generic": 0.3, "none": 0.2})
    keys = [f"sample-{i:05d}" for i in range(4000)]
    draws = [tpl.choose_lead(k, seed=7) for k in keys]
    assert draws == [tpl.choose_lead(k, seed=7) for k in keys]  # reproducible
    assert draws != [tpl.choose_lead(k, seed=8) for k in keys]  # and the seed matters
    share = {k: v / len(keys) for k, v in Counter(draws).items()}
    assert abs(share["question"] - 0.5) < 0.03 and abs(share["generic"] - 0.3) < 0.03
    assert abs(share["none"] - 0.2) < 0.03
    assert tpl.lead_at_inference == "question"  # asked from scratch, a mixed model gets the sandwich
    assert PromptTemplate(lead="generic").choose_lead("x") == "generic"


def test_training_draws_the_lead_and_evaluation_reads_the_inference_lead(tmp_path):
    from aurora.data.datamodule import AuroraDataModule

    dm = AuroraDataModule(data_dir=str(tmp_path / "d"), synthetic={"train": 24, "val": 2, "test": 6, "frames": 4,
                          "size": 32}, num_frames=4, image_size=32, batch_size=2, num_workers=0,
                          template={"lead": "mix", "mix": {"question": 0.5, "none": 0.5}})
    dm.prepare_data()
    dm.setup("fit")
    firsts = {int(s["input_ids"][0]) == VIDEO_TOKEN for s in dm.dataset("train")}
    assert firsts == {True, False}  # both leads were drawn in training
    assert not any(int(s["input_ids"][0]) == VIDEO_TOKEN for s in dm.dataset("test"))  # the sandwich
    dm.eval_lead = "none"
    assert all(int(s["input_ids"][0]) == VIDEO_TOKEN for s in dm.dataset("test"))
    with pytest.raises(ValueError, match="unknown eval_lead"):
        AuroraDataModule(data_dir=str(tmp_path / "d"), eval_lead="half")


def test_a_state_read_with_no_lead_answers_as_the_none_prompt_from_scratch(video):
    model = tiny_model("rwkv6")
    engine = StreamEngine(model, template=PromptTemplate(), chunk_frames=3)
    gen = Generation(max_new_tokens=6, stop=(), eos_id=None)
    vs = engine.read_video(video, None, frames=8)
    assert vs.context is None and vs.positions == 8 * vs.positions // 8
    tok, tpl = Tokenizer(), PromptTemplate()
    from aurora.data.video import decode_video, to_pixels

    pixels = to_pixels(decode_video(video, 8), 32)[None]
    ref = model.generate(pixels, torch.tensor([tpl.build_prompt(tok, Q, "none")]), max_new_tokens=6, eos_id=None)
    assert engine.answer(vs, Q, gen).tokens == ref


# ------------------------------------------------------------------------------------------------ moments


def test_parse_moment():
    assert parse_moment("00:01:10") == 70 and parse_moment("1:05.5") == 65.5 and parse_moment("12") == 12
    for bad in ("1:75", "-3", "a:b", "1:2:3:4"):
        with pytest.raises(ValueError, match="a moment is"):
            parse_moment(bad)


@pytest.mark.parametrize("backbone", ["rwkv6", "transformer"])
def test_an_answer_from_a_snapshot_equals_reading_up_to_that_moment(backbone, video, tmp_path):
    engine = StreamEngine(tiny_model(backbone), chunk_frames=5)
    gen = Generation(max_new_tokens=6, stop=(), eos_id=None)
    whole = engine.read_video(video, "Describe the video.", fps=4.0, snapshot_every=1.0,
                              on_snapshot=engine.snapshot_writer(tmp_path / "snaps"))
    index = json.loads((tmp_path / "snaps" / "snapshots.json").read_text())["snapshots"]
    assert [e["at"] for e in index] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert index[-1]["frames"] == whole.frames == 20
    sizes = {(tmp_path / "snaps" / e["file"]).stat().st_size for e in index}
    assert max(sizes) - min(sizes) < 64 if backbone == "rwkv6" else len(sizes) > 1  # RNN: constant size
    for at in (0.0, 1.6, 2.0, 3.9, 5.0):
        scratch = engine.read_video(video, "Describe the video.", fps=4.0, until=at)
        snap = engine.load_snapshot(tmp_path / "snaps", at)
        assert snap.meta["until"] <= at < snap.meta["until"] + 1.0 or at == 5.0
        resumed = engine.read_video(video, None, fps=4.0, resume=snap, until=at)
        assert resumed.frames == scratch.frames and resumed.positions == scratch.positions
        assert resumed.meta["last_frame"] == scratch.meta["last_frame"]
        assert engine.answer(resumed, Q, gen).tokens == engine.answer(scratch, Q, gen).tokens
    # the end of the video: the last snapshot is the whole reading
    assert engine.answer(engine.load_snapshot(tmp_path / "snaps", 99.0), Q, gen).tokens == \
        engine.answer(whole, Q, gen).tokens


def test_snapshot_errors_are_clear(video, tmp_path):
    engine = StreamEngine(tiny_model(), chunk_frames=4)
    with pytest.raises(FileNotFoundError, match="no snapshots.json"):
        engine.load_snapshot(tmp_path, 1.0)
    engine.read_video(video, "x", fps=2.0, snapshot_every=2.0, on_snapshot=engine.snapshot_writer(tmp_path / "s"))
    whole = engine.read_video(video, "x", fps=2.0)
    with pytest.raises(StreamError, match="continue only from a snapshot"):
        engine.read_video(video, None, fps=2.0, resume=whole, until=3.0)
    index = tmp_path / "s" / "snapshots.json"
    doc = json.loads(index.read_text())
    doc["snapshots"][0]["file"] = "../../etc/passwd"
    index.write_text(json.dumps(doc))
    with pytest.raises(StreamError, match="outside its folder"):
        engine.load_snapshot(tmp_path / "s", 0.5)
    with pytest.raises(StreamError, match="nothing was read"):
        StreamEngine(tiny_model()).read_video(video, None, fps=2.0, until=-1.0)


def test_ask_snapshots_and_answers_at_a_moment_from_the_command_line(video, tmp_path, capsys):
    """aurora ask --snapshot-every S --save-state DIR, then --load-state DIR --video V --at T, equal to reading
    up to T with --at alone."""
    from aurora.cli import main

    tiny_checkpoint(tmp_path / "m.ckpt")
    (tmp_path / "v.mp4").write_bytes(video)
    base = ["ask", "--ckpt", str(tmp_path / "m.ckpt"), "--question", Q, "--no-progress", "--json", "--fps", "4",
            "--lead", "generic"]
    assert main([*base, "--video", str(tmp_path / "v.mp4"), "--snapshot-every", "1",
                 "--save-state", str(tmp_path / "snaps")]) == 0
    capsys.readouterr()
    assert main([*base, "--video", str(tmp_path / "v.mp4"), "--at", "00:00:02.6"]) == 0
    scratch = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main([*base, "--video", str(tmp_path / "v.mp4"), "--load-state", str(tmp_path / "snaps"),
                 "--at", "00:00:02.6"]) == 0
    cap = capsys.readouterr()
    resumed = json.loads(cap.out.strip().splitlines()[-1])
    assert "from the snapshot at 2 s" in cap.err
    assert resumed["tokens"] == scratch["tokens"] and resumed["frames"] == scratch["frames"] == 10  # 20 of 40 frames: 10 by 2.6 s
    with pytest.raises(SystemExit):
        main([*base, "--video", str(tmp_path / "v.mp4"), "--snapshot-every", "1"])  # needs --save-state
    assert "--snapshot-every SECONDS (> 0) needs --save-state DIR" in capsys.readouterr().err
