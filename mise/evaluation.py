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


def adapt_statistics(classifier: AudioFileClassifier, corpus, waveforms: Sequence[np.ndarray]) -> None:
    """Re-standardise a MISE model's frozen features with the corpus' own mean and std (no labels used): the
    usual cross-corpus adaptation, since recording conditions shift every feature. Features come from the
    feature cache (``MISE_CACHE``) when training already computed them."""
    from mise.cache import FeatureCache, default_cache_dir
    from modeling_mise.audio import crop
    from modeling_mise.layers import feature_statistics

    model = classifier.model
    if not (hasattr(model, "aligner") and hasattr(model, "audio_encoder")):
        raise ValueError("normalize='corpus': needs a MISE audio classifier (frozen encoder + aligner)")
    longest = float(classifier.feature_extractor.max_duration_s)
    rate = classifier.sampling_rate
    cache = FeatureCache(default_cache_dir(), {**model.audio_encoder.spec(), "max_duration_s": longest})

    def encode(indices: list[int]):
        clips = [crop(waveforms[i], rate, longest)[0] for i in indices]
        return model.audio_encoder.encode(clips, show_progress=False)

    features = cache.get_or_compute(corpus.fingerprints(), encode, desc="audio").float()
    model.aligner.set_feature_statistics(*feature_statistics(features))


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
    normalize: str = "model",
    show_progress: bool = True,
    **corpus_kwargs,
) -> dict:
    """Classify every usable clip of ``corpus`` with ``model`` and write the shared-class metrics.

    ``corpus_kwargs`` go to :func:`mise.data.load_corpus` (``label_column``, ``speaker_column``,
    ``audio_column``, ``data_dir``, ...). ``normalize``: ``"model"`` standardises the frozen features with the
    statistics the model was trained with (as released); ``"corpus"`` with the evaluated corpus' own
    (:func:`adapt_statistics`). Returns the ``metrics.json`` dict.

    Raises:
        ValueError: when the model and the corpus share no class (naming both label sets).
    """
    from mise.plots import plot_confusion_matrix

    if normalize not in ("model", "corpus"):
        raise UsageError(f"normalize: 'model' or 'corpus', got {normalize!r}")
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
    if normalize == "corpus":
        adapt_statistics(classifier, usable, waveforms)
    clips = [(item.source, waveform) for item, waveform in zip(usable.items, waveforms, strict=True)]
    workers = default_num_workers() if num_workers is None else num_workers
    results = classifier.classify_in_batches("classify_waveforms", clips, workers, show_progress)
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
        **metrics,
    }
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(output / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "predicted"])
        for row, predicted in zip(rows, y_pred, strict=True):
            writer.writerow([clips[row][0], true_labels[row], classes["shared"][predicted]])
    title = f"{Path(os.fspath(model)).name} on {Path(data.source).parent.name or data.source}: UAR {report['uar']:.1%}"
    plot_confusion_matrix(
        report["confusion_matrix"], dict(enumerate(classes["shared"])), output / "confusion_matrix.png", title
    )
    return report
