"""Feature extractor of the end-to-end audio classifier: any audio -> padded mono waveforms."""

from __future__ import annotations

import numpy as np
from transformers import BatchFeature, SequenceFeatureExtractor

from .audio import AudioInputError, prepare_waveform


class MiseFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns raw audio into `input_values` (mono float32 waveforms at `sampling_rate`, zero-padded) and an
    `attention_mask`. Audio at another sampling rate (pass `sampling_rate=`) is resampled, any channel count
    is downmixed, and clips longer than `max_duration_s` are cropped. Empty, NaN or Inf audio raises a
    `ValueError` naming the input.

    Args:
        sampling_rate (`int`, defaults to 16000): sampling rate the model expects.
        max_duration_s (`float`, defaults to 30.0): clips are cropped to this many seconds.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self, sampling_rate: int = 16000, max_duration_s: float = 30.0, padding_value: float = 0.0, **kwargs
    ):
        kwargs.setdefault("return_attention_mask", True)
        kwargs["feature_size"] = 1
        super().__init__(sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.max_duration_s = float(max_duration_s)

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
            raise AudioInputError("<input>: empty batch")
        max_samples = int(self.max_duration_s * self.sampling_rate)
        waveforms = []
        for index, waveform in enumerate(batch):
            source = f"<input {index}>" if is_batch else "<input>"
            waveform = prepare_waveform(waveform, rate, self.sampling_rate, source=source)
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
