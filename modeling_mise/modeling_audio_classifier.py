"""End-to-end audio classifier: frozen audio encoder -> aligner audio head (`z_a`) -> emotion classifier.

Multimodal variant: the aligner's text side gives `z_t` of an optional transcript and the classifier takes
`[z_a; z_t]`. A clip without transcript gets the *null text code*, the zero vector: every real or generated
`z_t` is L2-normalised, so zero is never a transcript's code. Stage 3 trains with it for clips without a
transcript and for a random fraction of the others, so the classifier knows it (`multimodal_features`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_audio_classifier import PIPELINE_TASK, MiseAudioClassifierConfig
from .encoders import AudioEncoder, build_audio_encoder, load_audio_encoder
from .layers import MisePreTrainedModel, speaker_statistics, standardize
from .losses import soft_cross_entropy
from .modeling_aligner import MiseAlignerModel, without_text_encoder
from .modeling_classifier import MiseClassifierModel


def multimodal_features(
    audio_embeds: torch.Tensor, text_embeds: torch.Tensor | None = None, text_dim: int | None = None
) -> torch.Tensor:
    """`[z_a; z_t]` (B, d_a + d_t) for the multimodal classifier. Rows of a missing transcript (`text_embeds`
    None, or a NaN row) get the null text code, the zero vector (`text_dim` is needed when `text_embeds` is None)."""
    if text_embeds is None:
        if text_dim is None:
            raise ValueError("multimodal_features: give text_embeds or text_dim")
        text_embeds = audio_embeds.new_zeros(audio_embeds.shape[0], text_dim)
    if text_embeds.dim() != 2 or text_embeds.shape[0] != audio_embeds.shape[0]:
        raise ValueError(
            f"text_embeds must have shape ({audio_embeds.shape[0]}, d_t), got {tuple(text_embeds.shape)}"
        )
    missing = torch.isnan(text_embeds).any(dim=-1, keepdim=True)  # (B, 1)
    text_embeds = torch.where(missing, torch.zeros_like(text_embeds), text_embeds)
    return torch.cat([audio_embeds, text_embeds.to(audio_embeds.dtype)], dim=-1)


class MiseForAudioClassification(MisePreTrainedModel):
    """
    Audio in, emotion out: the frozen audio encoder gives `h`, the aligner's audio head gives `z_a`, and the
    stage-3 classifier gives emotion logits. Works with `pipeline("audio-classification")` through
    [`MiseFeatureExtractor`]; a transformers audio encoder's weights are saved inside this model.

    With a multimodal classifier, `forward(..., transcripts=[...])` adds `z_t` of each transcript (`None` for a
    clip without one: the null text code). The text encoder is loaded from the aligner's `text_encoder` id/path
    the first time a transcript comes (its LoRA adapter, if any, is saved in this model's `text_adapter/`);
    audio-only use, the pipeline included, never loads it.
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
                    config.aligner_config.audio_encoder, pooling=config.aligner_config.pooling
                )
        self.audio_encoder = audio_encoder
        for parameter in self.audio_encoder.parameters():
            parameter.requires_grad_(False)
        self.aligner = MiseAlignerModel(config.aligner_config)
        self.classifier = MiseClassifierModel(config.classifier_config)
        self.speaker_aligner = self.speaker_classifier = None
        if config.speaker_adaptive:  # trained on per-speaker statistics: used with enrolment clips
            self.speaker_aligner = MiseAlignerModel(config.speaker_aligner_config)
            self.speaker_classifier = MiseClassifierModel(config.speaker_classifier_config)
            if config.speaker_prior_strength is not None:  # the prior enrolment statistics are shrunk toward
                dim = config.speaker_aligner_config.audio_dim
                self.register_buffer("speaker_prior_mean", torch.zeros(dim))
                self.register_buffer("speaker_prior_var", torch.ones(dim))
        self.post_init()

    @classmethod
    def from_components(
        cls,
        aligner: MiseAlignerModel,
        classifier: MiseClassifierModel,
        audio_encoder: AudioEncoder,
        speaker_pair: tuple[MiseAlignerModel, MiseClassifierModel] | None = None,
        speaker_normalization: dict | None = None,
        speaker_prior: tuple[torch.Tensor, torch.Tensor, float] | None = None,
        utterance_seconds: list[float] | None = None,
    ) -> MiseForAudioClassification:
        """Assemble the end-to-end model from a trained aligner, classifier and the frozen audio encoder, plus,
        where training allowed per-speaker statistics, the aligner + classifier trained on them and
        `speaker_prior = (mean, var, strength)`, the prior enrolment statistics are shrunk toward;
        `utterance_seconds`: the training clips' duration range (`modeling_mise.segments.utterance_range`).

        A multimodal classifier keeps the aligner's attached text encoder (with its LoRA adapter), if any."""
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
            speaker_aligner_config=None if speaker_pair is None else speaker_pair[0].config,
            speaker_classifier_config=None if speaker_pair is None else speaker_pair[1].config,
            speaker_normalization=speaker_normalization,
            speaker_prior_strength=None if speaker_prior is None else speaker_prior[2],
            utterance_seconds=utterance_seconds,
        )
        model = cls(config, audio_encoder=audio_encoder)
        if speaker_prior is not None:
            model.speaker_prior_mean.copy_(speaker_prior[0])
            model.speaker_prior_var.copy_(speaker_prior[1])
        model.aligner.load_state_dict(without_text_encoder(aligner.state_dict()))
        model.classifier.load_state_dict(classifier.state_dict())
        if speaker_pair is not None:
            model.speaker_aligner.load_state_dict(speaker_pair[0].state_dict())
            model.speaker_classifier.load_state_dict(speaker_pair[1].state_dict())
        if model.multimodal and (aligner.text_encoder is not None or aligner.config.text_lora is not None):
            model.aligner.set_text_encoder(aligner._require_text_encoder())  # with its tuned adapter, if any
        return model.eval()

    def _check_enrolment(self) -> None:
        if not self.config.speaker_adaptive:
            reason = (self.config.speaker_normalization or {}).get(
                "reason", "it was trained with global statistics only"
            )
            raise ValueError(f"enrolment: this model does not take enrolment clips: {reason}")

    def speaker_statistics(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-speaker statistics (mean, std of the frozen features) of unlabelled enrolment clips of one
        speaker, for `forward(..., speaker_statistics=...)`. Refused when training found per-speaker statistics
        not label-neutral on its corpus (`config.speaker_normalization["reason"]`).

        With `config.speaker_prior_strength` n0 the statistics of the n clips are shrunk toward the training
        speakers' (`modeling_mise.layers.speaker_statistics`), so a few clips (one at least) give usable
        statistics; a model saved without it uses the clips' own statistics and needs two clips at least."""
        self._check_enrolment()
        shrunk = self.config.speaker_prior_strength is not None
        if input_values.shape[0] < (1 if shrunk else 2):
            raise ValueError(
                f"enrolment: needs at least {1 if shrunk else 2} clip(s) of the speaker, got {input_values.shape[0]}"
            )
        with torch.no_grad():
            hidden = self.audio_encoder(input_values, attention_mask=attention_mask)
        hidden = hidden.to(self.speaker_aligner.audio_mean.dtype)
        if not shrunk:
            return speaker_statistics(hidden)
        prior = (self.speaker_prior_mean, self.speaker_prior_var)
        return speaker_statistics(hidden, prior, self.config.speaker_prior_strength)

    def adaptation_statistics(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Statistics (mean, std of the frozen features) of unlabelled clips of a new recording setup, for
        `forward(..., adaptation_statistics=...)`: the clips' own, shrunk toward the training statistics (the
        aligner's `audio_mean` / `audio_std`) as if those were `config.adaptation_prior_strength` extra clips
        (`modeling_mise.layers.speaker_statistics`, the shrinkage of enrolment), so a few clips move the
        statistics a little and many clips replace them."""
        with torch.no_grad():
            hidden = self.audio_encoder(input_values, attention_mask=attention_mask)
        hidden = hidden.to(self.aligner.audio_mean.dtype)
        prior = (self.aligner.audio_mean, self.aligner.audio_std.pow(2))
        return speaker_statistics(hidden, prior, self.config.adaptation_prior_strength)

    def normalization_label(
        self, enrolment_clips: int | None = None, adaptation_clips: int | None = None, skipped: int = 0
    ) -> str:
        """What a result says about its statistics: `training` without other clips; `speaker (N clips, ...)` with
        enrolment clips of the speaker; `adapted (N clips, ...)` with clips of the recording setup (and how many
        unusable ones were `skipped`); each with the prior strength its statistics are shrunk toward (a model
        saved without an enrolment prior: none)."""
        if enrolment_clips:
            strength = self.config.speaker_prior_strength
            shrunk = (
                "" if strength is None else f", shrunk toward the training speakers as {strength:g} clips"
            )
            return f"speaker ({enrolment_clips} clip{'' if enrolment_clips == 1 else 's'}{shrunk})"
        if adaptation_clips:
            strength = self.config.adaptation_prior_strength
            clips = f"{adaptation_clips} clip{'' if adaptation_clips == 1 else 's'}"
            clips += f", {skipped} skipped" if skipped else ""
            return f"adapted ({clips}, shrunk toward the training statistics as {strength:g} clips)"
        return "training"

    @property
    def multimodal(self) -> bool:
        """Whether the classifier takes `[z_a; z_t]` (and `forward` a transcript per clip)."""
        return self.classifier.config.multimodal

    def text_embeds(self, transcripts: Sequence[str | None] | None, batch_size: int) -> torch.Tensor:
        """`z_t` (B, d) of each clip's transcript; NaN rows for clips without one (None or blank)."""
        dim = self.aligner.config.projection_dim
        device = self.aligner.audio_mean.device
        embeds = torch.full((batch_size, dim), float("nan"), device=device)
        if transcripts is None:
            return embeds
        if isinstance(transcripts, str) or len(transcripts) != batch_size:
            raise ValueError(
                f"transcripts: expected a list of {batch_size} strings or None (one per clip), got {transcripts!r}"
            )
        for index, text in enumerate(transcripts):
            if text is not None and not isinstance(text, str):
                raise ValueError(
                    f"transcripts[{index}]: expected a string or None, got {type(text).__name__}"
                )
        present = [index for index, text in enumerate(transcripts) if text is not None and text.strip()]
        if present:
            if self.aligner.text_encoder is None:
                self.aligner.set_text_encoder(adapter_from=self.name_or_path)
            embeds[present] = self.aligner.get_text_features(texts=[transcripts[i] for i in present]).float()
        return embeds

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual; a folder with remote code also lets `AutoModel` (not only
        `AutoModelForAudioClassification`) load it and names the MISE pipeline in `custom_pipelines`, so
        `pipeline("audio-classification", model=folder, trust_remote_code=True)` gets it without the package."""
        if self._auto_class is not None:
            from .pipeline_audio_classification import MiseAudioClassificationPipeline as pipeline_class

            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.setdefault("AutoModel", f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}")
            self.config.auto_map = auto_map
            self.config.custom_pipelines = {
                PIPELINE_TASK: {
                    "impl": f"{pipeline_class.__module__.split('.')[-1]}.{pipeline_class.__name__}",
                    "pt": ["AutoModelForAudioClassification"],
                    "type": "audio",
                }
            }
        state = kwargs.pop("state_dict", None)
        state = without_text_encoder(self.state_dict() if state is None else state, prefix="aligner.")
        super().save_pretrained(save_directory, *args, state_dict=state, **kwargs)
        if self.multimodal and kwargs.get("is_main_process", True):
            self.aligner.save_text_adapter(save_directory, adapter_from=self.name_or_path)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        transcripts: Sequence[str | None] | None = None,
        speaker_statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
        adaptation_statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> SequenceClassifierOutput:
        """
        Args:
            input_values: mono waveforms at `config.sampling_rate`, shape `(batch, samples)`, zero-padded.
            attention_mask: 1 for real samples, 0 for padding, shape `(batch, samples)`.
            labels: emotion ids `(batch,)`; the loss is set exactly when given.
            transcripts: multimodal models only: one transcript per clip, `None` (or blank) for a clip without
                one; `None` for the whole batch is audio only. Missing transcripts use the null text code.
            speaker_statistics: `(mean, std)` from [`~MiseForAudioClassification.speaker_statistics`] on other
                clips of the batch's speaker: the clips are normalised with them and classified by the aligner +
                classifier trained on per-speaker statistics. `None`: global statistics.
            adaptation_statistics: `(mean, std)` from [`~MiseForAudioClassification.adaptation_statistics`] on
                unlabelled clips of the recording setup: the clips are standardised with them instead of the
                training statistics (the same aligner and classifier). Not together with `speaker_statistics`.
        """
        if transcripts is not None and not self.multimodal:
            raise ValueError(
                "transcripts: this classifier is audio-only (classifier_config.multimodal=False)"
            )
        with torch.no_grad():
            hidden = self.audio_encoder(input_values, attention_mask=attention_mask)
        aligner, classifier = self.aligner, self.classifier
        if adaptation_statistics is not None:
            if speaker_statistics is not None:
                raise ValueError("give speaker_statistics (enrolment) or adaptation_statistics, not both")
            # standardised with the adapted statistics, then mapped onto the training statistics the aligner holds
            hidden = standardize(hidden.to(aligner.audio_mean.dtype), *adaptation_statistics)
            hidden = hidden * aligner.audio_std + aligner.audio_mean
        if speaker_statistics is not None:
            self._check_enrolment()
            aligner, classifier = self.speaker_aligner, self.speaker_classifier
            hidden = standardize(hidden.to(aligner.audio_mean.dtype), *speaker_statistics)
        audio_embeds = aligner.get_audio_features(hidden.to(aligner.audio_mean.dtype))
        features = audio_embeds
        if self.multimodal:
            features = multimodal_features(audio_embeds, self.text_embeds(transcripts, audio_embeds.shape[0]))
        logits = classifier(features=features).logits
        loss = None
        if labels is not None:
            loss = (
                soft_cross_entropy(logits, labels) if labels.dim() == 2 else F.cross_entropy(logits, labels)
            )
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=(audio_embeds,))
