"""Stage 1 on principal directions of the training clips (`aligner_input_components`), on eGeMAPS features of real
RAVDESS clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import development_folds

from modeling_mise import MiseAlignerModel
from modeling_mise.audio import load_audio
from modeling_mise.encoders import load_audio_encoder
from modeling_mise.layers import feature_statistics, standardize
from training.aligner import _plain_setup, aligner_config, encode_audio, principal_basis, train_aligner
from training.arguments import ConfigError, MiseTrainingArguments, ModelArguments
from training.engine import Batches, StageRuntime, epoch_stream, mixup

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


def _train(features: torch.Tensor, labels: torch.Tensor, components: int, audio_limit: float = 0.0):
    """`audio_limit` 0: the standardised features unclamped, so the folded basis is the only thing read."""
    model_args = ModelArguments(
        aligner_hidden_sizes=[16],
        projection_dim=8,
        aligner_input_dropout=0.2,
        aligner_audio_limit=audio_limit,
    )
    config = aligner_config(model_args, features.shape[1], None, {0: "angry", 1: "sad"})
    args = MiseTrainingArguments(
        output_dir="unused", aligner_epochs=5, aligner_batch_size=16, aligner_input_components=components
    )
    train, val = slice(0, TRAIN_CLIPS), slice(TRAIN_CLIPS, None)
    return train_aligner(
        StageRuntime(Accelerator(cpu=True)), config, args, features[train], labels[train],
        features[val], labels[val], seed=3,
    )  # fmt: skip


def test_principal_basis_spans_the_centred_clips_largest_variance_first(real_features):
    features = real_features[0][:TRAIN_CLIPS]
    standardised = standardize(features, *feature_statistics(features))
    basis = principal_basis(standardised, 1000)  # at least the clips' count: their whole span
    assert basis.shape == (88, TRAIN_CLIPS - 1)  # centring removes one direction
    coordinates = standardised @ basis
    assert abs(float(coordinates.std(0).mean()) - 1.0) < 1e-4  # unit standard deviation on average
    unit = basis / basis.norm(dim=0)
    assert torch.allclose(unit.T @ unit, torch.eye(TRAIN_CLIPS - 1), atol=1e-4)  # orthogonal directions
    assert torch.allclose(standardised @ unit @ unit.T, standardised, atol=1e-3)  # the clips lie in it
    variances = coordinates.var(0)
    assert bool((variances[:-1] >= variances[1:] - 1e-5).all())  # largest variance first
    top = principal_basis(standardised, 5)
    assert top.shape == (88, 5)
    assert torch.allclose(top / top.norm(dim=0), unit[:, :5], atol=1e-4)


def test_the_aligner_reads_the_full_features_and_ignores_unused_directions(real_features):
    features, labels = real_features
    train = features[:TRAIN_CLIPS]
    mean, std = feature_statistics(train)
    basis = principal_basis(standardize(train, mean, std), 8)
    unit = basis / basis.norm(dim=0)
    unseen = torch.randn(88, generator=torch.Generator().manual_seed(1))
    unseen = (unseen - unit @ (unit.T @ unseen)) * std * 5  # outside the 8 directions, in raw feature units
    test = features[TRAIN_CLIPS:]

    aligner, summary = _train(features, labels, components=8)
    assert summary["input_components"] == 8
    assert aligner.config.audio_dim == 88  # the released shape: the basis is folded into the first layer
    assert torch.allclose(encode_audio(aligner, test + unseen), encode_audio(aligner, test), atol=1e-4)
    assert np.isfinite(summary["best_score"])

    plain, summary = _train(features, labels, components=0)
    assert summary["input_components"] is None
    assert not torch.allclose(encode_audio(plain, test + unseen), encode_audio(plain, test), atol=1e-2)


def test_a_feature_the_training_clips_never_varied_on_is_read_as_zero_and_the_others_clamped(real_features):
    """A ComParE functional constant on every training clip but not on a new speaker's put that speaker's clips
    millions of standard deviations out, and every one of them into one class; the aligner reads such a feature
    as 0 and clamps the others to +-audio_limit, in the released (unfolded) model as in the one trained whole."""
    features, labels = real_features
    features = features.clone()
    features[:, 0] = 1.0  # constant on the training clips (and on these test clips)
    test = features[TRAIN_CLIPS:]
    far = test.clone()
    far[:, 0] = 1.0 + 1e-2  # a new clip where it moves a little: 1e4 floored stds out
    std = feature_statistics(features[:TRAIN_CLIPS])[1]
    farther = test.clone()
    farther[:, 1] = test[:, 1] + 1e3 * std[1]  # 1000 stds out: as far as 10 once clamped
    clamped = test.clone()
    clamped[:, 1] = feature_statistics(features[:TRAIN_CLIPS])[0][1] + 10.0 * std[1]
    for components in (0, 8):
        aligner, summary = _train(features, labels, components, audio_limit=10.0)
        assert aligner.config.audio_limit == 10.0 and summary["constant_features"] == 1  # said in the log
        assert torch.allclose(encode_audio(aligner, far), encode_audio(aligner, test), atol=1e-5)
        assert torch.allclose(encode_audio(aligner, farther), encode_audio(aligner, clamped), atol=1e-5)
    unclamped, _ = _train(features, labels, 0)
    assert not torch.allclose(encode_audio(unclamped, far), encode_audio(unclamped, test), atol=1e-2)


def test_stage_1_mix_up_mixes_audio_text_and_labels_alike(real_features):
    """`aligner_mixup_alpha`: stage 1's loss is the model's on one mix of each batch's audio features, text
    features and labels (the same weight and partner for all three); a clip without transcript (NaN text) stays
    without one after mixing (left out of the contrastive term), and alpha 0 trains on the batch as it is."""
    features, labels = real_features
    text = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(2))
    text[3] = float("nan")
    model_args = ModelArguments(aligner_hidden_sizes=[16], projection_dim=8, lambda_cl=0.5)
    config = aligner_config(model_args, features.shape[1], text.shape[1], {0: "angry", 1: "sad"})
    statistics = feature_statistics(features)
    batch = (features[:16], labels[:16], text[:16])

    def loss(alpha: float, model=None) -> tuple[torch.Tensor, object]:
        args = MiseTrainingArguments(output_dir="unused", aligner_mixup_alpha=alpha)
        model = model or MiseAlignerModel(config).eval()
        _, _, _, batch_loss = _plain_setup(model, args, features, statistics, labels, text)
        return batch_loss(model, batch, epoch_stream(5, 0)), model

    plain, model = loss(0.0)
    assert torch.equal(plain, model(audio_features=batch[0], labels=batch[1], text_features=batch[2]).loss)
    mixed, _ = loss(1.0, model)
    rows, soft = mixup(torch.cat([batch[0], batch[2]], 1), batch[1], 2, 1.0, epoch_stream(5, 0))
    assert soft.shape == (16, 2) and bool(((soft > 0) & (soft < 1)).any())  # the labels are mixed
    assert torch.isnan(rows[:, features.shape[1] :]).any(1).sum() == 2  # the NaN row and its partner
    expected = model(
        audio_features=rows[:, : features.shape[1]], labels=soft, text_features=rows[:, features.shape[1] :]
    )
    assert torch.isfinite(mixed) and torch.allclose(mixed, expected.loss)
    assert not torch.allclose(mixed, plain)


def test_on_a_small_corpus_stage_1_still_takes_min_batches_steps_an_epoch(real_features):
    """`aligner_min_batches`: fewer training rows than the floor's worth of `aligner_batch_size` shrink stage 1's
    batches, so that it takes that many steps an epoch, at most one per row (at 128 rows a batch a corpus of ~250
    clips gave stage 1 two steps an epoch; on Emo-DB two steps an epoch cost the base 2.4 and 4.0 points)."""
    features, labels = real_features
    config = aligner_config(
        ModelArguments(aligner_hidden_sizes=[16], projection_dim=8), 88, None, {0: "a", 1: "b"}
    )
    statistics = feature_statistics(features)
    for min_batches, batch_size, steps in ((4, 128, 4), (1, 128, 1), (4, 8, 8), (100, 128, 60)):
        args = MiseTrainingArguments(
            output_dir="unused", aligner_batch_size=batch_size, aligner_min_batches=min_batches
        )
        _, batches, _, _ = _plain_setup(MiseAlignerModel(config), args, features, statistics, labels, None)
        assert len(batches) == steps and len(batches.epoch(epoch_stream(0, 0))) == steps
    assert MiseTrainingArguments(output_dir="unused").aligner_min_batches == 4  # the shipped method's value
    with pytest.raises(ConfigError, match="aligner_min_batches: must be > 0"):
        MiseTrainingArguments(output_dir="unused", aligner_min_batches=0)


@pytest.mark.parametrize("name, short", [("ravdess", 0), ("emodb", 30)])
def test_the_full_corpora_give_stage_1_min_batches_where_it_trains_on_all_training_speakers(name, short):
    """The floor leaves the refit (every training speaker: what a released model and `none`'s test predictions
    come from) of the two development corpora as it was; it adds a fourth batch to Emo-DB's first pass on the
    training speakers alone (the choices of the augmentations: its studies were run again), and to none of
    RAVDESS's (seeds 0-2)."""
    args = MiseTrainingArguments(output_dir="unused")
    below = 0
    for fold in development_folds(name):
        whole = (torch.zeros(len(fold.train) + len(fold.validation)),)
        assert len(Batches(whole, args.aligner_batch_size)) >= args.aligner_min_batches, fold.name
        first_pass = Batches((torch.zeros(len(fold.train)),), args.aligner_batch_size)
        below += len(first_pass) < args.aligner_min_batches
    assert below == short
