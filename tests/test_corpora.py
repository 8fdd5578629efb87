"""Several corpora in one run: corpus files stacked (or a `corpora` list), speakers named per corpus, one label
space, statistics per corpus with global statistics, leave-one-corpus-out folds, and a released model that reads raw
features; single-corpus runs are untouched.

Real clips: the RAVDESS and Emo-DB copies beside the repository (a few speakers of each for the training runs).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_training import TINY

from mise.data import SHARED_EMOTIONS, combine_corpora, load_corpus
from mise.folds import make_folds
from training.arguments import ConfigError, DataArguments, config_hash, parse_arguments
from training.features import read_corpus
from training.pipeline import build_folds
from training.speaker_normalization import NormalizationChoice, SpeakerNormalization
from training.train import main

REPO = Path(__file__).resolve().parents[1]
CORPUS_FILES = REPO / "training" / "configs" / "corpora"
RAVDESS_ONLY, EMODB_ONLY = ["calm", "surprise"], ["bored"]


def corpus_entry(folder: Path, **keys) -> dict:
    return {"dataset": str(folder / "manifest.csv"), **keys}


def two_corpora(ravdess_dir: Path, emodb_dir: Path, **keys) -> DataArguments:
    entries = [corpus_entry(ravdess_dir, corpus_name="ravdess"), corpus_entry(emodb_dir, corpus_name="emodb")]
    return DataArguments(corpora=entries, **keys)


# ------------------------------------------------------------------------------------------- the arguments
def test_stacked_corpus_files_are_trained_together(tmp_path):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("dataset: manifest.csv\ndata_dir: data/first\nlabel_map: shared6\n")
    second.write_text("dataset: manifest.csv\ndata_dir: data/second\ntranscript_column: none\n")
    method = str(REPO / "training" / "configs" / "mise.yaml")
    data, model, training = parse_arguments([method, str(first), str(second), "--output_dir", "out"])
    assert data.dataset is None and data.corpora == [str(first), str(second)]
    assert [(a.corpus_name, a.data_dir, a.label_map, a.transcript_column) for a in data.corpus_args] == [
        ("first", "data/first", "shared6", "transcript"),
        ("second", "data/second", None, None),
    ]
    # a `corpora` list in a config is the same run
    listed = tmp_path / "both.yaml"
    listed.write_text(yaml.safe_dump({"corpora": [str(first), str(second)]}))
    again = parse_arguments([method, str(listed), "--output_dir", "out"])
    assert config_hash(*again) == config_hash(data, model, training)
    # a flag of a corpus key applies to every corpus and changes the run; paths and names stay each file's
    flagged = parse_arguments(
        [method, str(first), str(second), "--output_dir", "out", "--drop_labels", "sad"]
    )
    assert [a.drop_labels for a in flagged[0].corpus_args] == [["sad"], ["sad"]]
    assert config_hash(*flagged) != config_hash(data, model, training)
    with pytest.raises(ConfigError, match="--data_dir: with several corpora each corpus file gives its own"):
        parse_arguments([method, str(first), str(second), "--output_dir", "out", "--data_dir", "x"])
    second.write_text("dataset: manifest.csv\ndata_dir: data/second\nprotocol: loco\n")
    with pytest.raises(ConfigError, match=r"second.yaml: \['protocol'\] are not corpus keys"):
        parse_arguments([method, str(first), str(second), "--output_dir", "out"])
    second.write_text("dataset: manifest.csv\ndata_dir: data/second\ncorpus_name: first\n")
    with pytest.raises(ConfigError, match="corpus_name: 'first'.*must be unique"):
        parse_arguments([method, str(first), str(second), "--output_dir", "out"])
    with pytest.raises(ConfigError, match="protocol: loco .* needs several corpora"):
        parse_arguments([method, str(first), "--output_dir", "out", "--protocol", "loco"])
    with pytest.raises(ConfigError, match="dataset / corpora"):
        parse_arguments([method, str(listed), "--output_dir", "out", "--dataset", "x.csv"])


def test_one_corpus_file_is_the_run_it_always_was():
    """One corpus file merges into the run's arguments as before, and the keys of several corpora leave its config
    hash (what a resumed run checks) as it was."""
    files = [str(REPO / "training" / "configs" / "mise.yaml"), str(CORPUS_FILES / "ravdess.yaml")]
    data, model, training = parse_arguments([*files, "--output_dir", "out"])
    assert data.corpora == [] and data.corpus_args == [] and data.data_dir.endswith("ravdess")
    extra = parse_arguments([*files, "--output_dir", "out", "--keep_unshared_labels", "true"])
    assert config_hash(*extra) == config_hash(data, model, training)
    # so does the option that cuts a corpus to few emotions per speaker, until it is given
    assert data.emotions_per_speaker is None
    cut = parse_arguments([*files, "--output_dir", "out", "--emotions_per_speaker", "2"])
    assert cut[0].emotions_per_speaker == 2 and config_hash(*cut) != config_hash(data, model, training)


# ------------------------------------------------------------------------------- the label space (real clips)
def test_two_corpora_on_the_classes_they_share(ravdess_dir, emodb_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="mise.data"):
        corpus = read_corpus(two_corpora(ravdess_dir, emodb_dir))
    assert tuple(corpus.label_names) == SHARED_EMOTIONS
    speakers = set(corpus.speakers().tolist())
    assert len(speakers) == 34 and {"ravdess.Actor_01", "emodb.spk03"} <= speakers
    assert corpus.corpora().tolist().count("ravdess") == 720 - 192 and len(corpus) == 720 - 192 + 535 - 81
    parts = corpus.parts
    assert parts["ravdess"]["unshared"] == {"calm": 96, "surprise": 96} and parts["emodb"]["unshared"] == {
        "bored": 81
    }
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert (
        "calm (96), surprise (96)" in warnings
        and "bored (81)" in warnings
        and "keep_unshared_labels" in warnings
    )
    assert "corpus emodb: 454 clips, 10 speakers; dropped: bored (81)" in corpus.format_summary()
    kept = read_corpus(two_corpora(ravdess_dir, emodb_dir, keep_unshared_labels=True))
    assert (
        sorted(kept.label_names) == sorted([*SHARED_EMOTIONS, *RAVDESS_ONLY, *EMODB_ONLY])
        and len(kept) == 1255
    )


def test_label_maps_bring_each_corpus_onto_the_shared_emotions(ravdess_rows, emodb_dir, tmp_path):
    """`shared6` maps other spellings of the six shared emotions (here the original RAVDESS names) onto them and
    drops the rest; a corpus whose labels map onto none of the others' stops, naming its labels."""
    original = {"fear": "fearful", "surprise": "surprised", "angry": "Anger"}
    rows = [{**row, "emotion": original.get(row["emotion"], row["emotion"])} for row in ravdess_rows]
    manifest = _manifest(tmp_path / "ravdess_original.csv", rows)
    corpus = load_corpus(manifest, label_map="shared6")
    assert tuple(corpus.label_names) == SHARED_EMOTIONS and corpus.dropped == {"calm": 96, "surprised": 96}
    emodb = load_corpus(emodb_dir / "manifest.csv")
    letters = {
        "angry": "W",
        "bored": "L",
        "disgust": "E",
        "fear": "A",
        "happy": "F",
        "neutral": "N",
        "sad": "T",
    }
    coded = load_corpus(emodb_dir / "manifest.csv", label_map=letters)
    message = (
        r"corpus 'emodb' \(.*\) has labels \['A', 'E', 'F', 'L', 'N', 'T', 'W'\]: none of them is a label"
    )
    with pytest.raises(ValueError, match=message):
        combine_corpora({"ravdess": corpus, "emodb": coded})
    both = combine_corpora({"ravdess": corpus, "emodb": emodb})
    assert tuple(both.label_names) == SHARED_EMOTIONS and both.parts["ravdess"]["dropped"] == corpus.dropped


