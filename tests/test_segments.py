"""Utterance-sized segments (`modeling_mise.segments.cut_utterances`): cut at pauses of digital silence or low-level
noise, pieces of one utterance merged, long stretches split, each segment widened into its pauses, within the
duration range a model records of its training clips (`utterance_seconds`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modeling_mise import MiseAudioClassifierConfig
from modeling_mise.segments import (
    cut_recording,
    cut_utterances,
    default_utterance_range,
    segment_notice,
    segment_rows,
    utterance_range,
)

RATE = 16000


def burst(seconds: float, dbfs: float, seed: int, depth: float = 20.0) -> np.ndarray:
    """Speech-like sound: noise whose level moves within `depth` dB every 50 ms, peaking near `dbfs` (RMS)."""
    rng = np.random.default_rng(seed)
    samples = int(seconds * RATE)
    envelope = np.repeat(10 ** (rng.uniform(-depth, 0, samples // 800 + 1) / 20), 800)[:samples]
    return (10 ** (dbfs / 20) * envelope * rng.standard_normal(samples)).astype(np.float32)


def pause(seconds: float, noise_dbfs: float | None = None, seed: int = 0) -> np.ndarray:
    samples = int(seconds * RATE)
    if noise_dbfs is None:
        return np.zeros(samples, np.float32)
    return (10 ** (noise_dbfs / 20) * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32)


def spans(segments) -> list[tuple[float, float]]:
    return [(round(s.start_s, 3), round(s.end_s, 3)) for s in segments]


def test_utterance_range_is_the_5th_to_95th_percentile_of_known_durations():
    durations = list(np.linspace(2.0, 6.0, 101)) + [None, float("nan"), 0.0]
    assert utterance_range(durations) == [2.2, 5.8]
    assert utterance_range(durations, max_seconds=4.0) == [2.2, 4.0]
    assert utterance_range([2.0] * 10) == [2.0, 2.0]  # the Emo-DB copy: every clip 2.0 s
    assert utterance_range([None, None]) is None
    assert default_utterance_range(30.0) == (2.0, 30.0) and default_utterance_range(1.5) == (1.5, 1.5)


def test_the_config_records_the_range_and_older_models_get_a_default(tmp_path):
    config = MiseAudioClassifierConfig(utterance_seconds=[3.2, 4.3])
    assert config.utterance_range == (3.2, 4.3) and config.adaptation_prior_strength == 2.0
    config.save_pretrained(tmp_path)
    assert MiseAudioClassifierConfig.from_pretrained(tmp_path).utterance_range == (3.2, 4.3)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["utterance_seconds"]  # a model saved before the field existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert MiseAudioClassifierConfig.from_pretrained(tmp_path).utterance_range == (2.0, 30.0)
    for bad in ([4.3, 3.2], [3.0], [0, 2.0], "3-4"):
        with pytest.raises(ValueError, match="utterance_seconds"):
            MiseAudioClassifierConfig(utterance_seconds=bad)
    with pytest.raises(ValueError, match="must not exceed max_duration_s"):
        MiseAudioClassifierConfig(utterance_seconds=[3.0, 40.0])
    with pytest.raises(ValueError, match="adaptation_prior_strength"):
        MiseAudioClassifierConfig(adaptation_prior_strength=-1)


@pytest.mark.parametrize("noise_dbfs", [None, -60.0])
def test_utterances_are_cut_at_pauses_and_widened_into_them(noise_dbfs):
    """Three utterances (a loud one, a quiet one 28 dB below it and 22 dB above the noise, a loud one) with 0.5 s
    pauses of digital silence or of -60 dBFS noise: three segments, each holding its utterance, none another's."""
    parts = [pause(0.3, noise_dbfs, 1), burst(1.5, -10, 1), pause(0.5, noise_dbfs, 2), burst(1.2, -38, 2)]
    parts += [pause(0.5, noise_dbfs, 3), burst(1.8, -12, 3), pause(0.3, noise_dbfs, 4)]
    recording = np.concatenate(parts)
    edges = np.cumsum([0] + [len(part) for part in parts]) / RATE  # utterances: parts 1, 3, 5
    utterances = [(edges[i], edges[i + 1]) for i in (1, 3, 5)]
    segments, skipped = cut_utterances(recording, RATE, (2.0, 2.5))
    assert skipped == 0 and len(segments) == 3
    for segment, (start, end) in zip(segments, utterances, strict=True):
        assert segment.start_s <= start + 0.03 and segment.end_s >= end - 0.03  # the whole utterance
        others = [u for u in utterances if u != (start, end)]
        assert all(segment.end_s <= a or segment.start_s >= b for a, b in others)  # no other one
    assert all(
        a.end <= b.start for a, b in zip(segments[:-1], segments[1:], strict=True)
    )  # never overlapping
    # widened toward the middle of the range (2.25 s) but never past the middle of a pause
    assert segments[0].duration_s == pytest.approx(1.8 + 0.25, abs=0.1)  # 0.3 s before, half the pause after
    assert segments[1].duration_s == pytest.approx(1.2 + 0.5, abs=0.1)  # half of each pause


