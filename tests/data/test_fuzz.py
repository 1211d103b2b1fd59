"""A seeded fuzz suite over what users feed Aurora: shard samples (mutated bytes, JSON types, unicode, sizes),
recipe part specs and saved state files. A fixed budget of cases (seed 0) runs on every CI in well under a
minute; it asserts no crash, every bad case counted (or refused with the one error type of its reader) and
every good case answered. docs/design.md ("Bad input") records the counts."""
import json
import random

import numpy as np
import pytest
import webdataset as wds

from aurora.data.shards import VideoQADataset
from aurora.data.video import encode_mp4

SEED = 0
SHARD_CASES = 120
SPEC_CASES = 60
STATE_CASES = 40
WEIRD = ["\ud800", "\udfff", "\x00", "\u202e", "🎬" * 50, "\ufeff", "a\r\nb", "<video>" * 20, "\\", '"']


def good_meta(i):
    return {"id": f"good{i}", "conversations": [{"from": "human", "value": f"<video>\nwhat is shape {i}?"},
                                                {"from": "gpt", "value": f"a {i}"}], "category": "all"}


def random_json(rng, depth=0):
    kinds = ["int", "float", "null", "bool", "str", "list", "dict"] if depth < 2 else ["int", "null", "str"]
    k = rng.choice(kinds)
    return {"int": lambda: rng.randint(-10**9, 10**9), "float": lambda: rng.choice([1.5, float("1e308"), -0.0]),
            "null": lambda: None, "bool": lambda: rng.random() < 0.5, "str": lambda: rng.choice(WEIRD + ["x"]),
            "list": lambda: [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))],
            "dict": lambda: {rng.choice(["from", "value", "id", "x"]): random_json(rng, depth + 1)
                             for _ in range(rng.randint(0, 3))}}[k]()


