"""Building blocks shared by the MISE models."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(
    input_dim: int,
    hidden_sizes: Sequence[int],
    output_dim: int,
    dropout: float = 0.0,
    activation: type[nn.Module] = nn.GELU,
    norm: bool = False,
) -> nn.Sequential:
    """Linear -> [LayerNorm] -> activation -> dropout for each hidden size, then a final Linear."""
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in hidden_sizes:
        layers.append(nn.Linear(width, hidden))
        if norm:
            layers.append(nn.LayerNorm(hidden))
        layers.append(activation())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


def init_mise_weights(module: nn.Module) -> None:
    """Weight initialisation used by every MISE ``PreTrainedModel._init_weights``: PyTorch's defaults."""
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        module.reset_parameters()
