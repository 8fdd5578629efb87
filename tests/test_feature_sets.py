"""A combined openSMILE encoder (`opensmile/eGeMAPSv02+ComParE_2016`) and the choice of a feature set per fold on
the validation speakers (`aligner_feature_sets`), for stage 1 and for the classic baseline; a choice that read the
test speaker would fail here."""

from __future__ import annotations

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
from training.fold import FoldData, FoldTrainer, Variant, chosen_feature_sets, refit_arguments
from training.study_variants import classic_baseline, classic_feature_set

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
    """Set `good` carries the emotion a little (one column) for every speaker; set `bad` carries it strongly for the training
    and test speakers but the other way round for the validation speaker: it wins on the test speaker and loses
    on the validation speaker, so only a choice that looked at the test speaker would take it."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(len(SPEAKERS)) % 2
    audio = torch.randn(len(SPEAKERS), 12, generator=generator)
    audio[:, 0] += 0.7 * labels  # one column of `good`
    sign = torch.where(torch.from_numpy(SPEAKERS == 4), -1.0, 1.0)[:, None]
    audio[:, BAD] += 3.0 * sign * labels[:, None]
    return audio, labels


def _fold() -> Fold:
    rows = np.arange(len(SPEAKERS))
    return Fold("speaker-5", rows[SPEAKERS < 4], rows[SPEAKERS == 4], rows[SPEAKERS == 5], ["5"], ["4"])


def test_stage_1_chooses_its_feature_set_on_the_validation_speaker(leaky_corpus):
    audio, labels = leaky_corpus
    model_args = ModelArguments(
        projection_dim=4, aligner_hidden_sizes=[8], text_encoder="none", augmentation="none",
        classifier_hidden_sizes=[8],
    )  # fmt: skip
    args = MiseTrainingArguments(
        output_dir="unused", aligner_epochs=6, aligner_batch_size=16, classifier_epochs=2, generated_ratios=[],
        aligner_feature_sets=["bad", "good"], early_stopping_patience=0,
    )  # fmt: skip
    data = FoldData(audio, None, labels, {0: "a", 1: "b"}, SPEC, model_args, args)
    runtime = StageRuntime(Accelerator(cpu=True))
    trainer = FoldTrainer(data, _fold(), 0, 7, lambda name, offset: runtime)
    trained = trainer.train(Variant.of(model_args))
    summary = trained.stages["aligner"]
    assert summary["feature_set"] == "good" and set(summary["feature_set_scores"]) == {"bad", "good"}
    assert summary["feature_set_scores"]["good"] > summary["feature_set_scores"]["bad"]
    weight = trained.aligner.audio_projection[0].weight
    assert weight.shape[1] == 12 and torch.count_nonzero(weight[:, BAD]) == 0  # the other set has zero weight
    assert torch.count_nonzero(weight[:, GOOD]) > 0
    assert refit_arguments(args, trained.stages).aligner_feature_sets == ["good"]  # a refit keeps the choice


def test_the_classic_baseline_chooses_its_feature_set_on_the_validation_speaker(leaky_corpus):
    audio, labels = [tensor.numpy() for tensor in leaky_corpus]
    fold = _fold()
    sets = chosen_feature_sets(SPEC, ["bad", "good"])
    assert classic_feature_set(audio, labels, fold.train, fold.validation, sets)[0] == "good"
    assert (
        classic_feature_set(audio, labels, fold.train, fold.validation[:0], sets)[0] == "bad"
    )  # no validation
    training_side = np.union1d(fold.train, fold.validation)
    on_good = classic_baseline(audio, labels, training_side, fold.test, columns=GOOD)
    on_bad = classic_baseline(audio, labels, training_side, fold.test, columns=BAD)
    assert (on_bad == labels[fold.test]).mean() > (
        on_good == labels[fold.test]
    ).mean()  # `bad` wins on the test
