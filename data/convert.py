"""``aurora data convert``: LLaVA-style annotations + a video folder -> WebDataset shards the reader streams.

Input: a JSON list (or JSONL) of records ``{"id", "video": "relative/path.mp4", "conversations": [{"from": "human",
"value": "<video>\\n..."}, {"from": "gpt", "value": ...}, ...]}`` (``"image"`` works like ``"video"``: an image is a
one-frame video). Output: ``{split}-{i:05d}.tar`` shards of KEY.mp4 + KEY.json (the record without its path, the
layout of :func:`aurora.data.synthetic.write_shards`) and ``manifest.json``.

Videos: an .mp4 that decodes keeps its original bytes; an image becomes a one-frame H.264 mp4; any other
container is remuxed into mp4 without re-encoding when its codec fits mp4, else re-encoded to H.264 (video
stream only: the model reads no audio). With ``fps`` and / or ``short_side`` (``--fps F --short-side S``) every
video is instead pre-sampled at F frames per second and re-encoded to H.264, resized in FFmpeg's scaler to short
side S (:func:`resample_mp4`): compact shards whose settings the manifest records.

Shards are planned before any work, from the annotation order and the source file sizes, so re-runs agree on
which sample goes to which shard. Each shard is written by one process to ``NAME.tmp`` and renamed when complete,
with its stats in ``.convert/NAME.json``; a re-run keeps every shard whose stats match its plan and redoes the
rest (missing, partial, or planned differently).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import random
import re
from collections import Counter
from fractions import Fraction
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import av
import numpy as np
import webdataset as wds

from aurora.data.prompt import AnnotationError, check_text, question_and_answer
from aurora.data.reader import FrameReader, first_video_stream
from aurora.data.video import VideoDecodeError, encode_mp4
from aurora.io import write_json

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MP4_EXTS = (".mp4", ".m4v")
VERIFY = ("first", "all")
STATS_DIR = ".convert"
DEFAULT_MAX_VIDEO_BYTES = 8 * 2**30  # a source file past this is skipped (a symlink to /dev/zero has no end)
DEFAULT_CRF = 23  # libx264's own default quality for re-encoded (--fps / --short-side) videos
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str | int) -> int:
    """``"1GB"`` -> 1_000_000_000, ``"512MiB"`` -> 536_870_912, ``"1.5G"``, ``"800k"``, ``"4096"`` (bytes).
    K/M/G/T are powers of 1000, Ki/Mi/Gi/Ti powers of 1024; the trailing B is optional."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?)?b?\s*", str(text).lower())
    if not m:
        raise ValueError(f"cannot read size {text!r}: give a number with an optional unit, e.g. 1GB, 500MiB, 4096")
    size = int(float(m.group(1)) * _UNITS[m.group(2) or ""])
    if size < 1:
        raise ValueError(f"size must be at least one byte, got {text!r}")
    return size


