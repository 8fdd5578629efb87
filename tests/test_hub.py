"""Publishing a run: upload-ready folders, model cards with model-index, clean-process loading, the card
snippets as written, the pipeline on the classifier folder, a push that fails clearly and loses nothing, and
cards that quote a comparison study.

The run is a real (tiny) `training/train.py` run on 40 RAVDESS clips of 5 speakers, one fold; the study folder
is written by the study's own `write_report` from seeded predictions.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, constants
from transformers import pipeline

import modeling_mise  # noqa: F401  (registers the Auto classes and the pipeline)
from mise.cli import main as mise_main
from mise.hub.cards import (
    HUB_KINDS,
    MODEL_FOLDERS,
    PIPELINE_TAGS,
    card_context,
    environment_text,
    render_card,
    template_dir,
)
from mise.hub.push import (
    HubPushError,
    RunFolderError,
    build_hub_folders,
    push_run,
    read_run_card,
    read_study,
    repo_ids,
    run_without_package,
    validate_hub_folder,
)
from mise.hub.run_card import CARD_FILE, write_run_card
from modeling_mise import (
    MiseAlignerModel,
    MiseClassifierModel,
    MiseForAudioClassification,
    MiseGeneratorModel,
)
from modeling_mise.audio import load_audio
from modeling_mise.encoders import load_audio_encoder

REPO_ROOT = Path(__file__).resolve().parents[1]
ORG, PREFIX = "mise-test", "mise-ravdess"
KINDS = HUB_KINDS
STUDY_VARIANTS = ("classic", "none", "mise")
CODE_FILES = {
    "aligner": {"configuration_aligner.py", "modeling_aligner.py", "layers.py", "losses.py"},
    # no losses.py: the InfoGAN losses are training code
    "generator": {"configuration_generator.py", "modeling_generator.py", "layers.py"},
    "classifier": {"configuration_classifier.py", "modeling_classifier.py", "layers.py"},
    "audio-classifier": {
        "configuration_audio_classifier.py",
        "modeling_audio_classifier.py",
        "feature_extraction_mise.py",
        "encoders.py",
        "audio.py",
    },
}


def snapshot(folder: Path, skip: str | None = None) -> dict[str, str]:
    """sha256 of every file under `folder` (optionally leaving out one top-level sub-folder)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and (skip is None or path.relative_to(folder).parts[0] != skip)
    }


def usage_snippet(readme: Path) -> str:
    """The first Python code block of the card's "How to use" section, exactly as written."""
    match = re.search(r"^## How to use\n.*?```python\n(.*?)```", readme.read_text(), re.S | re.M)
    assert match, f"{readme}: no python block under '## How to use'"
    return match.group(1)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, ravdess_rows):
    """A finished `training/train.py` run (one fold + final models) and its built `OUT/hub` folders."""
    root = tmp_path_factory.mktemp("hub_run")
    data_dir = root / "ravdess"
    data_dir.mkdir()
    speakers = sorted({row["speaker"] for row in ravdess_rows})[:5]
    chosen, seen = [], set()
    for row in ravdess_rows:  # one clip per speaker and emotion: every class on every side of the folds
        key = (row["speaker"], row["emotion"])
        if row["speaker"] in speakers and key not in seen:
            seen.add(key)
            chosen.append(row)
    with open(data_dir / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(chosen[0]))
        writer.writeheader()
        writer.writerows(chosen)
    out = root / "OUT"
    # fmt: off
    command = [
        sys.executable, "training/train.py", "training/configs/mise.yaml", "--audio_encoder", "opensmile/eGeMAPSv02",
        "--dataset", "manifest.csv", "--data_dir", str(data_dir), "--output_dir", str(out),
        "--max_folds", "1", "--num_validation_speakers", "1", "--aligner_epochs", "3",
        "--generator_epochs", "2", "--generator_eval_every", "1", "--classifier_epochs", "3",
        "--checkpoint_every", "0", "--report_to", "none", "--cache_dir", str(root / "cache"),
        "--min_class_clips", "1",  # one clip per speaker and emotion
        "--generator_mi_floor=-inf",  # a generator of two epochs carries no emotion: its rows taken all the same
    ]
    # fmt: on
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    before = snapshot(out)
    # `mise push --dry_run`: build OUT/hub/* and validate it (cards, files, clean-process remote code)
    assert mise_main(["push", str(out), "--org", ORG, "--prefix", PREFIX, "--dry_run"]) == 0
    assert snapshot(out, skip="hub") == before, "building the Hub folders changed the run outside OUT/hub"
    return out, {kind: out / "hub" / f"{PREFIX}-{kind}" for kind in KINDS}