def mutate(rng, meta, mp4):
    """One mutation of a good sample: (json bytes or None, mp4 bytes or None, what was done)."""
    meta = json.loads(json.dumps(meta))
    what = rng.choice(["json bytes", "json truncated", "json type", "turn value", "turn type", "conversations",
                       "unicode", "huge text", "mp4 bytes", "mp4 truncated", "no json", "no mp4", "options",
                       "extra fields"])
    data = json.dumps(meta).encode()
    if what == "json bytes":
        b = bytearray(data)
        for _ in range(rng.randint(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        data = bytes(b)
    elif what == "json truncated":
        data = data[: rng.randrange(len(data))]
    elif what == "json type":
        data = json.dumps(random_json(rng)).encode()
    elif what == "turn value":
        meta["conversations"][rng.randrange(2)]["value"] = random_json(rng)
        data = json.dumps(meta).encode()
    elif what == "turn type":
        meta["conversations"][rng.randrange(2)] = random_json(rng)
        data = json.dumps(meta).encode()
    elif what == "conversations":
        meta["conversations"] = random_json(rng)
        data = json.dumps(meta).encode()
    elif what == "unicode":
        turn = meta["conversations"][rng.randrange(2)]
        turn["value"] = turn["value"] + rng.choice(WEIRD)
        data = json.dumps(meta).encode()
    elif what == "huge text":
        meta["conversations"][rng.randrange(2)]["value"] = "word " * rng.choice([5000, 60_000])
        data = json.dumps(meta).encode()
    elif what == "mp4 bytes":
        b = bytearray(mp4)
        for _ in range(rng.randint(1, 50)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        mp4 = bytes(b)
    elif what == "mp4 truncated":
        mp4 = mp4[: rng.randrange(len(mp4))]
    elif what == "no json":
        data = None
    elif what == "no mp4":
        mp4 = None
    elif what == "options":
        meta["options"] = random_json(rng)
        data = json.dumps(meta).encode()
    elif what == "extra fields":
        meta.update({"category": random_json(rng), "id": random_json(rng)})
        data = json.dumps(meta).encode()
    return data, mp4, what


@pytest.fixture(scope="module")
def fuzz_shard(tmp_path_factory):
    rng = random.Random(SEED)
    frames = np.random.default_rng(SEED).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    mp4 = encode_mp4(frames)
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.tar"
    good, cases = [], {}
    with wds.TarWriter(str(path)) as w:
        for i in range(SHARD_CASES):
            if i % 4 == 0:  # every fourth sample stays good
                key = f"good{i}"
                w.write({"__key__": key, "mp4": mp4, "json": json.dumps(good_meta(i)).encode()})
                good.append(key)
                continue
            data, video, what = mutate(rng, good_meta(i), mp4)
            key = f"case{i}"
            sample = {"__key__": key}
            if data is not None:
                sample["json"] = data
            if video is not None:
                sample["mp4"] = video
            w.write(sample)
            cases[key] = what
    return path, good, cases


def test_fuzzed_shard_in_the_training_reader(fuzz_shard):
    path, good, cases = fuzz_shard
    ds = VideoQADataset(str(path), num_frames=2, image_size=32, max_tokens=4096, overlong="skip")
    out = list(ds)  # no crash
    keys = [s["__key__"] if "__key__" in s else s["id"] for s in out]
    assert set(good) <= set(keys)  # every good case answered
    assert len(out) + sum(ds.skipped.values()) == len(good) + len(cases)  # every other case counted
    print(f"fuzz shard: {len(good) + len(cases)} samples, {len(out)} read ({len(good)} unmutated), skipped "
          f"{dict(ds.skipped)}")


def test_fuzzed_shard_in_ask_shards(fuzz_shard, tmp_path):
    from test_hostile_data import TokenisingEngine

    from aurora.infer.ask import predict_shards

    path, good, cases = fuzz_shard
    summary = predict_shards(TokenisingEngine(), str(path), tmp_path / "pred.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert set(good) <= {r["id"] for r in rows}
    assert summary["written"] + sum(summary["skipped"].values()) == len(good) + len(cases)


SPEC_VALUES = ["abc", -1, 0, 1.5, None, [1], True, {"a": 1}, "\ud800", 10**12]


def test_fuzzed_part_specs_fail_with_the_recipe_error_types():
    """Each case sets one argument of a tiny part spec to a wrong value: it builds, or raises ValueError /
    TypeError / KeyError (what ``aurora fit`` turns into one line and exit code 2)."""
    import torch

    from aurora.registry import MERGE, RNN

    specs = [(RNN, {"name": "rwkv6", "vocab_size": 64, "d_model": 32, "n_layer": 1, "head_size": 16}),
             (RNN, {"name": "mamba", "vocab_size": 64, "d_model": 32, "n_layer": 1}),
             (MERGE, {"name": "tome", "keep_ratio": 0.5, "order": "size_ascending"})]
    rng = random.Random(SEED)
    outcomes = {"built": 0, "refused": 0}
    for _ in range(SPEC_CASES):
        reg, spec = rng.choice(specs)
        spec = dict(spec)
        key = rng.choice([k for k in spec if k != "name"] + ["nonsense"])
        spec[key] = rng.choice(SPEC_VALUES)
        if spec.get(key) == 10**12:
            continue  # a legal but enormous size: the allocation is the user's to ask for
        try:
            with torch.device("meta"):
                reg.build(spec)
            outcomes["built"] += 1
        except (ValueError, TypeError, KeyError):
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0
    print(f"fuzz specs: {outcomes}")


def test_fuzzed_state_files_are_refused_with_stream_errors(tmp_path):
    import torch

    from aurora.infer.engine import StreamEngine, StreamError

    from aurora.model import AuroraModel

    torch.manual_seed(SEED)
    model = AuroraModel.from_specs(
        vision={"name": "siglip", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 64, "image_size": 32, "patch_size": 8},
        merge={"name": "tome", "keep_ratio": 0.25, "order": "size_ascending"}, projector="mlp",
        rnn={"name": "rwkv6", "vocab_size": 65536, "d_model": 32, "n_layer": 1, "head_size": 16}).eval()
    video = encode_mp4(np.random.default_rng(SEED).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    engine = StreamEngine(model, chunk_frames=8)
    path = engine.save_state(engine.read_video(video, "what is it?", frames=2), tmp_path / "s.safetensors")
    whole = path.read_bytes()
    rng = random.Random(SEED)
    outcomes = {"loaded identical": 0, "refused": 0}
    for i in range(STATE_CASES):
        b = bytearray(whole)
        if rng.random() < 0.3:
            b = b[: rng.randrange(len(b))]
        else:
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        case = tmp_path / f"case{i}.safetensors"
        case.write_bytes(bytes(b))
        try:
            vs = engine.load_state(case)
        except StreamError:
            outcomes["refused"] += 1
            continue
        # a flip that loads must have changed nothing that matters (JSON whitespace, padding)
        ref = engine.load_state(path)
        assert vs.frames == ref.frames and torch.equal(vs.logits, ref.logits)
        outcomes["loaded identical"] += 1
    assert outcomes["refused"] > STATE_CASES // 2
    print(f"fuzz states: {outcomes}")
