"""YAML recipes, shipped inside the package as ``aurora.recipes`` so a wheel install can find them."""
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent


def resolve(config: str) -> str:
    """``config`` itself when that file exists, else the packaged recipe it names: ``demo``, ``demo.yaml`` and
    ``recipes/demo.yaml`` all find ``<package>/recipes/demo.yaml``."""
    if Path(config).exists():
        return config
    name = config.removeprefix("recipes/")
    if not name.endswith((".yaml", ".yml")):
        name += ".yaml"
    packaged = RECIPES_DIR / name
    if packaged.exists():
        return str(packaged)
    raise FileNotFoundError(f"recipe not found: {config!r} (looked for the file and for {packaged})")