def test_templates_live_in_the_repository():
    assert template_dir() == REPO_ROOT / "model_cards"
    assert {p.name for p in template_dir().glob("*.md")} >= {f"{kind}.md" for kind in KINDS}


def test_folders_and_cards(trained_run):
    out, folders = trained_run
    card = read_run_card(out)
    assert all(folder.is_dir() for folder in folders.values())
    assert json.loads((out / "hub" / "repos.json").read_text()) == repo_ids(ORG, PREFIX)
    id2label = json.loads((out / "models" / "mise-classifier" / "config.json").read_text())["id2label"]
    fold = card["folds"][0]
    for kind, folder in folders.items():
        files = {path.name for path in folder.iterdir()}
        assert {"config.json", "model.safetensors", "README.md"} | CODE_FILES[kind] <= files, files
        assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert {"AutoConfig", "AutoModel"} <= set(auto_map)
        model_card = ModelCard.load(folder / "README.md", ignore_metadata_errors=False)
        data = model_card.data
        assert data.model_name == f"{PREFIX}-{kind}" == folder.name
        assert data.library_name == "transformers" and data.license == "cc-by-nc-sa-4.0"
        assert data.pipeline_tag == PIPELINE_TAGS[kind]
        assert data.base_model == ["sentence-transformers/all-MiniLM-L6-v2"]  # openSMILE is not a Hub model
        assert data.datasets == ["ravdess"] and data.language == ["en"]
        results = {result.metric_name: result for result in data.eval_results}
        uar = results["UAR (unweighted average recall, pooled over folds)"]
        assert uar.metric_value == round(card["metrics"]["uar_pooled"], 4) and uar.metric_type == "recall"
        assert uar.dataset_name == "RAVDESS" and "leave-one-speaker-out" in uar.dataset_split
        assert results["WA (weighted accuracy, pooled over folds)"].metric_value == round(
            card["metrics"]["wa_pooled"], 4
        )
        text = model_card.text
        assert all(f"`{label}`" in text for label in id2label.values())
        assert f"{100 * fold['uar']:.2f} %" in text and "aligner_epochs: 3" in text
        assert "arXiv:2510.10078" in text and "Livingstone & Russo" in text
        assert all(f"{ORG}/{PREFIX}-{other}" in text for other in KINDS)
    classifier_folder = folders["audio-classifier"]
    extractor = json.loads((classifier_folder / "preprocessor_config.json").read_text())
    assert "AutoFeatureExtractor" in extractor["auto_map"]
    assert (
        "AutoModelForAudioClassification"
        in json.loads((classifier_folder / "config.json").read_text())["auto_map"]
    )
    generator_card = (folders["generator"] / "README.md").read_text()
    quality = fold["generator_quality"]
    assert (
        f"{quality['mi_emotion_nats']:.3f}" in generator_card
        and f"{quality['frechet_distance']:.3f}" in generator_card
    )
    assert (
        "H(y) − CE(Q_y(h_hat), y)" in generator_card
        and "fitted on **real** training features only" in generator_card
    )


