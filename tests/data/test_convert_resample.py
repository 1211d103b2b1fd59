"""aurora data convert --fps F --short-side S: every video pre-sampled at F fps and re-encoded to H.264 at short
side S, the settings in the manifest, and the shards read by training and by ``aurora ask --shards``."""
import json

import numpy as np
import pytest
import torch
import webdataset as wds

from aurora.data.convert import convert, convert_main, encode_settings
from aurora.data.datamodule import AuroraDataModule
from aurora.data.reader import FrameReader, choose_indices
from aurora.data.video import encode_mp4

QA = [{"from": "human", "value": "<video>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
SECONDS, SRC_FPS = 3, 10


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two 3-second 10 fps clips, 96x64, frame i's red channel = 6 i (so a frame says which it is)."""
    root = tmp_path_factory.mktemp("resample")
    videos = root / "videos"
    videos.mkdir()
    n = SECONDS * SRC_FPS
    frames = np.zeros((n, 64, 96, 3), np.uint8)
    frames[..., 0] = (6 * np.arange(n, dtype=np.uint8))[:, None, None]
    frames[..., 1] = 90
    records = []
    for i in range(2):
        (videos / f"v{i}.mp4").write_bytes(encode_mp4(frames, fps=SRC_FPS, crf=10))
        records.append({"id": f"v{i}", "video": f"v{i}.mp4", "conversations": QA})
    (root / "ann.json").write_text(json.dumps(records))
    return root


def test_fps_and_short_side_reencode_compact_shards(source, tmp_path):
    out = tmp_path / "out"
    m = convert(source / "ann.json", source / "videos", out, workers=1, progress=False, fps=4, short_side=32)
    entry = m["splits"]["train"]
    assert entry["count"] == 2 and entry["videos"] == {"resampled": 2}
    assert entry["params"]["encode"] == {"mode": "resampled", "fps": 4.0, "short_side": 32, "codec": "h264",
                                         "crf": 23}
    raw = next(iter(wds.WebDataset(str(out / entry["shards"][0]), shardshuffle=False)))
    assert len(raw["mp4"]) < (source / "videos" / "v0.mp4").stat().st_size  # compact
    with FrameReader(raw["mp4"]) as r:
        assert len(r) == SECONDS * 4 and abs(r.info.fps - 4) < 1e-6  # duration x F frames, at F fps
        assert abs(r.info.duration - SECONDS) < 0.01
        frames = r.read(range(len(r))).numpy()
    assert frames.shape[1:] == (32, 48, 3)  # short side 32, aspect kept (inside FFmpeg's scaler)
    src_times = np.arange(SECONDS * SRC_FPS) / SRC_FPS
    want = choose_indices(src_times, SRC_FPS, fps=4)  # the source frame on screen at each 1/4 s
    assert np.abs(frames[:, :, :, 0].mean(axis=(1, 2)) - 6 * np.asarray(want)).max() < 6
    # the default keeps the original bytes and says so
    plain = convert(source / "ann.json", source / "videos", tmp_path / "plain", workers=1, progress=False)
    assert plain["splits"]["train"]["params"]["encode"] == {"mode": "original"}
    raw = next(iter(wds.WebDataset(str(tmp_path / "plain" / "train-00000.tar"), shardshuffle=False)))
    assert raw["mp4"] == (source / "videos" / "v0.mp4").read_bytes()


def test_training_and_ask_read_the_converted_shards(source, tmp_path, one_thread):
    out = tmp_path / "out"
    convert(source / "ann.json", source / "videos", out, workers=1, progress=False, fps=2, short_side=32)
    dm = AuroraDataModule(data_dir=str(out), batch_size=2, num_frames=2, image_size=32, shuffle_buffer=0)
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["pixels"].shape) == (2, 2, 3, 32, 32) and sorted(batch["id"]) == ["v0", "v1"]

    from aurora.infer.ask import predict_shards
    from aurora.infer.engine import Generation, StreamEngine
    from aurora.model import AuroraModel

    torch.manual_seed(0)
    model = AuroraModel.from_specs(
        vision={"name": "siglip", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 64, "image_size": 32, "patch_size": 16},
        merge={"name": "tome", "keep_ratio": 0.5, "order": "size_ascending"}, projector="mlp",
        rnn={"name": "rwkv6", "vocab_size": 65536, "d_model": 32, "n_layer": 1, "head_size": 16}).eval()
    # the RWKV World trie (most of this test's time when run alone) is built once per process and shared
    summary = predict_shards(StreamEngine(model, tokenizer=dm.tokenizer), str(out), tmp_path / "pred.jsonl", fps=0.5,
                             gen=Generation(max_new_tokens=2, stop=(), eos_id=None))
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert summary["written"] == 2 and summary["skipped"] == {} and sorted(r["id"] for r in rows) == ["v0", "v1"]


def test_other_settings_rewrite_and_bad_settings_are_refused(source, tmp_path, capsys):
    out = tmp_path / "out"
    first = convert(source / "ann.json", source / "videos", out, workers=1, progress=False, fps=4)
    assert first["splits"]["train"]["params"]["encode"]["short_side"] is None
    again = convert(source / "ann.json", source / "videos", out, workers=1, progress=False, fps=2)
    raw = next(iter(wds.WebDataset(str(out / "train-00000.tar"), shardshuffle=False)))
    with FrameReader(raw["mp4"]) as r:
        assert len(r) == SECONDS * 2 and again["splits"]["train"]["params"]["encode"]["fps"] == 2.0
    for bad in ({"fps": 0}, {"fps": float("nan")}, {"short_side": 1}, {"short_side": 3.5}, {"crf": 60}):
        with pytest.raises(ValueError):
            encode_settings(**bad)
    for argv in (["--fps", "-1"], ["--short-side", "x"], ["--crf", "99"]):
        with pytest.raises(SystemExit) as e:
            convert_main(["--annotations", "a", "--videos", "v", "--out", "o", *argv])
        assert e.value.code == 2
