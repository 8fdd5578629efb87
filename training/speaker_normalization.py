"""Per-speaker statistics only where they cannot remove the emotion.

Z-normalising each speaker's features with that speaker's own mean and standard deviation removes who is
speaking, which helps when every speaker is heard in every emotion. When a speaker is heard in one emotion only,
the speaker's mean *is* that emotion, and per-speaker statistics remove the emotion instead (a natural corpus
falls below chance). The test, on the training side of each fold (labels of the test speaker are never read):

    label neutrality = H(emotion | speaker) / H(emotion)

1 when every speaker shows the classes in the corpus' proportions, 0 when each speaker shows a single class.
`speaker_normalization: auto` uses per-speaker statistics in a fold only when the neutrality reaches
`speaker_normalization_threshold`, and otherwise falls back to global statistics, saying why; `true` stops with
an error that names the speakers heard in few classes; `false` always uses global statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from accelerate.logging import get_logger
from torch.nn import functional as F

from mise.data import Corpus
from mise.folds import Fold
from mise.metrics import classification_metrics
from modeling_mise.layers import shrink_statistics, speaker_prior, standardize

from .aligner import encode_audio
from .arguments import DataArguments
from .classifier import predict
from .corpora import TrainingStatistics
from .features import CorpusFeatures, speaker_normalized

logger = get_logger(__name__)


class SpeakerNormalizationError(ValueError):
    """`speaker_normalization: true` on a corpus whose speakers are not heard in every emotion."""


def _entropy(counts: np.ndarray) -> float:
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * np.log(probabilities)).sum())


def label_neutrality(labels: np.ndarray, speakers: np.ndarray) -> float:
    """H(emotion | speaker) / H(emotion) over the given rows (1: speaker-independent class mix; 0: one class each)."""
    classes, label_ids = np.unique(labels, return_inverse=True)
    total = _entropy(np.bincount(label_ids, minlength=len(classes)).astype(float))
    if total == 0.0:  # a single class: nothing to remove
        return 1.0
    conditional = 0.0
    for speaker in np.unique(speakers):
        own = label_ids[speakers == speaker]
        conditional += (
            len(own) / len(labels) * _entropy(np.bincount(own, minlength=len(classes)).astype(float))
        )
    return conditional / total


def speakers_in_few_classes(
    labels: np.ndarray, speakers: np.ndarray, id2label: dict[int, str], threshold: float, limit: int = 10
) -> list[str]:
    """`speaker (class count, ...)` for the speakers whose own class entropy is below `threshold` x H(emotion),
    fewest classes first."""
    total = _entropy(np.unique(labels, return_counts=True)[1].astype(float)) or 1.0
    found = []
    for speaker in np.unique(speakers):
        names, counts = np.unique(labels[speakers == speaker], return_counts=True)
        share = _entropy(counts.astype(float)) / total
        if share < threshold:
            classes = ", ".join(f"{id2label.get(int(n), n)} {c}" for n, c in zip(names, counts, strict=True))
            found.append((share, str(speaker), f"{speaker} ({classes})"))
    lines = [line for _, _, line in sorted(found)]
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


@dataclass(frozen=True)
class NormalizationChoice:
    """What one fold uses: per-speaker or global statistics, and why."""

    per_speaker: bool
    label_neutrality: float | None  # None when not tested (`false`)
    reason: str


@dataclass
class SpeakerNormalization:
    """Chooses, per fold, between global and per-speaker statistics (`speaker_normalization` and its threshold)."""

    mode: str
    threshold: float
    features: CorpusFeatures  # the frozen features as they are (global statistics of one corpus)
    labels: np.ndarray
    speakers: np.ndarray
    id2label: dict[int, str]
    corpora: np.ndarray | None = None  # (N,) the corpus of every row in a run of several corpora
    _per_speaker: CorpusFeatures | None = None
    _per_corpus: CorpusFeatures | None = None

    @classmethod
    def from_arguments(cls, data_args: DataArguments, features: CorpusFeatures, corpus: Corpus):
        """The run's choice maker: `speaker_normalization` and its threshold over the corpus' usable clips."""
        labels, speakers = np.asarray(corpus.labels()), np.asarray(corpus.speakers())
        return cls(data_args.speaker_normalization, data_args.speaker_normalization_threshold, features, labels,
                   speakers, dict(corpus.id2label), corpus.corpora())  # fmt: skip

    def choose(self, rows: np.ndarray, where: str) -> NormalizationChoice:
        """The choice for a training side `rows` (train + validation speakers of a fold)."""
        if self.mode == "false":
            return NormalizationChoice(False, None, "speaker_normalization: false")
        neutrality = label_neutrality(self.labels[rows], self.speakers[rows])
        if neutrality >= self.threshold:
            reason = f"label neutrality {neutrality:.2f} >= {self.threshold:.2f}: per-speaker statistics"
            return NormalizationChoice(True, neutrality, reason)
        few = speakers_in_few_classes(self.labels[rows], self.speakers[rows], self.id2label, self.threshold)
        reason = (
            f"per-speaker statistics are not label-neutral on the training side of {where}: H(emotion | speaker)"
            f" / H(emotion) = {neutrality:.2f} < speaker_normalization_threshold {self.threshold:.2f}; speakers "
            f"heard in few classes: {'; '.join(few)}"
        )
        if self.mode == "true":
            raise SpeakerNormalizationError(
                f"speaker_normalization: true, but {reason}. Per-speaker statistics would remove the emotion: "
                "use speaker_normalization: auto (falls back to global statistics) or false"
            )
        return NormalizationChoice(False, neutrality, reason + ": global statistics")

    def plan(self, folds: list[Fold]) -> dict[str, NormalizationChoice]:
        """Every fold's choice, made before any training (so `true` fails at once), with one log line."""
        choices = {}
        for fold in folds:
            choices[fold.name] = self.choose(np.union1d(fold.train, fold.validation), f"fold {fold.name}")
        fallbacks = [name for name, choice in choices.items() if not choice.per_speaker]
        if self.mode == "auto" and fallbacks:
            logger.warning(
                f"speaker_normalization auto: {len(fallbacks)} of {len(choices)} fold(s) use global statistics. "
                f"{choices[fallbacks[0]].reason}"
            )
        elif self.mode != "false":
            logger.info(
                f"speaker_normalization {self.mode}: per-speaker statistics in all {len(choices)} fold(s)"
            )
        return choices

    def fold_context(self, ctx, choice: NormalizationChoice, enrolment: Enrolment):
        """The run context of one fold: its features, and its as-released evaluation: with enrolment where the fold
        uses per-speaker statistics, with the training corpora's statistics where several corpora use global
        ones."""
        released = (
            None if choice.per_speaker or self.corpora is None else TrainingStatistics(self.features.audio)
        )
        return replace(
            ctx, features=self.features_for(choice), enrolment=enrolment if choice.per_speaker else None,
            training_statistics=released,
        )  # fmt: skip

    def released_context(self, ctx):
        """The context of the released models with global statistics: as the folds', and with several corpora the
        training statistics the released aligner is given (`training.corpora.TrainingStatistics.release`)."""
        if self.corpora is None:
            return ctx
        global_ = NormalizationChoice(False, None, "global")
        return replace(
            ctx,
            features=self.features_for(global_),
            training_statistics=TrainingStatistics(self.features.audio),
        )

    def features_for(self, choice: NormalizationChoice) -> CorpusFeatures:
        """The frozen features z-normalised per speaker, or with global statistics: as they are for one corpus,
        z-normalised per corpus with its own statistics for several."""
        if choice.per_speaker:
            if self._per_speaker is None:
                self._per_speaker = speaker_normalized(self.features, self.speakers)
            return self._per_speaker
        if self.corpora is None:
            return self.features
        if self._per_corpus is None:
            self._per_corpus = speaker_normalized(self.features, self.corpora)
        return self._per_corpus