# ------------------------------------------------------------------------------------ leave one corpus out
def test_leave_one_corpus_out_folds(ravdess_dir, emodb_dir):
    data_args = two_corpora(ravdess_dir, emodb_dir, protocol="loco", num_validation_speakers=2)
    corpus = read_corpus(data_args)
    corpora, speakers = corpus.corpora(), corpus.speakers()
    folds = build_folds(data_args, corpus, seed=0)
    assert [fold.name for fold in folds] == ["corpus-emodb", "corpus-ravdess"]
    for fold, held_out in zip(folds, ("emodb", "ravdess"), strict=True):
        assert set(corpora[fold.test]) == {held_out} and len(fold.test) == (corpora == held_out).sum()
        assert set(corpora[fold.train]) == set(corpora[fold.validation]) == {"ravdess", "emodb"} - {held_out}
        assert len(fold.validation_speakers) == 2 and not set(speakers[fold.train]) & set(
            fold.validation_speakers
        )
    # with the classes only one corpus has kept, a held-out corpus is tested on the classes the others have
    kept_args = replace(data_args, keep_unshared_labels=True)
    kept = read_corpus(kept_args)
    with pytest.warns(UserWarning, match=r"192 clip\(s\) of 'ravdess' of classes the training corpora lack"):
        held_out = {fold.name: fold for fold in build_folds(kept_args, kept, seed=0)}["corpus-ravdess"]
    tested = {kept.id2label[int(label)] for label in kept.labels()[held_out.test]}
    assert tested == set(SHARED_EMOTIONS) and len(held_out.test) == 528


