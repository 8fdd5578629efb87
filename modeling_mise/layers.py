"""Building blocks shared by the MISE models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel


class FastDropout(nn.Dropout):
    """`nn.Dropout` whose CPU mask takes 16 random bits per element from 64-bit random integers, 2-3x faster there
    than one random number per element (the keep probability is rounded to a multiple of 1/65536). Its masks
    come from `generator` when one is set (`use_random_stream`), else from the global stream; outside training
    it is the identity."""

    generator: torch.Generator | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p in (0.0, 1.0):
            return super().forward(input)
        if input.device.type != "cpu":
            if self.generator is None:
                return super().forward(input)
            keep = torch.rand(input.shape, generator=self.generator).to(input.device) >= self.p
            return input * (keep.to(input.dtype) * (1.0 / (1.0 - self.p)))
        count = input.numel()
        bits = torch.randint(
            -(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, generator=self.generator
        )
        bits = bits.view(torch.int16)[:count].view(input.shape)
        keep = bits >= round(self.p * 65536) - 32768  # int16 bits are uniform on [-32768, 32767]
        return input * (keep.to(input.dtype) * (1.0 / (1.0 - self.p)))


def use_random_stream(module: nn.Module, generator: torch.Generator | None) -> None:
    """Draw every dropout mask of `module` from `generator` (None: the global stream again)."""
    for layer in module.modules():
        if isinstance(layer, FastDropout):
            layer.generator = generator


def reset_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of every `nn.Linear` of `module` (Kaiming-uniform weights, uniform biases
    within 1 / sqrt(fan_in)), drawn from `generator` instead of the global stream."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            if layer.bias is not None:
                bound = 1 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def mlp(
    input_dim: int,
    hidden_sizes: Sequence[int],
    output_dim: int,
    dropout: float = 0.0,
    activation: type[nn.Module] = nn.GELU,
    norm: bool = False,
    linear: type[nn.Linear] = nn.Linear,
) -> nn.Sequential:
    """Linear -> [LayerNorm] -> activation -> dropout (`FastDropout`) for each hidden size, then a final Linear
    (`linear`: the class of every linear layer, e.g. a spectrally normalised one)."""
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in hidden_sizes:
        layers.append(linear(width, hidden))
        if norm:
            layers.append(nn.LayerNorm(hidden))
        layers.append(activation())
        if dropout > 0:
            layers.append(FastDropout(dropout))
        width = hidden
    layers.append(linear(width, output_dim))
    return nn.Sequential(*layers)


def init_mise_weights(module: nn.Module) -> None:
    """Weight initialisation used by every MISE ``PreTrainedModel._init_weights``: PyTorch's defaults."""
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        module.reset_parameters()


STD_FLOOR = 1e-6  # the smallest standard deviation a standardised feature is divided by


def feature_statistics(
    features: torch.Tensor | np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of rows `(n, dim)`: the statistics of every standardisation in
    MISE (the aligner's inputs, a speaker's clips, the MI probe, the classic baseline, a corpus' own).

    The std is the unbiased one, 1 for a single row, and floored at `STD_FLOOR` so a constant feature stays
    finite. A NumPy array gives NumPy arrays of its dtype.
    """
    if isinstance(features, np.ndarray):
        return tuple(value.numpy() for value in feature_statistics(torch.as_tensor(features)))
    if features.dim() != 2:
        raise ValueError(f"feature statistics need rows of shape (n, dim), got {tuple(features.shape)}")
    if features.shape[0] > 1:
        std = features.std(0)
    else:
        std = torch.ones(features.shape[1], dtype=features.dtype, device=features.device)
    return features.mean(0), std.clamp(min=STD_FLOOR)


def standardize(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Features z-normalised with the statistics of [`feature_statistics`] (or [`speaker_statistics`]); tensors or
    NumPy arrays."""
    return (features - mean) / std


def unvarying(std: torch.Tensor) -> torch.Tensor:
    """Which features did not vary on the rows their `std` came from (at `STD_FLOOR`)."""
    return std <= STD_FLOOR


def bounded(standardised: torch.Tensor, std: torch.Tensor, limit: float | None) -> torch.Tensor:
    """Standardised features as a model reads them (`MiseAlignerConfig.audio_limit`): clamped to `[-limit, limit]`,
    and 0 where the training std `std` is at `STD_FLOOR` (a feature the training clips never varied on carries
    nothing learnt, and a new clip's value of it is millions of standard deviations out). `None`: unchanged."""
    if limit is None:
        return standardised
    return torch.where(unvarying(std), torch.zeros_like(standardised), standardised.clamp(-limit, limit))


def speaker_statistics(
    features: torch.Tensor,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
    prior_strength: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over one speaker's clips `(n, dim)`: the per-speaker statistics that training,
    the enrolment evaluation and the released model share.

    Without `prior`: the speaker's own [`feature_statistics`].

    With `prior = (prior_mean, prior_var)` (the training clips' mean and the training speakers' pooled
    within-speaker variance, per feature) and `prior_strength` n0 > 0, the statistics of n clips are shrunk toward
    the prior as if it were n0 extra clips (the conjugate normal posterior's point estimate):

        mean = (n * m_n + n0 * prior_mean) / (n + n0)
        var  = (n * v_n + n0 * prior_var) / (n + n0)      (v_n: the clips' variance about m_n, divided by n)

    A few clips on which a feature barely moves (ComParE has many near-constant functionals) then keep a variance
    near the training speakers' instead of a near-zero one that would send the feature to huge values; with many
    clips the speaker's own statistics dominate. `prior_strength` 0 is the clips' own mean and biased std.
    """
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"speaker statistics need clips of shape (n >= 1, dim), got {tuple(features.shape)}")
    if prior is None:
        return feature_statistics(features)
    if prior_strength < 0:
        raise ValueError(f"prior_strength must be >= 0, got {prior_strength}")
    prior = tuple(tensor.to(features.dtype) for tensor in prior)
    return shrink_statistics(
        features.shape[0], features.mean(0), features.var(0, unbiased=False), prior, prior_strength
    )


def shrink_statistics(
    n: int | torch.Tensor,
    own_mean: torch.Tensor,
    own_var: torch.Tensor,
    prior: tuple[torch.Tensor, torch.Tensor],
    prior_strength: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shrinkage of [`speaker_statistics`] from the moments of n clips (their mean and biased variance); `n`
    may be a `(rows, 1)` tensor of clip counts with `(rows, dim)` moments, one row per set of clips."""
    prior_mean, prior_var = prior
    mean = (n * own_mean + prior_strength * prior_mean) / (n + prior_strength)
    var = (n * own_var + prior_strength * prior_var) / (n + prior_strength)
    return mean, var.sqrt().clamp(min=STD_FLOOR)


def speaker_prior(features: torch.Tensor, speakers: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior of [`speaker_statistics`] from training clips `(N, dim)` and their speakers: the clips' global
    mean and the speakers' pooled within-speaker variance (squared deviations from each speaker's own mean, over
    all clips)."""
    speakers = list(speakers)
    if features.dim() != 2 or features.shape[0] != len(speakers) or not speakers:
        raise ValueError(
            f"speaker prior needs clips (N >= 1, dim) and N speakers, got {tuple(features.shape)}"
        )
    deviations = torch.empty_like(features)
    for speaker in dict.fromkeys(speakers):
        rows = torch.as_tensor([index for index, name in enumerate(speakers) if name == speaker])
        deviations[rows] = features[rows] - features[rows].mean(0)
    return features.mean(0), deviations.pow(2).mean(0)


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
