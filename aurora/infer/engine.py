"""Streaming inference: answer a question about a video of any length with memory that does not grow with it.

    aurora ask --ckpt runs/demo/checkpoints/last.ckpt --video V.mp4 --question "..." [--fps F | --frames N]
               [--chunk-frames K] [--max-new-tokens N --temperature T --top-p P --seed S --stop S ...]
               [--context TEXT] [--save-state P.safetensors | --load-state P.safetensors]
    aurora ask --ckpt C --shards DIR_OR_GLOB --out preds.jsonl [--frames N | --fps F] [...]

The video is decoded front to back (PyAV, no seeking), keeping only the sampled frames, ``--chunk-frames`` at a
time; each chunk is preprocessed (:func:`aurora.data.video.to_pixels`), encoded and merged by the model's vision
encoder and projector (:meth:`AuroraModel.encode_video`), and its visual tokens go straight into the language
model, which carries its recurrent state from chunk to chunk (``hidden, state = rnn(embeds, state)``; feeding a
sequence in pieces equals feeding it at once). No more than one chunk of frames or visual tokens is ever held:
the memory is the model, one chunk's activations and the state, which for a linear RNN has a fixed size (for the
``transformer`` baseline the state is its key/value cache, which grows with every token: the comparison
``aurora bench memory`` draws).

The prompt is the sandwich the model was trained with (:class:`aurora.data.prompt.PromptTemplate`): the text
before the ``<video>`` placeholder, then the video chunk by chunk, then the text after, then generation, so the
answer is token for token the one :meth:`AuroraModel.generate` gives on the same frames.

State reuse. The sandwich puts the instruction before the video too, so the state after the video depends on
it. A saved state is therefore "``before(context)`` + video", where ``context`` is the instruction read before the
video (``--context``; by default the question itself, i.e. exactly the trained prompt). Asking a question ``Q``
from a saved state feeds ``after(Q)`` and generates: the same answer as reading ``before(context)``, the video
and ``after(Q)`` from scratch (the test checks it token for token). Use a generic context (e.g. "Describe the
video.") to ask many questions about one video; the answer to ``Q`` then is the answer to the prompt
``before(context) <video> after(Q)``, which differs from the trained prompt ``before(Q) <video> after(Q)``
whenever ``context != Q``. A state file records the model's weight fingerprint, the preprocessing and the
template; loading it into another model or setup is an error.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from aurora.data.prompt import PromptTemplate, Tokenizer
from aurora.data.reader import FrameReader
from aurora.data.video import (DEFAULT_MEAN, DEFAULT_STD, VideoSource, iter_frame_chunks, sample_indices,
                               to_pixels)
from aurora.io import atomic_write

log = logging.getLogger(__name__)
STATE_FORMAT = "aurora-stream-state/1"
STATE_DTYPES = {"float32", "float16", "bfloat16", "int64", "int32", "bool"}  # what a backbone's state holds


class StreamError(ValueError):
    """Input the streaming engine cannot use: a state from another model, a merge that cannot be streamed, ..."""


# ------------------------------------------------------------------------------------------------ state files


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, Tensor], Any]:
    """A nested list / tuple / dict of tensors (and None, numbers, strings) -> (flat ``{key: tensor}``, a JSON
    spec of the structure). Every backbone's state has this form; :func:`unflatten_state` inverts it."""
    tensors: dict[str, Tensor] = {}

    def walk(x: Any, key: str) -> Any:
        if isinstance(x, Tensor):
            tensors[key] = x
            return {"t": "tensor", "k": key}
        if isinstance(x, (list, tuple)):
            return {"t": type(x).__name__, "v": [walk(v, f"{key}.{i}" if key else str(i)) for i, v in enumerate(x)]}
        if isinstance(x, Mapping):
            if not all(isinstance(k, str) for k in x):
                raise TypeError(f"state dict keys must be strings, got {list(x)!r}")
            return {"t": "dict", "v": {k: walk(v, f"{key}.{k}" if key else k) for k, v in x.items()}}
        if x is None or isinstance(x, (bool, int, float, str)):
            return {"t": "value", "v": x}
        raise TypeError(f"cannot store a {type(x).__name__} in a state file (at {key or 'the top'})")

    return tensors, walk(state, prefix)


