"""The Python API: ``from aurora import Aurora``.

    m = Aurora.from_pretrained("runs/demo/checkpoints/last.ckpt")   # or a directory save_pretrained wrote
    m.ask("clip.mp4", "What colour is the shape?").text
    state = m.read("clip.mp4", context="Describe the video.")       # read once ...
    m.answer(state, "Which way does it move?").text                 # ... ask many
    m.save_pretrained("export/demo")                                # safetensors + config.json + tokenizer + card

Built on the streaming engine (:mod:`aurora.infer.engine`): reading is chunked, memory does not grow with the
video, and every answer is token for token the engine's (and so :meth:`AuroraModel.generate`'s).

An exported directory holds only data, never code: ``model.safetensors`` (weights), ``config.json`` (the registry
specs of every part, the preprocessing, the template, the generation defaults), ``tokenizer/`` (the vocabulary
file) and ``README.md`` (a model card generated from the run: recipe, data, metrics). Loading it builds the model
from the specs through the registries and reads the weights with safetensors: nothing is unpickled or executed.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from aurora.data.prompt import PromptTemplate
from aurora.data.video import DEFAULT_MEAN, DEFAULT_STD, VideoSource
from aurora.infer.engine import Answer, Generation, StreamEngine, StreamError, VideoState

FORMAT = "aurora-pretrained/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER_DIR = "tokenizer"
MODEL_KEYS = ("vision", "merge", "projector", "rnn", "lora")


class PretrainedError(ValueError):
    """A directory or checkpoint that :meth:`Aurora.from_pretrained` cannot load (named in the message)."""


def preprocessing_settings(ckpt: str | os.PathLike, config: str | os.PathLike | None = None) -> dict[str, Any]:
    """The data settings (image size, mean, std, frames or fps, template, tokenizer) a checkpoint was trained with:
    :func:`aurora.infer.runconfig.inference_settings` (``config``, else what the checkpoint carries, else the run's
    ``config.yaml``; none of them is an error, not a silent default)."""
    from aurora.infer.runconfig import inference_settings

    return inference_settings(ckpt, config)


def _checkpoint_facts(blob: Mapping[str, Any]) -> dict[str, Any]:
    """Training progress and the metrics Lightning stored in the checkpoint (ModelCheckpoint scores), if any."""
    facts: dict[str, Any] = {k: blob[k] for k in ("epoch", "global_step") if isinstance(blob.get(k), int)}
    metrics = {}
    for name, cb in (blob.get("callbacks") or {}).items():
        if isinstance(cb, Mapping) and cb.get("monitor") and cb.get("best_model_score") is not None:
            score = cb["best_model_score"]
            metrics[f"best {cb['monitor']}"] = float(score.item() if hasattr(score, "item") else score)
    facts["metrics"] = metrics
    return facts


def _tokenizer_entry(spec: Any) -> dict[str, Any]:
    """config.json's tokenizer entry for a registry spec (``kind`` + the file ``vocab`` it reads + the spec)."""
    from aurora.data.tokenizers import build_tokenizer

    tok = build_tokenizer(spec)
    files = [Path(f) for f in tok.files]
    return {"kind": tok.spec["name"], "vocab": files[0].name, "spec": dict(tok.spec)}


