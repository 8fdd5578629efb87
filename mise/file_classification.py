"""Classify many audio files with one audio-classification model: files, folders and manifest CSVs in, one
result row per file out (path, top label, score per class, duration, notices, or the file's error).

Clips are decoded and classified in batches; a clip longer than the model's training clips is cut at pauses into
utterance-sized segments (or into windows with ``window_seconds``: :func:`modeling_mise.segments.cut_recording`,
the segmentation of ``pipeline()`` and the Space), each segment is classified, and the file-level scores are the
duration-weighted mean of the segments'. Other unlabelled clips give the statistics the model standardises with:
of the speaker (:meth:`AudioFileClassifier.enrol`) or of the recording setup (:meth:`AudioFileClassifier.adapt`). With ``num_workers > 1`` batches of files are decoded and classified in worker
processes (openSMILE functionals are computed one clip at a time, on the CPU).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import torch
from tqdm.auto import tqdm

from mise.console import UsageError
from modeling_mise.audio import (
    AUDIO_EXTENSIONS,
    DEFAULT_POLICY,
    AudioInputError,
    audio_files,
    check_waveform,
    load_audio,
    resample,
)
from modeling_mise.pipeline_audio_classification import (
    adaptation_statistics,
    enrolment_statistics,
    input_policy,
    model_utterance_range,
)
from modeling_mise.segments import (
    Segment,
    check_window,
    cut_recording,
    duration_weighted_mean,
    plot_emotion_timeline,
    segment_notice,
    segment_rows,
    timeline_title,
)

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".tsv")


@dataclass
class FileResult:
    """What became of one file: its scores (and per-window scores), or the reason it could not be classified."""

    path: str
    label: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    duration_s: float | None = None
    notices: list[str] = field(default_factory=list)
    error: str | None = None
    segments: list[dict] = field(default_factory=list)
    normalization: str = "training"  # or the model's `normalization_label` of its enrolment/adaptation clips

    def to_dict(self) -> dict:
        """JSON-ready dict, segments included (``start_s``, ``end_s``, ``label``, ``scores``)."""
        return {
            "path": self.path,
            "label": self.label,
            "scores": self.scores,
            "duration_s": self.duration_s,
            "notices": self.notices,
            "error": self.error,
            "segments": self.segments,
            "normalization": self.normalization,
        }

    def to_row(self, label_names: Sequence[str]) -> dict:
        """Flat CSV row: ``path, label, score_<class>..., duration_s, segments, notices, error``."""
        row = {"path": self.path, "label": self.label or ""}
        for name in label_names:
            row[f"score_{name}"] = "" if name not in self.scores else f"{self.scores[name]:.6f}"
        row["duration_s"] = "" if self.duration_s is None else f"{self.duration_s:.3f}"
        row["segments"] = len(self.segments)
        row["notices"] = "; ".join(self.notices)
        row["normalization"] = self.normalization
        row["error"] = self.error or ""
        return row


# ----------------------------------------------------------------------------------------------------
# Inputs


def _manifest_paths(manifest: Path) -> list[str]:
    """Audio paths of a manifest CSV/TSV (column path, audio, file, ...), relative ones against its folder."""
    from mise.data import AUDIO_COLUMN_CANDIDATES  # not at import: the Space needs no corpus readers

    delimiter = "\t" if manifest.suffix.lower() == ".tsv" else ","
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = reader.fieldnames or []
        column = next((name for name in AUDIO_COLUMN_CANDIDATES if name in columns), None)
        if column is None:
            raise UsageError(
                f"{manifest}: no audio column (tried {list(AUDIO_COLUMN_CANDIDATES)}); columns: {columns}"
            )
        cells = [(row.get(column) or "").strip() for row in reader]
    return [str(manifest.parent / cell) if not Path(cell).is_absolute() else cell for cell in cells if cell]


def collect_audio_paths(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Expand files, folders (recursively: audio extensions only, sorted) and manifest CSVs into file paths.

    A file that is neither audio-named nor a manifest is kept: it gets a result row saying why it failed.

    Raises:
        ValueError: for a path that does not exist or a manifest without an audio column (usage errors).
    """
    paths = []
    for entry in inputs:
        path = Path(os.fspath(entry)).expanduser()
        if path.is_dir():
            found = audio_files(path)
            if not found:
                logger.warning("%s: no audio files (%s) in this folder", path, ", ".join(AUDIO_EXTENSIONS))
            paths += [str(p) for p in found]
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            paths += _manifest_paths(path)
        elif path.exists():
            paths.append(str(path))
        else:
            raise UsageError(f"{path}: no such file or folder")
    return paths


def decode_file(path: str, sampling_rate: int) -> tuple[np.ndarray, float, list[str]]:
    """Decode one file to float32 mono at ``sampling_rate``: ``(waveform, seconds, notices)``, unchecked (the
    caller applies its input policy, so that a clip it refuses still has its duration and notices).

    Raises:
        AudioInputError: naming the file, for a file that cannot be decoded.
    """
    try:
        channels = soundfile.info(path).channels
    except Exception:  # not a libsndfile format: load_audio decodes it with FFmpeg, the count is unknown
        channels = None
    waveform, rate = load_audio(path)
    seconds = waveform.shape[0] / rate
    notices = []
    if rate != sampling_rate:
        waveform = resample(waveform, rate, sampling_rate)
        notices.append(f"resampled from {rate} Hz to {sampling_rate} Hz")
    if channels is not None and channels > 1:
        notices.append(f"downmixed {channels} channels to mono")
    return waveform, seconds, notices


