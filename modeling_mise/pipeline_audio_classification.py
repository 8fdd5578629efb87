"""`pipeline("audio-classification")` for MISE models: the package's input policy, errors that name the file,
and long recordings classified window by window (`window_seconds=`, `hop_seconds=`)."""

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
    check_waveform,
    crop,
    decode_bytes,
    load_audio,
    prepare_waveform,
)
from .segments import cut_windows, duration_weighted_mean

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
    - a clip longer than the model's window logs a warning naming the file before only its first
      `max_duration_s` are classified, unless `window_seconds` is given: `classifier(audio,
      window_seconds=3.0, hop_seconds=1.5)` cuts the clip into windows (silent ones skipped by an energy gate,
      see `modeling_mise.segments`), classifies every window and returns the duration-weighted mean of the
      windows' probabilities, in the usual `[{"label", "score"}, ...]` form.

    `classifier(audio, enrolment=[other clips of the same speaker])` normalises with that speaker's statistics
    (a model trained where per-speaker statistics were label-neutral; others refuse with the reason); every
    result says which statistics it used: `"normalization": "global"` or `"speaker (N enrolment clips, shrunk
    toward the training speakers as n0 clips)"` (a model saved before the prior existed omits the shrinkage).

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
        **kwargs,
    ):
        preprocess, forward, postprocess = super()._sanitize_parameters(top_k, function_to_apply, **kwargs)
        if enrolment is not None:  # other clips of the same speaker: per-speaker statistics, once per call
            statistics = enrolment_statistics(self.model, self.feature_extractor, enrolment)
            forward = {**forward, "speaker_statistics": statistics}
            postprocess = {**postprocess, "normalization": normalization_label(self.model, len(enrolment))}
        longest = getattr(self.feature_extractor, "max_duration_s", None)
        if window_seconds is not None and longest is not None and window_seconds > longest:
            raise ValueError(f"window_seconds ({window_seconds:g}) exceeds the {longest:g} s the model takes")
        if window_seconds is not None:
            preprocess = {**preprocess, "window_seconds": window_seconds, "hop_seconds": hop_seconds}
        elif hop_seconds is not None:
            raise ValueError("hop_seconds: give window_seconds too")
        return preprocess, forward, postprocess

    def preprocess(self, inputs, window_seconds=None, hop_seconds=None):
        rate = int(self.feature_extractor.sampling_rate)
        waveform, source = decode_input(inputs, rate)
        if waveform is None:
            return super().preprocess(inputs)
        policy = input_policy(self.feature_extractor)
        if window_seconds is None:
            for notice in check_waveform(waveform, rate, source, policy):
                logger.warning(f"{source}: {notice}")
            return super().preprocess(crop(waveform, rate, policy.max_seconds)[0])
        check_waveform(waveform, rate, source, dataclasses.replace(policy, max_seconds=math.inf))
        segments, _ = cut_windows(waveform, rate, window_seconds, hop_seconds)
        if not segments:
            raise AudioInputError(source, "every window is silent; nothing to classify")
        windows = [waveform[segment.start : segment.end] for segment in segments]
        processed = self.feature_extractor(windows, sampling_rate=rate, return_tensors="pt")
        processed["segments"] = segments
        return processed

    def _forward(self, model_inputs, speaker_statistics=None):
        segments = model_inputs.pop("segments", None)
        extra = {} if speaker_statistics is None else {"speaker_statistics": speaker_statistics}
        outputs = self.model(**model_inputs, **extra)
        if segments is None:
            return outputs
        probabilities = outputs.logits.float().softmax(dim=-1).cpu().numpy()
        pooled = torch.as_tensor(duration_weighted_mean(probabilities, segments), dtype=torch.float32)
        # log-probabilities: the stock postprocess' softmax gives back the pooled probabilities
        return SequenceClassifierOutput(logits=pooled.clamp_min(1e-12).log()[None])

    def postprocess(self, model_outputs, top_k=5, function_to_apply=None, normalization=None):
        scores = super().postprocess(model_outputs, top_k, function_to_apply)
        return [{**score, "normalization": normalization or "global"} for score in scores]


def is_mise_model(model) -> bool:
    """Whether `model` (a model object) is a MISE audio classifier."""
    return getattr(getattr(model, "config", None), "model_type", None) == MISE_MODEL_TYPE


def normalization_label(model, enrolment_clips: int) -> str:
    """What a MISE result says about its statistics (`MiseForAudioClassification.normalization_label`):
    `global`, or `speaker (N enrolment clips)` and, where the model shrinks them, toward what."""
    return model.normalization_label(enrolment_clips)


def enrolment_statistics(model, feature_extractor, clips) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-speaker statistics from unlabelled clips of one speaker (paths, arrays or `{raw, sampling_rate}`
    dicts), each checked with the input policy: `model.speaker_statistics` of their frozen features.

    Raises:
        ValueError: the model was not trained to take enrolment clips (with the reason training recorded), or
            too few clips (1 with a prior to shrink toward, 2 without); `AudioInputError` naming an unusable clip.
    """
    if not is_mise_model(model):
        raise ValueError("enrolment: MISE audio classifiers only")
    if isinstance(clips, (str, os.PathLike, dict, np.ndarray)):
        raise ValueError("enrolment: give a list of clips of the speaker")
    rate, policy = int(feature_extractor.sampling_rate), input_policy(feature_extractor)
    waveforms = []
    for clip in clips:
        waveform, source = decode_input(clip, rate)
        if waveform is None:
            raise ValueError("enrolment: a dict clip needs `raw` (or `array`) and `sampling_rate`")
        check_waveform(waveform, rate, source, policy)
        waveforms.append(crop(waveform, rate, policy.max_seconds)[0])
    inputs = feature_extractor(waveforms, sampling_rate=rate, return_tensors="pt").to(model.device)
    return model.speaker_statistics(**inputs)
