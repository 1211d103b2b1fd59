"""Saved video states are input like any other: edited tensors, lying or missing header fields, wrong dtypes and
forged setups are each one clear StreamError, never a silent answer or a traceback."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aurora.data.video import encode_mp4
from aurora.infer.engine import StreamEngine, StreamError, state_checksum

from test_stream import Q, tiny_model  # the tiny model the streaming tests use


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import numpy as np

    video = encode_mp4(np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8))
    engine = StreamEngine(tiny_model("rwkv6"), chunk_frames=8)
    path = engine.save_state(engine.read_video(video, Q, frames=4), tmp_path_factory.mktemp("s") / "s.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["aurora"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return engine, path, header, tensors


def rewrite(tmp_path, header, tensors, fix_checksum=False):
    if fix_checksum:  # a forger who recomputes the checksum: the other checks must still catch it
        header = dict(header, checksum=state_checksum(tensors, header))
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path), metadata={"aurora": json.dumps(header)})
    return path


def state_key(tensors):
    return next(k for k in tensors if k != "logits" and tensors[k].is_floating_point())


def test_the_saved_state_loads(saved):
    engine, path, _, _ = saved
    assert engine.load_state(path).frames == 4


@pytest.mark.parametrize("case,match", [
    ("nan", "checksum"), ("big", "checksum"), ("frames", "impossible"), ("frames_small", "checksum"),
    ("nan_resigned", "NaN"), ("frames_resigned", "impossible"), ("float64_resigned", "float64"),
    ("shape_resigned", "this model makes"), ("setup_resigned", "another setup"),
    ("setup_list_resigned", "meta.setup must be a mapping"),
    ("no_structure", "no 'structure'"), ("no_context", "no 'context'"), ("no_checksum", "no 'checksum'"),
    ("frames_str", "'frames' must be int"), ("no_logits", "no 'logits'"), ("bad_k_resigned", "lacks tensor"),
    ("bad_kind_resigned", "unknown entry"), ("structure_junk_resigned", "malformed structure"),
])
def test_each_edit_is_one_clear_error(saved, tmp_path, case, match):
    engine, _, header, tensors = saved
    header, tensors = json.loads(json.dumps(header)), dict(tensors)
    key = state_key(tensors)
    base = case.removesuffix("_resigned")
    if base == "nan":
        t = tensors[key].clone(); t.view(-1)[0] = float("nan"); tensors[key] = t
    elif base == "big":
        tensors[key] = tensors[key] + 1e4
    elif base == "frames":
        header["frames"] = 999999
    elif base == "frames_small":
        header["frames"] = 3
    elif base == "float64":
        tensors[key] = tensors[key].double()
    elif base == "shape":
        tensors[key] = torch.cat([tensors[key], tensors[key]], -1)
    elif base == "setup":
        header["meta"]["setup"]["image_size"] = 4096
    elif base == "setup_list":
        header["meta"]["setup"] = ["forged"]
    elif base.startswith("no_") and base != "no_logits":
        del header[base[3:]]
    elif base == "frames_str":
        header["frames"] = "4"
    elif base == "no_logits":
        del tensors["logits"]
    elif base == "bad_k":
        header["structure"] = {"t": "tensor", "k": "nowhere"}
    elif base == "bad_kind":
        header["structure"] = {"t": "pickle", "v": 1}
    elif base == "structure_junk":
        header["structure"] = {"x": 1}
    path = rewrite(tmp_path, header, tensors, fix_checksum=case.endswith("_resigned"))
    with pytest.raises(StreamError, match=match):
        engine.load_state(path)
