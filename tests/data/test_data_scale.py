"""Data at scale: `aurora data convert`, rank/worker splitting, remote shards, length budget, resumable position."""
import functools
import http.server
import io
import json
import logging
import shutil
import tarfile
import threading

import av
import numpy as np
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

import aurora.data.convert as convert_mod
from aurora.cli import main as cli_main
from aurora.data.convert import convert, parse_size
from aurora.data.datamodule import AuroraDataModule
from aurora.data.shards import VideoQADataset, collate
from aurora.data.synthetic import write_synthetic_dataset
from aurora.data.video import decode_video, encode_mp4
from aurora.types import IGNORE_INDEX

QA = [{"from": "human", "value": "<video>\nWhat is it?"}, {"from": "gpt", "value": "a thing"}]


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale")
    write_synthetic_dataset(out, train=24, val=3, test=3, frames=4, size=32, samples_per_shard=3)  # 8 train shards
    return out


@pytest.fixture(scope="module")
def all_train_ids(shards_dir):
    return sorted(s["__key__"] for s in wds.WebDataset(str(shards_dir / "train-{00000..00007}.tar"), shardshuffle=False))


def ds(shards_dir, **kw):
    kw.setdefault("num_frames", 2)
    kw.setdefault("image_size", 16)
    return VideoQADataset(str(shards_dir / "train-{00000..00007}.tar"), **kw)


def raw_keys(dataset, rank, world, worker, workers):
    return [s["__key__"] for s in dataset.raw_samples(rank, world, worker, workers)]


