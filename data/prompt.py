"""Prompts and tokens: the RWKV World tokenizer and the sandwich prompt (instruction, video, instruction)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from aurora.types import IGNORE_INDEX, VIDEO_TOKEN


@lru_cache(maxsize=None)
def _trie(vocab_file: str):
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(vocab_file)


def world_vocab_file() -> str:
    import rwkv

    return str(Path(rwkv.__file__).parent / "rwkv_vocab_v20230424.txt")


class Tokenizer:
    """The RWKV World tokenizer (65,536 tokens, shipped by the ``rwkv`` package). Token 0 is end-of-text."""

    eos_id = 0
    pad_id = 0

    def __init__(self, vocab_file: str | None = None) -> None:
        self.vocab_file = vocab_file or world_vocab_file()
        if not Path(self.vocab_file).is_file():
            raise FileNotFoundError(f"tokenizer vocabulary not found: {self.vocab_file}")
        self._tok = _trie(self.vocab_file)
        self.vocab_size = 65536

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self._tok.decodeBytes([i for i in ids if i != self.eos_id]).decode("utf-8", errors="replace")


@dataclass
class PromptTemplate:
    """Sandwich prompting (VisualRWKV): the instruction before AND after the video, then the answer.

        "User: {question}\\n" <video> "\\nUser: {question}\\n\\nAssistant:" " {answer}" "\\n\\n"

    Only the answer and the stop string are learned (labels); generation stops at ``stop``.
    """

    before: str = "User: {question}\n"
    after: str = "\nUser: {question}\n\nAssistant:"
    answer: str = " {answer}"
    stop: str = "\n\n"

    def build_prompt(self, tokenizer: Tokenizer, question: str) -> list[int]:
        return (tokenizer.encode(self.before.format(question=question)) + [VIDEO_TOKEN]
                + tokenizer.encode(self.after.format(question=question)))

    def build(self, tokenizer: Tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(input_ids, labels): labels equal input_ids on the answer and stop tokens, IGNORE_INDEX elsewhere."""
        prompt = self.build_prompt(tokenizer, question)
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
