"""Corpus loading from a manifest CSV, an audiofolder and a local parquet dataset, on real RAVDESS clips."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import shutil
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
from conftest import corpus_dir

from mise.data import (
    check_class_sizes,
    format_summary,
    keep_emotions_per_speaker,
    load_corpus,
    write_rejections,
)
from modeling_mise.audio import AudioInputError, load_audio


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep the arrow caches that `datasets` writes inside the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.mark.parametrize(
    "name, clips, speakers, classes",
    [("ravdess", 720, 24, 8), ("emodb", 535, 10, 7)],
)
def test_development_corpus_manifest(name, clips, speakers, classes):
    folder = corpus_dir(name)
    with open(folder / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    corpus = load_corpus(folder / "manifest.csv")
    assert len(corpus) == clips
    assert (
        corpus.label_names == sorted({row["emotion"] for row in rows}) and len(corpus.label_names) == classes
    )
    assert corpus.id2label == dict(enumerate(corpus.label_names))
    assert corpus.label2id == {name: i for i, name in enumerate(corpus.label_names)}
    first = corpus.items[0]
    # relative paths resolve against the manifest's folder
    assert Path(first.path) == folder / rows[0]["path"] and Path(first.path).is_file()
    assert first.fingerprint == hashlib.sha256(Path(first.path).read_bytes()).hexdigest()
    assert first.audio is None and first.session is None
    assert first.transcript == rows[0]["transcript"]
    np.testing.assert_array_equal(corpus.labels(), [corpus.label2id[row["emotion"]] for row in rows])
    assert list(corpus.speakers()) == [row["speaker"] for row in rows]
    assert corpus.sessions() is None
    assert corpus.transcripts()[5] == rows[5]["transcript"]

    summary = corpus.summary()
    assert summary["clips"] == clips and summary["speakers"] == speakers
    assert summary["with_transcript"] == clips and summary["without_transcript"] == 0
    expected_hours = sum(float(row["duration_s"]) for row in rows) / 3600
    assert summary["hours"] == pytest.approx(expected_hours, abs=1e-3)
    counts = {name: sum(row["emotion"] == name for row in rows) for name in corpus.label_names}
    assert summary["clips_per_class"] == counts
    table = format_summary(summary)
    assert "speakers" in table and f"{corpus.label_names[0]}" in table and str(counts["neutral"]) in table
    assert table == corpus.format_summary()


def test_custom_columns_and_missing_transcripts(tmp_path, ravdess_rows):
    rows = ravdess_rows[:6]
    manifest = _write_csv(
        tmp_path / "m.csv",
        ["wav", "emo", "actor", "text", "sess", "extra"],
        [
            [r["path"], r["emotion"], r["speaker"], r["transcript"] if i % 2 else "", "S1", "x"]
            for i, r in enumerate(rows)
        ],
    )
    corpus = load_corpus(
        manifest,
        audio_column="wav",
        label_column="emo",
        speaker_column="actor",
        transcript_column="text",
        session_column="sess",
    )
    assert [item.path for item in corpus.items] == [r["path"] for r in rows]
    assert corpus.transcripts() == [
        None,
        rows[1]["transcript"],
        None,
        rows[3]["transcript"],
        None,
        rows[5]["transcript"],
    ]
    assert list(corpus.sessions()) == ["S1"] * 6
    assert corpus.summary()["with_transcript"] == 3 and corpus.summary()["without_transcript"] == 3
    # no transcript column at all is allowed too
    no_text = _write_csv(
        tmp_path / "n.csv",
        ["path", "emotion", "speaker"],
        [[r["path"], r["emotion"], r["speaker"]] for r in rows],
    )
    assert load_corpus(no_text).transcripts() == [None] * 6


def test_missing_column_and_empty_cells(tmp_path, ravdess_rows):
    r = ravdess_rows[0]
    no_speaker = _write_csv(tmp_path / "a.csv", ["path", "emotion"], [[r["path"], r["emotion"]]])
    with pytest.raises(ValueError, match=r"missing speaker column 'speaker'.*\['path', 'emotion'\]"):
        load_corpus(no_speaker)
    with pytest.raises(ValueError, match=r"missing label column 'mood'"):
        load_corpus(no_speaker, label_column="mood")
    empty_label = _write_csv(
        tmp_path / "b.csv",
        ["path", "emotion", "speaker"],
        [[r["path"], r["emotion"], "s1"], [r["path"], " ", "s1"]],
    )
    with pytest.raises(ValueError, match=r"b.csv: row 1 \(line 3\): empty label"):
        load_corpus(empty_label)
    empty_speaker = _write_csv(
        tmp_path / "c.csv", ["path", "emotion", "speaker"], [[r["path"], r["emotion"], ""]]
    )
    with pytest.raises(ValueError, match=r"row 0 \(line 2\): empty speaker"):
        load_corpus(empty_speaker)
    with pytest.raises(ValueError, match="file not found"):
        load_corpus(tmp_path / "absent.csv")


def test_split_column(tmp_path, ravdess_rows):
    rows = ravdess_rows[:6]
    given = ["Train", "train", "dev", "Development", "test", "testing"]
    header = ["path", "emotion", "speaker", "split"]
    cells = [
        [r["path"], r["emotion"], f"s{i}", part] for i, (r, part) in enumerate(zip(rows, given, strict=True))
    ]
    corpus = load_corpus(_write_csv(tmp_path / "m.csv", header, cells))
    assert list(corpus.splits()) == ["train", "train", "validation", "validation", "test", "test"]
    assert [item.split for item in corpus.subset([5, 0]).items] == ["test", "train"]
    assert load_corpus(tmp_path / "m.csv", split_column=None).splits() is None
    renamed = _write_csv(tmp_path / "p.csv", [*header[:3], "partition"], cells)
    assert load_corpus(renamed).splits() is None  # no `split` column: no given split
    assert list(load_corpus(renamed, split_column="partition").splits())[:3] == [
        "train",
        "train",
        "validation",
    ]

    cells[3][3] = "tst"
    with pytest.raises(ValueError, match=r"b.csv: row 3 \(line 5\): split 'tst' in column 'split' is not"):
        load_corpus(_write_csv(tmp_path / "b.csv", header, cells))
    cells[3][3] = " "
    with pytest.raises(ValueError, match=r"e.csv: row 3 \(line 5\): empty split in column 'split'"):
        load_corpus(_write_csv(tmp_path / "e.csv", header, cells))


def test_label_maps(tmp_path, ravdess_rows):
    paths = [r["path"] for r in ravdess_rows[:8]]
    codes = ["neu", "HAP", "exc", "Angry", "sad", "fru", "xxx", "Neutral"]
    manifest = _write_csv(
        tmp_path / "iemocap.csv",
        ["path", "emotion", "speaker"],
        [[p, c, f"s{i % 2}"] for i, (p, c) in enumerate(zip(paths, codes, strict=True))],
    )
    corpus = load_corpus(manifest, label_map="iemocap4")
    assert corpus.label_names == ["angry", "happy", "neutral", "sad"]
    assert [item.label for item in corpus.items] == ["neutral", "happy", "happy", "angry", "sad", "neutral"]
    assert [item.row for item in corpus.items] == [0, 1, 2, 3, 4, 7]
    assert corpus.summary()["dropped"] == {"fru": 1, "xxx": 1}

    corpus = load_corpus(manifest, label_map="iemocap4", drop_labels=["sad", "EXC"])
    assert [item.label for item in corpus.items] == ["neutral", "happy", "angry", "neutral"]

    user_map = {
        "neu": "calm",
        "neutral": "calm",
        "hap": "joy",
        "exc": "joy",
        "angry": "anger",
        "sad": None,
        "fru": None,
        "xxx": None,
    }
    corpus = load_corpus(manifest, label_map=user_map)
    assert corpus.label_names == ["anger", "calm", "joy"]
    del user_map["xxx"]
    with pytest.raises(ValueError, match=r"row 6 \(line 8\): label 'xxx' is not covered"):
        load_corpus(manifest, label_map=user_map)
    with pytest.raises(ValueError, match="unknown preset"):
        load_corpus(manifest, label_map="iemocap9")


def _copy_clips(rows: list[dict], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(row["path"], folder / Path(row["path"]).name)) for row in rows]


def test_load_waveforms_rejects_bad_files(tmp_path, ravdess_rows):
    good = _copy_clips(ravdess_rows[:4], tmp_path / "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.wav").write_text("this is not audio\n")
    (bad / "empty.wav").write_bytes(b"")
    soundfile.write(bad / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    soundfile.write(bad / "short.wav", 0.5 * np.sin(np.arange(1600) / 5).astype(np.float32), 16000)
    nan_audio = np.full(16000, 0.1, dtype=np.float32)
    nan_audio[100] = np.nan
    soundfile.write(bad / "nan.wav", nan_audio, 16000, subtype="FLOAT")
    bad_names = ["text.wav", "empty.wav", "silent.wav", "short.wav", "nan.wav", "missing.wav"]
    files = [good[0], bad / bad_names[0], good[1], *(bad / n for n in bad_names[1:]), good[2], good[3]]
    manifest = _write_csv(tmp_path / "m.csv", ["path", "emotion", "speaker"], [[f, "e", "s"] for f in files])
    corpus = load_corpus(manifest)
    assert len(corpus) == 10
    assert corpus.items[-3].fingerprint == ""  # missing.wav

    waveforms, usable, rejections = corpus.load_waveforms(16000, show_progress=False)
    assert len(waveforms) == len(usable) == 4
    assert [item.path for item in usable.items] == [str(p) for p in good]
    assert [item.index for item in usable.items] == [0, 1, 2, 3]
    np.testing.assert_array_equal(waveforms[1], load_audio(good[1], 16000)[0])
    assert usable.label_names == corpus.label_names
    reasons = {Path(r.path).name: r.reason for r in rejections}
    assert sorted(reasons) == sorted(bad_names)
    assert "not a readable audio file" in reasons["text.wav"]
    assert "empty" in reasons["empty.wav"]
    assert reasons["silent.wav"].startswith("silent")
    assert reasons["short.wav"].startswith("too short (0.10 s")
    assert "NaN" in reasons["nan.wav"]
    assert "not found" in reasons["missing.wav"]
    assert [r.row for r in rejections] == [1, 3, 4, 5, 6, 7]

    report = tmp_path / "report" / "rejected.csv"
    write_rejections(rejections, report)
    with open(report, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [row["reason"] for row in written] == [r.reason for r in rejections]
    assert written[0]["row"] == "1" and written[0]["path"].endswith("text.wav")

    with pytest.raises(AudioInputError, match=r"text.wav \(row 1\)"):
        corpus.load_waveforms(16000, strict=True, show_progress=False)
    with pytest.raises(ValueError, match="none of the 6 clips is usable"):
        corpus.subset([1, 3, 4, 5, 6, 7]).load_waveforms(16000, show_progress=False)


def test_audiofolder(tmp_path, ravdess_rows, hf_cache):
    rows = [
        r
        for r in ravdess_rows
        if r["speaker"] in ("Actor_01", "Actor_02") and r["emotion"] in ("angry", "sad")
    ][:8]
    root = tmp_path / "folder"
    for row in rows:
        _copy_clips([row], root / row["emotion"])
    relative = [f"{row['emotion']}/{Path(row['path']).name}" for row in rows]
    metadata = [[name, row["speaker"], row["transcript"]] for name, row in zip(relative, rows, strict=True)]
    _write_csv(root / "metadata.csv", ["file_name", "speaker", "transcript"], metadata)

    corpus = load_corpus(root)  # labels from folder names, speaker and transcript from metadata.csv
    by_name = {Path(item.path).name: item for item in corpus.items}
    assert len(corpus) == 8 and corpus.label_names == ["angry", "sad"]
    for row in rows:
        item = by_name[Path(row["path"]).name]
        assert (item.label, item.speaker, item.transcript) == (
            row["emotion"],
            row["speaker"],
            row["transcript"],
        )
        assert item.fingerprint == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()

    # a label column in metadata wins over the folder names; "audiofolder" + data_dir works too
    metadata = [
        line + [{"angry": "ANG", "sad": "SAD"}[row["emotion"]]]
        for line, row in zip(metadata, rows, strict=True)
    ]
    _write_csv(root / "metadata.csv", ["file_name", "speaker", "transcript", "emotion"], metadata)
    corpus = load_corpus("audiofolder", data_dir=str(root))
    assert corpus.label_names == ["ANG", "SAD"]

    _write_csv(root / "metadata.csv", ["file_name", "transcript"], [line[::2] for line in metadata])
    with pytest.raises(ValueError, match=r"missing speaker column 'speaker'.*metadata.csv"):
        load_corpus(root)


def _parquet_dataset(rows: list[dict], folder: Path) -> tuple[Path, list[bytes]]:
    """A local dataset folder with one parquet file: WAV and FLAC clips embedded as bytes."""
    blobs = []
    for i, row in enumerate(rows):
        if i % 2:  # re-encode every other clip as FLAC
            waveform, rate = soundfile.read(row["path"], dtype="int16")
            buffer = io.BytesIO()
            soundfile.write(buffer, waveform, rate, format="FLAC")
            blobs.append(buffer.getvalue())
        else:
            blobs.append(Path(row["path"]).read_bytes())
    names = sorted({row["emotion"] for row in rows})
    features = datasets.Features(
        {
            "audio": datasets.Audio(),
            "emo": datasets.ClassLabel(names=names),
            "actor": datasets.Value("string"),
            "text": datasets.Value("string"),
        }
    )
    dataset = datasets.Dataset.from_dict(
        {
            "audio": [
                {"bytes": b, "path": f"clip{i}.{'flac' if i % 2 else 'wav'}"} for i, b in enumerate(blobs)
            ],
            "emo": [names.index(row["emotion"]) for row in rows],
            "actor": [row["speaker"] for row in rows],
            "text": [row["transcript"] if i != 2 else None for i, row in enumerate(rows)],
        },
        features=features,
    )
    (folder / "data").mkdir(parents=True)
    dataset.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder, blobs


def test_local_parquet_dataset(tmp_path, ravdess_rows, hf_cache):
    rows = ravdess_rows[:2] + ravdess_rows[60:62] + ravdess_rows[300:302]
    folder, blobs = _parquet_dataset(rows, tmp_path / "dataset")
    corpus = load_corpus(str(folder), label_column="emo", speaker_column="actor", transcript_column="text")
    assert len(corpus) == 6
    assert [item.label for item in corpus.items] == [row["emotion"] for row in rows]
    assert [item.speaker for item in corpus.items] == [row["speaker"] for row in rows]
    assert corpus.transcripts()[2] is None and corpus.transcripts()[3] == rows[3]["transcript"]
    for item, blob in zip(corpus.items, blobs, strict=True):
        assert item.path is None and item.audio["bytes"] == blob
        assert item.fingerprint == hashlib.sha256(blob).hexdigest()
    assert corpus.summary()["hours"] == pytest.approx(
        sum(float(r["duration_s"]) for r in rows) / 3600, abs=1e-4
    )

    # WAV and FLAC bytes decode through soundfile to the same samples as the original files
    waveforms, usable, rejections = corpus.load_waveforms(16000, show_progress=False)
    assert not rejections and len(usable) == 6
    for waveform, row in zip(waveforms, rows, strict=True):
        np.testing.assert_allclose(waveform, load_audio(row["path"], 16000)[0], atol=1e-6)

    with pytest.raises(ValueError, match=r"missing label column 'emotion'.*'emo'"):
        load_corpus(str(folder), speaker_column="actor")

    # the same data saved with save_to_disk
    saved = tmp_path / "saved"
    datasets.load_dataset(str(folder), split="train").save_to_disk(str(saved))
    again = load_corpus(str(saved), label_column="emo", speaker_column="actor", transcript_column="text")
    assert again.fingerprints() == corpus.fingerprints()


def test_corrupt_embedded_audio_is_rejected(tmp_path, ravdess_rows, hf_cache):
    rows = ravdess_rows[:3]
    dataset = datasets.Dataset.from_dict(
        {
            "audio": [
                {"bytes": Path(rows[0]["path"]).read_bytes(), "path": "a.wav"},
                {"bytes": b"junk", "path": "b.wav"},
            ],
            "emotion": ["x", "y"],
            "speaker": ["s1", "s2"],
        },
        features=datasets.Features(
            {
                "audio": datasets.Audio(),
                "emotion": datasets.Value("string"),
                "speaker": datasets.Value("string"),
            }
        ),
    )
    dataset.to_parquet(str(tmp_path / "two.parquet"))
    corpus = load_corpus(tmp_path / "two.parquet")
    waveforms, usable, rejections = corpus.load_waveforms(16000, show_progress=False)
    assert len(waveforms) == 1 and [r.row for r in rejections] == [1]
    assert rejections[0].path == "b.wav (row 1)" and "not a readable audio file" in rejections[0].reason


def test_a_corpus_cut_to_speakers_heard_in_few_emotions(caplog):
    """`emotions_per_speaker` makes a corpus of speakers heard in few emotions out of one that has them all: each
    speaker keeps every clip of at most k of their emotions, each emotion stays heard from as many speakers as
    the corpus allows, the same clips on every call; given as a run's argument, the run reads the cut corpus."""
    from training.arguments import ConfigError, DataArguments
    from training.features import read_corpus

    manifest = corpus_dir("ravdess") / "manifest.csv"
    corpus = load_corpus(manifest)
    with caplog.at_level(logging.INFO, logger="mise.data"):
        cut = keep_emotions_per_speaker(corpus, 2)
    assert "at most 2 emotion(s): 180 of 720 clips kept" in caplog.text
    heard: dict[str, set[str]] = {}
    for item in cut.items:
        heard.setdefault(item.speaker, set()).add(item.label)
    assert len(heard) == 24 and all(len(labels) == 2 for labels in heard.values())
    assert Counter(label for labels in heard.values() for label in labels) == dict.fromkeys(
        corpus.label_names, 6
    )
    kept = {(item.speaker, item.label) for item in cut.items}
    assert [item.path for item in cut.items] == [
        item.path for item in corpus.items if (item.speaker, item.label) in kept
    ]
    assert cut.label_names == corpus.label_names and [item.index for item in cut.items] == list(range(180))
    assert [item.path for item in keep_emotions_per_speaker(corpus, 2).items] == [
        item.path for item in cut.items
    ]
    assert len(keep_emotions_per_speaker(corpus, 8)) == len(corpus)
    # a speaker heard in fewer emotions than asked keeps them all; the emotions stay spread over the speakers
    one = keep_emotions_per_speaker(cut, 1)
    assert len({item.speaker for item in one.items}) == 24
    assert Counter(Counter({item.speaker: item.label for item in one.items}.values()).values()) == {3: 8}
    with pytest.raises(ValueError, match="emotions_per_speaker: must be >= 1"):
        keep_emotions_per_speaker(corpus, 0)
    # Emo-DB's speakers have uneven clips per emotion: ties go to the emotion with the fewest clips kept, so that
    # each class keeps enough clips to train (by speakers alone, sad kept 8 clips from 2 speakers)
    emodb = keep_emotions_per_speaker(load_corpus(corpus_dir("emodb") / "manifest.csv"), 2)
    check_class_sizes(emodb)
    assert len(emodb) == 165 and min(Counter(item.label for item in emodb.items).values()) == 18

    data_args = DataArguments(dataset=str(manifest), emotions_per_speaker=2)
    assert [item.path for item in read_corpus(data_args).items] == [item.path for item in cut.items]
    with pytest.raises(ConfigError, match="emotions_per_speaker: must be > 0"):
        DataArguments(dataset=str(manifest), emotions_per_speaker=0)
