"""The aligned audio-text encoder (stage 1): projection heads, emotion head and contrastive alignment."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_aligner import MiseAlignerConfig
from .layers import init_mise_weights, mlp
from .losses import soft_cross_entropy, symmetric_info_nce


@dataclass
class MiseAlignerOutput(ModelOutput):
    """
    Output of [`MiseAlignerModel`].

    Args:
        loss: `ce_loss + lambda_cl * contrastive_loss`, set when `labels` or `return_loss` are given.
        logits: emotion logits of the linear head on `z_a`, shape `(batch, num_labels)`.
        audio_embeds: `z_a`, L2-normalised, shape `(batch, projection_dim)`.
        text_embeds: `z_t`, L2-normalised, shape `(batch, projection_dim)`, when text features are given.
        ce_loss: cross-entropy of the emotion head (when labels are given).
        contrastive_loss: symmetric InfoNCE between `z_a` and `z_t` (when text features are given).
        temperature: the current InfoNCE temperature `tau`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    ce_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    temperature: torch.FloatTensor | None = None


class MisePreTrainedModel(PreTrainedModel):
    """Shared base: weight initialisation and the attention backends MISE does not use."""

    base_model_prefix = "mise"
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        init_mise_weights(module)


class MiseAlignerModel(MisePreTrainedModel):
    """
    Stage 1 of MISE: maps frozen audio features `h` to `z_a` and text features `t` to `z_t` in one space,
    with a linear emotion head on `z_a`. Trained with cross-entropy plus `lambda_cl` times a symmetric InfoNCE
    loss with a learnable temperature. Input standardisation statistics (fitted on training speakers only)
    are buffers saved with the weights.
    """

    config_class = MiseAlignerConfig
    main_input_name = "audio_features"

    def __init__(self, config: MiseAlignerConfig):
        super().__init__(config)
        self.register_buffer("audio_mean", torch.zeros(config.audio_dim))
        self.register_buffer("audio_std", torch.ones(config.audio_dim))
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.audio_projection = mlp(
            config.audio_dim, config.hidden_sizes, config.projection_dim, config.dropout
        )
        if config.use_text:
            self.register_buffer("text_mean", torch.zeros(config.text_dim))
            self.register_buffer("text_std", torch.ones(config.text_dim))
            self.text_projection = mlp(
                config.text_dim, config.hidden_sizes, config.projection_dim, config.dropout
            )
        self.emotion_head = nn.Linear(config.projection_dim, config.num_labels)
        # log(1 / tau), CLIP-style, so the temperature stays positive.
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / config.tau_init)), requires_grad=config.learn_temperature
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            with torch.no_grad():
                self.logit_scale.fill_(math.log(1.0 / self.config.tau_init))
                self.audio_mean.zero_()
                self.audio_std.fill_(1.0)
                if self.config.use_text:
                    self.text_mean.zero_()
                    self.text_std.fill_(1.0)

    @torch.no_grad()
    def set_feature_statistics(
        self,
        audio_mean: torch.Tensor,
        audio_std: torch.Tensor,
        text_mean: torch.Tensor | None = None,
        text_std: torch.Tensor | None = None,
    ) -> None:
        """Store the standardisation statistics of the frozen features (fit them on training speakers only)."""
        self.audio_mean.copy_(audio_mean)
        self.audio_std.copy_(torch.clamp(torch.as_tensor(audio_std, dtype=self.audio_std.dtype), min=1e-6))
        if text_mean is not None and self.config.use_text:
            self.text_mean.copy_(text_mean)
            self.text_std.copy_(torch.clamp(torch.as_tensor(text_std, dtype=self.text_std.dtype), min=1e-6))

    @property
    def temperature(self) -> torch.Tensor:
        """The InfoNCE temperature `tau = 1 / exp(logit_scale)`, kept within [0.01, 10]."""
        return 1.0 / self.logit_scale.clamp(math.log(0.1), math.log(100.0)).exp()

    def _check_features(self, features: torch.Tensor, expected: int, field: str) -> None:
        if features.dim() != 2 or features.shape[-1] != expected:
            raise ValueError(
                f"{field} must have shape (batch, {expected}) for this aligner "
                f"(config.{'audio' if field.startswith('audio') else 'text'}_dim), got {tuple(features.shape)}"
            )

    def get_audio_features(self, audio_features: torch.Tensor) -> torch.Tensor:
        """`z_a`: the L2-normalised audio projection of frozen audio features `h` of shape `(batch, audio_dim)`."""
        self._check_features(audio_features, self.config.audio_dim, "audio_features")
        standardised = (audio_features.to(self.audio_mean.dtype) - self.audio_mean) / self.audio_std
        return F.normalize(self.audio_projection(self.input_dropout(standardised)), dim=-1)

    def get_text_features(self, text_features: torch.Tensor) -> torch.Tensor:
        """`z_t`: the L2-normalised text projection of frozen text features `t` of shape `(batch, text_dim)`."""
        if not self.config.use_text:
            raise ValueError("This aligner was built with use_text=False: it has no text projection head")
        self._check_features(text_features, self.config.text_dim, "text_features")
        standardised = (text_features.to(self.text_mean.dtype) - self.text_mean) / self.text_std
        return F.normalize(self.text_projection(standardised), dim=-1)

    def classify(self, audio_embeds: torch.Tensor) -> torch.Tensor:
        """Emotion logits of the linear head on `z_a`."""
        return self.emotion_head(audio_embeds)

    def forward(
        self,
        audio_features: torch.Tensor,
        text_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
    ) -> MiseAlignerOutput:
        """
        Args:
            audio_features: frozen audio features `h`, shape `(batch, audio_dim)`.
            text_features: frozen text features `t`, shape `(batch, text_dim)`; rows of a missing transcript
                may be NaN and are left out of the contrastive loss.
            labels: emotion ids `(batch,)` or soft labels `(batch, num_labels)` (mix-up).
            return_loss: compute the loss even without labels (contrastive part only).
        """
        audio_embeds = self.get_audio_features(audio_features)
        logits = self.classify(audio_embeds)
        text_embeds = contrastive_loss = ce_loss = loss = None
        temperature = self.temperature
        if text_features is not None and self.config.use_text:
            present = ~torch.isnan(text_features).any(dim=-1)
            text_embeds = self.get_text_features(torch.nan_to_num(text_features))
            if self.config.lambda_cl > 0 and int(present.sum()) >= 2:
                contrastive_loss = symmetric_info_nce(
                    audio_embeds[present], text_embeds[present], temperature, normalize=False
                )
        if labels is not None:
            if labels.dim() == 2:
                ce_loss = soft_cross_entropy(logits, labels)
            else:
                ce_loss = F.cross_entropy(logits, labels)
            loss = ce_loss
        if labels is not None or return_loss:
            if contrastive_loss is not None:
                weighted = self.config.lambda_cl * contrastive_loss
                loss = weighted if loss is None else loss + weighted
            elif loss is None:
                loss = logits.sum() * 0.0
        return MiseAlignerOutput(
            loss=loss,
            logits=logits,
            audio_embeds=audio_embeds,
            text_embeds=text_embeds,
            ce_loss=ce_loss,
            contrastive_loss=contrastive_loss,
            temperature=temperature,
        )
