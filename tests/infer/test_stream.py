"""Streaming inference (aurora/infer/engine.py, `aurora ask`): streamed chunked answers equal the one-shot model's, a saved
state answers like reading from scratch, sampling is seeded, stop strings cut, memory stays flat over a long video,
bad input is named, and the command runs from a checkpoint written by `aurora fit`."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from aurora.checkpoint import CheckpointError
from aurora.model import load_model
from aurora.data.prompt import PromptTemplate, Tokenizer
from aurora.data.video import (VideoDecodeError, decode_video, encode_mp4, iter_frame_chunks, probe_video,
                               sample_indices, to_pixels, uniform_indices)
from aurora.model import AuroraModel
from aurora.infer.engine import Generation, StreamEngine, StreamError, flatten_state, next_token, unflatten_state

ROOT = Path(__file__).resolve().parents[2]
Q = "What colour is the shape?"


def tiny_model(backbone: str = "rwkv6", seed: int = 0) -> AuroraModel:
    rnn = {"name": backbone, "vocab_size": 65536, "d_model": 32, "n_layer": 2}
    rnn.update({"rwkv6": {"head_size": 16}, "transformer": {"n_head": 2}}.get(backbone, {}))
    torch.manual_seed(seed)
    return AuroraModel.from_specs(
        vision={"name": "siglip", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "image_size": 32, "patch_size": 8},
        merge={"name": "tome", "keep_ratio": 0.25, "order": "size_ascending"}, projector="mlp", rnn=rnn).eval()


@pytest.fixture(scope="module")
def video() -> bytes:
    return encode_mp4(np.random.RandomState(0).randint(0, 255, (30, 32, 32, 3), np.uint8), fps=8)


def one_shot(model: AuroraModel, data: bytes, frames: int, question: str, context: str | None = None):
    """The non-streaming reference: all frames decoded, one spliced prompt, AuroraModel's own pieces."""
    tok, tpl = Tokenizer(), PromptTemplate()
    pixels = to_pixels(decode_video(data, frames), 32)[None]
    ids = (tok.encode(tpl.before.format(question=context or question)) + [-200]
           + tok.encode(tpl.after.format(question=question)))
    return pixels, torch.tensor([ids])


# ------------------------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("backbone", ["rwkv6", "mamba", "transformer"])
def test_streamed_answer_equals_the_one_shot_generate(backbone, video):
    model = tiny_model(backbone)
    gen = Generation(max_new_tokens=8, stop=(), eos_id=None)
    pixels, ids = one_shot(model, video, 10, Q)
    ref = model.generate(pixels, ids, max_new_tokens=8, eos_id=None)
    for chunk in (1, 3, 64):  # one frame at a time, uneven chunks, everything at once
        ans = StreamEngine(model, chunk_frames=chunk).ask(video, Q, frames=10, gen=gen, keep_scores=True)
        assert ans.tokens == ref, (chunk, ans.tokens, ref)
        assert ans.finish == "length"
    # the logits of every step against one forward over prompt + video + answer
    with torch.no_grad():
        vis, _ = model.encode_video(pixels)
        embeds, _ = model.splice(ids, vis)
        full = torch.cat([embeds, model.rnn.embed(torch.tensor([ans.tokens[:-1]]))], 1)
        logits = model.rnn.logits(model.rnn(full)[0][0, embeds.shape[1] - 1:])
    assert len(ans.scores) == len(ans.tokens) == logits.shape[0]
    torch.testing.assert_close(torch.stack(ans.scores), logits, atol=1e-4, rtol=1e-4)


