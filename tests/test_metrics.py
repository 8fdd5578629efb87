"""Classification metrics, fold summaries and the paired test, against hand-computed values."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # metrics must never reach for the Hub
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402

from mise.metrics import classification_metrics, paired_wilcoxon, summarize_folds, uar  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
ID2LABEL = {0: "angry", 1: "happy", 2: "sad"}

# 10 items: class 0 all right (6/6), class 1 1/2, class 2 1/2
Y_TRUE = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]
Y_PRED = [0, 0, 0, 0, 0, 0, 0, 1, 2, 0]


def test_classification_metrics_by_hand():
    metrics = classification_metrics(Y_TRUE, Y_PRED, num_labels=3, id2label=ID2LABEL)
    assert metrics["uar"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert metrics["wa"] == pytest.approx(8 / 10)
    # F1: class 0 P = 6/8, R = 1 -> 6/7; classes 1 and 2 P = 1, R = 1/2 -> 2/3
    assert metrics["f1_macro"] == pytest.approx((6 / 7 + 2 / 3 + 2 / 3) / 3)
    assert metrics["confusion_matrix"] == [[6, 0, 0], [1, 1, 0], [1, 0, 1]]
    assert metrics["per_class_recall"] == {"angry": 1.0, "happy": 0.5, "sad": 0.5}
    json.dumps(metrics)  # reports write it as JSON


def test_uar_equals_balanced_accuracy_on_random_predictions():
    rng = np.random.default_rng(0)
    for trial in range(5):
        y_true = rng.integers(0, 5, size=60 + trial)
        y_pred = np.where(rng.random(y_true.size) < 0.5, y_true, rng.integers(0, 5, size=y_true.size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = balanced_accuracy_score(y_true, y_pred)
        assert classification_metrics(y_true, y_pred, num_labels=5)["uar"] == pytest.approx(expected)


def test_fast_uar_is_bit_identical_to_balanced_accuracy_and_the_module():
    """The per-epoch UAR of training (`uar`) is the same float as scikit-learn's balanced accuracy and as the
    `evaluate` module's, classes absent from the references or the predictions included."""
    rng = np.random.default_rng(1)
    for trial in range(300):
        num_labels = int(rng.integers(1, 9))
        y_true = rng.integers(0, num_labels, size=int(rng.integers(1, 90)))
        y_pred = np.where(
            rng.random(y_true.size) < 0.6, y_true, rng.integers(0, num_labels, size=y_true.size)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = float(balanced_accuracy_score(y_true, y_pred))
        assert uar(y_true, y_pred) == expected
        if trial % 30 == 0:
            assert classification_metrics(y_true, y_pred, num_labels)["uar"] == expected


def test_class_missing_from_references_is_left_out_of_uar():
    metrics = classification_metrics(Y_TRUE, Y_PRED, num_labels=4)
    assert metrics["uar"] == pytest.approx(2 / 3)
    assert metrics["per_class_recall"] == {"0": 1.0, "1": 0.5, "2": 0.5, "3": None}
    assert np.array(metrics["confusion_matrix"]).shape == (4, 4)


def test_classification_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match=r"y_pred: row 1 has class id 3"):
        classification_metrics([0, 1], [0, 3], num_labels=3)
    with pytest.raises(ValueError, match="lengths differ"):
        classification_metrics([0, 1], [0], num_labels=3)
    with pytest.raises(ValueError, match="y_true: empty"):
        classification_metrics([], [], num_labels=3)
    with pytest.raises(ValueError, match="id2label: no name for class id 2"):
        classification_metrics([0, 1], [0, 1], num_labels=3, id2label={0: "a", 1: "b"})


def test_uar_goes_through_the_shipped_evaluate_module_offline(tmp_path):
    """In a fresh interpreter with the Hub switched off and sockets refused, UAR still loads and computes."""
    script = f"""
import json, socket
def refuse(*args, **kwargs):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
import evaluate
from mise.metrics import classification_metrics, uar_metric
metrics = classification_metrics({Y_TRUE}, {Y_PRED}, num_labels=3)
module = uar_metric()
print(json.dumps({{"uar": metrics["uar"], "is_module": isinstance(module, evaluate.EvaluationModule),
                  "name": type(module).__name__, "offline": evaluate.config.HF_EVALUATE_OFFLINE}}))
"""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": str(REPO_ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "uar": pytest.approx(2 / 3),
        "is_module": True,
        "name": "UnweightedAverageRecall",
        "offline": True,
    }
    # evaluate copied the packaged script into the modules cache it was pointed at
    assert list((tmp_path / "modules").rglob("uar.py"))


