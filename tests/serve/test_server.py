"""aurora serve (aurora/serve/): answers equal ``Aurora.ask`` token for token, streamed chunks join to the same text,
a follow-up question about the same video comes from the state cache without reading it again, every refusal is
OpenAI's error JSON with its status and the server serves on after it, and one real socket (uvicorn in a thread)
serves SSE and an http(s) video URL."""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest
import torch

pytest.importorskip("fastapi", reason="aurora serve needs fastapi (pip install 'aurora-long[serve]')")
pytest.importorskip("uvicorn", reason="aurora serve needs uvicorn (pip install 'aurora-long[serve]')")
from fastapi.testclient import TestClient  # noqa: E402

from aurora.serve.cache import StateCache, state_bytes  # noqa: E402
from aurora.serve.server import create_app  # noqa: E402
from infer.servefix import video_bytes  # noqa: E402

Q1, Q2 = "What colour is the shape?", "Which way does it move?"


def data_url(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def chat(url: str, *questions: str, part: str = "video_url", **params) -> dict:
    """A conversation: the video with the first question, then (with earlier answers) the follow-ups."""
    video = {"type": part, part: {"url": url}}
    messages = [{"role": "user", "content": [video, {"type": "text", "text": questions[0]}]}]
    for q in questions[1:]:
        messages += [{"role": "assistant", "content": "..."}, {"role": "user", "content": q}]
    return {"model": "tiny", "messages": messages, **params}


@pytest.fixture(scope="module")
def client(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "a.mp4").write_bytes(video_bytes(0))
    app = create_app(model, name="tiny", max_video_bytes=64 << 10, video_root=root, max_tokens=64)
    with TestClient(app) as c:
        c.root = root
        yield c


def test_answers_equal_ask_token_for_token_and_stream_joins(client, model, video):
    for params in ({"temperature": 0}, {"temperature": 0.9, "top_p": 0.8, "seed": 3, "max_tokens": 12}):
        r = client.post("/v1/chat/completions", json=chat(data_url(video), Q1, **params))
        assert r.status_code == 200, r.text
        out = r.json()
        ref = model.ask(video, Q1, **{"max_new_tokens" if k == "max_tokens" else k: v for k, v in params.items()})
        msg = out["choices"][0]
        assert msg["message"] == {"role": "assistant", "content": ref.text, "refusal": None}
        # token for token: the text re-encodes to the reference's tokens, and the counts agree
        assert model.engine.tokenizer.encode(msg["message"]["content"]) == \
            model.engine.tokenizer.encode(model.engine.tokenizer.decode(ref.tokens).strip())
        assert out["usage"]["completion_tokens"] == len(ref.tokens) and out["object"] == "chat.completion"
        assert msg["finish_reason"] == ("length" if ref.finish == "length" else "stop")
        r = client.post("/v1/chat/completions", json=chat(data_url(video), Q1, stream=True,
                                                          stream_options={"include_usage": True}, **params))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == ref.text
        assert chunks[-2]["choices"][0]["finish_reason"] == msg["finish_reason"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(ref.tokens)


def test_follow_up_comes_from_the_cache_without_reading(client, model, video, monkeypatch):
    other = video_bytes(5)
    first = client.post("/v1/chat/completions", json=chat(data_url(other), Q1, temperature=0))
    assert first.status_code == 200 and first.headers["x-aurora-cache"] == "miss"
    before = client.get("/v1/stats").json()
    ref = model.answer(model.read(other, context=Q1), Q2)
    reads = []
    real = model.engine.read_video
    monkeypatch.setattr(model.engine, "read_video", lambda *a, **k: reads.append(a) or real(*a, **k))
    # the same video, a follow-up question in the conversation: the state read with Q1 before the video serves Q2
    r = client.post("/v1/chat/completions", json=chat(data_url(other), Q1, Q2, temperature=0))
    assert r.status_code == 200 and r.headers["x-aurora-cache"] == "hit" and reads == []
    assert r.json()["choices"][0]["message"]["content"] == ref.text
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    after = client.get("/v1/stats").json()
    assert after["cache"]["hits"] == before["cache"]["hits"] + 1 and after["reads"] == before["reads"]
    # other read settings are another state: frames=2 reads again
    r = client.post("/v1/chat/completions", json=chat(data_url(other), Q1, Q2, temperature=0, frames=2))
    assert r.status_code == 200 and r.headers["x-aurora-cache"] == "miss" and len(reads) == 1


def test_state_cache_budget_evicts_least_recently_used():
    class S:  # a VideoState's shape: a nested state and logits
        def __init__(self, n):
            self.state, self.logits = [(torch.zeros(n), torch.zeros(n))], torch.zeros(1, n)

    assert state_bytes(S(10)) == 3 * 10 * 4
    c = StateCache(budget=2 * 3 * 120 * 4 + 10)  # room for two states of 3 x 120 floats
    a, b, d = S(120), S(120), S(120)
    assert c.put("a", a) and c.put("b", b)
    assert c.get("a") is a  # a is now the most recent
    assert c.put("d", d) and "b" not in c and "a" in c and "d" in c
    assert not c.put("huge", S(1000)) and len(c) == 2
    s = c.stats()
    assert (s["evictions"], s["too_large"], s["hits"], s["bytes"]) == (1, 1, 1, 2 * 3 * 120 * 4)
    assert c.get("b") is None and c.stats()["misses"] == 1


def test_errors_are_openai_json_with_their_status_and_the_server_serves_on(client, video, tmp_path):
    url = data_url(video)
    good = chat(url, Q1, temperature=0)
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(video)
    bad = [
        (400, None, b"{not json"),
        (400, "messages", {"model": "tiny", "messages": []}),
        (400, "messages[0].role", {"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}),
        (400, "no_video", {"model": "tiny", "messages": [{"role": "user", "content": Q1}]}),
        (400, "invalid_video", chat(data_url(b"\x00\x01 not a video" * 50), Q1)),
        (400, "invalid_video", chat("data:video/mp4;base64,@@@notbase64", Q1)),
        (400, "unknown_parameter", {**good, "top_k": 5}),
        (400, "video_not_found", chat("missing.mp4", Q1)),
        (403, "video_outside_root", chat(str(outside), Q1)),
        (403, "video_outside_root", chat("../" + outside.name, Q1)),
        (404, "model_not_found", {**good, "model": "gpt-4o"}),
        (413, "video_too_large", chat(data_url(b"\x00" * (70 << 10)), Q1)),
        (422, "temperature", {**good, "temperature": -0.5}),
        (422, "max_tokens", {**good, "max_tokens": 0}),
        (422, "max_completion_tokens", {**good, "max_completion_tokens": 10_000}),
        (422, "top_p", {**good, "top_p": 1.5}),
        (422, "n", {**good, "n": 2}),
        (422, "fps", {**good, "frames": 2, "fps": 1.0}),
    ]
    for status, what, body in bad:
        kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
            else {"json": body}
        r = client.post("/v1/chat/completions", **kw)
        assert r.status_code == status, (status, what, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], err
        assert "Traceback" not in r.text
        if what is not None:
            assert what in (err["param"], err["code"]), (what, err)
        assert client.post("/v1/chat/completions", json=good).status_code == 200  # and it serves on
    r = client.get("/v1/models")
    assert r.json()["data"][0]["id"] == "tiny" and r.json()["object"] == "list"
    assert client.get("/v1/models/nope").status_code == 404 and client.get("/nope").status_code == 404
    # a local path inside --video-root is served, plain or as a file:// URL, and under another part shape
    for ref in ("a.mp4", str(client.root / "a.mp4"), (client.root / "a.mp4").as_uri()):
        assert client.post("/v1/chat/completions", json=chat(ref, Q1, part="video")).status_code == 200, ref
    assert client.get("/v1/stats").json()["errors"]["422"] >= 6


def test_real_socket_streams_and_downloads_http_videos(live, model, video):
    base, files = live
    body = json.dumps(chat(files + "/v.mp4", Q1, temperature=0, stream=True)).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        lines = [ln.decode() for ln in r if ln.strip()]
    assert lines[-1].strip() == "data: [DONE]"
    text = "".join(json.loads(ln[6:])["choices"][0]["delta"].get("content", "") for ln in lines[:-1])
    assert text == model.ask(video, Q1).text
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(chat(files + "/gone.mp4", Q1)).encode(),
                                 {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 400 and json.loads(e.value.read())["error"]["code"] == "video_download_failed"


def test_the_openai_client_talks_to_it(live, model, video):
    openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install openai to "
                                 "check it against the server)")
    client = openai.OpenAI(base_url=live[0] + "/v1", api_key="none")
    out = client.chat.completions.create(**chat(data_url(video), Q1, temperature=0))
    assert out.choices[0].message.content == model.ask(video, Q1).text
    pieces = client.chat.completions.create(**chat(data_url(video), Q1, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == out.choices[0].message.content
    frames = client.chat.completions.create(**chat(data_url(video), Q1, temperature=0), extra_body={"frames": 2})
    assert frames.choices[0].message.content == model.ask(video, Q1, frames=2).text


def test_serve_command_refuses_a_bad_model_in_one_line(tmp_path, capsys):
    from aurora.cli import main

    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert main(["serve", "--model", str(tmp_path / "bad.ckpt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aurora serve: error:"), err
    assert main(["serve", "--model", str(tmp_path / "nothing")]) == 2


def test_serve_command_builds_the_app_and_names_a_missing_ui(ckpt, video, monkeypatch, capsys):
    import sys

    import uvicorn

    from aurora.cli import main

    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    assert main(["serve", "--model", str(ckpt), "--port", "8123", "--cache-mib", "1", "--device", "cpu"]) == 0
    assert (ran["host"], ran["port"]) == ("127.0.0.1", 8123)
    with TestClient(ran["app"]) as c:
        name = ckpt.parent.parent.name  # RUN/checkpoints/last.ckpt is served as RUN
        assert c.get("/v1/models").json()["data"][0]["id"] == name
        assert c.get("/v1/stats").json()["cache"]["budget_bytes"] == 1 << 20
        assert c.post("/v1/chat/completions", json={**chat(data_url(video), Q1), "model": name}).status_code == 200
    monkeypatch.setitem(sys.modules, "aurora.serve.ui", None)  # as if the web page module were absent
    assert main(["serve", "--model", str(ckpt), "--ui", "--device", "cpu"]) == 2
    assert "--ui needs the web page module aurora.serve.ui" in capsys.readouterr().err
