"""MISE: mutual-information regularised speech emotion augmentation (arXiv 2510.10078) for transformers.

Importing the package registers its configs and models with the transformers Auto classes and marks them
for `trust_remote_code` export, so `save_pretrained` folders carry their code and an `auto_map`; it also
registers the MISE pipeline for `audio-classification`, which only MISE audio classifiers get.
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
)
from transformers import (
    logging as hf_logging,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_aligner import MiseAlignerConfig
from .configuration_audio_classifier import MiseAudioClassifierConfig
from .configuration_classifier import MiseClassifierConfig
from .configuration_generator import MiseGeneratorConfig
from .feature_extraction_mise import MiseFeatureExtractor
from .modeling_aligner import MiseAlignerModel, MiseAlignerOutput
from .modeling_audio_classifier import MiseForAudioClassification
from .modeling_classifier import MiseClassifierModel
from .modeling_generator import (
    MiseDiscriminatorOutput,
    MiseGenerationOutput,
    MiseGeneratorModel,
    MiseGeneratorOutput,
)
from .pipeline_audio_classification import MiseAudioClassificationPipeline

__version__ = "0.1.0"

_MODELS = (
    (MiseAlignerConfig, MiseAlignerModel, "AutoModel"),
    (MiseGeneratorConfig, MiseGeneratorModel, "AutoModel"),
    (MiseClassifierConfig, MiseClassifierModel, "AutoModel"),
    (MiseAudioClassifierConfig, MiseForAudioClassification, "AutoModelForAudioClassification"),
)

for _config_class, _model_class, _auto_class in _MODELS:
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)
    _config_class.register_for_auto_class()
    _model_class.register_for_auto_class(_auto_class)
AutoModelForAudioClassification.register(MiseAudioClassifierConfig, MiseForAudioClassification, exist_ok=True)
AutoFeatureExtractor.register(MiseAudioClassifierConfig, MiseFeatureExtractor, exist_ok=True)
MiseFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

# `pipeline("audio-classification", model=<a MISE model>)` without remote code: the MISE pipeline (other models
# get the stock pipeline: see `MiseAudioClassificationPipeline.__new__`).
_verbosity = hf_logging.get_verbosity()
hf_logging.set_verbosity_error()
PIPELINE_REGISTRY.register_pipeline(
    "audio-classification",
    pipeline_class=MiseAudioClassificationPipeline,
    pt_model=AutoModelForAudioClassification,
    type="audio",
)
hf_logging.set_verbosity(_verbosity)

__all__ = [
    "MiseAlignerConfig",
    "MiseAlignerModel",
    "MiseAlignerOutput",
    "MiseAudioClassificationPipeline",
    "MiseAudioClassifierConfig",
    "MiseClassifierConfig",
    "MiseClassifierModel",
    "MiseDiscriminatorOutput",
    "MiseFeatureExtractor",
    "MiseForAudioClassification",
    "MiseGenerationOutput",
    "MiseGeneratorConfig",
    "MiseGeneratorModel",
    "MiseGeneratorOutput",
]
