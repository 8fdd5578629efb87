"""Feature extractor of the end-to-end audio classifier: any audio -> padded mono waveforms."""

from __future__ import annotations

import logging

import numpy as np
from transformers import BatchFeature, SequenceFeatureExtractor

from .audio import DEFAULT_POLICY, AudioInputError, AudioPolicy, check_waveform, prepare_waveform

logger = logging.getLogger(__name__)


class MiseFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns raw audio into `input_values` (mono float32 waveforms at `sampling_rate`, zero-padded) and an
    `attention_mask`. Audio at another sampling rate (pass `sampling_rate=`) is resampled, any channel count
    is downmixed. The input policy is `modeling_mise.audio.AudioPolicy`'s: empty, NaN/Inf, too short or silent
    audio raises an `AudioInputError` (a `ValueError`) naming the input, and a clip longer than
    `max_duration_s` is cropped to its first `max_duration_s` with a logged warning.

    Args:
        sampling_rate (`int`, defaults to 16000): sampling rate the model expects.
        max_duration_s (`float`, defaults to 30.0): the model's window; longer clips are cropped (with a warning).
        min_duration_s (`float`, defaults to 0.25): shorter clips are refused.
        silence_dbfs (`float`, defaults to -60.0): clips whose peak is below this level are refused as silent.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        sampling_rate: int = 16000,
        max_duration_s: float = DEFAULT_POLICY.max_seconds,
        padding_value: float = 0.0,
        min_duration_s: float = DEFAULT_POLICY.min_seconds,
        silence_dbfs: float = DEFAULT_POLICY.silence_dbfs,
        **kwargs,
    ):
        kwargs.setdefault("return_attention_mask", True)
        kwargs["feature_size"] = 1
        super().__init__(sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.max_duration_s = float(max_duration_s)
        self.min_duration_s = float(min_duration_s)
        self.silence_dbfs = float(silence_dbfs)
        _ = self.policy  # validates the three thresholds, naming the field

    @property
    def policy(self) -> AudioPolicy:
        """The input policy of this extractor (its three thresholds)."""
        return AudioPolicy(
            min_seconds=self.min_duration_s, silence_dbfs=self.silence_dbfs, max_seconds=self.max_duration_s
        )

    def __call__(
        self,
        raw_speech: np.ndarray | list,
        sampling_rate: int | None = None,
        padding: bool | str = "longest",
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            raw_speech: one waveform (`(samples,)`, or `(samples, channels)` / `(channels, samples)`) or a list.
            sampling_rate: rate of `raw_speech`; defaults to `self.sampling_rate` (resampled when different).
            padding: `"longest"` (default) or `"max_length"` with `max_length=` samples.
            return_tensors: `"pt"` or `"np"`.
        """
        rate = self.sampling_rate if sampling_rate is None else int(sampling_rate)
        is_batch = (
            isinstance(raw_speech, (list, tuple)) and len(raw_speech) > 0 and np.ndim(raw_speech[0]) >= 1
        )
        batch = list(raw_speech) if is_batch else [raw_speech]
        if not batch:
            raise AudioInputError("<input>", "empty batch")
        policy = self.policy
        max_samples = int(round(policy.max_seconds * self.sampling_rate))
        waveforms = []
        for index, waveform in enumerate(batch):
            source = f"<input {index}>" if is_batch else "<input>"
            waveform = prepare_waveform(waveform, rate, self.sampling_rate, source=source)
            for notice in check_waveform(waveform, self.sampling_rate, source, policy):
                logger.warning(f"{source}: {notice}")
            waveforms.append(waveform[:max_samples])
        length = max(len(w) for w in waveforms)
        if padding == "max_length" and kwargs.get("max_length"):
            length = int(kwargs["max_length"])
        input_values = np.full((len(waveforms), length), self.padding_value, dtype=np.float32)
        attention_mask = np.zeros((len(waveforms), length), dtype=np.int32)
        for row, waveform in enumerate(waveforms):
            input_values[row, : len(waveform)] = waveform[:length]
            attention_mask[row, : len(waveform)] = 1
        padded = {"input_values": input_values, "attention_mask": attention_mask}
        return BatchFeature(padded, tensor_type=return_tensors)
