"""A combined openSMILE encoder (`opensmile/eGeMAPSv02+ComParE_2016`) and the choice of a feature set per fold by
speaker cross-validation on the fold's training side (`aligner_feature_sets`, `training.feature_choice`), for
stage 1 and for the classic baseline; a choice that read the test speaker would fail here."""

from __future__ import annotations

import dataclasses
from unittest.mock import patch

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from mise.folds import Fold
from modeling_mise.audio import load_audio
from modeling_mise.encoders import build_audio_encoder, feature_groups, load_audio_encoder
from training.arguments import (
    METHOD,
    ConfigError,
    MiseTrainingArguments,
    ModelArguments,
    feature_sets_to_choose,
    parse_arguments,
)
from training.engine import StageRuntime
from training.feature_choice import choose_feature_set, speaker_cv_uar, speaker_folds
from training.fold import FoldData, FoldTrainer, Variant, chosen_feature_sets, refit_arguments

SPEAKERS = np.repeat(np.arange(6), 24)  # speakers 0-3 train, 4 validates, 5 is tested
GOOD, BAD = slice(0, 6), slice(6, 12)  # two feature sets of 6 columns each
SPEC = {"type": "opensmile", "name": "opensmile/good+bad", "groups": [["good", 6], ["bad", 6]]}


def test_a_combined_encoder_concatenates_the_sets_and_names_their_columns(ravdess_wav):
    combined = load_audio_encoder("opensmile/eGeMAPSv02+ComParE_2016")
    waveform = torch.from_numpy(load_audio(ravdess_wav, 16000)[0])[None]
    features = combined(waveform)
    assert features.shape == (1, 88 + 6373) and combined.spec()["groups"] == [
        ["eGeMAPSv02", 88],
        ["ComParE_2016", 6373],
    ]
    assert torch.equal(features[:, :88], load_audio_encoder("opensmile/eGeMAPSv02")(waveform))
    assert torch.equal(features[:, 88:], load_audio_encoder("opensmile/ComParE_2016")(waveform))
    assert [(name, (s.start, s.stop)) for name, s in feature_groups(combined.spec())] == [
        ("eGeMAPSv02", (0, 88)), ("ComParE_2016", (88, 6461)),
    ]  # fmt: skip
    assert torch.equal(build_audio_encoder(combined.spec())(waveform), features)  # a saved model rebuilds it
    assert (
        "groups" not in load_audio_encoder("opensmile/eGeMAPSv02").spec()
    )  # a single set's cache key is as was
    with pytest.raises(ValueError, match="unknown or repeated"):
        load_audio_encoder("opensmile/eGeMAPSv02+eGeMAPSv02")


def test_feature_sets_are_checked_at_parse_time():
    flags = ["--dataset", "x.csv", "--output_dir", "out", "--aligner_feature_sets", "eGeMAPSv02"]
    with pytest.raises(
        ConfigError, match="aligner_feature_sets: .* of the audio encoder 'opensmile/ComParE_2016'"
    ):
        parse_arguments([*flags, "--audio_encoder", "opensmile/ComParE_2016"])
    parsed = parse_arguments([*flags, "ComParE_2016", "--audio_encoder", "opensmile/eGeMAPSv02+ComParE_2016"])
    assert parsed[2].aligner_feature_sets == ["eGeMAPSv02", "ComParE_2016"]
    assert chosen_feature_sets(SPEC, []) == [(None, None)]
    # the shipped default's sets (when mise.yaml names some) apply only to an encoder with sets to choose from
    base = ["--dataset", "x.csv", "--output_dir", "out"]
    assert feature_sets_to_choose(["eGeMAPSv02", "ComParE_2016"], ["eGeMAPSv02", "ComParE_2016"]) == [
        "eGeMAPSv02",
        "ComParE_2016",
    ]
    with patch.dict(METHOD, aligner_feature_sets=["eGeMAPSv02", "ComParE_2016"]):
        for sets in ([], ["ComParE_2016"]):  # a transformers model, one openSMILE set
            assert feature_sets_to_choose(["eGeMAPSv02", "ComParE_2016"], sets) == []
        assert feature_sets_to_choose(["eGeMAPSv02"], ["ComParE_2016"]) == ["eGeMAPSv02"]  # named: checked
    assert (
        parse_arguments([*base, "--audio_encoder", "MIT/ast-finetuned-audioset-10-10-0.4593"])[
            2
        ].aligner_feature_sets
        == []
    )
    with pytest.raises(ConfigError, match="'other'"):
        chosen_feature_sets(SPEC, ["good", "other"])


