"""``aurora ask``: one question about one video, or the question of every sample of a shard set, answered by the
streaming engine (:mod:`aurora.infer.engine`, whose docstring says how a video is read and what a state is)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from aurora.data.prompt import question_and_answer
from aurora.data.video import VideoDecodeError
from aurora.infer.engine import Generation, StreamEngine, StreamError, engine_from_checkpoint, parse_moment
from aurora.io import atomic_open

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ many videos


def count_samples(urls: Sequence[str]) -> int | None:
    """Samples (keys with an ``.mp4``) in local tar shards, read from their headers only; None when a shard is not
    a local tar file (the total is then unknown)."""
    import tarfile

    total = 0
    for url in urls:
        if "://" in str(url) or not Path(url).is_file():
            return None
        try:
            with tarfile.open(url) as tar:
                total += len({m.name.rsplit(".", 1)[0] for m in tar if m.isfile() and m.name.endswith(".mp4")})
        except (tarfile.TarError, OSError):
            return None
    return total


def accuracy_text(correct: int, answered: int) -> str:
    """The running accuracy on the ``--shards`` bar: ``acc 0.750 (3/4)``; ``acc -`` before the first answer."""
    return f"acc {correct / answered:.3f} ({correct}/{answered})" if answered else "acc -"


class SampleBar:
    """One tqdm bar over a shard set's samples (answered or skipped) with the running accuracy, in place of the
    engine's bar per video (turned off meanwhile, restored at the end)."""

    def __init__(self, engine: Any, total: int | None, enabled: bool) -> None:
        from tqdm import tqdm

        self.engine, self.per_video = engine, getattr(engine, "progress", False)
        self.bar = tqdm(total=total, unit="sample", desc="answering", disable=not enabled, file=sys.stderr)

    def __enter__(self) -> "SampleBar":
        if self.per_video:
            self.engine.progress = False
        return self

    def show(self, read: int, correct: int, answered: int) -> None:
        self.bar.set_postfix_str(accuracy_text(correct, answered), refresh=False)
        self.bar.update(read - self.bar.n)

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()
        if self.per_video:
            self.engine.progress = self.per_video