def test_frame_sampling_matches_the_training_reader(video):
    info = probe_video(video)
    assert (info.frames, info.fps, info.width, info.height) == (30, 8.0, 32, 32)
    assert list(sample_indices(info, num_frames=10)) == uniform_indices(30, 10)
    assert len(sample_indices(info, fps=2)) == 8 and list(sample_indices(info)) == list(range(30))  # 3.75 s
    for n, chunk in ((10, 3), (45, 8), (1, 5)):  # more frames than the video: repeats, as decode_video samples
        got = torch.cat(list(iter_frame_chunks(video, sample_indices(info, num_frames=n), chunk)))
        assert torch.equal(got, decode_video(video, n))
        assert max(c.shape[0] for c in iter_frame_chunks(video, sample_indices(info, num_frames=n), chunk)) <= chunk


# ------------------------------------------------------------------------------------------------ state reuse


def test_state_flatten_roundtrip():
    state = [(torch.ones(2), torch.zeros(1, 3)), {"a": torch.arange(3), "b": None}, [torch.eye(2), 4, "x"]]
    tensors, spec = flatten_state(state)
    back = unflatten_state(tensors, json.loads(json.dumps(spec)))
    assert isinstance(back[0], tuple) and back[1]["b"] is None and back[2][1:] == [4, "x"]
    assert torch.equal(back[1]["a"], torch.arange(3)) and torch.equal(back[2][0], torch.eye(2))
    with pytest.raises(TypeError, match="cannot store a object"):
        flatten_state([object()])


@pytest.mark.parametrize("backbone", ["rwkv6", "transformer"])
def test_saved_state_answers_exactly_like_reading_from_scratch(backbone, video, tmp_path):
    model = tiny_model(backbone)
    engine = StreamEngine(model, chunk_frames=4)
    gen = Generation(max_new_tokens=6, stop=(), eos_id=None)
    context = "Describe the video."
    path = engine.save_state(engine.read_video(video, context, frames=12), tmp_path / "s.safetensors")

    fresh = tiny_model(backbone, seed=1)
    fresh.load_state_dict(model.state_dict())
    other = StreamEngine(fresh, chunk_frames=5)
    vs = other.load_state(path)
    assert vs.context == context and vs.frames == 12
    for q in (Q, "Which way does it move?", Q):  # asking leaves the loaded state untouched
        from_state = other.answer(vs, q, gen, keep_scores=True)
        scratch = engine.ask(video, q, frames=12, gen=gen, context=context, keep_scores=True)
        assert from_state.tokens == scratch.tokens
        torch.testing.assert_close(torch.stack(from_state.scores), torch.stack(scratch.scores))
    # the default context is the question: exactly the trained sandwich prompt, as AuroraModel.generate reads it
    pixels, ids = one_shot(model, video, 12, Q, context=context)
    assert other.answer(vs, Q, gen).tokens == model.generate(pixels, ids, max_new_tokens=6, eos_id=None)


