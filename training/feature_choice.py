"""The feature set of a fold, chosen on its training side by speaker cross-validation.

A combined openSMILE encoder (`opensmile/eGeMAPSv02+ComParE_2016`) offers several feature sets, and which of them
carries over to a new speaker depends on the speech: ComParE_2016's 6,373 functionals lead on acted corpora,
eGeMAPSv02's 88 on natural speech, where the large set overfits. Two validation speakers are too few to tell
them apart (on RAVDESS they preferred eGeMAPSv02 in a quarter of the folds, where the test speaker did not), so
the choice reads every speaker of the fold's training side, the test speaker never:

- the training side's speakers, sorted, are dealt into at most `num_groups` groups (no random draw, so the
  stages' random streams are the same as with the chosen set alone);
- for each candidate set, a ridge classifier (features standardised on the other groups, one-vs-rest targets
  of +-1) predicts each group from the others, at every penalty of a fixed grid scaled by the set's width;
- a set's score is the best pooled UAR over the grid; the set with the highest score is kept (the first on a
  tie).

Ridge is solved through one eigendecomposition of the smaller of the rows' Gram matrix and the features'
covariance, so the whole grid costs about one fit: a fold of RAVDESS takes well under a second.
"""

from __future__ import annotations

import numpy as np

from mise.metrics import uar

# ridge penalties, times the set's width (a standardised row's squared norm)
PENALTIES = np.logspace(-4, 2, 13)
MAX_ROWS = 4000  # rows the choice reads at most (every k-th row of the training side beyond that)


def speaker_folds(speakers: np.ndarray, num_groups: int) -> list[np.ndarray]:
    """Boolean masks over `speakers`: the distinct speakers, sorted, dealt into at most `num_groups` groups."""
    names = np.array(sorted(set(speakers.tolist())))
    groups = min(num_groups, len(names))
    return [np.isin(speakers, names[index::groups]) for index in range(groups)]


def _ridge_predictions(
    train: np.ndarray, targets: np.ndarray, test: np.ndarray, penalties: np.ndarray
) -> list:
    """Ridge scores of the `test` rows, one (rows, classes) array per penalty, from one eigendecomposition."""
    if train.shape[0] <= train.shape[1]:  # dual: (K + a I)^-1 on the rows' Gram matrix
        values, vectors = np.linalg.eigh(train @ train.T)
        left, right = test @ train.T @ vectors, vectors.T @ targets
    else:  # primal: (X^T X + a I)^-1 on the features' covariance
        values, vectors = np.linalg.eigh(train.T @ train)
        left, right = test @ vectors, vectors.T @ (train.T @ targets)
    return [left @ (right / (np.clip(values, 0.0, None) + penalty)[:, None]) for penalty in penalties]


def speaker_cv_uar(
    features: np.ndarray, labels: np.ndarray, speakers: np.ndarray, num_groups: int = 5
) -> float | None:
    """The best pooled UAR, over the ridge penalties, of predicting each speaker group of the rows from the others
    (None when the rows have fewer than two speakers)."""
    folds = speaker_folds(speakers, num_groups)
    if len(folds) < 2:
        return None
    classes = np.unique(labels)
    penalties = PENALTIES * features.shape[1]
    predicted = np.empty((len(penalties), len(labels)), dtype=labels.dtype)
    for held_out in folds:
        train = features[~held_out]
        mean, std = train.mean(0), train.std(0)
        std[std == 0] = 1.0
        targets = np.where(labels[~held_out, None] == classes[None], 1.0, -1.0)
        scores = _ridge_predictions(
            (train - mean) / std, targets, (features[held_out] - mean) / std, penalties
        )
        for index, score in enumerate(scores):
            predicted[index, held_out] = classes[np.argmax(score, axis=1)]
    return max(uar(labels, row) for row in predicted)


def choose_feature_set(
    features: np.ndarray,
    labels: np.ndarray,
    speakers: np.ndarray,
    rows: np.ndarray,
    candidates: list[tuple[str | None, slice | None]],
    num_groups: int = 5,
) -> tuple[str | None, slice | None, dict | None]:
    """`(name, columns, scores)` of the candidate feature set with the best speaker cross-validated UAR on `rows`
    (a fold's training side: its training and validation speakers); `scores` per name (None: one candidate,
    nothing to choose)."""
    if len(candidates) < 2:
        return (*candidates[0], None)
    rows = np.sort(rows)
    if len(rows) > MAX_ROWS:
        rows = rows[:: -(-len(rows) // MAX_ROWS)]
    features, labels, speakers = np.asarray(features, dtype=np.float64)[rows], labels[rows], speakers[rows]
    scores = {
        name: speaker_cv_uar(features[:, columns or slice(None)], labels, speakers, num_groups)
        for name, columns in candidates
    }
    if any(score is None for score in scores.values()):
        return (*candidates[0], None)
    best = max(range(len(candidates)), key=lambda index: scores[candidates[index][0]])  # the first on a tie
    return (*candidates[best], scores)
