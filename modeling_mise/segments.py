"""Long recordings: cut a clip into windows, skip silent ones with an energy gate, and pool the per-window
emotion scores into one file-level answer (the duration-weighted mean).

A clip no longer than the window is one segment covering the whole clip; a longer one gets windows of
``window_seconds`` every ``hop_seconds`` (the last one ends at the end of the clip). A window is kept when it
holds at least ``min_active_seconds`` of frames whose energy is within ``gate_db`` of the loudest frame of the
clip (and above ``floor_dbfs``): pauses, silence and background hum are skipped, speech is classified.
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


def plot_emotion_timeline(
    segments: Sequence[Mapping[str, Any]], path: str | Path | None = None, title: str = ""
):
    """Emotion over time of a long recording (needs `matplotlib`): each class' probability per window, drawn at
    the window's centre, and the top class as a coloured band. `segments` are `{start_s, end_s, scores}`
    dicts, as `mise classify` writes them. Returns the figure, also saved when `path` is given."""
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
