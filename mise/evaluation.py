"""Cross-corpus evaluation (`mise evaluate`): a released audio classifier on any labelled corpus.

Classes are matched by name (case-insensitive) after the corpus' label map. Metrics cover the shared classes:
a clip of a class the model cannot predict is left out and counted, a class the corpus lacks is listed, and
each clip's prediction is the most probable *shared* class (how often the unrestricted top class lies outside
them is reported too). Writes `metrics.json`, `predictions.csv` and `confusion_matrix.png`.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mise.console import UsageError
from mise.data import LABEL_MAPS, load_corpus
from mise.file_classification import AudioFileClassifier, default_num_workers
from mise.metrics import classification_metrics


def parse_label_map(value: str | Mapping | None) -> str | dict | None:
    """A preset name (``iemocap4``), a ``{raw: mapped}`` dict, a JSON object or a ``.json`` file -> map."""
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    text = str(value).strip()
    if text.casefold() in LABEL_MAPS or not text:
        return text or None
    try:
        mapping = json.loads(Path(text).read_text() if Path(text).is_file() else text)
    except (json.JSONDecodeError, OSError) as error:
        raise UsageError(
            f"label_map: {text!r} is neither a preset ({sorted(LABEL_MAPS)}), a JSON object nor a JSON file "
            f"({error})"
        ) from error
    if not isinstance(mapping, dict):
        raise UsageError(f"label_map: expected a JSON object {{raw: mapped}}, got {type(mapping).__name__}")
    return mapping


def corpus_source(corpus: str | os.PathLike) -> str:
    """A folder holding a `manifest.csv` means that manifest; anything else goes to `load_corpus` as it is."""
    path = Path(os.fspath(corpus)).expanduser()
    if path.is_dir() and (path / "manifest.csv").is_file():
        return str(path / "manifest.csv")
    return os.fspath(corpus)


def match_classes(model_labels: Sequence[str], corpus_labels: Sequence[str]) -> dict:
    """Shared classes (model spelling, model order), the model's extra classes and the corpus' extra classes."""
    corpus_folded = {name.casefold(): name for name in corpus_labels}
    model_folded = {name.casefold() for name in model_labels}
    shared = [name for name in model_labels if name.casefold() in corpus_folded]
    return {
        "shared": shared,
        "corpus_name": {name: corpus_folded[name.casefold()] for name in shared},
        "model_only": [name for name in model_labels if name.casefold() not in corpus_folded],
        "corpus_only": [name for name in corpus_labels if name.casefold() not in model_folded],
    }


def score_shared(
    probabilities: np.ndarray, true_labels: Sequence[str], model_labels: Sequence[str], classes: dict
) -> dict:
    """Metrics over the shared classes of clips whose (corpus) label is one of them."""
    shared = classes["shared"]
    to_shared = {classes["corpus_name"][name]: index for index, name in enumerate(shared)}
    columns = [list(model_labels).index(name) for name in shared]
    rows = [i for i, label in enumerate(true_labels) if label in to_shared]
    if not rows:
        raise ValueError("no clip of the corpus belongs to a class the model predicts")
    y_true = np.asarray([to_shared[true_labels[i]] for i in rows])
    y_pred = probabilities[rows][:, columns].argmax(axis=1)
    top = probabilities[rows].argmax(axis=1)
    outside = Counter(model_labels[i] for i in top if model_labels[i] not in shared)
    metrics = classification_metrics(y_true, y_pred, len(shared), dict(enumerate(shared)))
    metrics["macro_f1"] = metrics.pop("f1_macro")
    metrics["predicted_outside_shared"] = dict(outside)
    metrics["rows"], metrics["y_pred"] = rows, y_pred.tolist()
    return metrics


NORMALIZATIONS = ("training", "corpus", "speaker")


def statistics_groups(
    normalize: str, speakers: Sequence[str], count: int | None = None, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(rows classified, rows whose unlabelled statistics they use)`` per group of clips: ``training``: all
    rows, none; ``corpus``: all rows, ``count`` of them drawn at random (all when ``None``); ``speaker``: each
    speaker's rows, ``count`` of them (or all)."""
    if normalize not in NORMALIZATIONS:
        raise UsageError(f"normalize: one of {list(NORMALIZATIONS)}, got {normalize!r}")
    if count is not None and count < 1:
        raise UsageError(f"adaptation_clips: must be >= 1, got {count}")
    rows = np.arange(len(speakers))
    if normalize == "training":
        return [(rows, rows[:0])]
    speakers = np.asarray(speakers)
    groups = [rows] if normalize == "corpus" else [rows[speakers == name] for name in dict.fromkeys(speakers)]
    generator = np.random.default_rng(seed)
    return [
        (
            group,
            np.sort(generator.choice(group, count, replace=False)) if count and count < len(group) else group,
        )
        for group in groups
    ]


