"""``aurora serve``: an OpenAI-compatible server for one model (FastAPI + uvicorn).

    aurora serve --model DIR_OR_CKPT [--name NAME] [--host 127.0.0.1 --port 8000] [--cache-mib 512]
                 [--max-video-mib 256] [--video-root DIR] [--no-remote-videos] [--max-tokens 1024] [--ui]

Routes: ``POST /v1/chat/completions`` (the video a content part of a user message, see
:mod:`aurora.serve.request`; ``stream: true`` -> server-sent events in OpenAI's chunk format ending with
``data: [DONE]``), ``GET /v1/models`` (the one served name), ``GET /v1/models/{id}``, ``GET /v1/stats`` (cache and
request counters), ``GET /health``.

How a request runs: the body is read under a size limit; parsed (400 / 422 naming the field); the video fetched
in the server's thread pool (:mod:`aurora.serve.sources`); its sha256 and the read settings (frames / fps and the
text read before the video) are the key of the state cache (:mod:`aurora.serve.cache`). Then one model thread
runs, one request at a time, the read on a cache miss (the state is kept) and the answer: requests queue (at most
``max_queue`` waiting, then 429), generation never runs on the event loop and no two requests ever share a state
in flight (answering leaves a cached state untouched). Response headers say ``X-Aurora-Cache: hit|miss``.

Errors are OpenAI's JSON (:mod:`aurora.serve.errors`), never a traceback; after any of them the server serves on.

For a web page on the same app (``--ui``), :func:`create_app` keeps what it built on ``app.state.aurora``
(:class:`ServerState`: the model, the cache, the worker) and ``serve_main`` calls
``aurora.serve.ui.mount_ui(app, model)``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from aurora.serve.cache import StateCache, cache_key, sha256
from aurora.serve.errors import APIError, bad_param, bad_request, error_body
from aurora.serve.request import ChatRequest, parse_chat
from aurora.serve.sources import VideoFetcher

log = logging.getLogger("aurora.serve")
MIB = 1 << 20
_BACKGROUND: set = set()  # streaming jobs in flight


class ModelWorker:
    """One thread runs the model: jobs queue and run one at a time (at most ``max_queue`` waiting, then 429)."""

    def __init__(self, max_queue: int = 64) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aurora-model")
        self.max_queue = max_queue
        self.pending = 0  # jobs submitted and not done (changed on the event loop only)
        self.busy_seconds = 0.0

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.pending >= self.max_queue + 1:
            raise APIError(429, f"the server is busy: {self.pending} requests are queued (--max-queue "
                           f"{self.max_queue}); retry later", None, "queue_full")
        self.pending += 1
        try:
            return await asyncio.wrap_future(self.pool.submit(self._timed, fn, *args))
        finally:
            self.pending -= 1

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.busy_seconds += time.perf_counter() - t0

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class ServerState:
    """What :func:`create_app` built (``app.state.aurora``): for the routes and for a page mounted on the app."""

    model: Any  # aurora.infer.api.Aurora
    name: str
    cache: StateCache
    fetcher: VideoFetcher
    worker: ModelWorker
    max_tokens: int | None
    max_frames: int
    created: int = field(default_factory=lambda: int(time.time()))
    counters: dict[str, Any] = field(default_factory=lambda: {"requests": 0, "completed": 0, "streamed": 0,
                                                              "reads": 0, "read_seconds": 0.0, "errors": {}})

    # -- reading (on the model thread) ---------------------------------------------------------------------
    def settings(self, req: ChatRequest) -> dict[str, Any]:
        """The read settings a state depends on besides the video: frames / fps and the text before the video."""
        engine = self.model.engine
        frames, fps = self.model.sampling(req.frames, req.fps)
        context = engine.lead_context(req.video_text, req.lead)
        return {"frames": frames, "fps": fps, "context": context,
                "max_frames": self.max_frames if fps is not None else None}

    def state_for(self, digest: str, data: bytes, settings: dict[str, Any]) -> tuple[Any, bool]:
        """The state after the video from the cache, else read (and kept); (state, hit)."""
        from aurora.data.video import VideoDecodeError
        from aurora.infer.engine import StreamError

        key = cache_key(digest, **settings)
        vs = self.cache.get(key)
        if vs is not None:
            return vs, True
        t0 = time.perf_counter()
        try:
            vs = self.model.engine.read_video(data, settings["context"], settings["frames"], settings["fps"],
                                              name=f"sha256:{digest[:16]}", max_frames=settings["max_frames"])
        except (VideoDecodeError, StreamError, ValueError, IndexError, EOFError) as e:
            raise bad_request(f"cannot read the video: {e}", "messages", "invalid_video") from None
        self.counters["reads"] += 1
        self.counters["read_seconds"] += time.perf_counter() - t0
        self.cache.put(key, vs)
        return vs, False

    def prompt_tokens(self, vs: Any, question: str) -> int:
        engine = self.model.engine
        return vs.positions + len(engine.tokenizer.encode(engine.template.after.format(question=question)))

    def generation(self, req: ChatRequest):
        tpl_stop = self.model.engine.template.stop
        stops = list(dict.fromkeys(([tpl_stop] if tpl_stop else []) + req.stop))
        try:
            return self.model.generation(max_new_tokens=req.max_tokens, temperature=req.temperature or 0.0,
                                         top_p=req.top_p, stop=stops,
                                         seed=req.seed if req.seed is not None else secrets.randbits(63))
        except ValueError as e:
            raise bad_param(str(e), "temperature" if "temperature" in str(e) else "top_p") from None

    def stats(self) -> dict[str, Any]:
        return {"model": self.name, "cache": self.cache.stats(), "queue": {"pending": self.worker.pending,
                                                                          "max_queue": self.worker.max_queue},
                "model_busy_seconds": round(self.worker.busy_seconds, 3),
                **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.counters.items()}}


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def _finish_reason(finish: str) -> str:
    return "length" if finish == "length" else "stop"


async def _read_body(request: Request, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, f"the request body ({length} bytes) is over the limit of {limit} bytes (the video "
                       "size limit with base64's overhead)", "messages", "video_too_large")
    parts, size = [], 0
    async for block in request.stream():
        size += len(block)
        if size > limit:
            raise APIError(413, f"the request body is over the limit of {limit} bytes", "messages",
                           "video_too_large")
        parts.append(block)
    try:
        return json.loads(b"".join(parts))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the request body is not JSON ({e})", None, "invalid_json") from None


def create_app(model: Any, name: str = "aurora", cache_bytes: int = 512 * MIB, max_video_bytes: int = 256 * MIB,
               video_root: str | os.PathLike | None = None, allow_remote: bool = True,
               download_timeout: float = 30.0, max_tokens: int | None = 1024, max_queue: int = 64,
               max_frames: int = 256) -> FastAPI:
    """The FastAPI app serving ``model`` (an :class:`aurora.infer.api.Aurora`) under the model id ``name``."""
    st = ServerState(model=model, name=name, cache=StateCache(cache_bytes),
                     fetcher=VideoFetcher(max_bytes=max_video_bytes, video_root=video_root,
                                          allow_remote=allow_remote, timeout=download_timeout),
                     worker=ModelWorker(max_queue), max_tokens=max_tokens, max_frames=max_frames)
    body_limit = max_video_bytes * 4 // 3 + 4 * MIB  # base64 and the JSON around it

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        st.worker.close()

    app = FastAPI(title="Aurora", description="OpenAI-compatible chat completions about videos", lifespan=lifespan)
    app.state.aurora = st

    def count_error(status: int) -> None:
        errors = st.counters["errors"]
        errors[str(status)] = errors.get(str(status), 0) + 1

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        count_error(e.status)
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        count_error(e.status_code)
        message = f"no route {request.method} {request.url.path}" if e.status_code == 404 else str(e.detail)
        return JSONResponse(error_body(e.status_code, message, None, None), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        count_error(500)
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, f"internal error ({type(e).__name__}); the server log has the details"),
                            status_code=500)

    def model_card() -> dict[str, Any]:
        return {"id": st.name, "object": "model", "created": st.created, "owned_by": "aurora"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": st.name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str) -> dict[str, Any]:
        if model_id != st.name:
            raise APIError(404, f"The model {model_id!r} does not exist (this server serves {st.name!r})", "model",
                           "model_not_found")
        return model_card()

    @app.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        return st.stats()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        st.counters["requests"] += 1
        body = await _read_body(request, body_limit)
        req = parse_chat(body, st.max_tokens)
        if req.model != st.name:
            raise APIError(404, f"The model {req.model!r} does not exist (this server serves {st.name!r})", "model",
                           "model_not_found")
        gen = st.generation(req)
        fetch = (st.fetcher.from_base64 if req.video_kind == "base64" else st.fetcher.fetch)

        def fetch_and_hash() -> tuple[bytes, str]:
            data = fetch(req.video, req.video_param)
            return data, sha256(data)

        data, digest = await run_in_threadpool(fetch_and_hash)
        settings = st.settings(req)
        vs, hit = await st.worker.run(st.state_for, digest, data, settings)
        del data
        cid, created = _completion_id(), int(time.time())
        headers = {"X-Aurora-Cache": "hit" if hit else "miss", "X-Aurora-Video-Sha256": digest}
        if req.stream:
            return StreamingResponse(_sse(st, req, vs, hit, gen, cid, created), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        def answer():
            return st.model.engine.answer(vs, req.question, gen), st.prompt_tokens(vs, req.question)

        ans, prompt = await st.worker.run(answer)
        st.counters["completed"] += 1
        done = len(ans.tokens)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": st.name,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.text, "refusal": None},
                         "logprobs": None, "finish_reason": _finish_reason(ans.finish)}],
            "usage": _usage(prompt, done, vs.positions if hit else 0),
        }, headers=headers)

    return app


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


async def _sse(st: ServerState, req: ChatRequest, vs: Any, hit: bool, gen: Any, cid: str,
               created: int) -> AsyncIterator[str]:
    """OpenAI's chunks: the role, the pieces as they are generated, the finish reason, (usage), ``[DONE]``."""
    from aurora.infer.streaming import stream_answer

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()  # the client went away: the model thread stops at the next token

    def job() -> None:
        finish: dict[str, Any] = {}
        try:
            for piece in stream_answer(st.model.engine, vs, req.question, gen, finish):
                loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
                if stop.is_set():
                    break
            loop.call_soon_threadsafe(queue.put_nowait, ("end", (finish, st.prompt_tokens(vs, req.question))))
        except Exception as e:  # reported to the client as an error event, logged here
            log.exception("error while streaming an answer")
            loop.call_soon_threadsafe(queue.put_nowait, ("error", e))

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": st.name,
               "system_fingerprint": None,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}
        if req.include_usage and "usage" not in extra:
            obj["usage"] = None
        return f"data: {json.dumps(obj)}\n\n"

    async def run_job() -> None:
        try:
            await st.worker.run(job)
        except APIError as e:  # the queue filled between the read and the answer
            queue.put_nowait(("error", e))

    task = asyncio.ensure_future(run_job())  # runs to its end even if the client goes away
    _BACKGROUND.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(_BACKGROUND.discard)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await queue.get()
            if kind == "piece":
                yield chunk({"content": value})
            elif kind == "end":
                finish, prompt = value
                yield chunk({}, _finish_reason(finish.get("reason", "length")))
                if req.include_usage:
                    usage = _usage(prompt, len(finish.get("tokens", [])), vs.positions if hit else 0)
                    obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": st.name,
                           "system_fingerprint": None, "choices": [], "usage": usage}
                    yield f"data: {json.dumps(obj)}\n\n"
                st.counters["completed"] += 1
                st.counters["streamed"] += 1
                break
            else:
                status = value.status if isinstance(value, APIError) else 500
                st.counters["errors"][str(status)] = st.counters["errors"].get(str(status), 0) + 1
                err = value.body() if isinstance(value, APIError) else \
                    error_body(500, f"internal error while generating ({type(value).__name__})")
                yield f"data: {json.dumps(err)}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        stop.set()  # a client that went away: the job ends at its next token (``task`` frees the queue slot)


