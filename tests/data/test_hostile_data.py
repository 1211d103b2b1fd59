"""Hostile and careless data: one bad sample never ends a run (counted, logged skip naming the key), nothing is
read from outside the folder the user gave, converted shards are verified before a re-run keeps them."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from aurora.data.benchmarks import read_benchmark
from aurora.data.convert import convert, plan_items, unique_key
from aurora.data.datamodule import DEFAULT_MAX_TOKENS, AuroraDataModule, check_sizes
from aurora.data.prompt import AnnotationError, question_and_answer
from aurora.data.shards import VideoQADataset
from aurora.data.video import encode_mp4


@pytest.fixture(scope="module")
def mp4():
    rng = np.random.default_rng(0)
    return encode_mp4(rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))


def conv(q="what is it?", a="a cat"):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


BAD_ANNOTATIONS = {  # key -> the sample's .json: each must be skipped as "bad annotation"
    "value_int_question": {"conversations": conv(q=5)},
    "value_null": {"conversations": conv(q=None)},
    "answer_null": {"conversations": conv(a=None)},
    "string_turns": {"conversations": ["human: hi", "gpt: ho"]},
    "conversations_str": {"conversations": "hello"},
    "surrogate_question": {"conversations": conv(q="why \ud800?")},
    "surrogate_answer": {"conversations": conv(a="\udfff")},
    "not_an_object": [1, 2, 3],
    "options_not_list": {"conversations": conv(), "options": "A"},
    "category_int": {"conversations": conv(), "category": 7},
}


def write_mixed_shard(path, mp4):
    with wds.TarWriter(str(path)) as w:
        w.write({"__key__": "good0", "mp4": mp4, "json": json.dumps({"conversations": conv()}).encode()})
        for key, meta in BAD_ANNOTATIONS.items():
            # json.dumps escapes lone surrogates as \ud800: exactly what a careless tool writes
            w.write({"__key__": key, "mp4": mp4, "json": json.dumps(meta).encode()})
        w.write({"__key__": "good1", "mp4": mp4, "json": json.dumps({"conversations": conv(a=5)}).encode()})
    return path


def test_question_and_answer_refuses_wrong_types_with_one_error_type():
    for meta in BAD_ANNOTATIONS.values():
        if isinstance(meta, dict) and "options" not in meta and "category" not in meta:
            with pytest.raises(AnnotationError):
                question_and_answer(meta["conversations"])
    assert question_and_answer(conv(a=5)) == ("what is it?", "5")  # a numeric answer stays usable
    assert issubclass(AnnotationError, ValueError)


def test_training_reader_skips_every_bad_annotation_by_key(tmp_path, mp4, caplog):
    ds = VideoQADataset(str(write_mixed_shard(tmp_path / "mixed.tar", mp4)), num_frames=2, image_size=32)
    with caplog.at_level(logging.WARNING):
        out = list(ds)
    assert [s["id"] for s in out] == ["good0", "good1"]
    assert ds.skipped == {"bad annotation": len(BAD_ANNOTATIONS)}
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(key in logged for key in BAD_ANNOTATIONS)


def test_default_token_budget_skips_a_huge_question(tmp_path, mp4):
    assert AuroraDataModule(train_shards=str(tmp_path)).length["max_tokens"] == DEFAULT_MAX_TOKENS
    path = tmp_path / "huge.tar"
    with wds.TarWriter(str(path)) as w:
        w.write({"__key__": "huge", "mp4": mp4, "json": json.dumps({"conversations": conv(q="word " * 200_000)}).encode()})
        w.write({"__key__": "ok", "mp4": mp4, "json": json.dumps({"conversations": conv()}).encode()})
    ds = VideoQADataset(str(path), num_frames=2, image_size=32, max_tokens=DEFAULT_MAX_TOKENS)
    assert [s["id"] for s in ds] == ["ok"]
    assert ds.skipped == {"over token budget": 1}


@pytest.mark.parametrize("name,value", [("num_frames", 0), ("image_size", -1), ("num_frames", "8"), ("max_tokens", 0)])
def test_sizes_are_refused_at_start_up(name, value):
    with pytest.raises(ValueError, match=f"data.{name}"):
        check_sizes(**{name: value})
    with pytest.raises(ValueError, match=name):
        AuroraDataModule(train_shards="x", **{name: value})


class _Answer:
    def __init__(self, text):
        self.text = text


class TokenisingEngine:
    """The part of StreamEngine that predict_shards uses, tokenising the prompt as the real engine does (so an
    unencodable question fails where it would) and answering with the question's length."""

    def __init__(self):
        from aurora.data.prompt import PromptTemplate, Tokenizer

        self.tokenizer, self.template = Tokenizer(), PromptTemplate()

    def ask(self, video, question, **kwargs):
        return _Answer(str(len(self.template.build_prompt(self.tokenizer, question))))