def test_a_held_out_corpus_without_a_shared_class_stops():
    labels = np.array([0, 1, 0, 1, 2, 2, 2, 2])
    speakers = np.array(["a1", "a1", "a2", "a2", "b1", "b2", "b1", "b2"])
    corpora = np.array(["a"] * 4 + ["b"] * 4)
    message = r"fold 'corpus-a': the held-out corpus 'a' has no class .*\(its classes: \['angry', 'sad'\]; theirs: \['calm'\]"
    with pytest.raises(ValueError, match=message):
        make_folds(speakers, labels, protocol="loco", corpora=corpora, num_validation_speakers=1,
                   id2label={0: "angry", 1: "sad", 2: "calm"})  # fmt: skip
    with pytest.raises(ValueError, match="protocol 'loco' needs at least two corpora"):
        make_folds(speakers, labels, protocol="loco", corpora=["a"] * 8, num_validation_speakers=1)


# ---------------------------------------------------------------------------- one run on two corpora (real clips)
@pytest.fixture(scope="module")
def corpus_files(ravdess_rows, emodb_dir, tmp_path_factory) -> list[Path]:
    """Corpus files of 4 RAVDESS and 3 Emo-DB speakers (manifests with absolute paths)."""
    folder = tmp_path_factory.mktemp("two_corpora")
    with open(emodb_dir / "manifest.csv", newline="") as handle:
        emodb = [{**row, "path": str(emodb_dir / row["path"])} for row in csv.DictReader(handle)]
    files = []
    for name, rows, speakers in (
        ("ravdess", ravdess_rows, ("Actor_01", "Actor_02", "Actor_03", "Actor_04")),
        ("emodb", emodb, ("spk03", "spk08", "spk10")),
    ):
        manifest = _manifest(folder / f"{name}.csv", [row for row in rows if row["speaker"] in speakers])
        files.append(folder / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump({"dataset": str(manifest)}))
    return files


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory) -> Path:
    """One feature cache for the runs of this module."""
    return tmp_path_factory.mktemp("two_corpora_cache")


