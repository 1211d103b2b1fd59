"""``aurora bench choice``: multiple choice by likelihood vs by parsing the generated letter: accuracy and seconds per
question of each, side by side in one run, through the very loop ``aurora eval`` runs (:func:`evaluate`).

    aurora bench choice --ckpt CKPT --benchmark mvbench --annotations A --videos V [--grey-videos] [--json P]
    aurora bench choice --ckpt CKPT --shards 'runs/demo/data/test-*.tar' [--limit 100] [--json P]

Choices, each over the same questions with the same predictor (:class:`AuroraPredictor`):

- ``generate``: greedy answer, the option read out of the text (``aurora eval``, the default);
- ``loglik``: the most likely option *letter* (the template's answer around ``A``, ``B``, ...) scored from one
  state after the question (``aurora eval --choice loglik``);
- ``loglik-text``: the most likely option *text* from that one state (what ``aurora bench reuse`` scores; for a
  model trained to answer with words rather than letters, such as the demo).

The questions: a benchmark in any format ``aurora eval`` reads (``--benchmark``; ``--grey-videos`` writes a
flat-grey 8-frame video for each annotated video that is missing, to time the annotation-only fixtures under
tests/fixtures/benchmarks), or the demo's synthetic held-out shards (``--shards``: each video asked its colour,
shape and direction, with the options in the synthetic set's order). ``--repeats`` runs the choices in turn that
many times (ABC, CBA, ...) so load drift hits them alike, after one untimed warm-up question of each path; seconds
are the median per question.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any


CHOICES = ("generate", "loglik", "loglik-text")


class _TextChooser:
    """The predictor with ``choose`` scoring each option's text (not its letter) from one state after the prompt."""

    def __init__(self, pred) -> None:
        self.pred = pred

    def __call__(self, *args, **kwargs):
        return self.pred(*args, **kwargs)

    def choose(self, video_path: str, prompt_text: str, options: list[str], segment=None) -> int:
        import torch

        from aurora.data.video import to_pixels
        from aurora.evaluation.run import sample_frames

        p = self.pred
        frames = sample_frames(video_path, p.num_frames, segment)
        pixels = to_pixels(frames, p.image_size, p.mean, p.std)[None].to(p.device, p.dtype)
        ids = torch.tensor([p.template.build_prompt(p.tokenizer, prompt_text)], device=p.device)
        conts = [p.tokenizer.encode(p.template.answer.format(answer=o)) for o in options]
        scores = p.model.score_continuations(pixels, ids, conts)
        return int(max(range(len(scores)), key=scores.__getitem__))


def write_grey_videos(bench, frames: int = 8, size: int = 32) -> int:
    """A flat-grey mp4 (frame i of value 30 i) for each of ``bench``'s missing videos; the count written."""
    import numpy as np

    from aurora.data.benchmarks import VIDEO_EXTS
    from aurora.data.video import encode_mp4
    from aurora.io import atomic_write_bytes

    arr = np.stack([np.full((size, size, 3), 30 * i, np.uint8) for i in range(frames)])
    data = encode_mp4(arr, fps=4)
    n = 0
    for m in bench.missing_videos:
        path = Path(m["video"])
        if path.suffix.lower() not in VIDEO_EXTS:  # an id (Video-MME, EgoSchema) or a frame folder (MVBench)
            path = path.with_name(path.name + ".mp4")  # the readers look for <id> + each usual extension
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        n += 1
    return n


def shard_benchmark(shards: str, limit: int | None, folder: Path):
    """The synthetic held-out set as a multiple-choice :class:`Benchmark` (videos written under ``folder``)."""
    from aurora.data.benchmarks import MULTIPLE_CHOICE, Benchmark, Sample
    from aurora.evaluation.run import LETTERS
    from aurora.io import atomic_write_bytes
    from aurora.tools.bench_reuse import _samples

    samples = []
    for s in _samples(shards, limit):
        path = folder / f"{s['key'].replace('/', '_')}.mp4"
        atomic_write_bytes(path, s["video"])
        for q in s["questions"]:
            samples.append(Sample(id=f"{s['key']}:{q['category']}", video=str(path), question=q["question"],
                                  options=tuple(q["options"]), answer=LETTERS[q["options"].index(q["answer"])],
                                  task=q["category"]))
    return Benchmark(name="synthetic", kind=MULTIPLE_CHOICE, samples=samples, files=[shards], records=len(samples))


