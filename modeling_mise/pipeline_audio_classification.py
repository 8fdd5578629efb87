"""`pipeline("audio-classification")` for MISE models: the package's input policy, errors that name the file."""

from __future__ import annotations

import logging
import os
import sys
import urllib.request

import numpy as np
from transformers import AudioClassificationPipeline

from .audio import (
    DEFAULT_POLICY,
    AudioPolicy,
    check_waveform,
    crop,
    decode_bytes,
    load_audio,
    prepare_waveform,
)

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
    The stock audio-classification pipeline; for MISE models (`model_type` `mise-audio-classifier`) it reads the
    input itself, so that:

    - a file that is missing, empty, not audio, NaN/Inf, too short or silent raises an `AudioInputError` (a
      `ValueError`) whose message names the file and the reason (`modeling_mise.audio.AudioPolicy`);
    - `{"raw"|"array": ..., "sampling_rate": sr}` at another rate is resampled without torchaudio;
    - a clip longer than the model's window logs a warning naming the file before only its first
      `max_duration_s` are classified.

    Registered for the `audio-classification` task when `modeling_mise` is imported; other models get the stock
    behaviour.
    """

    def preprocess(self, inputs):
        if getattr(self.model.config, "model_type", None) != MISE_MODEL_TYPE:
            return super().preprocess(inputs)
        rate = int(self.feature_extractor.sampling_rate)
        waveform, source = decode_input(inputs, rate)
        if waveform is None:
            return super().preprocess(inputs)
        policy = input_policy(self.feature_extractor)
        for notice in check_waveform(waveform, rate, source, policy):
            logger.warning(f"{source}: {notice}")
        return super().preprocess(crop(waveform, rate, policy.max_seconds)[0])