# ------------------------------------------------------------------------------------------------ aurora serve


def default_name(path: str | os.PathLike) -> str:
    """The served model id: an export directory's name, or a checkpoint's run directory name."""
    from pathlib import Path

    p = Path(path).resolve()
    if p.is_dir():
        return p.name
    if p.parent.name == "checkpoints":
        return p.parent.parent.name
    return p.stem


def build_parser():
    import argparse

    p = argparse.ArgumentParser(prog="aurora serve", description="An OpenAI-compatible server for one model: POST "
                                "/v1/chat/completions with the video as a content part, GET /v1/models, GET "
                                "/v1/stats. See docs/serving.md.")
    p.add_argument("--model", required=True, help="a directory `aurora export` wrote, or a checkpoint of `aurora fit`")
    p.add_argument("--name", default=None, help="the model id clients ask for (default: the directory / run name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free port)")
    p.add_argument("--cache-mib", type=float, default=512, help="memory budget of the state cache (default: "
                   "%(default)s MiB; 0: no cache)")
    p.add_argument("--max-video-mib", type=float, default=256, help="largest video accepted (default: %(default)s)")
    p.add_argument("--video-root", default=None, help="serve local video paths inside this folder (default: "
                   "local paths refused)")
    p.add_argument("--no-remote-videos", action="store_true", help="refuse http(s) video URLs")
    p.add_argument("--download-timeout", type=float, default=30.0, help="seconds for a video download")
    p.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for the model (then 429)")
    p.add_argument("--max-frames", type=int, default=256, help="most frames read with fps sampling")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--chunk-frames", type=int, default=16, help="frames read per step")
    p.add_argument("--config", default=None, help="run config for a checkpoint's preprocessing (default: the run's)")
    p.add_argument("--ui", action="store_true", help="also serve the web page at /ui (aurora.serve.ui)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p


def serve_main(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    for flag, value, low in (("--cache-mib", args.cache_mib, 0), ("--max-video-mib", args.max_video_mib, 1e-6),
                             ("--max-tokens", args.max_tokens, 1), ("--max-queue", args.max_queue, 0),
                             ("--max-frames", args.max_frames, 1), ("--download-timeout", args.download_timeout, 1e-3)):
        if value < low:
            p.error(f"{flag} must be >= {low:g}, got {value:g}")
    if args.video_root is not None and not os.path.isdir(args.video_root):
        p.error(f"--video-root {args.video_root} is not a folder")
    import uvicorn

    from aurora.serve.model import open_model

    model = open_model("serve", args.model, device=args.device, dtype=args.dtype, chunk_frames=args.chunk_frames,
                       config=args.config)
    if model is None:
        return 2
    name = args.name or default_name(args.model)
    app = create_app(model, name=name, cache_bytes=int(args.cache_mib * MIB),
                     max_video_bytes=int(args.max_video_mib * MIB), video_root=args.video_root,
                     allow_remote=not args.no_remote_videos, download_timeout=args.download_timeout,
                     max_tokens=args.max_tokens, max_queue=args.max_queue, max_frames=args.max_frames)
    if args.ui:
        try:
            from aurora.serve.ui import mount_ui
        except ImportError as e:
            print(f"aurora serve: error: --ui needs the web page module aurora.serve.ui and its dependencies "
                  f"({e})", file=sys.stderr)
            return 2
        mount_ui(app, model)
    print(f"aurora serve: model {name!r} on http://{args.host}:{args.port}/v1 (POST /v1/chat/completions)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
