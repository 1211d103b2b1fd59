"""The paper's released model, ``weili-0234/AuroraLong-RWKV-VID-2B-xtuner``: AuroraCap's xtuner layout, read from a
local copy part by part into an :class:`~aurora.model.AuroraModel`, every tensor accounted for.

The layout (what AuroraCap's ``AuroraModel.to_xtuner_llava`` writes, ``rese1f/aurora``
``src/xtuner/xtuner/model/aurora.py``; the file names from the model's page, see ``docs/inference.md``)::

    DIR/config.json                 the language model: Rwkv6Config (model_type rwkv6, RWKV's modeling_rwkv6.py)
    DIR/pytorch_model.bin           its weights: rwkv.embeddings / rwkv.blocks.N.{pre_ln, ln1, ln2, attention.*,
                                    feed_forward.*} / rwkv.ln_out / head   (or model.safetensors, or shards)
    DIR/rwkv_vocab_v20230424.txt    the RWKV World vocabulary (hf_rwkv_tokenizer.py reads it; so do we)
    DIR/visual_encoder/config.json  AuroraSigEncoder = transformers' SiglipVisionModel (model_type
                                    siglip_vision_model) + ToMe; weights vision_model.* (+ pos_emb, an alias of the
                                    position table that AuroraSigEncoder registers)
    DIR/projector/config.json       xtuner's ProjectorModel (depth, hidden_act, bias); weights model.0 / model.2
                                    (Linear -> GELU -> Linear)

Nothing in the directory is executed: the ``*.py`` files (configuration_rwkv6, modeling_rwkv6,
hf_rwkv_tokenizer, modeling_projector) are never imported; JSON is parsed, weights are read with safetensors or
``torch.load(weights_only=True)``. Each part is built through the registries from a spec that states its
architecture exactly (``siglip`` with the config's sizes, ``mlp``, ``rwkv6``), so ``save_pretrained`` writes an
ordinary aurora export of it. A tensor no part takes, or a part tensor the files lack, is an error naming it;
tensors a part has but does not use (the SigLIP layers after ``feature_layer``, its post-layernorm and pooling
head) are listed in the load report with the reason.

The merge: AuroraCap's encoder merges ``r = int(H * W / patch**2 * (1 - keep_ratio) / num_layers)`` tokens in every
layer (21 at 384x384, keep ratio 0.1, 24 layers); the spec here is ``tome`` with that ``r`` and the paper's
ascending size order. The keep ratio is not stored in the export (AuroraCap sets it at run time with
``reset_tome_r``): the paper's 0.1 is the default, ``keep_ratio`` changes it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

VISION_DIR, PROJECTOR_DIR = "visual_encoder", "projector"
VOCAB = "rwkv_vocab_v20230424.txt"
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


class XtunerError(ValueError):
    """A directory in the xtuner layout that does not load, with the file or tensor named."""


def is_xtuner_dir(path: str | Path) -> bool:
    """A directory in AuroraCap's xtuner layout: a language-model ``config.json`` with ``visual_encoder/`` and
    ``projector/`` beside it."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and (p / VISION_DIR).is_dir() and (p / PROJECTOR_DIR).is_dir()


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise XtunerError(f"{path} is missing")
    try:
        out = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise XtunerError(f"cannot read {path}: {e}") from None
    if not isinstance(out, dict):
        raise XtunerError(f"{path} holds a {type(out).__name__}, not a JSON object")
    return out


def _weights(folder: Path) -> dict[str, Tensor]:
    from aurora.components.rnn._hf import read_weights

    try:
        return read_weights(folder)
    except FileNotFoundError as e:
        raise XtunerError(str(e)) from None


def tome_r(image_size: int, patch_size: int, num_layers: int, keep_ratio: float) -> int:
    """AuroraCap's per-layer merge count (``AuroraSigEncoder.forward``) for a square ``image_size`` frame."""
    if not 0 < keep_ratio <= 1:
        raise XtunerError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return int(image_size * image_size / patch_size ** 2 * (1 - keep_ratio) / num_layers)


# ------------------------------------------------------------------------------------------------ the parts


