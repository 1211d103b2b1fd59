"""`pip install` of a wheel ships one namespace, aurora.*, with the top-level folders mapped into it."""
import os
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
    # every Python file of the tree ships (a sub-folder missing from pyproject's `packages` would not)
    mapping = {"aurora": "aurora", "components": "aurora/components", "kernels": "aurora/kernels", "data": "aurora/data"}
    tree = {f"{dest}/{p.relative_to(ROOT / folder)}" for folder, dest in mapping.items()
            for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    assert not tree - names, sorted(tree - names)
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"aurora"}, tops  # never a generic top-level `kernels` or `data` module


def test_packaged_recipe_is_found_by_name():
    from aurora.recipes import resolve

    assert Path(resolve("demo")).name == "demo.yaml"
    assert Path(resolve("recipes/demo.yaml")).read_text() == (ROOT / "recipes/demo.yaml").read_text()
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve("nope")


def _bare_import(code, extra_path=None):
    """Run `code` the way `python -c` runs it inside the checkout: the repository root first on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    if extra_path:
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)


def test_bare_kernels_and_data_inside_the_checkout_are_the_installed_packages(tmp_path):
    # stand-ins for the PyPI packages `kernels` (which transformers >= 5.25 imports) and `data`
    for name in ("kernels", "data"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"WHO = 'pypi {name}'\n")
        (tmp_path / name / "sub.py").write_text("X = 1\n")
    r = _bare_import("import sys, kernels, data, kernels.sub; import aurora.kernels, aurora.data;"
                     "print(kernels.WHO, '|', data.WHO, '|', kernels.sub.X, '|', sys.modules['kernels'] is kernels);"
                     "print(aurora.kernels.__name__, hasattr(aurora.kernels, 'WHO'))", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["pypi kernels | pypi data | 1 | True", "aurora.kernels False"]


def test_bare_kernels_without_the_installed_package_is_an_empty_module():
    # no site-packages: whether or not this machine has the PyPI `kernels`, only our folder answers the bare name
    r = _bare_import("import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]; import kernels;"
                     "print([n for n in vars(kernels) if not n.startswith('_')])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"  # none of our code runs under the bare name


def test_transformers_imports_inside_the_checkout():
    # transformers' activations import its Hub-kernels integration, which imports `kernels` when it is installed
    r = _bare_import("import transformers.activations, transformers.models.siglip.modeling_siglip")
    assert r.returncode == 0, r.stderr[-2000:]
