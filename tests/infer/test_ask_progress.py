"""`aurora ask --shards`: one bar over the samples with the running accuracy (not one bar per video), its total read
from the shards' headers; the summary holds the accuracy."""
import json

import webdataset as wds

from aurora.infer.ask import accuracy_text, count_samples, predict_shards


class _Answer:
    def __init__(self, text):
        self.text = text


class EchoEngine:
    """What predict_shards uses of the StreamEngine: answers "a cat" to everything; ``progress`` is its per-video
    bar, which must be off while the samples' bar runs."""

    def __init__(self):
        from aurora.data.prompt import PromptTemplate

        # the reader only keeps the tokenizer (raw samples are not tokenised): any object will do, and the RWKV
        # World vocabulary is not loaded
        self.tokenizer, self.template, self.progress, self.seen = object(), PromptTemplate(), True, []

    def ask(self, video, question, **kwargs):
        self.seen.append(self.progress)
        return _Answer("A cat.")


def _shard(path):
    with wds.TarWriter(str(path)) as w:
        for i, answer in enumerate(["a cat", "a dog", "a cat"]):
            conv = [{"from": "human", "value": "what is it?"}, {"from": "gpt", "value": answer}]
            w.write({"__key__": f"s{i}", "mp4": b"not decoded by this engine", "json": json.dumps(
                {"conversations": conv}).encode()})
        w.write({"__key__": "bad", "mp4": b"x", "json": b"{not json"})
    return path


def test_one_bar_over_the_samples_with_the_running_accuracy(tmp_path, capsys):
    shard = _shard(tmp_path / "test-000000.tar")
    assert count_samples([str(shard)]) == 4 and count_samples(["http://host/x.tar"]) is None
    engine = EchoEngine()
    summary = predict_shards(engine, str(shard), tmp_path / "pred.jsonl", progress=True)
    assert summary["written"] == 3 and summary["accuracy"] == 2 / 3 and summary["skipped"] == {"bad annotation": 1}
    assert engine.seen == [False] * 3 and engine.progress is True  # no bar per video; restored after
    err = capsys.readouterr().err
    assert err.count("answering") >= 1 and "4/4" in err and "acc 0.667 (2/3)" in err
    assert "reading video" not in err
    assert accuracy_text(0, 0) == "acc -"
    predict_shards(engine, str(shard), tmp_path / "pred.jsonl", limit=1)  # no progress: no bar
    assert "answering" not in capsys.readouterr().err
