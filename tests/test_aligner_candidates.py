"""Stage-1 settings chosen per fold on the validation speakers (`aligner_candidates`): each candidate trains stage 1
on the training speakers, a stage-3 classifier without augmentation scores its space on the validation speakers,
the best is kept and a refit trains it again; a choice that read the test speaker would fail here."""

from __future__ import annotations

import pytest
import torch
from conftest import toy_corpus, toy_fold, toy_trainer

from training.arguments import (
    ConfigError,
    MiseTrainingArguments,
    ModelArguments,
    _hashed,
    aligner_candidate,
    config_hash,
    parse_arguments,
    with_aligner_candidate,
)
from training.fold import FoldTrainer, Variant, refit_arguments

CANDIDATES = ["aligner_hidden_sizes=3", "", "aligner_input_dropout=0.9,aligner_dropout=0.5"]
_fold = toy_fold


def _trainer(audio: torch.Tensor, labels: torch.Tensor, candidates: list[str]) -> FoldTrainer:
    model_args = ModelArguments(
        projection_dim=4, aligner_hidden_sizes=[8], text_encoder="none", augmentation="none",
        classifier_hidden_sizes=[8],
    )  # fmt: skip
    args = MiseTrainingArguments(
        output_dir="unused", aligner_epochs=12, aligner_batch_size=16, classifier_epochs=8, classifier_batch_size=16,
        generated_ratios=[], aligner_learning_rate=1e-2, classifier_learning_rate=1e-2,
        aligner_feature_sets=[], aligner_candidates=candidates,
    )  # fmt: skip
    return toy_trainer(audio, labels, model_args, args)


@pytest.fixture(scope="module")
def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    return toy_corpus(1.0)


def test_candidates_are_parsed_checked_and_left_out_of_the_hash_when_off():
    assert aligner_candidate("") == {}
    assert aligner_candidate("aligner_hidden_sizes=512+128, aligner_weight_decay=1") == {
        "aligner_hidden_sizes": [512, 128],
        "aligner_weight_decay": 1.0,
    }
    base = ["--dataset", "x.csv", "--output_dir", "out"]
    _, model_args, args = parse_arguments([*base, "--aligner_candidates", "", "lambda_cl=0.01"])
    assert args.aligner_candidates == ["", "lambda_cl=0.01"]
    chosen_model, chosen_args = with_aligner_candidate(
        model_args, args, "lambda_cl=0.01,aligner_weight_decay=2"
    )
    assert (chosen_model.lambda_cl, chosen_args.aligner_weight_decay) == (0.01, 2.0)
    assert (model_args.lambda_cl, args.aligner_weight_decay) != (0.01, 2.0)  # the configured ones unchanged
    for bad, message in [
        ("aligner_dropout=1.0", "aligner_dropout=1.0.*dropout rate"),
        ("projection_dim=8", "expected key=value with a key of"),
        ("aligner_weight_decay", "expected key=value"),
        ("aligner_hidden_sizes=a", "aligner_hidden_sizes"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_arguments([*base, "--aligner_candidates", "", bad])
    with pytest.raises(ConfigError, match="distinct"):
        parse_arguments([*base, "--aligner_candidates", "", ""])
    off = parse_arguments(base)  # off: runs from before the option keep their hash (and resume)
    assert off[2].aligner_candidates == [] and not _hashed("aligner_candidates", [])
    assert config_hash(*off) != config_hash(
        *parse_arguments([*base, "--aligner_candidates", "", "lambda_cl=0"])
    )


def test_stage_1_settings_are_chosen_on_the_validation_speakers_and_refit(corpus):
    audio, labels = corpus
    trainer = _trainer(audio, labels, CANDIDATES)
    trained = trainer.train(Variant("none", "no augmentation", "none"))
    selection = trained.stages["selection"]["aligner"]
    scores = selection["aligner_candidate_scores"]
    assert list(scores) == CANDIDATES and all(0.0 <= score <= 1.0 for score in scores.values())
    best = max(scores.values())
    assert selection["aligner_candidate"] == next(
        c for c in CANDIDATES if scores[c] == best
    )  # ties: the first
    assert len(set(scores.values())) > 1, "the candidates should score differently on this corpus"
    # the score is the validation UAR of the variant's own stage 3 on the chosen space
    assert trained.stages["selection"]["classifier"]["generated_ratio"] is None
    fixed = refit_arguments(trainer.args, trained.stages["selection"])
    assert fixed.aligner_candidates == [
        selection["aligner_candidate"]
    ]  # the refit trains the chosen one again
    hidden = aligner_candidate(selection["aligner_candidate"]).get("aligner_hidden_sizes", [8])
    for aligner in (trained.aligner, trained.selected.aligner):  # refit and selection read the chosen setting
        assert aligner.config.hidden_sizes == hidden
    assert "aligner_candidate_scores" not in trained.stages["aligner"]  # nothing left to choose in the refit

    # the test speaker is never read: other clips of it give the same scores and choice
    changed = audio.clone()
    test = _fold().test
    changed[test] = torch.randn(len(test), audio.shape[1], generator=torch.Generator().manual_seed(5))
    again = _trainer(changed, labels, CANDIDATES).train(Variant("none", "no augmentation", "none"))
    assert again.stages["selection"]["aligner"]["aligner_candidate_scores"] == scores
    # the validation speaker is: with its labels shuffled the scores change
    shuffled = labels.clone()
    val = _fold().validation
    shuffled[val] = labels[val][torch.randperm(len(val), generator=torch.Generator().manual_seed(1))]
    other = _trainer(audio, shuffled, CANDIDATES).train(Variant("none", "no augmentation", "none"))
    assert other.stages["selection"]["aligner"]["aligner_candidate_scores"] != scores


def test_one_candidate_is_that_setting_without_a_choice(corpus):
    audio, labels = corpus
    trained = _trainer(audio, labels, ["aligner_hidden_sizes=3"]).train(Variant("none", "none", "none"))
    assert "aligner_candidate" not in trained.stages["selection"]["aligner"]
    assert trained.aligner.config.hidden_sizes == [3]
    plain = _trainer(audio, labels, []).train(Variant("none", "none", "none"))
    configured = _trainer(audio, labels, [""]).train(Variant("none", "none", "none"))
    for a, b in zip(plain.aligner.parameters(), configured.aligner.parameters(), strict=True):
        assert torch.equal(a, b)  # "" is the configured setting
    assert plain.aligner.config.to_dict() == configured.aligner.config.to_dict()


def test_out_of_fold_aligners_train_the_chosen_setting(corpus):
    audio, labels = corpus
    trainer = _trainer(audio, labels, CANDIDATES)
    trainer.args.refit = False
    calls = []
    train_aligner = trainer._train_aligner

    def recorded(variant, train, seed, name, extra_rows=None, candidate=None):
        aligner, summary = train_aligner(variant, train, seed, name, extra_rows, candidate)
        calls.append((candidate, aligner.config.hidden_sizes))
        return aligner, summary

    trainer._train_aligner = recorded
    trained = trainer.train(Variant("none_oof", "out of fold", "none", out_of_fold=True))
    chosen = trained.stages["aligner"]["aligner_candidate"]
    assert chosen != CANDIDATES[0], "this corpus should choose another entry than the first"
    assert [candidate for candidate, _ in calls[: len(CANDIDATES)]] == CANDIDATES  # the in-fold choice
    out_of_fold = calls[len(CANDIDATES) :]
    assert len(out_of_fold) == trainer.data.out_of_fold_groups
    hidden = aligner_candidate(chosen).get("aligner_hidden_sizes", [8])
    assert all(call == (chosen, hidden) for call in out_of_fold)
