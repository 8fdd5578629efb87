"""Classification metrics of the evaluation protocol (SPEC §2): UAR, WA, macro-F1, confusion matrix,
fold summaries and a paired significance test across folds."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

from mise.evaluate_metrics import metric_path

__all__ = ["classification_metrics", "paired_wilcoxon", "summarize_folds", "uar", "uar_metric"]


@functools.lru_cache(maxsize=1)
def uar_metric():
    """The UAR ``evaluate`` module shipped in ``mise/evaluate_metrics/uar`` (loaded offline, once)."""
    import evaluate

    return evaluate.load(metric_path("uar"), keep_in_memory=True)


def uar(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, num_labels: int | None = None
) -> float:
    """UAR of class ids by the shipped module's own computation, without the ``evaluate`` wrapper (fast enough for
    every epoch's validation); equals ``classification_metrics(...)["uar"]`` and scikit-learn's balanced accuracy."""
    from mise.evaluate_metrics.uar.uar import unweighted_average_recall

    return unweighted_average_recall(y_pred, y_true, num_labels)["uar"]


def _class_ids(values: Any, name: str, num_labels: int) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of class ids, got shape {array.shape}")
    integral = array.dtype.kind in "iu" or (
        array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array))
    )
    if not integral:
        raise ValueError(f"{name}: class ids must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    bad = np.flatnonzero((array < 0) | (array >= num_labels))
    if bad.size:
        raise ValueError(
            f"{name}: row {int(bad[0])} has class id {int(array[bad[0]])}, outside [0, {num_labels})"
        )
    return array


def _label_names(num_labels: int, id2label: Mapping | None) -> list[str]:
    if id2label is None:
        return [str(i) for i in range(num_labels)]
    names = []
    for i in range(num_labels):
        name = id2label.get(i, id2label.get(str(i)))
        if name is None:
            raise ValueError(f"id2label: no name for class id {i} (num_labels={num_labels})")
        names.append(str(name))
    return names


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    num_labels: int,
    id2label: Mapping[int, str] | None = None,
) -> dict:
    """UAR, WA, macro-F1, confusion matrix and per-class recall of one set of predictions.

    - ``uar``: unweighted average recall through the shipped ``evaluate`` module: the mean recall of the
      classes present in ``y_true`` (equals scikit-learn's ``balanced_accuracy_score``).
    - ``wa``: weighted accuracy, i.e. plain accuracy.
    - ``f1_macro``: macro F1 over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's default).
    - ``confusion_matrix``: ``num_labels`` x ``num_labels`` counts, rows = true class, columns = predicted.
    - ``per_class_recall``: ``{name: recall}`` keyed by ``id2label`` names (class ids as strings when it is
      None); ``None`` for a class that does not occur in ``y_true``.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels: must be >= 1, got {num_labels}")
    true = _class_ids(y_true, "y_true", num_labels)
    pred = _class_ids(y_pred, "y_pred", num_labels)
    if true.shape != pred.shape:
        raise ValueError(f"y_true/y_pred: lengths differ, {true.size} vs {pred.size}")
    if true.size == 0:
        raise ValueError("y_true: empty, metrics are undefined")
    names = _label_names(num_labels, id2label)
    uar = uar_metric().compute(predictions=pred.tolist(), references=true.tolist(), num_labels=num_labels)
    return {
        "uar": float(uar["uar"]),
        "wa": float(np.mean(true == pred)),
        "f1_macro": float(f1_score(true, pred, average="macro", zero_division=0)),
        "confusion_matrix": confusion_matrix(true, pred, labels=list(range(num_labels))).tolist(),
        "per_class_recall": dict(zip(names, uar["per_class_recall"], strict=True)),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    # sample standard deviation (ddof=1) across folds; 0.0 for a single fold
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else 0.0)


def summarize_folds(
    fold_metrics: Sequence[Mapping[str, Any]],
    pooled_true: Sequence[int] | np.ndarray,
    pooled_pred: Sequence[int] | np.ndarray,
    num_labels: int,
    id2label: Mapping[int, str] | None = None,
) -> dict:
    """Mean ± std over folds and metrics pooled over the concatenated test predictions of all folds.

    ``fold_metrics`` are the per-fold dicts of [`classification_metrics`]. The std is the *sample* standard
    deviation (``ddof=1``) when there are at least two folds and 0.0 for one (``std_ddof`` says which).
    """
    if not fold_metrics:
        raise ValueError("fold_metrics: empty, nothing to summarise")
    columns: dict[str, list[float]] = {"uar": [], "wa": [], "f1_macro": []}
    for index, metrics in enumerate(fold_metrics):
        for key, column in columns.items():
            value = metrics.get(key) if isinstance(metrics, Mapping) else None
            if value is None or not np.isfinite(value):
                raise ValueError(f"fold_metrics[{index}]: missing or non-finite {key!r} ({value!r})")
            column.append(float(value))
    pooled = classification_metrics(pooled_true, pooled_pred, num_labels, id2label)
    summary: dict[str, Any] = {"n_folds": len(fold_metrics), "std_ddof": 1 if len(fold_metrics) > 1 else 0}
    for key, column in columns.items():
        mean, std = _mean_std(column)
        summary[f"{key}_pooled"] = pooled[key]
        summary[f"{key}_mean"] = mean
        summary[f"{key}_std"] = std
    summary["confusion_matrix_pooled"] = pooled["confusion_matrix"]
    summary["per_class_recall_pooled"] = pooled["per_class_recall"]
    return summary


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired scores (e.g. per-fold UAR of two systems).

    Zero differences are dropped (``zero_method="wilcox"``); when *all* differences are zero the systems
    are indistinguishable and the result is ``statistic=0.0, p_value=1.0`` without calling scipy (which
    cannot rank an empty sample) and ``note`` says so (``None`` otherwise). ``mean_difference`` is ``mean(a - b)``; ``n`` counts the pairs and
    ``n_nonzero`` those that enter the test.
    """
    from scipy.stats import wilcoxon

    first = np.asarray(a, dtype=np.float64)
    second = np.asarray(b, dtype=np.float64)
    if first.ndim != 1 or first.shape != second.shape:
        raise ValueError(
            f"a/b: expected two 1-D sequences of equal length, got {first.shape} and {second.shape}"
        )
    if first.size == 0:
        raise ValueError("a/b: empty, no pairs to test")
    for name, values in (("a", first), ("b", second)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"{name}: entry {int(bad[0])} is not finite ({values[bad[0]]})")
    differences = first - second
    nonzero = int(np.count_nonzero(differences))
    result = {"n": int(first.size), "n_nonzero": nonzero, "mean_difference": float(differences.mean())}
    if nonzero == 0:
        return {"statistic": 0.0, "p_value": 1.0, **result, "note": "all differences are zero"}
    test = wilcoxon(first, second, zero_method="wilcox", alternative="two-sided")
    return {"statistic": float(test.statistic), "p_value": float(test.pvalue), **result, "note": None}
