"""The whole AuroraLong data flow, in one place.

    video (B, F, 3, H, W)
      -> frames folded into the batch (B*F, 3, H, W)
      -> vision encoder, with the sorted token merge inside its layers   (VisualTokens: tokens, sizes, frames)
      -> the merge's video step (identity, or a merge across frames)      (a fixed token budget per video)
      -> projector                                                       (B, F*n, d_model)
      -> spliced into the text embeddings at the <video> placeholder     (sandwich prompt)
      -> linear RNN language model (hidden states, constant-size state)
      -> logits only where labels exist -> cross-entropy
"""
from __future__ import annotations

from dataclasses import dataclass
import os
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.checkpoint import MODEL_PREFIX, CheckpointError, load_converted, load_weights, read_checkpoint
from aurora.registry import PROJECTOR, RNN, VISION
from aurora.types import IGNORE_INDEX, VIDEO_TOKEN, RecurrentLM, VisionEncoder, VisualTokens


@dataclass
class Output:
    loss: Tensor
    num_tokens: int  # answer tokens that counted in the loss
    correct_tokens: int  # of those, predicted exactly (teacher forcing)


class AuroraModel(nn.Module):
    def __init__(self, vision: VisionEncoder, projector: nn.Module, rnn: RecurrentLM) -> None:
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.rnn = rnn

    @classmethod
    def from_specs(
        cls,
        vision: Mapping[str, Any],
        merge: Mapping[str, Any] | str | None,
        projector: Mapping[str, Any] | str,
        rnn: Mapping[str, Any],
    ) -> "AuroraModel":
        """Build every part by registry name; the projector's dimensions are wired from its neighbours.

        ``rnn: {checkpoint: PATH.safetensors}`` starts the language model from a file written by ``aurora convert``
        (its architecture comes from the JSON beside it; other keys such as ``backend`` override it).
        """
        vis = VISION.build(vision, merge=merge)
        lm = cls._language_model(rnn)
        proj = PROJECTOR.build(projector, in_dim=vis.out_dim, out_dim=lm.d_model)
        return cls(vis, proj, lm)

    @staticmethod
    def _language_model(spec: Mapping[str, Any]) -> RecurrentLM:
        spec = dict(spec)
        path = spec.pop("checkpoint", None)
        if path is None:
            return RNN.build(spec)
        import json
        from pathlib import Path


        name = spec.pop("name", None)
        side = Path(path).with_suffix(".json")
        held = json.loads(side.read_text()).get("name") if side.is_file() else None
        if name is not None and held is not None and name != held:
            raise ValueError(f"rnn.name is {name!r} but {path} holds a {held!r} backbone")
        return load_converted(path, **spec)

    # -- the pieces of the data flow -------------------------------------------------------------------
    def encode_video(self, pixels: Tensor, keys: list[str] | None = None) -> tuple[Tensor, VisualTokens]:
        """(B, F, 3, H, W) -> visual embeddings (B, T, d_model) and the encoder's :class:`VisualTokens`.

        T is F * n for a per-frame merge (frames in time order). A merge across frames (``temporal``) or a
        video-wide ordering (``size_global``) returns rows of several frames with a fixed token budget per row,
        so T is the same for every video of a batch and the batch stays rectangular. ``keys`` name the videos
        for a frozen encoder's feature cache."""
        if pixels.dim() != 5:
            raise ValueError(f"pixels must be (batch, frames, 3, height, width), got shape {tuple(pixels.shape)}")
        b = pixels.shape[0]
        vt = self.vision.encode_videos(pixels, keys)
        tokens = vt.tokens.reshape(b, -1, vt.tokens.shape[-1])  # the rows of one video are consecutive
        return self.projector(tokens), vt

    def splice(self, input_ids: Tensor, video: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Replace the single VIDEO_TOKEN of each row by that row's video embeddings (sandwich prompt)."""
        is_video = input_ids == VIDEO_TOKEN
        counts = is_video.sum(1)
        if not torch.all(counts == 1):
            bad = [i for i, c in enumerate(counts.tolist()) if c != 1]
            raise ValueError(
                f"every sample needs exactly one video placeholder ({VIDEO_TOKEN}); rows {bad} have "
                f"{[counts[i].item() for i in bad]}"
            )
        if video.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{video.shape[0]} videos for {input_ids.shape[0]} prompts")
        text = self.rnn.embed(input_ids.clamp_min(0))
        pos = is_video.float().argmax(1).tolist()
        rows, row_labels = [], []
        for i, p in enumerate(pos):
            rows.append(torch.cat([text[i, :p], video[i].to(text.dtype), text[i, p + 1 :]]))
            if labels is not None:
                ignore = labels.new_full((video.shape[1],), IGNORE_INDEX)
                row_labels.append(torch.cat([labels[i, :p], ignore, labels[i, p + 1 :]]))
        return torch.stack(rows), (torch.stack(row_labels) if labels is not None else None)

    def forward(self, pixels: Tensor, input_ids: Tensor, labels: Tensor) -> Output:
        video, _ = self.encode_video(pixels)
        embeds, labels = self.splice(input_ids, video, labels)
        hidden, _ = self.rnn(embeds)
        # position t predicts token t+1; compute logits only where a label exists
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        if not mask.any():
            raise ValueError("batch has no answer tokens to learn from (all labels are ignored)")
        logits = self.rnn.logits(hidden[:, :-1][mask]).float()
        gold = targets[mask]
        loss = F.cross_entropy(logits, gold)
        correct = int((logits.argmax(-1) == gold).sum())
        return Output(loss=loss, num_tokens=int(mask.sum()), correct_tokens=correct)

    # -- generation from the recurrent state ------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, pixels: Tensor, prompt_ids: Tensor) -> tuple[Tensor, Any]:
        """Read one prompt (1, T) with its video (1, F, 3, H, W); returns the last logits and the state."""
        video, _ = self.encode_video(pixels)
        embeds, _ = self.splice(prompt_ids, video)
        hidden, state = self.rnn(embeds)
        return self.rnn.logits(hidden[:, -1]), state

    @torch.no_grad()
    def decode_steps(self, logits: Tensor, state: Any, max_new_tokens: int, pick: Callable[[Tensor], Tensor],
                     take: Callable[[int, int], bool]) -> None:
        """The decoding loop every generator shares: B rows in lock-step from their last logits (B, vocab) and the
        state after them. Each step ``pick(logits)`` gives the (B,) next tokens and ``take(row, token)`` records a
        row's token, returning True when that row is finished (it is not asked again); the loop ends when every
        row is finished or after ``max_new_tokens`` steps, and feeds the tokens back only when a step follows."""
        done = [False] * logits.shape[0]
        for step in range(max_new_tokens):
            toks = pick(logits)
            for j, finished in enumerate(done):
                if not finished:
                    done[j] = take(j, int(toks[j]))
            if all(done) or step == max_new_tokens - 1:
                return
            hidden, state = self.rnn(self.rnn.embed(toks[:, None]), state)
            logits = self.rnn.logits(hidden[:, -1])

    @torch.no_grad()
    def score_continuations(self, pixels: Tensor, prompt_ids: Tensor, continuations: list[list[int]]) -> list[float]:
        """Log-likelihood of each continuation (token ids) after one prompt (1, T) with its video: the video and
        prompt are read once, and every continuation is scored from a fork of that state (the backbones return a
        new state, so forking costs nothing). The sum of the tokens' log-probabilities, as lmms-eval's
        ``loglikelihood`` requests."""
        logits, state = self.prefill(pixels, prompt_ids)
        return self.continuation_scores(logits, state, continuations)

    @torch.no_grad()
    def continuation_scores(self, logits: Tensor, state: Any, continuations: list[list[int]]) -> list[float]:
        """The log-likelihood of each continuation from the last logits (1, vocab) and the state after them."""
        first = torch.log_softmax(logits.float(), -1)[0]
        device = logits.device
        scores = []
        for ids in continuations:
            if not ids:
                raise ValueError("an empty continuation has no likelihood to score")
            total = float(first[ids[0]])
            if len(ids) > 1:
                hidden, _ = self.rnn(self.rnn.embed(torch.tensor([ids[:-1]], device=device)), state)
                logp = torch.log_softmax(self.rnn.logits(hidden[0]).float(), -1)
                total += float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
            scores.append(total)
        return scores

    @torch.no_grad()
    def generate(
        self,
        pixels: Tensor,
        prompt_ids: Tensor,
        max_new_tokens: int = 16,
        stop_ids: list[list[int]] | None = None,
        eos_id: int | None = 0,
    ) -> list[int]:
        """Greedy decoding for one sample (1, T); see :meth:`generate_batch`."""
        return self.generate_batch(pixels, [prompt_ids[0]], max_new_tokens, stop_ids, eos_id)[0]

    @torch.no_grad()
    def generate_batch(
        self,
        pixels: Tensor,
        prompts: list[Tensor],
        max_new_tokens: int = 16,
        stop_ids: list[list[int]] | None = None,
        eos_id: int | None = 0,
    ) -> list[list[int]]:
        """Greedy decoding for a batch of videos (B, F, 3, H, W) and their prompts (B 1-D id tensors, any lengths).

        The videos are encoded in one batch. An RNN has no attention mask, so padding would enter the state:
        prompts of equal length are read together instead, each group decoded in lock-step from its state, with
        exactly the result of decoding every sample alone. A row stops at ``eos_id`` or when its output ends with
        a stop sequence (which is removed).
        """
        if len(prompts) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} videos for {len(prompts)} prompts")
        video, _ = self.encode_video(pixels)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(len(p), []).append(i)
        outs: list[list[int]] = [[] for _ in prompts]
        for rows in groups.values():
            embeds, _ = self.splice(torch.stack([prompts[i] for i in rows]), video[rows])
            hidden, state = self.rnn(embeds)

            def take(j: int, tok: int, rows: list[int] = rows) -> bool:
                if eos_id is not None and tok == eos_id:
                    return True
                out = outs[rows[j]]
                out.append(tok)
                for stop in stop_ids or []:
                    if stop and out[-len(stop):] == stop:
                        del out[-len(stop):]
                        return True
                return False

            self.decode_steps(self.rnn.logits(hidden[:, -1]), state, max_new_tokens, lambda lg: lg.argmax(-1), take)
        return outs


def load_model(ckpt: str | os.PathLike):
    """The :class:`AuroraModel` of a checkpoint written by ``aurora fit``, built from the module's
    saved hyperparameters (the registry specs) and loaded with its weights; returns ``(model.eval(), hparams)``."""
    blob = read_checkpoint(ckpt)
    blob["__path__"] = str(ckpt)
    hp = blob.get("hyper_parameters")
    if not isinstance(hp, Mapping) or "vision" not in hp or "rnn" not in hp:
        raise CheckpointError(f"{ckpt} has no AuroraModule hyperparameters (vision, rnn): not written by `aurora fit`?")
    try:
        model = AuroraModel.from_specs(vision=hp["vision"], merge=hp.get("merge"),
                                       projector=hp.get("projector", "mlp"), rnn=hp["rnn"])
    except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise CheckpointError(f"cannot build the model of {ckpt} from its hyperparameters: {msg}") from e
    if hp.get("lora"):  # trained with LoRA adapters: the same adapter modules first, then every weight
        from aurora.lora import apply_lora

        apply_lora(model, dict(hp["lora"]))
    load_weights(model, blob, MODEL_PREFIX, "the model its hyperparameters describe")
    return model.eval(), dict(hp)