# -- videos ------------------------------------------------------------------------------------------------
def check_decodes(data: bytes, verify: str = "first") -> None:
    """Raise VideoDecodeError unless ``data`` holds a video stream whose first frame (``verify="all"``: every
    frame, streamed, without holding them) decodes."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            first_video_stream(container)
            count = 0
            for _ in container.decode(video=0):
                count += 1
                if verify == "first":
                    break
    except VideoDecodeError:
        raise
    except Exception as e:  # FFmpeg's many error types for broken input
        raise VideoDecodeError(f"cannot decode video ({type(e).__name__}: {e})") from e
    if count == 0:
        raise VideoDecodeError("video has no decodable frames")


def remux_mp4(data: bytes) -> bytes:
    """The first video stream's packets copied into an mp4 container (no re-encoding); raises when the codec
    does not fit mp4."""
    out = io.BytesIO()
    with av.open(io.BytesIO(data), mode="r") as src:
        if not src.streams.video:
            raise VideoDecodeError("no video stream")
        stream = src.streams.video[0]
        with av.open(out, mode="w", format="mp4") as dst:
            target = dst.add_stream_from_template(stream)
            for packet in src.demux(stream):
                if packet.dts is None:  # the demuxer's flush packet
                    continue
                packet.stream = target
                dst.mux(packet)
    return out.getvalue()


def _encode_h264(frames: Iterator[np.ndarray], rate: Fraction, crf: int) -> bytes:
    """RGB frames -> H.264 mp4 bytes (``preset=veryfast``, yuv420p, video only), one frame per tick of ``rate``,
    encoded as they come (one held at a time); odd sizes lose their last row / column (yuv420p). Any failure is a
    :class:`VideoDecodeError` naming it."""
    out = io.BytesIO()
    try:
        with av.open(out, mode="w", format="mp4") as dst:
            target = None
            for k, rgb in enumerate(frames):
                rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]
                if target is None:
                    if rgb.size == 0:
                        raise VideoDecodeError(f"frames too small for H.264: {rgb.shape[1]}x{rgb.shape[0]}")
                    target = dst.add_stream("libx264", rate=rate)
                    target.height, target.width = rgb.shape[:2]
                    target.pix_fmt, target.options = "yuv420p", {"crf": str(crf), "preset": "veryfast"}
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts, frame.time_base = k, 1 / rate
                for packet in target.encode(frame):
                    dst.mux(packet)
            if target is None:
                raise VideoDecodeError("video has no decodable frames")
            for packet in target.encode():
                dst.mux(packet)
    except VideoDecodeError:
        raise
    except Exception as e:  # FFmpeg's many error types for broken input
        raise VideoDecodeError(f"cannot re-encode video ({type(e).__name__}: {e})") from e
    return out.getvalue()


def transcode_mp4(data: bytes, crf: int = 18) -> bytes:
    """Re-encode the first video stream to H.264 mp4 frame by frame (long videos never sit in memory); the
    frames are numbered at the source's average rate and odd sizes lose their last row/column (yuv420p)."""
    try:
        with av.open(io.BytesIO(data), mode="r") as src:
            stream = first_video_stream(src)
            rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
            return _encode_h264((f.to_ndarray(format="rgb24") for f in src.decode(stream)), rate, crf)
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(f"cannot re-encode video ({type(e).__name__}: {e})") from e


def resample_mp4(source: str | Path | bytes, fps: float | None = None, short_side: int | None = None,
                 crf: int = DEFAULT_CRF) -> bytes:
    """Re-encode a video to H.264 mp4 (:func:`_encode_h264`), pre-sampled at ``fps`` frames per second (the
    frame on screen at each sampling time, :func:`aurora.data.reader.choose_indices`; None: every frame,
    renumbered at the average rate) and resized inside FFmpeg's scaler so its short side is at most
    ``short_side`` (:class:`~aurora.data.reader.FrameReader`: the full-size RGB frame never exists). Frames are
    streamed: one is held at a time, whatever the video's length. The output runs at ``fps`` (or the source's
    average rate) with one frame per tick, so it lasts as long as the source."""
    try:
        with FrameReader(source, short_side=short_side) as reader:
            if fps is not None:
                indices: Any = reader.indices(fps=fps)
                rate = Fraction(fps).limit_denominator(1001)
            else:
                indices = range(len(reader))
                rate = Fraction(reader.info.fps).limit_denominator(1001) if reader.info.fps > 0 else Fraction(25)
            return _encode_h264((rgb for _, rgb in reader.iter_frames(indices)), rate, crf)
    except VideoDecodeError:
        raise
    except Exception as e:  # FFmpeg's many error types for broken input
        raise VideoDecodeError(f"cannot re-encode video ({type(e).__name__}: {e})") from e