def test_validation_catches_broken_folders(trained_run, tmp_path):
    out, folders = trained_run
    card = read_run_card(out)
    broken = tmp_path / "audio-classifier"
    shutil.copytree(folders["audio-classifier"], broken)
    (broken / "encoders.py").unlink()  # imported by modeling_audio_classifier.py
    with pytest.raises(RunFolderError, match="encoders.py"):
        validate_hub_folder(broken, "audio-classifier", card)
    wrong = tmp_path / "aligner"
    shutil.copytree(folders["aligner"], wrong)
    readme = wrong / "README.md"
    expected = round(card["metrics"]["uar_pooled"], 4)
    readme.write_text(readme.read_text().replace(f"value: {expected}\n", "value: 0.999\n", 1))
    with pytest.raises(RunFolderError, match="does not match card.json"):
        validate_hub_folder(wrong, "aligner", card)
    (wrong / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(RunFolderError, match="pickle"):
        validate_hub_folder(wrong, "aligner", card)


def seed_hub_cache(hf_home: Path, repo_id: str, folder: Path) -> None:
    """Lay out `folder` as the downloaded snapshot of `repo_id` in a Hub cache (what a user gets offline)."""
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)


def test_card_snippets_and_remote_code_in_a_clean_process(trained_run, ravdess_wav, tmp_path):
    """Every card's usage snippet runs as written, by Hub id, where `modeling_mise` cannot be imported, and the
    remote-code models give the same numbers as the registered classes."""
    out, folders = trained_run
    repos = repo_ids(ORG, PREFIX)
    hf_home = tmp_path / "hf_home"
    for kind in KINDS:
        seed_hub_cache(hf_home, repos[kind], folders[kind])
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(ravdess_wav, workdir / "clip.wav")
    snippets = {kind: usage_snippet(folders[kind] / "README.md") for kind in KINDS}
    assert (
        f'AutoModel.from_pretrained("{repos["generator"]}", trust_remote_code=True)' in snippets["generator"]
    )
    assert ".generate(" in snippets["generator"]

    waveform, rate = load_audio(ravdess_wav, target_sampling_rate=16000)
    h = load_audio_encoder("opensmile/eGeMAPSv02").encode([waveform], show_progress=False)
    aligner = MiseAlignerModel.from_pretrained(out / "models" / "mise-aligner").eval()
    generator = MiseGeneratorModel.from_pretrained(out / "models" / "mise-generator").eval()
    head = MiseClassifierModel.from_pretrained(out / "models" / "mise-classifier").eval()
    classifier = MiseForAudioClassification.from_pretrained(out / "models" / "mise-audio-classifier").eval()
    with torch.no_grad():
        z_a = aligner.get_audio_features(h)
        expected = {
            "h": h.tolist(),
            "z_a": z_a.tolist(),
            "head": head(z_a).logits.tolist(),
            "generated": generator.generate(
                num_per_label=3, generator=torch.Generator().manual_seed(7)
            ).features.tolist(),
            "logits": classifier(input_values=torch.from_numpy(waveform)[None]).logits.tolist(),
        }
    (workdir / "expected.json").write_text(json.dumps(expected))
    (workdir / "snippets.json").write_text(json.dumps(snippets))
    code = f"""
    import json, soundfile as sf, torch
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification
    snippets = json.loads(open("snippets.json").read())
    for kind in ("generator", "aligner", "classifier", "audio-classifier"):
        print(f"=== {{kind}}", flush=True)
        exec(compile(snippets[kind], f"<{{kind}} card>", "exec"), {{"__name__": "__main__"}})
    expected = json.loads(open("expected.json").read())
    repos = {json.dumps(repos)}
    encoder = AutoModel.from_pretrained(repos["aligner"], trust_remote_code=True).eval()
    generator = AutoModel.from_pretrained(repos["generator"], trust_remote_code=True).eval()
    head = AutoModel.from_pretrained(repos["classifier"], trust_remote_code=True).eval()
    classifier = AutoModelForAudioClassification.from_pretrained(repos["audio-classifier"], trust_remote_code=True).eval()
    extractor = AutoFeatureExtractor.from_pretrained(repos["audio-classifier"], trust_remote_code=True)
    for model in (encoder, generator, head, classifier):
        assert model.__module__.startswith("transformers_modules."), model.__module__
    with torch.no_grad():
        z_a = encoder.get_audio_features(torch.tensor(expected["h"]))
        assert torch.allclose(head(z_a).logits, torch.tensor(expected["head"]), atol=1e-5)
        generated = generator.generate(num_per_label=3, generator=torch.Generator().manual_seed(7)).features
        audio, rate = sf.read("clip.wav", dtype="float32")
        logits = classifier(**extractor(audio, sampling_rate=rate, return_tensors="pt")).logits
    assert torch.allclose(z_a, torch.tensor(expected["z_a"]), atol=1e-5)
    assert torch.allclose(generated, torch.tensor(expected["generated"]), atol=1e-5)
    assert torch.allclose(logits, torch.tensor(expected["logits"]), atol=1e-4), (logits, expected["logits"])
    print("REMOTE_MATCH")
    """
    result = run_without_package(code, cwd=workdir, env={"HF_HOME": str(hf_home)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    sections = dict(re.findall(r"=== ([\w-]+)\n(.*?)(?==== |REMOTE_MATCH)", result.stdout, re.S))
    labels = sorted(generator.config.id2label.values())
    # generator: 64 labelled rows per emotion in the z_a space, fed to scikit-learn
    assert f"({64 * len(labels)}, {generator.config.feature_dim}) {labels}" in sections["generator"]
    assert f"({1}, {aligner.config.projection_dim})" in sections["aligner"]
    assert any(label in sections["aligner"] for label in labels)
    assert all(f"'{label}'" in sections["classifier"] for label in labels)
    assert all(f"'{label}'" in sections["audio-classifier"] for label in labels)
    assert "REMOTE_MATCH" in result.stdout


def test_pipeline_on_the_classifier_folder(trained_run, ravdess_wav):
    out, folders = trained_run
    classify = pipeline("audio-classification", model=str(folders["audio-classifier"]))
    labels = set(classify.model.config.id2label.values())
    from_path = classify(ravdess_wav, top_k=len(labels))
    assert {item["label"] for item in from_path} == labels
    assert math.isclose(sum(item["score"] for item in from_path), 1.0, abs_tol=1e-4)
    waveform, _ = load_audio(ravdess_wav, target_sampling_rate=44100)
    from_array = classify(
        {"raw": np.stack([waveform, waveform], axis=1), "sampling_rate": 44100}, top_k=len(labels)
    )
    scores_path = {item["label"]: item["score"] for item in from_path}
    scores_array = {item["label"]: item["score"] for item in from_array}
    assert max(abs(scores_path[label] - scores_array[label]) for label in labels) < 0.05
    original = MiseForAudioClassification.from_pretrained(out / "models" / "mise-audio-classifier").eval()
    clip, _ = load_audio(ravdess_wav, target_sampling_rate=16000)
    with torch.no_grad():
        probabilities = original(input_values=torch.from_numpy(clip)[None]).logits.softmax(-1)[0]
    for index, probability in enumerate(probabilities.tolist()):
        assert abs(scores_path[original.config.id2label[index]] - probability) < 1e-3


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_push_fails_clearly_and_loses_nothing(trained_run, monkeypatch, capsys, tmp_path):
    out, folders = trained_run
    before = snapshot(out)
    argv = ["push", str(out), "--org", ORG, "--prefix", PREFIX]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert mise_main(argv) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    # no token anywhere: refused before any network call
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert mise_main(argv) == 2
    error = capsys.readouterr().err
    assert (
        "no Hugging Face token" in error and f"rerun `mise push {out} --org {ORG} --prefix {PREFIX}`" in error
    )
    with pytest.raises(HubPushError, match="no Hugging Face token"):
        push_run(out, ORG, PREFIX)
    # a token, but the Hub endpoint is a closed local port (as HF_ENDPOINT would set it): nothing leaves
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert mise_main(argv) == 2
    error = capsys.readouterr().err
    assert "unreachable" in error and "Connection refused" in error and "Nothing was uploaded" in error
    assert snapshot(out) == before, "a failed push changed the run folder"
    assert all(
        validate_hub_folder(folder, kind) for kind, folder in folders.items()
    )  # still ready for a rerun


def test_bad_run_folders_and_names(tmp_path, trained_run):
    out, _ = trained_run
    with pytest.raises(RunFolderError, match="card.json: missing"):
        read_run_card(tmp_path)
    with pytest.raises(ValueError, match="org"):
        repo_ids("bad org!", PREFIX)
    with pytest.raises(ValueError, match="prefix: 'p+' does not make a valid Hub name.*96"):
        repo_ids(ORG, "p" * 90)  # "<org>/ppp...-audio-classifier": a repository name over 96 characters
    # a card.json with the results only (no corpus, folds, command): the cards say "not recorded"
    bare = tmp_path / "bare"
    bare.mkdir()
    metrics = read_run_card(out)["metrics"]
    (bare / CARD_FILE).write_text(json.dumps({"format": 1, "metrics": metrics}))
    shutil.copytree(out / "models", bare / "models", ignore=shutil.ignore_patterns("mise-generator"))
    folders = build_hub_folders(bare, org=ORG, check_remote_code=False)
    assert set(folders) == {
        "aligner",
        "classifier",
        "audio-classifier",
    }  # no generator trained: none published
    card = ModelCard.load(folders["audio-classifier"] / "README.md")
    assert card.data.license == "other" and card.data.eval_results
    assert "not recorded" in card.text and f"{ORG}/mise-audio-classifier" in card.text
    assert "numeric environment: not recorded." in card.text  # a card.json of before it was recorded
    (bare / CARD_FILE).write_text(json.dumps({"format": 1, "metrics": {**metrics, "uar_pooled": None}}))
    with pytest.raises(RunFolderError, match="'metrics.uar_pooled' missing"):
        read_run_card(bare)


def test_card_json_is_what_training_tells_the_cards(trained_run, tmp_path):
    """train.py writes every documented card.json field; `dataset_license` states the corpus' licence."""
    out, folders = trained_run
    card = json.loads((out / CARD_FILE).read_text())
    assert set(card) == {"format", "command", "commit", "date", "environment", "corpus", "protocol",
                         "augmentation", "metrics", "folds", "final_generator_quality", "corpora", "config",
                         "study"}  # fmt: skip
    environment = card["environment"]  # the versions the run's numbers came from, in card and README
    assert environment["python"] == platform.python_version() and environment["machine"] == platform.machine()
    assert environment["torch"] == torch.__version__ and environment["numpy"] == np.__version__
    assert environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    readme = (folders["classifier"] / "README.md").read_text()
    assert f"Code: commit `{card['commit']}`; numeric environment: {environment_text(environment)}." in readme
    assert f"torch {torch.__version__}" in environment_text(environment)
    assert card["corpora"] is None  # one corpus
    summary = json.loads((out / "summary.json").read_text())
    assert (
        card["metrics"] == {key: summary[key] for key in card["metrics"]} and card["metrics"]["n_folds"] == 1
    )
    assert card["command"].startswith("accelerate launch training/train.py") and card["commit"]
    assert card["commit"] == json.loads((out / "run_info.json").read_text())["commit"]  # read when it started
    assert card["corpus"] == {**card["corpus"], "name": "RAVDESS", "clips": 40, "speakers": 5,
                              "license": "cc-by-nc-sa-4.0", "license_source": "known corpus"}  # fmt: skip
    assert card["protocol"] == {"name": "loso", "num_folds": 5, "max_folds": 1, "num_validation_speakers": 1}
    assert card["augmentation"]["method"] == "mise" and card["config"]["aligner_epochs"] == 3
    augmentation = card["augmentation"]  # the released classifier's ratio, chosen on validation speakers
    assert augmentation["generated_ratio"] == summary["generated_ratio_released"]["final"] in (0.5, 1.0, 2.0)
    assert augmentation["generated_ratios"] == [0.5, 1.0, 2.0]
    assert augmentation["generated_ratio_chosen"] == summary["generated_ratio_chosen"]
    fold = json.loads(next((out / "folds").glob("*/metrics.json")).read_text())
    assert card["folds"] == [{"name": fold["fold"], "test_speakers": fold["test_speakers"], "uar": fold["uar"],
                              "wa": fold["wa"], "f1_macro": fold["f1_macro"],
                              "generator_quality": fold["stages"]["generator"]["quality"]}]  # fmt: skip
    assert math.isfinite(card["final_generator_quality"]["mi_emotion_nats"]) and card["study"] is None
    run_info = json.loads((out / "run_info.json").read_text())
    run_info["config"]["dataset_license"] = "cc-by-4.0"
    write_run_card(tmp_path, summary, run_info, [])
    stated = read_run_card(tmp_path)
    assert stated["corpus"]["license"] == "cc-by-4.0" and stated["corpus"]["license_source"] == "argument"
    configs = {
        kind: json.loads((out / "models" / MODEL_FOLDERS[kind] / "config.json").read_text()) for kind in KINDS
    }
    context = card_context("aligner", stated, configs, repo_ids(ORG, PREFIX))
    assert context["dataset"]["license"] == "cc-by-4.0" and "given for this run" in context["license_text"]
    assert (
        f"{augmentation['generated_ratio']:g}:1 generated to real, the ratio chosen on validation speakers among 0.5, 1, 2"
        in context["augmentation_text"]
    )


def test_cards_of_an_emodb_run_record_its_licence_and_language(trained_run, tmp_path):
    """Emo-DB is a known corpus: a run on its manifest states CC0 1.0 and German, as a RAVDESS run states its own."""
    out, _ = trained_run
    summary = json.loads((out / "summary.json").read_text())
    run_info = json.loads((out / "run_info.json").read_text())
    run_info["corpus"] = {**run_info["corpus"], "source": "corpora/emodb/manifest.csv"}
    emodb = {"dataset": "corpora/emodb/manifest.csv", "data_dir": None, "dataset_license": None}
    run_info["config"] = {**run_info["config"], **emodb}
    write_run_card(tmp_path, summary, run_info, [])
    stated = read_run_card(tmp_path)
    assert stated["corpus"] == {**stated["corpus"], "name": "Emo-DB", "license": "cc0-1.0",
                                "license_source": "known corpus"}  # fmt: skip
    configs = {
        kind: json.loads((out / "models" / MODEL_FOLDERS[kind] / "config.json").read_text()) for kind in KINDS
    }
    card = render_card("classifier", card_context("classifier", stated, configs, repo_ids(ORG, PREFIX)))
    assert card.data.license == "cc0-1.0" and card.data.language == ["de"]
    assert "Emo-DB, released under CC0 1.0" in card.text and "German" in card.text


def test_card_for_a_transformers_audio_encoder(trained_run):
    """The encoder card of a run with a Hub audio model: listed in base_model, its snippet goes through the
    end-to-end classifier (which carries the encoder's weights); an explicit licence wins."""
    out, _ = trained_run
    configs = {
        kind: json.loads((out / "models" / MODEL_FOLDERS[kind] / "config.json").read_text()) for kind in KINDS
    }
    spec = {"type": "transformers", "name": "facebook/wav2vec2-base", "pooling": "mean", "layer": 6}
    configs["aligner"].update(audio_encoder="facebook/wav2vec2-base", audio_encoder_spec=spec)
    repos = repo_ids(ORG, PREFIX)
    context = card_context("aligner", read_run_card(out), configs, repos, license="apache-2.0")
    card = render_card("aligner", context)
    assert card.data.base_model == ["facebook/wav2vec2-base", "sentence-transformers/all-MiniLM-L6-v2"]
    assert card.data.license == "apache-2.0" and "opensmile" not in card.data.tags
    assert "mean-pooled over time from hidden layer 6" in card.text
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    compile(snippet, "<aligner card>", "exec")
    assert f'AutoModel.from_pretrained("{repos["audio-classifier"]}", trust_remote_code=True)' in snippet
    assert "hidden_states[0]" in snippet and "encoder.classify(z_a)" in snippet


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--push_to_hub", "true"], "hub_model_id"),
        (["--push_to_hub", "true", "--hub_model_id", "no-slash"], "hub_model_id"),
        (["--push_to_hub", "true", "--hub_model_id", "org/mise", "--final_models", "false"], "final_models"),
    ],
)
def test_train_push_to_hub_flags_are_checked(flags, field):
    from training.arguments import ConfigError, parse_arguments

    with pytest.raises(ConfigError, match=field):
        parse_arguments(
            [
                "training/configs/mise.yaml",
                "training/configs/corpora/ravdess.yaml",
                "--output_dir",
                "unused",
                *flags,
            ]
        )


