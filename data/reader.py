"""The frame reader every path uses (training, ``aurora ask``, ``aurora eval``, ``aurora viz merge``, ``aurora data
convert``): reading a video costs the frames we keep, not the video's length.

How: the reader needs every frame's presentation timestamp and which frames are keyframes. Frame ``i`` is the
``i``-th smallest timestamp: exactly the ``i``-th frame a full front-to-back decode gives, B-frames, variable
frame rates, start offsets and edit lists included (packets an edit list discards are left out, as the decoder
drops their frames). Where an mp4 / mov header determines them exactly (a constant frame rate: every decode step
equal, no frame an edit list discards, every sample inside the file, closed GOPs) they come from the header's
sample table, which FFmpeg reads at open: the decode grid shifted by the reorder delay, checked against the
packets of the first and the last GOP, and again at every keyframe sought and every frame decoded. Anywhere else
(variable frame rate, matroska, a truncated file, a header the packets contradict) the file is demuxed once
without decoding (packets only). One index per video is kept in memory (by path, size, mtime and inode), so a
second reader of the same file costs no indexing. For each run of wanted frames the reader
seeks to the keyframe at or before the first one and decodes forward, so wanted frames in one GOP cost one pass
and the GOPs between them are never decoded. Frames are recognised by their timestamp, so an imprecise seek in
some container can cost time, never a wrong frame.

Each kept frame is resized inside FFmpeg's scaler to the encoder's short side in the same call that converts it
to RGB (``frame.reformat``), so a 4K frame never exists as a full-size RGB array; decoding threads are on. Memory
is the frames kept plus two small arrays per frame of the video (timestamps: 16 bytes a frame).

Limits bound memory and time per video whatever the file claims or holds: ``max_pixels`` (the frame size in the
header, and every decoded frame) and ``max_frames`` (frames considered: the demux stops past it). Over a limit is
a :class:`VideoTooLarge`, which the training reader counts as its own skip reason.

Peers behind the same interface (:func:`open_reader`, ``backend=``): ``decord2`` and ``torchcodec`` when
installed (neither is in the default install), for the benchmark and for users who have them.
"""
from __future__ import annotations

import io
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import av
import numpy as np
from av.video.reformatter import VideoReformatter
import torch
from torch import Tensor

log = logging.getLogger(__name__)

VideoSource = Union[str, os.PathLike, bytes, bytearray, memoryview]
# defaults of the training reader's limits: DCI 4K frames, and 500,000 frames (2.3 hours at 60 fps)
DEFAULT_MAX_PIXELS = 4096 * 2160
DEFAULT_MAX_FRAMES = 500_000
# FFmpeg's AVIndexEntry flags
_AVINDEX_KEYFRAME, _AVINDEX_DISCARD = 1, 2
# the header index is trusted only when its first and last GOP can be checked against the packets cheaply
_MAX_CHECKED_GOP = 4096


class VideoDecodeError(ValueError):
    """A video that cannot be decoded: corrupt, truncated, empty, or not a video."""


class VideoTooLarge(VideoDecodeError):
    """A video over the reader's limits (``max_pixels`` per frame, ``max_frames`` considered)."""


class _HeaderMismatch(Exception):
    """The packets disagree with the index taken from the container's header (raised inside the reader only)."""


@dataclass(frozen=True)
class _Index:
    """Where a video's frames are: presentation timestamps (ascending; frame ``i`` is ``pts[i]``), the frame index
    each keyframe starts and the timestamp to seek to for it, and where the index came from (``header``: the
    container's sample table, checked; ``demux``: every packet read)."""

    pts: np.ndarray
    key_index: np.ndarray
    key_seek: np.ndarray
    time_base: float
    source: str

    def __post_init__(self) -> None:  # shared by every reader of the video (the cache): never written
        for array in (self.pts, self.key_index, self.key_seek):
            array.flags.writeable = False


_INDEX_CACHE: "OrderedDict[tuple, _Index]" = OrderedDict()
_INDEX_LOCK = threading.Lock()
INDEX_CACHE_SIZE = 64  # videos whose index is kept in memory (keyed by path, size and mtime)


def _cache_key(source: "VideoSource") -> tuple | None:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return None
    try:
        st = os.stat(source)
    except OSError:
        return None
    return (os.path.realpath(source), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _cache_put(key: tuple | None, index: _Index) -> None:
    if key is None:
        return
    with _INDEX_LOCK:
        _INDEX_CACHE[key] = index
        _INDEX_CACHE.move_to_end(key)
        while len(_INDEX_CACHE) > INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)


