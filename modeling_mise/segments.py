"""Long recordings: cut a clip into utterance-sized segments at pauses (or into fixed windows), skip silent
stretches, and pool the per-segment emotion scores into one file-level answer (the duration-weighted mean).

The one segmentation of every entry point (`pipeline()`, `mise classify`, `mise evaluate`, the Space) is
:func:`cut_recording`. By default it calls :func:`cut_utterances`: a clip no longer than the model's training
clips (``utterance_seconds``, the 5th-95th percentile of their durations) is one segment; a longer one is cut at
pauses of at least ``MIN_PAUSE_SECONDS`` (frames near the recording's noise floor), so no segment spans a pause
between utterances; pieces of one utterance that together stay shorter than the shortest training clips are
merged, pieces longer than the longest are split into equal windows, and each segment takes in the pause around
it up to the middle of that range, as the training clips hold silence around their speech.

With ``window_seconds`` :func:`cut_recording` calls :func:`cut_windows` instead: windows of ``window_seconds``
every ``hop_seconds`` (the last one ends at the end of the clip); a window is kept when it holds at least
``min_active_seconds`` of frames whose energy is within ``gate_db`` of the loudest frame of the clip (and above
``floor_dbfs``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FRAME_SECONDS = 0.025  # energy frames of the gate
GATE_DB = 40.0  # frames quieter than the loudest frame by more than this are silence
FLOOR_DBFS = -60.0  # frames below this level are silence, however quiet the clip
MIN_ACTIVE_SECONDS = 0.25  # a window needs this much non-silent audio to be classified
MIN_PAUSE_SECONDS = 0.25  # a pause between utterances lasts at least this long
PAUSE_FLOOR_DBFS = -70.0  # frames below this level are pause, however quiet the recording
PAUSE_MARGIN_DB = 10.0  # frames within this of the noise floor (10th percentile of frame levels) are pause
LOUDEST_MARGIN_DB = 20.0  # frames within this of the loudest frame are never pause
STEADY_DB = 6.0  # a stretch whose frame levels vary less (10th to 90th percentile) is background, not speech
UTTERANCE_PERCENTILES = (5.0, 95.0)  # the duration range a model records of its training clips
DEFAULT_SHORTEST_SECONDS = 2.0  # the range's lower end for a model saved before it recorded one


@dataclass(frozen=True)
class Segment:
    """One window of a clip: ``[start, end)`` in samples and seconds, and its non-silent duration."""

    start: int
    end: int
    sampling_rate: int
    active_seconds: float

    @property
    def start_s(self) -> float:
        return self.start / self.sampling_rate

    @property
    def end_s(self) -> float:
        return self.end / self.sampling_rate

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / self.sampling_rate


def check_window(window_seconds: float, hop_seconds: float | None) -> tuple[float, float]:
    """``(window, hop)`` in seconds; the hop defaults to the window. ValueError naming the bad option."""
    for name, value in (("window_seconds", window_seconds), ("hop_seconds", hop_seconds)):
        if value is None and name == "hop_seconds":
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not value > 0
            or math.isinf(value)
        ):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    hop = window_seconds if hop_seconds is None else hop_seconds
    if hop > window_seconds:
        raise ValueError(
            f"hop_seconds ({hop:g}) must not exceed window_seconds ({window_seconds:g}): audio would be skipped"
        )
    return float(window_seconds), float(hop)


def frame_levels_db(
    waveform: np.ndarray, sampling_rate: int, frame_seconds: float = FRAME_SECONDS
) -> np.ndarray:
    """RMS level in dBFS of consecutive frames ``(F,)``; the last, partial frame included."""
    size = max(1, int(round(frame_seconds * sampling_rate)))
    count = max(1, math.ceil(waveform.shape[0] / size))
    padded = np.zeros(count * size, dtype=np.float64)
    padded[: waveform.shape[0]] = waveform
    power = np.mean(padded.reshape(count, size) ** 2, axis=1)
    return 10.0 * np.log10(np.maximum(power, 1e-20))


def active_frames(
    waveform: np.ndarray, sampling_rate: int, gate_db: float = GATE_DB, floor_dbfs: float = FLOOR_DBFS
) -> np.ndarray:
    """Boolean ``(F,)``: frames of :data:`FRAME_SECONDS` louder than ``max - gate_db`` and ``floor_dbfs``."""
    levels = frame_levels_db(waveform, sampling_rate)
    threshold = max(float(levels.max()) - gate_db, floor_dbfs)
    return levels > threshold


def cut_windows(
    waveform: np.ndarray,
    sampling_rate: int,
    window_seconds: float,
    hop_seconds: float | None = None,
    gate_db: float = GATE_DB,
    min_active_seconds: float = MIN_ACTIVE_SECONDS,
) -> tuple[list[Segment], int]:
    """Windows of a mono clip worth classifying, and how many silent windows were skipped.

    A clip no longer than ``window_seconds`` is one segment (never gated: the caller decides whether a whole
    clip is usable).

    Returns:
        ``(segments, skipped)``; ``segments`` is empty when every window is silent.
    """
    window_seconds, hop_seconds = check_window(window_seconds, hop_seconds)
    total = int(waveform.shape[0])
    window = max(1, int(round(window_seconds * sampling_rate)))
    if total <= window:
        return [Segment(0, total, sampling_rate, total / sampling_rate)], 0
    hop = max(1, int(round(hop_seconds * sampling_rate)))
    starts = list(range(0, total - window, hop)) + [total - window]  # the last window ends at the clip's end
    active = active_frames(waveform, sampling_rate, gate_db)
    frame = max(1, int(round(FRAME_SECONDS * sampling_rate)))
    segments, skipped = [], 0
    for start in sorted(set(starts)):
        end = start + window
        seconds = float(active[start // frame : math.ceil(end / frame)].sum()) * frame / sampling_rate
        if seconds >= min_active_seconds:
            segments.append(Segment(start, end, sampling_rate, seconds))
        else:
            skipped += 1
    return segments, skipped


def utterance_range(
    durations: Sequence[float | None], max_seconds: float | None = None
) -> list[float] | None:
    """``[low, high]`` seconds: the 5th and 95th percentile of training clips' durations (rounded to ms), the
    duration range a model records (`MiseAudioClassifierConfig.utterance_seconds`); ``high`` is at most
    ``max_seconds``, the longest clip the model takes. Unknown (None, NaN) and non-positive durations are left
    out; ``None`` when no duration is known (the model then falls back to :func:`default_utterance_range`)."""
    values = np.asarray([d for d in durations if d is not None], dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(values, UTTERANCE_PERCENTILES))
    if max_seconds is not None:
        high = min(high, float(max_seconds))
    return [round(min(low, high), 3), round(high, 3)]


def check_utterance_range(
    utterance_seconds: Sequence[float], name: str = "utterance_seconds"
) -> tuple[float, float]:
    """``(low, high)`` of a duration range; ValueError naming ``name`` unless ``0 < low <= high`` (finite)."""
    values = list(utterance_seconds) if isinstance(utterance_seconds, (list, tuple)) else None
    if (
        values is None
        or len(values) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf for v in values)
        or values[0] > values[1]
    ):
        raise ValueError(
            f"{name} must be [low, high] seconds with 0 < low <= high, got {utterance_seconds!r}"
        )
    return float(values[0]), float(values[1])


def default_utterance_range(max_duration_s: float) -> tuple[float, float]:
    """The range of a model that recorded none (saved before `utterance_seconds` existed, or not a MISE model):
    ``(min(2 s, max_duration_s), max_duration_s)``: a clip up to the model's window is one segment, a longer
    one is cut at pauses into pieces of at most that window."""
    return min(DEFAULT_SHORTEST_SECONDS, float(max_duration_s)), float(max_duration_s)


def pause_threshold(levels: np.ndarray) -> float:
    """The frame level (dBFS) at or below which a frame is pause: ``PAUSE_MARGIN_DB`` above the recording's noise
    floor (the 10th percentile of its frame levels), so digital silence and low-level background noise are pauses
    alike and a quiet utterance is not; never within ``LOUDEST_MARGIN_DB`` of the loudest frame (a recording
    without a pause has no noise floor to measure), and at least ``PAUSE_FLOOR_DBFS``."""
    noise_floor = float(np.percentile(levels, 10))
    return max(PAUSE_FLOOR_DBFS, min(noise_floor + PAUSE_MARGIN_DB, float(levels.max()) - LOUDEST_MARGIN_DB))


def speech_runs(pause: np.ndarray, min_pause_frames: int) -> list[list[int]]:
    """``[start, end)`` frame runs of speech: the stretches between pauses of at least ``min_pause_frames``."""
    speech = np.concatenate([[False], ~pause, [False]])
    edges = np.flatnonzero(np.diff(speech.astype(np.int8)))
    runs: list[list[int]] = []
    for start, end in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        if runs and start - runs[-1][1] < min_pause_frames:
            runs[-1][1] = end  # a shorter pause belongs to the utterance
        else:
            runs.append([start, end])
    return runs


def merge_short_runs(runs: list[list[int]], shortest: int) -> list[list[int]]:
    """Merge neighbouring runs, across the shortest pause first, while the merged run stays within ``shortest``
    frames (the shortest training clips): pieces of one utterance, never two utterances a model would hear
    apart."""
    runs = [list(run) for run in runs]
    while len(runs) > 1:
        gaps = [
            (runs[i + 1][0] - runs[i][1], i)
            for i in range(len(runs) - 1)
            if runs[i + 1][1] - runs[i][0] <= shortest
        ]
        if not gaps:
            break
        _, i = min(gaps)
        runs[i : i + 2] = [[runs[i][0], runs[i + 1][1]]]
    return runs


def split_long_runs(runs: list[list[int]], longest: int) -> list[list[int]]:
    """Split each run longer than ``longest`` frames into equal windows of at most ``longest`` frames."""
    pieces = []
    for start, end in runs:
        count = max(1, math.ceil((end - start) / longest))
        bounds = np.linspace(start, end, count + 1).round().astype(int).tolist()
        pieces += [[a, b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return pieces


def widen_runs(runs: list[list[int]], target: int, background: np.ndarray) -> list[list[int]]:
    """Widen each run shorter than ``target`` frames into the pauses around it, evenly on both sides, never past
    the middle of a pause (the neighbour's half), into a ``background`` frame (steady noise: the run's own
    recording conditions stop there) nor past the recording's ends (``background`` has one entry per frame)."""
    widened, total = [], len(background)
    blocked = np.flatnonzero(background)
    for index, (start, end) in enumerate(runs):
        left = 0 if index == 0 else (runs[index - 1][1] + start) // 2
        right = total if index == len(runs) - 1 else (end + runs[index + 1][0]) // 2
        before, after = blocked[blocked < start], blocked[blocked >= end]
        left = max(left, int(before[-1]) + 1) if before.size else left
        right = min(right, int(after[0])) if after.size else right
        if end - start < target:
            start = max(left, start - (target - (end - start)) // 2)
            end = min(right, start + target)
            start = max(left, end - target)  # what the right side could not take, the left side takes
        widened.append([start, end])
    return widened


def cut_utterances(
    waveform: np.ndarray,
    sampling_rate: int,
    utterance_seconds: Sequence[float],
    min_pause_seconds: float = MIN_PAUSE_SECONDS,
    min_active_seconds: float = MIN_ACTIVE_SECONDS,
) -> tuple[list[Segment], int]:
    """Utterance-sized segments of a mono clip, cut at pauses (the module's docstring says how), and how many
    pieces were skipped for holding less than ``min_active_seconds`` of sound.

    A clip no longer than ``utterance_seconds[1]`` is one segment (never gated: the caller decides whether a
    whole clip is usable). Segments never overlap; pauses between them are not classified.

    Returns:
        ``(segments, skipped)``; ``segments`` is empty when the recording holds no sound above its noise floor.
    """
    low, high = check_utterance_range(utterance_seconds)
    total = int(waveform.shape[0])
    if total <= round(high * sampling_rate):
        return [Segment(0, total, sampling_rate, total / sampling_rate)], 0
    frame = max(1, int(round(FRAME_SECONDS * sampling_rate)))
    levels = frame_levels_db(waveform, sampling_rate)
    pause = levels <= pause_threshold(levels)
    frames_per_second = sampling_rate / frame
    runs, background = [], np.zeros(len(levels), dtype=bool)
    for start, end in speech_runs(pause, max(1, round(min_pause_seconds * frames_per_second))):
        # a steady stretch (noise or hum louder than the pauses around it) is background, not speech
        if np.ptp(np.percentile(levels[start:end], [10, 90])) >= STEADY_DB:
            runs.append([start, end])
        else:
            background[start:end] = True
    runs = merge_short_runs(runs, max(1, int(low * frames_per_second)))
    runs = split_long_runs(runs, max(1, int(high * frames_per_second)))
    runs = widen_runs(runs, int((low + high) / 2 * frames_per_second), background)
    segments, skipped = [], 0
    for start, end in runs:
        seconds = float((~pause[start:end]).sum()) / frames_per_second
        if seconds >= min_active_seconds:
            segments.append(Segment(start * frame, min(end * frame, total), sampling_rate, seconds))
        else:
            skipped += 1
    return segments, skipped


def cut_recording(
    waveform: np.ndarray,
    sampling_rate: int,
    utterance_seconds: Sequence[float],
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
) -> tuple[list[Segment], int]:
    """The segments of a clip that every entry point classifies: utterance-sized pieces cut at pauses
    (:func:`cut_utterances`, within the model's ``utterance_seconds``), or, with ``window_seconds``, fixed
    windows every ``hop_seconds`` (:func:`cut_windows`). Returns ``(segments, skipped)``."""
    if window_seconds is not None:
        return cut_windows(waveform, sampling_rate, window_seconds, hop_seconds)
    if hop_seconds is not None:
        raise ValueError("hop_seconds: give window_seconds too")
    return cut_utterances(waveform, sampling_rate, utterance_seconds)


def segment_notice(
    segments: Sequence[Segment],
    skipped: int,
    total: int,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
) -> str | None:
    """What a result says about how its clip of ``total`` samples was cut; ``None`` when it was classified whole."""
    if not skipped and len(segments) == 1 and segments[0].start == 0 and segments[0].end == total:
        return None
    if window_seconds is not None:
        hop = window_seconds if hop_seconds is None else hop_seconds
        return (
            f"cut into {len(segments) + skipped} windows of {window_seconds:g} s (hop {hop:g} s); "
            f"{skipped} silent window(s) skipped"
        )
    lengths = [segment.duration_s for segment in segments] or [0.0]
    notice = f"cut at pauses into {len(segments)} segment(s) of {min(lengths):.1f}-{max(lengths):.1f} s"
    if skipped:
        notice += f"; {skipped} piece(s) with under {MIN_ACTIVE_SECONDS:g} s of sound skipped"
    return notice


def segment_rows(
    segments: Sequence[Segment], probabilities: np.ndarray, label_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One dict per segment, as results and :func:`plot_emotion_timeline` take them: ``start_s``, ``end_s``,
    ``label`` (the top class) and ``scores`` (class -> probability)."""
    return [
        {
            "start_s": round(segment.start_s, 3),
            "end_s": round(segment.end_s, 3),
            "label": label_names[int(np.argmax(row))],
            "scores": {name: float(p) for name, p in zip(label_names, row, strict=True)},
        }
        for segment, row in zip(segments, probabilities, strict=True)
    ]


def duration_weighted_mean(scores: np.ndarray, segments: list[Segment]) -> np.ndarray:
    """File-level scores ``(C,)``: the mean of the segments' scores ``(S, C)`` weighted by each segment's
    duration of non-silent audio (windows are equally long; the weight is the speech they hold)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(segments) or not segments:
        raise ValueError(
            f"scores must have shape ({len(segments)}, classes) with >= 1 segment, got {scores.shape}"
        )
    weights = np.asarray([segment.active_seconds for segment in segments], dtype=np.float64)
    return (weights[:, None] * scores).sum(axis=0) / weights.sum()


def timeline_title(name: str, scores: Mapping[str, float], segments: int) -> str:
    """The title of a recording's timeline: its file-level answer, the one its result gives."""
    label = max(scores, key=scores.get)
    return f"{name}: {label} ({scores[label]:.0%}, duration-weighted mean of {segments} segments)"


def plot_emotion_timeline(
    segments: Sequence[Mapping[str, Any]], path: str | Path | None = None, title: str = ""
):
    """Emotion over time of a long recording (needs `matplotlib`): each class' probability per segment, drawn at
    the segment's centre, and the top class as a coloured band. `segments` are `{start_s, end_s, scores}`
    dicts (:func:`segment_rows`), as `mise classify` writes them. The one timeline of `mise classify --timeline`
    and the Space. Returns the figure, also saved when `path` is given."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if not segments:
        raise ValueError("segments: nothing to plot")
    names = list(segments[0]["scores"])
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    colours = {name: cmap(index % cmap.N) for index, name in enumerate(names)}
    centres = np.array([(s["start_s"] + s["end_s"]) / 2 for s in segments])
    scores = np.array([[s["scores"][name] for name in names] for s in segments])
    figure = Figure(figsize=(8.0, 3.2), layout="constrained")
    axis = figure.subplots()
    for index, name in enumerate(names):
        axis.plot(centres, scores[:, index], marker="o", ms=3, lw=1.2, color=colours[name], label=name)
    for segment, top in zip(segments, scores.argmax(axis=1), strict=True):
        axis.axvspan(segment["start_s"], segment["end_s"], ymin=0, ymax=0.04, color=colours[names[top]], lw=0)
    axis.set_xlabel("time [s]")
    axis.set_ylabel("probability")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncols=min(len(names), 4), loc="upper right")
    axis.set_title(title, fontsize=9)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120, bbox_inches="tight")
    return figure