def normalization_report(choices: dict[str, NormalizationChoice], mode: str) -> dict:
    """`summary.json`'s `speaker_normalization`: the mode and every fold's choice with its reason."""
    per_speaker = sum(choice.per_speaker for choice in choices.values())
    return {
        "mode": mode,
        "per_speaker_folds": per_speaker,
        "global_folds": len(choices) - per_speaker,
        "folds": {name: asdict(choice) for name, choice in choices.items()},
    }


ENROLMENT_SIZES = {"k3": 3, "k10": 10, "all": None}  # None: every other clip of the speaker
# prior strengths n0 (in clips) tried on the validation speakers; the statistics of n enrolment clips are shrunk
# toward the training speakers' as if the prior were n0 more clips (`modeling_mise.layers.speaker_statistics`)
PRIOR_STRENGTHS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)


@dataclass(frozen=True)
class EnrolmentPrior:
    """What the released model stores for enrolment: the prior (training clips' mean, training speakers' pooled
    within-speaker variance) and its strength n0, chosen on the validation speakers."""

    mean: torch.Tensor  # (audio_dim,)
    var: torch.Tensor  # (audio_dim,)
    strength: float
    validation_loss: dict[str, float]  # mean validation cross-entropy per tried n0

    def report(self) -> dict:
        """The fold record's `enrolment`: the chosen n0 and the validation loss of every n0 tried."""
        return {"prior_strength": self.strength, "validation_loss": self.validation_loss}


