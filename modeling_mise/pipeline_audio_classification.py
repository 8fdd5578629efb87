"""`pipeline("audio-classification")` for MISE models: the package's input policy, errors that name the file,
long recordings classified in utterance-sized segments (or windows: `window_seconds=`, `hop_seconds=`), and
the statistics of other clips: of the speaker (`enrolment=`) or of the recording setup (`adaptation=`)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import urllib.request

import numpy as np
import torch
from transformers import AudioClassificationPipeline
from transformers.modeling_outputs import SequenceClassifierOutput

from .audio import (
    DEFAULT_POLICY,
    AudioInputError,
    AudioPolicy,
    audio_files,
    check_waveform,
    decode_bytes,
    load_audio,
    prepare_waveform,
)
from .segments import cut_recording, default_utterance_range, duration_weighted_mean, segment_notice

logger = logging.getLogger(__name__)

MISE_MODEL_TYPE = "mise-audio-classifier"


def input_policy(feature_extractor) -> AudioPolicy:
    """The input policy of a feature extractor (a `MiseFeatureExtractor` has one; others get the defaults)."""
    policy = getattr(feature_extractor, "policy", None)
    if isinstance(policy, AudioPolicy):
        return policy
    max_seconds = getattr(feature_extractor, "max_duration_s", None) or DEFAULT_POLICY.max_seconds
    return AudioPolicy(max_seconds=float(max_seconds))


def decode_input(inputs, sampling_rate: int) -> tuple[np.ndarray | None, str]:
    """A pipeline input -> `(float32 mono at sampling_rate, name for messages)`; `(None, "")` for a malformed dict.

    Raises:
        AudioInputError: naming the file (or `<bytes>`, `<array>`, `<input>`) for input that is not usable audio.
    """
    if isinstance(inputs, os.PathLike):
        inputs = os.fspath(inputs)
    if isinstance(inputs, str):
        if inputs.startswith(("http://", "https://")):
            with urllib.request.urlopen(inputs, timeout=60) as response:  # http/https only
                data = response.read()
            return decode_bytes(data, inputs.split("?")[0], sampling_rate, inputs), inputs
        return load_audio(inputs, sampling_rate)[0], inputs
    if isinstance(inputs, (bytes, bytearray)):
        return decode_bytes(bytes(inputs), None, sampling_rate, "<bytes>"), "<bytes>"
    torchcodec = sys.modules.get("torchcodec")
    if torchcodec is not None and isinstance(inputs, torchcodec.decoders.AudioDecoder):
        samples = inputs.get_all_samples()
        inputs = {"array": samples.data, "sampling_rate": samples.sample_rate}
    if isinstance(inputs, dict) and "sampling_rate" in inputs and ("raw" in inputs or "array" in inputs):
        array = inputs["raw"] if inputs.get("raw") is not None else inputs.get("array")
        source = str(inputs.get("path") or "<input>")
        return prepare_waveform(array, inputs["sampling_rate"], sampling_rate, source=source), source
    if isinstance(inputs, dict):
        return None, ""  # the stock pipeline says what a dict input needs
    return prepare_waveform(inputs, sampling_rate, sampling_rate, source="<array>"), "<array>"


class MiseAudioClassificationPipeline(AudioClassificationPipeline):
    """
    `pipeline("audio-classification")` for MISE audio classifiers (`model_type` `mise-audio-classifier`); it reads
    the input itself, so that:

    - a file that is missing, empty, not audio, NaN/Inf, too short or silent raises an `AudioInputError` (a
      `ValueError`) whose message names the file and the reason (`modeling_mise.audio.AudioPolicy`);
    - `{"raw"|"array": ..., "sampling_rate": sr}` at another rate is resampled without torchaudio;
    - a clip longer than the model's training clips (`config.utterance_range`) is cut at pauses into
      utterance-sized segments (`modeling_mise.segments.cut_recording`, the segmentation of `mise classify` and
      the Space; a warning naming the file says how), or, with `window_seconds=3.0, hop_seconds=1.5`, into
      windows; every segment is classified and the result is the duration-weighted mean of their probabilities,
      in the usual `[{"label", "score"}, ...]` form.

    `classifier(audio, enrolment=[other clips of the same speaker])` normalises with that speaker's statistics
    (a model trained where per-speaker statistics were label-neutral; others refuse with the reason);
    `classifier(audio, adaptation=[unlabelled clips of the same recording setup] or "folder/")` standardises
    with their statistics instead of the training ones (unusable clips are skipped with a warning naming each).
    Both are shrunk toward the training statistics, so a few clips do. Every result says which statistics it
    used: `"normalization": "training"`, `"adapted (N clips, shrunk toward the training statistics as n0
    clips)"` or `"speaker (N clips, shrunk toward the training speakers as n0 clips)"`.

    How `pipeline()` finds it: a saved MISE audio classifier names it in its config's `custom_pipelines`, with
    this file beside the weights (`pipeline(..., trust_remote_code=True)` without the package), and
    `import modeling_mise` registers it for the task. Either way it is built for MISE models only: for any other
    model it returns the stock `AudioClassificationPipeline`.
    """

    def __new__(cls, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if not is_mise_model(model):
            return AudioClassificationPipeline(*args, **kwargs)  # not an instance of cls: __init__ is skipped
        return super().__new__(cls)

    def _sanitize_parameters(
        self,
        top_k=None,
        function_to_apply=None,
        window_seconds=None,
        hop_seconds=None,
        enrolment=None,
        adaptation=None,
        **kwargs,
    ):
        preprocess, forward, postprocess = super()._sanitize_parameters(top_k, function_to_apply, **kwargs)
        if enrolment is not None and adaptation is not None:
            raise ValueError(
                "give enrolment (clips of the speaker) or adaptation (of the recording setup), not both"
            )
        if enrolment is not None:  # other clips of the same speaker: per-speaker statistics, once per call
            enrolment = reference_clips(enrolment, "enrolment")
            statistics = enrolment_statistics(self.model, self.feature_extractor, enrolment)
            forward = {**forward, "statistics": {"speaker_statistics": statistics}}
            postprocess = {**postprocess, "normalization": self.model.normalization_label(len(enrolment))}
        if adaptation is not None:  # clips of the recording setup: its statistics, once per call
            statistics, used, skipped = adaptation_statistics(self.model, self.feature_extractor, adaptation)
            for message in skipped:
                logger.warning(f"adaptation: {message} (skipped)")
            forward = {**forward, "statistics": {"adaptation_statistics": statistics}}
            label = self.model.normalization_label(adaptation_clips=used, skipped=len(skipped))
            postprocess = {**postprocess, "normalization": label}
        longest = getattr(self.feature_extractor, "max_duration_s", None)
        if window_seconds is not None and longest is not None and window_seconds > longest:
            raise ValueError(f"window_seconds ({window_seconds:g}) exceeds the {longest:g} s the model takes")
        if hop_seconds is not None and window_seconds is None:
            raise ValueError("hop_seconds: give window_seconds too")
        preprocess = {**preprocess, "window_seconds": window_seconds, "hop_seconds": hop_seconds}
        return preprocess, forward, postprocess

    def preprocess(self, inputs, window_seconds=None, hop_seconds=None):
        rate = int(self.feature_extractor.sampling_rate)
        waveform, source = decode_input(inputs, rate)
        if waveform is None:
            return super().preprocess(inputs)
        policy = input_policy(self.feature_extractor)
        check_waveform(waveform, rate, source, dataclasses.replace(policy, max_seconds=math.inf))
        utterance = model_utterance_range(self.model, self.feature_extractor)
        segments, skipped = cut_recording(waveform, rate, utterance, window_seconds, hop_seconds)
        if not segments:
            raise AudioInputError(source, "every segment is silent; nothing to classify")
        notice = segment_notice(segments, skipped, waveform.shape[0], window_seconds, hop_seconds)
        if notice is not None:
            logger.warning(f"{source}: {notice}")
        windows = [waveform[segment.start : segment.end] for segment in segments]
        processed = self.feature_extractor(windows, sampling_rate=rate, return_tensors="pt")
        processed["segments"] = segments
        return processed

    def _forward(self, model_inputs, statistics=None):
        segments = model_inputs.pop("segments", None)
        outputs = self.model(**model_inputs, **(statistics or {}))
        if segments is None or len(segments) == 1:
            return outputs
        probabilities = outputs.logits.float().softmax(dim=-1).cpu().numpy()
        pooled = torch.as_tensor(duration_weighted_mean(probabilities, segments), dtype=torch.float32)
        # log-probabilities: the stock postprocess' softmax gives back the pooled probabilities
        return SequenceClassifierOutput(logits=pooled.clamp_min(1e-12).log()[None])

    def postprocess(self, model_outputs, top_k=5, function_to_apply=None, normalization=None):
        scores = super().postprocess(model_outputs, top_k, function_to_apply)
        return [{**score, "normalization": normalization or "training"} for score in scores]


def is_mise_model(model) -> bool:
    """Whether `model` (a model object) is a MISE audio classifier."""
    return getattr(getattr(model, "config", None), "model_type", None) == MISE_MODEL_TYPE


def model_utterance_range(model, feature_extractor) -> tuple[float, float]:
    """The duration range of a model's training clips (`config.utterance_range` of a MISE model; for another
    model, `modeling_mise.segments.default_utterance_range` of its feature extractor's `max_duration_s`)."""
    utterance = getattr(getattr(model, "config", None), "utterance_range", None)
    if utterance is not None:
        return utterance
    longest = getattr(feature_extractor, "max_duration_s", None) or DEFAULT_POLICY.max_seconds
    return default_utterance_range(float(longest))


