"""One read, many questions for EVERY backbone in the registry (issue 18): a saved state answers exactly like
reading from scratch, a snapshot answers exactly like reading up to its moment, and answering or scoring options
from a state (a fork) leaves it as it was: token for token, for the linear RNNs and for the transformer baseline
(whose state is its KV cache). Tiny models (d_model 64, 2 layers), 2-4 frames."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import aurora.components  # noqa: F401  (fills the registries)
from aurora.data.prompt import PromptTemplate, Tokenizer
from aurora.data.video import decode_video, encode_mp4, to_pixels
from aurora.infer.engine import Generation, StreamEngine
from aurora.model import AuroraModel
from aurora.registry import RNN
from _backbones import TINY, randomised

BACKBONES = sorted(RNN.names())
Q, Q2 = "What colour is the shape?", "Which way does it move?"
CONTEXT = "Describe the video."
GEN = Generation(max_new_tokens=4, stop=(), eos_id=None)


def model_for(backbone: str, seed: int = 0) -> AuroraModel:
    """The whole tiny model with the backbone's tiny configuration (tests/_backbones.py), the RWKV World vocabulary,
    its weights perturbed so every path of the backbone carries signal."""
    spec = TINY[backbone]
    torch.manual_seed(seed)
    model = AuroraModel.from_specs(
        vision={"name": "siglip", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 64, "image_size": 32, "patch_size": 8},
        merge={"name": "tome", "keep_ratio": 0.25, "order": "size_ascending"}, projector="mlp",
        rnn={"name": backbone, **spec.config, "vocab_size": 65536})
    randomised(model.rnn, seed=seed, scales=spec.scales)
    return model.eval()


@pytest.fixture(scope="module")
def video() -> bytes:  # 16 frames at 4 fps: 4 s
    return encode_mp4(np.random.RandomState(5).randint(0, 255, (16, 32, 32, 3), np.uint8), fps=4)


@pytest.fixture(scope="module", params=BACKBONES)
def engine(request) -> StreamEngine:
    return StreamEngine(model_for(request.param), chunk_frames=3)


def test_every_registered_backbone_is_covered():
    assert set(RNN.names()) <= set(TINY), sorted(set(RNN.names()) - set(TINY))


def test_a_saved_state_answers_like_reading_from_scratch(engine, video, tmp_path):
    """save -> load in another engine -> several questions == reading context + video + question from scratch; and
    the sandwich (context == question) == AuroraModel.generate on the same frames."""
    model = engine.model
    path = engine.save_state(engine.read_video(video, CONTEXT, frames=4), tmp_path / "s.safetensors")
    other = StreamEngine(model, chunk_frames=4)
    vs = other.load_state(path)
    assert vs.frames == 4 and vs.context == CONTEXT
    for q in (Q, Q2):  # asking leaves the loaded state untouched (Q2 after Q: the same state)
        from_state = other.answer(vs, q, GEN, keep_scores=True)
        scratch = engine.ask(video, q, frames=4, gen=GEN, context=CONTEXT, keep_scores=True)
        assert from_state.tokens == scratch.tokens, q
        torch.testing.assert_close(torch.stack(from_state.scores), torch.stack(scratch.scores), atol=1e-4, rtol=1e-4)
    tok, tpl = Tokenizer(), PromptTemplate()
    ids = tok.encode(tpl.before.format(question=Q)) + [-200] + tok.encode(tpl.after.format(question=Q))
    pixels = to_pixels(decode_video(video, 4), 32)[None]
    ref = model.generate(pixels, torch.tensor([ids]), max_new_tokens=GEN.max_new_tokens, eos_id=None)
    assert engine.ask(video, Q, frames=4, gen=GEN).tokens == ref


def test_an_answer_from_a_snapshot_equals_reading_up_to_that_moment(engine, video, tmp_path):
    whole = engine.read_video(video, CONTEXT, fps=1.0, snapshot_every=1.0,
                              on_snapshot=engine.snapshot_writer(tmp_path / "snaps"))
    index = json.loads((tmp_path / "snaps" / "snapshots.json").read_text())["snapshots"]
    assert [e["at"] for e in index] == [0.0, 1.0, 2.0, 3.0, 4.0]  # frames at 0.5, 1.5, 2.5, 3.5 s
    assert index[-1]["frames"] == whole.frames == 4
    sizes = {(tmp_path / "snaps" / e["file"]).stat().st_size for e in index}
    name = engine.model.rnn.__class__.__name__
    if TINY[next(b for b in TINY if RNN.get(b) is type(engine.model.rnn))].state_grows:
        assert len(sizes) > 1, name  # a KV cache grows with the video
    else:
        assert max(sizes) - min(sizes) < 64, (name, sizes)  # a linear RNN's state: constant size
    for at in (0.2, 1.5, 2.7, 4.0):
        scratch = engine.read_video(video, CONTEXT, fps=1.0, until=at)
        snap = engine.load_snapshot(tmp_path / "snaps", at)
        resumed = engine.read_video(video, None, fps=1.0, resume=snap, until=at)
        assert (resumed.frames, resumed.positions) == (scratch.frames, scratch.positions)
        assert engine.answer(resumed, Q, GEN).tokens == engine.answer(scratch, Q, GEN).tokens, at


@torch.no_grad()
def test_fork_and_answer_equals_fresh(engine, video):
    """Option scores and answers from one state (each a fork) equal those of a fresh read, in any order, and
    each option's score equals one teacher-forced pass over after(Q) + the option."""
    vs = engine.read_video(video, None, frames=2)
    options = ["red", "a blue square", "green"]
    first = engine.option_scores(vs, Q, options)
    ans = engine.answer(vs, Q2, GEN)
    again = engine.option_scores(vs, Q, options)
    fresh = engine.read_video(video, None, frames=2)
    assert first == again == engine.option_scores(fresh, Q, options)
    assert ans.tokens == engine.answer(fresh, Q2, GEN).tokens
    tok, tpl = engine.tokenizer, engine.template
    after = tok.encode(tpl.after.format(question=Q))
    for option, score in zip(options, first):
        cont = tok.encode(tpl.answer.format(answer=option))
        last, state = engine.read_ids(after, fresh.state)
        hidden, _ = engine.rnn(engine.rnn.embed(torch.tensor([cont[:-1]], dtype=torch.long)), state)
        logits = torch.cat([engine.rnn.logits(last), engine.rnn.logits(hidden[0])])[: len(cont)]
        logp = torch.log_softmax(logits.float(), -1)
        assert abs(float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum()) - score) < 1e-3, option
