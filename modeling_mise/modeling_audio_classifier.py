"""End-to-end audio classifier: frozen audio encoder -> aligner audio head (`z_a`) -> emotion classifier."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_audio_classifier import MiseAudioClassifierConfig
from .encoders import AudioEncoder, build_audio_encoder, load_audio_encoder
from .losses import soft_cross_entropy
from .modeling_aligner import MiseAlignerModel, MisePreTrainedModel
from .modeling_classifier import MiseClassifierModel


class MiseForAudioClassification(MisePreTrainedModel):
    """
    Audio in, emotion out: the frozen audio encoder gives `h`, the aligner's audio head gives `z_a`, and the
    stage-3 classifier gives emotion logits. Works with `pipeline("audio-classification")` through
    [`MiseFeatureExtractor`]; a transformers audio encoder's weights are saved inside this model.
    """

    config_class = MiseAudioClassifierConfig
    main_input_name = "input_values"

    def __init__(self, config: MiseAudioClassifierConfig, audio_encoder: AudioEncoder | None = None):
        super().__init__(config)
        if audio_encoder is None:
            if config.audio_encoder_spec is not None:
                audio_encoder = build_audio_encoder(config.audio_encoder_spec)
            else:
                audio_encoder = load_audio_encoder(
                    config.aligner.audio_encoder, pooling=config.aligner.pooling
                )
        self.audio_encoder = audio_encoder
        for parameter in self.audio_encoder.parameters():
            parameter.requires_grad_(False)
        self.aligner = MiseAlignerModel(config.aligner)
        self.classifier = MiseClassifierModel(config.classifier)
        self.post_init()

    @classmethod
    def from_components(
        cls, aligner: MiseAlignerModel, classifier: MiseClassifierModel, audio_encoder: AudioEncoder
    ) -> MiseForAudioClassification:
        """Assemble the end-to-end model from a trained aligner, classifier and the frozen audio encoder."""
        if audio_encoder.hidden_size != aligner.config.audio_dim:
            raise ValueError(
                f"audio encoder {audio_encoder.name!r} gives {audio_encoder.hidden_size}-d features but the "
                f"aligner expects audio_dim={aligner.config.audio_dim}"
            )
        config = MiseAudioClassifierConfig(
            aligner_config=aligner.config,
            classifier_config=classifier.config,
            audio_encoder_spec=audio_encoder.spec(),
            sampling_rate=audio_encoder.sampling_rate,
        )
        model = cls(config, audio_encoder=audio_encoder)
        model.aligner.load_state_dict(aligner.state_dict())
        model.classifier.load_state_dict(classifier.state_dict())
        return model.eval()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual, and let `AutoModel` (not only `AutoModelForAudioClassification`) load remote code."""
        if self._auto_class is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.setdefault("AutoModel", f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}")
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """
        Args:
            input_values: mono waveforms at `config.sampling_rate`, shape `(batch, samples)`, zero-padded.
            attention_mask: 1 for real samples, 0 for padding, shape `(batch, samples)`.
            labels: emotion ids `(batch,)`; the loss is set exactly when given.
        """
        with torch.no_grad():
            hidden = self.audio_encoder(input_values, attention_mask=attention_mask)
        audio_embeds = self.aligner.get_audio_features(hidden.to(self.aligner.audio_mean.dtype))
        logits = self.classifier(features=audio_embeds).logits
        loss = None
        if labels is not None:
            loss = (
                soft_cross_entropy(logits, labels) if labels.dim() == 2 else F.cross_entropy(logits, labels)
            )
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=(audio_embeds,))
