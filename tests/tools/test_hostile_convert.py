"""`aurora convert` on a hostile or broken source: a pickle payload never runs, an unreadable file is one line
and exit code 2."""
import random

import pytest
import torch

from _hostile import write_payload_checkpoint
from aurora.tools.convert import convert_main


@pytest.mark.parametrize("kind", ["payload", "random0", "random2", "random20", "truncated"])
def test_convert_refuses_unreadable_sources_in_one_line(tmp_path, capsys, kind):
    marker = tmp_path / "ran"
    src = tmp_path / "model.pth"
    if kind == "payload":
        write_payload_checkpoint(src, marker)
    elif kind.startswith("random"):  # seeds 2 and 20 made the unpickler raise IndexError / KeyError
        src.write_bytes(random.Random(int(kind[6:])).randbytes(3000))
    else:
        torch.save({"emb.weight": torch.ones(64, 32)}, src)
        src.write_bytes(src.read_bytes()[:2000])
    rc = convert_main(["--backbone", "rwkv6", "--src", str(src), "--out", str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "aurora convert: error" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