def reference_clips(clips, what: str) -> list:
    """Other clips (enrolment, adaptation) as a list: a folder (path) gives its audio files."""
    if isinstance(clips, (str, os.PathLike)) and os.path.isdir(clips):
        found = audio_files(clips)
        if not found:
            raise ValueError(f"{what}: no audio files in {os.fspath(clips)}")
        return [str(path) for path in found]
    if isinstance(clips, (str, os.PathLike, dict, bytes, np.ndarray)):
        raise ValueError(f"{what}: give a list of clips or a folder")
    return list(clips)


def reference_segments(
    model, feature_extractor, clips: list, skip_unusable: bool
) -> tuple[list, int, list[str]]:
    """The segments (waveforms) of other clips (paths, arrays or `{raw, sampling_rate[, path]}` dicts), each read
    and checked with the input policy and cut as a clip to classify is; returns `(segments, clips used,
    messages of the unusable clips)`. An unusable clip raises its `AudioInputError` unless `skip_unusable`."""
    rate, policy = int(feature_extractor.sampling_rate), input_policy(feature_extractor)
    utterance = model_utterance_range(model, feature_extractor)
    pieces, used, skipped = [], 0, []
    for clip in clips:
        try:
            waveform, source = decode_input(clip, rate)
            if waveform is None:
                raise ValueError("a dict clip needs `raw` (or `array`) and `sampling_rate`")
            check_waveform(waveform, rate, source, dataclasses.replace(policy, max_seconds=math.inf))
            segments, _ = cut_recording(waveform, rate, utterance)
            if not segments:
                raise AudioInputError(source, "every segment is silent")
        except AudioInputError as error:
            if not skip_unusable:
                raise
            skipped.append(str(error))
            continue
        pieces += [waveform[segment.start : segment.end] for segment in segments]
        used += 1
    return pieces, used, skipped


