"""Enrolment statistics on real ComParE_2016 features: a few clips of a speaker, shrunk toward the training
speakers' statistics, give usable normalised features; the clips' own statistics do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_mise.audio import load_audio
from modeling_mise.encoders import load_audio_encoder
from modeling_mise.layers import speaker_prior, speaker_statistics, standardize

SPEAKERS = ("Actor_01", "Actor_02", "Actor_03")
CLIPS_PER_SPEAKER = 8


@pytest.fixture(scope="module")
def compare_features(ravdess_rows) -> tuple[torch.Tensor, np.ndarray]:
    """ComParE_2016 functionals (6373-d) of 8 clips each of three RAVDESS speakers, and their speakers."""
    rows = [
        row
        for speaker in SPEAKERS
        for row in [row for row in ravdess_rows if row["speaker"] == speaker][:CLIPS_PER_SPEAKER]
    ]
    encoder = load_audio_encoder("opensmile/ComParE_2016")
    features = encoder.encode([load_audio(row["path"], 16000)[0] for row in rows], show_progress=False)
    return features.double(), np.asarray([row["speaker"] for row in rows])


def test_prior_is_global_mean_and_pooled_within_speaker_variance(compare_features):
    features, speakers = compare_features
    mean, var = speaker_prior(features, speakers)
    torch.testing.assert_close(mean, features.mean(0))
    own = [features[torch.as_tensor(speakers == s)] for s in SPEAKERS]
    pooled = sum(((rows - rows.mean(0)) ** 2).sum(0) for rows in own) / len(features)
    torch.testing.assert_close(var, pooled)
    assert (var < features.var(0) + 1e-9).float().mean() > 0.9  # within-speaker spread: below the global


def test_shrunk_statistics_follow_the_documented_estimator(compare_features):
    features, speakers = compare_features
    prior = speaker_prior(features[:16], speakers[:16])
    clips = features[16:19]  # three clips of the third speaker
    mean, std = speaker_statistics(clips, prior, 5.0)
    n = 3
    expected_mean = (n * clips.mean(0) + 5.0 * prior[0]) / (n + 5.0)
    expected_var = (n * clips.var(0, unbiased=False) + 5.0 * prior[1]) / (n + 5.0)
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(std, expected_var.sqrt().clamp(min=1e-6))
    # strength 0: the clips' own mean and biased std; a single clip is usable with a prior
    torch.testing.assert_close(
        speaker_statistics(clips, prior, 0.0)[1], clips.std(0, unbiased=False).clamp(min=1e-6)
    )
    single_mean, single_std = speaker_statistics(clips[:1], prior, 5.0)
    assert torch.isfinite(single_mean).all() and (single_std > 0).all()
    # many clips: the speaker's own statistics dominate
    many = torch.cat([clips] * 100)
    shift = (speaker_statistics(many, prior, 5.0)[0] - clips.mean(0)).abs()
    assert (shift <= 1.001 * 5.0 / 305.0 * (prior[0] - clips.mean(0)).abs() + 1e-9).all()
    with pytest.raises(ValueError, match="prior_strength"):
        speaker_statistics(clips, prior, -1.0)


def test_three_enrolment_clips_do_not_blow_up_near_constant_features(compare_features):
    """On a few clips many ComParE functionals barely move: the clips' own std divides a test clip's deviation
    by almost nothing (the collapse of enrolment with k=3); shrunk toward the training speakers' pooled
    within-speaker variance the normalised features stay on the scale training saw."""
    features, speakers = compare_features
    train = torch.as_tensor(speakers != SPEAKERS[-1])
    prior = speaker_prior(features[train], speakers[train.numpy()])
    own = features[~train]
    test, enrolment = own[0], own[1:4]
    old = standardize(test, *speaker_statistics(enrolment))
    new = standardize(test, *speaker_statistics(enrolment, prior, 5.0))
    # the near-constant features are there on real clips: the clips' own statistics blow up
    near_constant = (enrolment.std(0) < 1e-3 * prior[1].sqrt()).sum().item()
    assert near_constant > 10, near_constant
    assert old.abs().max() > 1e4 and (old.abs() > 10).sum() > 50
    # shrunk: bounded, and few features beyond 10 (a normalised training speaker stays within ~(n-1)/sqrt(n))
    assert torch.isfinite(new).all()
    assert new.abs().max() < 1e3 and (new.abs() > 10).sum() < 30, (new.abs().max(), (new.abs() > 10).sum())
    # the test clip's features are as spread as the speaker's all-clips normalisation makes them
    reference = standardize(test, *speaker_statistics(own))
    assert new.abs().median() < 3 * reference.abs().median()


@pytest.mark.parametrize("size", [3, None])
def test_enrolment_normalises_each_clip_with_the_statistics_of_its_enrolment_clips(compare_features, size):
    """The enrolment evaluation computes each clip's enrolment moments once and shrinks them for every prior
    strength; that equals `speaker_statistics` on the clip's enrolment clips, bit for bit."""
    from training.speaker_normalization import Enrolment

    features, speakers = compare_features
    features = features.float()
    rows = np.arange(len(features))
    enrolment = Enrolment(features, speakers, np.zeros(len(rows), dtype=int), seed=7)
    prior = enrolment.prior(rows[:16])
    moments = enrolment.moments(rows, size)
    assert moments[0].squeeze(1).tolist() == [size or CLIPS_PER_SPEAKER - 1] * len(rows)
    rng = np.random.default_rng([7, size or 0])  # the documented draw: seed and size only
    expected = []
    for index in rows:
        others = rows[(speakers == speakers[index]) & (rows != index)]
        others = rng.choice(others, size=size, replace=False) if size else others
        statistics = speaker_statistics(features[torch.as_tensor(others)], (prior.mean, prior.var), 5.0)
        expected.append(standardize(features[index], *statistics))
    assert torch.equal(enrolment.normalized(rows, moments, prior, 5.0), torch.stack(expected))