def _cache_get(key: tuple | None) -> _Index | None:
    if key is None:
        return None
    with _INDEX_LOCK:
        index = _INDEX_CACHE.get(key)
        if index is not None:
            _INDEX_CACHE.move_to_end(key)
        return index


def clear_index_cache() -> None:
    """Forget every cached index (the next open of each video builds its index again)."""
    with _INDEX_LOCK:
        _INDEX_CACHE.clear()


@dataclass
class VideoInfo:
    """What a reader knows before decoding: the frame count, rate, duration and frame size (as stored; the
    frames returned are rotated upright when ``rotation`` is non-zero)."""

    frames: int
    fps: float  # average frame rate (0.0 when the video has no timing)
    duration: float  # seconds (frames / fps when the container does not say)
    width: int
    height: int
    rotation: int = 0  # degrees (counter-clockwise) of the display matrix, known once a frame is decoded


def scaled_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) with the short side brought down to ``short_side`` by the rule of
    :func:`~aurora.data.video.to_pixels` (never enlarged: the encoder's own resize does that)."""
    if short_side is None or min(height, width) <= short_side:
        return height, width
    scale = short_side / min(height, width)
    return max(short_side, round(height * scale)), max(short_side, round(width * scale))


def _open(source: VideoSource):
    if isinstance(source, (bytes, bytearray, memoryview)):
        target: Any = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"video not found: {path}")
        if not path.is_file():  # a folder, FIFO or device: never read (a FIFO would hang)
            raise VideoDecodeError(f"video path is not a regular file: {path}")
        target = str(path)
    try:
        container = av.open(target, mode="r")
    except Exception as e:  # FFmpeg's InvalidDataError and friends
        raise VideoDecodeError(f"cannot open video ({type(e).__name__}: {e})") from e
    first_video_stream(container)
    return container


def first_video_stream(container, where: str = ""):
    """The container's first video stream; VideoDecodeError (the container closed) when it has none or FFmpeg has
    no decoder for it (an unknown or corrupt codec tag: PyAV gives such a stream no codec context)."""
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"no video stream{where} (audio only or not a video)")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise VideoDecodeError(f"no decoder for the video stream{where} (an unknown or corrupt codec tag)")
    return stream


def _avc_length_size(stream) -> int | None:
    """Bytes of each NAL unit's length prefix in an H.264 stream stored as avcC (mp4, mkv): 1, 2 or 4; None for
    any other codec or layout (Annex B start codes), where no packet is skipped."""
    ctx = stream.codec_context
    extradata = ctx.extradata
    if ctx.name != "h264" or not extradata or len(extradata) < 7 or extradata[0] != 1:
        return None
    size = (extradata[4] & 3) + 1
    return size if size in (1, 2, 4) else None


def disposable(data: memoryview | bytes, length_size: int) -> bool:
    """True when an H.264 packet (avcC: length-prefixed NAL units) is a non-reference picture: it has a slice
    and every NAL unit's ``nal_ref_idc`` is 0 (so no parameter set rides in it). The decoder never needs such
    a packet for any other frame, so one whose frame is not wanted need not be decoded at all. Anything that
    does not parse is not disposable."""
    i, n, slices = 0, len(data), 0
    while i + length_size < n:
        size = int.from_bytes(data[i:i + length_size], "big")
        header = data[i + length_size]
        if header & 0x60 or header & 0x80:  # a reference NAL unit (or a corrupt forbidden bit)
            return False
        if 1 <= header & 0x1F <= 5:
            slices += 1
        i += length_size + size
    return slices > 0 and i == n


