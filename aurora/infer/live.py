"""Reading a live source into a state while questions are answered from it (``aurora ask --video SRC --live``,
``--interactive``).

:class:`LiveReader` reads ``before(context)`` and then the frames of a :class:`~aurora.data.stream.LiveFrames`
into the language model's state, a batch of whatever frames have arrived at a time (at most the engine's
``chunk_frames``), in the calling thread (:meth:`run`) or a background one (:meth:`start`). :meth:`current` forks
the state as of now under a lock: a :class:`~aurora.infer.engine.VideoState` that any number of questions can be
asked from (every backbone returns a new state rather than changing the one it was given, so the fork is the
reference itself, and the reader goes on without waiting for the answer). Per-frame merges stream exactly, so the
state after ``n`` frames is the one reading those ``n`` frames from scratch gives, whatever the batches were.
Memory: the model, one batch's activations, the state (fixed-size for a linear RNN; the transformer's KV cache
grows) and the decoder's queue of at most 64 small frames.
"""
from __future__ import annotations

import threading
import time
import numpy as np
import torch

from aurora.data.stream import LiveFrames, ready_batches
from aurora.infer.engine import StreamEngine, StreamError, VideoState


class LiveReader:
    def __init__(self, engine: StreamEngine, frames: LiveFrames, context: str | None, on_batch=None) -> None:
        """``on_batch(reader)``, if given, is called in the reading thread after every batch is read."""
        self.engine, self.frames, self.context, self.on_batch = engine, frames, context, on_batch
        prefix = engine.tokenizer.encode(engine.template.before.format(question=context)) if context is not None else []
        self._last, self._state = engine.read_ids(prefix)
        self._positions, self._read, self._time = len(prefix), 0, None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.started = time.perf_counter()

    # -- reading -------------------------------------------------------------------------------------------
    @torch.no_grad()  # grad mode is per thread: the reader thread sets its own
    def run(self) -> "LiveReader":
        """Read the source to its end (or until :meth:`stop`); errors are kept in :attr:`error` and raised."""
        engine = self.engine
        try:
            for batch in ready_batches(self.frames, engine.chunk_frames):
                chunk = torch.from_numpy(np.stack([a for _, a in batch]))
                video = engine.encode_chunk(chunk)
                hidden, state = engine.rnn(video.to(engine.dtype), self._state)
                last, tokens = hidden[:, -1].clone(), video.shape[1]
                del video, hidden, chunk  # nothing of a batch outlives it but the state
                with self._lock:  # only this thread writes; a fork takes the fields together
                    self._state, self._last = state, last
                    self._positions += tokens
                    self._read += len(batch)
                    self._time = batch[-1][0]
                if self.on_batch is not None:
                    self.on_batch(self)
        except BaseException as e:
            self.error = e
            raise
        finally:
            self.done.set()
        return self

    def start(self) -> "LiveReader":
        """:meth:`run` in a background thread."""
        def target() -> None:
            try:
                self.run()
            except BaseException:  # noqa: BLE001  (kept in self.error for the foreground)
                pass

        self._thread = threading.Thread(target=target, name="live-reader", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: float = 10.0) -> None:
        """End the reading at the next frame and wait (at most ``wait`` s) for the reader thread."""
        self.frames.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=wait)

    # -- answering -----------------------------------------------------------------------------------------
    @property
    def stream_time(self) -> float | None:
        """Stream time (seconds) of the last frame read."""
        with self._lock:
            return self._time

    @property
    def frames_read(self) -> int:
        with self._lock:
            return self._read

    @torch.no_grad()
    def current(self) -> VideoState:
        """The state as of now (a fork: asking from it changes nothing the reader holds)."""
        with self._lock:
            state, last, positions, read, t = self._state, self._last, self._positions, self._read, self._time
        if last is None:
            raise StreamError("nothing was read yet: no frame has arrived and no text was read before the video")
        meta = {"video": self.frames.source, "live": True, "sampling": {"fps": self.frames.fps},
                "stream_time": t, "skipped": dict(self.frames.skipped)}
        return VideoState(state=state, logits=self.engine.rnn.logits(last), context=self.context, frames=read,
                          positions=positions, meta=meta)
