"""Live video sources: anything PyAV opens as a stream, read front to back as it arrives, sampled by time.

    LiveFrames("clip.ts", fps=1)                 # a file still being written: followed until no new bytes for
                                                 # ``live_timeout`` seconds (or ``stop`` is set)
    LiveFrames("pipe:", fps=1)                   # standard input (``pipe:N``: file descriptor N; ``-``: stdin)
    LiveFrames("http://127.0.0.1:8000/v.ts", fps=2)   # http(s), rtsp, rtmp, udp, tcp, srt URLs: FFmpeg's own
                                                 # protocols, with ``live_timeout`` as the read timeout

:class:`~aurora.data.reader.FrameReader` demuxes a whole file first (every frame's timestamp, the keyframes) and
samples a known number of frames; a live source has no length, so it is sampled by time instead: one frame per
``1 / fps`` seconds of stream time, the first decoded frame at or after each multiple (times are counted from the
first frame). Kept frames are resized inside FFmpeg to ``short_side`` as the reader does; nothing else is kept,
so reading an hour costs one frame's memory. A packet that does not decode is skipped, counted (``skipped``) and
logged, as the training reader skips a bad sample; a source that cannot be opened is a
:class:`~aurora.data.reader.VideoDecodeError` naming it.

A growing file must be in a format that can be read before it is finished: MPEG-TS, Matroska / WebM or
fragmented MP4 (``-movflags frag_keyframe+empty_moov``); a plain MP4 keeps its index at the end, written last.

:func:`ready_batches` turns the frames into batches of whatever has arrived (at least one, at most ``k``), decoded
in a background thread, so a reader that falls behind catches up in larger chunks and one that keeps up reads
each frame as it comes.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np

from aurora.data.reader import VideoDecodeError, first_video_stream, scaled_size

log = logging.getLogger(__name__)

URL = re.compile(r"^(https?|rtsp|rtsps|rtmp|rtmps|udp|tcp|srt)://", re.IGNORECASE)
PIPE = re.compile(r"^(-|pipe:(\d*))$")


def is_live_url(source: str | os.PathLike) -> bool:
    """A source that is a stream by its very name: ``pipe:`` / ``-`` or a network URL."""
    s = str(source)
    return bool(URL.match(s) or PIPE.match(s))


class FollowFile:
    """A file read as it grows. ``read(n)`` returns what is there; at the end it waits for more (polling every
    ``poll`` s) and reports the end of the stream only after ``timeout`` seconds without a new byte, or at once
    when ``stop`` is set. No ``seek``: FFmpeg reads it as a stream, front to back."""

    def __init__(self, path: str | os.PathLike, timeout: float, poll: float = 0.05,
                 stop: threading.Event | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video not found: {self.path}")
        self.timeout, self.poll, self.stop = float(timeout), poll, stop
        self._f = open(self.path, "rb")  # noqa: SIM115  (closed by close())
        self.ended = False

    def read(self, n: int = -1) -> bytes:
        waited = 0.0
        while not self.ended:
            data = self._f.read(n if n and n > 0 else 1 << 16)
            if data:
                return data
            if (self.stop is not None and self.stop.is_set()) or waited >= self.timeout:
                self.ended = True  # the end, once: FFmpeg may ask again, and must not wait again
                break
            time.sleep(self.poll)
            waited += self.poll
        return b""

    def close(self) -> None:
        self._f.close()


class PipeReader:
    """A file descriptor (standard input for ``pipe:``) read as a stream: ``read(n)`` returns what has arrived
    (``os.read``: at most ``n`` bytes, blocking only when none has), ``b""`` at the end."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, n: int = -1) -> bytes:
        return os.read(self.fd, n if n and n > 0 else 1 << 16)

    def close(self) -> None:
        pass


def open_live(source: str | os.PathLike, live_timeout: float = 10.0, stop: threading.Event | None = None,
              follow: bool = True):
    """Open ``source`` as a stream: (the PyAV container, the file-like object behind it or None)."""
    s = str(source)
    reader: Any = None
    # probe only the start: FFmpeg's default (5 MB or 5 s of stream) would wait for data a live source has not
    # sent yet, holding the first frame back for as long
    options: dict[str, str] = {"probesize": "32768", "analyzeduration": "500000"}
    pipe = PIPE.match(s)
    if pipe:
        fd = int(pipe.group(2)) if pipe.group(2) else sys.stdin.fileno()
        reader, target = PipeReader(fd), None
    elif URL.match(s):
        target = s
        if s.lower().startswith("rtsp"):
            options["rtsp_transport"] = "tcp"
    elif follow:
        reader, target = FollowFile(s, live_timeout, stop=stop), None
    else:
        if not Path(s).is_file():
            raise FileNotFoundError(f"video not found: {s}")
        target = s
    try:
        if reader is not None:
            container = av.open(reader, mode="r", options=options)
        else:
            container = av.open(target, mode="r", options=options, timeout=(live_timeout, live_timeout))
    except Exception as e:  # FFmpeg's InvalidDataError, a refused connection, a timeout ...
        if reader is not None:
            reader.close()
        hint = (" (a growing file must be MPEG-TS, Matroska or fragmented MP4: a plain MP4's index is written last)"
                if isinstance(reader, FollowFile) else "")
        raise VideoDecodeError(f"cannot open the live source {s} ({type(e).__name__}: {e}){hint}") from e
    try:
        first_video_stream(container, f" in the live source {s}")
    except VideoDecodeError:
        if reader is not None:
            reader.close()
        raise
    return container, reader