# -- aurora data convert -------------------------------------------------------------------------------------
def test_parse_size():
    assert parse_size("1GB") == 10**9 and parse_size("1G") == 10**9 and parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5k") == 1500 and parse_size("4096") == 4096 and parse_size(" 2 tb ") == 2 * 10**12
    for bad in ("", "GB", "1XB", "-1GB", "0"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


def container_video(fmt, codec, pix_fmt, frames=5, size=32):
    out = io.BytesIO()
    with av.open(out, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=8)
        s.width, s.height, s.pix_fmt = size, size, pix_fmt
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((size, size, 3), 40 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return out.getvalue()


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """A LLaVA-style annotation file over mp4s, an image, an mkv, a raw-video avi, and broken entries."""
    root = tmp_path_factory.mktemp("llava")
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    records = []
    for i in range(6):
        frames = np.zeros((6, 32, 32, 3), np.uint8)
        frames[..., 0] = 30 * i
        (videos / "sub" / f"v{i}.mp4").write_bytes(encode_mp4(frames))
        records.append({"id": f"clip.{i}/a", "video": f"sub/v{i}.mp4", "conversations": QA, "category": f"c{i % 2}"})
    records.append({"id": "clip.0/a", "video": "sub/v0.mp4", "conversations": QA})  # a repeated id
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((31, 45, 3), 200, np.uint8)).save(buf, "PNG")  # odd sizes on purpose
    (videos / "img.png").write_bytes(buf.getvalue())
    records.append({"id": "image", "image": "img.png", "conversations": QA})
    (videos / "a.mkv").write_bytes(container_video("matroska", "mpeg4", "yuv420p"))
    records.append({"id": "mkv", "video": "a.mkv", "conversations": QA})
    (videos / "b.avi").write_bytes(container_video("avi", "rawvideo", "rgb24"))  # mp4 cannot hold rawvideo
    records.append({"id": "avi", "video": "b.avi", "conversations": QA})
    (videos / "bad.mp4").write_bytes(b"not a video" * 100)
    records.append({"id": "bad", "video": "bad.mp4", "conversations": QA})
    records.append({"id": "gone", "video": "nope.mp4", "conversations": QA})
    records.append({"video": "sub/v1.mp4", "conversations": QA})
    records.append({"id": "noanswer", "video": "sub/v1.mp4", "conversations": QA[:1]})
    (root / "ann.json").write_text(json.dumps(records))
    return root


def tar_names(path):
    with tarfile.open(path) as t:
        return t.getnames()


def test_convert_writes_shards_the_reader_reads(llava, tmp_path):
    out = tmp_path / "out"
    m = convert(llava / "ann.json", llava / "videos", out, shard_size="2KB", workers=1, progress=False)
    entry = m["splits"]["train"]
    assert entry["records"] == 14 and entry["count"] == 10
    assert entry["skipped_counts"] == {"undecodable video": 1, "missing video": 1, "bad record": 2}
    assert {s["id"]: s["reason"] for s in entry["skipped"]}["gone"] == "missing video"
    assert entry["videos"] == {"kept": 7, "image": 1, "remuxed": 1, "reencoded": 1}
    assert sum(entry["per_shard"].values()) == 10 and len(entry["per_shard"]) > 3  # 2KB: several shards
    assert m["categories"] == ["c0", "c1"]
    assert not list(out.glob("*.tmp"))
    # an mp4 keeps its bytes; keys have no dots or slashes; the original id travels in the json
    first = entry["shards"][0]
    sample = next(iter(wds.WebDataset(str(out / first), shardshuffle=False)))
    assert sample["__key__"] == "clip_0_a" and json.loads(sample["json"])["id"] == "clip.0/a"
    assert sample["mp4"] == (llava / "videos" / "sub" / "v0.mp4").read_bytes()
    # the datamodule reads the converted folder; every video decodes
    dm = AuroraDataModule(data_dir=str(out), batch_size=4, num_frames=3, image_size=16, shuffle_buffer=0)
    batches = list(dm.train_dataloader())
    ids = [i for b in batches for i in b["id"]]
    assert sorted(ids) == sorted(["clip.0/a"] * 2 + [f"clip.{i}/a" for i in range(1, 6)] + ["image", "mkv", "avi"])
    by_id = {}
    for raw in wds.WebDataset([str(out / s) for s in entry["shards"]], shardshuffle=False):
        by_id[json.loads(raw["json"])["id"]] = decode_video(raw["mp4"])
    assert by_id["image"].shape == (1, 30, 44, 3)  # one frame, cropped to even sizes
    assert by_id["avi"].shape[0] == 5 and abs(int(by_id["avi"][4, 0, 0, 0]) - 160) < 8  # re-encoded faithfully
    assert by_id["mkv"].shape[0] == 5


def test_convert_parallel_is_deterministic_and_resumes(llava, tmp_path, monkeypatch):
    one = convert(llava / "ann.json", llava / "videos", tmp_path / "one", shard_size="2KB", workers=1, progress=False)
    out = tmp_path / "par"
    par = convert(llava / "ann.json", llava / "videos", out, shard_size="2KB", workers=2, progress=False)
    assert par["splits"]["train"]["per_shard"] == one["splits"]["train"]["per_shard"]
    for name in one["splits"]["train"]["shards"]:
        assert tar_names(out / name) == tar_names(tmp_path / "one" / name)
    # kill simulation: one shard gone, one left half-written as .tmp; a re-run redoes exactly those two
    names = par["splits"]["train"]["shards"]
    (out / names[1]).unlink()
    (out / names[2]).rename(out / (names[2] + ".tmp"))
    kept = {n: (out / n).stat().st_mtime_ns for n in names if (out / n).exists()}
    written = []
    real = convert_mod.write_shard
    monkeypatch.setattr(convert_mod, "write_shard", lambda o, name, *a, **k: written.append(name) or real(o, name, *a, **k))
    again = convert(llava / "ann.json", llava / "videos", out, shard_size="2KB", workers=1, progress=False)
    assert sorted(written) == sorted(names[1:3])
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept
    assert again["splits"]["train"]["per_shard"] == par["splits"]["train"]["per_shard"]
    assert not list(out.glob("*.tmp"))
    # a different plan (bigger shards) rewrites everything and removes the shards it no longer has
    written.clear()
    big = convert(llava / "ann.json", llava / "videos", out, shard_size="1GB", workers=1, progress=False)
    assert written == ["train-00000.tar"] and big["splits"]["train"]["count"] == 10
    assert sorted(p.name for p in out.glob("train-*")) == ["train-00000.tar"]


def test_cli_data_convert(llava, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["data", "convert", "--annotations", str(llava / "ann.json"), "--videos", str(llava / "videos"),
                   "--out", str(out), "--split", "val", "--shard-size", "1MB", "--workers", "1", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert '"count": 10' in printed and "manifest written" in printed
    assert json.loads((out / "manifest.json").read_text())["splits"]["val"]["shards"] == ["val-00000.tar"]
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        convert(llava / "ann.json", tmp_path / "nowhere", out, progress=False)


# -- splitting across ranks and workers ------------------------------------------------------------------
@pytest.mark.parametrize("shuffled", [False, True])
def test_ranks_and_workers_never_share_a_sample(shards_dir, all_train_ids, shuffled):
    d = ds(shards_dir, shuffle_shards=shuffled, shuffle_buffer=4 if shuffled else 0, seed=3)
    for epoch in (0, 1):
        d.epoch = epoch
        parts = [raw_keys(d, r, 2, w, 2) for r in range(2) for w in range(2)]
        seen = [k for p in parts for k in p]
        assert sorted(seen) == all_train_ids  # every sample once, none twice
        assert all(len(p) == 6 for p in parts)  # 8 shards of 3 over 4 readers
    d.epoch = 0
    again = [raw_keys(d, r, 2, w, 2) for r in range(2) for w in range(2)]
    d.epoch = 0
    assert again == [raw_keys(d, r, 2, w, 2) for r in range(2) for w in range(2)]  # a pass is reproducible


def test_two_ranks_with_two_dataloader_workers(shards_dir, all_train_ids, monkeypatch):
    seen = []
    for rank in range(2):
        d = ds(shards_dir, rank=rank, world_size=2, shuffle_shards=True, shuffle_buffer=4)
        ids = [i for b in DataLoader(d, batch_size=4, num_workers=2, collate_fn=collate) for i in b["id"]]
        assert len(ids) == 12
        seen.append(ids)
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == all_train_ids
    monkeypatch.setenv("RANK", "1")  # no explicit rank: the launcher's environment decides
    monkeypatch.setenv("WORLD_SIZE", "2")
    d = ds(shards_dir, shuffle_shards=True, shuffle_buffer=4)
    assert sorted(i for b in DataLoader(d, batch_size=4, num_workers=2, collate_fn=collate) for i in b["id"]) == sorted(seen[1])


def test_resampled_epochs_have_exactly_epoch_samples_per_rank(shards_dir, all_train_ids):
    d = ds(shards_dir, resampled=True, epoch_samples=10, shuffle_buffer=4, rank=0, world_size=2)
    ids = [i for b in DataLoader(d, batch_size=3, num_workers=2, collate_fn=collate) for i in b["id"]]
    assert len(ids) == 10 and set(ids) <= set(all_train_ids)
    d.epoch = 1
    assert [s["id"] for s in d] != [s["id"] for s in ds(shards_dir, resampled=True, epoch_samples=10, rank=0, world_size=2)]
    # a finite stream repeats to reach epoch_samples (equal epochs on every rank)
    finite = ds(shards_dir, epoch_samples=15, rank=1, world_size=2)
    assert len(list(finite)) == 15
    with pytest.raises(ValueError, match="epoch_samples"):
        ds(shards_dir, epoch_samples=0)


# -- shards from HTTP and pipe: --------------------------------------------------------------------------
def test_shards_over_http_and_pipe(shards_dir, all_train_ids):
    if shutil.which("curl") is None:
        pytest.skip("needs curl: webdataset fetches http:// shards with it")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shards_dir))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/train-{{00000..00007}}.tar"
        over_http = VideoQADataset(url, num_frames=2, image_size=16)
        assert sorted(s["id"] for s in over_http) == all_train_ids
        missing = VideoQADataset(f"http://127.0.0.1:{server.server_address[1]}/nope.tar", num_frames=2)
        assert list(missing) == [] and sum(missing.skipped.values()) == 1  # a failed fetch is counted, not fatal
    finally:
        server.shutdown()
        server.server_close()
    piped = VideoQADataset([f"pipe:cat {shards_dir / f'train-{i:05d}.tar'}" for i in range(8)], num_frames=2, image_size=16)
    assert sorted(s["id"] for s in piped) == all_train_ids


# -- length budget ---------------------------------------------------------------------------------------
def test_token_budget_truncates_or_skips_and_counts(tmp_path, caplog):
    from aurora.data.prompt import PromptTemplate, Tokenizer

    video = encode_mp4(np.zeros((2, 16, 16, 3), np.uint8))
    qa = {"short": ("What?", "yes"), "long_answer": ("What?", "one two three four five six seven eight nine"),
          "long_question": ("What " + "very " * 30 + "long?", "yes")}
    with wds.TarWriter(str(tmp_path / "len.tar")) as w:
        for key, (q, a) in qa.items():
            conv = [{"from": "human", "value": f"<video>\n{q}"}, {"from": "gpt", "value": a}]
            w.write({"__key__": key, "mp4": video, "json": json.dumps({"conversations": conv}).encode()})
    ids = {k: PromptTemplate().build(Tokenizer(), q, a)[0] for k, (q, a) in qa.items()}
    budget = len(ids["short"]) + 1  # 2 frames x 1 visual token replace the placeholder: the short one fits exactly
    kw = dict(num_frames=2, image_size=16, max_tokens=budget, tokens_per_frame=1)
    cut = VideoQADataset(str(tmp_path / "len.tar"), **kw)
    with caplog.at_level(logging.WARNING):
        out = {s["id"]: s for s in cut}
    assert sorted(out) == ["long_answer", "short"]
    assert out["long_answer"]["input_ids"].tolist() == ids["long_answer"][: len(ids["short"])]  # the answer's tail cut
    assert len(out["long_answer"]["labels"]) == len(ids["short"]) and (out["long_answer"]["labels"] != IGNORE_INDEX).any()
    assert cut.truncated == {"over token budget": 1} and cut.skipped == {"over token budget": 1}  # the question alone
    assert any("truncating sample long_answer" in r.getMessage() for r in caplog.records)
    skip = VideoQADataset(str(tmp_path / "len.tar"), **kw, overlong="skip")
    assert [s["id"] for s in skip] == ["short"] and skip.skipped == {"over token budget": 2} and not skip.truncated
    free = VideoQADataset(str(tmp_path / "len.tar"), num_frames=2, image_size=16)
    assert len(list(free)) == 3 and not free.truncated
    with pytest.raises(ValueError, match="known: truncate, skip"):
        VideoQADataset(str(tmp_path / "len.tar"), overlong="drop")


# -- resumable data position -----------------------------------------------------------------------------
def consume(dm, batches):
    """Take ``batches`` batches from a fresh pass (all when None), recording them as the training loop does."""
    ids = []
    for i, b in enumerate(dm.train_dataloader()):
        if batches is not None and i == batches:
            break
        b = dm.on_before_batch_transfer(b, 0)
        assert "_pos" not in b
        ids += b["id"]
    return ids


@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_resumes_the_data_position(shards_dir, all_train_ids, workers, caplog):
    kw = dict(data_dir=str(shards_dir), batch_size=2, num_frames=2, image_size=16, num_workers=workers,
              shuffle_buffer=4, seed=7)
    uninterrupted = consume(AuroraDataModule(**kw), None)
    first = AuroraDataModule(**kw)
    before = consume(first, 3)
    state = first.state_dict()
    assert state["epoch"] == 0 and state["samples"][0] == 6 and state["num_workers"] == workers
    state = torch.load(io.BytesIO(_saved(state)), weights_only=True)  # survives a checkpoint round trip
    resumed = AuroraDataModule(**kw)
    resumed.load_state_dict(state)
    after = consume(resumed, None)
    assert not set(before) & set(after) and sorted(before + after) == all_train_ids
    if workers == 0:
        assert before + after == uninterrupted  # the very same stream, continued
    next_epoch = consume(resumed, None)  # the next pass is a new epoch: everything, in a new order
    assert sorted(next_epoch) == all_train_ids and next_epoch != uninterrupted
    # a position saved under another layout cannot be honoured: the epoch restarts, with a warning
    other = AuroraDataModule(**{**kw, "num_workers": 1 if workers == 0 else 0})
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(state)
    assert other.positions == {} and any("data position not restored" in r.getMessage() for r in caplog.records)
    assert sorted(consume(other, None)) == all_train_ids


def _saved(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_lightning_saves_and_restores_the_data_position(shards_dir, all_train_ids, tmp_path):
    """A real Trainer: the datamodule's state lands in the checkpoint and a resumed fit skips what was seen."""
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, _):
            assert "_pos" not in batch
            self.seen += batch["id"]
            return (batch["pixels"].mean() * self.w).sum() + self.w.square().sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    kw = dict(data_dir=str(shards_dir), batch_size=2, num_frames=2, image_size=16, shuffle_buffer=4, seed=1)
    trainer_kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=str(tmp_path))
    first = Tiny()
    every4 = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
    L.Trainer(max_steps=6, callbacks=[every4], **{**trainer_kw, "enable_checkpointing": True}).fit(first, AuroraDataModule(**kw))
    ckpt = tmp_path / "epoch=0-step=4.ckpt"  # written mid-epoch, as a run that is killed later leaves it
    saved = torch.load(ckpt, weights_only=False)["AuroraDataModule"]
    assert saved["epoch"] == 0 and saved["samples"] == {0: 8}
    second = Tiny()
    L.Trainer(max_steps=12, **trainer_kw).fit(second, AuroraDataModule(**kw), ckpt_path=str(ckpt))
    assert len(first.seen) == 12 and len(second.seen) == 16
    assert second.seen[:4] == first.seen[8:12]  # the resumed stream is the one the killed run was reading
    first.seen = first.seen[:8]  # what the checkpoint had consumed
    assert sorted(first.seen + second.seen) == all_train_ids  # the rest of epoch 0, nothing twice
