"""Prompts and tokens: the sandwich prompt (instruction, video, instruction) and the default tokenizer, RWKV World
(the tokenizer registry, with the others, is :mod:`aurora.data.tokenizers`)."""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, TypedDict

from aurora.data.tokenizers import RWKVWorld, world_vocab_file  # noqa: F401  (world_vocab_file: re-exported)
from aurora.types import IGNORE_INDEX, VIDEO_TOKEN


# the RWKV World tokenizer, the default of the tokenizer registry (aurora.data.tokenizers); ``Tokenizer`` here is
# kept as its name for the many callers that build the default one
Tokenizer = RWKVWorld


LEADS = ("question", "generic", "none", "mix")
DEFAULT_MIX = {"question": 0.5, "generic": 0.25, "none": 0.25}


class PromptFields(TypedDict, total=False):
    """A recipe's ``data.template``: :class:`PromptTemplate`'s fields, typed. Typed, not ``dict[str, Any]``:
    jsonargparse reads a string under ``Any`` as YAML, so ``before: "Q: {question}"`` became the mapping
    ``{"Q": {"question": None}}`` and the first prompt built failed ("'dict' object has no attribute 'format'")."""

    before: str
    after: str
    answer: str
    stop: str
    lead: str
    generic: str
    mix: dict[str, float] | None


@dataclass
class PromptTemplate:
    """Sandwich prompting (VisualRWKV): the instruction before AND after the video, then the answer.

        "User: {question}\n" <video> "\nUser: {question}\n\nAssistant:" " {answer}" "\n\n"

    Only the answer and the stop string are learned (labels); generation stops at ``stop``.

    ``lead`` is what is read before the video: ``question`` (the paper's sandwich, the default), ``generic`` (the
    ``before`` text around the fixed instruction ``generic`` instead of the question), ``none`` (nothing: the
    video comes first), or ``mix``: one of the three per training sample, drawn with the probabilities ``mix``
    from a seed and the sample's key, so a run is reproducible. A model trained with ``mix`` has seen its question
    arrive only after the video, so one state read with a generic lead (or none) serves any question; reading from
    scratch it is asked the sandwich (``lead_at_inference``).
    """

    before: str = "User: {question}\n"
    after: str = "\nUser: {question}\n\nAssistant:"
    answer: str = " {answer}"
    stop: str = "\n\n"
    lead: str = "question"
    generic: str = "Describe the video."
    mix: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.lead not in LEADS:
            raise ValueError(f"unknown prompt lead {self.lead!r}; known: {', '.join(LEADS)}")
        if self.mix is not None:
            self.mix = {str(k): float(v) for k, v in dict(self.mix).items()}
            bad = sorted(set(self.mix) - set(LEADS[:3]))
            if bad or not self.mix or min(self.mix.values()) < 0 or sum(self.mix.values()) <= 0:
                raise ValueError(f"prompt mix must give non-negative weights to some of question, generic, none; "
                                 f"got {self.mix}")

    @property
    def lead_at_inference(self) -> str:
        """The lead a question read from scratch gets: the trained one, and the sandwich for a mix."""
        return "question" if self.lead == "mix" else self.lead

    def choose_lead(self, key: str = "", seed: int = 0) -> str:
        """This sample's lead: ``lead`` itself, or for ``mix`` a seeded draw from the sample's key."""
        if self.lead != "mix":
            return self.lead
        weights = self.mix or DEFAULT_MIX
        names = [n for n in LEADS[:3] if weights.get(n, 0) > 0]
        total = sum(weights[n] for n in names)
        u = (zlib.crc32(f"{seed}/{key}".encode()) & 0xFFFFFFFF) / 2**32 * total
        for name in names:
            u -= weights[name]
            if u < 0:
                return name
        return names[-1]

    def lead_text(self, question: str, lead: str | None = None) -> str:
        """The text read before the video for ``lead`` (default: :attr:`lead_at_inference`)."""
        lead = self.lead_at_inference if lead is None else lead
        if lead == "question":
            return self.before.format(question=question)
        if lead == "generic":
            return self.before.format(question=self.generic)
        if lead == "none":
            return ""
        raise ValueError(f"unknown prompt lead {lead!r}; known: question, generic, none")

    def build_prompt(self, tokenizer: Tokenizer, question: str, lead: str | None = None) -> list[int]:
        return (tokenizer.encode(self.lead_text(question, lead)) + [VIDEO_TOKEN]
                + tokenizer.encode(self.after.format(question=question)))

    def build(self, tokenizer: Tokenizer, question: str, answer: str, lead: str | None = None
              ) -> tuple[list[int], list[int]]:
        """(input_ids, labels): labels equal input_ids on the answer and stop tokens, IGNORE_INDEX elsewhere."""
        prompt = self.build_prompt(tokenizer, question, lead)
        target = tokenizer.encode(self.answer.format(answer=answer)) + tokenizer.encode(self.stop)
        return prompt + target, [IGNORE_INDEX] * len(prompt) + target


class AnnotationError(ValueError):
    """A sample's annotation that cannot be used (wrong JSON types, missing turns, text that is not valid
    Unicode). A ``ValueError``, so every reader that skips bad samples on ValueError skips these too."""


def check_text(text: Any, what: str) -> str:
    """``text`` if it is a string that encodes as UTF-8 (no lone surrogates such as ``\\ud800``, which JSON
    allows and the tokenizer cannot encode); AnnotationError naming ``what`` otherwise."""
    if not isinstance(text, str):
        raise AnnotationError(f"{what} must be a string, got {type(text).__name__} {str(text)[:40]!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise AnnotationError(f"{what} is not valid Unicode ({e.reason} at character {e.start})") from None
    return text


def question_and_answer(conversations: Any) -> tuple[str, str]:
    """The first human question and the reply to it, from a LLaVA-style conversation; the ``<video>`` /
    ``<image>`` markers are dropped (the template places the video).

    Annotations come from files anyone wrote: the conversation must be a list of mappings, each turn's ``from``
    and ``value`` strings of valid Unicode; anything else raises AnnotationError (a ValueError) naming the
    problem, so readers skip and count the sample instead of crashing on it."""
    if not isinstance(conversations, list):
        raise AnnotationError(f"conversations must be a list of turns, got {type(conversations).__name__}")
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise AnnotationError(f"turn {i} must be a mapping with 'from' and 'value', got {type(turn).__name__}")
    human = next((t for t in conversations if t.get("from") == "human"), None)
    gpt = next((t for t in conversations if t.get("from") == "gpt"), None)
    if human is None or gpt is None:
        raise AnnotationError("conversation needs a 'human' and a 'gpt' turn")
    question = check_text(human.get("value"), "the human turn's value")
    answer = gpt.get("value")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):  # "value": 5, a numeric answer
        answer = str(answer)
    answer = check_text(answer, "the gpt turn's value")
    return question.replace("<video>", "").replace("<image>", "").strip(), answer.strip()
