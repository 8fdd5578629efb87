"""Several corpora in one run, with global statistics: the statistics a released model uses, and the results per
corpus.

In the global regime each corpus is standardised with its own statistics (all of its clips, labels unused:
`training.speaker_normalization.SpeakerNormalization.features_for`), which removes a recording set-up's offset;
that is what the folds train and test on. A test corpus' own statistics are the "adapted" number: a released
model gets them from unlabelled clips of the new set-up (`pipeline(..., adaptation=...)`). A released model given
one clip has only its training clips' statistics: `TrainingStatistics` scores each fold's test clips that way ("as
released") and gives the released aligner those statistics, so that it reads raw features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mise.data import Corpus
from mise.folds import Fold
from mise.metrics import classification_metrics
from modeling_mise import MiseAlignerModel, MiseClassifierModel
from modeling_mise.layers import feature_statistics, standardize

from .aligner import encode_audio
from .classifier import predict

# what each number of a run of several corpora standardised its test clips with
STATISTICS = {
    "own": "each corpus' own statistics (all of its clips, unlabelled; the adapted number)",
    "as_released": "the training clips' statistics, pooled over the training corpora (a released model on one clip)",
}


@dataclass
class TrainingStatistics:
    """The frozen features as they are, for what a released model does with them."""

    audio: torch.Tensor  # (N, audio_dim)

    def evaluate(self, aligner: MiseAlignerModel, classifier: MiseClassifierModel, fold: Fold) -> dict:
        """The fold record's `released_predictions`: the test clips standardised with the statistics of the fold's
        training side (training and validation speakers, pooled over their corpora) instead of their own corpus'."""
        training = np.union1d(fold.train, fold.validation)
        test = standardize(self.audio[fold.test], *feature_statistics(self.audio[training]))
        return {"released_predictions": predict(classifier, encode_audio(aligner, test)).tolist()}

    def release(self, aligner: MiseAlignerModel, rows: np.ndarray) -> None:
        """Make `aligner`, trained on features standardised per corpus, read raw features: a clip is standardised
        with the pooled statistics (mean M, std S) of the training clips `rows`, then with the aligner's own
        (m, s): `((h - M) / S - m) / s = (h - (M + S m)) / (S s)`, so the aligner keeps M + S m and S s."""
        mean, std = (value.to(aligner.audio_mean) for value in feature_statistics(self.audio[rows]))
        aligner.set_feature_statistics(mean + std * aligner.audio_mean, std * aligner.audio_std)


def corpora_summary(folds: list[Fold], records: list[dict], corpus: Corpus) -> dict:
    """`summary.json`'s `corpora`: per corpus, the pooled metrics of its test clips over the folds (its own
    statistics, and as released where the folds measured it), what it brought and what was dropped."""
    corpora, num_labels, id2label = corpus.corpora(), len(corpus.id2label), corpus.id2label
    results = {}
    for name, part in corpus.parts.items():
        truth, own, released = [], [], []
        for fold, record in zip(folds, records, strict=True):
            mine = corpora[fold.test] == name
            truth.append(np.asarray(record["y_true"])[mine])
            own.append(np.asarray(record["y_pred"])[mine])
            if record.get("released_predictions") is not None:
                released.append(np.asarray(record["released_predictions"])[mine])
        truth, own = np.concatenate(truth), np.concatenate(own)
        entry = {**part, "test_clips": len(truth), "test_classes": sorted({id2label[int(c)] for c in truth})}
        if len(truth):
            entry["own"] = _metrics(truth, own, num_labels, id2label)
            entry["as_released"] = (
                _metrics(truth, np.concatenate(released), num_labels, id2label) if released else None
            )
        results[name] = entry
    return {"statistics": STATISTICS, "corpora": results}


def released_uar_pooled(records: list[dict], num_labels: int) -> float | None:
    """Pooled UAR of the folds' as-released predictions, None where the folds did not measure it."""
    if not records or any(record.get("released_predictions") is None for record in records):
        return None
    truth = np.concatenate([record["y_true"] for record in records])
    predicted = np.concatenate([record["released_predictions"] for record in records])
    return classification_metrics(truth, predicted, num_labels)["uar"]


def _metrics(truth: np.ndarray, predicted: np.ndarray, num_labels: int, id2label: dict) -> dict:
    metrics = classification_metrics(truth, predicted, num_labels, id2label)
    keys = ("uar", "wa", "f1_macro", "confusion_matrix", "per_class_recall")
    return {key: metrics[key] for key in keys}