def predict_shards(engine: StreamEngine, shards: str | Sequence[str], out: str | os.PathLike,
                   frames: int | None = None, fps: float | None = None, gen: Generation | None = None,
                   limit: int | None = None, max_frames: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Answer the question of every sample of a WebDataset shard set (``KEY.mp4`` + ``KEY.json``) with the
    streaming engine; JSON lines ``{id, question, answer, prediction}`` written to ``out`` atomically. A
    sample that cannot be read (bad JSON, undecodable video) is skipped, counted by reason and logged. An
    annotation's ``start`` / ``end`` seconds narrow the frames read to that window.

    ``progress``: one bar over the samples (stderr) with the running accuracy: the prediction against the
    annotation's answer, judged as ``aurora test`` judges it (:func:`aurora.evaluation.options.is_correct`). The
    summary holds that accuracy too."""
    from aurora.data.shards import VideoQADataset, parse_annotation
    from aurora.evaluation.options import is_correct

    ds = VideoQADataset(shards, tokenizer=engine.tokenizer, template=engine.template)
    written = correct = 0
    total = count_samples(ds.urls) if progress else None
    total = min(total, limit) if total is not None and limit is not None else total
    with atomic_open(out) as f, SampleBar(engine, total, progress) as bar:
        for raw in ds.raw_samples():
            bar.show(written + sum(ds.skipped.values()), correct, written)
            key = raw.get("__key__", "?")
            try:
                if "mp4" not in raw or "json" not in raw:
                    raise KeyError(f"missing field .{'mp4' if 'mp4' not in raw else 'json'}")
                meta = parse_annotation(raw["json"])
                question, answer = question_and_answer(meta["conversations"])
                window = {k: meta.get(k) for k in ("start", "end")}
                if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))
                       for v in window.values()):
                    raise TypeError(f"start / end must be seconds, got {window}")
            except (ValueError, KeyError, TypeError) as e:  # AnnotationError, UnicodeError: ValueErrors
                ds._skip("bad annotation", key, f"{type(e).__name__}: {e}")
                continue
            try:
                pred = engine.ask(raw["mp4"], question, frames=frames, fps=fps, gen=gen, max_frames=max_frames,
                                  **window)
            except VideoDecodeError as e:
                ds._skip("undecodable video", key, str(e))
                continue
            except (StreamError, ValueError) as e:  # one sample the engine refused must not lose the others
                ds._skip("unanswerable sample", key, f"{type(e).__name__}: {e}")
                continue
            f.write(json.dumps({"id": key, "question": question, "answer": answer,
                                "prediction": pred.text}) + "\n")
            written += 1
            options = meta.get("options")
            correct += bool(is_correct(pred.text, answer, options if isinstance(options, list) else None))
            if limit is not None and written >= limit:
                break
        bar.show(written + sum(ds.skipped.values()), correct, written)
    return {"written": written, "skipped": dict(ds.skipped), "out": str(Path(out)),
            "accuracy": correct / written if written else None}


# ------------------------------------------------------------------------------------------------ live input


def ask_live(engine: StreamEngine, args: argparse.Namespace, gen: Generation, context: str | None) -> int:
    """``--video SRC`` read as a live stream (sampled by time), then ``--question`` answered from the state at its
    end; or, with ``--interactive``, the stream read in a background thread while every line typed on stdin is
    answered from the state as of that moment (:class:`aurora.infer.live.LiveReader`), until stdin ends."""
    from aurora.data.stream import LiveFrames, is_live_url
    from aurora.infer.live import LiveReader

    frames = LiveFrames(args.video, fps=args.fps or 1.0, short_side=engine.image_size,
                        live_timeout=args.live_timeout, max_frames=args.max_frames, until=args.end,
                        follow=args.live or args.interactive or is_live_url(args.video))
    reader = LiveReader(engine, frames, context)
    print(f"reading {args.video} live at {frames.fps:g} frames per second (ends after {args.live_timeout:g} s "
          "without new data)", file=sys.stderr)

    def record(question: str, vs, ans, seconds: float) -> str:
        if not args.json:
            return ans.text
        return json.dumps({"question": question, "answer": ans.text, "finish": ans.finish, "tokens": ans.tokens,
                           "frames": vs.frames, "positions": vs.positions, "stream_time": vs.meta["stream_time"],
                           "context": vs.context, "seconds": seconds})

    if not args.interactive:
        reader.run()
        t0 = time.perf_counter()
        vs = reader.current()
        ans = engine.answer(vs, args.question, gen)
        print(record(args.question, vs, ans, time.perf_counter() - t0))
    else:
        reader.start()
        asked = 0
        for line in sys.stdin:
            question = line.strip()
            if not question:
                continue
            if reader.error is not None:
                raise reader.error
            t0 = time.perf_counter()
            while reader.frames_read == 0 and not reader.done.is_set() and time.perf_counter() - t0 < args.live_timeout:
                time.sleep(0.02)  # the first frames: the stream may not have started yet
            try:
                vs = reader.current()
            except StreamError as e:  # nothing read yet (no lead, no frame): this question only
                print(f"aurora ask: {e}", file=sys.stderr)
                continue
            ans = engine.answer(vs, question, gen)
            print(record(question, vs, ans, time.perf_counter() - t0), flush=True)
            asked += 1
        reader.stop()
        if reader.error is not None:
            raise reader.error
        vs = reader.current()
        print(f"{asked} questions answered", file=sys.stderr)
    if args.save_state:
        print(f"state written to {engine.save_state(vs, args.save_state)}", file=sys.stderr)
    skipped = f", skipped {dict(frames.skipped)}" if frames.skipped else ""
    print(f"{vs.frames} frames ({frames.decoded} decoded, up to {frames.last_time or 0:.2f} s of stream), "
          f"{vs.positions} positions read{skipped}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------ command


def training_sampling(data: dict[str, Any], max_frames: int | None = None
                      ) -> tuple[int | None, float | None, int | None]:
    """(frames, fps, max_frames) the model was trained with, from :func:`inference_settings`' dict; an explicit
    ``max_frames`` wins over the saved one."""
    if data.get("fps"):
        return None, float(data["fps"]), max_frames or data.get("max_frames")
    if data.get("num_frames") is None:  # no saved settings (only with --load-state, which holds its own)
        return None, None, max_frames
    return int(data["num_frames"]), None, max_frames


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aurora ask", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint written by `aurora fit`")
    p.add_argument("--config", default=None,
                   help="recipe or run config for the preprocessing and template (default: the run's config.yaml "
                        "beside the checkpoint, if any)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--video", help="a video file (.mp4 or anything PyAV reads)")
    src.add_argument("--shards", help="WebDataset shards (directory, glob, brace pattern): answer every sample")
    p.add_argument("--question", help="the question (required with --video / --load-state)")
    p.add_argument("--lead", choices=("question", "generic", "none"), default=None,
                   help="what is read BEFORE the video: the question (the sandwich), the template's generic "
                        "instruction, or nothing (default: what the model was trained with; the sandwich for a "
                        "mix). A state read with generic or none serves any question")
    p.add_argument("--context", default=None,
                   help="a text read BEFORE the video instead (overrides --lead); a saved state holds it")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--fps", type=float, default=None, help="frames per second of video to read")
    when.add_argument("--frames", type=int, default=None, help="frames spread uniformly over the video")
    p.add_argument("--max-frames", type=int, default=None,
                   help="with --fps: at most this many frames (spread uniformly when the video is longer)")
    p.add_argument("--start", type=float, default=None, help="read the video from this second on")
    p.add_argument("--end", type=float, default=None, help="read the video up to this second")
    p.add_argument("--chunk-frames", type=int, default=16, help="frames decoded, encoded and read per step")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length limit (default: the checkpoint's max_new_tokens, else 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the smallest set of tokens whose probability reaches this (1.0: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--stop", action="append", default=None,
                   help="stop string (repeatable; default: the template's, '\\n\\n'); --stop '' for none")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--save-state", default=None,
                       help="write the state after context + video here (a folder with --snapshot-every)")
    state.add_argument("--load-state", default=None,
                       help="answer from a saved state instead of reading a video (a snapshot folder with --at)")
    p.add_argument("--snapshot-every", type=float, default=None, metavar="SECONDS",
                   help="with --save-state DIR: save the state as of every SECONDS of video (each constant-size)")
    p.add_argument("--at", default=None, metavar="HH:MM:SS",
                   help="answer as of this moment of the video: with --video alone, read up to it; with "
                        "--load-state DIR --video V, start from the nearest snapshot before it and read only the "
                        "video between")
    p.add_argument("--live", action="store_true",
                   help="read --video as a live stream, sampled by time (--fps): a file still being written is "
                        "followed until no new data for --live-timeout s (implied for pipe:, -, and URLs)")
    p.add_argument("--live-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="a live source has ended after this many seconds without new data (default: %(default)s)")
    p.add_argument("--interactive", action="store_true",
                   help="read the stream continuously and answer every line typed on stdin from the state as of "
                        "that moment, until stdin ends (implies --live)")
    p.add_argument("--out", default=None, help="predictions JSONL (with --shards)")
    p.add_argument("--limit", type=int, default=None, help="with --shards: at most this many samples")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="weights and activations dtype (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the answer as a JSON record with details")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _is_live_url(source: str) -> bool:
    from aurora.data.stream import is_live_url

    return is_live_url(source)


def _check_live_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What a live source allows: sampling by time, no length-based option, questions from stdin or --question."""
    if not args.video:
        parser.error("--live / --interactive read --video SRC (a growing file, pipe:, or a URL)")
    if args.frames is not None:
        parser.error("a live stream's length is unknown: sample it by time with --fps, not --frames")
    for flag, value in (("--load-state", args.load_state), ("--snapshot-every", args.snapshot_every),
                        ("--at", args.at), ("--start", args.start)):
        if value is not None:
            parser.error(f"{flag} does not work with a live source")
    if args.live_timeout <= 0:
        parser.error(f"--live-timeout must be > 0 seconds, got {args.live_timeout}")
    if args.interactive:
        if args.question:
            parser.error("--interactive takes its questions from stdin, one a line: drop --question")
        if args.video in ("-", "pipe:", "pipe:0"):
            parser.error("--interactive reads questions on stdin, so the video cannot come from it: give a file, "
                         "a URL or pipe:N (another file descriptor)")
        if args.lead == "question":
            parser.error("--interactive answers questions typed later, which cannot be read before the video: "
                         "use --lead generic or none (the default is generic)")
    elif not args.question:
        parser.error("--question is required (or --interactive)")


def ask_main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.shards:
        if not args.out:
            parser.error("--shards needs --out PREDICTIONS.jsonl")
        if args.save_state or args.load_state:
            parser.error("--save-state / --load-state work with one --video")
    elif args.interactive or args.live or (args.video and _is_live_url(args.video)):
        _check_live_args(parser, args)
    else:
        if not args.question:
            parser.error("--question is required")
        if not args.video and not args.load_state:
            parser.error("give --video (or --load-state, or --shards)")
        if args.video and args.load_state and args.at is None:
            parser.error("--load-state answers without reading a video: drop --video (or give --at with a "
                         "snapshot folder)")
    if args.snapshot_every is not None and (not args.save_state or args.snapshot_every <= 0):
        parser.error("--snapshot-every SECONDS (> 0) needs --save-state DIR")
    at = None
    if args.at is not None:
        try:
            at = parse_moment(args.at)
        except ValueError as e:
            parser.error(str(e))
        if args.load_state and not args.video:
            parser.error("--at with --load-state DIR reads the video after the snapshot: give --video too")
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    if args.fps is not None and args.fps <= 0:
        parser.error(f"--fps must be > 0, got {args.fps}")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.start is not None and args.end is not None and args.end <= args.start:
        parser.error(f"--end ({args.end}) must be after --start ({args.start})")
    if args.chunk_frames < 1:
        parser.error(f"--chunk-frames must be >= 1, got {args.chunk_frames}")
    from aurora.checkpoint import CheckpointError

    try:
        explicit = args.frames is not None or args.fps is not None or bool(args.load_state)
        engine, info = engine_from_checkpoint(args.ckpt, args.config, args.chunk_frames, args.device, args.dtype,
                                              progress=not args.no_progress, required=not explicit)
        hp, data = info["hparams"], info["data"]
        stop = ([s for s in args.stop if s] if args.stop is not None
                else [engine.template.stop] if engine.template.stop else [])
        gen = Generation(max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None
                         else int(hp.get("max_new_tokens") or 64),
                         temperature=args.temperature, top_p=args.top_p, seed=args.seed, stop=tuple(stop))
        frames, fps, max_frames = args.frames, args.fps, args.max_frames
        live = bool(args.live or args.interactive or _is_live_url(args.video or ""))
        if live:  # a live stream has no length: by time, 1 frame per second unless --fps says otherwise
            fps = args.fps = fps or 1.0
        if frames is None and fps is None:  # the training sampling (inference_settings: never a silent default)
            frames, fps, max_frames = training_sampling(data, max_frames)
        how = ("a live stream by time" if live else "a saved state" if args.load_state else
               f"{frames} frames" if frames is not None else f"{fps:g} frames per second")
        print(f"aurora ask: {args.ckpt} ({hp['rnn'].get('name')}), inference settings from "
              f"{info['config']}, reading {how}, chunks of {args.chunk_frames} frames on "
              f"{engine.device}", file=sys.stderr)
        t0 = time.perf_counter()
        if args.shards:
            summary = predict_shards(engine, args.shards, args.out, frames, fps, gen, args.limit, max_frames,
                                     progress=not args.no_progress)
            print(json.dumps(summary))
            return 0
        if args.interactive and args.context is None and args.lead in (None, "question"):
            args.lead = "generic"  # questions come later: the state is read with the generic instruction
        context = args.context if args.context is not None else engine.lead_context(args.question, args.lead)
        if live:
            return ask_live(engine, args, gen, context)
        if args.load_state and at is not None:  # a moment: the nearest snapshot, then the video up to the moment
            snap = engine.load_snapshot(args.load_state, at)
            sampling = snap.meta.get("sampling") or {}
            vs = engine.read_video(args.video, None, sampling.get("frames"), sampling.get("fps"),
                                   max_frames=sampling.get("max_frames"), start=sampling.get("start"),
                                   end=sampling.get("end"), resume=snap, until=at)
            print(f"from the snapshot at {snap.meta['until']:g} s: read {vs.frames - snap.frames} more frames up "
                  f"to {at:g} s", file=sys.stderr)
        elif args.load_state:
            vs = engine.load_state(args.load_state)
            if args.context is not None and args.context != vs.context:
                raise StreamError(f"the state was read with the context {vs.context!r}, not {args.context!r}")
        elif args.snapshot_every is not None:
            vs = engine.read_video(args.video, context, frames, fps, max_frames=max_frames, start=args.start,
                                   end=args.end, snapshot_every=args.snapshot_every,
                                   on_snapshot=engine.snapshot_writer(args.save_state), until=at)
            print(f"snapshots every {args.snapshot_every:g} s written to {args.save_state}", file=sys.stderr)
        else:
            vs = engine.read_video(args.video, context, frames, fps, max_frames=max_frames, start=args.start,
                                   end=args.end, until=at)
            if args.save_state:
                print(f"state written to {engine.save_state(vs, args.save_state)}", file=sys.stderr)
        ans = engine.answer(vs, args.question, gen)
    except (StreamError, CheckpointError, VideoDecodeError, FileNotFoundError) as e:
        print(f"aurora ask: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # settings the engine refused (sampling, dtype ...)
        print(f"aurora ask: error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"question": args.question, "answer": ans.text, "finish": ans.finish,
                          "tokens": ans.tokens, "frames": vs.frames, "positions": vs.positions,
                          "context": vs.context, "seconds": seconds}))
    else:
        print(ans.text)
    print(f"{vs.frames} frames, {vs.positions} positions read before the question; {len(ans.tokens)} tokens "
          f"generated ({ans.finish}) in {seconds:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(ask_main(sys.argv[1:]))
