"""Readers for public video QA benchmarks, each reading the benchmark's own files exactly as published.

    bench = read_benchmark("mvbench", annotations="MVBench/json", videos="MVBench/video")
    bench.samples          # uniform Sample records: id, video, question, options | None, answer, task
    bench.missing_videos   # annotations whose video is not in the folder: counted and listed, never a crash

Multiple-choice answers are option letters ("A", "B", ...) whatever the benchmark stores (a candidate's text,
a letter, an index); options are their texts without letters. Open-ended answers are the reference text.
A record without a field the format requires raises :class:`BenchmarkFormatError` naming the file, the record
and the field. ``docs/evaluation.md`` lists the files each reader expects.
"""
from __future__ import annotations

import json
import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from aurora.registry import Registry

log = logging.getLogger(__name__)

MULTIPLE_CHOICE = "multiple_choice"
OPEN_ENDED = "open_ended"
LETTERS = string.ascii_uppercase
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".gif")


class BenchmarkFormatError(ValueError):
    """Annotations that do not follow the benchmark's published format."""


@dataclass(frozen=True)
class Segment:
    """The part of a video a question is about (MVBench's ``start``/``end``), in seconds. ``fps`` is the frame
    rate of a folder of frames (a frame folder has no container to say it); None for video files."""

    start: float
    end: float
    fps: float | None = None


@dataclass(frozen=True)
class Sample:
    """One question, in the same shape for every benchmark."""

    id: str
    video: str  # a video file, or a folder of frames (MVBench's episodic reasoning)
    question: str
    options: tuple[str, ...] | None  # option texts without letters; None for open-ended questions
    answer: str  # multiple choice: the correct option's letter; open-ended: the reference answer
    task: str  # the benchmark's task / question type: the per-task scores group by it
    groups: Mapping[str, str] = field(default_factory=dict)  # further breakdowns (Video-MME: duration, domain)
    segment: Segment | None = None

    @property
    def answer_index(self) -> int | None:
        return LETTERS.index(self.answer) if self.options is not None else None


@dataclass
class Benchmark:
    """What a reader returns: the samples whose videos exist, and an account of everything left out."""

    name: str
    kind: str  # MULTIPLE_CHOICE or OPEN_ENDED
    samples: list[Sample]
    files: list[str]  # the annotation files read
    records: int = 0  # annotation records read (questions)
    missing_videos: list[dict[str, str]] = field(default_factory=list)  # {"id", "video"}: not in the folder
    refused_videos: list[dict[str, str]] = field(default_factory=list)  # {"id", "video", "reason"}: outside it
    unlabelled: int = 0  # questions without a published answer (EgoSchema outside its subset, ...)

    @property
    def tasks(self) -> list[str]:
        return sorted({s.task for s in self.samples})

    def summary(self) -> str:
        parts = [f"{self.name}: {len(self.samples)} questions with videos of {self.records} read from "
                 f"{len(self.files)} file(s)"]
        if self.refused_videos:
            parts.append(f"{len(self.refused_videos)} videos refused (outside the video folder)")
        if self.missing_videos:
            first = ", ".join(m["video"] for m in self.missing_videos[:3])
            parts.append(f"{len(self.missing_videos)} videos missing (e.g. {first})")
        if self.unlabelled:
            parts.append(f"{self.unlabelled} questions without a published answer skipped")
        return "; ".join(parts)


Reader = Callable[[Path, Path], Benchmark]
BENCHMARKS: Registry = Registry("benchmark")


def read_benchmark(name: str, annotations: str | Path, videos: str | Path, allow_outside: bool = False) -> Benchmark:
    """Read benchmark ``name`` (see ``BENCHMARKS.names()``) from its annotation file(s) and a video folder.

    A video path that resolves outside ``videos`` (``../../etc/passwd``, an absolute path, a symlink out) is not
    read: the sample goes to ``bench.refused_videos`` (counted, logged), unless ``allow_outside``."""
    reader = BENCHMARKS.get(name)
    ann, vid = Path(annotations), Path(videos)
    if not ann.exists():
        raise FileNotFoundError(f"{name} annotations not found: {ann}")
    if not vid.is_dir():
        raise FileNotFoundError(f"{name} video folder not found (or not a folder): {vid}")
    bench = reader(ann, vid)
    if not allow_outside:
        refuse_outside(bench, vid)
    if bench.missing_videos:
        log.info("%s: %d of %d videos missing from %s", name, len(bench.missing_videos), bench.records, vid)
    return bench