@pytest.fixture(scope="module")
def leaky_corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """Set `good` carries the emotion (one column) for the training and validation speakers and not for the test
    speaker; set `bad` carries it strongly for the test speaker only: a choice that read the test speaker would
    take `bad`, one on the training side takes `good`."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(len(SPEAKERS)) % 2
    audio = torch.randn(len(SPEAKERS), 12, generator=generator)
    tested = torch.from_numpy(SPEAKERS == 5)
    audio[:, 0] += torch.where(tested, 0.0, 1.5) * labels
    audio[:, BAD] += torch.where(tested, 4.0, 0.0)[:, None] * labels[:, None]
    return audio, labels


def _fold() -> Fold:
    rows = np.arange(len(SPEAKERS))
    return Fold("speaker-5", rows[SPEAKERS < 4], rows[SPEAKERS == 4], rows[SPEAKERS == 5], ["5"], ["4"])


def test_speaker_cross_validation_deals_speakers_into_groups_and_scores_uar():
    speakers = np.array(["b", "a", "c", "a", "d", "e", "b"])
    folds = speaker_folds(speakers, 2)
    assert [speakers[mask].tolist() for mask in folds] == [["a", "c", "a", "e"], ["b", "d", "b"]]
    assert len(speaker_folds(speakers, 9)) == 5 and speaker_folds(speakers[:1], 5)[0].all()
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1, 2], 40)
    groups = np.repeat(np.arange(6), 20)
    informative = rng.normal(size=(120, 30)) + 3.0 * np.eye(3)[labels].repeat(10, axis=1)
    assert speaker_cv_uar(informative, labels, groups) == pytest.approx(1.0)
    noise = rng.normal(size=(120, 300))  # more columns than rows: the dual solution
    assert speaker_cv_uar(noise, labels, groups) < 0.6
    assert speaker_cv_uar(noise, labels, np.zeros(120)) is None  # one speaker: nothing to cross-validate


def test_the_feature_set_is_chosen_on_the_training_side_and_never_reads_the_test_speaker(leaky_corpus):
    audio, labels = [tensor.numpy() for tensor in leaky_corpus]
    fold, sets = _fold(), chosen_feature_sets(SPEC, ["bad", "good"])
    training_side = np.union1d(fold.train, fold.validation)
    name, columns, scores = choose_feature_set(audio, labels, SPEAKERS, training_side, sets)
    assert (name, columns) == ("good", GOOD) and scores["good"] > 0.7 > 0.6 > scores["bad"]
    changed = audio.copy()
    changed[fold.test] = np.random.default_rng(1).normal(size=(len(fold.test), 12))
    assert choose_feature_set(changed, labels, SPEAKERS, training_side, sets) == (name, columns, scores)
    # a choice that read the test speaker's clips would take `bad`
    assert choose_feature_set(audio, labels, np.arange(len(SPEAKERS)) % 4, fold.test, sets)[0] == "bad"
    assert choose_feature_set(audio, labels, SPEAKERS, training_side, sets[:1]) == ("bad", BAD, None)


def test_stage_1_reads_the_chosen_feature_set(leaky_corpus):
    audio, labels = leaky_corpus
    model_args = ModelArguments(
        projection_dim=4, aligner_hidden_sizes=[8], text_encoder="none", augmentation="none",
        classifier_hidden_sizes=[8],
    )  # fmt: skip
    args = MiseTrainingArguments(
        output_dir="unused", aligner_epochs=6, aligner_batch_size=16, classifier_epochs=2, generated_ratios=[],
        aligner_feature_sets=["bad", "good"], early_stopping_patience=0,
    )  # fmt: skip
    data = FoldData(audio, None, labels, {0: "a", 1: "b"}, SPEC, model_args, args, speakers=SPEAKERS)
    runtime = StageRuntime(Accelerator(cpu=True))
    trainer = FoldTrainer(data, _fold(), 0, 7, lambda name, offset: runtime)
    trained = trainer.train(Variant.of(model_args))
    summary = trained.stages["selection"]["aligner"]  # the choice; the refit (shipped) trains on it again
    assert summary["feature_set"] == "good" and set(summary["feature_set_scores"]) == {"bad", "good"}
    assert summary["feature_set_scores"]["good"] > summary["feature_set_scores"]["bad"]
    aligner = trained.aligner  # reads the chosen columns of the standardised features, and only those
    assert aligner.config.audio_columns == [0, 6] and aligner.audio_projection[0].weight.shape[1] == 6
    changed = audio.clone()
    changed[:, BAD] = torch.randn(len(audio), 6)
    assert torch.equal(aligner.get_audio_features(changed), aligner.get_audio_features(audio))
    assert not torch.equal(
        aligner.get_audio_features(audio[:, [*range(6, 12), *range(6)]]), aligner.get_audio_features(audio)
    )
    assert refit_arguments(args, trained.stages["selection"]).aligner_feature_sets == [
        "good"
    ]  # a refit keeps it
    unnamed = FoldTrainer(
        dataclasses.replace(data, speakers=None), _fold(), 0, 7, lambda name, offset: runtime
    )
    with pytest.raises(ValueError, match="speaker of every row"):
        unnamed.train(Variant.of(model_args))


def test_the_model_card_names_the_set_a_combined_encoder_read():
    from mise.hub.cards import _encoders

    spec = load_audio_encoder("opensmile/eGeMAPSv02+ComParE_2016").spec()
    audio = _encoders({"audio_encoder_spec": spec, "audio_columns": [88, 6461]})[0]
    assert audio["feature_set"] == "ComParE_2016" and audio["description"].startswith(
        "openSMILE ComParE_2016"
    )
    assert _encoders({"audio_encoder_spec": spec})[0]["feature_set"] == "eGeMAPSv02+ComParE_2016"
