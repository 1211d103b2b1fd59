"""An lmms-eval model plugin: ``lmms-eval --model aurora --model_args pretrained=DIR --tasks ...`` runs an Aurora model
(an export, a Lightning checkpoint, or the paper's xtuner release: anything ``Aurora.from_pretrained`` loads) inside
the community's evaluator.

Registered through the entry-point group lmms-eval (0.7) reads for external models, ``lmms_eval.models``
(``pyproject.toml``: ``aurora = "aurora.evaluation.lmms:manifest"``), so nothing inside lmms-eval changes. lmms-eval
itself is an optional extra (``pip install -e ".[lmms]"``, CUDA machines: it needs torchvision).

The logic is :class:`AuroraLMMSCore`, a plain class that needs no lmms-eval (the tests drive it with requests shaped
as lmms-eval's ``Instance``); :data:`AuroraLMMS`, the ``lmms_eval.api.model.lmms`` subclass lmms-eval loads, is built
on first access and only delegates to it.

- ``generate_until``: requests are grouped by (video, what is read before it); each video is read ONCE per group
  (:meth:`Aurora.read`) and every question is answered from a fork of that state (:meth:`Aurora.answer`, which
  leaves the state untouched). What is read before the video is the template's lead (``lead`` model arg):
  ``question`` (the sandwich, as trained) groups the requests that share a question, ``generic`` (the template's
  fixed instruction) or ``none`` make one state serve every question about the video.
- ``loglikelihood``: requests of one (video, lead, context) share one state after ``after(context)``; each
  continuation is scored token by token from it (its log-probability and whether greedy decoding would produce it).
- ``generate_until_multi_round``: not supported (NotImplementedError, as lmms-eval's own video models do).

A request whose visual is not one readable video is skipped with a logged warning naming the task and doc (its
answer ``""``, its log-likelihood ``-inf``) and counted in :attr:`AuroraLMMSCore.skipped`.

Request arguments, as lmms-eval's tasks build them for simple models (``lmms_eval/api/task.py``):
``generate_until``: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``; ``loglikelihood``:
``(context, continuation, doc_to_visual, doc_id, task, split)``; the doc is ``self.task_dict[task][split][doc_id]``
(lmms-eval fills ``task_dict``) and ``doc_to_visual(doc)`` returns a list of visuals (video paths).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

log = logging.getLogger("aurora.evaluation.lmms")

LEADS = ("question", "generic", "none")


def _flat(visuals: Any) -> list[Any]:
    if isinstance(visuals, (list, tuple)):
        return [v for x in visuals for v in _flat(x)]
    return [visuals]


def _number(value: Any, kind: type) -> Any:
    """lmms-eval passes model args as strings (or numbers it has parsed): coerce, None stays None."""
    if value is None or value == "None":
        return None
    return kind(value)


class AuroraLMMSCore:
    """The adapter without lmms-eval (see the module docstring).

    Args:
        pretrained: what :meth:`Aurora.from_pretrained` loads (a directory or checkpoint).
        device, dtype: as ``Aurora.from_pretrained``.
        frames / fps: the frame sampling (default: the model's).
        lead: what is read before the video (``question`` / ``generic`` / ``none``; default: the model's template).
        max_new_tokens: when a task's generation kwargs give none (default: the model's).
        batch_size: accepted for lmms-eval's command line; requests are grouped by video instead.
    """

    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "float32",
                 frames: int | str | None = None, fps: float | str | None = None, lead: str | None = None,
                 max_new_tokens: int | str | None = None, batch_size: int | str = 1, model: Any = None,
                 **ignored: Any) -> None:
        if model is None:
            from aurora.infer.api import Aurora

            model = Aurora.from_pretrained(pretrained, device=device, dtype=dtype)
        self.model = model
        self.frames, self.fps = _number(frames, int), _number(fps, float)
        template = model.engine.template
        self.lead = lead or getattr(template, "lead_at_inference", "question")
        if self.lead not in LEADS:
            raise ValueError(f"unknown lead {self.lead!r}; known: {', '.join(LEADS)}")
        self.max_new_tokens = _number(max_new_tokens, int)
        self.task_dict: dict[str, Any] = {}
        self.reads = 0  # videos read (a video asked N questions under one lead is read once)
        self.skipped = 0
        if ignored:
            log.info("aurora lmms plugin: ignoring model args %s", sorted(ignored))

    # -- requests ------------------------------------------------------------------------------------------
    def _video(self, doc_to_visual: Callable[[Any], Any], doc_id: Any, task: str, split: str) -> str | None:
        """The one video of a request (a local path), or None (logged) when its visual is not one video."""
        try:
            doc = self.task_dict[task][split][doc_id]
            visuals = [v for v in _flat(doc_to_visual(doc)) if v is not None]
        except (KeyError, IndexError, TypeError) as e:
            return self._skip(task, doc_id, f"cannot read its doc / visual: {e!r}")
        paths = [v for v in visuals if isinstance(v, (str, os.PathLike))]
        if len(visuals) != 1 or len(paths) != 1:
            kinds = ", ".join(type(v).__name__ for v in visuals) or "none"
            return self._skip(task, doc_id, f"needs exactly one video path, got {len(visuals)} visual(s) ({kinds})")
        return str(Path(paths[0]))

    def _skip(self, task: str, doc_id: Any, why: str) -> None:
        self.skipped += 1
        log.warning("aurora lmms plugin: skipped %s doc %s: %s", task, doc_id, why)
        return None

    def _context(self, question: str) -> str | None:
        return self.model.engine.lead_context(question, self.lead)

    def _groups(self, requests: Sequence[Any], by_context: bool) -> dict[tuple, list[int]]:
        """Request indices grouped by (video, what is read before it[, context]), in first-seen order; requests
        without a readable video under the key (None, ...)."""
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            context, _, doc_to_visual, doc_id, task, split = req.args
            video = self._video(doc_to_visual, doc_id, task, split)
            lead = self._context(context) if video is not None else None
            key = (video, lead) + ((context,) if by_context else ())
            groups.setdefault(key, []).append(i)
        return groups

    def _read(self, video: str, lead: str | None, task_doc: tuple[str, Any]):
        from aurora.infer.engine import StreamError

        try:
            state = self.model.read(video, context=lead, frames=self.frames, fps=self.fps)
        except (StreamError, OSError, ValueError) as e:
            return self._skip(*task_doc, f"cannot read {video}: {' '.join(str(e).split())}")
        self.reads += 1
        return state

    # -- lmms-eval's three calls ---------------------------------------------------------------------------
    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        out = [""] * len(requests)
        for (video, lead), idx in self._groups(requests, by_context=False).items():
            if video is None:
                continue
            first = requests[idx[0]].args
            state = self._read(video, lead, (first[4], first[3]))
            if state is None:
                continue
            for i in idx:
                context, gen_kwargs = requests[i].args[:2]
                out[i] = self.model.answer(state, context, **self.generation(gen_kwargs)).text
        return out

    def generation(self, gen_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """lmms-eval's generation kwargs -> :meth:`Aurora.generation`'s (until -> stop strings, added to the
        template's; do_sample false or temperature 0 -> greedy)."""
        g = dict(gen_kwargs or {})
        until = g.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        stop = self.model.engine.template.stop
        temperature = float(g.get("temperature") or 0.0)
        if g.get("do_sample") is False or str(g.get("do_sample")).lower() == "false":
            temperature = 0.0
        return {"max_new_tokens": _number(g.get("max_new_tokens"), int) or self.max_new_tokens,
                "temperature": temperature, "top_p": float(g.get("top_p") or 1.0),
                "stop": [s for s in ([stop] if stop else []) + until if s]}

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = [(-math.inf, False)] * len(requests)
        engine = self.model.engine
        for (video, lead, context), idx in self._groups(requests, by_context=True).items():
            if video is None:
                continue
            first = requests[idx[0]].args
            vs = self._read(video, lead, (first[4], first[3]))
            if vs is None:
                continue
            after = engine.tokenizer.encode(engine.template.after.format(question=context))
            last, state = engine.read_ids(after, vs.state)
            logits = engine.rnn.logits(last) if last is not None else vs.logits
            for i in idx:
                continuation = requests[i].args[1]
                if callable(continuation):  # doc_to_target, as some tasks pass it
                    _, _, _, doc_id, task, split = requests[i].args
                    continuation = continuation(self.task_dict[task][split][doc_id])
                out[i] = self.score(logits, state, engine.tokenizer.encode(str(continuation)))
        return out

    def score(self, logits: Any, state: Any, ids: Sequence[int]) -> tuple[float, bool]:
        """(log-probability of ``ids`` after ``logits`` / ``state``, whether greedy decoding would produce them);
        ``state`` is not modified (the backbones return new states)."""
        import torch

        engine = self.model.engine
        total, greedy = 0.0, True
        with torch.no_grad():
            for n, tok in enumerate(ids):
                lp = torch.log_softmax(logits.float().reshape(-1), -1)
                total += float(lp[tok])
                greedy = greedy and int(lp.argmax()) == tok
                if n + 1 < len(ids):
                    last, state = engine.read_ids([tok], state)
                    logits = engine.rnn.logits(last)
        return total, greedy

    def generate_until_multi_round(self, requests: Iterable[Any]) -> list[str]:
        raise NotImplementedError("aurora: multi-round generation is not supported; use single-turn tasks")


# ---------------------------------------------------------------------------------------- the lmms subclass


def _lmms_class() -> type:
    from lmms_eval.api.model import lmms

    class AuroraLMMS(lmms):
        """``--model aurora``: lmms-eval's model interface over :class:`AuroraLMMSCore`."""

        is_simple = True

        def __init__(self, pretrained: str, **kwargs: Any) -> None:
            self.core = AuroraLMMSCore(pretrained, **kwargs)
            super().__init__()

        @property
        def task_dict(self) -> dict[str, Any]:  # lmms-eval fills it with the tasks' datasets; the core reads docs
            return self.core.task_dict

        @task_dict.setter
        def task_dict(self, value: dict[str, Any]) -> None:
            self.core.task_dict = value

        def loglikelihood(self, requests):
            return self.core.loglikelihood(requests)

        def generate_until(self, requests):
            return self.core.generate_until(requests)

        def generate_until_multi_round(self, requests):
            return self.core.generate_until_multi_round(requests)

    AuroraLMMS.__module__ = __name__
    AuroraLMMS.__qualname__ = "AuroraLMMS"
    return AuroraLMMS


def __getattr__(name: str) -> Any:
    if name == "AuroraLMMS":  # built when lmms-eval imports it (lmms_eval must be installed)
        cls = _lmms_class()
        globals()["AuroraLMMS"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def manifest():
    """The ``lmms_eval.models`` entry point: model id ``aurora`` -> :data:`AuroraLMMS` (a simple model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="aurora", simple_class_path=f"{__name__}.AuroraLMMS")