def unflatten_state(tensors: Mapping[str, Tensor], spec: Any) -> Any:
    """The nested state :func:`flatten_state` took apart."""
    kind = spec["t"]
    if kind == "tensor":
        if spec["k"] not in tensors:
            raise StreamError(f"state file lacks tensor {spec['k']!r}")
        return tensors[spec["k"]]
    if kind in ("list", "tuple"):
        items = [unflatten_state(tensors, v) for v in spec["v"]]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: unflatten_state(tensors, v) for k, v in spec["v"].items()}
    if kind == "value":
        return spec["v"]
    raise StreamError(f"unknown entry {kind!r} in a state file's structure")


@dataclass
class VideoState:
    """The language model's state after reading ``before(context)`` and a video: what ``--save-state`` writes.

    ``logits`` (1, vocab) are those after the last video token (generation starts from them when the template
    has no text after the video); ``meta`` says what was read (video, frames, sampling) and by which model and
    preprocessing (checked on load)."""

    state: Any
    logits: Tensor
    context: str | None  # the text read before the video (None: nothing)
    frames: int
    positions: int  # tokens read: prefix text + visual tokens
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file (tensors + the structure and metadata as JSON in its header), atomically."""
        from safetensors.torch import save_file

        tensors, spec = flatten_state(self.state, "state")
        # safetensors wants contiguous, unshared CPU tensors
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        tensors["logits"] = self.logits.detach().to("cpu").contiguous().clone()
        header = {"format": STATE_FORMAT, "structure": spec, "context": self.context, "frames": self.frames,
                  "positions": self.positions, "meta": self.meta}
        header["checksum"] = state_checksum(tensors, header)
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"aurora": json.dumps(header)}))

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "VideoState":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"state file not found: {path}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = json.loads((f.metadata() or {}).get("aurora", "null"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # not a safetensors file, truncated, ...
            raise StreamError(f"cannot read state file {path} ({type(e).__name__}: {e})") from e
        if not isinstance(header, dict) or header.get("format") != STATE_FORMAT:
            raise StreamError(f"{path} is not an aurora state file (written by `aurora ask --save-state`)")
        check_state_file(path, header, tensors)
        tensors = {k: v.to(device) for k, v in tensors.items()}
        return cls(state=unflatten_state(tensors, header["structure"]), logits=tensors["logits"],
                   context=header["context"], frames=header["frames"], positions=header["positions"],
                   meta=header["meta"])


def state_checksum(tensors: Mapping[str, Tensor], header: Mapping[str, Any]) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) and the header (without its checksum): an edited
    tensor (NaN, 1e4) or header field (frames 999999) no longer matches. Not a signature: it catches edits and
    damage, and the setup check then ties the state to the model."""
    import hashlib

    h = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_state_file(path: Path, header: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
    """Every header field with its type, the checksum, the tensors' dtypes and values: one StreamError naming
    the first problem (a state file is input like any other: it may be damaged, edited or forged)."""
    where = f"state file {path}"
    fields = {"structure": dict, "context": str, "frames": int, "positions": int, "meta": dict, "checksum": str}
    for name, kind in fields.items():
        if name not in header:
            raise StreamError(f"{where}: the header has no {name!r}")
        value = header[name]
        if name == "context" and value is None:  # nothing was read before the video (lead none)
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise StreamError(f"{where}: header field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    if header["frames"] < 0 or header["positions"] < header["frames"]:
        raise StreamError(f"{where}: {header['frames']} frames in {header['positions']} positions is impossible "
                          "(every frame is at least one position)")
    setup = header["meta"].get("setup")
    if setup is not None and not (isinstance(setup, dict) and all(isinstance(k, str) for k in setup)):
        raise StreamError(f"{where}: meta.setup must be a mapping of setting names, got {type(setup).__name__}")
    if "logits" not in tensors:
        raise StreamError(f"{where}: it holds no 'logits' tensor")
    if state_checksum(tensors, header) != header["checksum"]:
        raise StreamError(f"{where}: the checksum does not match its tensors and header (edited or damaged)")
    for name, t in tensors.items():
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in STATE_DTYPES:
            raise StreamError(f"{where}: tensor {name!r} is {dtype}; a state holds {', '.join(sorted(STATE_DTYPES))}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise StreamError(f"{where}: tensor {name!r} holds NaN or infinite values")
    try:
        _check_structure(header["structure"], tensors)
    except (KeyError, TypeError, AttributeError) as e:
        raise StreamError(f"{where}: malformed structure ({type(e).__name__}: {e})") from None


def _check_structure(spec: Any, tensors: Mapping[str, Tensor]) -> None:
    kind = spec["t"]
    if kind == "tensor":
        if not isinstance(spec["k"], str) or spec["k"] not in tensors:
            raise StreamError(f"state file lacks tensor {spec['k']!r}")
    elif kind in ("list", "tuple"):
        for v in spec["v"]:
            _check_structure(v, tensors)
    elif kind == "dict":
        for v in spec["v"].values():
            _check_structure(v, tensors)
    elif kind != "value":
        raise StreamError(f"unknown entry {kind!r} in a state file's structure")


def same_layout(saved: Any, fresh: Any, where: str = "state", longer: Any = None) -> None:
    """A loaded state must have the structure, shapes and dtypes of the state this engine makes (``fresh``, after
    one token; ``longer``, after two, tells which dimensions grow with the text read, as a KV cache does: those
    may have any size): StreamError naming the first difference."""
    if isinstance(fresh, Tensor):
        if not isinstance(saved, Tensor):
            raise StreamError(f"{where}: a tensor expected, the file has {type(saved).__name__}")
        free = ({i for i, (a, b) in enumerate(zip(fresh.shape, longer.shape)) if a != b}
                if isinstance(longer, Tensor) and longer.dim() == fresh.dim() else set())
        fits = saved.dim() == fresh.dim() and all(i in free or a == b for i, (a, b) in enumerate(zip(saved.shape, fresh.shape)))
        if not fits or saved.dtype != fresh.dtype:
            raise StreamError(f"{where}: {saved.dtype} {tuple(saved.shape)} in the file, this model makes "
                              f"{fresh.dtype} {tuple(fresh.shape)}")
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            raise StreamError(f"{where}: {len(fresh)} entries expected")
        for i, (a, b) in enumerate(zip(saved, fresh)):
            same_layout(a, b, f"{where}.{i}", longer[i] if isinstance(longer, (list, tuple)) else None)
    elif isinstance(fresh, Mapping):
        if not isinstance(saved, Mapping) or set(saved) != set(fresh):
            raise StreamError(f"{where}: keys {sorted(fresh)} expected")
        for k in fresh:
            same_layout(saved[k], fresh[k], f"{where}.{k}", longer.get(k) if isinstance(longer, Mapping) else None)


# ------------------------------------------------------------------------------------------------ generation


@dataclass
class Generation:
    """Decoding settings: greedy when ``temperature`` is 0, else sampling from softmax(logits / temperature)
    restricted to the smallest set of tokens with probability >= ``top_p`` (nucleus), seeded by ``seed``.
    Stops after ``max_new_tokens``, at ``eos_id``, or when the text contains a ``stop`` string (cut off)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: Sequence[str] = ("\n\n",)
    eos_id: int | None = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Answer:
    text: str  # the answer, stripped, cut at the stop string
    tokens: list[int]  # every generated token (a stop string's tokens included, EOS not)
    finish: str  # "stop", "eos" or "length"
    scores: list[Tensor] | None = None  # the logits each token was chosen from (keep_scores)


def next_token(logits: Tensor, temperature: float = 0.0, top_p: float = 1.0,
               generator: torch.Generator | None = None) -> int:
    """One token from (vocab,) logits: the argmax, or a seeded nucleus sample."""
    if temperature == 0:
        return int(logits.argmax(-1))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the first token is always kept
        sorted_p = sorted_p * keep
        return int(order[torch.multinomial(sorted_p, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


# ------------------------------------------------------------------------------------------------ the engine


class StreamEngine:
    """Streams videos through an :class:`~aurora.model.AuroraModel` (see the module docstring).

    Args:
        model: the model (its device and dtype are used as they are).
        tokenizer, template: the text side (defaults: RWKV World tokenizer, the sandwich template).
        image_size, mean, std: the preprocessing (:func:`to_pixels`); the image size defaults to the encoder's.
        chunk_frames: frames decoded, encoded and read per step.
        progress: a tqdm bar over the frames (on stderr).
    """

    def __init__(self, model, tokenizer: Tokenizer | None = None, template: PromptTemplate | None = None,
                 image_size: int | None = None, mean: Sequence[float] = DEFAULT_MEAN,
                 std: Sequence[float] = DEFAULT_STD, chunk_frames: int = 16, progress: bool = False) -> None:
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.model = model.eval()
        self.rnn = model.rnn
        self.tokenizer = tokenizer or Tokenizer()
        self.template = template or PromptTemplate()
        if image_size is None:
            config = getattr(model.vision, "config", None)
            image_size = getattr(config, "image_size", None)
            if image_size is None:
                raise StreamError("the vision encoder does not say its image size: give image_size")
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.chunk_frames, self.progress = chunk_frames, progress
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._fingerprint: str | None = None
        self._check_streamable()

    # -- what a state depends on ---------------------------------------------------------------------------
    def _check_streamable(self) -> None:
        """A video-wide ordering sorts all of a video's tokens as one row: chunks would sort within each chunk."""
        merge = getattr(self.model.vision, "merge", None)
        order = getattr(merge, "order", None)
        try:
            from aurora.components.merge.order import VIDEO, scope
        except ImportError:  # an older merge package without orderings across frames
            return
        if order is not None and scope(order) == VIDEO:
            name = getattr(merge, "order_name", getattr(order, "__name__", "?"))
            raise StreamError(
                f"merge order {name!r} sorts the tokens of a whole video as one row, which cannot be read in "
                "chunks without holding every visual token; stream a model with a per-frame order "
                "(e.g. size_ascending)")

    def fingerprint(self) -> str:
        """sha256 of the model's weights (computed once, on first use)."""
        if self._fingerprint is None:
            from aurora.components.vision.cache import weights_fingerprint

            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def setup(self) -> dict[str, Any]:
        """Everything besides the video and context that the state after the video depends on."""
        merge = getattr(self.model.vision, "merge", None)
        return {
            "model": self.fingerprint(), "dtype": str(self.dtype).removeprefix("torch."),
            "merge": merge.spec() if hasattr(merge, "spec") else type(merge).__name__,
            "image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
            "before": self.template.before, "after": self.template.after,
        }

    # -- reading -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def read_ids(self, ids: Sequence[int], state: Any = None) -> tuple[Tensor | None, Any]:
        """Token ids through the language model; returns the last position's hidden state (None if no ids)."""
        if not len(ids):
            return None, state
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        hidden, state = self.rnn(self.rnn.embed(x), state)
        return hidden[:, -1].clone(), state  # not a view: the rest of ``hidden`` is freed

    @torch.no_grad()
    def encode_chunk(self, frames: Tensor) -> Tensor:
        """uint8 frames (k, H, W, 3) -> visual embeddings (1, k*n, d_model), as :meth:`AuroraModel.encode_video`."""
        pixels = to_pixels(frames, self.image_size, self.mean, self.std)
        video, vt = self.model.encode_video(pixels[None].to(self.device, self.dtype))
        if vt.row_frames > 1 and frames.shape[0] % vt.row_frames:
            raise StreamError(f"the merge groups {vt.row_frames} frames per row, but a chunk holds "
                              f"{frames.shape[0]}: --chunk-frames ({self.chunk_frames}) and the number of frames "
                              f"read must be multiples of {vt.row_frames}")
        return video

    def frame_indices(self, source: VideoSource | FrameReader, frames: int | None = None, fps: float | None = None,
                      max_frames: int | None = None, start: float | None = None,
                      end: float | None = None) -> Sequence[int]:
        """The sampled frame indices: ``frames`` uniform over the video (a lazy sequence, the training reader's
        indices), or ``fps`` frames a second (at most ``max_frames``), optionally inside ``[start, end)``
        seconds (see :func:`~aurora.data.reader.choose_indices`)."""
        if isinstance(source, FrameReader):
            if fps is None and max_frames is None and start is None and end is None:
                return sample_indices(source.info, num_frames=frames)
            return source.indices(frames, fps, max_frames, start, end)
        with FrameReader(source) as reader:
            return self.frame_indices(reader, frames, fps, max_frames, start, end)

    def lead_context(self, question: str, lead: str | None = None) -> str | None:
        """The ``context`` :meth:`read_video` takes for a prompt lead (default: the template's lead at inference):
        the question (the sandwich), the template's generic instruction, or None (nothing before the video)."""
        lead = self.template.lead_at_inference if lead is None else lead
        if lead == "question":
            return question
        if lead == "generic":
            return self.template.generic
        if lead == "none":
            return None
        raise ValueError(f"unknown prompt lead {lead!r}; known: question, generic, none")

    @torch.no_grad()
    def read_video(self, source: VideoSource, context: str | None, frames: int | None = None,
                   fps: float | None = None, name: str | None = None, max_frames: int | None = None,
                   start: float | None = None, end: float | None = None, snapshot_every: float | None = None,
                   on_snapshot=None, until: float | None = None, resume: "VideoState | None" = None) -> VideoState:
        """``before(context)`` (nothing when ``context`` is None) then the video's sampled frames, chunk by chunk:
        the state after the video. The video is read by keyframe seek and resized to ``image_size`` inside FFmpeg
        (:class:`~aurora.data.reader.FrameReader`): its cost is the frames kept, not its length. ``frames``,
        ``fps``, ``max_frames``, ``start`` / ``end`` (seconds) choose them (:meth:`frame_indices`).

        Moments in time: a frame's time is its presentation time from the first frame. ``until`` stops after the last
        sampled frame at or before that time (the state "as of" that moment); ``resume`` continues a state that
        was read up to ``resume.meta["until"]`` (a snapshot), reading only the sampled frames after it, and takes
        its context. ``snapshot_every`` calls ``on_snapshot(state)`` with the state as of every multiple of that
        many seconds (each constant-size) and at the end."""
        with FrameReader(source, short_side=self.image_size) as reader:
            return self._read(reader, source, context, frames, fps, name, max_frames, start, end, snapshot_every,
                              on_snapshot, until, resume)

    def _read(self, reader: FrameReader, source, context, frames, fps, name, max_frames, start, end,
              snapshot_every, on_snapshot, until, resume) -> VideoState:
        indices = self.frame_indices(reader, frames, fps, max_frames, start, end)
        times = reader.times  # seconds from the first frame: a frame's moment
        if resume is not None:
            if "until" not in (resume.meta or {}):
                raise StreamError("that state holds the whole video, not a moment of it: continue only from a "
                                  "snapshot (aurora ask --snapshot-every)")
            context, state, positions = resume.context, resume.state, resume.positions
            after, last, logits0 = float(resume.meta["until"]), None, resume.logits
        else:
            prefix = self.tokenizer.encode(self.template.before.format(question=context)) if context is not None else []
            last, state = self.read_ids(prefix)
            positions, after, logits0 = len(prefix), -1.0, None
        stop = math.inf if until is None else float(until)
        wanted = [i for i in indices if after < times[i] <= stop] if (resume is not None or until is not None) \
            else indices
        # the snapshot boundary each wanted frame belongs to (a frame at time t belongs to the first multiple of
        # snapshot_every at or after t); reading is one pass, and a chunk is split where a boundary falls inside it
        boundary_of = None
        boundaries: list[float] = []
        if snapshot_every is not None:
            if snapshot_every <= 0:
                raise ValueError(f"snapshot_every must be > 0 seconds, got {snapshot_every}")
            boundary_of = [math.ceil(times[i] / snapshot_every - 1e-9) for i in wanted]
            last_t = min(times[indices[-1]] if len(indices) else 0.0, stop)
            first_k = math.ceil(after / snapshot_every + 1e-9) if after >= 0 else 0
            boundaries = [k * snapshot_every for k in range(first_k, math.ceil(last_t / snapshot_every - 1e-9) + 1)]
        read = resume.frames if resume is not None else 0
        first = resume.meta.get("first_frame") if resume is not None else None
        latest = resume.meta.get("last_frame") if resume is not None else None

        def state_now(until_t: float | None) -> VideoState:
            logits = self.rnn.logits(last) if last is not None else logits0
            if logits is None:
                raise StreamError("nothing was read: no sampled frame falls at or before that moment and no text "
                                  "was read before the video")
            meta = {"video": name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>"),
                    "indices": len(indices),
                    "sampling": {"frames": frames, "fps": fps, "max_frames": max_frames, "start": start, "end": end},
                    "first_frame": first, "last_frame": latest}
            if until_t is not None:
                meta["until"] = float(until_t)
            return VideoState(state=state, logits=logits, context=context, frames=read, positions=positions,
                              meta=meta)

        def snapshots_up_to(k: int | None) -> None:  # every boundary before frame group k (all when None)
            while boundaries and (k is None or boundaries[0] < k * snapshot_every - 1e-9):
                t = boundaries.pop(0)
                if on_snapshot is not None:
                    on_snapshot(state_now(min(t, stop)))

        from tqdm.auto import tqdm

        pos = 0  # wanted[pos] is the next frame to come out of the decoder
        with tqdm(total=len(wanted), unit="frame", desc="reading video", disable=not self.progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for chunk in iter_frame_chunks(reader, wanted, self.chunk_frames):
                lo = 0
                while lo < chunk.shape[0]:
                    hi = chunk.shape[0]
                    if boundary_of is not None:
                        k = boundary_of[pos + lo]
                        snapshots_up_to(k)
                        hi = lo + 1
                        while hi < chunk.shape[0] and boundary_of[pos + hi] == k:
                            hi += 1
                    video = self.encode_chunk(chunk[lo:hi])
                    hidden, state = self.rnn(video.to(self.dtype), state)  # as AuroraModel.splice casts it
                    last, positions = hidden[:, -1].clone(), positions + video.shape[1]
                    first = wanted[pos + lo] if first is None else first
                    latest, read = wanted[pos + hi - 1], read + hi - lo
                    del video, hidden  # nothing of a chunk outlives it but the state
                    lo = hi
                pos += chunk.shape[0]
                bar.update(chunk.shape[0])
                del chunk
        snapshots_up_to(None)
        return state_now(stop if until is not None else None)

    def check_state(self, vs: VideoState) -> None:
        """A loaded state must come from this model, preprocessing and template."""
        saved = (vs.meta or {}).get("setup")
        if not saved:
            raise StreamError("the state file has no record of the model it came from; it cannot be checked")
        mine = self.setup()
        diff = [k for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)]
        if diff:
            detail = "; ".join(f"{k}: state {saved.get(k)!r} vs now {mine.get(k)!r}" for k in diff
                               if k != "model")
            if "model" in diff:
                detail = "the model's weights differ" + (f"; {detail}" if detail else "")
            raise StreamError(f"the state was computed with another setup: {detail}")
        last, fresh = self.read_ids([self.tokenizer.eos_id])  # one token: the layout this model's state has
        _, longer = self.read_ids([self.tokenizer.eos_id] * 2)
        same_layout(vs.state, fresh, longer=longer)
        same_layout(vs.logits, self.rnn.logits(last).reshape(1, -1), "logits")

    # -- answering -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, vs: VideoState, question: str, gen: Generation | None = None,
               keep_scores: bool = False) -> Answer:
        """``after(question)`` from the state after the video, then decoding. ``vs`` is left untouched (the
        backbones return a new state), so several questions can be asked from one state."""
        gen = gen or Generation(stop=(self.template.stop,) if self.template.stop else ())
        after = self.tokenizer.encode(self.template.after.format(question=question))
        last, state = self.read_ids(after, vs.state)
        logits = self.rnn.logits(last) if last is not None else vs.logits
        return self.decode(logits, state, gen, keep_scores)

    @torch.no_grad()
    def option_scores(self, vs: VideoState, question: str, options: Sequence[str]) -> list[float]:
        """Log-likelihood of each option as the model answers it (the template's ``answer`` around the option),
        each scored from a fork of the state after ``after(question)``: the video is read once for all of them."""
        after = self.tokenizer.encode(self.template.after.format(question=question))
        last, state = self.read_ids(after, vs.state)
        logits = self.rnn.logits(last) if last is not None else vs.logits
        conts = [self.tokenizer.encode(self.template.answer.format(answer=o)) for o in options]
        return self.model.continuation_scores(logits, state, conts)

    @torch.no_grad()
    def decode(self, logits: Tensor, state: Any, gen: Generation, keep_scores: bool = False) -> Answer:
        """Generate from the last logits (1, vocab) and the state after them."""
        generator = None
        if gen.temperature > 0:
            generator = torch.Generator(device=logits.device).manual_seed(gen.seed)
        tokens: list[int] = []
        scores: list[Tensor] = []
        stops = [s for s in gen.stop if s]
        finish, text = "length", ""

        def pick(logits: Tensor) -> Tensor:
            if keep_scores:
                scores.append(logits[0].float().cpu())
            return torch.tensor([next_token(logits[0], gen.temperature, gen.top_p, generator)], device=logits.device)

        def take(_: int, tok: int) -> bool:
            nonlocal finish, text
            if gen.eos_id is not None and tok == gen.eos_id:
                finish = "eos"
                return True
            tokens.append(tok)
            text = self.tokenizer.decode(tokens)
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                return True
            return False

        self.model.decode_steps(logits, state, gen.max_new_tokens, pick, take)
        return Answer(text=text.strip(), tokens=tokens, finish=finish, scores=scores if keep_scores else None)

    def ask(self, source: VideoSource, question: str, frames: int | None = None, fps: float | None = None,
            gen: Generation | None = None, context: str | None = None, keep_scores: bool = False,
            max_frames: int | None = None, start: float | None = None, end: float | None = None) -> Answer:
        """One question about one video, read from scratch: the trained prompt when ``context`` is None."""
        vs = self.read_video(source, self.lead_context(question) if context is None else context, frames, fps,
                             max_frames=max_frames, start=start, end=end)
        return self.answer(vs, question, gen, keep_scores)

    def save_state(self, vs: VideoState, path: str | os.PathLike) -> Path:
        """Write ``vs`` with this engine's setup (model fingerprint, preprocessing, template) for the load check."""
        vs.meta = {**(vs.meta or {}), "setup": self.setup()}  # the fingerprint: one pass over the weights
        return vs.save(path)

    # -- moments in time -----------------------------------------------------------------------------------
    def snapshot_writer(self, folder: str | os.PathLike):
        """An ``on_snapshot`` callback for :meth:`read_video` that saves each state as of a moment into
        ``folder`` (``at-SSSSSS.sss.safetensors``, each with this engine's setup) and keeps ``snapshots.json``,
        the index of moments and files, up to date (written atomically after every snapshot)."""
        from aurora.io import write_json

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        index: list[dict[str, Any]] = []

        def write(vs: VideoState) -> None:
            name = f"at-{vs.meta['until']:010.3f}.safetensors"
            self.save_state(vs, out / name)
            index.append({"at": vs.meta["until"], "file": name, "frames": vs.frames})
            write_json(out / "snapshots.json", {"format": STATE_FORMAT, "video": vs.meta.get("video"),
                                                "sampling": vs.meta.get("sampling"), "snapshots": index})

        return write

    def load_snapshot(self, folder: str | os.PathLike, at: float) -> VideoState:
        """The saved state nearest before the moment ``at`` (seconds) from a folder :meth:`snapshot_writer`
        filled, checked against this engine like :meth:`load_state`."""
        folder = Path(folder)
        index_path = folder / "snapshots.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"no snapshots.json in {folder} (write one with aurora ask --snapshot-every "
                                    "SECONDS --save-state DIR)")
        try:
            index = json.loads(index_path.read_text())["snapshots"]
            moments = sorted((float(e["at"]), str(e["file"])) for e in index)
        except (ValueError, KeyError, TypeError) as e:
            raise StreamError(f"{index_path} is not a snapshot index ({type(e).__name__}: {e})") from e
        before = [(t, f) for t, f in moments if t <= at + 1e-9]
        if not before:
            raise StreamError(f"no snapshot at or before {at:g} s in {folder} (the first is at {moments[0][0]:g} s)"
                              if moments else f"{folder} holds no snapshot")
        t, name = before[-1]
        if Path(name).name != name:  # the index names files inside its own folder, nothing else
            raise StreamError(f"{index_path} names a file outside its folder: {name!r}")
        return self.load_state(folder / name)

    def load_state(self, path: str | os.PathLike) -> VideoState:
        """A saved state, checked against this engine's setup (same weights, dtype, preprocessing, template)."""
        vs = VideoState.load(path, self.device)
        self.check_state(vs)
        return vs


# ------------------------------------------------------------------------------------------------ loading


def engine_from_checkpoint(ckpt: str | os.PathLike, config: str | os.PathLike | None = None,
                           chunk_frames: int = 16, device: str | None = None, dtype: str = "float32",
                           progress: bool = False, required: bool = True) -> tuple[StreamEngine, dict[str, Any]]:
    """A :class:`StreamEngine` for a checkpoint written by ``aurora fit``; the preprocessing, template and tokenizer
    come from :func:`aurora.infer.runconfig.inference_settings` (``config`` if given, else what the checkpoint
    carries, else the run's ``config.yaml``; none of them is an error unless ``required=False``, when the caller
    gives the sampling itself and the vision encoder's image size and the default mean / std are used, said in
    ``info["config"]``). Returns the engine and ``{"hparams", "data", "config"}``."""
    from aurora.checkpoint import read_checkpoint
    from aurora.data.tokenizers import build_tokenizer
    from aurora.infer.runconfig import inference_settings
    from aurora.model import load_model

    model, hp = load_model(ckpt)  # a checkpoint that does not fit is named first
    data = inference_settings(ckpt, config, required=required, blob=read_checkpoint(ckpt))
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unknown dtype {dtype!r}; known: float32, bfloat16, float16")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device=dev, dtype=getattr(torch, dtype))
    engine = StreamEngine(model, tokenizer=build_tokenizer(data.get("tokenizer")),
                          template=PromptTemplate(**(data.get("template") or {})),
                          image_size=data.get("image_size"), mean=tuple(data.get("mean") or DEFAULT_MEAN),
                          std=tuple(data.get("std") or DEFAULT_STD), chunk_frames=chunk_frames, progress=progress)
    source = data.get("source") or (f"no saved settings: the encoder's image size {engine.image_size} and the "
                                    "default mean / std")
    return engine, {"hparams": hp, "data": data, "config": source}


def parse_moment(text: str) -> float:
    """Seconds from ``HH:MM:SS(.fff)``, ``MM:SS`` or plain seconds."""
    try:
        parts = [float(p) for p in str(text).split(":")]
    except ValueError:
        raise ValueError(f"a moment is HH:MM:SS, MM:SS or seconds, got {text!r}") from None
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts) or any(p >= 60 for p in parts[1:]):
        raise ValueError(f"a moment is HH:MM:SS, MM:SS or seconds, got {text!r}")
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds
