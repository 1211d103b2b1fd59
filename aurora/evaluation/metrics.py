"""Answer accuracy for video QA: exact answers and multiple choice, overall and per question category."""
from __future__ import annotations

import torch
from torchmetrics import Metric

from aurora.evaluation.options import is_correct


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
