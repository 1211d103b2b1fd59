"""Data: video round trip, synthetic set, shards with broken samples, prompts, the datamodule."""
import io
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from aurora.data.datamodule import AuroraDataModule
from aurora.data.prompt import PromptTemplate, Tokenizer, question_and_answer
from aurora.data.shards import VideoQADataset, collate, expand_shards
from aurora.data.synthetic import COLORS, DIRECTIONS, generate, render, write_synthetic_dataset
from aurora.data.video import VideoDecodeError, decode_video, encode_mp4, to_pixels, uniform_indices
from aurora.types import IGNORE_INDEX, VIDEO_TOKEN


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    write_synthetic_dataset(out, train=30, val=6, test=9, samples_per_shard=12)
    return out


def test_video_round_trip_keeps_frames_and_colours():
    frames = np.zeros((6, 32, 48, 3), dtype=np.uint8)
    for t in range(6):
        frames[t, :, :, 0] = 40 * t  # the red level encodes the frame index
    back = decode_video(encode_mp4(frames))
    assert back.shape == (6, 32, 48, 3) and back.dtype == torch.uint8
    assert np.allclose(back[:, 16, 24, 0].numpy(), 40 * np.arange(6), atol=6)
    sampled = decode_video(encode_mp4(frames), num_frames=3)
    assert np.allclose(sampled[:, 0, 0, 0].numpy(), [40 * i for i in uniform_indices(6, 3)], atol=6)
    assert uniform_indices(6, 3) == [1, 3, 5] and uniform_indices(100, 4) == [12, 37, 62, 87]


@pytest.mark.parametrize("data", [b"", b"not a video at all" * 50, None])
def test_undecodable_video_raises_a_clear_error(data):
    if data is None:  # a truncated mp4
        data = encode_mp4(np.zeros((8, 32, 32, 3), dtype=np.uint8))[:300]
    with pytest.raises(VideoDecodeError):
        decode_video(data)


def test_to_pixels_resizes_crops_and_normalises():
    frames = torch.full((2, 40, 80, 3), 255, dtype=torch.uint8)
    x = to_pixels(frames, 32)
    assert x.shape == (2, 3, 32, 32) and torch.allclose(x, torch.ones_like(x), atol=1e-5)
    assert to_pixels(frames, 32, crop=False).shape == (2, 3, 32, 64)


def centroid_x_y(frame):
    ys, xs = np.nonzero(frame.sum(-1) > 100)
    return xs.mean(), ys.mean()


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_motion_goes_the_labelled_way_and_reverses_with_time(direction):
    import random

    video = render("red", "square", direction, 8, 64, random.Random(0))
    (x0, y0), (x1, y1) = centroid_x_y(video[0]), centroid_x_y(video[-1])
    dx, dy = DIRECTIONS[direction]
    moved = np.array([x1 - x0, y1 - y0])
    assert moved @ np.array([dx, dy]) > 20  # crosses most of the frame in the labelled direction
    assert abs(moved @ np.array([dy, dx])) < 1  # and not across it
    reversed_moved = np.subtract(centroid_x_y(video[::-1][-1]), centroid_x_y(video[::-1][0]))
    assert reversed_moved @ np.array([dx, dy]) < -20


def test_synthetic_set_is_balanced_and_held_out(dataset_dir):
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    assert manifest["splits"]["train"]["categories"] == {"color": 10, "shape": 10, "motion": 10}
    assert manifest["splits"]["train"]["shards"] == ["train-00000.tar", "train-00001.tar", "train-00002.tar"]
    assert not list(dataset_dir.glob("*.tmp"))
    train = {s["id"]: s["video"] for s in generate(5, seed=0)}
    test = {s["id"]: s["video"] for s in generate(5, seed=2_000_003)}
    assert not set(train.values()) & set(test.values())
    for shard in dataset_dir.glob("*.tar"):
        assert tarfile.is_tarfile(shard)


