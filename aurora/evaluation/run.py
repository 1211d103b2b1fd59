"""``aurora eval``: score a model on public video QA benchmarks, read in their own formats.

    aurora eval --benchmark mvbench|videomme|egoschema|activitynet_qa|msvd_qa --annotations PATH --videos DIR
                --ckpt C [--config R] [--frames N] [--limit K] [--max-new-tokens T] [--device D] --out DIR

The loop (:func:`evaluate`) drives any engine through a predictor, ``predict(video_path, prompt_text) -> str``
(it may also take ``segment=``, the part of the video a question is about); :class:`AuroraPredictor` is the
default one, built from an Aurora Lightning checkpoint. Multiple-choice answers are read out of free text
(:func:`extract_choice`) and scored as accuracy per task and overall; open-ended answers are scored by exact match
after SQuAD normalisation and by token F1 (torchmetrics' SQuAD), with no LLM judge. Results go to
``<out>/results.json`` and, in lmms-eval's layout, ``<out>/lmms_eval/<model>/<date>_results.json`` with one
``<date>_samples_<task>.jsonl`` per task. See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import logging
import hashlib
import inspect
import json
import math
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from aurora.data.benchmarks import (BENCHMARKS, LETTERS, MULTIPLE_CHOICE, Benchmark, BenchmarkFormatError, Sample,
                                    Segment, read_benchmark)
from aurora.data.reader import FrameReader
from aurora.data.video import DEFAULT_MEAN, DEFAULT_STD, VideoDecodeError, to_pixels, uniform_indices
from aurora.io import atomic_write_text, write_json
from aurora.evaluation.options import Choice, extract_choice

Predictor = Callable[..., str]  # predict(video_path: str, prompt_text: str[, segment=Segment]) -> str
FRAME_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
INVALID = len(LETTERS)  # the class of a multiple-choice response that names no option (or several)


# ------------------------------------------------------------------------------------------------ frames


def sample_frames(video: str | Path, num_frames: int | None = None, segment: Segment | None = None,
                  fps: float | None = None, max_frames: int | None = None, short_side: int | None = None) -> Tensor:
    """Frames of a video file or a folder of frames as uint8 (F, H, W, 3): ``num_frames`` uniform over the whole
    video or over ``segment`` (the indices are :func:`uniform_indices`, as in training), or ``fps`` frames a
    second (at most ``max_frames``; the paper evaluates at 1 fps). A file is read by keyframe seek
    (:class:`~aurora.data.reader.FrameReader`), decoding only the GOPs that hold the chosen frames, resized to
    ``short_side`` inside FFmpeg: a 2-hour video costs the frames kept. Raises FileNotFoundError or
    :class:`VideoDecodeError` naming the video."""
    if fps is None and (num_frames is None or num_frames < 1):
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    path = Path(video)
    if path.is_dir():
        if fps is not None:
            num_frames = max_frames or 8  # a frame folder has no timing: spread max_frames
        return _sample_frame_folder(path, num_frames, segment)
    try:
        with FrameReader(path, short_side=short_side) as reader:
            if fps is not None:
                window = (segment.start, segment.end) if segment is not None else (None, None)
                idx = reader.indices(fps=fps, max_frames=max_frames, start=window[0], end=window[1])
            else:
                idx = _segment_indices(len(reader), num_frames, segment, reader.info.fps)
            return reader.read(idx)
    except VideoDecodeError as e:
        raise VideoDecodeError(f"{path}: {e}") from e


def _segment_indices(total: int, num: int, segment: Segment | None, fps: float | None) -> list[int]:
    if segment is not None and fps:
        lo = max(0, round(segment.start * fps))
        hi = min(total, round(segment.end * fps))
        if hi > lo:
            return [lo + i for i in uniform_indices(hi - lo, num)]
    return uniform_indices(total, num)


def _sample_frame_folder(path: Path, num: int, segment: Segment | None) -> Tensor:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_EXTS)
    if not files:
        raise VideoDecodeError(f"{path}: frame folder holds no images ({', '.join(FRAME_EXTS)})")
    idx = _segment_indices(len(files), num, segment, segment.fps if segment else None)
    try:
        frames = [np.asarray(Image.open(files[i]).convert("RGB")) for i in idx]
        return torch.from_numpy(np.stack(frames))
    except Exception as e:  # unreadable image, or frames of different sizes
        raise VideoDecodeError(f"{path}: cannot read frames ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------------------------------ prompts


@dataclass
class PromptBuilder:
    """The question text handed to the predictor (the model's own template, e.g. the sandwich prompt, wraps it).
    Multiple choice lists the options as ``(A) text`` lines and asks for the letter, as MVBench's and
    lmms-eval's prompts do; open-ended questions ask for a short answer (lmms-eval's ActivityNet-QA prompt)."""

    mc_before: str = ""
    mc_after: str = "Answer with the option's letter from the given choices directly."
    open_after: str = "Answer the question using a single word or phrase."

    def __call__(self, sample: Sample) -> str:
        if sample.options is None:
            return "\n".join(p for p in (sample.question.strip(), self.open_after) if p)
        lines = [self.mc_before, sample.question.strip(), "Options:"]
        lines += [f"({LETTERS[i]}) {opt}" for i, opt in enumerate(sample.options)]
        lines.append(self.mc_after)
        return "\n".join(line for line in lines if line)


# ------------------------------------------------------------------------------------------------ answers


def open_ended_scores(prediction: str, answer: str) -> tuple[float, float]:
    """(exact match, token F1) in [0, 1], SQuAD-normalised (lower case, no punctuation or articles)."""
    from torchmetrics.functional.text import squad

    out = squad({"prediction_text": prediction, "id": "0"},
                {"answers": {"answer_start": [0], "text": [answer]}, "id": "0"})
    return float(out["exact_match"]) / 100, float(out["f1"]) / 100


# ------------------------------------------------------------------------------------------------ the loop


@dataclass
class Report:
    """Everything one evaluation produced: the per-sample records and the scores."""

    benchmark: Benchmark
    records: list[dict[str, Any]]
    metrics: dict[str, Any]
    per_task: dict[str, dict[str, Any]]
    per_group: dict[str, dict[str, dict[str, Any]]]
    extraction: dict[str, int]
    errors: list[dict[str, str]] = field(default_factory=list)
    segments_ignored: int = 0
    limit: int | None = None
    seconds: float = 0.0

    @property
    def metric_names(self) -> list[str]:
        return ["accuracy"] if self.benchmark.kind == MULTIPLE_CHOICE else ["exact_match", "f1"]


def _accepts_segment(predict: Predictor) -> bool:
    try:
        params = inspect.signature(predict).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "segment" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class _Scores:
    """torchmetrics accumulators, one per key (overall, each task, each group value)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.metrics: dict[tuple[str, str], Any] = {}

    def _new(self):
        if self.kind == MULTIPLE_CHOICE:
            from torchmetrics.classification import MulticlassAccuracy

            return MulticlassAccuracy(num_classes=INVALID + 1, average="micro")
        from torchmetrics.text import SQuAD

        return SQuAD()

    def update(self, keys: list[tuple[str, str]], sample: Sample, response: str, choice: Choice | None) -> None:
        for key in keys:
            m = self.metrics.setdefault(key, self._new())
            if self.kind == MULTIPLE_CHOICE:
                pred = choice.index if choice is not None and choice.index is not None else INVALID
                m.update(torch.tensor([pred]), torch.tensor([sample.answer_index]))
            else:
                m.update({"prediction_text": response, "id": sample.id},
                         {"answers": {"answer_start": [0], "text": [sample.answer]}, "id": sample.id})

    def compute(self, key: tuple[str, str]) -> dict[str, float]:
        out = self.metrics[key].compute()
        if self.kind == MULTIPLE_CHOICE:
            return {"accuracy": float(out)}
        return {"exact_match": float(out["exact_match"]) / 100, "f1": float(out["f1"]) / 100}


