"""Unweighted average recall (UAR), the primary metric of speech emotion recognition."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Unweighted average recall (UAR): the recall of every class that occurs in the references, averaged
with equal weight per class (macro recall; scikit-learn's balanced accuracy). Classes absent from the
references have no recall and are left out of the average (their per-class recall is None).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    num_labels (`int`, *optional*): number of classes; defaults to 1 + the largest id seen.
Returns:
    uar (`float`): mean recall over classes present in the references, in [0, 1].
    per_class_recall (`list` of `float` or `None`): recall of class 0 .. num_labels - 1; None when the
        class does not occur in the references.
Examples:
    >>> uar = evaluate.load("modeling_mise/evaluate_metrics/uar")
    >>> uar.compute(predictions=[0, 0, 1, 1], references=[0, 1, 1, 1])
    {'uar': 0.8333333333333333, 'per_class_recall': [1.0, 0.6666666666666666]}
"""

_CITATION = """
@inproceedings{schuller2009interspeech,
  title={The INTERSPEECH 2009 emotion challenge},
  author={Schuller, Bj{\\"o}rn and Steidl, Stefan and Batliner, Anton},
  booktitle={Proc. Interspeech},
  pages={312--315},
  year={2009}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class UnweightedAverageRecall(evaluate.Metric):
    """Unweighted average recall (macro recall over the classes present in the references)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.balanced_accuracy_score.html"
            ],
        )

    def _compute(self, predictions, references, num_labels=None):
        return unweighted_average_recall(predictions, references, num_labels)


def unweighted_average_recall(predictions, references, num_labels=None) -> dict:
    """UAR and per-class recall of class ids (the module's computation, callable without ``evaluate``)."""
    predictions = np.asarray(predictions, dtype=np.int64)
    references = np.asarray(references, dtype=np.int64)
    if references.size == 0:
        raise ValueError("references: empty, UAR is undefined")
    if min(predictions.min(), references.min()) < 0:
        raise ValueError("predictions/references: class ids must be >= 0")
    seen = int(max(predictions.max(), references.max())) + 1
    if num_labels is None:
        num_labels = seen
    elif seen > num_labels:
        raise ValueError(f"predictions/references: class id {seen - 1} >= num_labels={num_labels}")
    support = np.bincount(references, minlength=num_labels)
    hits = np.bincount(references[predictions == references], minlength=num_labels)
    per_class = [float(h / s) if s > 0 else None for h, s in zip(hits, support, strict=True)]
    present = [r for r in per_class if r is not None]
    return {"uar": float(np.mean(present)), "per_class_recall": per_class}