class LiveFrames:
    """Sampled frames of a live source, as ``(seconds from the first frame, uint8 (H, W, 3))`` pairs.

    Args:
        source: a path (followed as it grows when ``follow``), ``pipe:`` / ``pipe:N`` / ``-``, or a URL.
        fps: frames kept per second of stream time (the first frame at or after every ``k / fps`` s).
        short_side: resize kept frames inside FFmpeg so their short side is at most this.
        live_timeout: seconds without new data after which a growing file or a network source has ended.
        max_frames, until: stop after this many kept frames, or at this stream time (seconds).
        stop: an event that ends the reading at the next frame (and a growing file's wait at once).
    """

    def __init__(self, source: str | os.PathLike, fps: float = 1.0, short_side: int | None = None,
                 live_timeout: float = 10.0, max_frames: int | None = None, until: float | None = None,
                 stop: threading.Event | None = None, follow: bool = True) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if live_timeout <= 0:
            raise ValueError(f"live_timeout must be > 0 seconds, got {live_timeout}")
        self.source, self.fps, self.short_side = str(source), float(fps), short_side
        self.live_timeout, self.max_frames, self.until = float(live_timeout), max_frames, until
        self.stop = stop or threading.Event()
        self.follow = follow
        self.decoded = 0  # frames decoded
        self.kept = 0  # frames sampled
        self.last_time: float | None = None  # stream time of the last decoded frame
        self.skipped: Counter[str] = Counter()

    def _to_array(self, frame) -> np.ndarray:
        h, w = scaled_size(frame.height, frame.width, self.short_side)
        if (h, w) != (frame.height, frame.width):
            return frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
        return frame.to_ndarray(format="rgb24")

    def _skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        log.warning("live source %s: skipped (%s): %s", self.source, reason, detail)

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        container, reader = open_live(self.source, self.live_timeout, self.stop, self.follow)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            t0: float | None = None
            step = 1.0 / self.fps
            next_k = 0
            for packet in container.demux(stream):
                if self.stop.is_set():
                    return
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as e:  # a damaged packet: the stream goes on
                    self._skip("undecodable packet", f"at {packet.pts}: {e}")
                    continue
                for frame in frames:
                    if frame.time is None:
                        self._skip("frame without a timestamp", f"frame {self.decoded}")
                        continue
                    self.decoded += 1
                    t0 = float(frame.time) if t0 is None else t0
                    t = float(frame.time) - t0
                    self.last_time = t
                    if self.until is not None and t > self.until + 1e-9:
                        return
                    if t + 1e-9 < next_k * step:
                        continue
                    next_k = int(np.floor(t / step + 1e-9)) + 1  # the next multiple after this frame
                    self.kept += 1
                    yield t, self._to_array(frame)
                    if self.max_frames is not None and self.kept >= self.max_frames:
                        return
        except av.error.FFmpegError as e:  # the connection dropped, a read timed out: the stream has ended
            log.warning("live source %s ended: %s: %s", self.source, type(e).__name__, e)
            self.skipped["stream error"] += 1
        finally:
            container.close()
            if reader is not None:
                reader.close()


_END = object()


def ready_batches(frames: LiveFrames, k: int, depth: int = 64) -> Iterator[list[tuple[float, np.ndarray]]]:
    """The frames of ``frames``, decoded in a background thread, in batches of whatever has arrived: at least one
    frame (waiting for it), at most ``k``. At most ``depth`` decoded frames wait in the queue (a reader slower
    than the stream holds the decoder back instead of piling frames up). An error in the decoder is raised here."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q: queue.Queue = queue.Queue(maxsize=depth)
    failure: list[BaseException] = []

    def decode() -> None:
        try:
            for item in frames:
                while not frames.stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if frames.stop.is_set():
                    break
        except BaseException as e:  # noqa: BLE001  (handed to the consumer)
            failure.append(e)
        finally:
            while True:  # the end marker, unless nobody is left to read it
                try:
                    q.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    if frames.stop.is_set():
                        break

    thread = threading.Thread(target=decode, name="live-decoder", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                break
            batch = [item]
            while len(batch) < k:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _END:
                    q.put(_END)  # seen again by the outer get
                    break
                batch.append(nxt)
            yield batch
    finally:
        frames.stop.set()
        thread.join(timeout=5)
    if failure:
        raise failure[0]