def refuse_outside(bench: Benchmark, root: Path) -> None:
    """Move the samples whose video resolves (symlinks followed) outside ``root`` to ``bench.refused_videos``."""
    top = root.resolve()
    kept = []
    for s in bench.samples:
        real = Path(s.video).resolve()
        if real.is_relative_to(top):
            kept.append(s)
            continue
        bench.refused_videos.append({"id": s.id, "video": s.video, "reason": f"resolves to {real}, outside {top}"})
        log.warning("%s: not reading the video of %s: %s resolves to %s, outside the video folder %s "
                    "(--allow-outside-videos to read it)", bench.name, s.id, s.video, real, top)
    bench.samples = kept


# ------------------------------------------------------------------------------------------------ helpers


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchmarkFormatError(f"{path} is not valid JSON: {e}") from e


def _records(path: Path, data: Any, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(data, list):
        raise BenchmarkFormatError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")
    for i, rec in enumerate(data):
        if not isinstance(rec, Mapping):
            raise BenchmarkFormatError(f"{path}: record {i} is a {type(rec).__name__}, not an object")
    return data


def _get(rec: Mapping[str, Any], key: str, path: Path, index: int, id_key: str | None = None) -> Any:
    """``rec[key]``; a missing (or null) field names the file, the record and the field."""
    value = rec.get(key)
    if value is None:
        ident = f" ({id_key}={rec[id_key]!r})" if id_key and rec.get(id_key) is not None else ""
        raise BenchmarkFormatError(f"{path}: record {index}{ident} has no {key!r} field "
                                   f"(fields: {', '.join(map(str, rec)) or 'none'})")
    return value


def _find_video(root: Path, *names: str) -> Path | None:
    """The first of ``names`` (relative to ``root``) that exists; a name without a video extension is also tried
    with each of VIDEO_EXTS. A folder counts (frames)."""
    for name in names:
        p = root / name
        if p.exists():
            return p
        if p.suffix.lower() not in VIDEO_EXTS:
            for ext in VIDEO_EXTS:
                q = p.with_name(p.name + ext)
                if q.exists():
                    return q
    return None


class _Collector:
    """Builds a Benchmark: samples with videos go in, the others are counted as missing."""

    def __init__(self, name: str, kind: str, root: Path) -> None:
        self.bench = Benchmark(name=name, kind=kind, samples=[], files=[])
        self.root = root

    def add(self, video_names: Iterable[str], **fields: Any) -> None:
        self.bench.records += 1
        names = list(video_names)
        path = _find_video(self.root, *names)
        if path is None:
            self.bench.missing_videos.append({"id": fields["id"], "video": str(self.root / names[0])})
            return
        self.bench.samples.append(Sample(video=str(path), **fields))


def _mc_answer(path: Path, index: int, rec_id: str, options: list[str], answer: Any, how: str) -> str:
    """The letter of the correct option, from a candidate's text (``text``), a letter or an index."""
    n = len(options)
    if how == "text":
        if answer not in options:
            raise BenchmarkFormatError(f"{path}: record {index} ({rec_id}): answer {answer!r} is not one of its "
                                       f"candidates {options}")
        return LETTERS[options.index(answer)]
    if how == "letter":
        letter = str(answer).strip().upper()
        if len(letter) != 1 or letter not in LETTERS[:n]:
            raise BenchmarkFormatError(f"{path}: record {index} ({rec_id}): answer {answer!r} is not one of the "
                                       f"letters {', '.join(LETTERS[:n])}")
        return letter
    try:
        i = int(answer)
    except (TypeError, ValueError):
        i = -1
    if not 0 <= i < n:
        raise BenchmarkFormatError(f"{path}: record {index} ({rec_id}): answer {answer!r} is not an option "
                                   f"index 0..{n - 1}")
    return LETTERS[i]


def _options(path: Path, index: int, rec_id: str, options: Any, field_name: str) -> list[str]:
    if hasattr(options, "tolist"):  # pandas/pyarrow give numpy arrays for list columns
        options = options.tolist()
    if not isinstance(options, (list, tuple)) or not options or not all(isinstance(o, str) for o in options):
        raise BenchmarkFormatError(f"{path}: record {index} ({rec_id}): {field_name!r} must be a non-empty list of "
                                   f"strings, got {options!r}")
    if len(options) > len(LETTERS):
        raise BenchmarkFormatError(f"{path}: record {index} ({rec_id}): {len(options)} options, at most "
                                   f"{len(LETTERS)} can be lettered")
    return [str(o) for o in options]


_LETTERED = re.compile(r"^\s*\(?([A-Z])[.):]\s*(.*)$", re.S)


def strip_option_letters(options: list[str]) -> list[str]:
    """``["A. dog", "B. cat"]`` -> ``["dog", "cat"]`` when every option carries its own letter in order;
    otherwise the options unchanged."""
    found = [_LETTERED.match(o) for o in options]
    if all(m is not None and m.group(1) == LETTERS[i] for i, m in enumerate(found)):
        return [m.group(2).strip() for m in found]  # type: ignore[union-attr]
    return list(options)


# ------------------------------------------------------------------------------------------------ MVBench

# MVBench's own table (OpenGVLab Ask-Anything, video_chat2/mvbench.ipynb): json file -> video folder under
# MVBench's video/ directory, data type, and whether the question covers only the record's start..end.
MVBENCH_TASKS: dict[str, tuple[str, str, bool]] = {
    "action_sequence": ("star/Charades_v1_480", "video", True),
    "action_prediction": ("star/Charades_v1_480", "video", True),
    "action_antonym": ("ssv2_video", "video", False),
    "fine_grained_action": ("Moments_in_Time_Raw/videos", "video", False),
    "unexpected_action": ("FunQA_test/test", "video", False),
    "object_existence": ("clevrer/video_validation", "video", False),
    "object_interaction": ("star/Charades_v1_480", "video", True),
    "object_shuffle": ("perception/videos", "video", False),
    "moving_direction": ("clevrer/video_validation", "video", False),
    "action_localization": ("sta/sta_video", "video", True),
    "scene_transition": ("scene_qa/video", "video", False),
    "action_count": ("perception/videos", "video", False),
    "moving_count": ("clevrer/video_validation", "video", False),
    "moving_attribute": ("clevrer/video_validation", "video", False),
    "state_change": ("perception/videos", "video", False),
    "fine_grained_pose": ("nturgbd", "video", False),
    "character_order": ("perception/videos", "video", False),
    "egocentric_navigation": ("vlnqa", "video", False),
    "episodic_reasoning": ("tvqa/frames_fps3_hq", "frame", True),
    "counterfactual_inference": ("clevrer/video_validation", "video", False),
}
MVBENCH_FRAME_FPS = 3.0  # the episodic-reasoning frame folders are sampled at 3 fps (frames_fps3_hq)


@BENCHMARKS.register("mvbench")
def read_mvbench(annotations: Path, videos: Path) -> Benchmark:
    """MVBench: ``json/<task>.json`` files (or one of them), each a list of ``{video, question, candidates,
    answer[, start, end]}`` with ``answer`` the text of one candidate; ``videos`` is MVBench's ``video/``
    folder (``<videos>/<task's folder>/<video>``, or ``<videos>/<video>`` when the folders were flattened)."""
    files = sorted(annotations.glob("*.json")) if annotations.is_dir() else [annotations]
    if not files:
        raise FileNotFoundError(f"no MVBench task files (*.json) in {annotations}")
    col = _Collector("mvbench", MULTIPLE_CHOICE, videos)
    for path in files:
        task = path.stem
        prefix, kind, bound = MVBENCH_TASKS.get(task, ("", "video", None))
        col.bench.files.append(str(path))
        for i, rec in enumerate(_records(path, _load_json(path), "MVBench questions")):
            video = str(_get(rec, "video", path, i))
            rec_id = f"{task}/{i}"
            question = str(_get(rec, "question", path, i, "video"))
            options = _options(path, i, rec_id, _get(rec, "candidates", path, i, "video"), "candidates")
            answer = _mc_answer(path, i, rec_id, options, _get(rec, "answer", path, i, "video"), "text")
            segment = None
            if bound or (bound is None and "start" in rec and "end" in rec):
                start, end = _get(rec, "start", path, i, "video"), _get(rec, "end", path, i, "video")
                segment = Segment(float(start), float(end), MVBENCH_FRAME_FPS if kind == "frame" else None)
            names = [f"{prefix}/{video}", video] if prefix else [video]
            col.add(names, id=rec_id, question=question, options=tuple(options), answer=answer, task=task,
                    segment=segment)
    return col.bench


# ------------------------------------------------------------------------------------------------ Video-MME


def _videomme_rows(path: Path) -> list[Mapping[str, Any]]:
    """Video-MME's parquet (lmms-lab/Video-MME ``videomme/test-*.parquet``), or the same records as JSON /
    JSON lines, flat or nested per video (``{video_id, duration, domain, ..., questions: [...]}``)."""
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            rows = pd.read_parquet(path).to_dict("records")
        except Exception as e:  # pyarrow raises its own errors for a broken file
            raise BenchmarkFormatError(f"{path} is not a readable parquet file ({type(e).__name__}: {e})") from e
    elif path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise BenchmarkFormatError(f"{path}: line {n + 1} is not valid JSON: {e}") from e
    else:
        rows = _records(path, _load_json(path), "Video-MME questions")
    flat: list[Mapping[str, Any]] = []
    for row in rows:
        if "questions" in row:  # one record per video, its questions inside
            video = {k: v for k, v in row.items() if k != "questions"}
            flat.extend({**video, **q} for q in row["questions"])
        else:
            flat.append(row)
    return flat


@BENCHMARKS.register("videomme")
def read_videomme(annotations: Path, videos: Path) -> Benchmark:
    """Video-MME: ``videomme/test-00000-of-00001.parquet`` (or a folder holding it) with ``videoID``,
    ``question_id``, ``question``, ``options`` ("A. ..."), ``answer`` (a letter), ``duration``, ``domain``,
    ``task_type``; videos are ``<videos>/<videoID>.mp4``."""
    if annotations.is_dir():
        files = sorted(annotations.glob("*.parquet")) or sorted(annotations.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"no Video-MME annotations (*.parquet or *.json) in {annotations}")
    else:
        files = [annotations]
    col = _Collector("videomme", MULTIPLE_CHOICE, videos)
    for path in files:
        col.bench.files.append(str(path))
        for i, rec in enumerate(_videomme_rows(path)):
            rec_id = str(_get(rec, "question_id", path, i, "videoID"))
            vid = str(_get(rec, "videoID", path, i, "question_id"))
            options = strip_option_letters(_options(path, i, rec_id, _get(rec, "options", path, i, "question_id"),
                                                    "options"))
            answer = _mc_answer(path, i, rec_id, options, _get(rec, "answer", path, i, "question_id"), "letter")
            groups = {"duration": str(_get(rec, "duration", path, i, "question_id")),
                      "domain": str(_get(rec, "domain", path, i, "question_id"))}
            col.add([vid, f"data/{vid}"], id=rec_id, question=str(_get(rec, "question", path, i, "question_id")),
                    options=tuple(options), answer=answer, task=str(_get(rec, "task_type", path, i, "question_id")),
                    groups=groups)
    return col.bench


# ------------------------------------------------------------------------------------------------ EgoSchema

EGOSCHEMA_OPTIONS = 5


@BENCHMARKS.register("egoschema")
def read_egoschema(annotations: Path, videos: Path) -> Benchmark:
    """EgoSchema: ``questions.json`` (a list of ``{q_uid, question, option 0 .. option 4}``) with
    ``subset_answers.json`` (``{q_uid: index}``) beside it, or the folder holding both; videos are
    ``<videos>/<q_uid>.mp4``. Questions outside the published answers are counted as unlabelled and skipped
    (the full set is scored by EgoSchema's own server)."""
    qpath = annotations / "questions.json" if annotations.is_dir() else annotations
    apath = qpath.with_name("subset_answers.json")
    if not qpath.is_file():
        raise FileNotFoundError(f"EgoSchema questions not found: {qpath}")
    if not apath.is_file():
        raise FileNotFoundError(f"EgoSchema answers not found: {apath} (subset_answers.json must sit beside "
                                f"{qpath.name}; the full set's answers are only on EgoSchema's server)")
    answers = _load_json(apath)
    if not isinstance(answers, Mapping):
        raise BenchmarkFormatError(f"{apath}: expected a JSON object {{q_uid: answer index}}, "
                                   f"got {type(answers).__name__}")
    col = _Collector("egoschema", MULTIPLE_CHOICE, videos)
    col.bench.files += [str(qpath), str(apath)]
    for i, rec in enumerate(_records(qpath, _load_json(qpath), "EgoSchema questions")):
        uid = str(_get(rec, "q_uid", qpath, i))
        question = str(_get(rec, "question", qpath, i, "q_uid"))
        options = [str(_get(rec, f"option {k}", qpath, i, "q_uid")) for k in range(EGOSCHEMA_OPTIONS)]
        if uid not in answers:
            col.bench.records += 1
            col.bench.unlabelled += 1
            continue
        answer = _mc_answer(apath, i, uid, options, answers[uid], "index")
        col.add([uid], id=uid, question=question, options=tuple(options), answer=answer, task="subset")
    return col.bench


# ------------------------------------------------------------------------------------------------ ActivityNet-QA

ACTIVITYNET_QA_TYPES = ("motion", "spatial_relation", "temporal_relation", "yes_no", "color", "object",
                        "location", "number", "other")  # the dataset README's type ids 0..8


@BENCHMARKS.register("activitynet_qa")
def read_activitynet_qa(annotations: Path, videos: Path) -> Benchmark:
    """ActivityNet-QA: ``<split>_q.json`` (``{video_name, question, question_id}``) and ``<split>_a.json``
    (``{answer, type, question_id}``) from the dataset's ``dataset/`` folder; pass the ``_q.json`` file (the
    answers are found beside it) or the folder (``test`` split). Videos are ``<videos>/v_<video_name>.mp4`` or
    ``<videos>/<video_name>.mp4`` (any usual extension)."""
    qpath = annotations / "test_q.json" if annotations.is_dir() else annotations
    if not qpath.name.endswith("_q.json"):
        raise BenchmarkFormatError(f"{qpath}: ActivityNet-QA questions are the '<split>_q.json' file")
    apath = qpath.with_name(qpath.name[: -len("_q.json")] + "_a.json")
    for p in (qpath, apath):
        if not p.is_file():
            raise FileNotFoundError(f"ActivityNet-QA file not found: {p}")
    answers: dict[str, tuple[str, int]] = {}
    for i, rec in enumerate(_records(apath, _load_json(apath), "ActivityNet-QA answers")):
        qid = str(_get(rec, "question_id", apath, i))
        kind = _get(rec, "type", apath, i, "question_id")
        if not isinstance(kind, int) or not 0 <= kind < len(ACTIVITYNET_QA_TYPES):
            raise BenchmarkFormatError(f"{apath}: record {i} ({qid}): 'type' must be 0..8, got {kind!r}")
        answers[qid] = (str(_get(rec, "answer", apath, i, "question_id")), kind)
    col = _Collector("activitynet_qa", OPEN_ENDED, videos)
    col.bench.files += [str(qpath), str(apath)]
    for i, rec in enumerate(_records(qpath, _load_json(qpath), "ActivityNet-QA questions")):
        qid = str(_get(rec, "question_id", qpath, i))
        name = str(_get(rec, "video_name", qpath, i, "question_id"))
        question = str(_get(rec, "question", qpath, i, "question_id"))
        if qid not in answers:
            col.bench.records += 1
            col.bench.unlabelled += 1
            continue
        answer, kind = answers[qid]
        bare = name.removeprefix("v_")
        col.add([f"v_{bare}", bare], id=qid, question=question, options=None, answer=answer,
                task=ACTIVITYNET_QA_TYPES[kind])
    return col.bench


# ------------------------------------------------------------------------------------------------ MSVD-QA

MSVD_QA_TYPES = ("what", "who", "how", "when", "where")  # question word: the breakdown MSVD-QA reports


def _msvd_mapping(qpath: Path) -> dict[str, str]:
    """``youtube_mapping.txt`` (lines ``<clip name> vid<N>``) beside the annotations or one folder up."""
    for p in (qpath.with_name("youtube_mapping.txt"), qpath.parent.parent / "youtube_mapping.txt"):
        if p.is_file():
            out = {}
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise BenchmarkFormatError(f"{p}: line {n + 1} is not '<clip name> vid<N>': {line!r}")
                out[parts[1]] = parts[0]
            return out
    return {}


@BENCHMARKS.register("msvd_qa")
def read_msvd_qa(annotations: Path, videos: Path) -> Benchmark:
    """MSVD-QA: ``test_qa.json`` (a list of ``{answer, id, question, video_id}``, or the folder holding it).
    Video ``video_id`` N is ``vid<N>``: with ``youtube_mapping.txt`` beside the file (or one folder up) it is
    the clip ``<videos>/<clip name>.avi`` of MSVD's YouTubeClips; else ``<videos>/vid<N>.*`` or ``<videos>/<N>.*``."""
    qpath = annotations / "test_qa.json" if annotations.is_dir() else annotations
    if not qpath.is_file():
        raise FileNotFoundError(f"MSVD-QA annotations not found: {qpath}")
    mapping = _msvd_mapping(qpath)
    col = _Collector("msvd_qa", OPEN_ENDED, videos)
    col.bench.files.append(str(qpath))
    for i, rec in enumerate(_records(qpath, _load_json(qpath), "MSVD-QA questions")):
        rid = str(_get(rec, "id", qpath, i))
        vid = str(_get(rec, "video_id", qpath, i, "id"))
        question = str(_get(rec, "question", qpath, i, "id"))
        answer = str(_get(rec, "answer", qpath, i, "id"))
        words = question.strip().lower().split()
        task = words[0] if words and words[0] in MSVD_QA_TYPES else "other"
        key = vid if vid.startswith("vid") else f"vid{vid}"
        names = ([mapping[key]] if key in mapping else []) + [key, vid]
        col.add(names, id=rid, question=question, options=None, answer=answer, task=task)
    return col.bench
