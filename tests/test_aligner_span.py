"""Stage 1 inside the span of the training clips (`aligner_input_span`), on eGeMAPS features of real RAVDESS clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from modeling_mise.audio import load_audio
from modeling_mise.encoders import load_audio_encoder
from modeling_mise.layers import feature_statistics, standardize
from training.aligner import aligner_config, encode_audio, train_aligner, training_span
from training.arguments import MiseTrainingArguments, ModelArguments
from training.engine import StageRuntime

TRAIN_CLIPS = 40  # fewer clips than the 88 eGeMAPS features: the span is a strict subspace


@pytest.fixture(scope="module")
def real_features(ravdess_rows) -> tuple[torch.Tensor, torch.Tensor]:
    """eGeMAPS functionals and labels of 60 real clips of two emotions, alternating."""
    names = ("angry", "sad")
    by_name = [[row for row in ravdess_rows if row["emotion"] == name][:30] for name in names]
    rows = [row for pair in zip(*by_name, strict=True) for row in pair]
    encoder = load_audio_encoder("opensmile/eGeMAPSv02")
    features = encoder.encode([load_audio(row["path"], 16000)[0] for row in rows], show_progress=False)
    labels = torch.tensor([names.index(row["emotion"]) for row in rows])
    return features.float(), labels


def _train(features: torch.Tensor, labels: torch.Tensor, span: bool):
    model_args = ModelArguments(aligner_hidden_sizes=[16], projection_dim=8, aligner_input_dropout=0.2)
    config = aligner_config(model_args, features.shape[1], None, {0: "angry", 1: "sad"})
    args = MiseTrainingArguments(
        output_dir="unused", aligner_epochs=5, aligner_batch_size=16, aligner_input_span=span
    )
    train, val = slice(0, TRAIN_CLIPS), slice(TRAIN_CLIPS, None)
    return train_aligner(
        StageRuntime(Accelerator(cpu=True)), config, args, features[train], labels[train],
        features[val], labels[val], seed=3,
    )  # fmt: skip


def test_training_span_is_an_orthonormal_basis_of_the_centred_clips(real_features):
    features = real_features[0][:TRAIN_CLIPS]
    standardised = standardize(features, *feature_statistics(features))
    basis = training_span(standardised)
    assert basis.shape == (88, TRAIN_CLIPS - 1)  # centring removes one direction
    assert torch.allclose(basis.T @ basis, torch.eye(TRAIN_CLIPS - 1), atol=1e-4)
    assert torch.allclose(standardised @ basis @ basis.T, standardised, atol=1e-3)
    wide = torch.randn(200, 10, generator=torch.Generator().manual_seed(0))
    assert training_span(wide - wide.mean(0)) is None  # the clips fill every direction: nothing to restrict


def test_span_aligner_ignores_directions_no_training_clip_has(real_features):
    features, labels = real_features
    train = features[:TRAIN_CLIPS]
    mean, std = feature_statistics(train)
    basis = training_span(standardize(train, mean, std))
    unseen = torch.randn(88, generator=torch.Generator().manual_seed(1))
    unseen = (unseen - basis @ (basis.T @ unseen)) * std * 5  # outside the span, in raw feature units
    test = features[TRAIN_CLIPS:]

    aligner, summary = _train(features, labels, span=True)
    assert summary["input_span"] == TRAIN_CLIPS - 1
    assert aligner.config.audio_dim == 88  # the released shape: the basis is folded into the first layer
    assert torch.allclose(encode_audio(aligner, test + unseen), encode_audio(aligner, test), atol=1e-4)
    assert np.isfinite(summary["best_score"])

    plain, summary = _train(features, labels, span=False)
    assert summary["input_span"] is None
    assert not torch.allclose(encode_audio(plain, test + unseen), encode_audio(plain, test), atol=1e-2)