CHOICES = ("generate", "loglik")


def progress_line(name: str, done: int, total: int, seconds: float, records: list[dict[str, Any]],
                  errors: int = 0) -> str:
    """One progress line for a log (stderr not a terminal): ``mvbench: 50/300 questions, 12.3 s (0.25 s each),
    accuracy so far 0.620, 1 skipped``."""
    text = f"{name}: {done}/{total} questions, {seconds:.1f} s ({seconds / max(done, 1):.2f} s each)"
    key = "accuracy" if records and "accuracy" in records[0] else "exact_match"
    if records:
        text += f", {key} so far {sum(r[key] for r in records) / len(records):.3f}"
    return text + (f", {errors} skipped" if errors else "")


def evaluate(bench: Benchmark, predict: Predictor, limit: int | None = None,
             prompts: PromptBuilder | None = None, progress: bool = False, choice: str = "generate",
             log_every: int | None = None, log=None) -> Report:
    """Ask ``predict`` every question of ``bench`` (the first ``limit``), read out its answers and score them.
    A video that fails to decode is counted in ``errors`` and left out of the scores (like a missing one).

    ``choice`` (multiple choice only): ``generate`` reads the option out of the generated text
    (:func:`extract_choice`); ``loglik`` picks the most likely option letter, scored from one state after the
    question (``predict.choose(video, prompt, options, ...)``, which :class:`AuroraPredictor` has).

    ``progress``: a tqdm bar on stderr (a terminal); else ``log_every`` N: a :func:`progress_line` every N questions
    and after the last, through ``log`` (default: stderr)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if choice not in CHOICES:
        raise ValueError(f"unknown choice {choice!r}; known: {', '.join(CHOICES)}")
    loglik = choice == "loglik" and bench.kind == MULTIPLE_CHOICE
    if loglik and not callable(getattr(predict, "choose", None)):
        raise TypeError("choice='loglik' needs a predictor with a choose(video, prompt, options) method")
    prompts = prompts or PromptBuilder()
    samples = bench.samples[:limit] if limit is not None else bench.samples
    with_segment = _accepts_segment(predict)
    scores = _Scores(bench.kind)
    records, errors, extraction = [], [], Counter()
    segments_ignored = 0
    start = time.perf_counter()
    it = samples
    if progress:
        from tqdm import tqdm

        it = tqdm(samples, desc=bench.name, unit="q", file=sys.stderr)
    every = None if progress or not log_every or log_every < 1 else int(log_every)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    for done, s in enumerate(it, 1):
        if every and done > 1 and (done - 1) % every == 0:  # the previous question ended a block of N
            log(progress_line(bench.name, done - 1, len(samples), time.perf_counter() - start, records, len(errors)))
        prompt = prompts(s)
        kwargs = {}
        if s.segment is not None:
            if with_segment:
                kwargs["segment"] = s.segment
            else:
                segments_ignored += 1
        try:
            if loglik:
                picked = predict.choose(s.video, prompt, list(s.options or ()), **kwargs)
                response = LETTERS[picked]
            else:
                response = predict(s.video, prompt, **kwargs)
        except (VideoDecodeError, OSError, ValueError) as e:  # ValueError: text no tokenizer encodes (\ud800)
            errors.append({"id": s.id, "video": s.video, "error": f"{type(e).__name__}: {e}"})
            logging.getLogger(__name__).warning("skipping %s (%s): %s: %s", s.id, s.video, type(e).__name__, e)
            continue
        if not isinstance(response, str):
            raise TypeError(f"the predictor returned {type(response).__name__} for {s.id}; it must return a str")
        rec: dict[str, Any] = {"id": s.id, "task": s.task, **({"groups": dict(s.groups)} if s.groups else {}),
                               "video": s.video, "prompt": prompt, "answer": s.answer, "response": response}
        keys = [("all", "all"), ("task", s.task)] + [(g, v) for g, v in s.groups.items()]
        if bench.kind == MULTIPLE_CHOICE:
            choice = Choice(picked, "loglik") if loglik else extract_choice(response, s.options or ())
            extraction[choice.how] += 1
            rec["options"] = list(s.options or ())
            rec["prediction"] = LETTERS[choice.index] if choice.index is not None else None
            rec["extraction"] = choice.how
            rec["accuracy"] = float(choice.index == s.answer_index)
            scores.update(keys, s, response, choice)
        else:
            rec["exact_match"], rec["f1"] = open_ended_scores(response, s.answer)
            scores.update(keys, s, response, None)
        records.append(rec)
    if every and samples:
        log(progress_line(bench.name, len(samples), len(samples), time.perf_counter() - start, records, len(errors)))
    n = len(records)
    metrics: dict[str, Any] = {"samples": n}
    per_task: dict[str, dict[str, Any]] = {}
    per_group: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    if n:
        metrics.update(scores.compute(("all", "all")))
        counts = Counter(r["task"] for r in records)
        for task in sorted(counts):
            per_task[task] = {**scores.compute(("task", task)), "samples": counts[task]}
        for (g, v) in sorted(k for k in scores.metrics if k[0] not in ("all", "task")):
            per_group[g][v] = {**scores.compute((g, v)),
                               "samples": sum(1 for r in records if r.get("groups", {}).get(g) == v)}
        first = "accuracy" if bench.kind == MULTIPLE_CHOICE else "exact_match"
        metrics[f"{first}_task_mean"] = sum(t[first] for t in per_task.values()) / len(per_task)
    return Report(benchmark=bench, records=records, metrics=metrics, per_task=per_task, per_group=dict(per_group),
                  extraction=dict(extraction), errors=errors, segments_ignored=segments_ignored, limit=limit,
                  seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ writing


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _stderr(values: list[float]) -> float | str:
    """Standard error of the mean, as lmms-eval reports it (sample standard deviation / sqrt(n))."""
    n = len(values)
    if n < 2:
        return "N/A"
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _task_name(bench: str, task: str) -> str:
    return f"{bench}_" + re.sub(r"[^a-z0-9]+", "_", task.lower()).strip("_")


def _git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def lmms_eval_log(report: Report, model_name: str, model_args: str, gen_kwargs: Mapping[str, Any],
                  date: str) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The results dict and the per-task sample rows in lmms-eval's layout: ``results`` per task and for the
    benchmark as a group (metric keys ``"<metric>,none"`` with ``"<metric>_stderr,none"``), ``groups``,
    ``group_subtasks``, ``configs``, ``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``, ``config``."""
    bench = report.benchmark
    group = bench.name
    names = report.metric_names
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in report.records:
        by_task[_task_name(group, r["task"])].append(r)
    all_tasks = sorted({_task_name(group, s.task) for s in bench.samples})
    original = Counter(_task_name(group, s.task) for s in bench.samples)

    def entry(alias: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"alias": alias}
        for m in names:
            vals = [r[m] for r in rows]
            out[f"{m},none"] = sum(vals) / len(vals) if vals else None
            out[f"{m}_stderr,none"] = _stderr(vals)
        return out

    results = {group: entry(group, report.records)}
    for t in all_tasks:
        results[t] = entry(f" - {t}", by_task.get(t, []))
    higher = {m: True for m in names}
    configs = {
        t: {
            "task": t, "tag": group, "dataset_path": ", ".join(bench.files), "test_split": "test",
            "output_type": "generate_until", "num_fewshot": 0,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in names],
            "generation_kwargs": dict(gen_kwargs), "repeats": 1, "should_decontaminate": False,
            "metadata": {"version": 0.0, "source": "aurora.evaluation.run"},
        }
        for t in all_tasks
    }
    log = {
        "results": results,
        "groups": {group: results[group]},
        "group_subtasks": {group: all_tasks},
        "configs": configs,
        "versions": {group: "N/A", **{t: 0.0 for t in all_tasks}},
        "n-shot": {t: 0 for t in all_tasks},
        "higher_is_better": {group: higher, **{t: higher for t in all_tasks}},
        "n-samples": {t: {"original": original[t], "effective": len(by_task.get(t, []))} for t in all_tasks},
        "config": {"model": model_name, "model_args": model_args, "batch_size": 1, "batch_sizes": [],
                   "device": None, "use_cache": None, "limit": report.limit, "bootstrap_iters": 0,
                   "gen_kwargs": dict(gen_kwargs), "random_seed": 0, "numpy_seed": None, "torch_seed": None,
                   "fewshot_seed": None},
        "git_hash": _git_hash(),
        "date": date,
    }
    samples: dict[str, list[dict[str, Any]]] = {}
    for t in all_tasks:
        rows = []
        for doc_id, r in enumerate(by_task.get(t, [])):
            target = r["answer"]
            doc = {k: r[k] for k in ("id", "task", "video", "answer") if k in r}
            row = {"doc_id": doc_id, "target": str(target), "input": r["prompt"], "resps": [[r["response"]]],
                   "filtered_resps": [r.get("prediction", r["response"])],
                   "doc_hash": _hash(json.dumps(doc, indent=2, ensure_ascii=False)),
                   "prompt_hash": _hash(r["prompt"]), "target_hash": _hash(str(target)),
                   **{m: r[m] for m in names}, "id": r["id"], "video": r["video"]}
            if "extraction" in r:
                row["extraction"] = r["extraction"]
            rows.append(row)
        samples[t] = rows
    return log, samples


