"""The LightningModule: training, evaluation by generation, per-part freezing and optimiser groups, stage
chaining (``init_from``), non-finite loss handling. The optimiser's groups and schedules (:mod:`aurora.train.optim`),
LoRA (:mod:`aurora.lora`), gradient checkpointing and FSDP2 sharding (:mod:`aurora.train.parallel`) live beside it."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from aurora.checkpoint import INFERENCE_KEY, MODEL_PREFIX, load_weights, read_checkpoint
from aurora.evaluation.metrics import AnswerAccuracy
from aurora.lora import apply_lora
from aurora.model import AuroraModel
from aurora.train.optim import SCHEDULES, decays, lr_schedule
from aurora.train.parallel import enable_grad_checkpoint, shard
from aurora.types import IGNORE_INDEX

log = logging.getLogger(__name__)

PARTS = ("vision", "projector", "rnn")
NONFINITE = ("halt", "skip", "off")


class AuroraModule(L.LightningModule):
    """AuroraLong as a LightningModule. Parts are chosen by registry name, e.g.
    ``rnn: {name: rwkv6, d_model: 2048, n_layer: 24}``; see ``recipes/``.

    Args:
        vision: the vision encoder, a registry spec (``name`` + that part's arguments); ``aurora parts vision``
            lists every registered encoder with its arguments, defaults and docstring.
        rnn: the language model, a registry spec; ``aurora parts rnn`` lists the backbones and their arguments.
        merge: the token merge (a spec or a name; null: no merging); ``aurora parts merge`` lists them.
        projector: the vision-to-language projector (a spec or a name); ``aurora parts projector`` lists them.
        freeze: parts whose weights stay fixed (any of ``vision``, ``projector``, ``rnn``).
        lr: peak learning rate; ``lr_mult`` scales it per part, e.g. ``{vision: 0.1}``.
        warmup_ratio: fraction of the total steps spent in linear warm-up, then cosine decay to
            ``min_lr_ratio * lr``.
        schedule: ``cosine`` (to ``min_lr_ratio * lr``), ``linear`` (to ``min_lr_ratio * lr``) or ``constant``,
            each after the linear warm-up; ``warmup_steps`` (if given) wins over ``warmup_ratio``.
        categories: question categories for the accuracy metric (default: the datamodule's, else one bucket).
        max_new_tokens: generation length limit for evaluation and prediction.
        init_from: the Lightning checkpoint of an earlier stage (``aurora fit``'s ``last.ckpt``): its model
            weights are loaded (``weights_only``), strictly: every weight present with its shape, nothing extra.
            Optimiser, schedule and step start fresh (``--ckpt_path`` resumes a run instead).
        init_parts: load only these parts from ``init_from`` (each strictly), e.g. ``[vision]`` from the
            checkpoint of a vision stage (:mod:`aurora.train.vision_stage`); the other parts keep their initialisation.
            Without ``init_from`` nothing is loaded.
        lora: LoRA adapters on the language model's linear layers (needs ``peft``): ``r``, ``alpha``,
            ``dropout``, ``target_modules`` (module-name suffixes like ``[att.key, ffn.value]``, or one regex
            matched against the full name) and ``bias``. Only the adapters of the language model then train.
        grad_checkpoint: parts whose blocks are recomputed in the backward pass (``vision``, ``rnn``).
        nonfinite: what a NaN or inf training loss does: ``halt`` raises an error naming the step, ``skip`` drops
            that optimiser step (no update, counted in ``train/nonfinite_steps``), ``off`` trains on it.
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
        schedule: str = "cosine",
        warmup_steps: int | None = None,
        categories: list[str] | None = None,
        max_new_tokens: int = 16,
        init_from: str | None = None,
        init_parts: list[str] | None = None,
        lora: dict[str, Any] | None = None,
        grad_checkpoint: list[str] | None = None,
        nonfinite: str = "halt",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
        if nonfinite not in NONFINITE:
            raise ValueError(f"unknown nonfinite {nonfinite!r}; known: {', '.join(NONFINITE)}")
        self.model = AuroraModel.from_specs(vision=vision, merge=merge, projector=projector, rnn=rnn)
        for part in freeze or []:
            self._part(part).requires_grad_(False)
        for part in lr_mult or {}:
            if part != "lora":
                self._part(part)
        for part in init_parts or []:
            self._part(part)
        stage = read_stage(init_from) if init_from else None
        stage_lora = stage is not None and any("lora_" in k for k in stage["state_dict"])
        if stage is not None and init_parts is not None:
            if stage_lora:
                raise ValueError(f"init_parts cannot take parts of {init_from}: it holds LoRA adapters")
            for part in init_parts:
                load_weights(self._part(part), stage, f"{MODEL_PREFIX}{part}.", f"this stage's {part}")
            stage = None
        if stage_lora and not lora:
            raise ValueError(f"init_from {init_from} holds LoRA adapters; give this stage the same `lora:` settings "
                             "(or merge the adapters into the weights first)")
        if stage is not None and not stage_lora:  # weights without adapters: loaded before any are added
            load_weights(self.model, stage, MODEL_PREFIX, "this stage's model (the stages must share the architecture)")
        if lora:
            apply_lora(self.model, lora)
        if stage_lora:
            load_weights(self.model, stage, MODEL_PREFIX, "this stage's model with its LoRA adapters")
        for part in grad_checkpoint or []:
            enable_grad_checkpoint(self._part(part), part)
        self.nonfinite_steps = 0
        self._drop_update = False
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
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log the reader's skipped / truncated sample counts (this process's data stream) with the metrics."""
        dm = getattr(self.trainer, "datamodule", None)
        counts = getattr(dm, "data_counts", None)
        if counts:
            for name, n in sorted(counts.items()):
                self.log("data/" + name.replace(" ", "_"), float(n), rank_zero_only=True)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.model(batch["pixels"], batch["input_ids"], batch["labels"])
        bs = batch["input_ids"].shape[0]
        if self.hparams.nonfinite != "off" and self._nonfinite(out.loss):
            return self._on_nonfinite(out.loss, batch_idx)
        # synced over processes: the logged curve is the global batch's, whatever the number of processes
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("train/token_acc", out.correct_tokens / out.num_tokens, batch_size=bs, sync_dist=True)
        return out.loss

    # -- non-finite losses ---------------------------------------------------------------------------------
    def _nonfinite(self, loss: Tensor) -> bool:
        """True when the loss is NaN/inf on this or any other process (all processes decide alike)."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return bool(bad > 0)

    def _on_nonfinite(self, loss: Tensor, batch_idx: int) -> Tensor:
        where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        value = loss.item() if torch.isfinite(loss).all() else float(loss)
        if self.hparams.nonfinite == "halt":
            raise FloatingPointError(
                f"non-finite training loss at {where}: {value} on this process (another process's loss if finite "
                "here); set `model.nonfinite: skip` to drop such steps, or resume from the last checkpoint with a "
                "lower learning rate"
            )
        self.nonfinite_steps += 1
        self._drop_update = True
        log.warning("non-finite training loss at %s: %s; this optimiser step is skipped (%d so far)",
                    where, value, self.nonfinite_steps)
        # backward still runs (every process takes part in the gradient all-reduce); the gradients are dropped
        # in on_before_optimizer_step, so the weights, AdamW's moments and its step count stay unchanged
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._drop_update:
            optimizer.zero_grad(set_to_none=True)  # AdamW skips parameters without gradients
            self._drop_update = False
        if self.hparams.nonfinite == "skip":
            self.log("train/nonfinite_steps", float(self.nonfinite_steps), rank_zero_only=True)

    def setup(self, stage: str) -> None:
        """Before any step: the datamodule's tokenizer must fit the language model's embedding (a larger vocabulary
        would fail mid-step as a bare ``IndexError: index out of range in self``)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tok = getattr(dm, "tokenizer", None)
        if tok is not None:
            from aurora.data.tokenizers import check_vocabulary

            rnn = self.hparams.rnn
            name = (rnn.get("name") or "converted") if hasattr(rnn, "get") else rnn
            check_vocabulary(tok, self.model.rnn.vocab_size, f"the rnn backbone {name!r}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_steps"] = self.nonfinite_steps
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        record = inference_record(dm)
        if record is not None:  # what ask / eval / viz / predict / Aurora.from_pretrained read the video with
            checkpoint[INFERENCE_KEY] = record

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_steps = int(checkpoint.get("nonfinite_steps", 0))

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
        for ids, labels, length in zip(batch["input_ids"], batch["labels"], _lengths(batch, tok)):
            answer_pos = (labels[:length] != IGNORE_INDEX).nonzero()
            # the prompt ends where the answer starts; without an answer, where the sample's own tokens end
            end = int(answer_pos[0]) if len(answer_pos) else length
            prompts.append(ids[:end])
        unshard = getattr(self.model, "unshard", None)  # FSDP2: generation calls parts outside the root's forward
        if unshard is not None:
            unshard()
        outs = self.model.generate_batch(batch["pixels"], prompts, max_new_tokens=self.hparams.max_new_tokens, stop_ids=stop)
        if unshard is not None:
            self.model.reshard()
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

    # -- distributed: FSDP2 through Lightning's ModelParallelStrategy -------------------------------------------
    def configure_model(self) -> None:
        """Shard with FSDP2 when the strategy is ``ModelParallelStrategy`` (no-op otherwise); see
        :func:`aurora.train.parallel.shard`."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is not None:
            shard(self.model, mesh)

    # -- optimisation --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        mult = hp.lr_mult or {}
        groups = []
        for part in PARTS:
            buckets: dict[str, list] = {}
            for name, p in getattr(self.model, part).named_parameters():
                if not p.requires_grad:
                    continue
                decay = decays(name, p)
                group = ("lora" if "lora_" in name else part) + ("" if decay else "/no_decay")
                buckets.setdefault(group, []).append(p)
            for group, params in buckets.items():
                base = group.split("/")[0]
                lr = hp.lr * mult.get(base, mult.get(part, 1.0))
                wd = 0.0 if group.endswith("/no_decay") else hp.weight_decay
                groups.append({"params": params, "lr": lr, "weight_decay": wd, "name": group})
        if not groups:
            raise ValueError("every part is frozen: nothing to train")
        # the fused AdamW (CPU and CUDA) takes one kernel for all parameters: 4x faster than the loop on CPU, where
        # the 65k-row embedding and head dominate the step; it needs floating-point parameters on one device type
        params = [p for g in groups for p in g["params"]]
        from torch.distributed.tensor import DTensor  # FSDP2 shards: left to the default implementation

        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") and not isinstance(p, DTensor)
                    for p in params) and len({p.device.type for p in params}) == 1
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=fused)
        total = self._total_steps()
        if total is None and hp.schedule != "constant":
            log.warning("the number of training steps is unknown (streaming data without trainer.max_steps or a "
                        "sample count in the dataset's manifest.json): the learning rate stays constant after "
                        "warm-up; set trainer.max_steps for the %s decay", hp.schedule)
        factor = lr_schedule(hp.schedule, total, hp.warmup_ratio, hp.min_lr_ratio, hp.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


    def _total_steps(self) -> int | None:
        """Optimiser steps of the whole run: Lightning's estimate (``max_steps``, or the loader's length times
        ``max_epochs``), else, for streamed shards, the train split's sample count from the datamodule's manifest."""
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if total and math.isfinite(total):
            return int(total)
        dm = getattr(trainer, "datamodule", None)
        manifest = getattr(dm, "manifest", None) or {}
        count = manifest.get("splits", {}).get("train", {}).get("count")
        epochs, batch = trainer.max_epochs, getattr(dm, "batch_size", None)
        if not count or not batch or epochs is None or epochs < 1:
            return None
        per_epoch = math.ceil(count / (batch * trainer.world_size))  # batches per process and epoch
        total = math.ceil(per_epoch / trainer.accumulate_grad_batches) * epochs
        log.info("schedule length from the manifest: %d samples -> %d optimiser steps", count, total)
        return total


def inference_record(dm: Any) -> dict[str, Any] | None:
    """What inference needs from the datamodule a model trained with (plain values: read ``weights_only``), or
    None when there is no AuroraDataModule-like datamodule."""
    import dataclasses

    if dm is None or not all(hasattr(dm, a) for a in ("num_frames", "image_size", "mean", "std", "template")):
        return None
    sampling = getattr(dm, "sampling", None) or {}
    tok = getattr(dm, "tokenizer", None)
    fps = sampling.get("fps")
    return {
        "num_frames": None if fps is not None else int(dm.num_frames), "fps": None if fps is None else float(fps),
        "max_frames": sampling.get("max_frames"), "image_size": int(dm.image_size),
        "mean": [float(x) for x in dm.mean], "std": [float(x) for x in dm.std],
        "template": dataclasses.asdict(dm.template) if dataclasses.is_dataclass(dm.template) else dict(dm.template),
        "eval_lead": getattr(dm, "eval_lead", None),
        "tokenizer": dict(getattr(tok, "spec", None) or {"name": "rwkv_world"}),
    }


# -- weights of an earlier stage ---------------------------------------------------------------------------------
def read_stage(path: str | Path) -> dict[str, Any]:
    """The Lightning checkpoint an earlier stage wrote (``weights_only``), with a clear error for a sharded one."""
    if not Path(path).exists():
        raise FileNotFoundError(f"init_from {path} not found: run the stage that writes it first (the recipe's "
                                "header names it), or set init_from: null")
    if Path(path).is_dir():
        raise ValueError(
            f"init_from {path} is a directory (a sharded FSDP checkpoint?); consolidate it into one file with "
            f"`python -m lightning.pytorch.utilities.consolidate_checkpoint {path}`, or train with "
            "ModelParallelStrategy(save_distributed_checkpoint=false)"
        )
    blob = read_checkpoint(path)
    blob["__path__"] = str(path)
    return blob


def _lengths(batch: dict[str, Any], tokenizer: Any) -> list[int]:
    """Each sample's own token count: the ``lengths`` :func:`~aurora.data.shards.collate` records, else its
    ``attention_mask``, else the ids up to the run of padding (the tokenizer's ``pad_id``) at the right end. Never
    "ids that are not 0": id 0 is a real token in many vocabularies, and the padding id may be another."""
    ids = batch["input_ids"]
    if batch.get("lengths") is not None:
        return [int(n) for n in batch["lengths"]]
    if batch.get("attention_mask") is not None:
        return [int(m.sum()) for m in batch["attention_mask"]]
    pad = int(getattr(tokenizer, "pad_id", 0))
    out = []
    for row in ids:
        real = (row != pad).nonzero()
        out.append(int(real[-1]) + 1 if len(real) else 0)
    return out
