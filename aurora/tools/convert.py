"""``aurora convert``: a community checkpoint -> our backbone's state dict as safetensors + a JSON of its
constructor arguments.

    aurora convert --backbone rwkv6 --src RWKV-x060-World-1B6.pth --out rwkv6-1b6.safetensors
    aurora convert --backbone mamba --src ./mamba-130m-hf --out mamba-130m.safetensors --format hf
    aurora convert --src ./AuroraLong-RWKV-VID-2B-xtuner --out ./auroralong     # a whole xtuner model -> an export

The backbone's own loader reads the source (``from_checkpoint`` where the backbone has one, else
``from_official`` on the state dict read from the file), so every format a backbone reads converts:

    rwkv6           official  BlinkDL's .pth (or .safetensors with the official names);  hf: an fla-hub directory
                              (config.json + weights) or weights file, or the RWKV organisation's Rwkv6ForCausalLM
                              (modeling_rwkv6.py names: rwkv.blocks.N...), as in AuroraLong's xtuner export
    rwkv7           official  BlinkDL's .pth;  hf: an fla-hub directory (config.json + weights) or weights file
    mamba, mamba2   hf        a transformers save_pretrained directory;  state-spaces: config.json with d_model /
                              ssm_cfg + pytorch_model.bin;  or one weights file in either layout
    gla, gated_deltanet, transformer   hf  (fla-hub, resp. transformers Llama / Qwen2, directories)

``--format`` (default ``auto``) states what the source is; a source that is recognisably another format, or a
format the backbone does not read, is refused with the reason. A checkpoint of another architecture fails with
the loader's message naming the missing / unexpected / wrong-shape keys, plus the source's own first keys.

Written: ``OUT.safetensors`` holding our ``state_dict()`` (tensors shared by tied weights are stored under each
name, so ``load_state_dict(strict=True)`` takes the file as it is), and ``OUT.json`` beside it, the registry spec
``{"name": ..., **constructor kwargs}`` exactly as the loader built the model. Loading back::

    from aurora.checkpoint import load_converted
    model = load_converted("rwkv6-1b6.safetensors")            # kwargs such as backend="chunked" override
    # which is: model = RNN.build(json.load(open("rwkv6-1b6.json"))); model.load_state_dict(load_file(...))

The source's tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.json /
merges.txt ...; those in a source directory, or beside a source file) are copied into ``OUT.tokenizer/``.

A recipe points at the converted weights with ``model.rnn: {checkpoint: PATH.safetensors}`` (any other key, such
as ``backend``, overrides the JSON's) and at the tokenizer with ``data.tokenizer: {name: tokenizer_json, path:
PATH.tokenizer/tokenizer.json}`` (or ``{name: hf, path: PATH.tokenizer}``); ``aurora convert`` prints both lines.
A backbone converted without its own tokenizer (BlinkDL's RWKV: the RWKV World vocabulary) keeps the default,
``rwkv_world``. A tokenizer with more tokens than the embedding has rows is refused before training starts.
From Python, :func:`aurora.checkpoint.load_converted` (or the two lines above).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from aurora.checkpoint import key_report
from aurora.registry import RNN

# which source formats a backbone's loader reads is its class's ``formats`` (a backbone without one: whatever its
# loader reads, auto only)
FORMAT_CHOICES = ("auto", "official", "hf", "state-spaces")
DTYPES = ("float32", "bfloat16", "float16")


class ConvertError(ValueError):
    """A conversion that cannot be done, with the reason."""


# ------------------------------------------------------------------------------------------- reading sources


def detect_format(src: str | Path) -> tuple[str | None, str]:
    """(format, the evidence) of a checkpoint: ``official`` (BlinkDL RWKV names), ``state-spaces`` (state-spaces'
    Mamba config / names), ``hf`` (a transformers / fla-hub config or names), or None if none of these."""
    from aurora.components.rnn._hf import checkpoint_folder, read_config, weight_names

    config = read_config(checkpoint_folder(src))
    keys = weight_names(src)
    if any(k == "emb.weight" or k.startswith("blocks.") for k in keys):
        return "official", "BlinkDL names (emb.weight, blocks.N...)"
    if "ssm_cfg" in config or ("d_model" in config and "n_layer" in config and "hidden_size" not in config):
        return "state-spaces", f"state-spaces config.json ({', '.join(k for k in ('d_model', 'ssm_cfg') if k in config)})"
    if config.get("model_type") or "hidden_size" in config:
        return "hf", f"config.json with model_type {config.get('model_type')!r}"
    if any(k.startswith("backbone.embedding.") for k in keys):
        return "state-spaces", "state-spaces names (backbone.embedding.weight)"
    if any(k.startswith(("backbone.embeddings.", "model.", "rwkv.blocks.")) for k in keys):
        return "hf", "Hugging Face names (model.* / backbone.embeddings.* / rwkv.blocks.*)"
    return None, "no known layout"


# ------------------------------------------------------------------------------------------------ converting


def _recording(cls: type) -> tuple[type, dict[str, Any]]:
    """A subclass of ``cls`` (same name) that records the keyword arguments it is built with, so the loader's
    own choice of constructor arguments is what the sidecar holds."""
    seen: dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:
            raise TypeError(f"{cls.__name__} loader passed positional arguments; cannot record them")
        seen.clear()
        seen.update(kwargs)
        cls.__init__(self, **kwargs)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__}), seen


def _registered(name: str) -> type:
    try:
        return RNN.get(name)
    except KeyError as e:
        raise ConvertError(str(e.args[0])) from None


def convert(backbone: str, src: str | Path, out: str | Path, fmt: str = "auto", dtype: str = "float32",
            **overrides: Any) -> dict[str, Any]:
    """Convert ``src`` (see the module docstring) to ``out`` (.safetensors) + its ``.json`` spec; returns the spec.

    ``overrides`` go to the loader (and so into the spec), e.g. a size the checkpoint does not determine.
    """
    import torch
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    if out.suffix != ".safetensors":
        raise ConvertError(f"--out must end in .safetensors, got {out.name!r}")
    if fmt not in FORMAT_CHOICES:
        raise ConvertError(f"unknown --format {fmt!r}; choices: {', '.join(FORMAT_CHOICES)}")
    if dtype not in DTYPES:
        raise ConvertError(f"unknown --dtype {dtype!r}; choices: {', '.join(DTYPES)}")
    if not src.exists():
        raise FileNotFoundError(f"no checkpoint at {src}")
    cls = _registered(backbone)
    supported: tuple[str, ...] | None = getattr(cls, "formats", None)
    if fmt != "auto" and supported is not None and fmt not in supported:
        raise ConvertError(f"{backbone} reads {' / '.join(supported)} checkpoints, not {fmt!r}")
    detected, evidence = detect_format(src)
    if fmt != "auto" and detected is not None and detected != fmt:
        raise ConvertError(f"--format {fmt} given, but {src} is {_a(detected)} checkpoint ({evidence})")

    recording, kwargs = _recording(cls)
    try:
        if hasattr(cls, "from_checkpoint"):
            model = recording.from_checkpoint(src, **overrides)
        elif hasattr(cls, "from_official"):
            from aurora.components.rnn._hf import read_weights

            model = recording.from_official(read_weights(src), **overrides)
        else:
            raise ConvertError(f"{backbone} has no checkpoint loader (from_checkpoint / from_official)")
    except (ValueError, KeyError) as e:
        if isinstance(e, ConvertError):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        hint = ""
        if supported is not None and detected is not None and detected not in supported:
            hint = f" It is {_a(detected)} checkpoint ({evidence}); {backbone} reads {' / '.join(supported)} ones."
        raise ConvertError(f"{src} does not convert to {backbone}: {msg}.{hint} {_mismatch(backbone, cls, src)}"
                           ) from None

    spec = {"name": backbone, **kwargs}
    try:
        json.dumps(spec)
    except (TypeError, ValueError) as e:
        raise ConvertError(f"the {backbone} loader built the model with arguments that JSON cannot hold: {e}") from None
    sd = {k: v.detach().to(getattr(torch, dtype)).contiguous().clone() for k, v in model.state_dict().items()}

    # the spec must rebuild exactly this architecture (checked on the meta device: no memory, no initialisation)
    with torch.device("meta"):
        rebuilt = _registered(backbone)(**kwargs)
    report = key_report(list(sd), rebuilt.state_dict(), sd)
    if report:
        raise ConvertError(f"internal: the recorded {backbone} arguments {kwargs} do not rebuild the loaded model: "
                           f"{report}")

    out.parent.mkdir(parents=True, exist_ok=True)
    side = out.with_suffix(".json")
    tmp_w, tmp_j = (p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in (out, side))
    try:
        save_file(sd, str(tmp_w), metadata={"format": "pt", "aurora.backbone": backbone,
                                            "aurora.source": str(src), "aurora.source_format": detected or "unknown"})
        tmp_j.write_text(json.dumps(spec, indent=2) + "\n")
        os.replace(tmp_w, out)
        os.replace(tmp_j, side)
    finally:
        for p in (tmp_w, tmp_j):
            if p.exists():
                p.unlink()
    copy_tokenizer(src, out)
    return spec


def tokenizer_folder(out: str | Path) -> Path:
    """Where the tokenizer files of a conversion to ``out`` go: ``OUT.tokenizer/`` beside the weights."""
    out = Path(out)
    return out.with_name(out.stem + ".tokenizer")


def copy_tokenizer(src: str | Path, out: str | Path) -> list[Path]:
    """Copy the source checkpoint's tokenizer files into :func:`tokenizer_folder` (atomically: a temporary folder
    renamed into place, replacing an earlier conversion's); returns the copied files (none: nothing written)."""
    import shutil

    from aurora.data.tokenizers import tokenizer_files

    files = tokenizer_files(src)
    dest = tokenizer_folder(out)
    if not files:
        if dest.is_dir():  # an earlier conversion's tokenizer does not belong to this source
            shutil.rmtree(dest)
        return []
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return [dest / f.name for f in files]


