"""The data that flows between parts. One protocol per kind of part lives here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn


@dataclass
class VisualTokens:
    """What a vision encoder (with its merge) returns, one row per frame.

    ``tokens``: (F, n, D) merged tokens in the order the language model will read them.
    ``sizes``: (F, n) number of original patches merged into each token; each row sums to the patch count.
    ``source``: (F, n, N) 0/1 map token -> original patches (None unless asked for), for inspection.
    """

    tokens: Tensor
    sizes: Tensor
    source: Optional[Tensor] = None

    @property
    def tokens_per_frame(self) -> int:
        return self.tokens.shape[1]


class VisionEncoder(nn.Module):
    """Protocol: ``forward(pixels (F, 3, H, W)) -> VisualTokens``; frames are encoded independently."""

    out_dim: int

    def tokens_per_frame(self, height: int, width: int) -> int:  # known before running
        raise NotImplementedError


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


# Token ids that never reach an embedding table.
VIDEO_TOKEN = -200  # the single placeholder in ``input_ids`` where the video's tokens are spliced in
IGNORE_INDEX = -100  # label value for positions that do not count in the loss