def classify_corpus(
    classifier: AudioFileClassifier,
    clips: Sequence[tuple[str, np.ndarray]],
    speakers: Sequence[str],
    normalize: str = "training",
    adaptation_clips: int | None = None,
    num_workers: int = 0,
    show_progress: bool = True,
) -> tuple[list, list[str]]:
    """Classify ``(name, waveform)`` clips with the training statistics, the statistics of the corpus' unlabelled
    clips (``corpus``) or of each speaker's (``speaker``, enrolment) (:func:`statistics_groups`). Returns the
    results in the clips' order and the adaptation clips skipped as unusable."""
    results, skipped = [None] * len(clips), []
    rate = classifier.sampling_rate
    for rows, reference in statistics_groups(normalize, speakers, adaptation_clips):
        unlabelled = [{"raw": clips[i][1], "sampling_rate": rate, "path": clips[i][0]} for i in reference]
        if normalize == "speaker":
            classifier.enrol(unlabelled)
        elif normalize == "corpus":
            skipped += classifier.adapt(unlabelled)
        group = [clips[i] for i in rows]
        for row, result in zip(
            rows,
            classifier.classify_in_batches("classify_waveforms", group, num_workers, show_progress),
            strict=True,
        ):
            results[row] = result
    classifier.training_statistics()
    return results, skipped


def evaluate_on_corpus(
    model: str | os.PathLike,
    corpus: str | os.PathLike,
    output_dir: str | os.PathLike,
    label_map: str | Mapping | None = None,
    drop_labels: Sequence[str] = (),
    batch_size: int = 16,
    num_workers: int | None = None,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    normalize: str = "training",
    adaptation_clips: int | None = None,
    show_progress: bool = True,
    **corpus_kwargs,
) -> dict:
    """Classify every usable clip of ``corpus`` with ``model`` and write the shared-class metrics.

    ``corpus_kwargs`` go to :func:`mise.data.load_corpus` (``label_column``, ``speaker_column``,
    ``audio_column``, ``data_dir``, ...). ``normalize``: ``"training"`` standardises the frozen features with the
    statistics the model was trained with (as released); ``"corpus"`` with those of ``adaptation_clips``
    unlabelled clips of the corpus (all by default), ``"speaker"`` with those of each speaker's clips
    (:func:`classify_corpus`). Returns the ``metrics.json`` dict.

    Raises:
        UsageError: when the model and the corpus share no class (naming both label sets).
    """
    statistics_groups(normalize, [], adaptation_clips)  # checks both before any work
    classifier = AudioFileClassifier(model, None, window_seconds, hop_seconds, batch_size)
    data = load_corpus(
        corpus_source(corpus), label_map=parse_label_map(label_map), drop_labels=drop_labels, **corpus_kwargs
    )
    classes = match_classes(classifier.label_names, data.label_names)
    if not classes["shared"]:
        raise UsageError(
            f"the model's classes {classifier.label_names} and the corpus' {data.label_names} share no name; "
            "map the corpus' labels with --label_map"
        )
    waveforms, usable, rejections = data.load_waveforms(classifier.sampling_rate, show_progress=show_progress)
    clips = [(item.source, waveform) for item, waveform in zip(usable.items, waveforms, strict=True)]
    workers = default_num_workers() if num_workers is None else num_workers
    results, skipped = classify_corpus(
        classifier, clips, usable.speakers(), normalize, adaptation_clips, workers, show_progress
    )
    failed = [{"path": r.path, "row": None, "reason": r.error} for r in results if r.error]
    kept = [i for i, r in enumerate(results) if not r.error]  # e.g. a long clip whose windows are all silent
    clips = [clips[i] for i in kept]
    probabilities = np.asarray([[results[i].scores[n] for n in classifier.label_names] for i in kept])
    true_labels = [usable.items[i].label for i in kept]
    metrics = score_shared(probabilities, true_labels, classifier.label_names, classes)
    rows, y_pred = metrics.pop("rows"), metrics.pop("y_pred")
    per_class = Counter(true_labels)
    report = {
        "model": os.fspath(model),
        "corpus": data.source,
        "classes": classes["shared"],
        "model_only_classes": classes["model_only"],
        "corpus_only_classes": {name: per_class.get(name, 0) for name in classes["corpus_only"]},
        "clips": len(rows),
        "clips_left_out": len(true_labels) - len(rows),
        "rejected": [{"path": r.path, "row": r.row, "reason": r.reason} for r in rejections] + failed,
        "dropped_labels": dict(data.dropped),
        "normalize": normalize,
        "normalization": "; ".join(dict.fromkeys(result.normalization for result in results)),
        "adaptation_clips": adaptation_clips,
        "adaptation_skipped": skipped,
        **metrics,
    }
    predictions = [
        (clips[row][0], true_labels[row], classes["shared"][predicted])
        for row, predicted in zip(rows, y_pred, strict=True)
    ]
    title = f"{Path(os.fspath(model)).name} on {Path(data.source).parent.name or data.source}: UAR {report['uar']:.1%}"
    write_report(Path(output_dir), report, predictions, title)
    return report


def write_report(output: Path, report: dict, predictions: list[tuple[str, str, str]], title: str) -> None:
    """`metrics.json`, `predictions.csv` (path, label, predicted) and `confusion_matrix.png` in `output`."""
    from mise.plots import plot_confusion_matrix

    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(output / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "predicted"])
        writer.writerows(predictions)
    names = dict(enumerate(report["classes"]))
    plot_confusion_matrix(report["confusion_matrix"], names, output / "confusion_matrix.png", title)
