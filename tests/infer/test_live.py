"""Live input through the engine and `aurora ask` (aurora/infer/live.py): the state read from a growing file, a
pipe or an HTTP URL answers exactly as reading the same frames from scratch; --interactive answers questions
typed on stdin from the state as of that moment while the reader keeps going."""
from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aurora.data.prompt import PromptTemplate, Tokenizer
from aurora.data.stream import LiveFrames
from aurora.data.video import to_pixels
from aurora.infer.engine import Generation, StreamEngine
from aurora.infer.live import LiveReader
from _models import tiny_checkpoint
from _live import QuietHandler, encode_ts, grow

ROOT = Path(__file__).resolve().parents[2]
Q = "What colour is the shape?"
CONTEXT = "Describe the video."
# sampled at temperature 1 from a random model: the tokens follow every change of the logits (greedy from a tiny
# random model often says the same whatever it read)
GEN = Generation(max_new_tokens=5, temperature=1.0, seed=3, stop=(), eos_id=None)
CLI_GEN = ["--max-new-tokens", "5", "--temperature", "1", "--seed", "3", "--stop", ""]


@pytest.fixture(scope="module")
def ts() -> bytes:  # 16 frames at 4 fps
    return encode_ts(np.random.RandomState(2).randint(0, 255, (16, 32, 32, 3), np.uint8))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("live") / "m.ckpt"
    return path, tiny_checkpoint(path)


def scratch_tokens(model, ts_path: Path, n: int, fps: float, question: str = Q, context: str | None = CONTEXT):
    """The reference: the first ``n`` frames sampled at ``fps`` from the finished file, one spliced prompt,
    AuroraModel's own prefill, then the engine's decoding (the same seeded sampler)."""
    frames = [a for _, a in LiveFrames(ts_path, fps=fps, follow=False, max_frames=n)]
    tok, tpl = Tokenizer(), PromptTemplate()
    before = tok.encode(tpl.before.format(question=context)) if context is not None else []
    ids = before + [-200] + tok.encode(tpl.after.format(question=question))
    pixels = to_pixels(torch.from_numpy(np.stack(frames)), 32)[None]
    logits, state = model.prefill(pixels, torch.tensor([ids]))
    return StreamEngine(model).decode(logits, state, GEN).tokens


def test_a_growing_file_answers_like_the_same_frames_from_scratch(ckpt, ts, tmp_path):
    _, model = ckpt
    engine = StreamEngine(model, chunk_frames=3)
    path = tmp_path / "live.ts"
    writer = grow(path, ts, pieces=3, pause=0.1)
    reader = LiveReader(engine, LiveFrames(path, fps=2, live_timeout=1.0), CONTEXT).run()
    writer.join()
    vs = reader.current()
    assert vs.frames == 8 and vs.meta["stream_time"] == 3.5 and vs.meta["live"]
    assert engine.answer(vs, Q, GEN).tokens == scratch_tokens(model, path, 8, 2)
    # a fork is taken under the lock and stays as it was while the reader goes on
    assert engine.answer(vs, Q, GEN).tokens == engine.answer(reader.current(), Q, GEN).tokens


def test_ask_reads_pipe_and_http_and_saves_the_state(ckpt, ts, tmp_path, monkeypatch, capsys):
    from aurora.cli import main

    path, model = ckpt
    (tmp_path / "v.ts").write_bytes(ts)
    base = ["ask", "--ckpt", str(path), "--question", Q, "--no-progress", "--json", "--fps", "2", *CLI_GEN]
    # pipe: the video arrives on stdin from another process
    cat = subprocess.Popen(["cat", str(tmp_path / "v.ts")], stdout=subprocess.PIPE)
    monkeypatch.setattr(sys, "stdin", cat.stdout)
    assert main([*base, "--video", "pipe:", "--save-state", str(tmp_path / "s.safetensors")]) == 0
    cat.wait(timeout=10)
    piped = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert piped["frames"] == 8 and piped["context"] == Q  # the sandwich: the question is known before the video
    assert piped["tokens"] == scratch_tokens(model, tmp_path / "v.ts", 8, 2, context=Q)
    # the saved live state answers later questions like any state
    engine = StreamEngine(model)
    assert engine.answer(engine.load_state(tmp_path / "s.safetensors"), Q, GEN).tokens == piped["tokens"]
    # http: a URL served on 127.0.0.1
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(QuietHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v.ts"
        assert main([*base, "--video", url, "--lead", "none", "--max-frames", "5"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    served = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert served["frames"] == 5 and served["context"] is None
    assert served["tokens"] == scratch_tokens(model, tmp_path / "v.ts", 5, 2, context=None)


def test_live_options_are_checked(ckpt, capsys):
    from aurora.cli import main

    base = ["ask", "--ckpt", str(ckpt[0]), "--video", "pipe:"]
    for extra, message in ((["--question", Q, "--frames", "4"], "sample it by time with --fps"),
                           (["--interactive"], "the video cannot come from it"),
                           (["--interactive", "--question", Q], "drop --question"),
                           (["--question", Q, "--at", "3"], "--at does not work with a live source"),
                           ([], "--question is required (or --interactive)")):
        with pytest.raises(SystemExit):
            main([*base, *extra])
        assert message in capsys.readouterr().err, extra


@pytest.fixture(scope="module")
def ts_long() -> bytes:  # 32 frames at 4 fps: the 8 frames sampled at 2 fps from its first 4 s decode before its end
    return encode_ts(np.random.RandomState(4).randint(0, 255, (32, 32, 32, 3), np.uint8))


def test_interactive_answers_each_typed_question_from_the_state_of_that_moment(ckpt, ts_long, tmp_path):
    """A subprocess reads a file as it is written and answers the questions written to its stdin: the first
    before the video is complete, then until it has read its 8 frames (--max-frames; the file goes on, so the
    reader never waits out --live-timeout for an end, as tests/data/test_live_source.py does); each answer equals
    reading, from scratch, the frames it had read when asked. Closing stdin ends it."""
    path, model = ckpt
    ts = ts_long
    video = tmp_path / "live.ts"
    video.write_bytes(ts[: len(ts) // 4])  # the first 2 s of the video so far
    proc = subprocess.Popen(
        [sys.executable, "-m", "aurora.cli", "ask", "--ckpt", str(path), "--video", str(video), "--interactive",
         "--fps", "2", "--max-frames", "8", "--json", "--no-progress", "--chunk-frames", "2", "--live-timeout", "30",
         *CLI_GEN],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    answers = []
    try:
        def ask(question: str) -> dict:
            proc.stdin.write(question + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            assert line, proc.stderr.read()[-3000:]
            return json.loads(line)

        answers.append(ask(Q))
        with open(video, "ab") as f:
            f.write(ts[len(ts) // 4:])
        deadline = time.monotonic() + 90
        while answers[-1]["frames"] < 8 and time.monotonic() < deadline:
            time.sleep(0.3)
            answers.append(ask(Q))
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    counts = [a["frames"] for a in answers]
    assert 1 <= counts[0] < 8 and counts[-1] == 8 and counts == sorted(counts), counts
    assert all(a["context"] == CONTEXT for a in answers)  # questions come later: the generic lead
    for n in sorted(set(counts)):  # each answer: the frames read when it was asked, from scratch
        want = scratch_tokens(model, video, n, 2)
        assert all(a["tokens"] == want for a in answers if a["frames"] == n), n
