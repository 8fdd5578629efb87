"""Stage 3 refuses the rows of a generator that carries no emotion (`generator_mi_floor`): the MI bound a probe
fitted on the real training rows reads from rows generated for the validation speakers' labels decides, per fold;
the refit keeps the decision, the cGAN ablation is never refused, and the test speaker is never read."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import toy_corpus, toy_fold, toy_trainer

from training.arguments import (
    ConfigError,
    MiseTrainingArguments,
    ModelArguments,
    _hashed,
    config_hash,
    parse_arguments,
)
from training.fold import FoldTrainer, Variant

MISE = Variant("mise", "full MISE", "mise")
CGAN = Variant("cgan", "conditional GAN without MI", "gan", mi=False)
NONE = Variant("none", "no augmentation", "none")


def _trainer(audio: torch.Tensor, labels: torch.Tensor, floor: float) -> FoldTrainer:
    model_args = ModelArguments(
        projection_dim=4, aligner_hidden_sizes=[8], text_encoder="none", augmentation="mise",
        classifier_hidden_sizes=[8], noise_dim=4, generator_hidden_sizes=[8], discriminator_hidden_sizes=[8],
    )  # fmt: skip
    args = MiseTrainingArguments(
        output_dir="unused", aligner_epochs=4, aligner_batch_size=16, classifier_epochs=4, classifier_batch_size=16,
        generator_epochs=4, generator_eval_every=2, generator_batch_size=16, generated_ratios=[0.5, 1.0],
        aligner_feature_sets=[], generator_mi_floor=floor,
    )  # fmt: skip
    return toy_trainer(audio, labels, model_args, args)


@pytest.fixture(scope="module")
def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    return toy_corpus(1.5)


def _ratios(trained) -> tuple[float, float]:
    return trained.stages["selection"]["classifier"]["generated_ratio"], trained.stages["classifier"][
        "generated_ratio"
    ]


def test_the_kept_generator_reports_what_its_rows_carry(corpus):
    trained = _trainer(*corpus, floor=-math.inf).train(MISE)
    carried = trained.stages["selection"]["generator"]["mi_emotion_nats"]
    assert math.isfinite(carried) and carried <= math.log(3) + 1e-6
    assert "mi_emotion_nats" not in trained.stages["generator"]  # the refit has no validation speakers
    selected, refit = _ratios(trained)
    assert selected in (0.5, 1.0) and refit == selected  # -inf: the rows are taken as configured


def test_rows_under_the_floor_are_refused_and_the_refit_keeps_it(corpus, caplog):
    trainer = _trainer(*corpus, floor=50.0)  # more nats than any label carries: every generator is refused
    with caplog.at_level("WARNING"):
        trained = trainer.train(MISE)
    assert _ratios(trained) == (0.0, 0.0)
    assert "stage 3 takes none of them" in caplog.text and "speaker-5" in caplog.text
    # a MISE fold that takes no row trains stage 3 as `none` does
    none = trainer.train(NONE)
    for a, b in zip(trained.classifier.parameters(), none.classifier.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_ablation_without_mi_is_never_refused(corpus):
    selected, refit = _ratios(_trainer(*corpus, floor=50.0).train(CGAN))
    assert selected in (0.5, 1.0) and refit == selected


def test_the_decision_reads_the_validation_speakers_not_the_test_speaker(corpus):
    audio, labels = corpus
    carried = (
        _trainer(audio, labels, -math.inf).train(MISE).stages["selection"]["generator"]["mi_emotion_nats"]
    )
    changed = audio.clone()
    test = toy_fold().test
    changed[test] = torch.randn(len(test), audio.shape[1], generator=torch.Generator().manual_seed(5))
    again = (
        _trainer(changed, labels, -math.inf).train(MISE).stages["selection"]["generator"]["mi_emotion_nats"]
    )
    assert again == carried
    # the floor between two generators' values refuses the one and keeps the other, on the same corpus
    for floor, refused in ((carried - 1e-3, False), (carried + 1e-3, True)):
        assert (_ratios(_trainer(audio, labels, floor).train(MISE))[0] == 0.0) is refused


def test_the_floor_is_a_number_of_nats():
    base = ["--dataset", "x.csv", "--output_dir", "out"]
    assert parse_arguments(base)[2].generator_mi_floor == 0.0
    off = parse_arguments([*base, "--generator_mi_floor=-inf"])
    assert off[2].generator_mi_floor == -math.inf
    # off, runs from before the option keep their hash (and resume); the shipped floor is another method
    assert not _hashed("generator_mi_floor", -math.inf) and config_hash(*off) != config_hash(
        *parse_arguments(base)
    )
    with pytest.raises(ConfigError, match="generator_mi_floor"):
        parse_arguments([*base, "--generator_mi_floor", "nan"])