def _language_model(root: Path, sd: dict[str, Tensor]):
    from aurora.components.rnn._hf import load_checked
    from aurora.components.rnn.rwkv6 import RWKV6, rwkv_hf_to_official

    config = _json(root / "config.json")
    if config.get("model_type") != "rwkv6":
        raise XtunerError(f"{root / 'config.json'} is for model_type {config.get('model_type')!r}; the AuroraLong "
                          "export's language model is RWKV-6 (model_type 'rwkv6', Rwkv6ForCausalLM)")
    if config.get("attention_hidden_size") not in (None, config.get("hidden_size")):
        raise XtunerError(f"{root / 'config.json'} attention_hidden_size={config['attention_hidden_size']} != "
                          f"hidden_size={config.get('hidden_size')}: not supported")
    if any(k.startswith(("model.layers.", "model.embeddings.")) for k in sd):
        raise XtunerError(f"{root} holds fla-hub RWKV-6 names (model.layers.N...), not the Rwkv6ForCausalLM ones "
                          "(rwkv.blocks.N...) of the AuroraLong export")
    try:
        official, kwargs = rwkv_hf_to_official(sd, config)
        sizes = RWKV6.config_from_state_dict(official)
    except ValueError as e:
        raise XtunerError(f"{root}: the language model: {e}; its first keys: {', '.join(sorted(sd)[:6])}") from None
    spec = {"name": "rwkv6", **sizes, **kwargs}
    model = RWKV6(**sizes, **kwargs)
    try:
        load_checked(model, official, "RWKV-6 language model (names shown as official: rwkv.blocks.N.attention.X "
                     "is blocks.N.att.X)")
    except ValueError as e:
        raise XtunerError(f"{root}: {e}") from None
    return model, spec, config


def _vision_config(folder: Path) -> dict[str, Any]:
    cfg = _json(folder / "config.json")
    if cfg.get("model_type") == "siglip" and isinstance(cfg.get("vision_config"), dict):
        cfg = cfg["vision_config"]
    elif cfg.get("model_type") != "siglip_vision_model":
        raise XtunerError(f"{folder / 'config.json'} is for model_type {cfg.get('model_type')!r}; AuroraLong's "
                          "visual encoder is SigLIP (siglip_vision_model, AuroraSigEncoder)")
    if int(cfg.get("num_channels", 3)) != 3:
        raise XtunerError(f"{folder / 'config.json'} num_channels={cfg['num_channels']}: only RGB (3) frames")
    return cfg


def _vision(folder: Path, sd: dict[str, Tensor], keep_ratio: float, order: str, feature_layer: int,
            report: list[tuple[str, str]]):
    from aurora.components.rnn._hf import load_checked
    from aurora.registry import VISION

    cfg = _vision_config(folder)
    sizes = {k: int(cfg[k]) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                      "intermediate_size", "image_size", "patch_size") if k in cfg}
    spec = {"name": "siglip", **sizes, "hidden_act": cfg.get("hidden_act", "gelu_pytorch_tanh"),
            "layer_norm_eps": float(cfg.get("layer_norm_eps", 1e-6)), "feature_layer": feature_layer}
    merge = None
    if keep_ratio < 1:
        r = tome_r(int(cfg.get("image_size", 224)), int(cfg.get("patch_size", 16)),
                   int(cfg.get("num_hidden_layers", 12)), keep_ratio)
        merge = {"name": "tome", "r": r, "order": order}
    try:
        vision = VISION.build(spec, merge=merge)
    except (TypeError, ValueError) as e:
        raise XtunerError(f"{folder / 'config.json'} does not describe a SigLIP encoder we build: {e}") from None
    depth = len(vision.layers)
    mapped: dict[str, Tensor] = {}
    unknown: list[str] = []
    alias = None
    for key, x in sd.items():
        k = key[len("vision_model."):] if key.startswith("vision_model.") else key
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", k)
        if key == "pos_emb":
            alias = x
        elif k.startswith("embeddings."):
            mapped[k] = x
        elif m and int(m.group(1)) < depth:
            mapped[f"layers.{m.group(1)}.{m.group(2)}"] = x
        elif m and int(m.group(1)) < int(cfg.get("num_hidden_layers", 0)):
            report.append((key, f"{VISION_DIR}: layer {m.group(1)} comes after feature_layer {feature_layer}, "
                                "not run"))
        elif k.startswith("post_layernorm."):
            report.append((key, f"{VISION_DIR}: the post-layernorm, after the features (hidden_states"
                                f"[{feature_layer}]) are taken"))
        elif k.startswith("head."):
            report.append((key, f"{VISION_DIR}: SigLIP's attention-pooling head, unused for patch tokens"))
        else:
            unknown.append(key)
    if unknown:
        raise XtunerError(f"{folder}: {len(unknown)} tensor(s) of no SigLIP part: {', '.join(sorted(unknown)[:8])}")
    if alias is not None:
        table = mapped.get("embeddings.position_embedding.weight")
        if table is None or tuple(alias.shape) != tuple(table.shape) or not torch.equal(alias, table):
            raise XtunerError(f"{folder}: pos_emb (AuroraSigEncoder's copy of the position table) differs from "
                              "vision_model.embeddings.position_embedding.weight")
        report.append(("pos_emb", f"{VISION_DIR}: AuroraSigEncoder's alias of the position table, identical to it"))
    try:
        load_checked(vision, mapped, "SigLIP vision tower (names without vision_model. / encoder.)")
    except ValueError as e:
        raise XtunerError(f"{folder}: {e}") from None
    return vision, spec, merge, cfg


