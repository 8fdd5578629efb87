"""Configuration of the end-to-end audio classifier: frozen encoder + aligner audio head + classifier."""

from __future__ import annotations

from transformers import PretrainedConfig

from .config_checks import check_positive_int
from .configuration_aligner import MiseAlignerConfig
from .configuration_classifier import MiseClassifierConfig


class MiseAudioClassifierConfig(PretrainedConfig):
    r"""
    Configuration of [`MiseForAudioClassification`] (audio in, emotion out; optionally a transcript too).

    With a multimodal classifier (`classifier_config.multimodal`) the model classifies `[z_a; z_t]`; the text
    side (the aligner's text encoder, referenced by `aligner_config.text_encoder`, and its LoRA adapter if any)
    is loaded the first time a transcript is given, and a clip without transcript uses the null text code.

    Args:
        aligner_config (`dict` or [`MiseAlignerConfig`]): the stage-1 aligner whose audio head gives `z_a`.
        classifier_config (`dict` or [`MiseClassifierConfig`]): the stage-3 classifier; its `id2label` is this
            model's.
        audio_encoder_spec (`dict`, *optional*): spec of the frozen audio encoder (`modeling_mise.encoders`);
            defaults to the aligner's `audio_encoder` (openSMILE needs no weights).
        sampling_rate (`int`, defaults to 16000): sampling rate the model expects.
        max_duration_s (`float`, defaults to 30.0): longest clip, in seconds, the model takes.
    """

    model_type = "mise-audio-classifier"

    def __init__(
        self,
        aligner_config: dict | MiseAlignerConfig | None = None,
        classifier_config: dict | MiseClassifierConfig | None = None,
        audio_encoder_spec: dict | None = None,
        sampling_rate: int = 16000,
        max_duration_s: float = 30.0,
        **kwargs,
    ):
        name = type(self).__name__
        aligner = _as_dict(aligner_config, MiseAlignerConfig, f"{name}.aligner_config")
        classifier = _as_dict(classifier_config, MiseClassifierConfig, f"{name}.classifier_config")
        check_positive_int(name, "sampling_rate", sampling_rate)
        if (
            isinstance(max_duration_s, bool)
            or not isinstance(max_duration_s, (int, float))
            or max_duration_s <= 0
        ):
            raise ValueError(f"{name}.max_duration_s must be a number > 0, got {max_duration_s!r}")
        aligner_obj = MiseAlignerConfig(**aligner)
        classifier_obj = MiseClassifierConfig(**classifier)
        if classifier_obj.input_dim != aligner_obj.projection_dim:
            raise ValueError(
                f"{name}.classifier_config.input_dim ({classifier_obj.input_dim}) must equal "
                f"aligner_config.projection_dim ({aligner_obj.projection_dim})"
            )
        if classifier_obj.multimodal and not aligner_obj.use_text:
            raise ValueError(
                f"{name}.classifier_config.multimodal needs an aligner with a text head "
                "(aligner_config.use_text=True) to compute z_t"
            )
        if classifier_obj.multimodal and classifier_obj.text_dim != aligner_obj.projection_dim:
            raise ValueError(
                f"{name}.classifier_config.text_dim ({classifier_obj.text_dim}) must equal "
                f"aligner_config.projection_dim ({aligner_obj.projection_dim})"
            )
        self.aligner_config = _as_dict(aligner_obj, MiseAlignerConfig, "aligner_config")
        self.classifier_config = _as_dict(classifier_obj, MiseClassifierConfig, "classifier_config")
        self.audio_encoder_spec = audio_encoder_spec
        self.sampling_rate = sampling_rate
        self.max_duration_s = float(max_duration_s)
        kwargs.setdefault("id2label", classifier_obj.id2label)
        super().__init__(**kwargs)

    @property
    def aligner(self) -> MiseAlignerConfig:
        """The aligner's config object."""
        return MiseAlignerConfig(**_as_dict(self.aligner_config, MiseAlignerConfig, "aligner_config"))

    @property
    def classifier(self) -> MiseClassifierConfig:
        """The classifier's config object."""
        return MiseClassifierConfig(
            **_as_dict(self.classifier_config, MiseClassifierConfig, "classifier_config")
        )

    @property
    def multimodal(self) -> bool:
        """Whether the classifier takes `[z_a; z_t]` (and the model a transcript)."""
        return bool(self.classifier_config.get("multimodal", False))


def _as_dict(value: dict | PretrainedConfig | None, config_class: type, field: str) -> dict:
    if value is None:
        return config_class().to_dict()
    if isinstance(value, PretrainedConfig):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in ("model_type", "transformers_version", "auto_map")}
    raise ValueError(f"{field} must be a dict or a {config_class.__name__}, got {type(value).__name__}")
