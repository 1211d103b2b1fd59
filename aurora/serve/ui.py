"""The web page (Gradio): ``aurora ui --model DIR_OR_CKPT [--videos DIR]``, or ``aurora serve --ui`` at ``/ui``.

Pick one of the example videos (the files of ``--videos DIR``) or upload one; the page shows the frames the model
samples (a gallery) and the merge picture of ``aurora viz merge`` (which patches every merged token holds, in the
order the language model reads them) drawn from the loaded model's own encoder. Ask a question and the answer
streams in token by token (:meth:`Aurora.stream`).

The first question about a video reads it with the trained prompt (the question before the video, as
``aurora ask`` does), so at temperature 0 that answer is ``Aurora.ask``'s token for token. The state after the
video is kept in the page session (``gr.State``), keyed by the video's sha256: follow-up questions, and coming back
to a video, answer from it without reading the video again (the last :data:`KEEP_STATES` videos of a session).

- :func:`build_ui` ``(model, videos=None) -> gr.Blocks``; its callbacks are the methods of :class:`Page`
  (``blocks.aurora_page``), which tests call directly.
- :func:`mount_ui` ``(app, model)`` mounts the page on a FastAPI app at ``/ui`` (``gradio.mount_gradio_app``).
  On the app of ``aurora serve`` (``app.state.aurora.worker``) the page runs the model on the server's one model
  thread, so page and API requests never run the model at the same time; elsewhere one lock per model does that.
- :func:`ui_main`: the ``aurora ui`` command (FastAPI + uvicorn, the page at ``/ui``, ``/`` redirects there).

Nothing on the page names a file path: an example is chosen by its name in the list, resolved inside ``--videos``.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import os
import sys
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home (the machines have no internet)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")
GALLERY_FRAMES = 16  # at most this many of the sampled frames are shown (spread uniformly)
MERGE_FRAMES = 4  # ... and this many drawn in the merge picture
GALLERY_SIDE = 256  # gallery frames are decoded with their short side at most this
KEEP_STATES = 4  # video states one page session keeps (the most recently used)


class UIError(ValueError):
    """Input the page cannot use (no video chosen, an unknown example, an undecodable upload): shown on the page."""


# ------------------------------------------------------------------------------------------------ helpers


def list_videos(folder: str | os.PathLike | None) -> list[str]:
    """The video files under ``folder`` (by suffix), as sorted paths relative to it; links that lead outside it
    are left out."""
    if folder is None:
        return []
    root = Path(folder).resolve()
    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file() and p.resolve().is_relative_to(root):
            out.append(p.relative_to(root).as_posix())
    return out


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_LOCKS: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


class ModelRunner:
    """Runs model work one call at a time: on ``pool`` (the serve app's single model thread) when given, else
    under one lock per model. :meth:`iterate` advances a generator call by call, so a streamed answer gives other
    requests their turn between tokens (each works on its own state)."""

    _END = object()

    def __init__(self, model: Any, pool: Any = None) -> None:
        self.pool = pool
        with _LOCKS_GUARD:
            self.lock = _LOCKS.setdefault(model, threading.Lock())

    @classmethod
    def for_app(cls, app: Any, model: Any) -> "ModelRunner":
        worker = getattr(getattr(getattr(app, "state", None), "aurora", None), "worker", None)
        pool = getattr(worker, "pool", None)
        return cls(model, pool if callable(getattr(pool, "submit", None)) else None)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.pool is not None:
            return self.pool.submit(fn, *args, **kwargs).result()
        with self.lock:
            return fn(*args, **kwargs)

    def iterate(self, gen: Iterator[Any]) -> Iterator[Any]:
        while True:
            item = self.call(next, gen, self._END)
            if item is self._END:
                return
            yield item


def tracing_vision(vision: Any) -> Any:
    """A view of ``vision`` that returns source maps (``merge.trace_source``), for the merge picture: it shares
    every weight with ``vision`` but has its own copy of the merge, so the model that answers is left untouched."""
    view = copy.copy(vision)
    view._modules = OrderedDict(vision._modules)  # its own table of children: replacing the merge stays here
    view.merge = copy.deepcopy(vision.merge)
    view.merge.trace_source = True
    if getattr(view, "feature_cache", None) is not None:
        view.feature_cache = None
    return view


# ------------------------------------------------------------------------------------------------ the page


def new_session() -> dict[str, Any]:
    """What one browser session keeps (``gr.State``): the chosen video, its conversation, and video states."""
    return {"video": None, "name": None, "sha": None, "chat": [], "states": OrderedDict(), "asked": {}}


class Page:
    """The page's callbacks (what :func:`build_ui` wires), usable without a browser.

    ``reads`` counts the videos read into a state (a follow-up question leaves it unchanged)."""

    def __init__(self, model: Any, videos: str | os.PathLike | None = None, runner: ModelRunner | None = None,
                 gallery_frames: int = GALLERY_FRAMES, merge_frames: int = MERGE_FRAMES) -> None:
        self.model = model
        self.videos = Path(videos).resolve() if videos is not None else None
        self.examples = list_videos(self.videos)
        self.runner = runner or ModelRunner(model)
        self.gallery_frames, self.merge_frames = gallery_frames, merge_frames
        self.reads = 0
        self._vision = None

    # -- choosing a video -------------------------------------------------------------------------------------
    def example_path(self, name: str) -> Path:
        """An example by its name in the list (never a path the browser made up)."""
        if self.videos is None or name not in self.examples:
            raise UIError(f"unknown example video {name!r}; known: {', '.join(self.examples) or '(none)'}")
        return self.videos / name

    def sampled(self) -> tuple[int | None, float | None]:
        return self.model.sampling()

    def frames_for(self, path: Path) -> tuple[list[tuple[Any, str]], list[int], int]:
        """The gallery: up to ``gallery_frames`` of the sampled frames, each captioned with its index and time;
        also every sampled index and the video's frame count."""
        from aurora.data.reader import FrameReader
        from aurora.data.video import uniform_indices

        frames, fps = self.sampled()
        with FrameReader(path, short_side=GALLERY_SIDE) as reader:
            indices = list(self.model.engine.frame_indices(reader, frames, fps))
            if not indices:
                raise UIError("the video has no frames to sample")
            shown = [indices[i] for i in uniform_indices(len(indices), min(len(indices), self.gallery_frames))]
            images = reader.read(shown).numpy()
            times = reader.times
            total = len(reader)
        return [(img, f"frame {i} · {times[i]:.2f} s") for img, i in zip(images, shown)], indices, total

    def merge_picture(self, path: Path, name: str, indices: list[int], total: int):
        """``aurora viz merge``'s picture (:func:`aurora.tools.viz.render`) of up to ``merge_frames`` sampled
        frames, drawn from the loaded model's encoder and merge, with the model's preprocessing."""
        import torch

        from aurora.data.reader import FrameReader
        from aurora.data.video import to_pixels, uniform_indices
        from aurora.tools.viz import merge_map, render, title_for

        engine = self.model.engine
        if self._vision is None:
            self._vision = tracing_vision(engine.model.vision)
        chosen = [indices[i] for i in uniform_indices(len(indices), min(len(indices), self.merge_frames))]
        with FrameReader(path, short_side=engine.image_size) as reader:  # as the engine reads them
            raw = reader.read(chosen)
        pixels = to_pixels(raw, engine.image_size, engine.mean, engine.std).to(engine.device, engine.dtype)
        mm = self.runner.call(merge_map, self._vision, pixels, engine.mean, engine.std,
                              self.model.config["model"].get("merge"))
        for k in ("images", "sizes", "source", "assignment"):
            t = getattr(mm, k)
            setattr(mm, k, t.detach().to("cpu", torch.float32 if t.is_floating_point() else t.dtype))
        mm.frame_indices, mm.total_frames = chosen, total
        return render(mm, title_for(mm, name, "the loaded model's encoder"), dpi=80)

    def open_video(self, path: Path, name: str, session: dict[str, Any] | None) -> tuple:
        """Show ``path``: (video, gallery, merge picture, info, chat, session); the conversation starts anew."""
        from aurora.data.video import VideoDecodeError

        session = session if session is not None else new_session()
        try:
            sha = file_sha256(path)
            gallery, indices, total = self.frames_for(path)
            picture = self.merge_picture(path, name, indices, total)
        except (OSError, VideoDecodeError, ValueError, IndexError, EOFError) as e:
            raise UIError(f"cannot read the video {name}: {' '.join(str(e).split())}") from None
        session.update(video=str(path), name=name, sha=sha, chat=[])
        return str(path), gallery, picture, self.info(session, len(indices), total), [], session

    def choose(self, name: str | None, session: dict[str, Any] | None) -> tuple:
        """An example picked from the list."""
        if not name:
            raise UIError("pick an example video")
        return self.open_video(self.example_path(name), name, session)

    def upload(self, path: str | None, session: dict[str, Any] | None) -> tuple:
        """A video the user uploaded (gradio hands over the path of its stored copy)."""
        if not path:
            raise UIError("no video was uploaded")
        return self.open_video(Path(path), Path(path).name, session)

    def info(self, session: dict[str, Any], sampled: int | None = None, total: int | None = None) -> str:
        if not session.get("video"):
            return "Pick an example video or upload one."
        parts = [f"**{session['name']}** (sha256 `{session['sha'][:12]}`)"]
        if sampled is not None:
            frames, fps = self.sampled()
            how = f"{frames} uniformly" if frames is not None else f"{fps:g} per second"
            parts.append(f"{sampled} of its {total} frames sampled ({how})")
        vs = session["states"].get(session["sha"])
        if vs is None:
            parts.append("not read yet: the first question reads it")
        else:
            parts.append(f"read once ({vs.frames} frames, {vs.positions} tokens, before the video: "
                         f"{vs.context!r}); {session['asked'].get(session['sha'], 0)} question(s) answered from "
                         "that state")
        return " · ".join(parts)

    # -- asking -----------------------------------------------------------------------------------------------
    def state_for(self, session: dict[str, Any], question: str):
        """The state after the session's video: kept (sha256) or read now with the question before the video."""
        from aurora.data.video import VideoDecodeError
        from aurora.infer.engine import StreamError

        sha, states = session["sha"], session["states"]
        vs = states.get(sha)
        if vs is not None:
            states.move_to_end(sha)
            return vs
        context = self.model.engine.lead_context(question)
        try:
            vs = self.runner.call(self.model.read, session["video"], context=context)
        except (OSError, VideoDecodeError, StreamError, ValueError, IndexError, EOFError) as e:
            raise UIError(f"cannot read the video {session['name']}: {' '.join(str(e).split())}") from None
        self.reads += 1
        states[sha] = vs
        while len(states) > KEEP_STATES:
            states.popitem(last=False)
        return vs

    def ask(self, question: str, session: dict[str, Any] | None, temperature: float = 0.0,
            max_new_tokens: int | None = None) -> Iterator[tuple]:
        """Stream the answer: yields (chat, session, question box, info) after every piece."""
        session = session if session is not None else new_session()
        question = (question or "").strip()
        if not session.get("video"):
            raise UIError("pick an example video or upload one first")
        if not question:
            raise UIError("type a question")
        vs = self.state_for(session, question)
        gen = {"temperature": float(temperature or 0.0)}
        if max_new_tokens:
            gen["max_new_tokens"] = int(max_new_tokens)
        head = [*session["chat"], {"role": "user", "content": question}]
        yield [*head, {"role": "assistant", "content": ""}], session, "", self.info(session)
        text = ""
        for piece in self.runner.iterate(self.model.stream(vs, question, **gen)):
            text += piece
            yield [*head, {"role": "assistant", "content": text}], session, "", self.info(session)
        session["asked"][session["sha"]] = session["asked"].get(session["sha"], 0) + 1
        # the answer as Aurora.ask returns it (stripped)
        session["chat"] = [*head, {"role": "assistant", "content": text.strip()}]
        yield session["chat"], session, "", self.info(session)


# ------------------------------------------------------------------------------------------------ wiring


def _shown(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A callback whose :class:`UIError` appears on the page as a message (``gr.Error``), not a traceback."""
    import functools
    import inspect

    import gradio as gr

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any) -> Iterator[Any]:
            try:
                yield from fn(*args)
            except UIError as e:
                raise gr.Error(str(e)) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except UIError as e:
            raise gr.Error(str(e)) from None
    return wrapper


def build_ui(model: Any, videos: str | os.PathLike | None = None, runner: ModelRunner | None = None) -> Any:
    """The page as ``gr.Blocks`` (its callbacks: ``blocks.aurora_page``, a :class:`Page`)."""
    import gradio as gr

    page = Page(model, videos, runner)
    default_tokens = int(model.config["generation"]["max_new_tokens"])
    with gr.Blocks(title="Aurora", analytics_enabled=False) as blocks:
        gr.Markdown("# Aurora: ask about a video\nPick an example or upload a video, then ask. The first question "
                    "reads the video; follow-up questions answer from the same state.")
        session = gr.State(new_session())
        with gr.Row():
            with gr.Column(scale=1):
                examples = gr.Radio(page.examples, label="Example videos", elem_id="aurora-examples",
                                    visible=bool(page.examples))
                video = gr.Video(label="Video (upload one)", sources=["upload"], elem_id="aurora-video")
                info = gr.Markdown(page.info(new_session()), elem_id="aurora-info")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Sampled frames", columns=8, height=220, elem_id="aurora-frames")
                merge = gr.Image(label="Merged tokens (aurora viz merge)", type="numpy", elem_id="aurora-merge",
                                 interactive=False)
        # the model's text as it is (no Markdown or LaTeX rendering: the page shows what Aurora.ask returns)
        chat = gr.Chatbot(label="Conversation", height=320, elem_id="aurora-chat", render_markdown=False,
                          latex_delimiters=[], feedback_options=None)
        with gr.Row():
            question = gr.Textbox(label="Question", placeholder="What colour is the shape?", scale=4,
                                  elem_id="aurora-question")
            ask = gr.Button("Ask", variant="primary", scale=1, elem_id="aurora-ask")
        with gr.Accordion("Decoding", open=False):
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0: greedy)")
            max_tokens = gr.Slider(1, max(512, default_tokens), value=default_tokens, step=1,
                                   label="max new tokens")
        shown = [video, gallery, merge, info, chat, session]
        examples.change(_shown(page.choose), [examples, session], shown)
        video.upload(_shown(page.upload), [video, session], shown)
        asked = [chat, session, question, info]
        question.submit(_shown(page.ask), [question, session, temperature, max_tokens], asked)
        ask.click(_shown(page.ask), [question, session, temperature, max_tokens], asked)
    blocks.aurora_page = page
    return blocks


def mount_ui(app: Any, model: Any, videos: str | os.PathLike | None = None, path: str = "/ui") -> Any:
    """Mount the page (:func:`build_ui`) on the FastAPI ``app`` at ``path``; returns the app."""
    import gradio as gr

    if isinstance(model, (str, os.PathLike)):
        from aurora.infer.api import Aurora

        model = Aurora.from_pretrained(model)
    blocks = build_ui(model, videos, ModelRunner.for_app(app, model))
    app.state.aurora_ui = blocks.aurora_page  # the page's callbacks and counters, for the app's owner
    allowed = [str(Path(videos).resolve())] if videos is not None else None  # the example videos play on the page
    return gr.mount_gradio_app(app, blocks, path=path, ssr_mode=False, allowed_paths=allowed,
                               footer_links=["gradio"])


def create_ui_app(model: Any, videos: str | os.PathLike | None = None) -> Any:
    """A FastAPI app with only the page (at ``/ui``; ``/`` redirects there): what ``aurora ui`` serves."""
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    app = FastAPI(title="Aurora web page")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    return mount_ui(app, model, videos)


# ------------------------------------------------------------------------------------------------ command


def ui_main(argv: list[str]) -> int:
    """``aurora ui``: the web page alone."""
    p = argparse.ArgumentParser(prog="aurora ui", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a directory `aurora export` wrote, or a checkpoint of `aurora fit`")
    p.add_argument("--videos", default=None, help="a folder of example videos to pick from")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when there is one)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--config", default=None, help="run config / recipe for a checkpoint's preprocessing")
    args = p.parse_args(argv)
    if args.videos is not None and not os.path.isdir(args.videos):
        p.error(f"--videos {args.videos} is not a folder")
    if not 0 < args.port < 65536:
        p.error(f"--port must be in 1..65535, got {args.port}")
    from aurora.serve.model import open_model

    model = open_model("ui", args.model, device=args.device, dtype=args.dtype, config=args.config)
    if model is None:
        return 2
    import uvicorn

    app = create_ui_app(model, args.videos)
    print(f"aurora ui: the page is on http://{args.host}:{args.port}/ui/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(ui_main(sys.argv[1:]))
