"""The vision -> language projector: the paper's 2-layer MLP, Linear -> GELU -> Linear."""
from __future__ import annotations

from torch import Tensor, nn

from aurora.registry import PROJECTOR


@PROJECTOR.register("mlp")
class MLPProjector(nn.Module):
    """``depth`` linear layers with GELU between them; the first maps ``in_dim`` -> ``out_dim``.

    ``in_dim`` and ``out_dim`` are wired by the model from the vision encoder and the language backbone.
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, hidden_dim: int | None = None) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"projector depth must be >= 1, got {depth}")
        hidden = hidden_dim or out_dim
        dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            if i:
                layers.append(nn.GELU())
            layers.append(nn.Linear(a, b))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@PROJECTOR.register("linear")
def linear_projector(in_dim: int, out_dim: int) -> MLPProjector:
    """LLaVA-1.0 style single linear map."""
    return MLPProjector(in_dim, out_dim, depth=1)