# ------------------------------------------------------------------------------------------- comparison study
@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """A study folder as `training/study.py` leaves it: `write_report` on units of 3 variants x 4 LOSO folds
    x 2 seeds, each with seeded test predictions (the better the variant, the more of them are right)."""
    from mise.metrics import classification_metrics
    from training.study_report import write_report
    from training.study_variants import StudyArguments

    out = tmp_path_factory.mktemp("study")
    id2label = {0: "angry", 1: "happy", 2: "sad"}
    folds = [f"speaker-Actor_0{i}" for i in range(1, 5)]
    study_args = StudyArguments(variants=list(STUDY_VARIANTS), seeds=[0, 1], figures=False)
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(3), 4)
    units = []
    for seed in study_args.seeds:
        for fold in folds:
            rows = []
            for variant, accuracy in zip(STUDY_VARIANTS, (0.6, 0.5, 0.8), strict=True):
                wrong = rng.random(len(y_true)) > accuracy
                y_pred = np.where(wrong, (y_true + rng.integers(1, 3, len(y_true))) % 3, y_true)
                metrics = classification_metrics(y_true, y_pred, len(id2label), id2label)
                rows.append({
                    "variant": variant, "seed": seed, "fold": fold, "test_speakers": fold.split("-")[1],
                    "uar": metrics["uar"], "wa": metrics["wa"], "f1_macro": metrics["f1_macro"],
                    "val_uar": None, "generated_ratio": 1.0 if variant == "mise" else None,
                    "per_class_recall": metrics["per_class_recall"], "y_true": y_true.tolist(),
                    "y_pred": y_pred.tolist(),
                })  # fmt: skip
            units.append({"seed": seed, "fold": fold, "rows": rows, "quality": [], "final_quality": {},
                          "imbalance_counts": None})  # fmt: skip
    info = {
        "command": "training/study.py training/configs/mise.yaml training/configs/study.yaml training/configs/corpora/ravdess.yaml --output_dir study --seeds 0 1",
        "commit": "0123abc",  # read by `training.run.start_run` when the study starts
        "unit_seconds": 60.0,
        "world_size": 1,
        "corpus": {"source": "data/ravdess/manifest.csv", "clips": 48, "speakers": 4, "hours": 0.05},
        "folds": [{"name": fold, "test": [fold.split("-")[1]], "validation": []} for fold in folds],
        "config": {"protocol": "loso", "audio_encoder": "opensmile/eGeMAPSv02", "text_encoder": "none"},
    }
    write_report(out, units, study_args, id2label, info)
    return out


