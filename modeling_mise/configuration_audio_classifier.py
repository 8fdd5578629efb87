"""Configuration of the end-to-end audio classifier: frozen encoder + aligner audio head + classifier."""

from __future__ import annotations

import sys

from transformers import PretrainedConfig

from .config_checks import check_non_negative, check_positive_int, label_kwargs
from .configuration_aligner import MiseAlignerConfig
from .configuration_classifier import MiseClassifierConfig
from .segments import check_utterance_range, default_utterance_range

PIPELINE_TASK = "audio-classification"
# what a sub-config does not take from a dict: the parent's bookkeeping, and the folder a part was loaded from
_NOT_SUB_CONFIG_FIELDS = ("model_type", "transformers_version", "auto_map", "_name_or_path")


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
        speaker_aligner_config (`dict` or [`MiseAlignerConfig`], *optional*): with `speaker_classifier_config`,
            a second aligner + classifier trained on per-speaker z-normalised features, used when the caller
            gives other clips of the same speaker (unlabelled enrolment). Present only when the training corpus
            allowed per-speaker statistics.
        speaker_classifier_config (`dict` or [`MiseClassifierConfig`], *optional*): see above.
        speaker_normalization (`dict`, *optional*): what training found about per-speaker statistics
            (`allowed`, `label_neutrality`, `reason`); enrolment is refused with this reason when not allowed.
        speaker_prior_strength (`float`, *optional*): with a per-speaker pair, the strength n0 (in clips) of the
            prior that enrolment statistics are shrunk toward (the model's `speaker_prior_mean` /
            `speaker_prior_var` buffers: the training clips' mean and the training speakers' pooled
            within-speaker variance), chosen on the validation speakers. `None` (models saved before it existed):
            the enrolment clips' own statistics, as those models were trained and evaluated.
        utterance_seconds (`list[float]`, *optional*): `[low, high]`, the 5th and 95th percentile of the training
            clips' durations (`modeling_mise.segments.utterance_range`): a longer recording is cut at pauses into
            segments of about that size (`modeling_mise.segments.cut_utterances`). `None` (models saved before it
            existed): `[min(2, max_duration_s), max_duration_s]`, see `utterance_range`.
        adaptation_prior_strength (`float`, defaults to 2.0): the strength n0 (in clips) of the training
            statistics that the statistics of unlabelled clips of a new recording setup (adaptation) are shrunk
            toward, as enrolment's are toward the training speakers' (docs/inference.md: of 2, 10 and 50, 2 did
            best with 10 clips across RAVDESS and Emo-DB, both ways).
    """

    model_type = "mise-audio-classifier"
    sub_configs = {
        "aligner_config": MiseAlignerConfig,
        "classifier_config": MiseClassifierConfig,
        "speaker_aligner_config": MiseAlignerConfig,
        "speaker_classifier_config": MiseClassifierConfig,
    }

    def __init__(
        self,
        aligner_config: dict | MiseAlignerConfig | None = None,
        classifier_config: dict | MiseClassifierConfig | None = None,
        audio_encoder_spec: dict | None = None,
        sampling_rate: int = 16000,
        max_duration_s: float = 30.0,
        speaker_aligner_config: dict | MiseAlignerConfig | None = None,
        speaker_classifier_config: dict | MiseClassifierConfig | None = None,
        speaker_normalization: dict | None = None,
        speaker_prior_strength: float | None = None,
        utterance_seconds: list[float] | None = None,
        adaptation_prior_strength: float = 2.0,
        **kwargs,
    ):
        name = type(self).__name__
        check_positive_int(name, "sampling_rate", sampling_rate)
        if (
            isinstance(max_duration_s, bool)
            or not isinstance(max_duration_s, (int, float))
            or max_duration_s <= 0
        ):
            raise ValueError(f"{name}.max_duration_s must be a number > 0, got {max_duration_s!r}")
        self.aligner_config, self.classifier_config = _checked_pair(
            name, aligner_config, classifier_config, ""
        )
        if (speaker_aligner_config is None) != (speaker_classifier_config is None):
            raise ValueError(
                f"{name}: give both speaker_aligner_config and speaker_classifier_config, or neither"
            )
        self.speaker_aligner_config = self.speaker_classifier_config = None
        if speaker_aligner_config is not None:
            self.speaker_aligner_config, self.speaker_classifier_config = _checked_pair(
                name, speaker_aligner_config, speaker_classifier_config, "speaker_"
            )
        if speaker_normalization is not None and not isinstance(speaker_normalization, dict):
            raise ValueError(
                f"{name}.speaker_normalization must be a dict, got {type(speaker_normalization).__name__}"
            )
        self.speaker_normalization = speaker_normalization
        if speaker_prior_strength is not None:
            if speaker_aligner_config is None:
                raise ValueError(
                    f"{name}.speaker_prior_strength needs a per-speaker pair (speaker_aligner_config)"
                )
            check_non_negative(name, "speaker_prior_strength", speaker_prior_strength)
            speaker_prior_strength = float(speaker_prior_strength)
        self.speaker_prior_strength = speaker_prior_strength
        if utterance_seconds is not None:
            low, high = check_utterance_range(utterance_seconds, f"{name}.utterance_seconds")
            if high > max_duration_s:
                raise ValueError(
                    f"{name}.utterance_seconds ({high:g} s) must not exceed max_duration_s ({max_duration_s:g} s)"
                )
            utterance_seconds = [low, high]
        self.utterance_seconds = utterance_seconds
        check_non_negative(name, "adaptation_prior_strength", adaptation_prior_strength)
        self.adaptation_prior_strength = float(adaptation_prior_strength)
        self.audio_encoder_spec = audio_encoder_spec
        self.sampling_rate = sampling_rate
        self.max_duration_s = float(max_duration_s)
        kwargs.setdefault("id2label", dict(self.classifier_config.id2label))
        if _pipeline_registered():  # `import modeling_mise` gave the pipeline: no remote code to trust for it
            kwargs.pop("custom_pipelines", None)
        super().__init__(**label_kwargs(kwargs))

    @property
    def speaker_adaptive(self) -> bool:
        """Whether the model holds a per-speaker aligner + classifier (and so accepts enrolment clips)."""
        return self.speaker_aligner_config is not None

    @property
    def utterance_range(self) -> tuple[float, float]:
        """`(low, high)` seconds of the training clips (`utterance_seconds`), or, for a model saved before it
        existed, `(min(2, max_duration_s), max_duration_s)`."""
        if self.utterance_seconds is None:
            return default_utterance_range(self.max_duration_s)
        low, high = self.utterance_seconds
        return float(low), float(high)

    @property
    def multimodal(self) -> bool:
        """Whether the classifier takes `[z_a; z_t]` (and the model a transcript)."""
        return self.classifier_config.multimodal


def _checked_pair(
    name: str,
    aligner: dict | PretrainedConfig | None,
    classifier: dict | PretrainedConfig | None,
    prefix: str,
) -> tuple[MiseAlignerConfig, MiseClassifierConfig]:
    """An aligner and the classifier on its `z_a` (or `[z_a; z_t]`) as config objects, checked to fit together."""
    aligner = _sub_config(aligner, MiseAlignerConfig, f"{name}.{prefix}aligner_config")
    classifier = _sub_config(classifier, MiseClassifierConfig, f"{name}.{prefix}classifier_config")
    if classifier.input_dim != aligner.projection_dim:
        raise ValueError(
            f"{name}.{prefix}classifier_config.input_dim ({classifier.input_dim}) must equal "
            f"{prefix}aligner_config.projection_dim ({aligner.projection_dim})"
        )
    if classifier.multimodal and not aligner.use_text:
        raise ValueError(
            f"{name}.{prefix}classifier_config.multimodal needs an aligner with a text head "
            f"({prefix}aligner_config.use_text=True) to compute z_t"
        )
    if classifier.multimodal and classifier.text_dim != aligner.projection_dim:
        raise ValueError(
            f"{name}.{prefix}classifier_config.text_dim ({classifier.text_dim}) must equal "
            f"{prefix}aligner_config.projection_dim ({aligner.projection_dim})"
        )
    return aligner, classifier


def _sub_config(value: dict | PretrainedConfig | None, config_class: type, field: str) -> PretrainedConfig:
    """A sub-config object from a config, a `config.json` dict (old files have no `model_type`) or `None`."""
    if value is None:
        return config_class()
    if isinstance(value, PretrainedConfig):  # this class, or the same class loaded through remote code
        value = value.to_dict()  # a copy: not shared with the model it came from
    if isinstance(value, dict):
        return config_class(**{k: v for k, v in value.items() if k not in _NOT_SUB_CONFIG_FIELDS})
    raise ValueError(f"{field} must be a dict or a {config_class.__name__}, got {type(value).__name__}")


def _pipeline_registered() -> bool:
    """Whether this process registered the MISE pipeline for its task (`import modeling_mise` does)."""
    pipelines = sys.modules.get("transformers.pipelines")
    if pipelines is None:
        return False
    impl = pipelines.PIPELINE_REGISTRY.supported_tasks.get(PIPELINE_TASK, {}).get("impl")
    return getattr(impl, "__name__", None) == "MiseAudioClassificationPipeline"