def compare(bench, pred, limit: int | None = None, repeats: int = 1, log=print) -> dict[str, Any]:
    """Each choice's accuracy (overall and per task), answers read, and seconds per question (median over
    ``repeats`` runs, the order of the choices reversed every other run)."""
    from aurora.evaluation.run import evaluate

    runs: dict[str, list] = {c: [] for c in CHOICES}
    first = bench.samples[0]  # warm-up, untimed: the first call of each path pays one-off costs
    evaluate(type(bench)(bench.name, bench.kind, [first], bench.files), pred, limit=1)
    evaluate(type(bench)(bench.name, bench.kind, [first], bench.files), pred, limit=1, choice="loglik")
    for r in range(repeats):
        for c in (CHOICES if r % 2 == 0 else CHOICES[::-1]):
            predictor = _TextChooser(pred) if c == "loglik-text" else pred
            rep = evaluate(bench, predictor, limit=limit, choice="loglik" if c.startswith("loglik") else c)
            runs[c].append(rep)
            n = rep.metrics["samples"]
            log(f"{c} (run {r + 1}/{repeats}): {n} questions, accuracy {rep.metrics.get('accuracy', 0):.3f}, "
                f"{rep.seconds / max(n, 1):.4f} s / question")
    table = {}
    for c, reps in runs.items():
        first = reps[0]
        n = first.metrics["samples"]
        table[c] = {"questions": n, "accuracy": first.metrics.get("accuracy"),
                    "per_task": {t: v["accuracy"] for t, v in first.per_task.items()},
                    "answers_read_as": first.extraction, "errors": len(first.errors),
                    "seconds_per_question": statistics.median(r.seconds / max(n, 1) for r in reps),
                    "seconds_per_question_runs": [r.seconds / max(n, 1) for r in reps],
                    "same_answers_every_run": all([x["prediction"] for x in r.records]
                                                  == [x["prediction"] for x in first.records] for r in reps)}
    return table


def format_table(table: dict[str, Any]) -> str:
    tasks = sorted({t for r in table.values() for t in r["per_task"]})
    base = table["generate"]["seconds_per_question"]
    lines = ["| choice | questions | accuracy | " + " | ".join(tasks) + " | s / question | vs generate | read as |",
             "|---|---|---|" + "---|" * len(tasks) + "---|---|---|"]
    for c, r in table.items():
        read = ", ".join(f"{k} {v}" for k, v in sorted(r["answers_read_as"].items()))
        lines.append(f"| {c} | {r['questions']} | {r['accuracy']:.3f} | "
                     + " | ".join(f"{r['per_task'].get(t, float('nan')):.3f}" for t in tasks)
                     + f" | {r['seconds_per_question']:.4f} | {r['seconds_per_question'] / base:.2f}x | {read} |")
    return "\n".join(lines)


def bench_choice_main(argv: list[str]) -> int:
    """``aurora bench choice``: --choice loglik vs generate, accuracy and seconds per question."""
    from aurora.data.benchmarks import BENCHMARKS

    p = argparse.ArgumentParser(prog="aurora bench choice", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="an Aurora Lightning checkpoint")
    p.add_argument("--config", default=None, help="recipe (default: the config.yaml the training run wrote)")
    p.add_argument("--benchmark", default=None, choices=BENCHMARKS.names(), help="a benchmark reader (with "
                   "--annotations and --videos), as aurora eval")
    p.add_argument("--annotations", default=None, help="the benchmark's annotation file or folder")
    p.add_argument("--videos", default=None, help="the benchmark's video folder")
    p.add_argument("--grey-videos", action="store_true",
                   help="write a flat-grey video for each missing annotated video (to time annotation-only fixtures)")
    p.add_argument("--shards", default=None, help="instead of --benchmark: the synthetic held-out shards")
    p.add_argument("--limit", type=int, default=None, help="questions (--benchmark) or videos (--shards)")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: the recipe's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation limit (default: the model's)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each choice, in alternating order")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    if (args.benchmark is None) == (args.shards is None):
        p.error("give --benchmark (with --annotations and --videos) or --shards")
    if args.benchmark and not (args.annotations and args.videos):
        p.error("--benchmark needs --annotations and --videos")
    for name in ("limit", "frames", "max_new_tokens", "repeats", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    import torch

    from aurora.checkpoint import CheckpointError
    from aurora.data.benchmarks import BenchmarkFormatError, MULTIPLE_CHOICE, read_benchmark
    from aurora.evaluation.run import AuroraPredictor
    from aurora.infer.runconfig import RecipeError

    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="aurora-bench-choice-") as tmp:
        try:
            written = 0
            if args.benchmark:
                if args.grey_videos:
                    Path(args.videos).mkdir(parents=True, exist_ok=True)
                bench = read_benchmark(args.benchmark, args.annotations, args.videos)
                if args.grey_videos and bench.missing_videos:
                    written = write_grey_videos(bench)
                    bench = read_benchmark(args.benchmark, args.annotations, args.videos)
                limit = args.limit
            else:
                bench, limit = shard_benchmark(args.shards, args.limit, Path(tmp)), None
            if bench.kind != MULTIPLE_CHOICE:
                raise BenchmarkFormatError(f"{bench.name} is not multiple choice: nothing to choose")
            if not bench.samples:
                raise BenchmarkFormatError(f"{bench.name}: no question has its video ({bench.summary()})")
            log(bench.summary() + (f" ({written} grey videos written)" if written else ""))
            pred = AuroraPredictor(args.ckpt, args.config, args.frames, args.max_new_tokens)
        except (BenchmarkFormatError, CheckpointError, RecipeError, FileNotFoundError, ValueError) as e:
            print(f"aurora bench choice: error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        table = compare(bench, pred, limit, args.repeats, log)
    payload = {"ckpt": str(args.ckpt), "benchmark": bench.name, "source": args.shards or args.annotations,
               "grey_videos_written": written, "frames": pred.num_frames, "max_new_tokens": pred.max_new_tokens,
               "threads": torch.get_num_threads(), "repeats": args.repeats, "table": table}
    print(format_table(table))
    if args.json:
        from aurora.io import write_json

        write_json(args.json, payload)
        print(f"records written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(bench_choice_main(sys.argv[1:]))
