"""The aligned audio-text encoder (stage 1): projection heads, emotion head and contrastive alignment."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from safetensors import safe_open
from torch import nn
from torch.nn import functional as F
from transformers import BatchEncoding
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, ModelOutput, cached_file

from .configuration_aligner import MiseAlignerConfig
from .encoders import (
    TextEncoder,
    apply_text_lora,
    has_text_lora,
    load_text_adapter,
    load_text_encoder,
    text_adapter_state_dict,
)
from .layers import MisePreTrainedModel, mlp
from .losses import soft_cross_entropy, symmetric_info_nce

TEXT_ADAPTER_PREFIX = "text_adapter."
TEXT_ENCODER_PREFIX = "text_encoder."
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def read_checkpoint_tensors(
    pretrained_model_name_or_path: str | os.PathLike, prefix: str, **hub_kwargs
) -> dict[str, torch.Tensor]:
    """Tensors whose name starts with `prefix` in a saved model's safetensors (single file or shards), prefix
    removed. Used for weights the Auto loading leaves aside, e.g. a LoRA adapter stored beside the heads."""
    hub_kwargs = {key: value for key, value in hub_kwargs.items() if key in _HUB_KWARGS and value is not None}
    options = {
        "_raise_exceptions_for_missing_entries": False,
        "_raise_exceptions_for_connection_errors": False,
    }
    single = cached_file(pretrained_model_name_or_path, SAFE_WEIGHTS_NAME, **hub_kwargs, **options)
    files = [single] if single else []
    if not files:
        index = cached_file(pretrained_model_name_or_path, SAFE_WEIGHTS_INDEX_NAME, **hub_kwargs, **options)
        if index:
            with open(index) as handle:
                weight_map = json.load(handle)["weight_map"]
            shards = sorted({shard for key, shard in weight_map.items() if key.startswith(prefix)})
            files = [cached_file(pretrained_model_name_or_path, shard, **hub_kwargs) for shard in shards]
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            names = list(handle.keys())
            for key in names:
                if key.startswith(prefix):
                    tensors[key[len(prefix) :]] = handle.get_tensor(key)
    return tensors


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

    Text side: frozen text features `t` (`text_features`), or, once a text encoder is attached
    (`set_text_encoder`), tokens (`input_ids` + `attention_mask`) or raw strings. With `config.text_lora` the
    encoder gets a peft LoRA adapter that trains with the heads; the state dict (hence `save_pretrained`, the
    training checkpoints and a parent model's file) holds the heads plus the adapter (`text_adapter.*`) and
    never the text encoder's base weights, which `from_pretrained` reloads from `config.text_encoder`.
    """

    config_class = MiseAlignerConfig
    main_input_name = "audio_features"
    _keys_to_ignore_on_load_unexpected = [r"text_adapter\."]

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
        # attached after post_init, so weight initialisation never touches a pretrained text encoder
        self.text_encoder: TextEncoder | None = None
        self._pending_text_adapter: dict[str, torch.Tensor] | None = None
        self._state_prefix = ""
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

    # ------------------------------------------------------------------------------------- text encoder
    def set_text_encoder(self, text_encoder: TextEncoder | None = None) -> TextEncoder:
        """Attach the text encoder `f_t` (loaded from `config.text_encoder` when not given) so the aligner takes
        tokens or strings. With `config.text_lora` a LoRA adapter is added (unless it has one) and loaded with
        the adapter weights of a checkpoint, if one was read. Returns the attached encoder."""
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
            apply_text_lora(text_encoder, **config.text_lora)
        self.text_encoder = text_encoder.to(self.audio_mean.device)
        if self._pending_text_adapter is not None:
            if not has_text_lora(text_encoder):
                raise ValueError(
                    f"the checkpoint holds a LoRA adapter but text encoder {text_encoder.name!r} has none "
                    "(config.text_lora is not set)"
                )
            load_text_adapter(text_encoder, self._pending_text_adapter, source="text_adapter")
            self._pending_text_adapter = None
        self.text_encoder.train(self.training)
        return self.text_encoder

    def _require_text_encoder(self) -> TextEncoder:
        if self.text_encoder is None:
            raise ValueError(
                "this aligner has no text encoder attached: call set_text_encoder() (loads config.text_encoder "
                f"= {self.config.text_encoder!r}) or pass text_features"
            )
        return self.text_encoder

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

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The module's state without the text encoder's base weights, plus its LoRA adapter as `text_adapter.*`."""
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [key for key in state if key.startswith(prefix + TEXT_ENCODER_PREFIX)]:
            del state[key]
        adapter = self._pending_text_adapter
        if self.text_encoder is not None and has_text_lora(self.text_encoder):
            adapter = text_adapter_state_dict(self.text_encoder)
        for key, value in (adapter or {}).items():
            state[prefix + TEXT_ADAPTER_PREFIX + key] = value if keep_vars else value.detach()
        return state

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        adapter_keys = [key for key in state_dict if key.startswith(prefix + TEXT_ADAPTER_PREFIX)]
        adapter = {key[len(prefix + TEXT_ADAPTER_PREFIX) :]: state_dict.pop(key) for key in adapter_keys}
        self._state_prefix = prefix
        if adapter:
            if self.text_encoder is not None:
                try:
                    load_text_adapter(self.text_encoder, adapter, source=f"{prefix}{TEXT_ADAPTER_PREFIX}*")
                except ValueError as error:
                    error_msgs.append(str(error))
            else:  # applied when a text encoder is attached
                self._pending_text_adapter = {key: value.detach().clone() for key, value in adapter.items()}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        text_encoder: TextEncoder | None = None,
        load_text_encoder: bool | None = None,
        **kwargs,
    ):
        """`PreTrainedModel.from_pretrained`, then the text side: the LoRA adapter saved beside the heads is read
        and, with `config.text_lora` (or `load_text_encoder=True`, or a given `text_encoder`), the base text
        encoder is loaded from `config.text_encoder` and the adapter set on it. `load_text_encoder=False`
        keeps the audio side only (the adapter waits until `set_text_encoder`)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        adapter = read_checkpoint_tensors(pretrained_model_name_or_path, TEXT_ADAPTER_PREFIX, **kwargs)
        if adapter:
            model._pending_text_adapter = adapter
        if load_text_encoder is None:
            load_text_encoder = model.config.text_lora is not None or text_encoder is not None
        if load_text_encoder:
            model.set_text_encoder(text_encoder)
            model.eval()
        return loaded


def _ignore_missing_text_encoder_weights(module: MiseAlignerModel, incompatible_keys) -> None:
    """The text encoder's base weights are never in a MISE state dict: not missing."""
    base = module._state_prefix + TEXT_ENCODER_PREFIX
    incompatible_keys.missing_keys[:] = [
        key for key in incompatible_keys.missing_keys if not key.startswith(base)
    ]
