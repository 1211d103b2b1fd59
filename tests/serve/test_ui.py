"""The web page's callbacks (aurora/serve/ui.py) without a browser: choosing a video shows its sampled frames and
the merge picture, the first answer is ``Aurora.ask``'s token for token and streams in pieces, a follow-up question
(and coming back to a video) does not read the video again, bad input is a named UIError, the model that answers
is untouched by the picture, the page mounts at /ui, and ``aurora ui`` refuses bad arguments with exit 2."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from aurora.serve.ui import ModelRunner, Page, UIError, list_videos, tracing_vision
from infer.servefix import video_bytes, write_checkpoint

Q1, Q2 = "What colour is the shape?", "Which way does it move?"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ui")
    ckpt = write_checkpoint(d / "run")
    videos = d / "videos"
    (videos / "more").mkdir(parents=True)
    (videos / "a.mp4").write_bytes(video_bytes(0))
    (videos / "more" / "b.mp4").write_bytes(video_bytes(1))
    (videos / "notes.txt").write_text("not a video")
    (d / "broken.mp4").write_bytes(b"\x00garbage" * 50)
    return d, ckpt, videos


@pytest.fixture(scope="module")
def model(files):
    from aurora import Aurora

    return Aurora.from_pretrained(files[1], device="cpu")


@pytest.fixture
def page(model, files, monkeypatch):
    p = Page(model, files[2])
    calls = []
    real = model.engine.read_video

    def counted(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(model.engine, "read_video", counted)
    p.engine_reads = calls
    return p


def test_examples_are_the_videos_inside_the_folder(files, page):
    assert list_videos(files[2]) == ["a.mp4", "more/b.mp4"] == page.examples
    for bad in ("../broken.mp4", "notes.txt", "/etc/passwd", "more/../../broken.mp4"):
        with pytest.raises(UIError, match="unknown example video"):
            page.choose(bad, None)


def test_choosing_a_video_shows_its_sampled_frames_and_the_merge_picture(model, page):
    video, gallery, picture, info, chat, session = page.choose("a.mp4", None)
    assert video.endswith("a.mp4") and chat == [] and session["name"] == "a.mp4"
    assert len(gallery) == 4  # the run's data.num_frames, sampled uniformly from 12
    frames = [img for img, _ in gallery]
    assert all(f.dtype == np.uint8 and f.shape == (32, 32, 3) for f in frames)
    assert [c.split(" ·")[0] for _, c in gallery] == ["frame 1", "frame 4", "frame 7", "frame 10"]
    assert picture.dtype == np.uint8 and picture.ndim == 3 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 20
    assert "4 of its 12 frames sampled" in info and "not read yet" in info
    assert page.reads == 0 and page.engine_reads == []  # the picture does not read the video into a state
    assert model.engine.model.vision.merge.trace_source is False  # the answering model is untouched


def test_the_answer_streams_and_equals_ask_and_a_follow_up_does_not_reread(model, files, page):
    session = page.choose("a.mp4", None)[-1]
    steps = list(page.ask(Q1, session))
    assert page.reads == 1 and len(page.engine_reads) == 1
    ref = model.ask(files[2] / "a.mp4", Q1)
    del page.engine_reads[1:]  # the reference's own read
    assert ref.text and steps[-1][0][-1] == {"role": "assistant", "content": ref.text}
    partial = [s[0][-1]["content"] for s in steps]
    assert len(set(partial)) >= 3  # empty, then pieces growing, then the whole answer
    assert all(ref.text.startswith(p.strip()) for p in partial)
    assert steps[-1][2] == "" and "1 question(s) answered" in steps[-1][3]
    follow = list(page.ask(Q2, session))
    assert page.reads == 1 and len(page.engine_reads) == 1  # answered from the kept state
    vs = session["states"][session["sha"]]
    assert follow[-1][0][-1]["content"] == model.answer(vs, Q2).text  # answer() reads no video
    assert [m["role"] for m in follow[-1][0]] == ["user", "assistant"] * 2
    # another video, then back: the first one's state is still kept (keyed by its sha256)
    session = page.choose("more/b.mp4", session)[-1]
    list(page.ask(Q1, session))
    session = page.choose("a.mp4", session)[-1]
    list(page.ask(Q2, session))
    assert page.reads == 2 and len(session["states"]) == 2


def test_an_upload_is_keyed_by_content_not_name(model, files, page, tmp_path):
    session = page.choose("a.mp4", None)[-1]
    list(page.ask(Q1, session))
    copy = tmp_path / "renamed.mp4"
    copy.write_bytes((files[2] / "a.mp4").read_bytes())
    session = page.upload(str(copy), session)[-1]
    list(page.ask(Q2, session))
    assert page.reads == 1  # the same bytes: the same state


def test_bad_input_is_a_named_error(files, page):
    with pytest.raises(UIError, match="pick an example video or upload one first"):
        list(page.ask(Q1, None))
    session = page.choose("a.mp4", None)[-1]
    with pytest.raises(UIError, match="type a question"):
        list(page.ask("   ", session))
    with pytest.raises(UIError, match="cannot read the video broken.mp4"):
        page.upload(str(files[0] / "broken.mp4"), None)
    with pytest.raises(UIError, match="no video was uploaded"):
        page.upload(None, None)


def test_tracing_view_shares_weights_and_leaves_the_encoder_alone(model):
    vision = model.engine.model.vision
    view = tracing_vision(vision)
    assert view.merge is not vision.merge and view.merge.trace_source and not vision.merge.trace_source
    assert dict(view.named_parameters()).keys() == dict(vision.named_parameters()).keys()
    assert all(a is b for a, b in zip(view.parameters(), vision.parameters()))
    x = torch.randn(2, 3, 32, 32)
    assert vision(x).source is None and view(x).source is not None
    assert torch.equal(vision(x).tokens, view(x).tokens)


def test_on_a_serve_app_the_model_runs_on_the_servers_model_thread(model):
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    pool = ThreadPoolExecutor(1, thread_name_prefix="aurora-model")
    try:
        app = SimpleNamespace(state=SimpleNamespace(aurora=SimpleNamespace(worker=SimpleNamespace(pool=pool))))
        runner = ModelRunner.for_app(app, model)
        assert runner.call(lambda: threading.current_thread().name).startswith("aurora-model")
        names = list(runner.iterate(iter([1, 2])))
        assert names == [1, 2]
    finally:
        pool.shutdown()
    plain = ModelRunner.for_app(SimpleNamespace(state=SimpleNamespace()), model)
    assert plain.pool is None and plain.lock is ModelRunner(model).lock  # one lock per model


def test_mount_ui_serves_the_page_at_ui(model, files):
    pytest.importorskip("gradio", reason="the web page needs gradio (pip install 'aurora-long[dev]')")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from aurora.serve.ui import build_ui, mount_ui

    blocks = build_ui(model, files[2])
    assert isinstance(blocks.aurora_page, Page) and blocks.aurora_page.examples == ["a.mp4", "more/b.mp4"]
    app = mount_ui(FastAPI(), model, files[2])
    with TestClient(app) as client:
        r = client.get("/ui/")
        assert r.status_code == 200 and "<html" in r.text.lower()
        cfg = client.get("/ui/config").json()
        assert "a.mp4" in str(cfg) and "aurora-question" in str(cfg)


def test_aurora_ui_refuses_bad_arguments(files, capsys):
    from aurora.cli import main

    for argv, message in ((["--videos", str(files[0] / "nope")], "is not a folder"),
                          (["--port", "70000"], "--port must be in 1..65535")):
        with pytest.raises(SystemExit) as e:
            main(["ui", "--model", str(files[1]), *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_aurora_ui_names_a_model_it_cannot_load(files, capsys):
    from aurora.cli import main

    assert main(["ui", "--model", str(files[0] / "missing.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aurora ui: error:") and "missing.ckpt" in err and "\n" not in err
