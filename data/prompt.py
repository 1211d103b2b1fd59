"""Prompts and tokens: the RWKV World tokenizer and the sandwich prompt (instruction, video, instruction)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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


def question_and_answer(conversations: list[dict]) -> tuple[str, str]:
    """The first human question and the reply to it, from a LLaVA-style conversation; the ``<video>`` /
    ``<image>`` markers are dropped (the template places the video)."""
    human = next((t for t in conversations if t.get("from") == "human"), None)
    gpt = next((t for t in conversations if t.get("from") == "gpt"), None)
    if human is None or gpt is None:
        raise KeyError("conversation needs a 'human' and a 'gpt' turn")
    question = human["value"].replace("<video>", "").replace("<image>", "").strip()
    return question, str(gpt["value"]).strip()