def test_prompt_masks_everything_but_the_answer():
    tok, tpl = Tokenizer(), PromptTemplate()
    ids, labels = tpl.build(tok, "What color is it?", "red")
    assert ids.count(VIDEO_TOKEN) == 1
    answer = [i for i, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert answer == [l for l in labels if l != IGNORE_INDEX]
    assert tok.decode(answer) == " red\n\n"
    first = labels.index(next(l for l in labels if l != IGNORE_INDEX))
    assert ids[:first] == tpl.build_prompt(tok, "What color is it?")
    prompt_text = tok.decode([i for i in ids[:first] if i != VIDEO_TOKEN])
    assert prompt_text.count("What color is it?") == 2  # sandwich: before and after the video
    assert tok.vocab_size == 65536


def test_question_and_answer_from_llava_conversation():
    conv = [{"from": "human", "value": "<video>\nWhat is it?"}, {"from": "gpt", "value": "a cat"}]
    assert question_and_answer(conv) == ("What is it?", "a cat")
    with pytest.raises(ValueError, match="'gpt'"):
        question_and_answer(conv[:1])


def write_shard_with_broken_samples(path, good):
    with wds.TarWriter(str(path)) as w:
        for s in good[:2]:
            w.write(s)
        w.write({"__key__": "corrupt", "mp4": b"\x00\x01garbage" * 100, "json": good[0]["json"]})
        w.write({"__key__": "truncated", "mp4": good[0]["mp4"][: len(good[0]["mp4"]) // 3], "json": good[0]["json"]})
        w.write({"__key__": "nojson", "mp4": good[0]["mp4"]})
        w.write({"__key__": "badjson", "mp4": good[0]["mp4"], "json": b"{not json"})
        for s in good[2:]:
            w.write(s)


def test_broken_samples_are_skipped_counted_and_logged(dataset_dir, tmp_path, caplog):
    good = [dict(s) for s in wds.WebDataset(str(dataset_dir / "val-00000.tar"), shardshuffle=False)]
    good = [{k: v for k, v in s.items() if k in ("__key__", "mp4", "json")} for s in good]
    path = tmp_path / "broken.tar"
    write_shard_with_broken_samples(path, good)
    ds = VideoQADataset(str(path), num_frames=4, image_size=32)
    with caplog.at_level(logging.WARNING):
        out = list(ds)
    assert [s["id"] for s in out] == [s["__key__"] for s in good]
    assert ds.skipped == {"undecodable video": 2, "missing field .json": 1, "bad annotation": 1}
    for key in ("corrupt", "truncated", "nojson", "badjson"):
        assert any(key in r.getMessage() for r in caplog.records)


def test_truncated_shard_file_is_survived(dataset_dir, tmp_path):
    data = (dataset_dir / "val-00000.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    ds = VideoQADataset(str(cut), num_frames=4, image_size=32)
    out = list(ds)
    assert 0 < len(out) < 6
    assert sum(ds.skipped.values()) >= 1


def test_missing_shards_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere-00000.tar"):
        expand_shards(str(tmp_path / "nowhere-{00000..00001}.tar"))
    with pytest.raises(FileNotFoundError, match="no .tar shards in directory"):
        expand_shards(str(tmp_path))
    dm = AuroraDataModule(data_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="manifest.json missing"):
        dm.train_dataloader()


def test_frame_orders(dataset_dir):
    kw = dict(shards=str(dataset_dir / "test-00000.tar"), num_frames=8, image_size=32)
    orig = next(iter(VideoQADataset(**kw)))
    rev = next(iter(VideoQADataset(**kw, frame_order="reversed")))
    shuf = next(iter(VideoQADataset(**kw, frame_order="shuffled")))
    shuf2 = next(iter(VideoQADataset(**kw, frame_order="shuffled")))
    assert torch.equal(rev["pixels"], orig["pixels"].flip(0))
    assert torch.equal(shuf["pixels"], shuf2["pixels"]) and not torch.equal(shuf["pixels"], orig["pixels"])
    assert sorted(shuf["pixels"].sum((1, 2, 3)).tolist()) == pytest.approx(sorted(orig["pixels"].sum((1, 2, 3)).tolist()))
    with pytest.raises(ValueError, match="known: original, shuffled, reversed"):
        VideoQADataset(**kw, frame_order="sideways")


def test_datamodule_batches(dataset_dir):
    dm = AuroraDataModule(data_dir=str(dataset_dir), batch_size=4, num_frames=8, image_size=32)
    assert dm.categories == ["color", "shape", "motion"]
    batches = list(dm.train_dataloader())
    assert sum(len(b["id"]) for b in batches) == 30  # one pass over the training split per epoch
    b = batches[0]
    assert b["pixels"].shape == (4, 8, 3, 32, 32)
    assert b["input_ids"].shape == b["labels"].shape
    assert torch.all((b["input_ids"] == VIDEO_TOKEN).sum(1) == 1)
    pad = b["input_ids"] == 0
    assert torch.all(b["labels"][pad] == IGNORE_INDEX)
    assert set(b["category"]) <= {"color", "shape", "motion"} and all(o for o in b["options"])
    with pytest.raises(ValueError, match="same frame count"):
        collate([{**batches[0], "pixels": torch.zeros(8, 3, 32, 32)}, {**batches[0], "pixels": torch.zeros(4, 3, 32, 32)}])


def test_datamodule_writes_synthetic_data_on_first_use(tmp_path):
    dm = AuroraDataModule(data_dir=str(tmp_path / "d"), synthetic={"train": 3, "val": 3, "test": 3})
    dm.prepare_data()
    assert dm.manifest["splits"]["test"]["count"] == 3
    before = (tmp_path / "d" / "train-00000.tar").read_bytes()
    dm.prepare_data()  # a second call keeps what is there
    assert (tmp_path / "d" / "train-00000.tar").read_bytes() == before


def test_shape_size_sets_the_radius_and_is_checked():
    import random

    from aurora.data.synthetic import render

    areas = {}
    for s in (0.1, 0.2):
        v = render("red", "circle", "right", 2, 64, random.Random(0), shape_size=s)
        areas[s] = int((v[0].sum(-1) > 0).sum())
    # a circle's area grows with the square of its radius: about 4x from 0.1 to 0.2 of the frame
    assert 3.5 < areas[0.2] / areas[0.1] < 4.5
    with pytest.raises(ValueError, match="shape_size"):
        render("red", "circle", "right", 2, 64, random.Random(0), shape_size=0.5)


@pytest.mark.parametrize("workers", [0, 2])
def test_skips_in_dataloader_workers_reach_the_training_process(dataset_dir, tmp_path, workers):
    """The reader counts skips inside DataLoader workers (other processes); the counts travel with the samples
    and the datamodule sums them, so the LightningModule can log them (data/skipped/<reason>)."""
    good = [dict(s) for s in wds.WebDataset(str(dataset_dir / "val-00000.tar"), shardshuffle=False)]
    good = [{k: v for k, v in s.items() if k in ("__key__", "mp4", "json")} for s in good]
    shards = []
    for i in range(2):  # one broken shard per worker
        shards.append(str(tmp_path / f"broken-{i}.tar"))
        write_shard_with_broken_samples(tmp_path / f"broken-{i}.tar", good)
    dm = AuroraDataModule(train_shards=shards, num_frames=2, image_size=32, batch_size=2, num_workers=workers,
                          shuffle_buffer=0)
    dm.setup("fit")
    seen = 0
    for batch in dm.train_dataloader():
        batch = dm.on_before_batch_transfer(batch, 0)
        assert "_skips" not in batch
        seen += len(batch["id"])
    assert seen == 2 * len(good)
    # every skip before a yielded sample is counted once (write_shard_with_broken_samples ends on a good sample)
    assert dict(dm.data_counts) == {"skipped/undecodable video": 4, "skipped/missing field .json": 2,
                                    "skipped/bad annotation": 2}


def test_a_synthetic_dataset_written_with_other_settings_is_an_error_not_overwritten(tmp_path):
    spec = {"train": 3, "val": 3, "test": 3, "frames": 2, "size": 32}
    AuroraDataModule(data_dir=str(tmp_path), synthetic=spec).prepare_data()
    before = (tmp_path / "train-00000.tar").read_bytes()
    AuroraDataModule(data_dir=str(tmp_path), synthetic=spec).prepare_data()  # the same settings: kept
    with pytest.raises(ValueError, match=r"shape_size: 0.14 written, 0.2 asked"):
        AuroraDataModule(data_dir=str(tmp_path), synthetic={**spec, "shape_size": 0.2}).prepare_data()
    assert (tmp_path / "train-00000.tar").read_bytes() == before