def test_pieces_of_one_utterance_merge_and_long_stretches_split():
    # two pieces 0.3 s apart fit in the shortest training clip (2 s): one utterance; 1.0 s apart they do not
    close = np.concatenate([burst(0.8, -15, 1), pause(0.3), burst(0.8, -15, 2)])
    assert len(cut_utterances(np.concatenate([pause(1.0), close, pause(1.0)]), RATE, (2.0, 3.0))[0]) == 1
    apart = np.concatenate([pause(1.0), burst(0.8, -15, 1), pause(1.0), burst(0.8, -15, 2), pause(1.0)])
    assert len(cut_utterances(apart, RATE, (2.0, 3.0))[0]) == 2
    # 10 s of sound without a pause (nor a quieter stretch), longest training clip 3 s: four windows of 2.5 s
    segments, _ = cut_utterances(burst(10.0, -15, 3, depth=12.0), RATE, (2.0, 3.0))
    assert [round(s.duration_s, 2) for s in segments] == [2.5] * 4 and segments[-1].end == 10 * RATE
    # no longer than the longest training clip: one segment, the whole clip, never gated
    short = np.concatenate([pause(1.0), burst(1.5, -15, 4)])
    assert spans(cut_utterances(short, RATE, (2.0, 3.0))[0]) == [(0.0, 2.5)]
    # steady noise louder than the digital silence around it is background, not an utterance of its own
    noisy = np.concatenate([pause(1.0), burst(1.5, -15, 5), pause(0.3), pause(0.5, -60.0), pause(0.3)])
    noisy = np.concatenate([noisy, burst(1.5, -15, 6), pause(1.0)])
    assert len(cut_utterances(noisy, RATE, (2.0, 3.0))[0]) == 2
    # silence throughout: nothing to classify
    assert cut_utterances(pause(10.0), RATE, (2.0, 3.0)) == ([], 0)


def test_one_entry_point_for_windows_and_utterances():
    recording = np.concatenate([burst(2.0, -15, 1), pause(4.0), burst(2.0, -15, 2)])
    utterances, _ = cut_recording(recording, RATE, (1.0, 2.0))
    windows, skipped = cut_recording(recording, RATE, (1.0, 2.0), window_seconds=1.0, hop_seconds=0.5)
    assert len(utterances) == 2 and len(windows) + skipped == 15 and skipped == 7
    with pytest.raises(ValueError, match="hop_seconds"):
        cut_recording(recording, RATE, (1.0, 2.0), hop_seconds=1.0)
    assert segment_notice(utterances, 0, len(recording)).startswith("cut at pauses into 2 segment(s) of 2.")
    assert segment_notice(windows, skipped, len(recording), 1.0, 0.5) == (
        "cut into 15 windows of 1 s (hop 0.5 s); 7 silent window(s) skipped"
    )
    whole, _ = cut_recording(recording[: 2 * RATE], RATE, (1.0, 2.0))
    assert segment_notice(whole, 0, 2 * RATE) is None
    rows = segment_rows(utterances, np.array([[0.9, 0.1], [0.2, 0.8]]), ["angry", "sad"])
    assert [row["label"] for row in rows] == ["angry", "sad"] and rows[1]["scores"]["sad"] == pytest.approx(
        0.8
    )