class FrameReader:
    """Frame-accurate random access to one video (see the module docstring).

    Args:
        source: a path or the file's bytes.
        short_side: resize kept frames (inside FFmpeg, before RGB) so their short side is at most this.
        threads: decoding threads (0: FFmpeg chooses).
        max_pixels, max_frames: the limits (None: none); over them is :class:`VideoTooLarge`.
        rotate: turn frames upright by the file's rotation metadata (multiples of 90 degrees).
        skip_disposable: H.264 non-reference packets (B-frames no frame refers to) whose frame comes before the
            one being decoded towards are not decoded at all (:func:`disposable`): a third of the decoding of a
            typical GOP with B-frames. The frames returned are the same either way.
    """

    def __init__(self, source: VideoSource, short_side: int | None = None, threads: int = 0,
                 max_pixels: int | None = None, max_frames: int | None = None, rotate: bool = True,
                 skip_disposable: bool = True, index: str = "auto") -> None:
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be >= 1, got {short_side}")
        if index not in ("auto", "demux"):
            raise ValueError(f"index must be 'auto' or 'demux', got {index!r}")
        self.short_side, self.rotate = short_side, rotate
        self.max_pixels, self.max_frames = max_pixels, max_frames
        self._cache_key = _cache_key(source)
        self._moved = False  # whether packets were read since the container was opened
        self._size = len(source) if isinstance(source, (bytes, bytearray, memoryview)) else (
            self._cache_key[1] if self._cache_key else None)
        self._container = _open(source)
        try:
            self._stream = stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
            width, height = stream.codec_context.width, stream.codec_context.height
            self._check_pixels(width, height, "header")
            cached = _cache_get(self._cache_key)
            if cached is not None and (index == "auto" or cached.source == "demux"):
                self._check_count(len(cached.pts))
                built = cached
            else:
                built = (self._index_from_header(stream) if index == "auto" else None) or self._index_by_demux(stream)
                _cache_put(self._cache_key, built)
            self._set_index(built)
            self.info = self._make_info(stream, width, height, 0)
        except BaseException:
            self._container.close()
            raise
        self._frames: Iterator[Any] | None = None  # the decoder's output from the current position
        self._key = 0
        self._last = -1  # index of the last frame taken from ``_frames``
        self._want_pts: int | None = None  # the frame being decoded towards: packets before it may be skipped
        self._reformatter = VideoReformatter()
        self._length_size = _avc_length_size(self._stream) if skip_disposable else None
        # frames the decoder produced, seeks made, non-reference packets not decoded: what a read cost
        self.decoded = self.seeks = self.skipped = 0

    # -- the index -----------------------------------------------------------------------------------------
    @property
    def index_source(self) -> str:
        """Where this reader's frame index came from: ``header`` (the container's sample table, checked
        against the packets of its first and last GOP and of every GOP decoded) or ``demux`` (every packet)."""
        return self._index.source

    def _check_pixels(self, width: int, height: int, where: str) -> None:
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise VideoTooLarge(f"frames of {width}x{height} ({where}) exceed max_pixels {self.max_pixels}")

    def _check_count(self, n: int) -> None:
        if self.max_frames is not None and n > self.max_frames:
            raise VideoTooLarge(f"video has more than max_frames {self.max_frames} frames")

    def _set_index(self, index: _Index) -> None:
        self._index = index
        self._pts, self._key_index, self._key_seek = index.pts, index.key_index, index.key_seek
        self._time_base = index.time_base

    def _index_from_header(self, stream) -> _Index | None:
        """The index without reading the file: an mp4 / mov header holds every sample's decode timestamp and
        keyframe flag (FFmpeg's index entries, read at open). Used only where it determines the presentation
        timestamps exactly: a constant frame rate (every decode step equal), no frame an edit list discards,
        every sample inside the file, keyframes starting closed GOPs; the presentation timestamps are then the
        decode grid shifted by the reorder delay, which the packets of the first and the last GOP must show
        exactly (and every GOP decoded later is checked again, see ``_HeaderMismatch``). None: demux instead."""
        if not {"mov", "mp4"} & set(self._container.format.name.split(",")):
            return None  # matroska, webm, avi...: their index holds keyframes (cues) only
        entries = stream.index_entries
        n = len(entries)
        if n < 2 or (stream.frames and stream.frames != n):
            return None
        rows = np.array([(e.timestamp, e.flags, e.pos, e.size) for e in entries], dtype=np.int64)
        dts, flags, pos, sizes = rows.T
        step = int(dts[1] - dts[0])
        if step <= 0 or (flags & _AVINDEX_DISCARD).any() or (np.diff(dts) != step).any():
            return None  # variable frame rate, or an edit list drops frames
        if self._size is not None and int((pos + sizes).max()) > self._size:
            return None  # a truncated file: the header promises samples that are not there
        keys = np.flatnonzero(flags & _AVINDEX_KEYFRAME)
        if not len(keys) or keys[0] != 0:
            return None
        self._check_count(n)
        head_end = int(keys[1]) if len(keys) > 1 else n
        if head_end > _MAX_CHECKED_GOP or n - int(keys[-1]) > _MAX_CHECKED_GOP:
            return None
        try:
            head = self._packet_pts(None, head_end)
            if head is None or len(head) != head_end:
                return None
            pts = np.arange(n, dtype=np.int64) * step + min(head)  # the decode grid, shifted
            if not np.array_equal(np.sort(np.asarray(head, np.int64)), pts[:head_end]):
                return None
            last = int(keys[-1])
            tail = self._packet_pts(int(pts[last]), n - last + 1)
            if tail is None or not np.array_equal(np.sort(np.asarray(tail, np.int64)), pts[last:]):
                return None
        except av.FFmpegError:
            return None
        tb = stream.time_base
        return _Index(pts, keys.astype(np.int64), pts[keys], float(tb) if tb else 0.0, "header")

    def _packet_pts(self, seek: int | None, limit: int) -> list[int] | None:
        """Presentation timestamps of at most ``limit`` packets from the start (``seek`` None) or from the
        keyframe at ``seek``; None when one has none."""
        if seek is None:
            self._container.seek(0, backward=True, any_frame=False)
        else:
            self._container.seek(seek, backward=True, any_frame=False, stream=self._stream)
        got: list[int] = []
        self._moved = True
        for packet in self._container.demux(self._stream):
            if not packet.size:
                continue
            if packet.pts is None or packet.is_discard:
                return None
            got.append(packet.pts)
            if len(got) >= limit:
                break
        return got

    def _index_by_demux(self, stream) -> _Index:
        """Presentation timestamps of every frame (sorted) and the keyframes' seek targets, from one demux."""
        if self._moved:  # packets were read (the header's check, a read): back to the start
            try:
                self._container.seek(0, backward=True, any_frame=False)
            except av.FFmpegError as e:
                raise VideoDecodeError(f"cannot seek to the start of the video ({type(e).__name__}: {e})") from e
        pts: list[int] = []
        keys: list[tuple[int, int]] = []  # (pts, seek timestamp) of each keyframe: FFmpeg's seek (mov, matroska)
        # lands on the keyframe at or before a presentation timestamp; the dts would land a GOP early
        no_pts = 0
        try:
            for packet in self._container.demux(stream):
                if not packet.size or packet.is_discard:  # the flush packet; frames an edit list drops
                    continue
                if packet.pts is None:
                    no_pts += 1
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append((packet.pts, packet.pts))
                self._check_count(len(pts))
        except VideoTooLarge:
            raise
        except Exception as e:  # a truncated or corrupt tail: the frames demuxed so far are the video
            log.warning("video demux stopped after %d packets (%s: %s)", len(pts), type(e).__name__, e)
        if no_pts:
            raise VideoDecodeError(f"{no_pts} packets have no timestamps: random access impossible "
                                   f"(remux or re-encode the file, e.g. with aurora data convert)")
        if not pts:
            raise VideoDecodeError("video has no frames")
        all_pts = np.asarray(pts, dtype=np.int64)
        all_pts.sort()
        if len(np.unique(all_pts)) != len(all_pts):
            raise VideoDecodeError("frames with duplicate timestamps: random access impossible")
        keys.sort()
        # keyframe i covers frames from index key_index[i]; seek to key_seek[i]
        key_index = np.searchsorted(all_pts, np.asarray([k for k, _ in keys], dtype=np.int64))
        key_seek = np.asarray([s for _, s in keys], dtype=np.int64)
        if not len(keys) or key_index[0] != 0:  # frames before the first keyframe: start from the top
            key_index = np.concatenate([[0], key_index])
            key_seek = np.concatenate([[np.iinfo(np.int64).min], key_seek])
        tb = stream.time_base
        return _Index(all_pts, key_index.astype(np.int64), key_seek, float(tb) if tb else 0.0, "demux")

    def _make_info(self, stream, width: int, height: int, rotation: int) -> VideoInfo:
        n = len(self._pts)
        times = self.times
        span = float(times[-1]) if n > 1 else 0.0
        fps = float(stream.average_rate or 0.0)
        if fps <= 0 and span > 0:
            fps = (n - 1) / span
        duration = span + (span / (n - 1) if n > 1 and span > 0 else (1.0 / fps if fps else 0.0))
        return VideoInfo(frames=n, fps=fps, duration=duration, width=width, height=height, rotation=rotation % 360)

    @property
    def times(self) -> np.ndarray:
        """Each frame's presentation time in seconds from the first frame (float64, ascending)."""
        return (self._pts - self._pts[0]) * self._time_base

    def __len__(self) -> int:
        return len(self._pts)

    # -- sampling ------------------------------------------------------------------------------------------
    def indices(self, num_frames: int | None = None, fps: float | None = None, max_frames: int | None = None,
                start: float | None = None, end: float | None = None) -> list[int]:
        """Frame indices (ascending) for a sampling rule; see :func:`choose_indices`."""
        return choose_indices(self.times, self.info.fps, num_frames, fps, max_frames, start, end)

    # -- decoding ------------------------------------------------------------------------------------------
    def _to_array(self, frame) -> np.ndarray:
        self._check_pixels(frame.width, frame.height, "decoded")
        h, w = scaled_size(frame.height, frame.width, self.short_side)
        # one reformatter for the reader's life: FFmpeg's scaler context is built once and reused
        # (sws_getCachedContext), where ``frame.reformat`` / ``to_ndarray(format=)`` build one per frame (7-13 ms
        # of a 640x360 frame's conversion against 0.3-3 ms)
        if (h, w) != (frame.height, frame.width):
            array = self._reformatter.reformat(frame, width=w, height=h, format="rgb24",
                                               interpolation="BICUBIC").to_ndarray()
        else:
            array = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        rotation = int(round(frame.rotation or 0)) % 360 if self.rotate else 0
        self.info.rotation = rotation  # the display matrix rides on the frames (FFmpeg's side data)
        turns = rotation // 90 if rotation % 90 == 0 else 0
        return np.ascontiguousarray(np.rot90(array, turns)) if turns else array

    def _seek(self, index: int) -> None:
        """Position the decoder at the keyframe at or before frame ``index``."""
        k = int(np.searchsorted(self._key_index, index, side="right")) - 1
        self._seek_key(k)

    def _seek_key(self, k: int) -> None:
        if self._frames is not None:
            self._frames.close()
        target = int(self._key_seek[k])
        self.seeks += 1
        self._moved = True
        if k == 0 or target == np.iinfo(np.int64).min:
            self._container.seek(0, backward=True, any_frame=False)  # the very beginning of the file
        else:
            self._container.seek(target, backward=True, any_frame=False, stream=self._stream)
        self._frames = self._decode()
        self._last = int(self._key_index[k]) - 1
        self._key = k

    def _decode(self) -> Iterator[Any]:
        """The decoder's frames from the current position: ``container.decode`` packet by packet, except that a
        disposable packet (see :func:`disposable`) presented before the frame being decoded towards is not fed to
        the decoder (no frame needs it, and it is not wanted: indices only ascend). With a header index the
        first packet after a seek must be the keyframe the index says (else ``_HeaderMismatch``)."""
        stream, length_size = self._stream, self._length_size
        ctx = stream.codec_context
        expect = int(self._pts[self._key_index[self._key]]) if self._index.source == "header" else None
        for packet in self._container.demux(stream):
            if expect is not None and packet.size:
                if packet.pts != expect or not packet.is_keyframe:
                    raise _HeaderMismatch(f"the seek to the keyframe at {expect} gave a packet at {packet.pts}")
                expect = None
            if (length_size is not None and packet.size and packet.pts is not None and self._want_pts is not None
                    and packet.pts < self._want_pts and disposable(memoryview(packet), length_size)):
                self.skipped += 1
                continue
            yield from ctx.decode(packet)

    def _next(self) -> tuple[int, Any] | None:
        """The next decoded frame and its index (None at the end of the stream)."""
        assert self._frames is not None
        for frame in self._frames:
            self.decoded += 1
            if frame.pts is None:
                continue
            i = int(np.searchsorted(self._pts, frame.pts))
            if i >= len(self._pts) or self._pts[i] != frame.pts:
                if self._index.source == "header":
                    raise _HeaderMismatch(f"a frame at {frame.pts} is not in the header's index")
                continue  # a frame the index does not hold (an edit list's discarded lead-in)
            return i, frame
        return None

    def iter_frames(self, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(index, uint8 (H, W, 3)) for each of ``indices`` (ascending; repeats allowed), decoded run by run."""
        n = len(self._pts)
        prev = -1
        cached: tuple[int, np.ndarray] | None = None
        try:
            for want in indices:
                want = int(want)
                if not 0 <= want < n:
                    raise IndexError(f"frame {want} out of range: the video has {n} frames")
                if want < prev:
                    raise ValueError(f"frame indices must be ascending: {want} after {prev}")
                prev = want
                if cached is not None and cached[0] == want:
                    yield cached
                    continue
                yield want, self._decode_one(want)
                cached = (want, self._last_array)
        except av.FFmpegError as e:
            raise VideoDecodeError(f"cannot decode video near frame {prev} ({type(e).__name__}: {e})") from e

    def _decode_one(self, want: int) -> np.ndarray:
        try:
            return self._decode_towards(want)
        except _HeaderMismatch as e:  # the header's index was wrong: index by demux, as if it had never been used
            log.warning("video header index disagrees with its packets (%s): indexing every packet instead", e)
            header = self._index
            if self._frames is not None:
                self._frames.close()
                self._frames = None
            built = self._index_by_demux(self._stream)
            _cache_put(self._cache_key, built)
            self._set_index(built)
            if not np.array_equal(built.pts, header.pts):
                raise VideoDecodeError("the video's header index disagrees with its packets (frame indices "
                                       "chosen from it are not the video's); read it again: it is now indexed "
                                       "packet by packet") from e
            return self._decode_towards(want)

    def _decode_towards(self, want: int) -> np.ndarray:
        self._want_pts = int(self._pts[want])
        key = int(np.searchsorted(self._key_index, want, side="right")) - 1
        # seek when going back, or when the wanted frame's GOP starts after where the decoder is: the rest of
        # the current GOP is then never decoded. Even at 1 fps (a wanted frame every 30 of a GOP of 250) this
        # costs less CPU than decoding forward into the next GOP without a seek (5.1-5.3 s against 5.5-6.2 s for
        # the 10-minute 360p video, docs/data.md): the seek itself is an index lookup
        if self._frames is None or want <= self._last or int(self._key_index[key]) > self._last + 1:
            self._seek_key(key)
        tries = 0
        while True:
            got = self._next()
            if got is not None and got[0] < want:
                self._last = got[0]
                continue
            if got is not None and got[0] == want:
                self._last = want
                self._last_array = self._to_array(got[1])
                return self._last_array
            # passed the frame (or the stream ended) without seeing it: the seek landed late, or it is corrupt
            if self._index.source == "header":
                raise _HeaderMismatch(f"frame {want} (at {int(self._pts[want])}) was not decoded where expected")
            tries += 1
            back = int(np.searchsorted(self._key_index, want, side="right")) - 1 - tries
            if tries > 2 or back < 0:
                raise VideoDecodeError(f"frame {want} of {len(self._pts)} could not be decoded "
                                       f"(a corrupt or truncated stream)")
            self._seek_key(back)

    def read(self, indices: Sequence[int]) -> Tensor:
        """uint8 (F, H, W, 3) frames at ``indices`` (any order, repeats allowed), each decoded once and written
        straight into the output (no second copy of the frames kept)."""
        if not len(indices):
            raise ValueError("no frame indices to read")
        where: dict[int, list[int]] = {}
        for pos, i in enumerate(indices):
            where.setdefault(int(i), []).append(pos)
        out: np.ndarray | None = None
        for i, array in self.iter_frames(sorted(where)):
            if out is None:
                out = np.empty((len(indices), *array.shape), dtype=array.dtype)
            if array.shape != out.shape[1:]:
                raise VideoDecodeError(f"frame {i} is {array.shape[1]}x{array.shape[0]}, the first frame read "
                                       f"{out.shape[2]}x{out.shape[1]}: frame size changes mid-video")
            out[where[i]] = array
        return torch.from_numpy(out)

    def iter_chunks(self, indices: Iterable[int], chunk_frames: int) -> Iterator[Tensor]:
        """The frames at ``indices`` (ascending, repeats allowed; any iterable) as uint8 (k, H, W, 3) chunks of
        at most ``chunk_frames``: at most one chunk is held."""
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        pending: list[np.ndarray] = []
        for _, array in self.iter_frames(indices):
            pending.append(array)
            if len(pending) == chunk_frames:
                yield torch.from_numpy(np.stack(pending))
                pending = []
        if pending:
            yield torch.from_numpy(np.stack(pending))

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
            self._frames = None
        self._container.close()

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def choose_indices(times: np.ndarray, fps_avg: float, num_frames: int | None = None, fps: float | None = None,
                   max_frames: int | None = None, start: float | None = None, end: float | None = None) -> list[int]:
    """Frame indices (ascending) of a video whose frames are at ``times`` (seconds from the first frame):

    - a window ``[start, end)`` in seconds (either may be None) narrows the frames first;
    - ``num_frames``: spread uniformly over the window (the centre of each of ``num_frames`` segments, as
      :func:`~aurora.data.video.uniform_indices`; repeats when the window holds fewer frames);
    - ``fps``: one frame per ``1/fps`` seconds of the window (the frame shown at each sampling time; variable
      frame rates are sampled by time), at most ``max_frames`` (then spread uniformly over the window);
    - neither: every frame of the window (at most ``max_frames``, spread uniformly).
    """
    if num_frames is not None and fps is not None:
        raise ValueError("give num_frames or fps, not both")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    n = len(times)
    lo, hi = 0, n
    if start is not None or end is not None:
        if n > 1 and not times[-1] > 0:
            raise VideoDecodeError("video has no timing: a time window cannot be chosen")
        if start is not None and end is not None and not end > start:
            raise ValueError(f"time window end {end} must be after its start {start}")
        lo = int(np.searchsorted(times, start, side="left")) if start is not None else 0
        hi = int(np.searchsorted(times, end, side="left")) if end is not None else n
        if hi <= lo:
            lo = min(max(0, lo), n - 1)  # a window shorter than one frame: the frame shown at its start
            lo = max(0, int(np.searchsorted(times, start or 0.0, side="right")) - 1)
            hi = lo + 1
    count = hi - lo
    if num_frames is not None:
        return [lo + min(count - 1, int((i + 0.5) * count / num_frames)) for i in range(num_frames)]
    if fps is not None:
        if count > 1 and not times[hi - 1] > times[lo]:
            raise VideoDecodeError("video has no timing (zero or missing fps): sample it with num_frames")
        step = (times[hi - 1] - times[lo]) / (count - 1) if count > 1 else 0.0
        t0 = float(times[lo]) if start is None else float(start)
        t1 = float(times[hi - 1]) + step if end is None else float(end)
        want = max(1, round((t1 - t0) * fps))
        if max_frames is not None and want > max_frames:
            return [lo + min(count - 1, int((i + 0.5) * count / max_frames)) for i in range(max_frames)]
        at = t0 + (np.arange(want) + 0.5) / fps
        idx = np.clip(np.searchsorted(times, at, side="right") - 1, lo, hi - 1)
        return [int(i) for i in idx]
    if max_frames is not None and count > max_frames:
        return [lo + min(count - 1, int((i + 0.5) * count / max_frames)) for i in range(max_frames)]
    return list(range(lo, hi))


def read_frames(source: VideoSource, num_frames: int | None = None, fps: float | None = None,
                max_frames: int | None = None, start: float | None = None, end: float | None = None,
                short_side: int | None = None, max_pixels: int | None = None,
                max_video_frames: int | None = None) -> tuple[Tensor, list[int], VideoInfo]:
    """Sample and read one video: (uint8 (F, H, W, 3), the frame indices, its :class:`VideoInfo`)."""
    with FrameReader(source, short_side=short_side, max_pixels=max_pixels, max_frames=max_video_frames) as r:
        idx = r.indices(num_frames, fps, max_frames, start, end)
        return r.read(idx), idx, r.info


def full_decode(source: VideoSource, num_frames: int | None = None) -> Tensor:
    """Every frame decoded to RGB, then ``num_frames`` sampled uniformly: the reader the project had before
    :class:`FrameReader`, kept as the reference of the tests and the baseline of ``aurora bench decode`` only
    (it holds the whole video in memory)."""
    container = _open(source)
    try:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except Exception as e:
        raise VideoDecodeError(f"cannot decode video ({type(e).__name__}: {e})") from e
    finally:
        container.close()
    if not frames:
        raise VideoDecodeError("video has no decodable frames")
    if num_frames is not None:
        frames = [frames[min(len(frames) - 1, int((i + 0.5) * len(frames) / num_frames))] for i in range(num_frames)]
    return torch.from_numpy(np.stack(frames))


# ------------------------------------------------------------------------------------------------ peers
BACKENDS = ("aurora", "aurora-plain", "aurora-demux", "full", "full-stream", "decord2", "torchcodec")


def backend_unavailable(name: str) -> str | None:
    """Why ``name`` cannot run here (None: it can). ``aurora``, ``aurora-plain``, ``aurora-demux``, ``full`` and
    ``full-stream`` (this module) always can."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; known: {', '.join(BACKENDS)}"
    module = {"decord2": "decord", "torchcodec": "torchcodec.decoders"}.get(name)
    if module is None:
        return None
    import importlib

    try:
        importlib.import_module(module)
    except Exception as e:  # not installed, or its FFmpeg libraries / torch build do not match
        how = ("pip install 'aurora-long[torchcodec]' (CUDA torch) and apt-get install ffmpeg, or build torchcodec "
               "from source for a CPU torch (docs/data.md)") if name == "torchcodec" else "pip install 'aurora-long[peers]'"
        return f"{name} not usable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {how}"
    return None


def read_with(backend: str, source: str | os.PathLike, num_frames: int | None = None, fps: float | None = None,
              short_side: int | None = None, indices: Sequence[int] | None = None,
              stats: dict[str, Any] | None = None) -> Tensor:
    """uint8 (F, H, W, 3): the same sampling (``num_frames`` uniform, or ``fps`` by time) read by one backend:
    ``aurora`` (:class:`FrameReader`), ``aurora-plain`` (the same without skipping non-reference packets, to
    measure what that saves), ``aurora-demux`` (the same indexed by demux, never from the header), ``full`` (:func:`full_decode`, the old reader), ``full-stream`` (the full decode's
    work, every frame decoded and converted to RGB, keeping only the sampled ones: its time without its memory,
    for videos whose full decode would not fit), or the peers ``decord2`` /
    ``torchcodec`` where installed (their own seek and resize; for the benchmark and users who have them).

    ``indices`` (ascending frame indices, e.g. :meth:`FrameReader.indices`) replaces the sampling rule, so that
    every backend reads the same frames. Without it the backends other than ``aurora`` sample by their own
    frame count and average rate (frame ``i`` at ``i / average_fps``): the same frames for uniform
    ``num_frames`` on any video, but for ``fps`` only where the frame rate is constant and the first frame is
    at time 0 (ours samples by each frame's presentation timestamp). ``stats``, when given, receives what our
    reader's read cost (frames decoded, packets skipped, seeks, the index's source)."""
    reason = backend_unavailable(backend)
    if reason:
        raise RuntimeError(reason)

    def choose(total: int, fps_avg: float) -> list[int]:
        if indices is not None:
            return [int(i) for i in indices]
        return choose_indices(np.arange(total) / (fps_avg or 1.0), 0.0, num_frames, fps)

    if backend in ("aurora", "aurora-plain", "aurora-demux"):
        with FrameReader(source, short_side=short_side, skip_disposable=backend != "aurora-plain",
                         index="demux" if backend == "aurora-demux" else "auto") as r:
            out = r.read(list(indices) if indices is not None else r.indices(num_frames, fps))
            if stats is not None:
                stats.update(decoded=r.decoded, skipped=r.skipped, seeks=r.seeks, index_source=r.index_source)
            return out
    if backend == "full-stream":
        with FrameReader(source) as r:  # only for the frame count; the decode below is front to back
            total = len(r)
        idx = choose(total, probe_fps(source))
        where: dict[int, list[int]] = {}
        for pos, i in enumerate(idx):
            where.setdefault(i, []).append(pos)
        out: np.ndarray | None = None
        container = _open(source)
        try:
            for i, frame in enumerate(container.decode(video=0)):
                array = frame.to_ndarray(format="rgb24")  # every frame, as the full decode converts them
                if i in where:
                    if out is None:
                        out = np.empty((len(idx), *array.shape), np.uint8)
                    out[where[i]] = array
        finally:
            container.close()
        if out is None:
            raise VideoDecodeError("video has no decodable frames")
        return torch.from_numpy(out)
    if backend == "full":
        frames = full_decode(source)
        return frames[choose(len(frames), probe_fps(source))]
    if backend == "decord2":
        import decord

        probe = decord.VideoReader(str(source), num_threads=0)
        h, w = probe[0].shape[:2] if len(probe) else (0, 0)
        sh, sw = scaled_size(h, w, short_side)
        vr = probe if (sh, sw) == (h, w) else decord.VideoReader(str(source), width=sw, height=sh, num_threads=0)
        return torch.from_numpy(vr.get_batch(choose(len(vr), vr.get_avg_fps())).asnumpy())
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(str(source), seek_mode="exact", dimension_order="NHWC")
    meta = dec.metadata
    frames = dec.get_frames_at(indices=choose(meta.num_frames, meta.average_fps)).data
    if short_side is not None and min(frames.shape[1:3]) > short_side:
        sh, sw = scaled_size(frames.shape[1], frames.shape[2], short_side)
        frames = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=(sh, sw),
                                                 mode="bilinear", antialias=True).round().clamp(0, 255)
        frames = frames.to(torch.uint8).permute(0, 2, 3, 1)
    return frames


def probe_fps(source: VideoSource) -> float:
    container = _open(source)
    try:
        return float(container.streams.video[0].average_rate or 0.0)
    finally:
        container.close()
