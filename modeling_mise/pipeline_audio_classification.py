"""`pipeline("audio-classification")` that resamples dict inputs without torchaudio."""

from __future__ import annotations

import numpy as np
from transformers import AudioClassificationPipeline

from .audio import prepare_waveform


class MiseAudioClassificationPipeline(AudioClassificationPipeline):
    """
    The stock audio-classification pipeline, except that `{"raw"|"array": ..., "sampling_rate": sr}` inputs at
    another rate are resampled with the package's own resampler (transformers needs torchaudio for that).
    Registered for the `audio-classification` task when `modeling_mise` is imported; behaviour is otherwise
    unchanged, for every model.
    """

    def preprocess(self, inputs):
        if isinstance(inputs, dict) and "sampling_rate" in inputs and ("raw" in inputs or "array" in inputs):
            array = inputs.get("raw", inputs.get("array"))
            if hasattr(array, "cpu"):
                array = array.cpu().numpy()
            target = self.feature_extractor.sampling_rate
            inputs = prepare_waveform(
                np.asarray(array), int(inputs["sampling_rate"]), target, source="<input>"
            )
        return super().preprocess(inputs)
