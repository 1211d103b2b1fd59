"""An OpenAI ``POST /v1/chat/completions`` body -> :class:`ChatRequest`, every bad field named.

The video is a content part of a user message, in any of these shapes (``URL`` a local path, an http(s) URL or a
``data:video/...;base64,`` URL, see :mod:`aurora.serve.sources`)::

    {"type": "video_url", "video_url": {"url": URL}}      # the form vLLM and others use
    {"type": "video_url", "video_url": URL}
    {"type": "video", "video": URL}                      # or {"video": {"url": URL}}
    {"type": "input_video", "input_video": {"data": BASE64, "format": "mp4"}}   # like OpenAI's input_audio
    {"type": "input_video", "input_video": {"url": URL}}

Text parts (``{"type": "text", "text": ...}``, or a plain string content) are the question. The question is the
text of the last message, which must be the user's; the video is the one in the latest user message that has one
(so a follow-up question in a conversation needs not send the video again if an earlier message holds it: the
server then answers from the state it read for that message). The text of the message that carries the video is
what is read before the video (the trained sandwich prompt, ``lead: question``); earlier assistant turns and system
messages are not read (the model answers one question at a time).

Sampling parameters: ``max_completion_tokens`` (or the older ``max_tokens``), ``temperature`` in [0, 2] (0:
greedy; not given: the model's default, greedy, not OpenAI's 1), ``top_p`` in [0, 1] (0: only the most likely
token), ``seed`` (not given: a fresh one per request), ``stop`` (a string or up to 4; the model's own stop string
always applies too), ``stream`` and ``stream_options.include_usage``. OpenAI parameters
that change nothing here are accepted when they ask for nothing (``n: 1``, ``logprobs: false``, penalties 0, no
tools, ``response_format`` text, ``user``, ``metadata``, ...); asking for what the server cannot do (``n: 2``,
``logprobs: true``) is a 422 naming it. An unknown parameter is a 400, as OpenAI answers. Aurora's own
parameters (the openai client sends them with ``extra_body``): ``frames`` (frames sampled uniformly), ``fps``,
``lead`` (``question``, ``generic`` or ``none``: what is read before the video).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from aurora.serve.errors import bad_param, bad_request

VIDEO_TYPES = ("video_url", "video", "input_video")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# OpenAI parameters that may be sent but change nothing here, with the values that ask for nothing
NEUTRAL = {"frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "n": (1,), "logprobs": (False,),
           "top_logprobs": (0,), "parallel_tool_calls": (True, False), "logit_bias": ({},), "tools": ([],),
           "functions": ([],), "tool_choice": ("none", "auto"), "function_call": ("none", "auto"),
           "modalities": (["text"],)}
IGNORED = {"user", "store", "metadata", "service_tier", "reasoning_effort", "prompt_cache_key",
           "safety_identifier", "verbosity", "prediction", "web_search_options", "response_format"}
OURS = {"frames", "fps", "lead"}
KNOWN = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop",
         "stream", "stream_options"} | set(NEUTRAL) | IGNORED | OURS
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed takes
LEADS = ("question", "generic", "none")


@dataclass
class ChatRequest:
    model: str
    question: str
    video: str  # the URL / path / base64 of the video part
    video_kind: str  # "url" or "base64"
    video_param: str  # where it is in the body, for errors ("messages[0].content[1]")
    video_text: str  # the text of the message carrying the video (read before it with lead "question")
    max_tokens: int | None = None
    temperature: float | None = None  # None: the model's default (greedy)
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    frames: int | None = None
    fps: float | None = None
    lead: str | None = None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _number(body: dict, name: str, lo: float, hi: float, default: Any, integer: bool = False) -> Any:
    x = body.get(name)
    if x is None:
        return default
    if not (_is_int(x) if integer else _is_number(x)):
        raise bad_param(f"{name} must be {'an integer' if integer else 'a number'}, got {x!r}", name, "invalid_type")
    if not lo <= x <= hi:
        raise bad_param(f"{name} must be in [{lo:g}, {hi:g}], got {x!r}", name)
    return x


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


def _parts(content: Any, where: str) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or a list of content parts, got "
                          f"{type(content).__name__}", f"{where}.content")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"{where}.content[{j}] must be an object with a 'type'", f"{where}.content[{j}]")
    return content


def _text(parts: list[dict], where: str) -> str:
    out = []
    for j, part in enumerate(parts):
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{where}.content[{j}].text must be a string", f"{where}.content[{j}].text")
            out.append(part["text"])
    return "\n".join(t.strip() for t in out if t.strip())


def _video(part: dict, where: str) -> tuple[str, str]:
    """(ref, kind) of a video part."""
    kind = part["type"]
    payload = part.get(kind)
    if payload is None and kind != "video_url":
        payload = part.get("video_url")
    if isinstance(payload, str):
        return payload, "url"
    if isinstance(payload, dict):
        if isinstance(payload.get("url"), str):
            return payload["url"], "url"
        if isinstance(payload.get("data"), str):
            fmt = payload.get("format")
            if fmt is not None and not isinstance(fmt, str):
                raise bad_request(f"{where}.{kind}.format must be a string", f"{where}.{kind}.format")
            return payload["data"], "base64"
    raise bad_request(f"{where} is a {kind} part without a video: give {{\"{kind}\": {{\"url\": ...}}}}", where,
                      "invalid_video")


def parse_chat(body: Any, max_tokens_limit: int | None = None) -> ChatRequest:
    """Check ``body`` (parsed JSON) and return what the server needs; APIError 400 / 422 naming the first problem."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(k for k in body if k not in KNOWN)
    if unknown:
        raise bad_request(f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0],
                          "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("you must provide a model parameter (GET /v1/models lists it)", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of {role, content} objects", "messages")
    parsed = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"{where} must be an object with a role and content", where)
        role = msg.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        parsed.append((role, _parts(msg.get("content"), where), where))
    role, parts, where = parsed[-1]
    if role != "user":
        raise bad_request(f"the last message must be the user's question, got a {role!r} message", where)
    question = _text(parts, where)
    if not question:
        raise bad_request("the last user message has no text: the question is missing", f"{where}.content",
                          "no_question")
    video = None
    for role, parts, where in reversed(parsed):
        if role != "user":
            continue
        found = [(j, p) for j, p in enumerate(parts) if p["type"] in VIDEO_TYPES]
        for j, p in enumerate(parts):
            if p["type"] not in VIDEO_TYPES and p["type"] != "text":
                raise bad_request(f"content part type {p['type']!r} is not supported: Aurora reads one video "
                                  f"(a video_url part) and text", f"{where}.content[{j}]", "unsupported_content")
        if len(found) > 1:
            raise bad_request(f"{where} holds {len(found)} videos: one video per conversation", where)
        if found:
            j, p = found[0]
            ref, kind = _video(p, f"{where}.content[{j}]")
            video = (ref, kind, f"{where}.content[{j}]", _text(parts, where))
            break
    if video is None:
        raise bad_request("no video in the user's messages: add a content part {\"type\": \"video_url\", "
                          "\"video_url\": {\"url\": ...}}", "messages", "no_video")
    for name, allowed in NEUTRAL.items():
        if body.get(name) is not None and body[name] not in allowed:
            raise bad_param(f"{name}={body[name]!r} is not supported by this server (accepted: "
                            f"{', '.join(repr(a) for a in allowed)})", name, "unsupported_value")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise bad_param("response_format: only {\"type\": \"text\"} is supported", "response_format",
                        "unsupported_value")
    hi = max_tokens_limit if max_tokens_limit is not None else 1 << 31
    tokens = None
    for name in ("max_tokens", "max_completion_tokens"):  # the newer name wins when both are given
        if body.get(name) is not None:
            x = body[name]
            if not _is_int(x):
                raise bad_param(f"{name} must be an integer, got {x!r}", name, "invalid_type")
            if x < 1:
                raise bad_param(f"{name} must be >= 1, got {x}", name)
            if x > hi:
                raise bad_param(f"{name} must be <= {hi} (this server's --max-tokens), got {x}", name)
            tokens = x
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
        raise bad_param("stop must be a string or a list of up to 4 strings", "stop", "invalid_type")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_param(f"stream must be true or false, got {stream!r}", "stream", "invalid_type")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
        raise bad_param("stream_options must be {\"include_usage\": true|false}", "stream_options", "invalid_type")
    frames = _number(body, "frames", 1, 4096, None, integer=True)
    fps = _number(body, "fps", 0, 1000, None)
    if fps is not None and fps <= 0:
        raise bad_param(f"fps must be > 0, got {fps}", "fps")
    if frames is not None and fps is not None:
        raise bad_param("give frames or fps, not both", "fps")
    lead = body.get("lead")
    if lead is not None and lead not in LEADS:
        raise bad_param(f"lead must be one of {', '.join(LEADS)}, got {lead!r}", "lead")
    top_p = float(_number(body, "top_p", 0, 1, 1.0))
    return ChatRequest(
        model=model, question=question, video=video[0], video_kind=video[1], video_param=video[2],
        video_text=video[3] or question, max_tokens=tokens,
        temperature=_float_or_none(_number(body, "temperature", 0, 2, None)),
        top_p=top_p if top_p > 0 else 1e-9,  # nothing but the most likely token
        seed=_number(body, "seed", SEED_RANGE[0], SEED_RANGE[1], None, integer=True),
        stop=[s for s in stop if s], stream=stream, include_usage=bool(opts.get("include_usage", False)),
        frames=frames, fps=float(fps) if fps is not None else None, lead=lead)