def write_results(report: Report, out: str | Path, settings: Mapping[str, Any] | None = None,
                  model_name: str = "aurora", model_args: str = "",
                  gen_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``<out>/results.json`` and the lmms-eval log (each file atomically); returns the summary written."""
    out = Path(out)
    bench = report.benchmark
    now = datetime.now()
    date_id = now.strftime("%Y%m%d_%H%M%S")
    log, samples = lmms_eval_log(report, model_name, model_args, gen_kwargs or {}, date_id)
    model_dir = out / "lmms_eval" / re.sub(r"[^A-Za-z0-9_.-]+", "__", model_name)
    start = time.time() - report.seconds
    log.update({"task_hashes": {t: _hash("".join(f"sample_{i}" + s["doc_hash"] for i, s in enumerate(rows)))
                                for t, rows in samples.items()},
                "model_source": "aurora", "model_name": model_name, "model_name_sanitized": model_dir.name,
                "start_time": start, "end_time": time.time(),
                "total_evaluation_time_seconds": str(report.seconds)})
    results_path = model_dir / f"{date_id}_results.json"
    write_json(results_path, log, ensure_ascii=False)
    sample_paths = {}
    for t, rows in samples.items():
        path = model_dir / f"{date_id}_samples_{t}.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        atomic_write_text(path, text)
        sample_paths[t] = str(path)
    summary = {
        "benchmark": bench.name,
        "kind": bench.kind,
        "metrics": report.metrics,
        "per_task": report.per_task,
        "per_group": report.per_group,
        "extraction": report.extraction,
        "counts": {"annotations": bench.records, "with_video": len(bench.samples), "limit": report.limit,
                   "evaluated": len(report.records), "missing_videos": len(bench.missing_videos),
                   "refused_videos": len(bench.refused_videos),
                   "unlabelled": bench.unlabelled, "decode_errors": len(report.errors),
                   "segments_ignored": report.segments_ignored},
        "annotation_files": bench.files,
        "settings": dict(settings or {}),
        "protocol": PROTOCOL_NOTES[bench.kind],
        "seconds": report.seconds,
        "date": now.isoformat(timespec="seconds"),
        "lmms_eval": {"results": str(results_path), "samples": sample_paths},
        "missing_videos": bench.missing_videos,
        "refused_videos": bench.refused_videos,
        "errors": report.errors,
    }
    write_json(out / "results.json", summary, ensure_ascii=False)
    return summary


PROTOCOL_NOTES = {
    MULTIPLE_CHOICE: "accuracy: the option letter read out of the generated text (extract_choice); a response "
                     "naming no option or several counts as wrong",
    "open_ended": "exact match after SQuAD normalisation and token F1, no LLM judge; the official ActivityNet-QA "
                  "protocol (Video-ChatGPT) scores with a GPT judge, so these figures are not comparable to it",
}


# ------------------------------------------------------------------------------------------------ the model


class AuroraPredictor:
    """The default predictor: an Aurora model from a Lightning checkpoint, answering greedily.

    The model is rebuilt from the checkpoint's hyperparameters and its weights loaded strictly
    (:func:`aurora.model.load_model`). Frames are sampled uniformly (``frames``, default the recipe's
    ``data.num_frames``) and preprocessed as in training (``data.image_size``, ``mean``, ``std``); the question
    goes through the recipe's sandwich prompt template, with the tokenizer it was trained with. These come from
    :func:`aurora.infer.runconfig.inference_settings`: ``config``, else what the checkpoint carries, else the
    ``config.yaml`` the training run wrote next to its checkpoints; without any, an error unless ``frames`` / ``fps``
    are given.
    """

    def __init__(self, ckpt: str | Path, config: str | None = None, frames: int | None = None,
                 max_new_tokens: int | None = None, device: str = "cpu", dtype: str = "float32",
                 fps: float | None = None, max_frames: int | None = None) -> None:
        from aurora.model import load_model
        from aurora.data.prompt import PromptTemplate
        from aurora.data.tokenizers import build_tokenizer
        from aurora.infer.runconfig import inference_settings

        ckpt = Path(ckpt)
        # the recipe, else what the checkpoint carries, else the run's config.yaml; none: an error unless --frames
        self.model, hp = load_model(ckpt)
        data = inference_settings(ckpt, config, required=frames is None and fps is None)
        recipe_path = data.get("config")
        self.settings_from = data.get("source") or "explicit --frames / --fps (no saved settings)"
        self.num_frames = int(frames or data.get("num_frames") or data.get("max_frames") or 8)
        self.fps = fps if fps is not None else (None if frames else data.get("fps"))
        self.max_frames = max_frames or data.get("max_frames") or (self.num_frames if self.fps else None)
        self.image_size = int(data.get("image_size") or self.model.vision.config.image_size)
        self.mean = tuple(data.get("mean") or DEFAULT_MEAN)
        self.std = tuple(data.get("std") or DEFAULT_STD)
        self.template = PromptTemplate(**(data.get("template") or {}))
        self.tokenizer = build_tokenizer(data.get("tokenizer"))
        self.max_new_tokens = int(max_new_tokens or hp.get("max_new_tokens") or 16)
        self.stop = [self.tokenizer.encode(self.template.stop)] if self.template.stop else None
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.model.to(self.device, self.dtype).eval()
        self.recipe = str(recipe_path) if recipe_path else None
        self.ckpt = str(ckpt)

    @property
    def settings(self) -> dict[str, Any]:
        return {"ckpt": self.ckpt, "recipe": self.recipe, "settings_from": self.settings_from, "frames": self.num_frames, "fps": self.fps,
                "max_frames": self.max_frames, "image_size": self.image_size,
                "max_new_tokens": self.max_new_tokens, "device": str(self.device), "dtype": str(self.dtype),
                "template": {"before": self.template.before, "after": self.template.after}}

    @torch.no_grad()
    def __call__(self, video_path: str, prompt_text: str, segment: Segment | None = None) -> str:
        frames = sample_frames(video_path, self.num_frames, segment, self.fps, self.max_frames, self.image_size)
        pixels = to_pixels(frames, self.image_size, self.mean, self.std)[None].to(self.device, self.dtype)
        ids = torch.tensor([self.template.build_prompt(self.tokenizer, prompt_text)], device=self.device)
        out = self.model.generate(pixels, ids, max_new_tokens=self.max_new_tokens, stop_ids=self.stop,
                                  eos_id=self.tokenizer.eos_id)
        return self.tokenizer.decode(out).strip()


    @torch.no_grad()
    def choose(self, video_path: str, prompt_text: str, options: list[str], segment: Segment | None = None) -> int:
        """The option whose letter (as the model answers: the template's answer around the letter) is most likely
        after the prompt; the video and prompt are read once, each option scored from that state."""
        if not options:
            raise ValueError("choose needs the question's options")
        frames = sample_frames(video_path, self.num_frames, segment)
        pixels = to_pixels(frames, self.image_size, self.mean, self.std)[None].to(self.device, self.dtype)
        ids = torch.tensor([self.template.build_prompt(self.tokenizer, prompt_text)], device=self.device)
        conts = [self.tokenizer.encode(self.template.answer.format(answer=LETTERS[i])) for i in range(len(options))]
        scores = self.model.score_continuations(pixels, ids, conts)
        return int(max(range(len(scores)), key=scores.__getitem__))


# ------------------------------------------------------------------------------------------------ command


def format_report(summary: Mapping[str, Any]) -> str:
    m, c = summary["metrics"], summary["counts"]
    names = ["accuracy"] if summary["kind"] == MULTIPLE_CHOICE else ["exact_match", "f1"]
    lines = [f"{summary['benchmark']}: {c['evaluated']} questions scored "
             f"({c['missing_videos']} videos missing, {c['decode_errors']} undecodable, "
             f"{c['unlabelled']} without answers)"]
    if c["evaluated"]:
        lines.append("  overall: " + ", ".join(f"{k} {m[k]:.4f}" for k in names)
                     + f" (mean over tasks: {m[names[0] + '_task_mean']:.4f})")
        width = max(len(t) for t in summary["per_task"])
        for t, v in summary["per_task"].items():
            lines.append(f"  {t:<{width}}  " + ", ".join(f"{k} {v[k]:.4f}" for k in names) + f"  (n={v['samples']})")
    if summary["extraction"]:
        lines.append("  answers read as: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["extraction"].items())))
    return "\n".join(lines)


def eval_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aurora eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS.names(), help="which benchmark reader (aurora parts benchmark lists them)")
    parser.add_argument("--annotations", required=True, help="the benchmark's annotation file or folder")
    parser.add_argument("--videos", required=True, help="the folder holding the benchmark's videos")
    parser.add_argument("--ckpt", required=True, help="an Aurora Lightning checkpoint (e.g. runs/x/checkpoints/last.ckpt)")
    parser.add_argument("--config", default=None, help="recipe (default: the config.yaml the training run wrote)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: the recipe's)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frames per second instead of --frames (default: the recipe's data.fps, if any)")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="with --fps: at most this many frames (default: the recipe's data.max_frames)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first K questions")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="generation limit (default: the model's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights and activations dtype (default: %(default)s)")
    parser.add_argument("--choice", default="generate", choices=CHOICES,
                        help="multiple choice: read the option out of the generated text (generate), or pick the "
                             "most likely option letter scored from one state after the question (loglik)")
    parser.add_argument("--out", required=True, help="output folder for results.json and the lmms-eval log")
    parser.add_argument("--log-every", type=int, default=50, metavar="N",
                        help="when stderr is not a terminal (a log file, CI): a progress line every N questions "
                             "(default: %(default)s; 0: none). A terminal gets a progress bar")
    parser.add_argument("--allow-outside-videos", action="store_true",
                        help="read videos whose annotated path resolves outside --videos (refused and counted by "
                             "default)")
    args = parser.parse_args(argv)
    if args.fps is not None and (args.frames is not None or not args.fps > 0):
        parser.error("--fps must be > 0 and replaces --frames (give one of them)")
    if args.log_every < 0:
        parser.error(f"--log-every must be >= 0, got {args.log_every}")
    for name in ("frames", "limit", "max_new_tokens", "max_frames"):
        v = getattr(args, name)
        if v is not None and v < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    from aurora.checkpoint import CheckpointError
    from aurora.infer.runconfig import RecipeError

    try:
        bench = read_benchmark(args.benchmark, args.annotations, args.videos, args.allow_outside_videos)
        print(bench.summary(), file=sys.stderr)
        predictor = AuroraPredictor(args.ckpt, args.config, args.frames, args.max_new_tokens, args.device, args.dtype,
                                    fps=args.fps, max_frames=args.max_frames)
    except (BenchmarkFormatError, CheckpointError, RecipeError, FileNotFoundError) as e:
        print(f"aurora eval: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    report = evaluate(bench, predictor, limit=args.limit, progress=sys.stderr.isatty(), choice=args.choice,
                      log_every=args.log_every)
    settings = {**predictor.settings, "choice": args.choice, "annotations": args.annotations, "videos": args.videos,
                "prompt": {"multiple_choice_after": PromptBuilder.mc_after, "open_ended_after": PromptBuilder.open_after}}
    gen = {"max_new_tokens": predictor.max_new_tokens, "do_sample": False, "until": [predictor.template.stop]}
    summary = write_results(report, args.out, settings, model_name=f"aurora_{Path(args.ckpt).stem}",
                            model_args=f"pretrained={args.ckpt},frames={predictor.num_frames}", gen_kwargs=gen)
    print(format_report(summary))
    print(f"results written to {Path(args.out) / 'results.json'} (lmms-eval log: {summary['lmms_eval']['results']})")
    return 0


if __name__ == "__main__":
    sys.exit(eval_main(sys.argv[1:]))
