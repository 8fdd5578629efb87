"""Many files and long recordings: `mise classify` on folders, manifests and bad files, utterance-sized segments
(the default) and windows of long recordings built from real RAVDESS clips, the same from `pipeline()`, and the
Space's timeline.

The model is a real end-to-end classifier (eGeMAPS functionals, aligner + classifier) trained here on the
angry, neutral and sad clips of 20 RAVDESS actors; the recordings are made of the other four actors' clips.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import train_space_model
from test_space import app, examples_dir  # noqa: F401  (the Space fixtures)
from transformers import pipeline

import modeling_mise  # noqa: F401  (registers the Auto classes)
from mise.cli import main as mise_main
from mise.file_classification import AudioFileClassifier, collect_audio_paths
from modeling_mise.audio import load_audio
from modeling_mise.segments import Segment, cut_windows, duration_weighted_mean

RATE = 16000
EMOTIONS = ("angry", "neutral", "sad")
HELD_OUT = ("Actor_21", "Actor_22", "Actor_23", "Actor_24")


@pytest.fixture(scope="module")
def model_dir(ravdess_rows, tmp_path_factory) -> Path:
    rows = [r for r in ravdess_rows if r["emotion"] in EMOTIONS and r["speaker"] not in HELD_OUT]
    return train_space_model(rows, tmp_path_factory.mktemp("file_model") / "audio-classifier", per_class=40)


@pytest.fixture(scope="module")
def held_out(ravdess_rows) -> dict[str, list[dict]]:
    """Clips of the held-out actors by emotion, strong intensity first (the clearest ones)."""
    rows = [r for r in ravdess_rows if r["speaker"] in HELD_OUT]
    return {
        name: sorted((r for r in rows if r["emotion"] == name), key=lambda r: r["intensity"] != "strong")
        for name in EMOTIONS
    }


@pytest.fixture(scope="module")
def reference(model_dir):
    classify = pipeline("audio-classification", model=str(model_dir))
    return lambda audio, **kwargs: {s["label"]: s["score"] for s in classify(audio, top_k=None, **kwargs)}


def test_windows_energy_gate_and_weighted_mean():
    rng = np.random.default_rng(0)
    speech = 0.1 * rng.standard_normal(RATE * 2).astype(np.float32)
    clip = np.concatenate([speech, np.zeros(RATE * 4, np.float32), speech])  # 2 s, 4 s silence, 2 s
    segments, skipped = cut_windows(clip, RATE, window_seconds=1.0, hop_seconds=0.5)
    assert skipped == 7 and not [s for s in segments if s.start_s >= 2.0 and s.end_s <= 6.0]
    assert all(s.start_s < 2.0 - 0.25 or s.end_s > 6.0 + 0.25 for s in segments)  # >= 0.25 s of sound each
    assert segments[-1].end == clip.shape[0] and segments[0].start == 0
    short, none_skipped = cut_windows(speech, RATE, window_seconds=3.0)
    assert none_skipped == 0 and [(s.start, s.end) for s in short] == [(0, speech.shape[0])]
    scores = np.array([[1.0, 0.0], [0.0, 1.0]])
    weighted = [Segment(0, RATE, RATE, 0.75), Segment(RATE, 2 * RATE, RATE, 0.25)]
    assert np.allclose(duration_weighted_mean(scores, weighted), [0.75, 0.25])
    with pytest.raises(ValueError, match="hop_seconds"):
        cut_windows(clip, RATE, window_seconds=1.0, hop_seconds=2.0)
    with pytest.raises(ValueError, match="window_seconds"):
        cut_windows(clip, RATE, window_seconds=0)


@pytest.fixture(scope="module")
def inputs(held_out, tmp_path_factory) -> dict[str, Path]:
    """A folder (nested, a stereo 44.1 kHz copy, a non-audio .wav, a .txt) and a manifest CSV."""
    root = tmp_path_factory.mktemp("many_files")
    folder = root / "clips"
    (folder / "nested").mkdir(parents=True)
    for index, row in enumerate(held_out["angry"][:2] + held_out["sad"][:2]):
        target = folder / ("nested" if index % 2 else "") / Path(row["path"]).name
        shutil.copy(row["path"], target)
    high, _ = load_audio(held_out["neutral"][0]["path"], 44100)
    sf.write(folder / "stereo_44k.wav", np.stack([high, 0.5 * high], axis=1), 44100, subtype="PCM_16")
    (folder / "notes.wav").write_text("meeting notes, not audio\n" * 20)
    (folder / "readme.txt").write_text("not an audio extension: skipped\n")
    manifest_dir = root / "corpus"
    (manifest_dir / "wav").mkdir(parents=True)
    names = []
    for row in held_out["neutral"][1:3]:
        shutil.copy(row["path"], manifest_dir / "wav" / Path(row["path"]).name)
        names.append("wav/" + Path(row["path"]).name)
    with open(manifest_dir / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "speaker", "emotion"])
        writer.writerows([name, "x", "neutral"] for name in names)
    return {"folder": folder, "manifest": manifest_dir / "manifest.csv"}


def test_classify_folders_manifests_and_bad_files(model_dir, inputs, reference, tmp_path, capsys):
    paths = collect_audio_paths([inputs["folder"], inputs["manifest"]])
    assert len(paths) == 8 and not any(p.endswith(".txt") for p in paths)
    output = tmp_path / "results.csv"
    argv = ["classify", str(model_dir), str(inputs["folder"]), str(inputs["manifest"]), "--quiet"]
    assert mise_main([*argv, "--output", str(output), "--num_workers", "2", "--batch_size", "3"]) == 1
    with open(output, newline="") as handle:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    assert len(rows) == 8
    assert (
        "notes.wav" in rows["notes.wav"]["error"]
        and "not a readable audio file" in rows["notes.wav"]["error"]
    )
    assert rows["notes.wav"]["label"] == "" and "notes.wav" in capsys.readouterr().err
    assert "resampled from 44100 Hz" in rows["stereo_44k.wav"]["notices"]
    assert "downmixed 2 channels" in rows["stereo_44k.wav"]["notices"]
    for path in paths:
        row = rows[Path(path).name]
        if row["error"]:
            continue
        expected = reference(path)
        scores = {name: float(row[f"score_{name}"]) for name in EMOTIONS}
        assert row["label"] == max(expected, key=expected.get)
        assert max(abs(scores[name] - expected[name]) for name in EMOTIONS) < 2e-3, (path, scores, expected)
        assert float(row["duration_s"]) == pytest.approx(sf.info(path).duration, abs=1e-3)
    # all good: exit 0 and JSON lines; usage errors: exit 2
    good = tmp_path / "good.jsonl"
    assert mise_main([*argv[:2], str(inputs["manifest"]), "--quiet", "--output", str(good)]) == 0
    lines = [json.loads(line) for line in good.read_text().splitlines()]
    assert len(lines) == 2 and all(line["error"] is None and line["label"] in EMOTIONS for line in lines)
    assert mise_main(["classify", str(model_dir), str(tmp_path / "missing.wav")]) == 2
    assert mise_main(["classify", str(model_dir), str(inputs["manifest"]), "--output", "out.xlsx"]) == 2
    assert mise_main(["classify", str(tmp_path / "no-model"), str(inputs["manifest"])]) == 2


@pytest.fixture(scope="module")
def recording(held_out, tmp_path_factory) -> tuple[Path, list[tuple[str, float, float]]]:
    """angry clips, 4 s of silence, sad clips, angry clips: the file and its (emotion, start, end) regions."""
    parts, regions, position = [], [], 0.0
    for emotion, count in (("angry", 4), (None, 0), ("sad", 4), ("angry", 4)):
        if emotion is None:
            audio = np.zeros(4 * RATE, dtype=np.float32)
        else:
            audio = np.concatenate([load_audio(r["path"], RATE)[0] for r in held_out[emotion][4 : 4 + count]])
        parts.append(audio)
        regions.append((emotion or "silence", position, position + len(audio) / RATE))
        position += len(audio) / RATE
    path = tmp_path_factory.mktemp("long") / "long_recording.wav"
    sf.write(path, np.concatenate(parts), RATE)
    return path, regions


def test_long_recording_segments_follow_the_emotions(model_dir, recording, reference, tmp_path):
    path, regions = recording
    output = tmp_path / "long.jsonl"
    argv = ["classify", str(model_dir), str(path), "--quiet", "--output", str(output)]
    assert mise_main([*argv, "--window_seconds", "3", "--hop_seconds", "1.5", "--num_workers", "0"]) == 0
    (result,) = [json.loads(line) for line in output.read_text().splitlines()]
    segments = result["segments"]
    assert len(segments) > 10 and "silent window(s) skipped" in result["notices"][0]
    assert all(s["end_s"] - s["start_s"] == pytest.approx(3.0, abs=1e-3) for s in segments)
    for emotion, start, end in regions:
        inside = [s["label"] for s in segments if start <= (s["start_s"] + s["end_s"]) / 2 < end]
        if emotion == "silence":  # windows wholly inside the pause are skipped
            assert not [s for s in segments if s["start_s"] >= start and s["end_s"] <= end]
            continue
        majority, count = Counter(inside).most_common(1)[0]
        assert majority == emotion and count > len(inside) / 2, (emotion, inside)
    # the file-level answer is the weighted mean of the windows; pipeline(window_seconds=) gives the same
    probabilities = np.array([[s["scores"][name] for name in EMOTIONS] for s in segments])
    assert np.all(probabilities.min(axis=0) <= [result["scores"][n] for n in EMOTIONS])
    windowed = reference(str(path), window_seconds=3.0, hop_seconds=1.5)
    assert max(abs(windowed[name] - result["scores"][name]) for name in EMOTIONS) < 2e-3
    assert reference(str(path)) != pytest.approx(windowed, abs=1e-3)  # without windows: segments at pauses


@pytest.fixture(scope="module")
def joined(held_out, tmp_path_factory) -> tuple[Path, list[tuple[float, float]], list[str]]:
    """12 held-out clips (4 per emotion, interleaved) joined with 0.5 s pauses of digital silence: the file, each
    clip's (start, end) in seconds and the clips' paths."""
    rows = [held_out[emotion][index] for index in range(4, 8) for emotion in EMOTIONS]
    parts, spans, position = [], [], 0.0
    for row in rows:
        waveform = load_audio(row["path"], RATE)[0]
        parts += [waveform, np.zeros(RATE // 2, np.float32)]
        spans.append((position, position + len(waveform) / RATE))
        position += len(waveform) / RATE + 0.5
    path = tmp_path_factory.mktemp("joined") / "joined_clips.wav"
    sf.write(path, np.concatenate(parts), RATE)
    return path, spans, [row["path"] for row in rows]


def test_default_segments_of_a_long_recording(model_dir, joined, reference, tmp_path):
    """By default a recording longer than the model's training clips is cut at pauses: one segment per clip (its
    speech and some of the silence around it), labelled mostly as the clip alone; `pipeline()` pools the same
    segments. (`bench/bench_segments.py` measures this on every held-out clip, with digital silence and noise.)"""
    path, spans, clips = joined
    output, plots = tmp_path / "joined.jsonl", tmp_path / "timelines"
    argv = ["classify", str(model_dir), str(path), "--quiet", "--num_workers", "0", "--output", str(output)]
    assert mise_main([*argv, "--timeline", str(plots)]) == 0
    (result,) = [json.loads(line) for line in output.read_text().splitlines()]
    assert (plots / "joined_clips.wav.png").stat().st_size > 10_000  # the timeline of its 12 segments
    _, high = AudioFileClassifier(str(model_dir)).utterance_seconds
    assert result["notices"][0].startswith("cut at pauses into 12 segment(s) of ")
    segments = result["segments"]
    assert len(segments) == len(spans)
    for segment, (start, end) in zip(segments, spans, strict=True):  # each clip's speech, in order
        assert start < (segment["start_s"] + segment["end_s"]) / 2 < end and segment["end_s"] > start + 1.0
        assert segment["end_s"] - segment["start_s"] <= high + 1e-3
    alone = [max(scores, key=scores.get) for scores in map(reference, clips)]
    agree = np.mean([segment["label"] == label for segment, label in zip(segments, alone, strict=True)])
    assert agree >= 0.75, (agree, [s["label"] for s in segments], alone)
    pooled = reference(str(path))
    assert max(abs(pooled[name] - result["scores"][name]) for name in EMOTIONS) < 2e-3


def test_classifier_object_and_the_space_timeline(model_dir, recording, app, tmp_path):  # noqa: F811
    path, _ = recording
    classifier = AudioFileClassifier(str(model_dir), window_seconds=4.0, hop_seconds=2.0)
    waveform, _ = load_audio(path, RATE)
    (result,) = classifier.classify_waveforms([("recording", waveform)])
    assert result.label in EMOTIONS and len(result.segments) > 5
    with pytest.raises(ValueError, match="exceeds"):
        AudioFileClassifier(str(model_dir), window_seconds=60.0)
    # the Space (its own fixture model) draws emotion over time for a long upload, titled with the answer it
    # gives for the file (one analysis for both), nothing for a short one
    shown = app.timeline(str(path))
    figure = shown["value"] if isinstance(shown, dict) else shown.value
    assert shown["visible"] is True and figure is not None
    scores, info = app.classify(str(path), "")
    label = max(scores, key=scores.get)
    title = figure.axes[0].get_title()
    assert f"**Prediction: {label}**" in info and f": {label} ({scores[label]:.0%}, " in title, (info, title)
    assert "Cut at pauses into" in info
    short = tmp_path / "short.wav"
    sf.write(short, waveform[RATE : 3 * RATE], RATE)
    assert app.timeline(str(short))["visible"] is False
