"""The one rule that reads which option a free-text answer names, used by ``aurora test`` (the training module's
accuracy) and ``aurora eval`` (the benchmarks) alike."""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Sequence

from aurora.data.benchmarks import LETTERS

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


@dataclass(frozen=True)
class Choice:
    """The option a response names: ``index`` (None when it names none or several) and how it was found:
    ``letter``, ``text`` (an option's text, no letter), ``ambiguous`` (several options) or ``none``."""

    index: int | None
    how: str


_BARE = re.compile(r"^[\s(\[]*([A-Za-z])[\s)\].:]*$")  # "B", "(B)", "B.", "b)"
_LEAD = re.compile(r"^[\s(\[]*([A-Za-z])(?:[)\].:]|\s*-\s)\s*(.*)$", re.S)  # "B. dog", "(b) dog", "B) dog"
_PHRASE = re.compile(r"\b(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be))?\s*[:：]?\s*([(\[]?)"
                     r"([A-Za-z])(?![A-Za-z'])", re.I)  # "The answer is B", "answer: b) dog", "option (C)"
_CAPITAL = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")  # a standalone capital letter


def extract_choice(response: str, options: Sequence[str]) -> Choice:
    """Which of ``options`` a free-text response names.

    In order: the response is just a letter ("B", "(B)", "B."); an answer phrase ("The answer is B",
    "answer: b) dog"); a leading letter ("B. dog"); then an option's text without a letter ("the dog") and a
    standalone capital letter in a sentence ("I think B"), which must agree when both appear. A response naming
    more than one option, or a letter whose text is another option's, is ``ambiguous``: scored wrong and
    counted.
    """
    text = response.strip()
    valid = LETTERS[: len(options)]
    if not text:
        return Choice(None, "none")
    norm_opts = [normalize_answer(o) for o in options]

    def letters_found(found: list[str]) -> Choice | None:
        found = [f.upper() for f in found if len(f) == 1 and f.upper() in valid]
        if not found:
            return None
        if len(set(found)) > 1:
            return Choice(None, "ambiguous")
        return Choice(valid.index(found[0]), "letter")

    m = _BARE.match(text)
    if m and m.group(1).upper() in valid:
        return Choice(valid.index(m.group(1).upper()), "letter")
    phrase = [m for m in _PHRASE.finditer(text) if m.group(1) or not _article(m.group(2), text[m.end():])]
    found = letters_found([m.group(2) for m in phrase] + [_alternative(text[m.end():]) for m in phrase])
    if found is not None:
        return found
    m = _LEAD.match(text)
    if m and m.group(1).upper() in valid:
        if letters_found([m.group(1), _alternative(text[m.end(1):])]).index is None:
            return Choice(None, "ambiguous")  # "(A) or (B)"
        i = valid.index(m.group(1).upper())
        rest = normalize_answer(m.group(2))
        if rest and rest != norm_opts[i] and rest in norm_opts:
            return Choice(None, "ambiguous")  # "(B) cat" when cat is option A
        return Choice(i, "letter")
    by_text = _options_in_text(normalize_answer(text), norm_opts)
    caps = letters_found([m.group(1) for m in _CAPITAL.finditer(text) if not _article(m.group(1), text[m.end():])])
    if len(by_text) > 1 or (caps is not None and caps.index is None):
        return Choice(None, "ambiguous")
    if by_text and caps is not None:  # "B, the dog": the letter and the text must agree
        return caps if caps.index == by_text[0] else Choice(None, "ambiguous")
    if by_text:
        return Choice(by_text[0], "text")
    return caps if caps is not None else Choice(None, "none")


_ALTERNATIVE = re.compile(r"[\s)\].]*(?:or|and|/|,)\s*[(\[]?([A-Za-z])(?![A-Za-z'])")


def _alternative(after: str) -> str:
    """The letter of a second option offered right after the first ("A or C", "(A)/(B)"), else ""."""
    m = _ALTERNATIVE.match(after)
    return m.group(1) if m else ""


def _article(letter: str, after: str) -> bool:
    """Whether ``letter`` followed by ``after`` reads as the word "a" or "I" ("a dog", "I think"), not an option
    letter ("A or B" still names A)."""
    return (letter in "aAI" and re.match(r"\s+[A-Za-z]", after) is not None
            and re.match(r"\s+(?:or|and|nor)\b", after) is None)


def _options_in_text(text: str, options: list[str]) -> list[int]:
    """Options whose (normalised) text appears in ``text`` as whole words; a match inside a longer matching
    option ("dog" inside "hot dog") does not count."""
    spans = []
    for i, opt in enumerate(options):
        if opt:
            for m in re.finditer(rf"(?<!\S){re.escape(opt)}(?!\S)", text):
                spans.append((m.start(), m.end(), i))
    keep = {i for s, e, i in spans if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)}
    return sorted(keep)


def is_correct(prediction: str, answer: str, options: Sequence[str] | None = None) -> bool:
    """Whether ``prediction`` gives ``answer``: with ``options``, the option :func:`extract_choice` reads out of it
    is the answer's (an ambiguous or empty response is wrong); without, the normalised texts are equal."""
    if not options:
        return normalize_answer(prediction) == normalize_answer(answer)
    norm = [normalize_answer(o) for o in options]
    gold = normalize_answer(answer)
    if gold not in norm:  # an answer outside its options: only the answer's own text counts
        return normalize_answer(prediction) == gold
    return extract_choice(prediction, options).index == norm.index(gold)