class Aurora:
    """A loaded model with its tokenizer, template and preprocessing (see the module docstring).

    Use :meth:`from_pretrained`; ``engine`` is the :class:`StreamEngine` underneath, ``config`` the resolved
    settings that :meth:`save_pretrained` writes."""

    def __init__(self, engine: StreamEngine, config: dict[str, Any], card: dict[str, Any] | None = None) -> None:
        self.engine = engine
        self.config = config
        self.card = card or {}

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | None = None, dtype: str = "float32",
                        chunk_frames: int = 16, config: str | os.PathLike | None = None,
                        progress: bool = False) -> "Aurora":
        """A directory :meth:`save_pretrained` wrote, a Lightning checkpoint ``aurora fit`` wrote (its
        preprocessing from the run's ``config.yaml``, or ``config``), or a local copy of the paper's released
        model in AuroraCap's xtuner layout (:mod:`aurora.tools.xtuner`)."""
        path = Path(path)
        from aurora.tools.xtuner import is_xtuner_dir

        if is_xtuner_dir(path):  # the paper's released model in AuroraCap's xtuner layout (aurora.tools.xtuner)
            model, cfg = cls._load_xtuner(path)
            card = cfg["card"]
        elif path.is_dir():
            if not (path / CONFIG).is_file():
                raise PretrainedError(f"{path} has no {CONFIG}: not a directory `aurora export` wrote")
            model, cfg = cls._load_dir(path)
            card = cfg.get("card", {})
        elif path.is_file():
            model, cfg, card = cls._load_ckpt(path, config)
        else:
            raise FileNotFoundError(f"no model directory or checkpoint at {path}")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"unknown dtype {dtype!r}; known: float32, bfloat16, float16")
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = model.to(device=dev, dtype=getattr(torch, dtype))
        pre = cfg["preprocessing"]
        from aurora.data.tokenizers import build_tokenizer

        engine = StreamEngine(model, tokenizer=build_tokenizer(cfg["tokenizer"].get("spec")),
                              template=PromptTemplate(**cfg["template"]), image_size=pre.get("image_size"),
                              mean=tuple(pre["mean"]), std=tuple(pre["std"]), chunk_frames=chunk_frames,
                              progress=progress)
        return cls(engine, cfg, card)

    @staticmethod
    def _load_ckpt(ckpt: Path, config: str | os.PathLike | None):
        from aurora.checkpoint import read_checkpoint
        from aurora.model import load_model

        model, hp = load_model(ckpt)
        data = preprocessing_settings(ckpt, config)
        blob = read_checkpoint(ckpt)
        tpl = PromptTemplate(**(data.get("template") or {}))
        cfg = {
            "format": FORMAT,
            "model": {k: hp.get(k) for k in MODEL_KEYS},
            "preprocessing": {"image_size": data.get("image_size") or getattr(model.vision.config, "image_size", None),
                              "mean": list(data.get("mean") or DEFAULT_MEAN), "std": list(data.get("std") or DEFAULT_STD),
                              "num_frames": data.get("num_frames"), "fps": data.get("fps"),
                              "max_frames": data.get("max_frames")},
            "template": {"before": tpl.before, "after": tpl.after, "stop": tpl.stop, "answer": tpl.answer,
                         "lead": tpl.lead_at_inference, "generic": tpl.generic},
            "tokenizer": _tokenizer_entry(data.get("tokenizer")),
            "generation": {"max_new_tokens": int(hp.get("max_new_tokens") or 64)},
        }
        training = {k: v for k, v in hp.items() if k not in MODEL_KEYS and isinstance(v, (int, float, str, bool,
                                                                                           list, dict, type(None)))}
        card = {"source": str(ckpt), "training": training, "data": {k: v for k, v in data.items() if k != "template"},
                **_checkpoint_facts(blob)}
        cfg["card"] = card
        return model, cfg, card

    @staticmethod
    def _load_xtuner(path: Path):
        from aurora.tools.xtuner import XtunerError, load_xtuner

        try:
            model, settings = load_xtuner(path)
        except XtunerError as e:
            raise PretrainedError(str(e)) from None
        return model, {"format": FORMAT, **settings}

    @staticmethod
    def _load_dir(path: Path):
        from safetensors.torch import load_model as st_load

        from aurora.model import AuroraModel

        try:
            cfg = json.loads((path / CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PretrainedError(f"cannot read {path / CONFIG}: {e}") from e
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            raise PretrainedError(f"{path / CONFIG} is not an aurora export (format {FORMAT!r} expected)")
        spec = cfg["model"]
        try:
            model = AuroraModel.from_specs(vision=spec["vision"], merge=spec.get("merge"),
                                           projector=spec.get("projector") or "mlp", rnn=spec["rnn"])
        except (KeyError, ValueError, TypeError) as e:
            raise PretrainedError(f"cannot build the model described by {path / CONFIG}: {e}") from e
        if spec.get("lora"):
            from aurora.lora import apply_lora

            apply_lora(model, dict(spec["lora"]))
        weights = path / WEIGHTS
        if not weights.is_file():
            raise PretrainedError(f"{path} has no {WEIGHTS}")
        try:
            st_load(model, str(weights), strict=True)
        except (RuntimeError, OSError, Exception) as e:  # missing / unexpected / mis-shaped keys, unreadable file
            raise PretrainedError(f"{weights} does not fit the model of {CONFIG}: {e}") from e
        vocab = path / TOKENIZER_DIR / cfg["tokenizer"]["vocab"]
        if not vocab.is_file():
            raise PretrainedError(f"{path} lacks its tokenizer vocabulary {vocab.relative_to(path)}")
        kind = cfg["tokenizer"].get("kind", "rwkv_world")
        local = {"rwkv_world": {"vocab_file": str(vocab)}, "tokenizer_json": {"path": str(vocab)},
                 "hf": {"path": str(vocab.parent)}}
        if kind not in local:
            raise PretrainedError(f"{path / CONFIG} names an unknown tokenizer kind {kind!r}; known: "
                                  f"{', '.join(local)}")
        extra = {k: v for k, v in (cfg["tokenizer"].get("spec") or {}).items() if k in ("eos_token", "pad_token")}
        cfg["tokenizer"]["spec"] = {"name": kind, **local[kind], **extra}
        return model.eval(), cfg

    # -- saving --------------------------------------------------------------------------------------------
    def save_pretrained(self, out: str | os.PathLike) -> Path:
        """Write weights (safetensors), ``config.json``, the tokenizer vocabulary and a model card into ``out``."""
        from safetensors.torch import save_model

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model = self.engine.model
        # float32 on the CPU as trained; save_model handles tied (shared) tensors, which save_file refuses
        save_model(model, str(out / WEIGHTS), metadata={"format": FORMAT})
        cfg = {k: v for k, v in self.config.items() if k != "card"}
        tok = self.engine.tokenizer
        spec = dict(getattr(tok, "spec", None) or {"name": "rwkv_world"})
        files = [Path(f) for f in getattr(tok, "files", None) or [tok.vocab_file]]
        # the spec without local paths: a directory loads its own copy of the files (tokenizer/)
        cfg["tokenizer"] = {"kind": spec["name"], "vocab": files[0].name,
                            "spec": {k: v for k, v in spec.items() if k not in ("path", "vocab_file")}}
        cfg["card"] = self.card
        (out / TOKENIZER_DIR).mkdir(exist_ok=True)
        for f in files:
            shutil.copyfile(f, out / TOKENIZER_DIR / f.name)
        (out / CONFIG).write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        (out / "README.md").write_text(self.model_card())
        return out

    def model_card(self) -> str:
        cfg, card = self.config, self.card
        n = sum(p.numel() for p in self.engine.model.parameters())
        spec = cfg["model"]
        lines = ["# Aurora model", "", f"{n / 1e6:.2f}M parameters, exported by `aurora export` from "
                 f"`{card.get('source', '?')}`.", "", "```python", "from aurora import Aurora",
                 "m = Aurora.from_pretrained('THIS_DIRECTORY')", "print(m.ask('clip.mp4', 'What happens?').text)",
                 "```", "", "## Parts (registry specs, as in `config.json`)", ""]
        for k in MODEL_KEYS:
            if spec.get(k) is not None:
                lines.append(f"- **{k}**: `{json.dumps(spec[k], default=str)}`")
        lines += ["", "## Recipe (training hyperparameters)", ""]
        for k, v in sorted((card.get("training") or {}).items()):
            lines.append(f"- {k}: `{json.dumps(v, default=str)}`")
        lines += ["", "## Data", ""]
        for k, v in sorted((card.get("data") or {}).items()):
            lines.append(f"- {k}: `{json.dumps(v, default=str)}`")
        pre = cfg["preprocessing"]
        lines += [f"- preprocessing: image size {pre.get('image_size')}, mean {pre['mean']}, std {pre['std']}, "
                  f"{'%s frames' % pre['num_frames'] if pre.get('num_frames') else '%s fps' % pre.get('fps')}",
                  f"- template: `{json.dumps(cfg['template'])}`", "", "## Metrics", ""]
        metrics = card.get("metrics") or {}
        lines += [f"- {k}: {v:.4g}" for k, v in metrics.items()] or ["- none recorded in the checkpoint"]
        if "global_step" in card:
            lines.append(f"- trained for {card['global_step']} steps ({card.get('epoch', 0) + 1} epochs)")
        return "\n".join(lines) + "\n"

    # -- asking --------------------------------------------------------------------------------------------
    def generation(self, max_new_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
                   seed: int = 0, stop: Sequence[str] | None = None) -> Generation:
        """Decoding settings with this model's defaults (its max_new_tokens, the template's stop string)."""
        tpl = self.engine.template
        return Generation(max_new_tokens=self.config["generation"]["max_new_tokens"] if max_new_tokens is None
                          else max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          stop=tuple(s for s in (stop if stop is not None else [tpl.stop]) if s))

    def sampling(self, frames: int | None = None, fps: float | None = None) -> tuple[int | None, float | None]:
        """The frame sampling: as given, else the model's (its training frame count, else 1 fps)."""
        if frames is not None or fps is not None:
            return frames, fps
        pre = self.config["preprocessing"]
        return (int(pre["num_frames"]), None) if pre.get("num_frames") else (None, float(pre.get("fps") or 1.0))

    def read(self, video: VideoSource, context: str = "Describe the video.", frames: int | None = None,
             fps: float | None = None) -> VideoState:
        """Read ``before(context)`` and the video once: the state to :meth:`answer` many questions from."""
        frames, fps = self.sampling(frames, fps)
        return self.engine.read_video(video, context, frames, fps)

    def answer(self, state: VideoState, question: str, **gen: Any) -> Answer:
        """Answer ``question`` from a state :meth:`read` returned (which stays untouched); ``gen``: the
        arguments of :meth:`generation`."""
        return self.engine.answer(state, question, self.generation(**gen))

    def ask(self, video: VideoSource, question: str, frames: int | None = None, fps: float | None = None,
            context: str | None = None, **gen: Any) -> Answer:
        """One question about one video, read from scratch with the trained prompt (``context`` = the question)."""
        frames, fps = self.sampling(frames, fps)
        return self.engine.ask(video, question, frames, fps, self.generation(**gen), context)

    def stream(self, state: VideoState, question: str, **gen: Any) -> Iterator[str]:
        """The answer to ``question`` piece by piece as it is generated (the pieces join to ``answer().text``
        before stripping)."""
        from aurora.infer.streaming import stream_answer

        yield from stream_answer(self.engine, state, question, self.generation(**gen))

    def __repr__(self) -> str:
        rnn = self.config["model"]["rnn"]
        return f"Aurora(rnn={rnn.get('name') if isinstance(rnn, Mapping) else rnn}, device={self.engine.device})"


# ------------------------------------------------------------------------------------------------ aurora export


def export_main(argv: list[str]) -> int:
    import argparse
    import sys

    from aurora.checkpoint import CheckpointError

    p = argparse.ArgumentParser(prog="aurora export", description="A checkpoint -> a directory of safetensors "
                                "weights, config.json, tokenizer and model card that `Aurora.from_pretrained` and "
                                "`aurora serve --model` load without executing code.")
    p.add_argument("--ckpt", required=True, help="a Lightning checkpoint written by `aurora fit`")
    p.add_argument("--out", required=True, help="the directory to write")
    p.add_argument("--config", default=None, help="recipe / run config for the preprocessing (default: the run's)")
    args = p.parse_args(argv)
    try:
        m = Aurora.from_pretrained(args.ckpt, device="cpu", config=args.config)
        out = m.save_pretrained(args.out)
    except (CheckpointError, PretrainedError, StreamError, FileNotFoundError, ValueError) as e:
        print("aurora export: error: " + " ".join(str(e).split()), file=sys.stderr)  # one line
        return 2
    files = ", ".join(sorted(f.name for f in out.iterdir()))
    print(f"aurora export: wrote {out} ({files})", file=sys.stderr)
    return 0