def recipe_lines(out: str | Path) -> list[str]:
    """The recipe lines that point at a conversion's weights and (if copied) its tokenizer."""
    out = Path(out)
    lines = [f"model.rnn: {{checkpoint: {out}}}"]
    tok = tokenizer_folder(out)
    if (tok / "tokenizer.json").is_file():
        lines.append(f"data.tokenizer: {{name: tokenizer_json, path: {tok / 'tokenizer.json'}}}")
    elif tok.is_dir():
        lines.append(f"data.tokenizer: {{name: hf, path: {tok}}}")
    else:
        lines.append("data.tokenizer: rwkv_world (the source had no tokenizer files; give the backbone's own if it "
                     "has another vocabulary)")
    return lines


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiouh" else "a ") + word


def _our_names(backbone: str, cls: type, sd: dict[str, Any]) -> dict[str, Any]:
    """A source state dict under our parameter names, by the backbone module's own renaming (if it has one)."""
    from aurora.components.rnn._rwkv import is_fla

    mod = sys.modules[cls.__module__]
    if backbone in ("rwkv6", "rwkv7") and is_fla(sd):
        return mod.fla_to_official(sd)[0]
    if callable(getattr(mod, "is_rwkv_hf", None)) and mod.is_rwkv_hf(sd):
        return mod.rwkv_hf_to_official(sd)[0]
    for fn in ("normalize_state_dict", "to_our_keys"):
        if callable(getattr(mod, fn, None)):
            return getattr(mod, fn)(sd)
    return sd


