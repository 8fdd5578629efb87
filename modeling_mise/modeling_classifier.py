"""The emotion classifier of MISE (stage 3): an MLP over real and generated features."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_classifier import MiseClassifierConfig
from .layers import MisePreTrainedModel, mlp
from .losses import soft_cross_entropy


class MiseClassifierModel(MisePreTrainedModel):
    """
    Stage 3 of MISE: an MLP emotion classifier over `z_a`, or over `[z_a; z_t]` when `config.multimodal`; with
    `config.num_heads` > 1 several MLPs side by side whose logits are averaged (each learns from its own loss).
    Emotion names live in `config.id2label`.
    """

    config_class = MiseClassifierConfig
    main_input_name = "features"

    def __init__(self, config: MiseClassifierConfig):
        super().__init__(config)
        self.mlp = mlp(config.feature_size, config.hidden_sizes, config.num_labels, config.dropout)
        heads = range(config.num_heads - 1)
        self.extra_heads = nn.ModuleList(
            mlp(config.feature_size, config.hidden_sizes, config.num_labels, config.dropout) for _ in heads
        )
        self.post_init()

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        """
        Args:
            features: `z_a` (or `[z_a; z_t]`), shape `(batch, feature_size)`.
            labels: emotion ids `(batch,)` or soft labels `(batch, num_labels)`; the loss is set exactly when given.
        """
        if features.dim() != 2 or features.shape[-1] != self.config.feature_size:
            raise ValueError(
                f"features must have shape (batch, {self.config.feature_size}) for this classifier, "
                f"got {tuple(features.shape)}"
            )
        scaled = features * self.config.input_scale
        per_head = [head(scaled) for head in (self.mlp, *self.extra_heads)]
        logits = per_head[0] if len(per_head) == 1 else torch.stack(per_head).mean(0)
        loss = None
        if labels is not None:  # each head learns from its own loss
            criterion = soft_cross_entropy if labels.dim() == 2 else F.cross_entropy
            loss = torch.stack([criterion(head_logits, labels) for head_logits in per_head]).mean()
        return SequenceClassifierOutput(loss=loss, logits=logits)
