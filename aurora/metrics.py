"""Answer accuracy for video QA: exact answers and multiple choice, overall and per question category."""
from __future__ import annotations

import re
import string

import torch
from torchmetrics import Metric

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def match_option(prediction: str, options: list[str] | None) -> str:
    """The option a free-text prediction names (the first option word it contains, earliest first);
    the normalised prediction itself when there are no options or none is named."""
    pred = normalize_answer(prediction)
    if not options:
        return pred
    words = pred.split()
    norm = [normalize_answer(o) for o in options]
    if pred in norm:
        return pred
    best, where = None, len(words) + 1
    for opt in norm:
        n = len(opt.split())
        for i in range(len(words) - n + 1):
            if " ".join(words[i : i + n]) == opt and i < where:
                best, where = opt, i
                break
    return best if best is not None else pred


def is_correct(prediction: str, answer: str, options: list[str] | None = None) -> bool:
    return match_option(prediction, options) == normalize_answer(answer)


class AnswerAccuracy(Metric):
    """Accuracy over question categories known up front (``categories``), plus the overall figure and the
    chance level (1 / number of options, averaged over the samples seen)."""

    full_state_update = False

    def __init__(self, categories: list[str]) -> None:
        super().__init__()
        self.categories = list(categories)
        k = len(self.categories)
        self.add_state("correct", default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("chance", default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self, predictions: list[str], answers: list[str], categories: list[str], options: list[list[str] | None]
    ) -> None:
        for pred, ans, cat, opts in zip(predictions, answers, categories, options):
            if cat not in self.categories:
                raise KeyError(f"unknown question category {cat!r}; known: {', '.join(self.categories)}")
            i = self.categories.index(cat)
            self.correct[i] += float(is_correct(pred, ans, opts))
            self.total[i] += 1
            self.chance[i] += 1.0 / len(opts) if opts else 0.0

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.total.sum().clamp_min(1)
        out = {"accuracy": self.correct.sum() / total, "chance": self.chance.sum() / total}
        for i, cat in enumerate(self.categories):
            if self.total[i] > 0:
                out[f"accuracy_{cat}"] = self.correct[i] / self.total[i]
        return {k: v.float() for k, v in out.items()}
