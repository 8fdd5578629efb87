"""Extra rows at stage 1's inputs (`training.input_rows`, study variants `mise_input`, `noise_input`,
`copies_input`): the space they live in, that the aligner trains on them, and that their generator is fitted on
the training speakers and chosen on the validation speakers, then refitted with the chosen epochs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_generation import CLASSES, fold_trainer, runtime
from torch.nn import functional as F

from training import input_rows as input_rows_module
from training.aligner import aligner_config, train_aligner
from training.arguments import MiseTrainingArguments, ModelArguments
from training.fold import refit_arguments
from training.input_rows import InputSpace, input_rows
from training.study_variants import VARIANTS


def _rows(n: int = 120, width: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    audio = 3.0 + 2.0 * torch.randn(n, width, generator=rng) + 8.0 * F.one_hot(labels, width).float()
    return audio, labels


def test_the_input_space_maps_coordinates_back_to_the_rows_of_its_span():
    audio, _ = _rows()
    full = InputSpace.fit(audio, None, components=64, limit=None)  # every direction: the way back is exact
    assert full.size == audio.shape[1]
    assert torch.allclose(full.features(full.coordinates(audio)), audio, atol=1e-4)
    # fewer directions: the way back is the projection onto them, and coordinates survive the round trip
    small = InputSpace.fit(audio, slice(2, 8), components=3, limit=None)
    back = small.features(small.coordinates(audio))
    assert torch.allclose(small.coordinates(back), small.coordinates(audio), atol=1e-4)
    assert torch.allclose(
        back[:, :2], audio[:, :2].mean(0).expand(len(audio), -1)
    )  # unread columns: the mean
    assert not torch.allclose(back[:, 2:8], audio[:, 2:8], atol=1e-2)


def test_copies_at_stage_1_are_real_rows_of_the_same_class():
    audio, labels = _rows()
    args = MiseTrainingArguments(output_dir="unused", noise_std=0.0, generated_ratio=1.0)
    id2label = {index: str(index) for index in range(CLASSES)}
    rows, summary = input_rows(
        "noise", ModelArguments(projection_dim=64), args, (audio, labels, None), (audio[:8], labels[:8], None),
        None, id2label, 0, runtime(),
    )  # fmt: skip
    assert summary is None and rows.count == len(labels)  # balanced classes: ratio 1 adds one row per row
    extra, extra_labels = rows(torch.Generator().manual_seed(3))
    distances = torch.cdist(extra, audio)
    nearest = distances.argmin(1)
    assert distances.min(1).values.max() < 0.02 and torch.equal(labels[nearest], extra_labels)


class _Recorded:
    """Extra rows of class 1 where the real rows of class 0 lie, `count` a call; records the calls."""

    def __init__(self, audio: torch.Tensor, labels: torch.Tensor, count: int) -> None:
        self.source, self.count, self.calls = audio[labels == 0], count, 0

    def __call__(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        pick = torch.randint(len(self.source), (self.count,), generator=generator)
        return self.source[pick], torch.ones(self.count, dtype=torch.long)


@pytest.mark.parametrize("components", [0, 8])
def test_stage_1_trains_on_its_extra_rows_every_epoch(components):
    audio, labels = _rows(160)
    model_args = ModelArguments(projection_dim=8, aligner_hidden_sizes=[16], text_encoder="none")
    config = aligner_config(model_args, audio.shape[1], None, {index: str(index) for index in range(CLASSES)})
    args = MiseTrainingArguments(
        output_dir="unused", aligner_epochs=20, aligner_batch_size=16, early_stopping_patience=0, weight_averaging=False,
        class_balanced_batches=False,
        aligner_input_components=components,
    )  # fmt: skip
    stage = runtime()

    def train(extra_rows=None):
        aligner, _ = train_aligner(
            stage, config, args, audio[:120], labels[:120], audio[120:], labels[120:], extra_rows=extra_rows
        )
        return aligner.classify(aligner.get_audio_features(audio[120:])).argmax(-1)[labels[120:] == 0]

    assert (train() == 0).float().mean() > 0.7  # class 0 is easy to tell
    extra = _Recorded(audio[:120], labels[:120], count=360)
    assert (train(extra) == 1).float().mean() > 0.7  # the extra rows relabel its region as class 1
    assert extra.calls == args.aligner_epochs  # drawn anew every epoch


def test_the_input_generator_learns_on_training_speakers_is_chosen_on_validation_and_refitted(monkeypatch):
    """`mise_input`: G fits the training speakers' rows and its checkpoint is chosen on the validation speakers';
    the refit trains G on both for the chosen epochs, with nothing to choose on; the test speaker is never read."""
    trainer, _ = fold_trainer("mi")
    trainer.args = dataclasses.replace(trainer.args, refit=True, generated_ratio=1.0)
    calls = []
    train_generator = input_rows_module.train_generator

    def recording(runtime, config, args, features, labels, features_val, labels_val, **kwargs):
        calls.append((len(features), len(features_val), args.generator_epochs))
        return train_generator(runtime, config, args, features, labels, features_val, labels_val, **kwargs)

    monkeypatch.setattr(input_rows_module, "train_generator", recording)
    fold = trainer.fold
    trained = trainer.train(VARIANTS["mise_input"])
    chosen = trained.selected.stages["aligner"]["input_generator"]["best_epoch"]
    assert calls == [
        (len(fold.train), len(fold.validation), trainer.args.generator_epochs),
        (len(fold.train) + len(fold.validation), 0, chosen),
    ]
    assert refit_arguments(trainer.args, trained.selected.stages).generator_epochs == chosen
    # G's rows are coordinates of the input space, not points of the unit sphere (z_a's, where stage 2 works)
    extra_rows, _ = trainer._input_rows(VARIANTS["mise_input"], fold.train)
    extra, _ = extra_rows(torch.Generator().manual_seed(0))
    norms = extra_rows.space.coordinates(extra).norm(dim=1)
    assert norms.std() > 0.05 and not torch.allclose(norms, torch.ones_like(norms), atol=0.05)
    assert trained.generated.model is None  # stage 3 reads real rows alone, as `none`
    calls.clear()
    for name in ("noise_input", "copies_input"):  # no generator; each control its own stage 1
        trainer.train(VARIANTS[name])
    assert calls == []
    keys = {VARIANTS[name].aligner_key for name in ("none", "mise_input", "noise_input", "copies_input")}
    assert len(keys) == 4
    assert np.intersect1d(fold.test, np.concatenate([fold.train, fold.validation])).size == 0