def expected_study_rows(report: dict) -> list[str]:
    """The cards' study table rows, spelled out from study.json (percent with one decimal)."""
    rows = []
    for name, variant in report["variants"].items():
        tail = "— | —"
        if name != "none":
            delta, test = variant["delta_uar_pooled_vs_none"], variant["wilcoxon_vs_none"]
            tail = f"{100 * delta:+.1f} pp | {test['p_value']:.3g}"
        rows.append(
            f"| `{name}`{' (reference)' if name == 'none' else ''} | {variant['description']} | "
            f"{100 * variant['uar_mean']:.1f} ± "
            f"{100 * variant['uar_std']:.1f} % | {100 * variant['uar_pooled']:.1f} % | {tail} |"
        )
    return rows


def test_cards_quote_the_comparison_study(trained_run, study_dir, tmp_path):
    """`mise push --study` adds the study section to every card and changes nothing else in it."""
    out, folders = trained_run
    run = tmp_path / "OUT"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("hub"))
    argv = ["push", str(run), "--org", ORG, "--prefix", PREFIX, "--study", str(study_dir), "--dry_run"]
    assert mise_main(argv) == 0
    report = json.loads((study_dir / "study.json").read_text())
    assert list(report["variants"]) == list(STUDY_VARIANTS)
    expected = expected_study_rows(report)
    assert expected[0].startswith("| `classic` | ") and "(reference) | " in expected[1]
    info = report["info"]
    for kind in KINDS:
        card = (run / "hub" / f"{PREFIX}-{kind}" / "README.md").read_text()
        without = (folders[kind] / "README.md").read_text()  # built without --study
        assert "## Comparison study" not in without
        start, end = card.index("## Comparison study"), card.index("## Citation")
        section = card[start:end]
        assert [line for line in section.splitlines() if line.startswith("| `")] == expected
        assert f"```bash\n{info['command']}\n```" in section
        assert f"Date: {info['date']}; commit: `{info['commit']}`" in section
        assert f"Numeric environment: {environment_text(info['environment'])}\n" in section
        assert "Corpus: RAVDESS, 48 clips, 4 speakers, 0.05 h" in section
        assert "Protocol: leave-one-speaker-out, 4 fold(s) × 2 seed(s)" in section
        assert card[:start] + card[end:] == without
        validate_hub_folder(run / "hub" / f"{PREFIX}-{kind}", kind, read_run_card(run))


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda report: report["info"].pop("commit"), "info.commit"),
        (lambda report: report["info"].update(corpus=None), "info.corpus"),
        (lambda report: report.update(variants={}), "variants"),
        (lambda report: report["variants"]["mise"].pop("uar_std"), "variants.mise.uar_std"),
        (lambda report: report["variants"]["classic"].update(n_folds="4"), "variants.classic.n_folds"),
        (
            lambda report: report["variants"]["mise"].update(delta_uar_pooled_vs_none="+2"),
            "variants.mise.delta_uar_pooled_vs_none",
        ),  # fmt: skip
        (
            lambda report: report["variants"]["mise"]["wilcoxon_vs_none"].pop("p_value"),
            "variants.mise.wilcoxon_vs_none.p_value",
        ),  # fmt: skip
    ],
)
def test_a_malformed_study_names_the_file_and_field(study_dir, tmp_path, edit, field):
    report = json.loads((study_dir / "study.json").read_text())
    edit(report)
    (tmp_path / "study.json").write_text(json.dumps(report))
    with pytest.raises(
        RunFolderError, match=re.escape(f"{tmp_path / 'study.json'}: field '{field}' missing")
    ):
        read_study(tmp_path)


