"""Out-of-fold aligned features (training/out_of_fold.py): speaker groups, the Procrustes rotation, and that each
training row is encoded by an aligner that never saw its speaker, in the space of the all-speaker aligner; the
study's out-of-fold variants and its `copies` control on a 4-speaker RAVDESS subset."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import FigureRecorder, check_confusion_figure
from test_generation import fold_trainer
from test_study import StageCounter, cache_dir, manifest, read_rows, study_args  # noqa: F401 (fixtures)

from modeling_mise import MiseAlignerConfig
from training.aligner import encode_audio, train_aligner
from training.arguments import ConfigError, MiseTrainingArguments
from training.classifier import Augmenter
from training.engine import StageRuntime
from training.out_of_fold import orthogonal_map, out_of_fold_features, speaker_groups
from training.study import main
from training.study_variants import VARIANTS

SPEAKERS = np.repeat(np.array(["s1", "s2", "s3", "s4", "s5"]), 12)


def test_speaker_groups_partition_the_speakers_seeded():
    groups = speaker_groups(SPEAKERS, 2, seed=3)
    assert len(groups) == 2 and sorted(np.concatenate(groups).tolist()) == ["s1", "s2", "s3", "s4", "s5"]
    assert [g.tolist() for g in groups] == [g.tolist() for g in speaker_groups(SPEAKERS, 2, seed=3)]
    assert len(speaker_groups(SPEAKERS, 9, seed=0)) == 5  # never an empty group
    with pytest.raises(ValueError, match="2 speaker groups"):
        speaker_groups(SPEAKERS, 1, seed=0)
    with pytest.raises(ValueError, match="2 training speakers"):
        speaker_groups(np.array(["s1", "s1"]), 2, seed=0)


def test_orthogonal_map_recovers_a_rotation():
    generator = torch.Generator().manual_seed(0)
    source = torch.nn.functional.normalize(torch.randn(50, 6, generator=generator), dim=1)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator))
    found = orthogonal_map(source, source @ rotation)
    assert torch.allclose(found, rotation, atol=1e-5)
    assert torch.allclose(found @ found.T, torch.eye(6), atol=1e-5)


@pytest.fixture(scope="module")
def toy():
    """Two-class features that a tiny aligner separates; a real stage-1 training per call of `fit`."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(len(SPEAKERS)) % 2
    audio = torch.randn(len(SPEAKERS), 10, generator=generator) + 1.5 * labels[:, None]
    config = MiseAlignerConfig(
        audio_dim=10, projection_dim=4, hidden_sizes=[8], use_text=False, id2label={0: "a", 1: "b"}
    )
    args = MiseTrainingArguments(output_dir="unused", aligner_epochs=3, aligner_batch_size=16)
    runtime = StageRuntime(Accelerator(cpu=True))

    def fit(rows: np.ndarray, seed: int):
        aligner, _ = train_aligner(
            runtime, config, args, audio[rows], labels[rows], audio[:4], labels[:4], seed=seed
        )
        return aligner

    return audio, labels, fit


def test_each_row_comes_from_an_aligner_without_its_speaker(toy):
    audio, _, fit = toy
    reference = encode_audio(fit(np.arange(len(SPEAKERS)), 0), audio)
    seen: list[np.ndarray] = []

    def fit_and_record(rows: np.ndarray, index: int):
        seen.append(rows)
        return fit(rows, 10 + index)

    features = out_of_fold_features(reference, audio, SPEAKERS, fit_and_record, num_groups=3, seed=1)
    assert len(seen) == 3 and torch.isfinite(features).all()
    covered = set()
    for rows in seen:
        held_out = set(np.flatnonzero(~np.isin(np.arange(len(SPEAKERS)), rows)).tolist())
        assert not set(SPEAKERS[rows]) & set(SPEAKERS[sorted(held_out)])  # whole speakers held out
        covered |= held_out
    assert covered == set(range(len(SPEAKERS)))  # every row encoded out of fold once
    assert torch.allclose(features.norm(dim=1), reference.norm(dim=1), atol=1e-4)  # a rotation
    assert not torch.allclose(features, reference, atol=1e-3)