def test_a_state_from_another_model_or_file_is_refused(video, tmp_path):
    engine = StreamEngine(tiny_model("rwkv6"), chunk_frames=8)
    path = engine.save_state(engine.read_video(video, Q, frames=4), tmp_path / "s.safetensors")
    with pytest.raises(StreamError, match="the model's weights differ"):
        StreamEngine(tiny_model("rwkv6", seed=3)).load_state(path)
    with pytest.raises(StreamError, match="image_size: state 32 vs now 48"):
        StreamEngine(tiny_model("rwkv6"), image_size=48).load_state(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a state")
    with pytest.raises(StreamError, match="cannot read state file"):
        engine.load_state(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="state file not found"):
        engine.load_state(tmp_path / "none.safetensors")


# ------------------------------------------------------------------------------------------------ decoding


def test_sampling_is_seeded_and_top_p_narrows_to_greedy(video):
    engine = StreamEngine(tiny_model("rwkv6"), chunk_frames=8)
    vs = engine.read_video(video, Q, frames=6)

    def answer(**kw):
        return engine.answer(vs, Q, Generation(max_new_tokens=12, stop=(), eos_id=None, **kw)).tokens

    greedy = answer()
    a, b = answer(temperature=1.0, top_p=0.9, seed=1), answer(temperature=1.0, top_p=0.9, seed=1)
    assert a == b and len(a) == 12
    assert answer(temperature=1.0, seed=2) != a  # 12 draws over 65,536 tokens: a different seed differs
    assert answer(temperature=5.0, top_p=1e-9, seed=3) == greedy  # the nucleus is the top token alone
    logits = torch.tensor([0.0, 3.0, 1.0])
    g = torch.Generator().manual_seed(0)
    assert next_token(logits) == 1
    assert {next_token(logits, 1.0, 0.5, g) for _ in range(50)} == {1}
    assert {next_token(logits, 100.0, 1.0, g) for _ in range(200)} == {0, 1, 2}
    with pytest.raises(ValueError, match="top_p"):
        Generation(top_p=0.0)


def test_stop_strings_and_eos(video):
    engine = StreamEngine(tiny_model("rwkv6"), chunk_frames=8)
    vs = engine.read_video(video, Q, frames=6)
    full = engine.answer(vs, Q, Generation(max_new_tokens=12, stop=(), eos_id=None))
    raw = engine.tokenizer.decode(full.tokens)
    assert full.finish == "length" and full.text == raw.strip()
    stop = raw.strip()[len(raw.strip()) // 2:][:2]  # a string from the middle of the unstopped answer
    cut = engine.answer(vs, Q, Generation(max_new_tokens=12, stop=("never-there", stop), eos_id=None))
    assert cut.finish == "stop" and cut.text == raw[:raw.find(stop)].strip()
    assert len(cut.tokens) < len(full.tokens) and full.tokens[:len(cut.tokens)] == cut.tokens
    eos = engine.answer(vs, Q, Generation(max_new_tokens=12, stop=(), eos_id=full.tokens[0]))
    assert eos.finish == "eos" and eos.tokens == [] and eos.text == ""


# ------------------------------------------------------------------------------------------------ memory


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    from aurora.tools.measure import MEMORY_MMAP_THRESHOLD, Meter as _Meter, mallopt as _mallopt, reset_hwm as _reset_hwm
    _mallopt(MEMORY_MMAP_THRESHOLD)
    import numpy as np, torch
    sys.path.insert(0, sys.argv[1])
    from test_stream import tiny_model
    from aurora.data.video import encode_mp4
    from aurora.infer.engine import Generation, StreamEngine
    assert _reset_hwm(), "VmHWM cannot be reset here"
    frames = np.random.RandomState(0).randint(0, 255, (640, 32, 32, 3), np.uint8)
    videos = {n: encode_mp4(frames[:n]) for n in (40, 640)}
    meter, out = _Meter(torch.device("cpu"), True), {}
    for name in ("rwkv6", "transformer"):
        engine = StreamEngine(tiny_model(name), chunk_frames=8)
        gen = Generation(max_new_tokens=2, stop=(), eos_id=None)
        engine.ask(videos[40], "q", gen=gen)  # warm-up
        for n in (40, 640):
            meter.start()
            engine.ask(videos[n], "q", gen=gen)
            out[f"{name}/{n}"] = meter.peak() / 2**20
    print(json.dumps(out))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable VmHWM")
def test_long_video_streams_in_flat_memory():
    """640 frames vs 40 through the engine in a fresh process whose resident set follows the live tensors (see
    aurora.tools.bench_rnn): the RNN's peak does not grow; the transformer's (its KV cache) does, so the meter can see it."""
    r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(Path(__file__).parent)], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    mib = json.loads(r.stdout.strip().splitlines()[-1])
    rnn_growth = mib["rwkv6/640"] - mib["rwkv6/40"]
    kv_growth = mib["transformer/640"] - mib["transformer/40"]
    # 600 more frames: ~5,400 more visual tokens, 2 layers x (k, v) x 32 floats each = 2.6 MiB of KV cache (it
    # measures ~10 MiB with the attention over it). Held by mistake, the 600 extra frames' pixels would be 7 MiB.
    # Run-to-run noise of the RNN's figure (allocator, FFmpeg's frame threads) is up to ~0.5 MiB.
    assert rnn_growth < 1.0, mib
    assert kv_growth > 2.0 and kv_growth > 3 * max(rnn_growth, 0.1), mib


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_video_input_is_named(video, tmp_path):
    engine = StreamEngine(tiny_model("rwkv6"))
    with pytest.raises(FileNotFoundError, match="video not found"):
        engine.ask(tmp_path / "missing.mp4", Q)
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(VideoDecodeError):
        engine.ask(tmp_path / "junk.mp4", Q)
    with pytest.raises(VideoDecodeError):
        engine.ask(video[: len(video) // 3], Q)  # truncated: the frame index is gone
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        engine.ask(video, Q, frames=0)
    with pytest.raises(ValueError, match="give num_frames or fps"):
        engine.ask(video, Q, frames=3, fps=1.0)


def test_a_video_wide_ordering_cannot_be_streamed():
    model = tiny_model("rwkv6")
    order = getattr(model.vision.merge, "order", None)
    from aurora.components.merge.order import VIDEO
    from aurora.registry import ORDER

    video_order = ORDER.get("size_global")
    assert order is not None and getattr(video_order, "scope", None) == VIDEO
    model.vision.merge.order = video_order
    with pytest.raises(StreamError, match="cannot be read in chunks"):
        StreamEngine(model)


def test_a_wrong_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "none.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "nohp.ckpt")
    with pytest.raises(CheckpointError, match="no AuroraModule hyperparameters"):
        load_model(tmp_path / "nohp.ckpt")
    model = tiny_model("rwkv6")
    hp = {"vision": {"name": "siglip", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64, "image_size": 32, "patch_size": 8},
          "merge": {"name": "tome", "keep_ratio": 0.25, "order": "size_ascending"}, "projector": "mlp",
          "rnn": {"name": "rwkv6", "vocab_size": 65536, "d_model": 64, "n_layer": 2, "head_size": 16}}
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "hyper_parameters": hp}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match=r"shape mismatch .*model.rnn.emb.weight: checkpoint \(65536, 32\) vs "
                       r"recipe \(65536, 64\)"):
        load_model(tmp_path / "other.ckpt")
    hp["rnn"]["d_model"] = 32
    torch.save({"state_dict": sd, "hyper_parameters": hp}, tmp_path / "good.ckpt")
    loaded, got = load_model(tmp_path / "good.ckpt")
    assert got["rnn"]["name"] == "rwkv6"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_lora_checkpoint_loads_with_its_adapters(video, tmp_path):
    pytest.importorskip("peft", reason="LoRA needs peft (the lora extra)")
    from aurora.lora import apply_lora

    model = tiny_model("rwkv6")
    lora = {"target_modules": ["att.key", "att.value"], "r": 2}
    apply_lora(model, lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # trained adapters: not the identity
    hp = {"vision": {"name": "siglip", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64, "image_size": 32, "patch_size": 8},
          "merge": {"name": "tome", "keep_ratio": 0.25, "order": "size_ascending"}, "projector": "mlp",
          "rnn": {"name": "rwkv6", "vocab_size": 65536, "d_model": 32, "n_layer": 2, "head_size": 16}, "lora": lora}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hp},
               tmp_path / "lora.ckpt")
    loaded, _ = load_model(tmp_path / "lora.ckpt")
    gen = Generation(max_new_tokens=4, stop=(), eos_id=None)
    assert (StreamEngine(loaded).ask(video, Q, frames=4, gen=gen).tokens
            == StreamEngine(model.eval()).ask(video, Q, frames=4, gen=gen).tokens)