def _mismatch(backbone: str, cls: type, src: Path) -> str:
    """Which parameter names (layer numbers as N) a ``backbone`` has and the source lacks, and the reverse."""
    import re

    import torch

    from aurora.components.rnn._hf import read_weights

    try:
        sd = _our_names(backbone, cls, read_weights(src))
        with torch.device("meta"):
            own = cls().state_dict()
    except Exception as e:  # noqa: BLE001  (only a hint on top of the loader's message)
        return f"(key comparison not possible: {e})"
    pattern = lambda keys: {re.sub(r"\.\d+\.", ".N.", k) for k in keys}  # noqa: E731
    ours, theirs = pattern(own), pattern(sd)
    parts = [f"{what} ({len(keys)}): {', '.join(sorted(keys)[:8])}{' ...' if len(keys) > 8 else ''}"
             for what, keys in ((f"{backbone} keys the source lacks", ours - theirs),
                                (f"source keys a {backbone} does not have", theirs - ours)) if keys]
    return "Key mismatch: " + "; ".join(parts) + "." if parts else ""


# ------------------------------------------------------------------------------------------------ command


def convert_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aurora convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", help="registered backbone name (rwkv6, mamba, ...); without it --src must be "
                        "a whole model in AuroraCap's xtuner layout (the paper's released AuroraLong checkpoint), "
                        "and --out the directory of an aurora export written from it")
    parser.add_argument("--src", required=True, help="community checkpoint: a file or a directory")
    parser.add_argument("--out", required=True, help="output .safetensors (the .json goes beside it)")
    parser.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="what --src is (default: auto)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="tensor dtype written (default float32)")
    args = parser.parse_args(argv)
    if args.backbone is None:
        return _convert_whole(args.src, args.out)
    try:
        spec = convert(args.backbone, args.src, args.out, fmt=args.format, dtype=args.dtype)
    except Exception as e:
        # ConvertError; an unreadable checkpoint (named by _hf); a pickle weights_only refuses (UnpicklingError),
        # a truncated zip (RuntimeError) or file (EOFError), random bytes (IndexError / KeyError from the
        # unpickler): everything here comes from the source file, so one line; the traceback with AURORA_DEBUG=1
        if os.environ.get("AURORA_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"aurora convert: error: {type(e).__name__}: {first} (reading {args.src}; AURORA_DEBUG=1 shows the "
              "traceback)", file=sys.stderr)
        return 2
    out = Path(args.out)
    tok = tokenizer_folder(out)
    print(f"wrote {out} and {out.with_suffix('.json')}" + (f", and the tokenizer files into {tok}/"
                                                           if tok.is_dir() else ""))
    print(json.dumps(spec))
    print("a recipe uses them with:\n  " + "\n  ".join(recipe_lines(out)))
    return 0


def _convert_whole(src: str, out: str) -> int:
    """A whole model in the xtuner layout -> an aurora export directory (safetensors + config.json + tokenizer +
    card), which ``Aurora.from_pretrained`` and ``aurora serve`` load without reading the xtuner files again."""
    from aurora.tools.xtuner import is_xtuner_dir

    if not is_xtuner_dir(src):
        print(f"aurora convert: error: {src} is not a whole model in the xtuner layout (config.json + visual_encoder/ "
              "+ projector/); give --backbone to convert one language model", file=sys.stderr)
        return 2
    from aurora.infer.api import Aurora, PretrainedError

    try:
        written = Aurora.from_pretrained(src, device="cpu").save_pretrained(out)
    except (PretrainedError, OSError, ValueError) as e:
        if os.environ.get("AURORA_DEBUG"):
            raise
        print("aurora convert: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    print(f"wrote {written} (an aurora export of the xtuner model {src})")
    return 0


if __name__ == "__main__":
    sys.exit(convert_main(sys.argv[1:]))