# ----------------------------------------------------------------------------------------------------
# Classification


class AudioFileClassifier:
    """An audio-classification model and its feature extractor, classifying clips, windows and files.

    Args:
        model: a model folder or Hub id (loaded with the Auto classes), or a loaded model.
        feature_extractor: the model's feature extractor; loaded from ``model`` when it is a path or id.
        window_seconds: cut long clips into windows of this size instead of utterance-sized segments at pauses
            (the default, within the model's `config.utterance_range`); at most the feature extractor's
            ``max_duration_s``.
        hop_seconds: step between windows (default: the window, no overlap).
        batch_size: clips or windows per forward pass.
    """

    def __init__(
        self,
        model,
        feature_extractor=None,
        window_seconds: float | None = None,
        hop_seconds: float | None = None,
        batch_size: int = 16,
    ):
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

            import modeling_mise  # noqa: F401  (registers the MISE classes)

            source = os.fspath(model)
            model = AutoModelForAudioClassification.from_pretrained(source)
            feature_extractor = feature_extractor or AutoFeatureExtractor.from_pretrained(source)
        if feature_extractor is None:
            raise ValueError("feature_extractor: needed with a loaded model")
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.policy = input_policy(feature_extractor)
        # files: the input policy's checks but not its window (a clip longer than the window is cut, not cropped)
        self.file_policy = dataclasses.replace(self.policy, max_seconds=math.inf)
        self.id2label = {int(index): name for index, name in model.config.id2label.items()}
        self.label_names = [self.id2label[index] for index in sorted(self.id2label)]
        longest = getattr(feature_extractor, "max_duration_s", None) or DEFAULT_POLICY.max_seconds
        self.window_seconds = self.hop_seconds = None
        if window_seconds is not None:
            if window_seconds > longest:
                raise UsageError(
                    f"window_seconds ({window_seconds:g}) exceeds the {longest:g} s the model takes"
                )
            self.window_seconds, self.hop_seconds = check_window(window_seconds, hop_seconds)
        elif hop_seconds is not None:
            raise UsageError("hop_seconds: give window_seconds too")
        self.utterance_seconds = model_utterance_range(model, feature_extractor)
        self.batch_size = int(batch_size)
        self.statistics: dict = {}  # the model's `speaker_statistics` or `adaptation_statistics` argument
        self.normalization = "training"

    def enrol(self, clips: Sequence) -> None:
        """Classify from now on with the per-speaker statistics of `clips`, other clips of the same speaker.

        Raises:
            AudioInputError: an unusable clip (a data error, naming the file).
            UsageError: a model that takes no enrolment, or too few clips.
        """
        try:
            statistics = enrolment_statistics(self.model, self.feature_extractor, clips)
        except AudioInputError:
            raise
        except ValueError as error:
            raise UsageError(str(error)) from error
        self.statistics = {"speaker_statistics": statistics}
        self.normalization = self.model.normalization_label(len(clips))

    def adapt(self, clips: Sequence) -> list[str]:
        """Classify from now on with the statistics of `clips`, unlabelled clips of the recording setup, shrunk
        toward the training statistics; returns the ``"<clip>: <reason>"`` of each clip skipped as unusable."""
        statistics, used, skipped = adaptation_statistics(self.model, self.feature_extractor, clips)
        self.statistics = {"adaptation_statistics": statistics}
        self.normalization = self.model.normalization_label(adaptation_clips=used, skipped=len(skipped))
        return skipped

    def training_statistics(self) -> None:
        """Classify from now on with the training statistics (forget enrolment or adaptation)."""
        self.statistics, self.normalization = {}, "training"

    @torch.inference_mode()
    def probabilities(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities ``(N, C)`` of mono waveforms at the model's rate, ``batch_size`` at a time."""
        rows = []
        for start in range(0, len(waveforms), self.batch_size):
            batch = list(waveforms[start : start + self.batch_size])
            inputs = self.feature_extractor(batch, sampling_rate=self.sampling_rate, return_tensors="pt")
            inputs = inputs.to(self.model.device)
            rows.append(self.model(**inputs, **self.statistics).logits.float().softmax(dim=-1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, len(self.label_names)), dtype=np.float32)

    def segments(self, waveform: np.ndarray) -> tuple[list[Segment], int]:
        """The segments of one clip worth classifying and the number of silent pieces skipped."""
        return cut_recording(
            waveform, self.sampling_rate, self.utterance_seconds, self.window_seconds, self.hop_seconds
        )

    def _scores(self, probabilities: np.ndarray) -> dict[str, float]:
        return {name: float(p) for name, p in zip(self.label_names, probabilities, strict=True)}

    def _finish(self, pending: list[tuple[FileResult, np.ndarray]]) -> None:
        """Cut, classify (all segments of all clips in shared batches) and pool the scores of each result."""
        plans = []
        for result, waveform in pending:
            result.normalization = self.normalization
            segments, skipped = self.segments(waveform)
            notice = segment_notice(
                segments, skipped, waveform.shape[0], self.window_seconds, self.hop_seconds
            )
            if notice is not None:
                result.notices.append(notice)
            if not segments:
                result.error = f"{result.path}: every segment is silent; nothing to classify"
            plans.append((result, waveform, segments, notice is not None))
        clips = [waveform[s.start : s.end] for _, waveform, segments, _ in plans for s in segments]
        probabilities = self.probabilities(clips)
        offset = 0
        for result, _, segments, windowed in plans:
            if not segments:
                continue
            scores = probabilities[offset : offset + len(segments)]
            offset += len(segments)
            mean = duration_weighted_mean(scores, segments)
            result.scores = self._scores(mean)
            result.label = self.label_names[int(np.argmax(mean))]
            if windowed:
                result.segments = segment_rows(segments, scores, self.label_names)

    def classify_batch(self, paths: Sequence[str]) -> list[FileResult]:
        """Decode and classify a batch of files; a file that fails gets its error, the others go on."""
        results, pending = [], []
        for path in paths:
            result = FileResult(path=path)
            results.append(result)
            try:
                waveform, result.duration_s, result.notices = decode_file(path, self.sampling_rate)
                check_waveform(waveform, self.sampling_rate, path, self.file_policy)
            except AudioInputError as error:  # the row keeps what is known: duration, notices
                result.error = str(error)
                continue
            pending.append((result, waveform))
        if pending:
            self._finish(pending)
        return results

    def classify_waveforms(self, clips: Sequence[tuple[str, np.ndarray]]) -> list[FileResult]:
        """Classify decoded ``(name, waveform)`` clips (mono, at the model's rate) in one batch."""
        pending = [
            (FileResult(path=name, duration_s=waveform.shape[0] / self.sampling_rate), waveform)
            for name, waveform in clips
        ]
        self._finish(pending)
        return [result for result, _ in pending]

    def classify_files(
        self, paths: Sequence[str], num_workers: int = 0, show_progress: bool = True
    ) -> list[FileResult]:
        """Classify every file, ``batch_size`` files per batch (in ``num_workers`` processes when > 1)."""
        return self.classify_in_batches("classify_batch", list(paths), num_workers, show_progress)

    def classify_in_batches(
        self, method: str, items: list, num_workers: int, show_progress: bool
    ) -> list[FileResult]:
        batches = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        results = []
        with tqdm(total=len(items), desc="Classifying", unit="file", disable=not show_progress) as bar:
            for batch_results in _run_batches(self, method, batches, num_workers):
                results += batch_results
                bar.update(len(batch_results))
        return results


_WORKER: AudioFileClassifier | None = None  # the forked workers' classifier


def _classify_in_worker(task: tuple[str, list]) -> list[FileResult]:
    torch.set_num_threads(1)
    method, batch = task
    return getattr(_WORKER, method)(batch)


def _run_batches(classifier: AudioFileClassifier, method: str, batches: list[list], num_workers: int):
    """Yield ``classifier.<method>(batch)`` for each batch in order, from forked worker processes when
    ``num_workers > 1`` (and the platform forks)."""
    global _WORKER
    if num_workers <= 1 or len(batches) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for batch in batches:
            yield getattr(classifier, method)(batch)
        return
    _WORKER = classifier
    try:
        with multiprocessing.get_context("fork").Pool(min(num_workers, len(batches))) as pool:
            yield from pool.imap(_classify_in_worker, [(method, batch) for batch in batches])
    finally:
        _WORKER = None


def default_num_workers() -> int:
    """Worker processes for CPU feature extraction: the usable cores, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


def write_timelines(results: Sequence[FileResult], folder: str | os.PathLike) -> list[Path]:
    """`folder/<file name>.png`: the timeline of each result cut into several segments (a name taken twice gets
    its position in front)."""
    written: list[Path] = []
    for index, result in enumerate(results):
        if len(result.segments) < 2:
            continue
        path = Path(folder) / f"{Path(result.path).name}.png"
        if path in written:
            path = path.with_name(f"{index}_{path.name}")
        title = timeline_title(Path(result.path).name, result.scores, len(result.segments))
        written.append(path)
        plot_emotion_timeline(result.segments, path, title)
    return written


def write_results(results: Sequence[FileResult], path: str | os.PathLike, label_names: Sequence[str]) -> Path:
    """Write one row per file: ``.csv`` (flat, a ``score_<class>`` column per class) or ``.jsonl`` (segments
    included). ValueError for another extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise UsageError(f"--output {path}: the file name must end in .csv or .jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        if suffix == ".jsonl":
            for result in results:
                handle.write(json.dumps(result.to_dict()) + "\n")
            return path
        rows = [result.to_row(label_names) for result in results]
        fieldnames = list(FileResult(path="").to_row(label_names))
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return path