def enrolment_statistics(model, feature_extractor, clips) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-speaker statistics from unlabelled clips of one speaker (a list of paths, arrays or `{raw,
    sampling_rate}` dicts, or a folder), each checked with the input policy: `model.speaker_statistics` of the
    frozen features of their segments.

    Raises:
        ValueError: the model was not trained to take enrolment clips (with the reason training recorded), or
            too few clips (1 with a prior to shrink toward, 2 without); `AudioInputError` naming an unusable clip.
    """
    if not is_mise_model(model):
        raise ValueError("enrolment: MISE audio classifiers only")
    pieces, _, _ = reference_segments(model, feature_extractor, reference_clips(clips, "enrolment"), False)
    inputs = feature_extractor(pieces, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
    return model.speaker_statistics(**inputs.to(model.device))


def adaptation_statistics(
    model, feature_extractor, clips
) -> tuple[tuple[torch.Tensor, torch.Tensor], int, list[str]]:
    """Statistics of unlabelled clips of a recording setup (a list of clips or a folder), shrunk toward the
    training statistics (`model.adaptation_statistics` of the frozen features of their segments). A clip the
    input policy refuses is skipped; returns `(statistics, clips used, "<clip>: <reason>" of each skipped one)`.

    Raises:
        ValueError: not a MISE model, or no usable clip (naming the skipped ones).
    """
    if not is_mise_model(model):
        raise ValueError("adaptation: MISE audio classifiers only")
    clips = reference_clips(clips, "adaptation")
    pieces, used, skipped = reference_segments(model, feature_extractor, clips, True)
    if not pieces:
        raise ValueError(f"adaptation: none of the {len(clips)} clip(s) is usable: " + "; ".join(skipped))
    inputs = feature_extractor(pieces, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
    return model.adaptation_statistics(**inputs.to(model.device)), used, skipped