def test_ask_shards_skips_bad_samples_and_writes_the_good_ones(tmp_path, mp4):
    from aurora.infer.ask import predict_shards

    shard = write_mixed_shard(tmp_path / "mixed.tar", mp4)
    summary = predict_shards(TokenisingEngine(), str(shard), tmp_path / "pred.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["good0", "good1"] and summary["written"] == 2
    assert summary["skipped"] == {"bad annotation": len(BAD_ANNOTATIONS)}


def test_eval_refuses_paths_outside_the_video_folder_and_skips_bad_text(tmp_path, mp4):
    from aurora.evaluation.run import evaluate

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "vid1.mp4").write_bytes(mp4)
    (tmp_path / "secret.mp4").write_bytes(mp4)
    (videos / "vid4.mp4").symlink_to(tmp_path / "secret.mp4")
    recs = [{"id": 1, "video_id": 1, "question": "what is it?", "answer": "cat"},
            {"id": 2, "video_id": "../../../../../../../../etc/passwd", "question": "q", "answer": "a"},
            {"id": 3, "video_id": str(tmp_path / "secret.mp4"), "question": "q", "answer": "a"},
            {"id": 4, "video_id": 4, "question": "q", "answer": "a"},
            {"id": 5, "video_id": 1, "question": "bad \ud800", "answer": "a"}]
    ann = tmp_path / "test_qa.json"
    ann.write_text(json.dumps(recs))
    bench = read_benchmark("msvd_qa", ann, videos)
    assert sorted(r["id"] for r in bench.refused_videos) == ["2", "3", "4"]
    assert [s.id for s in bench.samples] == ["1", "5"]
    assert len(read_benchmark("msvd_qa", ann, videos, allow_outside=True).samples) == 5  # the opt-in
    engine = TokenisingEngine()
    report = evaluate(bench, lambda video, prompt: engine.ask(video, prompt).text)
    assert [r["id"] for r in report.records] == ["1"]
    assert [e["id"] for e in report.errors] == ["5"] and "UnicodeEncodeError" in report.errors[0]["error"]


# -- aurora data convert ------------------------------------------------------------------------------------
def test_unique_keys_after_deduplication():
    seen = set()
    assert [unique_key(k, i, seen) for i, k in enumerate(["x", "x-2", "x", "x-2", "x"])] == \
        ["x", "x-2", "x-2-2", "x-2-3", "x-4"]
    assert len(seen) == 5