def test_a_missing_study_fails_before_anything_is_built(
    trained_run, study_dir, tmp_path, capsys, monkeypatch
):
    out, _ = trained_run
    before = snapshot(out)
    with pytest.raises(RunFolderError, match="not a study folder"):
        read_study(tmp_path / "nowhere")
    argv = ["push", str(out), "--org", ORG, "--prefix", PREFIX, "--study", str(tmp_path), "--dry_run"]
    assert mise_main(argv) == 2
    assert f"{tmp_path / 'study.json'}: missing" in capsys.readouterr().err
    assert snapshot(out) == before
    # a study without the reference variant: no Δ and no test, and the card says why
    report = json.loads((study_dir / "study.json").read_text())
    del report["variants"]["none"]
    for variant in report["variants"].values():
        del variant["delta_uar_pooled_vs_none"], variant["wilcoxon_vs_none"]
    (tmp_path / "study.json").write_text(json.dumps(report))
    section = read_study(tmp_path)
    assert not section["has_reference"] and [row["name"] for row in section["rows"]] == ["classic", "mise"]
    assert all(row["delta_uar_pooled"] == row["p_value"] == "—" for row in section["rows"])
    # a push that cannot reach the Hub says how to rerun it, the study included
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match=re.escape(f"--prefix {PREFIX} --study {study_dir}`")):
        push_run(out, ORG, PREFIX, study=study_dir)