def image_to_mp4(data: bytes, short_side: int | None = None) -> bytes:
    """A one-frame H.264 mp4 of an image (decoded by PyAV, resized in its scaler to ``short_side`` when given;
    odd sizes lose their last row/column)."""
    with FrameReader(data, short_side=short_side) as reader:  # the first frame only (an animated image: its first)
        frame = reader.read([0]).numpy()
    h, w = frame.shape[1] // 2 * 2, frame.shape[2] // 2 * 2
    if h == 0 or w == 0:
        raise VideoDecodeError(f"image too small for H.264: {frame.shape[1]}x{frame.shape[2]}")
    return encode_mp4(np.ascontiguousarray(frame[:, :h, :w]), fps=1)


def video_to_mp4(path: str | Path, verify: str = "first", fps: float | None = None, short_side: int | None = None,
                 crf: int = DEFAULT_CRF) -> tuple[bytes, str]:
    """(mp4 bytes, how): ``kept`` (an mp4 that decodes), ``image``, ``remuxed`` or ``reencoded``; with ``fps`` or
    ``short_side``, ``resampled`` (:func:`resample_mp4`, every video, whatever its container)."""
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTS:
        return image_to_mp4(Path(path).read_bytes(), short_side), "image"
    if fps is not None or short_side is not None:
        return resample_mp4(path, fps, short_side, crf), "resampled"  # read by seek, never whole into memory
    data = Path(path).read_bytes()
    if ext in MP4_EXTS:
        check_decodes(data, verify)
        return data, "kept"
    check_decodes(data, verify)  # the source itself must decode, whatever we do next
    try:
        out = remux_mp4(data)
        check_decodes(out, "first")
        return out, "remuxed"
    except Exception as e:  # codec not allowed in mp4, or broken timestamps: re-encode
        log.info("re-encoding %s (remux failed: %s: %s)", path, type(e).__name__, e)
        return transcode_mp4(data), "reencoded"


# -- the plan ----------------------------------------------------------------------------------------------
@dataclass
class Item:
    index: int  # position in the annotation file
    key: str  # the sample's key in the shard (unique, no dots or slashes)
    video: str  # the path as written in the annotation
    path: str  # the file on disk
    meta: dict[str, Any]  # what goes into KEY.json
    size: int  # planned bytes: source file + json