@pytest.fixture(scope="module")
def loco_run(corpus_files, corpus_cache, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("loco") / "out"
    cache = corpus_cache
    argv = [*map(str, corpus_files), "--output_dir", str(output_dir), "--cache_dir", str(cache), *TINY,
            "--protocol", "loco", "--speaker_normalization", "false", "--report_to", "none"]  # fmt: skip
    main(argv)
    return output_dir


def test_a_loco_run_scores_each_corpus_adapted_and_as_released(loco_run):
    summary = json.loads((loco_run / "summary.json").read_text())
    info = json.loads((loco_run / "run_info.json").read_text())
    assert info["folds"] == ["corpus-emodb", "corpus-ravdess"] and set(info["corpus"]["corpora"]) == {
        "ravdess",
        "emodb",
    }
    corpora = summary["corpora"]["corpora"]
    records = {
        name: json.loads((loco_run / "folds" / f"corpus-{name}" / "metrics.json").read_text())
        for name in corpora
    }
    for name, entry in corpora.items():
        record = records[name]
        assert record["test_speakers"][0].startswith(f"{name}.") and entry["test_clips"] == len(
            record["y_true"]
        )
        assert all(speaker.split(".")[0] != name for speaker in record["validation_speakers"])
        assert len(record["released_predictions"]) == len(record["y_true"])
        assert entry["own"]["uar"] == pytest.approx(record["uar"])  # one fold per corpus
        assert entry["test_classes"] == list(SHARED_EMOTIONS)
    truth = np.concatenate([records[name]["y_true"] for name in ("emodb", "ravdess")])
    released = np.concatenate([records[name]["released_predictions"] for name in ("emodb", "ravdess")])
    assert summary["released_uar_pooled"] == summary["as_released"]["without_enrolment"]
    recall = [np.mean(released[truth == label] == label) for label in np.unique(truth)]
    assert summary["released_uar_pooled"] == pytest.approx(np.mean(recall))
    assert summary["as_released"]["statistics"] == "training corpora"


def test_the_released_model_reads_raw_features(loco_run, corpus_files, ravdess_rows):
    """The aligner trained on features standardised per corpus is released with the training corpora's pooled
    statistics folded into its own: the released model on a raw clip is the trained pair on that clip standardised
    with those statistics."""
    from accelerate import PartialState
    from transformers import pipeline

    import modeling_mise  # noqa: F401  (registers the Auto classes)
    from modeling_mise import MiseAlignerModel, MiseClassifierModel
    from modeling_mise.audio import load_audio
    from modeling_mise.layers import feature_statistics, standardize
    from training.features import prepare_features

    config = json.loads((loco_run / "run_info.json").read_text())["config"]
    argv = [*map(str, corpus_files), "--output_dir", "x", *TINY, "--cache_dir", config["cache_dir"]]
    data_args, model_args, _ = parse_arguments(argv)
    prepared = prepare_features(data_args, model_args, loco_run / "features_again", PartialState())
    mean, std = feature_statistics(prepared.features.audio)  # every clip trains the released models
    aligner = MiseAlignerModel.from_pretrained(loco_run / "final" / "aligner").eval()
    classifier = MiseClassifierModel.from_pretrained(loco_run / "final" / "classifier").eval()
    released = MiseAlignerModel.from_pretrained(loco_run / "models" / "mise-aligner")
    assert torch.allclose(released.audio_mean, mean + std * aligner.audio_mean, atol=1e-4)
    assert torch.allclose(released.audio_std, std * aligner.audio_std, rtol=1e-5)
    model_dir = loco_run / "models" / "mise-audio-classifier"
    classify = pipeline("audio-classification", model=str(model_dir))
    clip = ravdess_rows[0]["path"]  # 3.3 s: one segment of the model's utterance range
    hidden = classify.model.audio_encoder(torch.as_tensor(load_audio(clip, 16000)[0])[None])
    with torch.no_grad():
        z = aligner.get_audio_features(standardize(hidden, mean, std))
        expected = classifier(features=z).logits.softmax(-1)[0]
    scores = {score["label"]: score["score"] for score in classify(clip, top_k=None)}
    assert [scores[classify.model.config.id2label[i]] for i in range(6)] == pytest.approx(
        expected.tolist(), abs=1e-4
    )


def test_the_released_model_adapts_to_a_new_corpus(loco_run, emodb_dir, clips, tmp_path, capsys):
    """Adaptation without labels in `pipeline()` and `mise classify --adapt` with the model of two corpora: an
    unusable clip of the new set-up is named and skipped, and counted in what the result says."""
    from transformers import pipeline

    from mise.cli import main as mise_main

    with open(emodb_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    setup = tmp_path / "setup"
    setup.mkdir()
    for row in rows[1::60][:6]:
        shutil.copy(emodb_dir / row["path"], setup / Path(row["path"]).name)
    shutil.copy(clips["silent"], setup / "silent.wav")
    target = str(emodb_dir / rows[0]["path"])
    model = str(loco_run / "models" / "mise-audio-classifier")
    adapted = pipeline("audio-classification", model=model)(target, top_k=None, adaptation=str(setup))
    label = "adapted (6 clips, 1 skipped, shrunk toward the training statistics as 2 clips)"
    assert {score["normalization"] for score in adapted} == {label}
    output = tmp_path / "adapted.jsonl"
    assert mise_main(["classify", model, target, "--quiet", "--num_workers", "0", "--output", str(output),
                      "--adapt", str(setup)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert f"adaptation: {setup / 'silent.wav'}: silent" in err and f"statistics: {label}" in err
    row = json.loads(output.read_text().splitlines()[0])
    assert row["scores"] == pytest.approx({s["label"]: s["score"] for s in adapted}, abs=1e-4)


@pytest.fixture(scope="module")
def union_run(corpus_files, corpus_cache, tmp_path_factory) -> Path:
    """Leave-one-speaker-out over the union of both corpora, with the released models: the first 4 folds (the 3
    Emo-DB speakers, then RAVDESS' first), so that each corpus has test speakers."""
    output_dir = tmp_path_factory.mktemp("union") / "out"
    argv = [*map(str, corpus_files), "--output_dir", str(output_dir), "--cache_dir", str(corpus_cache), *TINY,
            "--max_folds", "4", "--speaker_normalization", "false", "--report_to", "none"]  # fmt: skip
    main(argv)
    return output_dir


def test_leave_one_speaker_out_over_the_union_is_scored_per_corpus(union_run):
    """`summary.json` → `corpora`: each corpus' pooled UAR over the folds that test its speakers, adapted (its own
    statistics) and as released, and card.json carries both for the cards."""
    from mise.metrics import classification_metrics

    summary = json.loads((union_run / "summary.json").read_text())
    records = [json.loads(path.read_text()) for path in sorted(union_run.glob("folds/*/metrics.json"))]
    assert summary["protocol"] == "loso" and len(records) == 4
    corpora, card = summary["corpora"]["corpora"], json.loads((union_run / "card.json").read_text())
    assert set(corpora) == set(card["corpora"]) == {"ravdess", "emodb"}
    for name, entry in corpora.items():
        mine = [record for record in records if record["test_speakers"][0].startswith(f"{name}.")]
        assert len(mine) == {"emodb": 3, "ravdess": 1}[name]
        truth = np.concatenate([record["y_true"] for record in mine])
        for key, predictions in (("own", "y_pred"), ("as_released", "released_predictions")):
            predicted = np.concatenate([record[predictions] for record in mine])
            expected = classification_metrics(truth, predicted, len(SHARED_EMOTIONS))["uar"]
            assert entry[key]["uar"] == pytest.approx(expected)
        assert entry["test_clips"] == len(truth) == card["corpora"][name]["test_clips"]
        assert card["corpora"][name]["uar_own"] == entry["own"]["uar"]
        assert card["corpora"][name]["uar_as_released"] == entry["as_released"]["uar"]


def test_the_card_of_a_two_corpus_model_names_each_corpus_uar(union_run):
    """The released model of two corpora: its cards name each corpus with its LOSO UAR, adapted and as released,
    and (`mise push --held_out`) the committed leave-one-corpus-out runs' UAR per held-out corpus."""
    from mise.hub.push import build_hub_folders

    card = json.loads((union_run / "card.json").read_text())
    held_out = REPO / "docs" / "results" / "several_corpora" / "shipped"
    folders = build_hub_folders(
        union_run, "mise-test", "mise-general", check_remote_code=False, held_out=held_out
    )
    text = (folders["audio-classifier"] / "README.md").read_text()
    assert (
        "leave-one-speaker-out, 4 fold(s)" in text
        and "each corpus' test speakers over the folds above" in text
    )
    for name, label in (("ravdess", "RAVDESS"), ("emodb", "Emo-DB")):
        entry = card["corpora"][name]
        row = (
            f"| {label} (`{name}`) | {entry['clips']} | {entry['speakers']} | {entry['test_clips']} | "
            f"{100 * entry['uar_own']:.2f} % | {100 * entry['uar_as_released']:.2f} % |"
        )
        assert row in text
        runs = [json.loads(path.read_text()) for path in sorted(held_out.glob("seed-*/summary.json"))]
        uar = [
            [run["corpora"]["corpora"][name][key]["uar"] for run in runs] for key in ("own", "as_released")
        ]
        other = "Emo-DB" if name == "ravdess" else "RAVDESS"
        assert (
            f"| {label} | {other} | {100 * np.mean(uar[0]):.2f} % | {100 * np.mean(uar[1]):.2f} % |" in text
        )
    assert f"3 run(s) from `{held_out}`" in text
    # the training data is both corpora: both named and cited, both languages, RAVDESS' terms (Emo-DB is CC0)
    assert (
        "Trained on RAVDESS + Emo-DB (" in text and "Language: English (North American) and German." in text
    )
    assert "they carry the terms of RAVDESS (CC BY-NC-SA 4.0)" in text and "Burkhardt et al. (2005)" in text
    metadata = yaml.safe_load(text.split("---")[1])
    assert metadata["license"] == "cc-by-nc-sa-4.0" and metadata["language"] == ["en", "de"]


def test_held_out_corpora_of_the_cards_come_from_leave_one_corpus_out_runs(union_run, tmp_path):
    from mise.hub.cards import RunFolderError, read_held_out_corpora

    with pytest.raises(RunFolderError, match="no summary.json of a leave-one-corpus-out run"):
        read_held_out_corpora(tmp_path)
    with pytest.raises(RunFolderError, match="not the summary of a leave-one-corpus-out run"):
        read_held_out_corpora(union_run)  # protocol loso


# ------------------------------------------------------------------------------------- one corpus: untouched
def test_a_single_corpus_run_is_untouched(ravdess_dir, corpus_files, loco_run, tmp_path):
    """One corpus: no corpus names, the folds of `make_folds` as they were, the features as they are with global
    statistics, no as-released evaluation of several corpora, and a summary without a `corpora` section."""
    data_args = DataArguments(dataset=str(ravdess_dir / "manifest.csv"), speaker_normalization="false")
    corpus = read_corpus(data_args)
    assert corpus.corpora() is None and corpus.parts == {} and "Actor_01" in corpus.speakers()
    folds = build_folds(data_args, corpus, seed=3)
    expected = make_folds(corpus.speakers(), corpus.labels(), protocol="loso", num_validation_speakers=2, seed=3,
                          id2label=corpus.id2label)  # fmt: skip
    assert [(f.name, f.train.tolist(), f.validation.tolist(), f.test.tolist()) for f in folds] == [
        (f.name, f.train.tolist(), f.validation.tolist(), f.test.tolist()) for f in expected
    ]
    features = type("Features", (), {"audio": torch.zeros(len(corpus), 2)})()
    normalization = SpeakerNormalization.from_arguments(data_args, features, corpus)
    assert normalization.features_for(NormalizationChoice(False, None, "global")) is features
    ctx = type("Context", (), {})()
    assert normalization.released_context(ctx) is ctx
    cache = json.loads((loco_run / "run_info.json").read_text())["config"]["cache_dir"]
    argv = [str(corpus_files[1]), "--output_dir", str(tmp_path / "one"), "--cache_dir", cache, *TINY,
            "--max_folds", "1", "--speaker_normalization", "false", "--final_models", "false", "--report_to", "none"]  # fmt: skip
    summary = main(argv)
    assert "corpora" not in summary and "released_uar_pooled" not in summary
    assert summary["as_released"] == {"without_enrolment": summary["uar_pooled"], "statistics": "global"}
    info = (tmp_path / "one" / "run_info.json").read_text()
    assert '"speaker-spk03"' in info and not re.search(r"(ravdess|emodb)\.(Actor|spk)", info)


def _manifest(path: Path, rows: list[dict]) -> Path:
    columns = ("path", "speaker", "emotion", "transcript")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
