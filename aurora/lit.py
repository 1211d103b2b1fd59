"""The LightningModule: training, evaluation by generation, per-part freezing and optimiser groups."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from aurora.metrics import AnswerAccuracy
from aurora.model import AuroraModel
from aurora.types import IGNORE_INDEX

PARTS = ("vision", "projector", "rnn")


class AuroraModule(L.LightningModule):
    """AuroraLong as a LightningModule. Parts are chosen by registry name, e.g.
    ``rnn: {name: rwkv6, d_model: 2048, n_layer: 24}``; see ``recipes/``.

    Args:
        vision, merge, projector, rnn: registry specs (``name`` + that part's arguments).
        freeze: parts whose weights stay fixed (any of ``vision``, ``projector``, ``rnn``).
        lr: peak learning rate; ``lr_mult`` scales it per part, e.g. ``{vision: 0.1}``.
        warmup_ratio: fraction of the total steps spent in linear warm-up, then cosine decay to
            ``min_lr_ratio * lr``.
        categories: question categories for the accuracy metric (default: the datamodule's, else one bucket).
        max_new_tokens: generation length limit for evaluation and prediction.
    """

    def __init__(
        self,
        vision: dict[str, Any],
        rnn: dict[str, Any],
        merge: dict[str, Any] | str | None = None,
        projector: dict[str, Any] | str = "mlp",
        freeze: list[str] | None = None,
        lr: float = 1e-3,
        lr_mult: dict[str, float] | None = None,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.1,
        categories: list[str] | None = None,
        max_new_tokens: int = 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = AuroraModel.from_specs(vision=vision, merge=merge, projector=projector, rnn=rnn)
        for part in freeze or []:
            self._part(part).requires_grad_(False)
        for part in lr_mult or {}:
            self._part(part)
        self._categories = categories
        self.test_accuracy: AnswerAccuracy | None = None
        self._tokenizer = None
        self._template = None

    def _part(self, name: str) -> torch.nn.Module:
        if name not in PARTS:
            raise KeyError(f"unknown model part {name!r}; known parts: {', '.join(PARTS)}")
        return getattr(self.model, name)

    # -- tokenizer and prompt template come with the data --------------------------------------------------
    def _text(self):
        if self._tokenizer is None:
            dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            if dm is not None and getattr(dm, "tokenizer", None) is not None:
                self._tokenizer, self._template = dm.tokenizer, dm.template
            else:
                from aurora.data.prompt import PromptTemplate, Tokenizer

                self._tokenizer, self._template = Tokenizer(), PromptTemplate()
        return self._tokenizer, self._template

    def _metric(self) -> AnswerAccuracy:
        if self.test_accuracy is None:
            cats = self._categories
            if cats is None:
                dm = getattr(self.trainer, "datamodule", None)
                cats = list(getattr(dm, "categories", None) or ["all"])
            self.test_accuracy = AnswerAccuracy(cats).to(self.device)
        return self.test_accuracy

    # -- steps ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.model(batch["pixels"], batch["input_ids"], batch["labels"])
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs)
        self.log("train/token_acc", out.correct_tokens / out.num_tokens, batch_size=bs)
        return out.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.model(batch["pixels"], batch["input_ids"], batch["labels"])
        bs = batch["input_ids"].shape[0]
        self.log("val/loss", out.loss, prog_bar=True, batch_size=bs)
        self.log("val/token_acc", out.correct_tokens / out.num_tokens, prog_bar=True, batch_size=bs)

    def predict_answers(self, batch: dict[str, Any]) -> list[str]:
        """Greedy answers for every sample of a batch (equal-length prompts decoded together; same result as alone)."""
        tok, template = self._text()
        stop = [tok.encode(template.stop)] if template.stop else None
        prompts = []
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            answer_pos = (labels != IGNORE_INDEX).nonzero()
            # the prompt ends where the answer starts; without an answer, where the right padding (0) starts
            end = int(answer_pos[0]) if len(answer_pos) else int((ids != 0).sum())
            prompts.append(ids[:end])
        outs = self.model.generate_batch(batch["pixels"], prompts, max_new_tokens=self.hparams.max_new_tokens, stop_ids=stop)
        return [tok.decode(out).strip() for out in outs]

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        preds = self.predict_answers(batch)
        n = len(preds)
        metric = self._metric()
        cats = batch.get("category") or ["all"] * n
        if metric.categories == ["all"]:
            cats = ["all"] * n
        metric.update(preds, batch["answer"], cats, batch.get("options") or [None] * n)

    def on_test_epoch_end(self) -> None:
        if self.test_accuracy is not None:
            for k, v in self.test_accuracy.compute().items():
                self.log(f"test/{k}", v)
            self.test_accuracy.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        preds = self.predict_answers(batch)
        return [
            {"id": batch["id"][i], "question": batch["question"][i], "answer": batch["answer"][i], "prediction": p}
            for i, p in enumerate(preds)
        ]

    # -- optimisation --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        groups = []
        for part in PARTS:
            decay, no_decay = [], []
            for name, p in getattr(self.model, part).named_parameters():
                if not p.requires_grad:
                    continue
                # decay only matrix weights of linear maps; never norms, biases, embeddings or RNN mixing vectors
                (decay if p.ndim >= 2 and name.endswith("weight") and "emb" not in name else no_decay).append(p)
            lr = hp.lr * (hp.lr_mult or {}).get(part, 1.0)
            for params, wd in ((decay, hp.weight_decay), (no_decay, 0.0)):
                if params:
                    groups.append({"params": params, "lr": lr, "weight_decay": wd, "name": f"{part}{'' if wd else '/no_decay'}"})
        if not groups:
            raise ValueError("every part is frozen: nothing to train")
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = self.trainer.estimated_stepping_batches
        total = int(total) if total and math.isfinite(total) else None
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, hp.warmup_ratio, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def warmup_cosine(total_steps: int | None, warmup_ratio: float, min_ratio: float):
    """Multiplier for step s: linear warm-up, then cosine to ``min_ratio``; constant after warm-up when the
    total is unknown (e.g. an endless stream without ``max_steps``)."""
    warmup = max(1, int(round((total_steps or 0) * warmup_ratio)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if total_steps is None:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor

