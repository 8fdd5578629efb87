"""Stage 3 of MISE, the classifier (SPEC §1): an MLP on real `z_a` plus the rows an augmentation adds each epoch.

- `Augmenter`: feature noise, or features from a trained generator (cGAN / MISE), `generated_ratio` times the
  real rows (class-balanced: minority classes first); `mixup` mixes the batches instead.
- `train_classifier_choosing_ratio`: stage 3 once per candidate ratio (`generated_ratios`), the classifier with
  the best validation score kept; the study and the training pipeline both train stage 3 through it.
- `MultimodalAugmenter`: the classifier sees `[z_a; z_t]`; with a generator, every real pair `(h, t)` also
  yields `(h, t_hat)`, `(h_hat, t)` and `(h_hat, t_hat)` each epoch (four times the data). A clip without
  transcript has the null text code (the zero vector, `multimodal_features`), and a fraction
  `multimodal_text_dropout` of all rows gets it too, so the classifier also works without a transcript.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from modeling_mise import MiseAlignerModel, MiseClassifierConfig, MiseClassifierModel, MiseGeneratorModel
from modeling_mise.modeling_audio_classifier import multimodal_features

from .aligner import drop_text_codes
from .arguments import MiseTrainingArguments, ModelArguments
from .engine import (
    Batches,
    StageRuntime,
    fit_supervised,
    initialised,
    mixup,
    predict_in_chunks,
    stage_summary,
)

Tensor = torch.Tensor
# the augmentations that add `generated_ratio` times the real rows
RATIO_AUGMENTATIONS = ("noise", "gan", "mise")


def classifier_config(
    model_args: ModelArguments, input_dim: int, id2label: dict[int, str], text_dim: int | None = None
) -> MiseClassifierConfig:
    """Stage-3 config: an MLP over `z_a`, or over `[z_a; z_t]` when `text_dim` is given (multimodal)."""
    return MiseClassifierConfig(
        input_dim=input_dim,
        text_dim=text_dim or input_dim,
        multimodal=text_dim is not None,
        hidden_sizes=list(model_args.classifier_hidden_sizes),
        dropout=model_args.classifier_dropout,
        input_scale=model_args.classifier_input_scale,
        num_heads=model_args.classifier_heads,
        id2label=dict(id2label),
        label2id={name: index for index, name in id2label.items()},
    )


def generation_labels(labels: Tensor, num_labels: int, ratio: float, class_balanced: bool) -> Tensor:
    """Labels of the extra rows: `ratio` times the real count, filling minority classes first when balanced.

    Balanced: every class is topped up to `max(largest class, (real + ratio * real) / num_labels)` rows.
    """
    counts = torch.bincount(labels, minlength=num_labels)
    if ratio <= 0:
        return torch.zeros(0, dtype=torch.long)
    if class_balanced:
        target = max(int(counts.max()), math.ceil((1 + ratio) * len(labels) / num_labels))
        extra = (target - counts).clamp(min=0) * (counts > 0)
    else:
        extra = torch.round(counts.float() * ratio).long()
    return torch.repeat_interleave(torch.arange(num_labels), extra)


def _sample_codes(codes: Tensor, labels: Tensor, wanted: Tensor, generator: torch.Generator) -> Tensor:
    """For each wanted label, the text code of a random real training row of that class."""
    out = torch.full((len(wanted), codes.shape[1]), float("nan"))
    for label in wanted.unique():
        pool = torch.nonzero(labels == label).flatten()
        rows = torch.nonzero(wanted == label).flatten()
        out[rows] = codes[pool[torch.randint(len(pool), (len(rows),), generator=generator)]]
    return out


class Augmenter:
    """Extra stage-3 rows per epoch: feature noise, or features from a trained generator (cGAN / MISE).

    Rows are drawn anew every epoch from the epoch's stream, so a resumed run sees the same. A generated row's
    code is the text code of a random real row of its class; with `speaker_codes` (speaker-aware generation,
    `training.speaker_codes`) its last columns are then replaced by a code drawn from that pool.
    """

    def __init__(
        self,
        kind: str,
        features: Tensor,
        labels: Tensor,
        num_labels: int,
        args: MiseTrainingArguments,
        generator: MiseGeneratorModel | None = None,
        text_codes: Tensor | None = None,
        speaker_codes: Tensor | None = None,
    ) -> None:
        self.kind, self.features, self.labels = kind, features, labels
        # speaker-aware generation: the pool a generated row's voice (its code's last columns) is drawn from
        self.speaker_codes = speaker_codes
        self.generator, self.noise_std = generator, args.noise_std
        self.text_codes = text_codes if generator is not None and generator.config.use_text_code else None
        self.extra_labels = (
            generation_labels(labels, num_labels, args.generated_ratio, args.class_balanced_generation)
            if kind in ("noise", "gan", "mise")
            else torch.zeros(0, dtype=torch.long)
        )
        if kind in ("gan", "mise") and generator is None:
            raise ValueError(f"augmentation {kind!r} needs a trained generator")

    @property
    def rows_per_epoch(self) -> int:
        return len(self.labels) + len(self.extra_labels)

    def rows(self, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        """Real rows followed by this epoch's extra rows, drawn from the epoch's stream `rng`."""
        if len(self.extra_labels) == 0:
            return self.features, self.labels
        if self.kind == "noise":
            extra = _sample_codes(self.features, self.labels, self.extra_labels, rng)
            scale = self.features.std(0, keepdim=True) * self.noise_std
            extra = extra + scale * torch.randn(extra.shape, generator=rng)
        else:
            codes = None
            if self.text_codes is not None:
                codes = _sample_codes(self.text_codes, self.labels, self.extra_labels, rng)
                if self.speaker_codes is not None:  # any voice of the pool, whatever the emotion
                    pick = torch.randint(len(self.speaker_codes), (len(codes),), generator=rng)
                    codes[:, -self.speaker_codes.shape[1] :] = self.speaker_codes[pick]
            device = self.generator.null_text_code.device
            output = self.generator.generate(
                labels=self.extra_labels.to(device),
                text_codes=None if codes is None else codes.to(device),
                generator=rng,
            )
            extra = output.features.float().cpu()
        return torch.cat([self.features, extra]), torch.cat([self.labels, self.extra_labels])


def train_classifier(
    runtime: StageRuntime,
    config: MiseClassifierConfig,
    args: MiseTrainingArguments,
    features_train: Tensor,
    labels_train: Tensor,
    features_val: Tensor,
    labels_val: Tensor,
    augmentation: str = "none",
    generator: MiseGeneratorModel | None = None,
    text_codes_train: Tensor | None = None,
    seed: int = 0,
    augmenter: Augmenter | None = None,
    speaker_codes: Tensor | None = None,
    head_init: nn.Linear | None = None,
) -> tuple[MiseClassifierModel, dict]:
    """Stage 3: the MLP on real `z_a` plus augmentation (`none`, `noise`, `mixup`, `gan`, `mise`).

    Early stopping on the validation speakers (`early_stopping_metric`); returns the best classifier (eval mode).
    A given `augmenter` (anything with `rows(epoch)` and `extra_labels`, e.g. the multimodal one)
    replaces the default; `speaker_codes`: the default's pool of speaker codes (`Augmenter`).
    `head_init` (the aligner's emotion head, "the classifier's last layer" of the paper) initialises a linear
    classifier (`hidden_sizes=[]`, `input_scale=1`), so stage 3 starts from stage 1's decision on `z_a` (a
    multimodal classifier's `z_t` weights start at zero).
    """
    if augmenter is None:
        augmenter = Augmenter(
            augmentation, features_train, labels_train, config.num_labels, args, generator, text_codes_train,
            speaker_codes,
        )  # fmt: skip
    model = initialised(lambda: MiseClassifierModel(config), seed)
    if head_init is not None:
        if config.hidden_sizes or config.input_scale != 1:
            raise ValueError("head_init needs a linear classifier on z_a (hidden_sizes=[], input_scale=1)")
        with torch.no_grad():  # multimodal [z_a; z_t]: the z_t weights start at zero
            for head in (model.mlp, *model.extra_heads):
                head[-1].weight.zero_()
                head[-1].weight[:, : config.input_dim].copy_(head_init.weight)
                head[-1].bias.copy_(head_init.bias)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.classifier_learning_rate,
        weight_decay=args.classifier_weight_decay,
        foreach=True,
    )
    batches = Batches(
        (),
        args.classifier_batch_size,
        rows=augmenter.rows_per_epoch,
        class_balanced=args.class_balanced_batches,
    )
    use_mixup = augmentation == "mixup" and args.mixup_alpha > 0

    def batch_loss(model: nn.Module, batch: tuple, generator: torch.Generator) -> Tensor:
        features, labels = batch
        if use_mixup:
            features, labels = mixup(features, labels, config.num_labels, args.mixup_alpha, generator)
        return model(features=features, labels=labels).loss

    def before_epoch(epoch: int, generator: torch.Generator) -> None:
        batches.tensors = augmenter.rows(generator)

    model, state = fit_supervised(
        runtime, "classifier", model, optimizer, batches, list(model.parameters()), args, args.classifier_epochs,
        batch_loss, lambda model, x: model(features=x).logits, features_val, labels_val, seed, before_epoch,
    )  # fmt: skip
    summary = stage_summary(state)
    summary["generated_rows_per_epoch"] = len(augmenter.extra_labels)
    return model, summary


def generated_ratio_candidates(
    args: MiseTrainingArguments, augmentation: str, multimodal: bool = False
) -> list[float | None]:
    """The generated-to-real ratios stage 3 tries: `generated_ratios` (`[generated_ratio]` when empty) where the
    ratio sets how many rows the augmentation adds, `[None]` (one training) otherwise: `none`, `mixup`, and
    multimodal cGAN / MISE (three generated pairs per real pair, whatever the ratio)."""
    if augmentation not in RATIO_AUGMENTATIONS or (multimodal and augmentation != "noise"):
        return [None]
    return list(args.generated_ratios) or [args.generated_ratio]


def chosen_feature_set_counts(names: Iterable[str | None]) -> dict[str, int] | None:
    """How often stage 1 chose each feature set (`{"ComParE_2016": 23, "eGeMAPSv02": 1}`); None without a choice."""
    chosen = [name for name in names if name]
    return {name: chosen.count(name) for name in sorted(set(chosen))} or None


def chosen_aligner_candidate_counts(entries: Iterable[str | None]) -> dict[str, int] | None:
    """How often stage 1 chose each `aligner_candidates` entry (`""` counted as `configured`); None without a
    choice."""
    return chosen_feature_set_counts(None if entry is None else entry or "configured" for entry in entries)


def chosen_ratio_counts(ratios: Iterable[float | None]) -> dict[str, int] | None:
    """How often each generated-to-real ratio was chosen (`{"0.5": 3, "1.0": 1}`, ascending); None if none was."""
    chosen = [float(ratio) for ratio in ratios if ratio is not None]
    return {str(ratio): chosen.count(ratio) for ratio in sorted(set(chosen))} or None


class CandidateStore(Protocol):
    """Where a run keeps each finished candidate of `train_classifier_choosing_ratio`, so a resumed run reuses it."""

    def load(self, ratio: float) -> tuple[MiseClassifierModel, dict] | None: ...

    def save(self, ratio: float, model: MiseClassifierModel, summary: dict) -> None: ...


def _score(summary: dict) -> float:
    """A candidate's validation score; one that was never scored (no epoch) ranks last."""
    return -math.inf if summary["best_score"] is None else summary["best_score"]


def train_classifier_choosing_ratio(
    runtime: Callable[[int], StageRuntime],
    config: MiseClassifierConfig,
    args: MiseTrainingArguments,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    augmentation: str = "none",
    *,
    multimodal: bool = False,
    augmenter_for: Callable[[MiseTrainingArguments], Augmenter | MultimodalAugmenter] | None = None,
    store: CandidateStore | None = None,
    **stage_kwargs,
) -> tuple[MiseClassifierModel, dict]:
    """Stage 3 once per candidate ratio (`generated_ratio_candidates`), each from the same seed, keeping the
    classifier with the best validation score (`best_score`: `early_stopping_metric` on the validation
    speakers); on a tie the earlier candidate.

    `data`: (features_train, labels_train, features_val, labels_val) as `train_classifier` takes them.
    `runtime(index)`: the stage runtime of candidate `index`. `augmenter_for(args)`: the augmenter of one
    candidate's arguments (the default `Augmenter` when None). `store`: keeps the finished candidates when several
    train; a runtime that checkpoints needs one, since every candidate checkpoints as stage `classifier`: a
    resumed run takes the finished candidates from the store and continues the first one it lacks from the
    stage's checkpoint. `stage_kwargs` (generator, text codes, seed, head_init) go to `train_classifier`.
    Returns the kept classifier and its summary, plus `generated_ratio` (None where no ratio applies) and
    `generated_ratio_candidates` (each candidate's ratio, best_score and best_epoch).
    """
    candidates = generated_ratio_candidates(args, augmentation, multimodal)
    store = store if len(candidates) > 1 else None
    best, scores = None, []
    for index, ratio in enumerate(candidates):
        trained = None if store is None else store.load(ratio)
        if trained is None:
            stage_args = args if ratio is None else dataclasses.replace(args, generated_ratio=ratio)
            trained = train_classifier(
                runtime(index), config, stage_args, *data,
                augmentation=augmentation, augmenter=None if augmenter_for is None else augmenter_for(stage_args),
                **stage_kwargs,
            )  # fmt: skip
            if store is not None:
                store.save(ratio, *trained)
        summary = trained[1]
        scores.append({"generated_ratio": ratio, "best_score": summary["best_score"],
                       "best_epoch": summary["best_epoch"]})  # fmt: skip
        if best is None or _score(summary) > _score(best[1]):
            best = (*trained, ratio)
    model, summary, ratio = best
    return model, {**summary, "generated_ratio": ratio, "generated_ratio_candidates": scores}


class MultimodalAugmenter:
    """Stage-3 rows `[z_a; z_t]` per epoch: the real pairs, plus, with a generator, `(h, t_hat)`, `(h_hat, t)`
    and `(h_hat, t_hat)` for every real pair (`h_hat = G(eps, y, z_t)`, `t_hat = G_t(eps', y, z_a)` and, for the
    fully generated pair, `t_hat = G_t(eps'', y, h_hat)`); `noise` adds `generated_ratio` noisy copies. A
    fraction `text_dropout` of all rows gets the null text code. Rows are drawn anew every epoch from the
    epoch's stream, so a resumed run sees the same; the rows that `noise` copies are drawn once, from `seed`.
    """

    def __init__(
        self,
        kind: str,
        features: Tensor,
        text_codes: Tensor,
        labels: Tensor,
        args: MiseTrainingArguments,
        text_dropout: float,
        generator: MiseGeneratorModel | None = None,
        seed: int = 0,
    ) -> None:
        if kind in ("gan", "mise") and (generator is None or not generator.config.multimodal):
            raise ValueError(
                f"multimodal augmentation {kind!r} needs a generator trained with multimodal=True"
            )
        self.kind, self.features, self.text_codes, self.labels = kind, features, text_codes, labels
        self.generator, self.text_dropout, self.seed = generator, text_dropout, seed
        self.noise_std, self.ratio = args.noise_std, args.generated_ratio
        if kind in ("gan", "mise"):
            self.extra_labels = labels.repeat(3)
        elif kind == "noise":
            count = round(len(labels) * self.ratio)
            self._noise_rows = torch.randint(
                len(labels), (count,), generator=torch.Generator().manual_seed(seed)
            )
            self.extra_labels = labels[self._noise_rows]
        else:
            self.extra_labels = torch.zeros(0, dtype=torch.long)

    @torch.no_grad()
    def _generated_pairs(self, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        model = self.generator
        was_training = model.training
        model.eval()
        device = model.null_text_code.device
        n = len(self.labels)
        labels = self.labels.to(device)
        z_a, z_t = self.features.to(device), self.text_codes.to(device)
        h_hat = model.generate_features(model.sample_noise(n, generator=rng), labels, z_t)
        t_hat = model.generate_text_codes(model.sample_noise(n, generator=rng), labels, z_a)
        t_hat_of_h_hat = model.generate_text_codes(model.sample_noise(n, generator=rng), labels, h_hat)
        model.train(was_training)
        audio = torch.cat([z_a, h_hat, h_hat]).float().cpu()
        text = torch.cat([t_hat, z_t, t_hat_of_h_hat]).float().cpu()
        return audio, text

    @property
    def rows_per_epoch(self) -> int:
        return len(self.labels) + len(self.extra_labels)

    def rows(self, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        """This epoch's `[z_a; z_t]` rows (real first) and their labels, drawn from the epoch's stream `rng`."""
        audio, text, labels = self.features, self.text_codes, self.labels
        if self.kind in ("gan", "mise"):
            extra_audio, extra_text = self._generated_pairs(rng)
            audio, text = torch.cat([audio, extra_audio]), torch.cat([text, extra_text])
            labels = torch.cat([labels, self.extra_labels])
        elif self.kind == "noise" and len(self.extra_labels):
            pick = self._noise_rows
            extra_audio, extra_text = self.features[pick], self.text_codes[pick]
            extra_audio = extra_audio + self.features.std(0) * self.noise_std * torch.randn(
                extra_audio.shape, generator=rng
            )
            extra_text = extra_text + torch.nan_to_num(self.text_codes).std(0) * self.noise_std * torch.randn(
                extra_text.shape, generator=rng
            )
            audio, text = torch.cat([audio, extra_audio]), torch.cat([text, extra_text])
            labels = torch.cat([labels, self.extra_labels])
        return multimodal_features(audio, drop_text_codes(text, self.text_dropout, rng)), labels


@torch.no_grad()
def predict(classifier: MiseClassifierModel | MiseAlignerModel, features: Tensor) -> np.ndarray:
    """Predicted class ids of `z_a` rows: of a stage-3 classifier, or of an aligner's own emotion head (stage 1's
    linear head on `z_a`: the study's `aligner_head` variant)."""
    classifier.eval()
    device = next(classifier.parameters()).device
    aligner = isinstance(classifier, MiseAlignerModel)
    forward = classifier.classify if aligner else (lambda x: classifier(features=x).logits)
    return predict_in_chunks(lambda x: forward(x.to(device)).float().cpu(), features).argmax(-1).numpy()
