"""``aurora bench reuse``: one read of a video, many questions: what answering from a reused state costs in accuracy,
and what it saves in time.

    aurora bench reuse --ckpt runs/demo/checkpoints/last.ckpt [--shards 'runs/demo/data/test-*.tar'] [--limit 300]
                       [--questions 1,10,100] [--cost-videos 3] [--json P.json --plot P.png]

Accuracy, on a synthetic held-out set (each video's annotation knows its colour, shape and direction, so every
video is asked all three questions):

- ``scratch``: every question read from scratch with the prompt the model was trained with (the sandwich: the
  question before and after the video; for a model trained with a mix of leads, the sandwich too);
- ``reuse:generic``: ONE state per video, read with the template's generic instruction before the video, answers
  all three questions (``aurora ask --lead generic --save-state``, then ``--load-state``);
- ``reuse:none``: one state per video read with nothing before the video.

Each mode is scored twice: the generated text read out by the one option rule (``generate``), and the most likely
option scored from one fork of the state per option (``loglik``, as ``aurora eval --choice loglik``).

Cost: for ``--cost-videos`` videos and k questions each (k in ``--questions``, the three questions in turn),
seconds per question when every question re-reads the video vs when one state serves them all (greedy answers,
stop at the template's stop string), on this machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from aurora.io import pyplot, save_figure
from aurora.tools.measure import write_outputs

MODES = ("scratch", "reuse:generic", "reuse:none")


def _samples(shards: str, limit: int | None) -> list[dict[str, Any]]:
    """(key, video bytes, the three questions with answers and options) of the first ``limit`` videos."""
    from aurora.data.shards import VideoQADataset
    from aurora.data.synthetic import question_for

    out = []
    for raw in VideoQADataset(shards).raw_samples():
        meta = json.loads(raw["json"])
        attrs = meta.get("meta") or {}
        if not {"color", "shape", "direction"} <= set(attrs):
            raise ValueError(f"sample {raw.get('__key__')} has no color/shape/direction meta: the reuse benchmark "
                             "needs the synthetic set (aurora data synthetic)")
        qs = []
        for cat in ("color", "shape", "motion"):
            q, a, opts = question_for(cat, attrs["color"], attrs["shape"], attrs["direction"])
            qs.append({"category": cat, "question": q, "answer": a, "options": opts})
        out.append({"key": raw["__key__"], "video": raw["mp4"], "questions": qs})
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"no samples in {shards}")
    return out


def accuracy(engine, samples: list[dict[str, Any]], gen, frames: int | None, log=print) -> dict[str, Any]:
    from aurora.evaluation.options import is_correct

    right: dict[tuple[str, str, str], int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    for n, s in enumerate(samples, 1):
        for mode in MODES:
            t0 = time.perf_counter()
            shared = None if mode == "scratch" else engine.read_video(
                s["video"], engine.lead_context("", mode.split(":")[1]), frames)
            for q in s["questions"]:
                vs = shared if shared is not None else engine.read_video(s["video"], q["question"], frames)
                text = engine.answer(vs, q["question"], gen).text
                scores = engine.option_scores(vs, q["question"], q["options"])
                picked = q["options"][max(range(len(scores)), key=scores.__getitem__)]
                right[(mode, "generate", q["category"])] += is_correct(text, q["answer"], q["options"])
                right[(mode, "loglik", q["category"])] += picked == q["answer"]
                total[q["category"]] += mode == "scratch"
            seconds[mode] += time.perf_counter() - t0
        if n % 50 == 0 or n == len(samples):
            log(f"[bench reuse] {n}/{len(samples)} videos")
    cats = sorted(total)
    table = {}
    for mode in MODES:
        for how in ("generate", "loglik"):
            per = {c: right[(mode, how, c)] / total[c] for c in cats}
            table[f"{mode}/{how}"] = {"accuracy": sum(right[(mode, how, c)] for c in cats) / sum(total.values()),
                                      "per_category": per, "seconds": round(seconds[mode], 2)}
    return {"videos": len(samples), "questions": sum(total.values()), "table": table}


def cost(engine, samples: list[dict[str, Any]], gen, frames: int | None, counts: list[int]) -> list[dict[str, Any]]:
    """Seconds per question: re-reading the video for every question vs one state for all of them."""
    rows = []
    for k in counts:
        for how in ("re-read", "reuse"):
            t0 = time.perf_counter()
            for s in samples:
                qs = [s["questions"][i % 3]["question"] for i in range(k)]
                if how == "reuse":
                    vs = engine.read_video(s["video"], engine.lead_context("", "generic"), frames)
                    for q in qs:
                        engine.answer(vs, q, gen)
                else:
                    for q in qs:
                        engine.answer(engine.read_video(s["video"], q, frames), q, gen)
            spent = time.perf_counter() - t0
            rows.append({"questions": k, "how": how, "videos": len(samples),
                         "seconds_per_question": spent / (k * len(samples))})
    return rows


def format_report(acc: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    cats = sorted(next(iter(acc["table"].values()))["per_category"])
    lines = [f"{acc['videos']} videos, {acc['questions']} questions per mode",
             "| mode | choice | accuracy | " + " | ".join(cats) + " |", "|---|---|---|" + "---|" * len(cats)]
    for name, r in acc["table"].items():
        mode, how = name.split("/")
        lines.append(f"| {mode} | {how} | {r['accuracy']:.3f} | "
                     + " | ".join(f"{r['per_category'][c]:.3f}" for c in cats) + " |")
    if rows:
        lines += ["", "| questions per video | re-read: s / question | reuse: s / question | speed-up |",
                  "|---|---|---|---|"]
        for k in sorted({r["questions"] for r in rows}):
            a = next(r for r in rows if r["questions"] == k and r["how"] == "re-read")["seconds_per_question"]
            b = next(r for r in rows if r["questions"] == k and r["how"] == "reuse")["seconds_per_question"]
            lines.append(f"| {k} | {a:.4f} | {b:.4f} | {a / b:.1f}x |")
    return "\n".join(lines)


def write_plot(payload: dict[str, Any], path: str | Path) -> None:
    plt = pyplot("aurora bench reuse")
    acc, rows = payload["accuracy"], payload["cost"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(acc["table"])
    cats = ["overall", *sorted(next(iter(acc["table"].values()))["per_category"])]
    width = 0.8 / len(cats)
    for j, c in enumerate(cats):
        ys = [acc["table"][n]["accuracy"] if c == "overall" else acc["table"][n]["per_category"][c] for n in names]
        xs = [i + (j - (len(cats) - 1) / 2) * width for i in range(len(names))]
        bars = a1.bar(xs, ys, width, label=c)
        a1.bar_label(bars, fmt="%.2f", fontsize=6)
    a1.set_xticks(range(len(names)))
    a1.set_xticklabels([n.replace("/", "\n") for n in names], fontsize=7)
    a1.set_ylim(0, 1.1)
    a1.set_ylabel("held-out accuracy")
    a1.set_title("answering from a reused state", fontsize=10)
    a1.legend(fontsize=7, ncol=len(cats))
    for how, style in (("re-read", "o-"), ("reuse", "s-")):
        pts = sorted((r["questions"], r["seconds_per_question"]) for r in rows if r["how"] == how)
        if pts:
            a2.plot(*zip(*pts), style, label=how)
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("questions per video")
    a2.set_ylabel("seconds per question")
    a2.set_title("cost per question", fontsize=10)
    a2.legend(fontsize=8)
    a2.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def bench_reuse_main(argv: list[str]) -> int:
    """``aurora bench reuse``: accuracy and cost of answering many questions from one state of a video."""
    p = argparse.ArgumentParser(prog="aurora bench reuse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a checkpoint written by aurora fit (the demo's, say)")
    p.add_argument("--config", default=None, help="recipe or run config (default: the run's config.yaml)")
    p.add_argument("--shards", default=None,
                   help="synthetic held-out shards (default: the test split of the run config's data_dir)")
    p.add_argument("--limit", type=int, default=300, help="videos for the accuracy (default: %(default)s)")
    p.add_argument("--questions", type=_ints, default=[1, 10, 100], help="questions per video for the cost")
    p.add_argument("--cost-videos", type=int, default=3, help="videos for the cost (0: skip it)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--plot", default=None, help="write a PNG here")
    args = p.parse_args(argv)
    if args.limit < 1 or args.cost_videos < 0:
        p.error("--limit must be >= 1 and --cost-videos >= 0")
    import torch

    from aurora.checkpoint import CheckpointError
    from aurora.infer.engine import Generation, engine_from_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        engine, info = engine_from_checkpoint(args.ckpt, args.config)
        data = info["data"]
        shards = args.shards or (str(Path(data["data_dir"]) / "test-*.tar") if data.get("data_dir") else None)
        if shards is None:
            p.error("give --shards (the run config names no data_dir)")
        samples = _samples(shards, args.limit)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"aurora bench reuse: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    frames = int(data["num_frames"]) if data.get("num_frames") else None
    gen = Generation(max_new_tokens=int(info["hparams"].get("max_new_tokens") or 16),
                     stop=(engine.template.stop,) if engine.template.stop else ())
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    acc = accuracy(engine, samples, gen, frames, log)
    rows = cost(engine, samples[: args.cost_videos], gen, frames, args.questions) if args.cost_videos else []
    payload = {"ckpt": str(args.ckpt), "shards": shards, "frames": frames, "threads": torch.get_num_threads(),
               "template": {"lead": engine.template.lead, "generic": engine.template.generic},
               "accuracy": acc, "cost": rows}
    print(format_report(acc, rows))
    write_outputs(args, payload, payload, write_plot)
    return 0


if __name__ == "__main__":
    sys.exit(bench_reuse_main(sys.argv[1:]))