def test_the_same_aligner_everywhere_gives_the_reference_back(toy):
    audio, _, fit = toy
    aligner = fit(np.arange(len(SPEAKERS)), 0)
    reference = encode_audio(aligner, audio)
    features = out_of_fold_features(reference, audio, SPEAKERS, lambda rows, index: aligner, 2, seed=0)
    assert torch.allclose(features, reference, atol=1e-4)


def test_out_of_fold_variants_train_one_aligner_per_speaker_group(manifest, cache_dir, tmp_path, monkeypatch):  # noqa: F811
    """Per unit: the in-fold aligner, one per training-speaker group, one generator shared by nothing else."""
    counter = StageCounter(monkeypatch)
    recorder = FigureRecorder(monkeypatch)
    output_dir = tmp_path / "oof"
    extra = [
        "--seeds",
        "0",
        "--variants",
        "none",
        "copies",
        "none_oof",
        "mise_oof",
        "--out_of_fold_groups",
        "2",
    ]
    report = main(study_args(manifest, output_dir, cache_dir, *extra))
    units = 2  # folds x seeds; each fold's training side has 2 speakers, one per group
    assert counter.counts["train_aligner"] == (1 + 2) * units
    assert counter.counts["train_generator"] == 1 * units
    assert counter.counts["train_classifier"] == (1 + 2 + 1 + 2) * units  # copies, mise_oof: 2 ratios each
    rows = read_rows(output_dir / "study.csv")
    assert {row["variant"] for row in rows} == {"none", "copies", "none_oof", "mise_oof"}
    assert set(report["variants"]) == {"none", "copies", "none_oof", "mise_oof"}
    for row in rows:
        assert 0.0 <= float(row["uar"]) <= 1.0
    for name in ("copies", "mise_oof"):
        summary = report["variants"][name]
        names = list(summary["per_class_recall_pooled"])
        figure = recorder.figures[f"confusion_{name}.png"]
        check_confusion_figure(figure, summary["confusion_matrix_pooled"], names, f"{name}: pooled confusion")
    with pytest.raises(ConfigError, match="out_of_fold_groups"):
        main(study_args(manifest, tmp_path / "bad", cache_dir, *extra[:-2], "--out_of_fold_groups", "1"))


def test_copies_control_adds_exact_copies_of_real_rows():
    """The `copies` variant's extra rows (noise with std 0): real rows of the same class, class-balanced."""
    features, labels = torch.randn(30, 5), torch.tensor([0] * 20 + [1] * 10)
    args = MiseTrainingArguments(
        output_dir="unused", generated_ratio=1.0, noise_std=VARIANTS["copies"].noise_std
    )
    rows, row_labels = Augmenter("noise", features, labels, 2, args).rows(torch.Generator().manual_seed(3))
    extra, extra_labels = rows[30:], row_labels[30:]
    assert len(extra) == len(extra_labels) == 30 and torch.bincount(row_labels).tolist() == [30, 30]
    for row, label in zip(extra, extra_labels, strict=True):
        matches = (features == row).all(dim=1)
        assert matches.any() and (labels[matches] == label).all()


def test_an_out_of_fold_variant_is_refit_on_out_of_fold_features_of_every_training_speaker():
    """With refit, stages 2 and 3 train again on the training and validation speakers, each row encoded by an
    aligner that never saw its speaker (not the refit's in-fold aligner)."""
    trainer, _ = fold_trainer("mi")
    speakers = np.repeat(np.arange(6), 24)
    args = dataclasses.replace(trainer.data.training_args, refit=True)
    trainer.data = dataclasses.replace(
        trainer.data, speakers=speakers, out_of_fold_groups=2, training_args=args
    )
    trainer.args = args
    variant = VARIANTS["none_oof"]
    trained = trainer.train(variant)
    assert trained.selected is not None and "selection" in trained.stages
    fold = trainer.fold
    assert sorted(trained.space.train) == sorted(np.concatenate([fold.train, fold.validation]))
    refit = trainer.refits[variant.aligner_key]
    in_fold = refit.space(dataclasses.replace(variant, out_of_fold=False))
    np.testing.assert_array_equal(trained.space.train, in_fold.train)
    assert not torch.allclose(trained.space.z_train, in_fold.z_train, atol=1e-3)