def test_summarize_folds_by_hand():
    folds = [([0, 0, 1, 1], [0, 0, 1, 0]), ([0, 1, 1, 1], [0, 1, 1, 1]), ([0, 0, 1, 1], [1, 1, 1, 1])]
    fold_metrics = [classification_metrics(t, p, num_labels=2) for t, p in folds]
    uars = [(1 + 1 / 2) / 2, 1.0, (0 + 1) / 2]
    was = [3 / 4, 1.0, 2 / 4]
    assert [m["uar"] for m in fold_metrics] == pytest.approx(uars)
    pooled_true = [y for t, _ in folds for y in t]
    pooled_pred = [y for _, p in folds for y in p]
    summary = summarize_folds(
        fold_metrics, pooled_true, pooled_pred, num_labels=2, id2label={0: "neu", 1: "ang"}
    )
    assert summary["n_folds"] == 3 and summary["std_ddof"] == 1
    assert summary["uar_mean"] == pytest.approx(statistics.mean(uars))
    assert summary["uar_std"] == pytest.approx(statistics.stdev(uars))  # sample std, n - 1
    assert summary["wa_mean"] == pytest.approx(statistics.mean(was))
    assert summary["wa_std"] == pytest.approx(statistics.stdev(was))
    # pooled: class 0 has 5 items, 3 right; class 1 has 7 items, 6 right
    assert summary["uar_pooled"] == pytest.approx((3 / 5 + 6 / 7) / 2)
    assert summary["wa_pooled"] == pytest.approx(9 / 12)
    assert summary["confusion_matrix_pooled"] == [[3, 2], [1, 6]]
    assert summary["per_class_recall_pooled"] == {"neu": pytest.approx(3 / 5), "ang": pytest.approx(6 / 7)}
    assert summary["f1_macro_mean"] == pytest.approx(statistics.mean(m["f1_macro"] for m in fold_metrics))


def test_summarize_single_fold_and_bad_input():
    metrics = classification_metrics([0, 1], [0, 1], num_labels=2)
    summary = summarize_folds([metrics], [0, 1], [0, 1], num_labels=2)
    assert summary["uar_std"] == 0.0 and summary["std_ddof"] == 0 and summary["uar_mean"] == 1.0
    with pytest.raises(ValueError, match=r"fold_metrics\[1\]: missing or non-finite 'uar'"):
        summarize_folds([metrics, {"wa": 0.5, "f1_macro": 0.5}], [0, 1], [0, 1], num_labels=2)
    with pytest.raises(ValueError, match="fold_metrics: empty"):
        summarize_folds([], [0], [0], num_labels=2)


def test_paired_wilcoxon_exact_by_hand():
    a = [0.6, 0.7, 0.8, 0.5, 0.9]
    b = [0.5, 0.5, 0.5, 0.9, 0.4]
    # differences 0.1, 0.2, 0.3, -0.4, 0.5: ranks 1..5, W- = 4, W+ = 11, statistic = min = 4
    # exact null: subsets of {1..5} with rank sum <= 4 are {}, {1}, {2}, {3}, {4}, {1,2}, {1,3} -> 7 of 32
    result = paired_wilcoxon(a, b)
    assert result["statistic"] == pytest.approx(4.0)
    assert result["p_value"] == pytest.approx(2 * 7 / 32)
    assert result["n"] == 5 and result["n_nonzero"] == 5
    assert result["mean_difference"] == pytest.approx((0.1 + 0.2 + 0.3 - 0.4 + 0.5) / 5)
    assert result["note"] is None


def test_paired_wilcoxon_all_zero_differences_and_bad_input():
    result = paired_wilcoxon([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert result["p_value"] == 1.0 and result["statistic"] == 0.0 and result["n_nonzero"] == 0
    assert "all differences are zero" in result["note"]
    with pytest.raises(ValueError, match="equal length"):
        paired_wilcoxon([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="b: entry 1 is not finite"):
        paired_wilcoxon([0.1, 0.2], [0.1, float("nan")])
