"""The lmms-eval plugin (aurora/evaluation/lmms.py) without lmms-eval (it does not install on the CPU stack):
requests shaped as lmms-eval's Instance (args tuples as its tasks build them, docs read through task_dict and
doc_to_visual) on a tiny model. Each video is read once per group, answers equal Aurora's, log-likelihoods pick
the option `aurora eval --choice loglik` picks, and a request without a readable video is a counted skip."""
import math
import sys
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infer.servefix import video_bytes, write_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Instance:  # the fields of lmms_eval.api.instance.Instance the plugin reads
    request_type: str
    arguments: tuple
    idx: int = 0
    metadata: dict = field(default_factory=dict)

    @property
    def args(self):
        return self.arguments


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from aurora import Aurora

    tmp = tmp_path_factory.mktemp("lmms")
    ckpt = write_checkpoint(tmp / "run")
    videos = []
    for i in range(2):
        videos.append(tmp / f"v{i}.mp4")
        videos[-1].write_bytes(video_bytes(i))
    docs = [{"video": str(videos[0]), "q": "What colour is the shape?"},
            {"video": str(videos[0]), "q": "Which way does it move?"},
            {"video": str(videos[1]), "q": "What colour is the shape?"},
            {"video": None, "q": "no video"}]
    return Aurora.from_pretrained(ckpt, device="cpu"), ckpt, {"toy": {"test": docs}}


def doc_to_visual(doc):
    return [doc["video"]] if doc["video"] else []


def core(setup, **kw):
    from aurora.evaluation.lmms import AuroraLMMSCore

    model, _, task_dict = setup
    c = AuroraLMMSCore("unused", model=model, **kw)
    c.task_dict = task_dict
    return c


def gen_requests(docs, gen_kwargs):
    return [Instance("generate_until", (d["q"], dict(gen_kwargs), doc_to_visual, i, "toy", "test"))
            for i, d in enumerate(docs)]


def test_generate_until_reads_each_video_once_and_answers_as_aurora(setup, caplog):
    model, _, task_dict = setup
    docs = task_dict["toy"]["test"]
    gk = {"until": ["\n\n"], "max_new_tokens": 5, "do_sample": False, "temperature": 0}
    c = core(setup, lead="generic")
    out = c.generate_until(gen_requests(docs, gk))
    assert c.reads == 2  # three questions about two videos, one state per video
    ctx = model.engine.template.generic
    for d, got in zip(docs[:3], out):
        assert got == model.ask(d["video"], d["q"], context=ctx, max_new_tokens=5).text
    assert out[3] == "" and c.skipped == 1 and "toy doc 3" in caplog.text  # no video: a logged, counted skip
    c = core(setup)  # the template's lead: the sandwich, as trained (the question before the video)
    out = c.generate_until(gen_requests(docs[:3], gk))
    assert c.reads == 3
    assert out == [model.ask(d["video"], d["q"], max_new_tokens=5).text for d in docs[:3]]


def test_loglikelihood_scores_options_from_one_state_like_aurora_eval(setup):
    from aurora.evaluation.run import AuroraPredictor

    model, ckpt, task_dict = setup
    docs = task_dict["toy"]["test"]
    q = "What colour is the shape?\nA. red\nB. green\nC. blue"
    reqs = [Instance("loglikelihood", (q, f" {letter}", doc_to_visual, 0, "toy", "test"), i)
            for i, letter in enumerate("ABC")]
    c = core(setup)
    scores = c.loglikelihood(reqs)
    assert c.reads == 1 and all(isinstance(s, float) and isinstance(g, bool) for s, g in scores)
    pred = AuroraPredictor(ckpt, frames=4)
    want = pred.choose(docs[0]["video"], q, ["red", "green", "blue"])
    assert max(range(3), key=lambda i: scores[i][0]) == want
    # the score is the continuation's log-probability: one token, so greedy iff it is the argmax
    engine = model.engine
    vs = model.read(docs[0]["video"], context=q)
    after = engine.tokenizer.encode(engine.template.after.format(question=q))
    last, _ = engine.read_ids(after, vs.state)
    import torch

    lp = torch.log_softmax(engine.rnn.logits(last).detach().float().reshape(-1), -1)
    for (s, g), letter in zip(scores, "ABC"):
        (tok,) = engine.tokenizer.encode(f" {letter}")
        assert s == pytest.approx(float(lp[tok]), abs=1e-5) and g == (int(lp.argmax()) == tok)
    bad = [Instance("loglikelihood", ("x", " A", doc_to_visual, 3, "toy", "test"))]
    assert c.loglikelihood(bad) == [(-math.inf, False)] and c.skipped == 1


def test_generation_kwargs_and_multi_round(setup):
    c = core(setup, max_new_tokens="7")
    g = c.generation({"until": "Q:", "temperature": 0.5, "top_p": 0.9})
    assert g == {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9, "stop": ["\n\n", "Q:"]}
    assert c.generation({"do_sample": False, "temperature": 0.7, "max_new_tokens": 3})["temperature"] == 0.0
    with pytest.raises(NotImplementedError, match="multi-round"):
        c.generate_until_multi_round([])
    with pytest.raises(ValueError, match="unknown lead"):
        core(setup, lead="sideways")


def test_registered_for_lmms_eval_and_the_subclass_delegates(setup, monkeypatch):
    """The entry point lmms-eval reads (group lmms_eval.models) is declared; with a stand-in for lmms-eval's
    abstract base (lmms-eval itself needs torchvision), the subclass builds, is concrete and delegates."""
    import abc

    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    assert eps == {"aurora": "aurora.evaluation.lmms:manifest"}

    class lmms(abc.ABC):  # the shape of lmms_eval.api.model.lmms (0.7): three abstract methods, task_dict
        is_simple = True

        def __init__(self):
            self._rank, self._world_size, self.task_dict = 0, 1, {}

        @abc.abstractmethod
        def loglikelihood(self, requests): ...

        @abc.abstractmethod
        def generate_until(self, requests): ...

        @abc.abstractmethod
        def generate_until_multi_round(self, requests): ...

    fake = types.ModuleType("lmms_eval.api.model")
    fake.lmms = lmms
    for name in ("lmms_eval", "lmms_eval.api"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "lmms_eval.api.model", fake)
    import aurora.evaluation.lmms as plugin

    monkeypatch.delitem(plugin.__dict__, "AuroraLMMS", raising=False)
    cls = plugin.AuroraLMMS
    assert issubclass(cls, lmms) and cls.__name__ == "AuroraLMMS" and cls.is_simple
    model, _, task_dict = setup
    m = cls("unused", model=model)
    m.task_dict["toy"] = task_dict["toy"]  # as lmms-eval's evaluator fills it
    out = m.generate_until(gen_requests(task_dict["toy"]["test"][:1], {"max_new_tokens": 3}))
    assert out == [model.ask(task_dict["toy"]["test"][0]["video"], "What colour is the shape?",
                             max_new_tokens=3).text]
    monkeypatch.delitem(plugin.__dict__, "AuroraLMMS", raising=False)


def test_the_real_lmms_eval_loads_the_plugin():
    pytest.importorskip("lmms_eval", reason="lmms-eval is an optional extra (needs torchvision: CUDA machines)")
    from lmms_eval.models import get_model

    cls = get_model("aurora")
    assert cls.__name__ == "AuroraLMMS"