def read_annotations(path: str | Path) -> list[Any]:
    """A JSON list of records, or JSON Lines (one record per line)."""
    text = Path(path).read_text()
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def sample_key(record_id: str) -> str:
    """A WebDataset key from an id: a key must hold no dot (it would split the extension) and no slash."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", record_id).strip("_") or "sample"


def check_record_text(value: Any, where: str = "record") -> None:
    """Every string in a record must be valid Unicode (JSON admits lone surrogates like ``\\ud800``, which no
    tokenizer encodes): AnnotationError naming the field otherwise."""
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, f"a key of {where}")
            check_record_text(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_record_text(v, f"{where}[{i}]")


def source_file(video_root: str | Path, video: str, allow_outside: bool = False,
                max_bytes: int = DEFAULT_MAX_VIDEO_BYTES) -> tuple[str, int]:
    """(path, size) of a record's video: resolved (symlinks followed) and refused with ``ValueError`` when it
    leaves ``video_root`` (``../x``, an absolute path, a symlink out; unless ``allow_outside``), when it is not a
    regular file (a FIFO would hang the reader, a device never ends) or when it is larger than ``max_bytes``.
    ``OSError`` when it does not exist."""
    root = Path(video_root).resolve()
    path = Path(os.path.join(video_root, video))
    st = os.stat(path)  # follows symlinks; FileNotFoundError for a dangling one
    real = path.resolve()
    if not allow_outside and not real.is_relative_to(root):
        raise ValueError(f"{video} resolves to {real}, outside the video folder {root} (--allow-outside-videos "
                         "to read it)")
    import stat as stat_mod

    if not stat_mod.S_ISREG(st.st_mode):
        raise ValueError(f"{video} is not a regular file ({real})")
    if st.st_size > max_bytes:
        raise ValueError(f"{video} holds {st.st_size} bytes, over the limit of {max_bytes} (--max-video-bytes)")
    return str(path), st.st_size


def plan_items(records: list[Any], video_root: str | Path, allow_outside: bool = False,
               max_bytes: int = DEFAULT_MAX_VIDEO_BYTES) -> tuple[list[Item], list[dict[str, Any]]]:
    """(items to write, skipped records with their reason: ``bad record``, ``missing video`` or ``refused
    video``: outside the video folder, not a regular file, or too big; see :func:`source_file`)."""
    items, skipped, seen = [], [], set()
    for index, rec in enumerate(records):
        def skip(reason: str, detail: str) -> None:
            rid = rec.get("id") if isinstance(rec, dict) else None
            video = (rec.get("video") or rec.get("image")) if isinstance(rec, dict) else None
            skipped.append({"index": index, "id": rid, "video": video, "reason": reason, "detail": detail})

        if not isinstance(rec, dict):
            skip("bad record", f"not an object: {type(rec).__name__}")
            continue
        video = rec.get("video", rec.get("image"))
        if not isinstance(rec.get("id"), (str, int)) or isinstance(rec.get("id"), bool):
            skip("bad record", "no 'id'")
            continue
        if not isinstance(video, str) or not video:
            skip("bad record", "no 'video' (or 'image') path")
            continue
        try:
            check_record_text(rec)
            question_and_answer(rec.get("conversations"))
        except AnnotationError as e:
            skip("bad record", str(e))
            continue
        try:
            path, size = source_file(video_root, video, allow_outside, max_bytes)
        except ValueError as e:
            skip("refused video", str(e))
            log.warning("skipping record %d (%s): %s", index, rec.get("id"), e)
            continue
        except OSError as e:
            skip("missing video", f"{type(e).__name__}: {os.path.join(video_root, video)}")
            continue
        key = unique_key(sample_key(str(rec["id"])), index, seen)
        meta = {k: v for k, v in rec.items() if k not in ("video", "image")}
        meta["id"] = str(rec["id"])
        meta["source"] = video
        items.append(Item(index, key, video, path, meta, size + len(json.dumps(meta))))
    return items, skipped


def unique_key(key: str, index: int, seen: set[str]) -> str:
    """``key``, or when taken ``key-INDEX`` (then ``key-INDEX-2`` ...): checked against every key already taken,
    so ids ``x``, ``x-2``, ``x`` give three keys (repeated ids, several questions on one video, stay separate
    samples); ``seen`` gains the result."""
    out, n = key, 1
    if out in seen:
        out = f"{key}-{index}"
    while out in seen:
        n += 1
        out = f"{key}-{index}-{n}"
    seen.add(out)
    return out


def plan_shards(items: list[Item], shard_size: int) -> list[list[Item]]:
    """Greedy packing in order: a shard closes when the next sample would take it past ``shard_size`` (a
    sample bigger than that gets a shard of its own)."""
    shards: list[list[Item]] = []
    current: list[Item] = []
    size = 0
    for item in items:
        if current and size + item.size > shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(item)
        size += item.size
    if current:
        shards.append(current)
    return shards


def encode_settings(fps: float | None = None, short_side: int | None = None, crf: int = DEFAULT_CRF) -> dict[str, Any]:
    """The re-encoding a conversion applies (``{}``: the original bytes are kept), checked and as the manifest
    records it."""
    if fps is not None and not (isinstance(fps, (int, float)) and fps > 0 and np.isfinite(fps)):
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    if short_side is not None and (isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 2):
        raise ValueError(f"short_side must be a whole number of pixels >= 2, got {short_side!r}")
    if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
        raise ValueError(f"crf must be a whole number from 0 to 51, got {crf!r}")
    if fps is None and short_side is None:
        return {}
    return {"fps": None if fps is None else float(fps), "short_side": short_side, "codec": "h264", "crf": crf}


def plan_digest(items: list[Item], settings: dict[str, Any] | None = None) -> str:
    """What a shard must contain: a finished shard is kept only when its recorded digest equals this (the
    re-encoding settings are part of it: converting again with other ``--fps`` / ``--short-side`` rewrites)."""
    h = hashlib.sha256()
    if settings:
        h.update(json.dumps(settings, sort_keys=True).encode())
    for item in items:
        h.update(json.dumps([item.key, item.path, item.size, item.meta], sort_keys=True).encode())
    return h.hexdigest()


# -- writing -----------------------------------------------------------------------------------------------
_progress: Any = None  # a multiprocessing queue in pool workers (one put per sample), None inline


def _init_worker(queue: Any) -> None:
    global _progress
    _progress = queue
    die_with_parent()


def die_with_parent() -> None:
    """End this pool worker when the converting process dies, even by SIGKILL (which runs no clean-up): on Linux
    the kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread
    polls the parent's pid. Without it a killed conversion leaves workers writing shards for minutes."""
    import signal
    import threading
    import time

    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="aurora-parent-watch").start()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(out_dir: str, name: str, items: list[Item], digest: str, verify: str,
                tick: Callable[[int], None] | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write one shard (``NAME.tmp``, renamed when complete) and its stats; undecodable videos are skipped
    and listed."""
    out = Path(out_dir)
    path, tmp = out / name, out / f"{name}.tmp"
    count, nbytes, how, cats, skipped = 0, 0, Counter(), Counter(), []
    encode = {k: v for k, v in (settings or {}).items() if k in ("fps", "short_side", "crf")}
    with wds.TarWriter(str(tmp)) as writer:
        for item in items:
            try:
                data, method = video_to_mp4(item.path, verify, **encode)
            except VideoDecodeError as e:
                skipped.append({"index": item.index, "id": item.meta["id"], "video": item.video,
                                "reason": "undecodable video", "detail": str(e)})
                log.warning("skipping %s (%s): undecodable video: %s", item.meta["id"], item.video, e)
            except OSError as e:
                skipped.append({"index": item.index, "id": item.meta["id"], "video": item.video,
                                "reason": "missing video", "detail": f"{type(e).__name__}: {e}"})
            else:
                meta = json.dumps(item.meta).encode()
                writer.write({"__key__": item.key, "mp4": data, "json": meta})
                count, nbytes = count + 1, nbytes + len(data) + len(meta)
                how[method] += 1
                cats[item.meta.get("category", "all")] += 1
            if tick is not None:
                tick(1)
            elif _progress is not None:
                _progress.put(1)
    stats = {"shard": name, "digest": digest, "count": count, "bytes": nbytes, "videos": dict(how),
             "categories": dict(cats), "skipped": skipped,
             "file_bytes": tmp.stat().st_size, "sha256": file_sha256(tmp)}  # checked before a re-run keeps it
    stats_path = out / STATS_DIR / f"{name}.json"
    write_json(stats_path, stats, indent=None)  # stats first: a shard file that exists always has its stats
    os.replace(tmp, path)
    return stats


def finished(out: Path, name: str, digest: str) -> dict[str, Any] | None:
    """The stats of a complete shard written from the same plan, else None."""
    stats_path = out / STATS_DIR / f"{name}.json"
    if not (out / name).is_file() or not stats_path.is_file():
        return None
    try:
        stats = json.loads(stats_path.read_text())
    except ValueError:
        return None
    if not isinstance(stats, dict) or stats.get("digest") != digest:
        return None
    # the plan's digest says what the shard should hold; the file itself is checked (size, then checksum): a
    # shard truncated or edited after its conversion is written again
    if stats.get("file_bytes") != (out / name).stat().st_size or stats.get("sha256") != file_sha256(out / name):
        log.warning("rewriting %s: it differs from the size / checksum recorded when it was written", out / name)
        return None
    return stats


def convert(
    annotations: str | Path,
    video_root: str | Path,
    out_dir: str | Path,
    split: str = "train",
    shard_size: int | str = "1GB",
    workers: int = 1,
    verify: str = "first",
    shuffle_seed: int | None = None,
    progress: bool = True,
    allow_outside: bool = False,
    max_video_bytes: int | str = DEFAULT_MAX_VIDEO_BYTES,
    fps: float | None = None,
    short_side: int | None = None,
    crf: int = DEFAULT_CRF,
) -> dict[str, Any]:
    """Convert one split (see the module doc); returns and writes ``manifest.json`` (other splits already in
    it are kept). ``workers`` > 1 writes shards in a process pool, one shard per task. ``fps`` / ``short_side``
    pre-sample and re-encode every video (:func:`resample_mp4`, quality ``crf``); by default the original
    bytes are kept."""
    settings = encode_settings(fps, short_side, crf)
    if verify not in VERIFY:
        raise ValueError(f"unknown verify {verify!r}; known: {', '.join(VERIFY)}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(f"split must be letters, digits or _ (it names the shard files), got {split!r}")
    if not Path(video_root).is_dir():
        raise FileNotFoundError(f"video folder not found: {video_root}")
    size_limit = parse_size(shard_size)
    out = Path(out_dir)
    (out / STATS_DIR).mkdir(parents=True, exist_ok=True)

    records = read_annotations(annotations)
    items, skipped = plan_items(records, video_root, allow_outside, parse_size(max_video_bytes))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(items)
    plan = plan_shards(items, size_limit)
    names = [f"{split}-{i:05d}.tar" for i in range(len(plan))]
    digests = [plan_digest(p, settings) for p in plan]

    for stale in out.glob(f"{split}-*.tar*"):  # partial files, and shards past the end of a smaller plan
        if stale.name not in names:
            log.info("removing %s (partial, or not in the current plan)", stale)
            stale.unlink()
    stats: dict[str, dict[str, Any]] = {}
    todo = []
    for name, shard, digest in zip(names, plan, digests):
        done = finished(out, name, digest)
        if done is not None:
            stats[name] = done
        else:
            todo.append((name, shard, digest))
    log.info("%d records: %d samples planned in %d shards (%d already done), %d skipped", len(records),
             len(items), len(plan), len(plan) - len(todo), len(skipped))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), initial=sum(len(p) for n, p in zip(names, plan) if n in stats),
               unit="video", desc=f"convert {split}", disable=not progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            for name, shard, digest in todo:
                stats[name] = write_shard(str(out), name, shard, digest, verify, tick=bar.update, settings=settings)
        else:
            queue = mp.get_context().Queue()
            with cf.ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(queue,)) as pool:
                futures = {pool.submit(write_shard, str(out), name, shard, digest, verify, None, settings): name
                           for name, shard, digest in todo}
                pending = set(futures)
                while pending:
                    finished_now, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                    for _ in _drain(queue):
                        bar.update(1)
                    for future in finished_now:
                        try:
                            stats[futures[future]] = future.result()
                        except Exception as e:
                            for f in pending:
                                f.cancel()
                            raise RuntimeError(f"writing shard {futures[future]} failed: {e}") from e
                for _ in _drain(queue):
                    bar.update(1)
    finally:
        bar.close()
    return write_manifest(out, split, names, stats, skipped, annotations, video_root, size_limit, verify,
                          shuffle_seed, len(records), settings)


def _drain(queue: Any) -> Iterator[Any]:
    import queue as q

    while True:
        try:
            yield queue.get_nowait()
        except q.Empty:
            return


def write_manifest(out: Path, split: str, names: list[str], stats: dict[str, dict[str, Any]],
                   skipped: list[dict[str, Any]], annotations: str | Path, video_root: str | Path,
                   shard_size: int, verify: str, shuffle_seed: int | None, records: int,
                   settings: dict[str, Any] | None = None) -> dict[str, Any]:
    skipped = sorted(skipped + [s for n in names for s in stats[n]["skipped"]], key=lambda s: s["index"])
    cats: Counter = Counter()
    videos: Counter = Counter()
    for n in names:
        cats.update(stats[n]["categories"])
        videos.update(stats[n]["videos"])
    entry = {
        "count": sum(stats[n]["count"] for n in names),
        "shards": [n for n in names if stats[n]["count"] > 0],
        "per_shard": {n: stats[n]["count"] for n in names},
        "bytes": sum(stats[n]["bytes"] for n in names),
        "categories": dict(cats),
        "videos": dict(videos),
        "records": records,
        "skipped_counts": dict(Counter(s["reason"] for s in skipped)),
        "skipped": skipped,
        "source": {"annotations": str(annotations), "video_root": str(video_root)},
        # encode: how the videos were written, {"mode": "original"} (bytes kept) or re-encoded with its settings
        "params": {"shard_size": shard_size, "verify": verify, "shuffle_seed": shuffle_seed,
                   "encode": {"mode": "resampled", **settings} if settings else {"mode": "original"}},
    }
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"dataset": "aurora-converted", "splits": {}}
    manifest.setdefault("splits", {})[split] = entry
    found = [c for e in manifest["splits"].values() for c in e.get("categories", {})]
    categories = list(dict.fromkeys(c for c in found if c != "all"))
    if categories:
        manifest["categories"] = categories
    write_json(path, manifest)
    return manifest


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _short_side(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels >= 2, got {text!r}")
    return int(text)


def convert_main(argv: list[str]) -> int:
    """aurora data convert --annotations A.json --videos DIR --out DIR [--split train] [--shard-size 1GB] ..."""
    parser = argparse.ArgumentParser(prog="aurora data convert", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, help="LLaVA-style JSON list (or .jsonl) of records")
    parser.add_argument("--videos", required=True, help="folder the records' video / image paths are relative to")
    parser.add_argument("--out", required=True, help="output folder (shards + manifest.json)")
    parser.add_argument("--split", default="train", help="split name: shards are SPLIT-00000.tar, ... (train)")
    parser.add_argument("--shard-size", default="1GB", help="target shard size: 1GB, 500MiB, 4096 ... (1GB)")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="processes writing shards in parallel (default: CPUs, at most 8)")
    parser.add_argument("--verify", choices=VERIFY, default="first",
                        help="decode the first frame of every video (fast) or all of them (thorough)")
    parser.add_argument("--shuffle-seed", type=int, default=None,
                        help="shuffle the samples before sharding (default: annotation order)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--allow-outside-videos", action="store_true",
                        help="read video paths that resolve outside --videos (../x, absolute paths, symlinks out); "
                             "by default such records are skipped and counted")
    parser.add_argument("--max-video-bytes", default=str(DEFAULT_MAX_VIDEO_BYTES),
                        help="skip source files larger than this (8GiB)")
    parser.add_argument("--fps", type=_positive_float, default=None,
                        help="pre-sample every video at this many frames per second and re-encode it (H.264); "
                             "default: keep the original bytes")
    parser.add_argument("--short-side", type=_short_side, default=None,
                        help="re-encode every video resized (in FFmpeg's scaler) so its short side is at most this")
    parser.add_argument("--crf", type=int, choices=range(0, 52), metavar="0..51", default=DEFAULT_CRF,
                        help=f"H.264 quality of re-encoded videos (--fps / --short-side; default {DEFAULT_CRF})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    manifest = convert(args.annotations, args.videos, args.out, split=args.split, shard_size=args.shard_size,
                       workers=args.workers, verify=args.verify, shuffle_seed=args.shuffle_seed,
                       progress=not args.quiet, allow_outside=args.allow_outside_videos,
                       max_video_bytes=args.max_video_bytes, fps=args.fps, short_side=args.short_side,
                       crf=args.crf)
    entry = manifest["splits"][args.split]
    summary = {k: entry[k] for k in ("count", "records", "bytes", "videos", "skipped_counts")}
    summary["shards"] = len(entry["shards"])
    print(json.dumps(summary, indent=2))
    print(f"manifest written to {Path(args.out) / 'manifest.json'}")
    return 0