# ------------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A run directory with the checkpoint of a 2-step `aurora fit` of the demo recipe (as tests/core/test_cli.py)."""
    from aurora.cli import main

    run = tmp_path_factory.mktemp("fit")
    with pytest.MonkeyPatch.context() as mp:  # in this process: a subprocess paid the imports again (tests/_cli.py)
        mp.chdir(run)
        rc = main(["fit", "--config", str(ROOT / "recipes/demo.yaml"), "--model.init_from=null",
                   "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--trainer.logger=false",
                   "--trainer.max_time=null", "--trainer.enable_progress_bar=false", "--data.batch_size=2",
                   "--data.num_workers=0", "--data.synthetic.train=4", "--data.synthetic.val=2",
                   "--data.synthetic.test=3"])
    assert rc == 0 and (run / "runs/demo/checkpoints/last.ckpt").is_file()
    return run


@pytest.mark.slow
def test_aurora_ask_end_to_end_from_a_two_step_fit(fitted, tmp_path, capsys):
    from aurora.cli import main

    ckpt = fitted / "runs/demo/checkpoints/last.ckpt"
    frames = np.random.RandomState(1).randint(0, 255, (40, 64, 64, 3), np.uint8)
    (tmp_path / "v.mp4").write_bytes(encode_mp4(frames))
    base = ["--ckpt", ckpt, "--question", Q, "--no-progress", "--json"]
    r = subprocess.run([sys.executable, "-m", "aurora.cli", "ask", *map(str, base), "--video", tmp_path / "v.mp4",
                        "--frames", "6", "--chunk-frames", "4", "--save-state", tmp_path / "s.safetensors"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    first = json.loads(r.stdout.strip().splitlines()[-1])
    assert first["frames"] == 6 and "inference settings from the checkpoint" in r.stderr  # as trained
    assert main(["ask", *map(str, base), "--load-state", str(tmp_path / "s.safetensors")]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["tokens"] == first["tokens"] and again["answer"] == first["answer"]

    # the answer is the one the trained model gives through AuroraModel.generate on the same frames
    model, hp = load_model(ckpt)
    tok, tpl = Tokenizer(), PromptTemplate()
    pixels = to_pixels(decode_video((tmp_path / "v.mp4").read_bytes(), 6), 64)[None]
    ids = torch.tensor([tpl.build_prompt(tok, Q)])
    stop = [tok.encode(tpl.stop)]
    ref = model.generate(pixels, ids, max_new_tokens=hp["max_new_tokens"], stop_ids=stop)
    assert first["answer"] == tok.decode(ref).strip()

    # a batch over the run's test shards: one JSON line per sample, as `aurora predict` writes them, with the
    # predictions `aurora predict` makes (the datamodule's frames and prompt, AuroraModel.generate)
    out = tmp_path / "preds.jsonl"
    shards = str(fitted / "runs/demo/data/test-*.tar")
    assert main(["ask", "--ckpt", str(ckpt), "--shards", shards, "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert summary["written"] == len(rows) == 3 and summary["skipped"] == {}
    assert not list(tmp_path.glob(".preds.jsonl*tmp*"))
    from aurora.data.shards import VideoQADataset

    for sample in VideoQADataset(shards, num_frames=4, image_size=64):
        prompt = sample["input_ids"][sample["labels"] == -100]
        ref = model.generate(sample["pixels"][None], prompt[None], max_new_tokens=hp["max_new_tokens"], stop_ids=stop)
        row = rows[sample["id"]]
        assert (row["question"], row["answer"]) == (sample["question"], sample["answer"])
        assert row["prediction"] == tok.decode(ref).strip()

    # bad input: named, exit code 2
    assert main(["ask", *map(str, base), "--video", str(tmp_path / "missing.mp4")]) == 2
    assert "video not found" in capsys.readouterr().err
    (tmp_path / "bad.ckpt").write_bytes(b"junk")
    assert main(["ask", "--ckpt", str(tmp_path / "bad.ckpt"), "--question", Q, "--video", str(tmp_path / "v.mp4")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ask", "--ckpt", str(ckpt), "--video", str(tmp_path / "v.mp4")])  # no --question
