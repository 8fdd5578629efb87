"""Extra rows at stage 1's inputs (study variants `mise_input`, `noise_input`, `copies_input`): the rows reach the
aligner, where a fold's decision is made, instead of stage 3 alone.

The extra rows live in the top principal directions of the standardised features stage 1 reads (`InputSpace`,
fitted on the training rows: `projection_dim` directions, at most the rows' span): a generator trained there
(an InfoGAN with MI terms, as stage 2, with unnormalised output, its checkpoint chosen by MI on the validation
speakers; text codes are the standardised sentence features, as without alignment), or real rows' coordinates
with Gaussian noise (std 0: copies). Every kind is mapped back to feature space the same way, so they differ only
in where the rows come from. Stage 1 draws them anew every epoch (`training.aligner.train_aligner`, `extra_rows`)
at the ratio `generated_ratio`, class-balanced as stage 3's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from modeling_mise.layers import bounded, feature_statistics, standardize

from .aligner import principal_basis, raw_text_codes
from .arguments import MiseTrainingArguments, ModelArguments
from .classifier import Augmenter
from .engine import StageRuntime
from .infogan import generator_config, train_generator

Tensor = torch.Tensor


@dataclass
class InputSpace:
    """Coordinates of raw audio features on the top principal directions of their standardised `columns`, and
    the way back (the span's reconstruction; the other columns read their training mean)."""

    mean: Tensor
    std: Tensor
    columns: slice
    basis: Tensor  # (columns' width, k), coordinates of unit std on average (`principal_basis`)
    limit: float | None

    @classmethod
    def fit(cls, audio: Tensor, columns: slice | None, components: int, limit: float | None) -> InputSpace:
        mean, std = feature_statistics(audio)
        columns = columns or slice(0, audio.shape[1])
        space = cls(mean, std, columns, torch.zeros(0), limit)
        space.basis = principal_basis(space.read(audio), components)
        return space

    @property
    def size(self) -> int:
        return self.basis.shape[1]

    def read(self, audio: Tensor) -> Tensor:
        """The standardised columns as stage 1 reads them (clamped, constant features 0)."""
        return bounded(standardize(audio, self.mean, self.std), self.std, self.limit)[:, self.columns]

    def coordinates(self, audio: Tensor) -> Tensor:
        return self.read(audio) @ self.basis

    def features(self, coordinates: Tensor) -> Tensor:
        """Raw feature rows whose standardised columns are the span's point at `coordinates`."""
        scale = (self.basis**2).sum(0).mean()  # the basis is orthonormal / coordinate std
        standardised = coordinates @ self.basis.T / scale
        rows = self.mean.expand(len(coordinates), -1).clone()
        rows[:, self.columns] = standardised * self.std[self.columns] + self.mean[self.columns]
        return rows


@dataclass
class InputRows:
    """`count` extra rows of raw audio features, drawn by calling with an epoch's stream: (features, labels)."""

    space: InputSpace
    augmenter: Augmenter
    real_rows: int

    @property
    def count(self) -> int:
        return len(self.augmenter.extra_labels)

    def __call__(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        coordinates, labels = self.augmenter.rows(generator)
        return self.space.features(coordinates[self.real_rows :]), labels[self.real_rows :]


def input_rows(
    kind: str,
    model_args: ModelArguments,
    args: MiseTrainingArguments,
    train: tuple[Tensor, Tensor, Tensor | None],
    val: tuple[Tensor, Tensor, Tensor | None],
    columns: slice | None,
    id2label: dict[int, str],
    seed: int,
    runtime: StageRuntime,
) -> tuple[InputRows, dict | None]:
    """Stage 1's extra rows of `kind` ("mise" or "noise", with `args.noise_std`; 0: copies) from the (audio,
    labels, text features) of the training and validation rows, and the generator's summary (None for noise)."""
    (audio, labels, text), (audio_val, labels_val, text_val) = train, val
    space = InputSpace.fit(audio, columns, model_args.projection_dim, model_args.aligner_audio_limit or None)
    coordinates, generator, codes, summary = space.coordinates(audio), None, None, None
    if kind == "mise":
        if text is not None:
            codes, codes_val = raw_text_codes(text, text), raw_text_codes(text_val, text)
        mise = dataclasses.replace(model_args, augmentation="mise", no_mi=False)
        config = generator_config(mise, space.size, None if codes is None else codes.shape[1], id2label)
        config.normalize_output = False  # coordinates, not the unit-norm z_a of stage 2
        generator, summary = train_generator(
            runtime, config, args, coordinates, labels, space.coordinates(audio_val), labels_val,
            text_codes_train=codes, text_codes_val=None if codes is None else codes_val, seed=seed,
        )  # fmt: skip
    elif kind != "noise":
        raise ValueError(f"input rows: unknown kind {kind!r} (mise or noise)")
    augmenter = Augmenter(kind, coordinates, labels, len(id2label), args, generator, codes)
    return InputRows(space, augmenter, len(labels)), summary