def test_convert_reads_only_regular_files_inside_the_folder(tmp_path, mp4):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.mp4").write_bytes(mp4)
    (videos / "a.mp4").write_bytes(mp4)
    (videos / "sub" / "b.mp4").write_bytes(mp4)
    (videos / "link_out.mp4").symlink_to(tmp_path / "outside" / "secret.mp4")
    (videos / "zero.mp4").symlink_to("/dev/zero")
    (videos / "link_in.mp4").symlink_to(videos / "a.mp4")
    os.mkfifo(videos / "fifo.mp4")
    (videos / "big.mp4").write_bytes(mp4 + b"\0" * 5000)
    recs = [{"id": i, "video": v, "conversations": conv()} for i, v in enumerate(
        ["a.mp4", "sub/b.mp4", "../outside/secret.mp4", str(tmp_path / "outside" / "secret.mp4"), "link_out.mp4",
         "zero.mp4", "fifo.mp4", "link_in.mp4", "big.mp4", "sub/../a.mp4"])]
    recs += [{"id": "x", "video": "a.mp4", "conversations": conv()},
             {"id": "x-2", "video": "a.mp4", "conversations": conv()},
             {"id": "x", "video": "a.mp4", "conversations": conv()},
             {"id": "s", "video": "a.mp4", "conversations": conv(q="\ud800")},
             {"id": "t", "video": "a.mp4", "conversations": "hello"},
             {"id": "u", "video": "a.mp4", "conversations": conv(), "note": "\udc80"}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(recs))
    m = convert(ann, videos, tmp_path / "out", workers=1, progress=False, max_video_bytes=len(mp4) + 100)
    entry = m["splits"]["train"]
    refused = sorted(s["id"] for s in entry["skipped"] if s["reason"] == "refused video")
    assert refused == [2, 3, 4, 5, 6, 8]
    assert sorted(s["id"] for s in entry["skipped"] if s["reason"] == "bad record") == ["s", "t", "u"]
    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "out" / "train-00000.tar"), shardshuffle=False)]
    assert len(keys) == len(set(keys)) == entry["count"] == 7  # 0, 1, 7, 9, x, x-2, x again
    m = convert(ann, videos, tmp_path / "out2", workers=1, progress=False, allow_outside=True)
    assert sorted(s["id"] for s in m["splits"]["train"]["skipped"] if s["reason"] == "refused video") == [5, 6]


def test_a_shard_changed_after_conversion_is_rewritten(tmp_path, mp4):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        (videos / f"{i}.mp4").write_bytes(mp4)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"id": i, "video": f"{i}.mp4", "conversations": conv()} for i in range(3)]))
    out = tmp_path / "out"
    convert(ann, videos, out, workers=1, progress=False)
    shard = out / "train-00000.tar"
    whole = shard.read_bytes()
    stats = json.loads((out / ".convert" / "train-00000.tar.json").read_text())
    assert stats["file_bytes"] == len(whole) and len(stats["sha256"]) == 64
    def intact():  # the file is the one its stats describe, with every sample (tar headers carry the mtime)
        from aurora.data.convert import file_sha256

        st = json.loads((out / ".convert" / "train-00000.tar.json").read_text())
        n = sum(1 for _ in wds.WebDataset(str(shard), shardshuffle=False))
        return st["sha256"] == file_sha256(shard) and st["file_bytes"] == shard.stat().st_size and n == 3

    assert intact()
    shard.write_bytes(whole[: len(whole) // 2])  # truncated
    convert(ann, videos, out, workers=1, progress=False)
    assert intact()
    whole = shard.read_bytes()
    shard.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))  # same size, one byte changed
    convert(ann, videos, out, workers=1, progress=False)
    assert intact()
    kept = shard.read_bytes()
    convert(ann, videos, out, workers=1, progress=False)
    assert shard.read_bytes() == kept  # an intact shard is kept as it is


def test_pool_workers_die_with_a_killed_parent(tmp_path):
    """The conversion's pool workers are SIGKILLed with their parent (no orphans writing shards)."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import concurrent.futures as cf, multiprocessing as mp, os, sys, time\n"
        "from aurora.data.convert import _init_worker\n"
        "def pid(_):\n    time.sleep(0.2); return os.getpid()\n"
        "if __name__ == '__main__':\n"
        "    q = mp.get_context().Queue()\n"
        "    pool = cf.ProcessPoolExecutor(2, initializer=_init_worker, initargs=(q,))\n"
        "    pids = set(pool.map(pid, range(4)))\n"
        f"    open({str(tmp_path / 'pids')!r}, 'w').write(' '.join(map(str, pids)))\n"
        "    time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        for _ in range(300):
            if (tmp_path / "pids").exists() and (tmp_path / "pids").read_text():
                break
            time.sleep(0.1)
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        assert pids
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.time() + 10
        alive = pids
        while alive and time.time() < deadline:
            time.sleep(0.1)
            alive = [p for p in alive if _alive(p)]
        assert not alive, f"orphaned workers: {alive}"
    finally:
        parent.kill()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
