"""Building blocks shared by the MISE models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel


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


def speaker_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over one speaker's clips `(n, dim)`: the per-speaker statistics that training
    and enrolment share (std 1 for a single clip; floored at 1e-6)."""
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"speaker statistics need clips of shape (n >= 1, dim), got {tuple(features.shape)}")
    std = features.std(0) if features.shape[0] > 1 else torch.ones_like(features[0])
    return features.mean(0), std.clamp(min=1e-6)


def speaker_normalize(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Features z-normalised with one speaker's statistics."""
    return (features - mean) / std


class MisePreTrainedModel(PreTrainedModel):
    """Shared base: weight initialisation and the attention backends MISE does not use."""

    base_model_prefix = "mise"
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        init_mise_weights(module)

    def should_save_on_this_rank(self, is_main_process: bool) -> bool:
        """Whether `save_pretrained` writes here: a MISE model is trained whole by one process (a fold, or a final
        model on the second one), so the process that trained it saves it, whatever its rank."""
        return is_main_process
