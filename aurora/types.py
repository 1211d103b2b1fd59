"""The data that flows between parts. One protocol per kind of part lives here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass
class VisualTokens:
    """What a vision encoder (with its merge) returns: rows of tokens, read by the language model row after row.

    ``tokens``: (R, n, D) merged tokens in the order the language model will read them.
    ``sizes``: (R, n) number of original patches merged into each token (across frames for a temporal merge).
    ``frames``: (R, n) int64 index of the frame each token comes from; a token that spans several frames (a
        temporal merge) carries the earliest one. From the encoder it is the frame's row in the pixels it was
        given; :meth:`aurora.model.AuroraModel.encode_video` makes it the frame's index within its video.
    ``source``: (R, n, P) map token -> original patches (None unless the merge traces sources: it costs
        memory), for inspection. P is the patch count of one frame for per-frame rows, and ``W * N`` (frame-major:
        frame ``t`` of the row holds columns ``t * N .. (t + 1) * N``) for a row that spans W frames.

    Rows are frames for per-frame merges (R = frames, the same n in every row). A merge that works across
    frames (``temporal``) or an ordering over the whole video (``size_global``) returns one row per window of
    frames or per video instead, still rectangular (a fixed token budget per row); ``row_frames`` says how many
    frames each row spans.
    """

    tokens: Tensor
    sizes: Tensor
    source: Optional[Tensor] = None
    frames: Optional[Tensor] = None
    row_frames: int = 1

    @property
    def tokens_per_frame(self) -> float:
        """Tokens the language model reads per frame (a fraction when a row spans several frames)."""
        n = self.tokens.shape[1]
        return n if self.row_frames == 1 else n / self.row_frames


class VisionEncoder(nn.Module):
    """Protocol: ``forward(pixels (F, 3, H, W)) -> VisualTokens``; frames are encoded independently."""

    out_dim: int

    def tokens_per_frame(self, height: int, width: int) -> int:  # known before running
        raise NotImplementedError

    def encode_videos(self, pixels: Tensor, keys: Optional[list[str]] = None) -> VisualTokens:
        """(B, F, 3, H, W) -> rows of one video consecutive, ``frames`` within the video. The default folds the
        frames into the batch; :class:`~aurora.components.vision.base.MergingViT` adds its feature cache and the
        merge's video step."""
        f = pixels.shape[1]
        vt = self(pixels.flatten(0, 1))
        if vt.frames is not None:
            vt.frames = vt.frames % f
        return vt


class RecurrentLM(nn.Module):
    """Protocol for every language backbone.

    ``forward(embeds (B, T, D), state=None) -> (hidden (B, T, D), new_state)``: ``hidden`` is after the final
    norm; ``state`` is whatever the backbone carries (a list with one entry per layer). Feeding a sequence in
    pieces, passing the state along, gives the same result as feeding it at once.
    """

    d_model: int
    vocab_size: int

    def embed(self, ids: Tensor) -> Tensor:
        raise NotImplementedError

    def logits(self, hidden: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, embeds: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        raise NotImplementedError

    # -- shared by the backbones ---------------------------------------------------------------------------
    def check_input(self, embeds: Tensor, state: Any) -> None:
        """``embeds`` must be (B, T, d_model) and a given state must have one entry per layer."""
        if embeds.dim() != 3 or embeds.shape[-1] != self.d_model:
            raise ValueError(f"embeds must be (batch, time, {self.d_model}), got {tuple(embeds.shape)}")
        if state is not None and len(state) != self.n_layer:
            raise ValueError(f"state has {len(state)} layers, the model {self.n_layer}")

    def pass_through(self, embeds: Tensor, state: Any, norm: nn.Module) -> tuple[Tensor, Any]:
        """An empty sequence (T == 0) reads nothing: the state comes back unchanged (a fresh one when None)."""
        return norm(embeds), (state if state is not None else
                              self.init_state(embeds.shape[0], embeds.device, embeds.dtype))

    def run_blocks(self, blocks, x: Tensor, state: Any, *args: Any) -> tuple[Tensor, list]:
        """``x`` through ``blocks``, each ``block(x, layer_state, *args) -> (x, new_layer_state)``; with
        ``grad_checkpoint`` each block is recomputed in the backward pass instead of keeping its activations."""
        piece = getattr(self, "prefill_piece", None)
        if piece and x.shape[1] > piece and not (torch.is_grad_enabled() and
                                                 (x.requires_grad or any(p.requires_grad for p in self.parameters()))):
            return self._run_blocks_in_pieces(blocks, x, state, piece, *args)
        return self._run_blocks_once(blocks, x, state, *args)

    def _run_blocks_once(self, blocks, x: Tensor, state: Any, *args: Any) -> tuple[Tensor, list]:
        new_state = []
        for i, block in enumerate(blocks):
            s = state[i] if state is not None else None
            if getattr(self, "grad_checkpoint", False) and self.training and torch.is_grad_enabled():
                x, s = checkpoint(block, x, s, *args, use_reentrant=False)
            else:
                x, s = block(x, s, *args)
            new_state.append(s)
        return x, new_state

    def _run_blocks_in_pieces(self, blocks, x: Tensor, state: Any, piece: int, *args: Any) -> tuple[Tensor, list]:
        """A long sequence without autograd, ``piece`` tokens at a time through all blocks with the state carried
        (what the protocol guarantees equal to one shot), into a preallocated output. Every activation is then
        bounded by the piece, not T: whole-sequence activations of a long one-shot prefill are fresh large
        mappings per layer (page faults on first touch, out of cache), which made tokens/s fall with T. Backbones
        whose block arguments do not depend on position opt in with a ``prefill_piece`` attribute."""
        out = x.new_empty(x.shape)
        for t0 in range(0, x.shape[1], piece):
            y, state = self._run_blocks_once(blocks, x[:, t0:t0 + piece], state, *args)
            out[:, t0:t0 + piece] = y
        return out, state


# Token ids that never reach an embedding table.
VIDEO_TOKEN = -200  # the single placeholder in ``input_ids`` where the video's tokens are spliced in
IGNORE_INDEX = -100  # label value for positions that do not count in the loss
