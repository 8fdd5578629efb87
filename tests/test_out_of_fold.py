"""Out-of-fold aligned features (training/out_of_fold.py): speaker groups, the Procrustes rotation, and that each
training row is encoded by an aligner that never saw its speaker, in the space of the all-speaker aligner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from modeling_mise import MiseAlignerConfig
from training.arguments import MiseTrainingArguments
from training.loop import StageRuntime
from training.out_of_fold import orthogonal_map, out_of_fold_features, speaker_groups
from training.stages import encode_audio, train_aligner

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
