"""Adaptation to a new recording setup without labels: the statistics of unlabelled clips of the setup, shrunk
toward the training statistics (`MiseForAudioClassification.adaptation_statistics`), through `pipeline(...,
adaptation=)`, `mise classify --adapt` and the Space; unusable adaptation clips are named and skipped.

The model is the RAVDESS-trained fixture model (eGeMAPS functionals); the new setup is Emo-DB (another language,
studio and microphone)."""

from __future__ import annotations

import copy
import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from test_space import app, examples_dir  # noqa: F401  (the Space fixtures)
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline

import modeling_mise  # noqa: F401  (registers the Auto classes)
from mise.cli import main as mise_main
from modeling_mise.audio import load_audio

RATE = 16000


@pytest.fixture(scope="module")
def emodb_clips(emodb_dir) -> list[str]:
    """Ten Emo-DB clips of several speakers and emotions: eight to adapt with, two to classify."""
    with open(emodb_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [str(emodb_dir / row["path"]) for row in rows[::53][:10]]


@pytest.fixture(scope="module")
def setup_folder(emodb_clips, clips, tmp_path_factory) -> Path:
    """A folder of unlabelled clips of the new setup: eight Emo-DB clips, a text file and a silent clip."""
    folder = tmp_path_factory.mktemp("new_setup")
    for path in emodb_clips[:8]:
        shutil.copy(path, folder / Path(path).name)
    shutil.copy(clips["notes"], folder / "notes.wav")
    shutil.copy(clips["silent"], folder / "silent.wav")
    return folder


@pytest.fixture(scope="module")
def loaded(space_model):
    return (
        AutoModelForAudioClassification.from_pretrained(space_model).eval(),
        AutoFeatureExtractor.from_pretrained(space_model),
    )


def adapted_scores(loaded, adaptation: list[str], target: str) -> dict[str, float]:
    """The model's scores of `target` standardised with the statistics of `adaptation`, computed by hand."""
    model, extractor = loaded
    inputs = extractor([load_audio(path, RATE)[0] for path in adaptation], return_tensors="pt")
    statistics = model.adaptation_statistics(**inputs)
    with torch.no_grad():
        logits = model(
            **extractor(load_audio(target, RATE)[0], return_tensors="pt"), adaptation_statistics=statistics
        )
    probabilities = logits.logits.softmax(-1)[0].tolist()
    return {model.config.id2label[index]: p for index, p in enumerate(probabilities)}


def test_adaptation_statistics_shrink_toward_the_training_statistics(loaded, emodb_clips):
    model, extractor = loaded
    inputs = extractor([load_audio(path, RATE)[0] for path in emodb_clips[:8]], return_tensors="pt")
    with torch.no_grad():
        hidden = model.audio_encoder(**inputs)
    n0, n = model.config.adaptation_prior_strength, hidden.shape[0]
    assert n0 == 2.0
    mean, std = model.adaptation_statistics(**inputs)
    training_mean, training_var = model.aligner.audio_mean, model.aligner.audio_std.pow(2)
    assert torch.allclose(mean, (n * hidden.mean(0) + n0 * training_mean) / (n + n0), atol=1e-5)
    variance = (n * hidden.var(0, unbiased=False) + n0 * training_var) / (n + n0)
    assert torch.allclose(std, variance.sqrt(), rtol=1e-4)
    # standardising with them is the released aligner with its statistics replaced, nothing else
    target = extractor(load_audio(emodb_clips[9], RATE)[0], return_tensors="pt")
    replaced = copy.deepcopy(model)
    replaced.aligner.set_feature_statistics(mean, std)
    with torch.no_grad():
        expected = replaced(**target).logits
        adapted = model(**target, adaptation_statistics=(mean, std)).logits
        plain = model(**target).logits
    assert torch.allclose(adapted, expected, atol=1e-4) and not torch.allclose(adapted, plain, atol=1e-3)
    with pytest.raises(ValueError, match="not both"):
        model(**target, adaptation_statistics=(mean, std), speaker_statistics=(mean, std))


def test_pipeline_adapts_to_a_folder_and_skips_unusable_clips(
    loaded, space_model, setup_folder, emodb_clips, caplog
):
    classify = pipeline("audio-classification", model=str(space_model))
    target = emodb_clips[9]
    with caplog.at_level(logging.WARNING, logger="modeling_mise"):
        adapted = classify(target, top_k=None, adaptation=str(setup_folder))
    label = "adapted (8 clips, 2 skipped, shrunk toward the training statistics as 2 clips)"
    assert {score["normalization"] for score in adapted} == {label}
    warnings = [record.getMessage() for record in caplog.records]
    for name, reason in (("notes.wav", "not a readable audio file"), ("silent.wav", "silent")):
        assert any(name in text and reason in text and "(skipped)" in text for text in warnings), warnings
    expected = adapted_scores(loaded, [str(setup_folder / Path(p).name) for p in emodb_clips[:8]], target)
    assert {s["label"]: s["score"] for s in adapted} == pytest.approx(expected, abs=1e-4)
    plain = classify(target, top_k=None)
    assert {s["normalization"] for s in plain} == {"training"}
    assert {s["label"]: s["score"] for s in plain} != pytest.approx(expected, abs=1e-3)
    bad = [str(setup_folder / "notes.wav"), str(setup_folder / "silent.wav")]
    with pytest.raises(ValueError, match=r"none of the 2 clip\(s\) is usable: .*notes\.wav.*silent\.wav"):
        classify(target, adaptation=bad)
    with pytest.raises(ValueError, match="not both"):
        classify(target, adaptation=emodb_clips[:2], enrolment=emodb_clips[:2])


def test_cli_adapt_names_the_skipped_clips_and_the_statistics(
    space_model, setup_folder, emodb_clips, tmp_path, capsys
):
    output = tmp_path / "adapted.jsonl"
    argv = ["classify", str(space_model), *emodb_clips[8:], "--quiet", "--num_workers", "0"]
    assert mise_main([*argv, "--output", str(output), "--adapt", str(setup_folder)]) == 0
    err = capsys.readouterr().err
    label = "adapted (8 clips, 2 skipped, shrunk toward the training statistics as 2 clips)"
    assert f"mise classify: statistics: {label}" in err
    assert f"mise classify: adaptation: {setup_folder / 'notes.wav'}: not a readable audio file" in err
    assert f"adaptation: {setup_folder / 'silent.wav'}: silent" in err and err.count("(skipped)") == 2
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["normalization"] for row in rows] == [label, label]
    classify = pipeline("audio-classification", model=str(space_model))
    for row, path in zip(rows, emodb_clips[8:], strict=True):
        expected = {s["label"]: s["score"] for s in classify(path, top_k=None, adaptation=str(setup_folder))}
        assert row["scores"] == pytest.approx(expected, abs=1e-4)
    assert mise_main([*argv, "--adapt", str(setup_folder), "--enrolment", emodb_clips[0]]) == 2
    assert "not both" in capsys.readouterr().err


def test_space_adapts_to_uploaded_clips(app, loaded, emodb_clips, clips):  # noqa: F811
    uploads = [*emodb_clips[:8], str(clips["notes"])]
    scores, info = app.classify(emodb_clips[9], "", None, uploads)
    label = "adapted (8 clips, 1 skipped, shrunk toward the training statistics as 2 clips)"
    assert f"Statistics: {label}." in info and "Skipped notes.wav: not a readable audio file" in info
    assert scores == pytest.approx(adapted_scores(loaded, emodb_clips[:8], emodb_clips[9]), abs=1e-4)
    with pytest.warns(UserWarning):
        scores, info = app.classify(emodb_clips[9], "", None, [str(clips["notes"])])
    assert (
        scores is None
        and "none of the clips of the recording setup is usable" in info
        and "notes.wav" in info
    )