def _projector(folder: Path, sd: dict[str, Tensor], in_dim: int, out_dim: int):
    from aurora.components.rnn._hf import load_checked
    from aurora.registry import PROJECTOR

    cfg = _json(folder / "config.json")
    if cfg.get("model_type", "projector") != "projector":
        raise XtunerError(f"{folder / 'config.json'} is for model_type {cfg.get('model_type')!r}, not xtuner's "
                          "'projector'")
    depth = int(cfg.get("depth", 2))
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise XtunerError(f"{folder / 'config.json'} hidden_act={cfg['hidden_act']!r}: only 'gelu' (exact GELU, "
                          "our mlp projector) is supported")
    if not cfg.get("bias", True):
        raise XtunerError(f"{folder / 'config.json'} bias=false: our mlp projector has biases")
    for field, want in (("visual_hidden_size", in_dim), ("llm_hidden_size", out_dim)):
        if cfg.get(field) is not None and int(cfg[field]) != want:
            raise XtunerError(f"{folder / 'config.json'} {field}={cfg[field]} but the "
                              f"{'vision tower' if field.startswith('visual') else 'language model'} has width {want}")
    spec = {"name": "mlp", "depth": depth}
    proj = PROJECTOR.build(spec, in_dim=in_dim, out_dim=out_dim)
    want = {"model." + k[len("net."):]: k for k in proj.state_dict()}  # xtuner's nn.Sequential is ours, renamed
    unknown, missing = sorted(set(sd) - set(want)), sorted(set(want) - set(sd))
    if unknown or missing:
        raise XtunerError(f"{folder}: the weights do not fit a depth-{depth} xtuner projector: "
                          + "; ".join(f"{what}: {', '.join(keys[:8])}" for what, keys in
                                      (("unexpected", unknown), ("missing", missing)) if keys))
    mapped = {want[k]: x for k, x in sd.items()}
    try:
        load_checked(proj, mapped, "mlp projector (xtuner model.N is net.N)")
    except ValueError as e:
        raise XtunerError(f"{folder}: {e}") from None
    return proj, spec


def _preprocessing(folder: Path, vcfg: dict[str, Any]) -> dict[str, Any]:
    """Image size, mean and std: ``visual_encoder/preprocessor_config.json`` where the export has one, else
    SigLIP's (0.5, 0.5, 0.5) at the config's image size."""
    pre = {"image_size": int(vcfg.get("image_size", 384)), "mean": list(SIGLIP_MEAN), "std": list(SIGLIP_STD),
           "num_frames": None, "fps": 1.0}
    path = folder / "preprocessor_config.json"
    if path.is_file():
        p = _json(path)
        pre["mean"] = [float(v) for v in p.get("image_mean", pre["mean"])]
        pre["std"] = [float(v) for v in p.get("image_std", pre["std"])]
        size = p.get("size")
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        if size:
            pre["image_size"] = int(size)
    return pre


