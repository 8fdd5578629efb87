"""The aligned audio-text encoder (stage 1): projection heads, emotion head and contrastive alignment."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BatchEncoding
from transformers.utils import ModelOutput

from .configuration_aligner import MiseAlignerConfig
from .encoders import (
    TextEncoder,
    apply_text_lora,
    copy_text_lora,
    has_text_lora,
    load_text_encoder,
    load_text_lora,
)
from .layers import STD_FLOOR, FastDropout, MisePreTrainedModel, bounded, mlp, standardize
from .losses import soft_cross_entropy, symmetric_info_nce

# in a model folder: the LoRA adapter with peft's own files (adapter_config.json, adapter_model.safetensors)
TEXT_ADAPTER_FOLDER = "text_adapter"
TEXT_ENCODER_PREFIX = "text_encoder."


def without_text_encoder(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict without the tensors of the text encoder attached to the aligner at `prefix`: the heads (what
    `model.safetensors` holds)."""
    return {key: value for key, value in state.items() if not key.startswith(prefix + TEXT_ENCODER_PREFIX)}


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


class MiseAlignerModel(MisePreTrainedModel):
    """
    Stage 1 of MISE: maps frozen audio features `h` to `z_a` and text features `t` to `z_t` in one space,
    with a linear emotion head on `z_a`. Trained with cross-entropy plus `lambda_cl` times a symmetric InfoNCE
    loss with a learnable temperature. Input standardisation statistics (fitted on training speakers only)
    are buffers saved with the weights.

    Text side: frozen text features `t` (`text_features`), or tokens (`input_ids` + `attention_mask`) or raw
    strings through the text encoder, loaded from `config.text_encoder` on first use (or `set_text_encoder`).
    With `config.text_lora` the encoder gets a peft LoRA adapter that trains with the heads. `save_pretrained`
    writes the heads to `model.safetensors` and the adapter with peft's own files to `text_adapter/`, from
    which the loaded model's text encoder gets it; the text encoder's base weights are never written (the
    state dict, used by training checkpoints, holds the heads and the adapter's tensors).
    """

    config_class = MiseAlignerConfig
    main_input_name = "audio_features"

    def __init__(self, config: MiseAlignerConfig):
        super().__init__(config)
        self.register_buffer("audio_mean", torch.zeros(config.audio_dim))
        self.register_buffer("audio_std", torch.ones(config.audio_dim))
        self.input_dropout = FastDropout(config.input_dropout)
        columns = config.audio_columns
        self.audio_projection = mlp(
            config.audio_dim if columns is None else columns[1] - columns[0],
            config.hidden_sizes, config.projection_dim, config.dropout,
        )  # fmt: skip
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
        # attached after post_init, so weight initialisation never touches a pretrained text encoder
        self.text_encoder: TextEncoder | None = None
        self.register_state_dict_post_hook(_drop_text_encoder_base_weights)
        self.register_load_state_dict_post_hook(_ignore_missing_text_encoder_weights)

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
        self.audio_std.copy_(torch.as_tensor(audio_std, dtype=self.audio_std.dtype).clamp(min=STD_FLOOR))
        if text_mean is not None and self.config.use_text:
            self.text_mean.copy_(text_mean)
            self.text_std.copy_(torch.as_tensor(text_std, dtype=self.text_std.dtype).clamp(min=STD_FLOOR))

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
        standardised = bounded(
            standardize(audio_features.to(self.audio_mean.dtype), self.audio_mean, self.audio_std),
            self.audio_std,
            self.config.audio_limit,
        )
        if self.config.audio_columns is not None:  # one feature set of a combined encoder
            standardised = standardised[:, self.config.audio_columns[0] : self.config.audio_columns[1]]
        return F.normalize(self.audio_projection(self.input_dropout(standardised)), dim=-1)

    # ------------------------------------------------------------------------------------- text encoder
    def set_text_encoder(
        self, text_encoder: TextEncoder | None = None, adapter_from: str | os.PathLike | None = None
    ) -> TextEncoder:
        """Attach the text encoder `f_t` (loaded from `config.text_encoder` when not given) so the aligner takes
        tokens or strings. With `config.text_lora` an encoder without adapter gets the one saved in
        `<adapter_from>/text_adapter/` (default: the folder this model was loaded from), or a new one for a
        model that was not loaded. Returns the attached encoder."""
        config = self.config
        if not config.use_text:
            raise ValueError("This aligner was built with use_text=False: it has no text projection head")
        if text_encoder is None:
            text_encoder = load_text_encoder(
                config.text_encoder, config.text_pooling, dtype=config.text_dtype
            )
        if text_encoder.hidden_size != config.text_dim:
            raise ValueError(
                f"text encoder {text_encoder.name!r} gives {text_encoder.hidden_size}-d features but the aligner "
                f"expects text_dim={config.text_dim}"
            )
        if config.text_lora is not None and not has_text_lora(text_encoder):
            source = self.name_or_path if adapter_from is None else os.fspath(adapter_from)
            if source:
                load_text_lora(text_encoder, source, TEXT_ADAPTER_FOLDER, config.text_lora)
            else:
                apply_text_lora(text_encoder, **config.text_lora)
        self.text_encoder = text_encoder.to(self.audio_mean.device)
        self.text_encoder.train(self.training)
        return self.text_encoder

    def _require_text_encoder(self) -> TextEncoder:
        return self.set_text_encoder() if self.text_encoder is None else self.text_encoder

    def tokenize(self, texts: Sequence[str]) -> BatchEncoding:
        """Tokenise transcripts for `get_text_features(input_ids=..., attention_mask=...)` (padded batch)."""
        return self._require_text_encoder().tokenize(texts)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text features `t = pool(f_t(x_t))` (B, text_dim) of tokens; differentiable through a LoRA adapter.

        Rows whose `attention_mask` is all zero (no transcript) give NaN rows.
        """
        encoder = self._require_text_encoder()
        device = encoder.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        missing = attention_mask.sum(dim=-1) == 0  # (B,)
        if bool(missing.any()):
            # a fully masked row would give NaN attention: let it see its first token, then drop it
            attention_mask = attention_mask.clone()
            attention_mask[missing, 0] = 1
        features = encoder(input_ids, attention_mask).to(self.text_mean.dtype)
        return features.masked_fill(missing.unsqueeze(-1), float("nan"))

    def get_text_features(
        self,
        text_features: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """`z_t`: the L2-normalised text projection of one of: frozen text features `t` `(batch, text_dim)`,
        tokens `input_ids` + `attention_mask` `(batch, length)`, or raw `texts` (both need `set_text_encoder`).
        A missing transcript (a NaN feature row, an all-zero mask row) gives a NaN row."""
        if not self.config.use_text:
            raise ValueError("This aligner was built with use_text=False: it has no text projection head")
        sources = {"text_features": text_features, "input_ids": input_ids, "texts": texts}
        given = [name for name, value in sources.items() if value is not None]
        if len(given) != 1:
            raise ValueError(
                f"get_text_features takes exactly one of text_features, input_ids, texts; got {given}"
            )
        if texts is not None:
            batch = self.tokenize(texts)
            input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_features = self.encode_text(input_ids, attention_mask).to(self.text_mean.device)
        self._check_features(text_features, self.config.text_dim, "text_features")
        standardised = standardize(text_features.to(self.text_mean.dtype), self.text_mean, self.text_std)
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
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> MiseAlignerOutput:
        """
        Args:
            audio_features: frozen audio features `h`, shape `(batch, audio_dim)`.
            text_features: frozen text features `t`, shape `(batch, text_dim)`; rows of a missing transcript
                may be NaN and are left out of the contrastive loss.
            labels: emotion ids `(batch,)` or soft labels `(batch, num_labels)` (mix-up).
            return_loss: compute the loss even without labels (contrastive part only).
            input_ids / attention_mask: transcript tokens `(batch, length)` instead of `text_features`, through
                the attached (LoRA-tuned) text encoder; an all-zero mask row is a missing transcript.
        """
        if input_ids is not None:
            if text_features is not None:
                raise ValueError("pass either text_features or input_ids, not both")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_features = self.encode_text(input_ids, attention_mask).to(audio_features.device)
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

    # ------------------------------------------------------------------------------------- saving
    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained` of the heads, plus the LoRA adapter (if any) in `text_adapter/`."""
        state = kwargs.pop("state_dict", None)
        state = without_text_encoder(self.state_dict() if state is None else state)
        super().save_pretrained(save_directory, *args, state_dict=state, **kwargs)
        if kwargs.get("is_main_process", True):
            self.save_text_adapter(save_directory)

    def save_text_adapter(self, save_directory: str | os.PathLike, adapter_from: str | None = None) -> None:
        """With `config.text_lora`: the adapter, with peft's own files, in `<save_directory>/text_adapter/`; a
        loaded model whose text encoder was never needed copies its saved adapter without loading the encoder."""
        if self.config.text_lora is None:
            return
        target = Path(save_directory) / TEXT_ADAPTER_FOLDER
        source = self.name_or_path if adapter_from is None else os.fspath(adapter_from)
        if self.text_encoder is None and source:
            copy_text_lora(source, TEXT_ADAPTER_FOLDER, target)
            return
        encoder = (
            self.set_text_encoder(adapter_from=adapter_from)
            if self.text_encoder is None
            else self.text_encoder
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft probes deprecated transformers attributes
            encoder.model.save_pretrained(target)


def _is_adapter_tensor(key: str) -> bool:
    return ".lora_" in key


def _drop_text_encoder_base_weights(
    module: MiseAlignerModel, state: dict, prefix: str, local_metadata
) -> None:
    """The text encoder's base weights stay with `config.text_encoder`: a state dict keeps its adapter only."""
    base = prefix + TEXT_ENCODER_PREFIX
    for key in [key for key in state if key.startswith(base) and not _is_adapter_tensor(key)]:
        del state[key]


def _ignore_missing_text_encoder_weights(module: MiseAlignerModel, incompatible_keys) -> None:
    """The text encoder's base weights are never in a MISE state dict: not missing."""
    incompatible_keys.missing_keys[:] = [
        key
        for key in incompatible_keys.missing_keys
        if "." + TEXT_ENCODER_PREFIX not in "." + key or _is_adapter_tensor(key)
    ]
