"""`pipeline("audio-classification")` that resamples dict inputs without torchaudio, and classifies long
recordings window by window (`window_seconds=`, `hop_seconds=`)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AudioClassificationPipeline
from transformers.modeling_outputs import SequenceClassifierOutput

from .audio import AudioInputError, load_audio, prepare_waveform
from .segments import cut_windows, duration_weighted_mean


class MiseAudioClassificationPipeline(AudioClassificationPipeline):
    """
    The stock audio-classification pipeline, except that `{"raw"|"array": ..., "sampling_rate": sr}` inputs at
    another rate are resampled with the package's own resampler (transformers needs torchaudio for that).
    Registered for the `audio-classification` task when `modeling_mise` is imported; behaviour is otherwise
    unchanged, for every model.

    Long recordings: `classifier(audio, window_seconds=3.0, hop_seconds=1.5)` cuts the clip into windows
    (silent ones skipped by an energy gate, see `modeling_mise.segments`), classifies every window and returns
    the duration-weighted mean of the windows' probabilities, in the usual `[{"label", "score"}, ...]` form.
    Without `window_seconds` a clip longer than the feature extractor's `max_duration_s` is cropped.
    """

    def _sanitize_parameters(
        self, top_k=None, function_to_apply=None, window_seconds=None, hop_seconds=None, **kwargs
    ):
        preprocess, forward, postprocess = super()._sanitize_parameters(top_k, function_to_apply, **kwargs)
        longest = getattr(self.feature_extractor, "max_duration_s", None)
        if window_seconds is not None and longest is not None and window_seconds > longest:
            raise ValueError(f"window_seconds ({window_seconds:g}) exceeds the {longest:g} s the model takes")
        if window_seconds is not None:
            preprocess = {**preprocess, "window_seconds": window_seconds, "hop_seconds": hop_seconds}
        elif hop_seconds is not None:
            raise ValueError("hop_seconds: give window_seconds too")
        return preprocess, forward, postprocess

    def preprocess(self, inputs, window_seconds=None, hop_seconds=None):
        target = self.feature_extractor.sampling_rate
        if isinstance(inputs, dict) and "sampling_rate" in inputs and ("raw" in inputs or "array" in inputs):
            array = inputs.get("raw", inputs.get("array"))
            if hasattr(array, "cpu"):
                array = array.cpu().numpy()
            inputs = prepare_waveform(
                np.asarray(array), int(inputs["sampling_rate"]), target, source="<input>"
            )
        if window_seconds is None:
            return super().preprocess(inputs)
        if isinstance(inputs, str):
            inputs = load_audio(inputs, target)[0]
        elif not isinstance(inputs, np.ndarray):
            raise TypeError("window_seconds: give a file path, a numpy array or a {raw, sampling_rate} dict")
        segments, _ = cut_windows(inputs, target, window_seconds, hop_seconds)
        if not segments:
            raise AudioInputError("<input>", "every window is silent; nothing to classify")
        windows = [inputs[segment.start : segment.end] for segment in segments]
        processed = self.feature_extractor(windows, sampling_rate=target, return_tensors="pt")
        processed["segments"] = segments
        return processed

    def _forward(self, model_inputs):
        segments = model_inputs.pop("segments", None)
        outputs = self.model(**model_inputs)
        if segments is None:
            return outputs
        probabilities = outputs.logits.float().softmax(dim=-1).cpu().numpy()
        pooled = torch.as_tensor(duration_weighted_mean(probabilities, segments), dtype=torch.float32)
        # log-probabilities: the stock postprocess' softmax gives back the pooled probabilities
        return SequenceClassifierOutput(logits=pooled.clamp_min(1e-12).log()[None])