# ------------------------------------------------------------------------------------------------ the whole


def summarise(report: list[tuple[str, str]]) -> list[str]:
    """One line per reason: how many tensors, and the first of them."""
    by: dict[str, list[str]] = {}
    for key, why in report:
        by.setdefault(why, []).append(key)
    return [f"{why}: {len(keys)} tensor(s) ({keys[0]}{', ...' if len(keys) > 1 else ''})" for why, keys in by.items()]


def load_xtuner(path: str | Path, keep_ratio: float = 0.1, order: str = "size_ascending",
                feature_layer: int = -2) -> tuple[Any, dict[str, Any]]:
    """(model, settings) of a local copy of the AuroraLong export (see the module docstring). ``settings`` is
    what ``Aurora`` keeps as its config (model specs, preprocessing, template, tokenizer, generation, card) without
    the format tag; ``settings["card"]["load_report"]`` lists every tensor that loads into no parameter, and why."""
    from aurora.model import AuroraModel

    root = Path(path)
    if not is_xtuner_dir(root):
        raise XtunerError(f"{root} is not in the xtuner layout (config.json + {VISION_DIR}/ + {PROJECTOR_DIR}/)")
    report: list[tuple[str, str]] = []  # (tensor, why it loads into no parameter)
    root_sd = _weights(root)
    llm_sd: dict[str, Tensor] = {}
    extra: dict[str, dict[str, Tensor]] = {VISION_DIR: {}, PROJECTOR_DIR: {}}
    for key, x in root_sd.items():
        k = key[len("llm."):] if key.startswith("llm.") else key
        part = next((p for p in extra if k.startswith(p + ".")), None)
        if part:
            extra[part][k[len(part) + 1:]] = x
        else:
            llm_sd[k] = x
    rnn, rnn_spec, _ = _language_model(root, llm_sd)
    v_sd, p_sd = _weights(root / VISION_DIR), _weights(root / PROJECTOR_DIR)
    for part, own in ((VISION_DIR, v_sd), (PROJECTOR_DIR, p_sd)):  # copies in the root file: must be the same
        for k, x in extra[part].items():
            if k not in own or tuple(own[k].shape) != tuple(x.shape) or not torch.equal(own[k].to(x.dtype), x):
                raise XtunerError(f"{root}: the root weights hold {part}.{k}, which {part}/ "
                                  f"{'lacks' if k not in own else 'holds with other values'}")
        if extra[part]:
            report += [(f"{part}.{k}", f"root weights: a copy of {part}/'s tensor, identical") for k in extra[part]]
    vision, v_spec, merge, vcfg = _vision(root / VISION_DIR, v_sd, keep_ratio, order, feature_layer, report)
    proj, p_spec = _projector(root / PROJECTOR_DIR, p_sd, vision.out_dim, rnn.d_model)
    vocab = root / VOCAB
    if not vocab.is_file():
        raise XtunerError(f"{root} lacks the tokenizer vocabulary {VOCAB}")
    if vocab.stat().st_size == 0:
        raise XtunerError(f"{vocab} is empty")
    gen = _json(root / "generation_config.json") if (root / "generation_config.json").is_file() else {}
    settings = {
        "model": {"vision": v_spec, "merge": merge, "projector": p_spec, "rnn": rnn_spec, "lora": None},
        "preprocessing": _preprocessing(root / VISION_DIR, vcfg),
        "template": {"before": "User: {question}\n", "after": "\nUser: {question}\n\nAssistant:", "stop": "\n\n"},
        "tokenizer": {"kind": "rwkv_world", "vocab": VOCAB, "vocab_path": str(vocab)},
        "generation": {"max_new_tokens": int(gen.get("max_new_tokens") or 256)},
        "card": {"source": str(root), "layout": "xtuner (AuroraCap / AuroraLong export)",
                 "loaded": {"rnn": len(llm_sd), VISION_DIR: len(v_sd), PROJECTOR_DIR: len(p_sd)},
                 "load_report": summarise(report), "training": {}, "data": {}, "metrics": {}},
    }
    return AuroraModel(vision, proj, rnn).eval(), settings