@dataclass
class Enrolment:
    """The as-released evaluation of a fold that uses per-speaker statistics: each test clip is normalised with the
    statistics of k other clips of its speaker (unlabelled enrolment), as the released model does with enrolment
    clips, instead of with its speaker's statistics over all clips, itself included.

    The enrolment statistics are shrunk toward the training speakers' (`EnrolmentPrior`); the prior strength is
    chosen per fold on the validation speakers by simulating their enrolment with k = 3, 10 and all other clips
    (the test speakers are never read for it)."""

    audio: torch.Tensor  # (N, audio_dim) frozen features as they are
    speakers: np.ndarray  # (N,)
    labels: np.ndarray  # (N,) class ids; only the validation speakers' are read (to choose n0)
    seed: int

    def moments(self, rows: np.ndarray, size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each clip of `rows`, `size` other clips of its speaker among `rows` (itself when it has no other):
        their number `(len(rows), 1)`, mean and biased variance `(len(rows), audio_dim)`. The same draw for every
        prior strength (the random choice depends only on the seed and the size)."""
        rng = np.random.default_rng([self.seed, size or 0])
        counts, means, variances = [], [], []
        for index in rows:
            others = rows[(self.speakers[rows] == self.speakers[index]) & (rows != index)]
            if size is not None and len(others) > size:
                others = rng.choice(others, size=size, replace=False)
            enrolment = self.audio[torch.as_tensor(others if len(others) else [index])]
            counts.append(enrolment.shape[0])
            means.append(enrolment.mean(0))
            variances.append(enrolment.var(0, unbiased=False))
        counts = torch.tensor(counts, dtype=self.audio.dtype).unsqueeze(1)
        return counts, torch.stack(means), torch.stack(variances)

    def normalized(
        self, rows: np.ndarray, moments: tuple[torch.Tensor, ...], prior: EnrolmentPrior, strength: float
    ) -> torch.Tensor:
        """The clips `rows` normalised with their enrolment `moments` (`Enrolment.moments`), shrunk toward
        `prior` with `strength` (`modeling_mise.layers.speaker_statistics`)."""
        prior_statistics = tuple(tensor.to(self.audio.dtype) for tensor in (prior.mean, prior.var))
        mean, std = shrink_statistics(*moments, prior_statistics, strength)
        return standardize(self.audio[torch.as_tensor(rows)], mean, std)

    def prior(self, rows: np.ndarray) -> EnrolmentPrior:
        """The prior of the training clips `rows` (their mean, their speakers' pooled within-speaker variance)."""
        rows = np.asarray(rows)
        mean, var = speaker_prior(self.audio[torch.as_tensor(rows)], self.speakers[rows])
        return EnrolmentPrior(mean, var, 0.0, {})

    def calibrate(self, aligner, classifier, fold: Fold, refit: bool = False) -> EnrolmentPrior:
        """The prior from the fold's training speakers and its strength n0: the one of `PRIOR_STRENGTHS` with the
        lowest validation cross-entropy, averaged over the enrolment sizes, on the validation speakers.

        The models must not have seen the validation speakers (a refit's selection models); with `refit` the
        returned prior covers the validation speakers too, as the refitted models' training clips do."""
        prior = self.prior(fold.train)
        validation = np.asarray(fold.validation)
        targets = torch.as_tensor(self.labels[validation], dtype=torch.long)
        moments = [self.moments(validation, size) for size in ENROLMENT_SIZES.values()]
        losses = {}
        for strength in PRIOR_STRENGTHS:
            per_size = [
                F.cross_entropy(
                    _logits(
                        aligner, classifier, self.normalized(validation, per_size_moments, prior, strength)
                    ),
                    targets,
                ).item()
                for per_size_moments in moments
            ]
            losses[f"{strength:g}"] = float(np.mean(per_size))
        best = min(PRIOR_STRENGTHS, key=lambda strength: losses[f"{strength:g}"])
        if refit:
            prior = self.prior(np.concatenate([fold.train, fold.validation]))
        return replace(prior, strength=best, validation_loss=losses)

    def evaluate(self, aligner, classifier, fold: Fold, selected: tuple | None = None) -> dict:
        """The fold record's enrolment entries: test predictions for each enrolment size (`k3`, `k10`, `all`) with
        the prior chosen on the validation speakers, and that choice. `selected`: after a refit, the selection's
        (aligner, classifier), which choose n0."""
        prior = self.calibrate(*(selected or (aligner, classifier)), fold, refit=selected is not None)
        test = np.asarray(fold.test)
        predictions = {
            name: predict(
                classifier,
                encode_audio(aligner, self.normalized(test, self.moments(test, size), prior, prior.strength)),
            ).tolist()
            for name, size in ENROLMENT_SIZES.items()
        }
        return {"enrolment_predictions": predictions, "enrolment": prior.report()}


@torch.no_grad()
def _logits(aligner, classifier, audio: torch.Tensor) -> torch.Tensor:
    classifier.eval()
    device = next(classifier.parameters()).device
    return classifier(features=encode_audio(aligner, audio).to(device)).logits.float().cpu()


def enrolment_summary(records: list[dict], num_labels: int, id2label: dict[int, str]) -> dict | None:
    """Pooled UAR per enrolment size over the folds that used per-speaker statistics."""
    records = [record for record in records if record.get("enrolment_predictions")]
    if not records:
        return None
    y_true = np.concatenate([record["y_true"] for record in records])
    strengths = [record["enrolment"]["prior_strength"] for record in records if record.get("enrolment")]
    summary = {"n_folds": len(records), "prior_strength": sorted(strengths)}
    for name in ENROLMENT_SIZES:
        y_pred = np.concatenate([record["enrolment_predictions"][name] for record in records])
        summary[f"uar_pooled_{name}"] = classification_metrics(y_true, y_pred, num_labels, id2label)["uar"]
    return summary
