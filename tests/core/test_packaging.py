"""`pip install` of a wheel ships one namespace, aurora.*, with the top-level folders mapped into it."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_maps_folders_into_the_aurora_namespace(tmp_path):
    # build from a clean copy: an in-tree build/ folder could carry stale files into the wheel
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", "runs", "build", "*.egg-info", ".git", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ["aurora/model.py", "aurora/components/rnn/rwkv6.py", "aurora/components/merge/tome.py",
              "aurora/components/vision/siglip.py", "aurora/kernels/rwkv6.py", "aurora/data/synthetic.py",
              "aurora/recipes/demo.yaml"]:
        assert f in names, f
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"aurora"}, tops  # never a generic top-level `kernels` or `data` module


def test_packaged_recipe_is_found_by_name():
    from aurora.recipes import resolve

    assert Path(resolve("demo")).name == "demo.yaml"
    assert Path(resolve("recipes/demo.yaml")).read_text() == (ROOT / "recipes/demo.yaml").read_text()
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve("nope")
