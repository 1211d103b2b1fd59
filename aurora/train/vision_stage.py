"""A vision stage: train the vision encoder (with its merge) on labelled images before the video-language stages.

    aurora pretrain-vision --config recipes/demo_vision.yaml      (LightningCLI: fit, overrides, --print_config)

The paper's encoder is a pretrained SigLIP; a from-scratch encoder (the demo's) has not learnt to see yet. This stage
trains it on per-image labels: the encoder's merged tokens of each image are **mean-pooled** and a linear head per
label classifies them. The mean, not the max, on purpose: a linear RNN reads the visual tokens as (gated,
decayed) sums, so an encoder whose object features survive averaging over the frame's tokens is one the language
model can read; with a max-pool probe the encoder learns features a sum washes out.

The checkpoint holds the encoder as ``model.vision.*`` (as in :class:`aurora.train.module.AuroraModule`), so a video recipe
takes it with ``init_from: .../last.ckpt`` and ``init_parts: [vision]`` (usually with ``freeze: [vision]``).
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.registry import VISION


class VisionStage(L.LightningModule):
    """The vision encoder + mean-pool + one linear head per label.

    Args:
        vision, merge: registry specs, as in the video recipe (the same merge: the encoder learns with the token
            counts it will have later).
        labels: classes per label, e.g. ``{color: 4, shape: 3, row: 4, col: 4}`` (default: the datamodule's).
        lr, weight_decay, warmup_ratio, min_lr_ratio: AdamW with linear warm-up and cosine decay.
    """

    def __init__(self, vision: dict[str, Any], merge: dict[str, Any] | str | None = None,
                 labels: dict[str, int] | None = None, lr: float = 2e-3, weight_decay: float = 0.01,
                 warmup_ratio: float = 0.03, min_lr_ratio: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()

        self.model = nn.Module()
        self.model.vision = VISION.build(vision, merge=merge)
        self.heads = nn.ModuleDict()
        if labels:
            self._build_heads(labels)

    def _build_heads(self, labels: dict[str, int]) -> None:
        if not labels or any(int(n) < 2 for n in labels.values()):
            raise ValueError(f"labels must name at least one label with 2 or more classes, got {labels}")
        for name, n in labels.items():
            self.heads[name] = nn.Linear(self.model.vision.out_dim, int(n))

    def setup(self, stage: str) -> None:
        if not len(self.heads):
            classes = getattr(self.trainer.datamodule, "classes", None) if self.trainer else None
            if not classes:
                raise ValueError("VisionStage needs `labels` (classes per label) or a datamodule with `classes`")
            self._build_heads(classes)

    def pooled(self, pixels: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, D): the mean of each image's merged tokens."""
        return self.model.vision(pixels).tokens.mean(1)

    def _step(self, batch: dict[str, Any], split: str) -> Tensor:
        feat = self.pooled(batch["pixels"])
        missing = sorted(set(self.heads) - set(batch["labels"]))
        if missing:
            raise KeyError(f"the batch lacks the label(s) {', '.join(missing)}; it has {', '.join(batch['labels'])}")
        loss = 0.0
        logged = self._trainer is not None  # also callable outside a Trainer (tests, notebooks)
        for name, head in self.heads.items():
            logits, target = head(feat), batch["labels"][name]
            loss = loss + F.cross_entropy(logits, target)
            if logged:
                acc = (logits.argmax(-1) == target).float().mean()
                self.log(f"{split}/acc_{name}", acc, prog_bar=split == "val", batch_size=len(target))
        if logged:
            self.log(f"{split}/loss", loss, prog_bar=True, batch_size=feat.shape[0])
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        from aurora.train.optim import decays, lr_schedule

        hp = self.hparams
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        decay = [p for n, p in trainable if decays(n, p)]
        rest = [p for n, p in trainable if not decays(n, p)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=hp.lr, fused=True)
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else None
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule("cosine", total, hp.warmup_ratio, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
