"""The Gradio Space (spaces_demo/app.py): `classify` in-process, the page in headless Chromium, the API through
`gradio_client`, and 20 concurrent requests through the queue (bench/bench_space.py).

The model is a real end-to-end classifier trained here in seconds: eGeMAPS functionals of 96 RAVDESS clips,
a small aligner and classifier, assembled with `MiseForAudioClassification.from_components`.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import load_file_module
from transformers import pipeline

import modeling_mise  # noqa: F401  (registers the Auto classes)
from modeling_mise import (
    MiseAlignerConfig,
    MiseAlignerModel,
    MiseClassifierConfig,
    MiseClassifierModel,
    MiseFeatureExtractor,
    MiseForAudioClassification,
)
from modeling_mise.audio import AudioInputError, load_audio
from modeling_mise.encoders import load_audio_encoder

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # a fake microphone (a beep) for the recording test
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
RATE = 16000


bench = load_file_module("bench_space", REPO_ROOT / "bench" / "bench_space.py")


@pytest.fixture(scope="module")
def id2label(space_model) -> dict[int, str]:
    config = json.loads((space_model / "config.json").read_text())
    return {int(k): v for k, v in config["id2label"].items()}


@pytest.fixture(scope="module")
def classify_pipeline(space_model):
    """`pipeline("audio-classification")` on the fixture model."""
    return pipeline("audio-classification", model=str(space_model))


@pytest.fixture(scope="module")
def reference(classify_pipeline):
    """The transformers pipeline on the same model: what the Space must predict."""
    classify = classify_pipeline

    def predict(path) -> dict[str, float]:
        waveform, rate = load_audio(path)
        scores = classify({"raw": waveform, "sampling_rate": rate}, top_k=None)
        return {item["label"]: item["score"] for item in scores}

    return predict


@pytest.fixture(scope="module")
def examples_dir(ravdess_rows, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("space_examples")
    for row in ravdess_rows[1:4]:
        shutil.copy(row["path"], folder / Path(row["path"]).name)
    return folder


@pytest.fixture(scope="module")
def app(space_model, examples_dir):
    """spaces_demo/app.py imported in this process with MISE_MODEL pointing at the fixture model."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MISE_MODEL", str(space_model))
        patch.setenv("MISE_EXAMPLES", str(examples_dir))
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        patch.delenv("MISE_HARD_LIMIT_SECONDS", raising=False)
        module = load_file_module("mise_space_app", REPO_ROOT / "spaces_demo" / "app.py")
    assert module.LOAD_ERROR is None, module.LOAD_ERROR
    return module


# ---------------------------------------------------------------- the Space folder

SPACE = REPO_ROOT / "spaces_demo"


def test_space_card_header():
    from huggingface_hub import SpaceCard

    card = SpaceCard((SPACE / "README.md").read_text()).data.to_dict()
    assert {"title", "sdk", "sdk_version", "app_file", "models", "license"} <= set(card)
    assert card["sdk"] == "gradio" and (SPACE / card["app_file"]).is_file()
    assert card["sdk_version"].split(".")[0] == gr.__version__.split(".")[0]
    assert card["models"] and all(len(model.split("/")) == 2 for model in card["models"])
    assert len(card["short_description"]) <= 60


def _distribution_names(requirements: Path) -> set[str]:
    names = set()
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


@pytest.fixture(scope="module")
def built_space(tmp_path_factory) -> Path:
    """The Space folder `mise push OUT --org ORG --space --dry_run` builds (no upload, no network)."""
    from mise.cli import main as mise_main

    out = tmp_path_factory.mktemp("space_run")
    assert mise_main(["push", str(out), "--org", "mise-test", "--space", "--dry_run"]) == 0
    return out / "hub" / "space"


def test_push_space_builds_the_space_folder(built_space):
    from huggingface_hub import SpaceCard

    assert {"app.py", "requirements.txt", "README.md"} <= {path.name for path in built_space.iterdir()}
    assert SpaceCard.load(built_space / "README.md").data.models == ["mise-test/mise-audio-classifier"]
    assert "DEFAULT_MODEL = 'mise-test/mise-audio-classifier'" in (built_space / "app.py").read_text()
    assert sorted(path.name for path in (built_space / "examples").glob("*.wav")) == sorted(
        path.name for path in (SPACE / "examples").glob("*.wav")
    )
    assert not any(path.suffix == ".py" and path.name != "app.py" for path in built_space.rglob("*"))


def _run_space(space: Path, model: Path, code: str, env: dict | None = None):
    """Import the Space's app.py in a fresh process where neither `modeling_mise` nor `mise` can be imported,
    with `MISE_MODEL` = `model`, then run `code`; its last stdout line is returned as JSON."""
    from mise.hub.push import run_without_package

    prelude = f"""
    import json, sys
    sys.path.insert(0, {str(space)!r})
    import app
    assert app.LOAD_ERROR is None, app.LOAD_ERROR
    """
    environment = {"MISE_MODEL": str(model), "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    result = run_without_package(prelude + code, env=environment)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_built_space_classifies_through_remote_code_only(built_space, space_model, clips, reference):
    """The built Space classifies with the model's own code: no MISE package in the process, same scores."""
    code = f"""
    scores, _ = app.classify({str(clips["good"])!r}, "")
    _, info = app.classify({str(clips["stereo"])!r}, "")
    shown = app.timeline({str(clips["long"])!r})
    modules = sorted(name for name in sys.modules if name.split(".")[0] in ("modeling_mise", "mise"))
    print(json.dumps({{"scores": scores, "info": info, "module": type(app.MODEL.model).__module__,
                       "modules": modules, "timeline": shown["visible"]}}))
    """
    result = _run_space(built_space, space_model, code)
    assert result["module"].startswith("transformers_modules.") and result["modules"] == []
    expected = reference(clips["good"])
    assert result["scores"] == pytest.approx(expected, abs=1e-4)
    assert "Downmixed 2 channels to mono" in result["info"] and result["timeline"] is True


def test_requirements_cover_what_the_space_imports(built_space, space_model, tmp_path):
    """Every third-party import of app.py and of the model code it loads is in requirements.txt."""
    optional = {"torchcodec"}  # FFmpeg decoding of non-WAV/FLAC/OGG uploads, used when installed
    provided = {"gradio"}  # the Space's sdk_version
    code = """
    files = [m.__file__ for n, m in sys.modules.items() if n.startswith("transformers_modules.") and m.__file__]
    print(json.dumps(files))
    """
    loaded = _run_space(built_space, space_model, code, env={"HF_HOME": str(tmp_path / "hf_home")})
    assert any(path.endswith("modeling_audio_classifier.py") for path in loaded), loaded
    files = [built_space / "app.py"] + [Path(path) for path in loaded]
    imported = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert not imported & {"modeling_mise", "mise"}, imported
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"} - optional
    distributions = importlib.metadata.packages_distributions()
    needed = {distributions[name][0].lower().replace("_", "-") for name in third_party} - provided
    assert needed <= _distribution_names(built_space / "requirements.txt"), needed


# ---------------------------------------------------------------- classify() in-process


def test_classify_matches_the_pipeline(app, clips, reference, id2label):
    scores, info = app.classify(str(clips["good"]), "")
    expected = reference(clips["good"])
    assert set(scores) == set(id2label.values())
    assert abs(sum(scores.values()) - 1.0) < 1e-4
    for name, score in expected.items():
        assert abs(scores[name] - score) < 1e-4, name
    top = max(expected, key=expected.get)
    assert f"**Prediction: {top}**" in info
    assert "good.wav" in info and "16000 Hz" in info and "Cropped" not in info and "Resampled" not in info


def test_classify_reports_resampling_downmixing_and_segments(app, clips, reference):
    scores, info = app.classify(str(clips["stereo"]), "")
    assert "44100 Hz" in info and "Resampled from 44100 Hz to 16000 Hz" in info
    assert "Downmixed 2 channels to mono" in info
    good = reference(clips["good"])
    assert max(scores, key=scores.get) == max(good, key=good.get)  # same speech, other rate and layout
    # 40 s of speech: cut at pauses into segments within the model's training clip durations, every one of
    # them classified, as `pipeline()` does
    scores, info = app.classify(str(clips["long"]), "")
    low, high = app.MODEL.utterance_seconds
    assert (
        scores is not None and "Cut at pauses into " in info and f"training clips: {low:g}-{high:g} s" in info
    )
    assert "only the first" not in info and "Statistics: training." in info
    expected = reference(clips["long"])
    assert all(abs(scores[name] - expected[name]) < 1e-4 for name in expected)


@pytest.mark.parametrize(
    ("clip", "reason"),
    [
        ("notes", "not a readable audio file"),
        ("empty", "empty clip (0 samples)"),
        ("zero_bytes", "empty file (0 bytes)"),
        ("silent", "silent (every sample is zero)"),
        ("short", "too short (0.10 s < 0.25 s)"),
        ("too_long", "130.0 s is longer than the 120 s limit; trim it first"),
    ],
)
def test_classify_refuses_bad_input_with_a_readable_message(app, clips, clip, reason):
    with pytest.warns(UserWarning):  # gr.Warning outside a request falls back to warnings.warn
        scores, info = app.classify(str(clips[clip]), "")
    assert scores is None
    assert info.startswith("⚠️ Could not classify") and clips[clip].name in info and reason in info
    assert "Traceback" not in info
    assert app.classify(str(clips["good"]), "")[0] is not None  # still serving


def test_classify_without_a_clip(app):
    with pytest.warns(UserWarning):
        assert app.classify(None, "") == (None, "⚠️ Upload or record a clip first.")


def test_limits_come_from_the_environment(app, clips, space_model, monkeypatch):
    monkeypatch.setenv("MISE_HARD_LIMIT_SECONDS", "five")
    model, message = app.load_model(str(space_model))
    assert model is None and message == "MISE_HARD_LIMIT_SECONDS must be a positive number, got 'five'"
    monkeypatch.setenv("MISE_HARD_LIMIT_SECONDS", "35")
    loaded, error = app.load_model(str(space_model))
    assert error is None and loaded.max_seconds == 30.0 and loaded.hard_limit_seconds == 35.0
    clip = app.read_clip(str(clips["stereo"]), loaded.sampling_rate, 2.0, 35.0)
    assert clip.waveform.shape == (2 * RATE,) and clip.waveform.dtype == np.float32
    assert clip.channels == 2 and clip.sampling_rate == 44100 and len(clip.notices) == 3
    with pytest.raises(ValueError, match=r"long_40s\.wav: 40\.0 s is longer than the 35 s"):
        app.read_clip(str(clips["long"]), loaded.sampling_rate, 5.0, 35.0)


def test_missing_or_broken_model_gives_a_message(app, tmp_path):
    model, message = app.load_model(str(tmp_path / "no-such-model"))
    assert model is None and "No model found at" in message and "no-such-model" in message
    assert "make train" in message and "MISE_MODEL" in message
    (tmp_path / "empty-folder").mkdir()
    model, message = app.load_model(str(tmp_path / "empty-folder"))
    assert model is None and message.startswith("Could not load the model") and "empty-folder" in message


def test_page_layout_for_an_audio_only_model(app, examples_dir):
    assert not app.MODEL.multimodal
    blocks = {getattr(block, "elem_id", None): block for block in app.demo.blocks.values()}
    assert blocks["transcript"].visible is False and "audio-only" in blocks["transcript-note"].value
    assert blocks["clip"].type == "filepath" and blocks["classify"].interactive is not False
    names = sorted(p.name for p in examples_dir.iterdir())
    assert [path.name for path in app.find_examples(str(examples_dir))] == names
    datasets = [block for block in app.demo.blocks.values() if isinstance(block, gr.Dataset)]
    assert len(datasets) == 1 and [Path(str(row[0])).name for row in datasets[0].samples] == names
    assert app.find_examples(str(examples_dir / "missing")) == []


def test_the_space_ships_emodb_example_clips(app, monkeypatch):
    """Without MISE_EXAMPLES the page shows the Emo-DB clips in spaces_demo/examples/ (CC0), and they classify."""
    monkeypatch.delenv("MISE_EXAMPLES", raising=False)
    shipped = app.find_examples()
    emotions = {path.stem.rsplit("_", 1)[1] for path in shipped}
    assert (
        len(shipped) >= 4
        and len(emotions) == len(shipped)
        and {p.parent for p in shipped} == {SPACE / "examples"}
    )
    attribution = (SPACE / "examples" / "README.md").read_text()
    assert "CC0" in attribution and "Burkhardt" in attribution
    assert all(path.name in attribution for path in shipped)
    datasets = [block for block in app.build_demo().blocks.values() if isinstance(block, gr.Dataset)]
    assert [Path(str(row[0])).name for row in datasets[0].samples] == [path.name for path in shipped]
    for path in shipped:
        scores, info = app.classify(str(path), "")
        assert scores is not None and path.name in info and "16000 Hz" in info


@pytest.fixture(scope="module")
def multimodal_model(tmp_path_factory) -> Path:
    """A multimodal end-to-end model (random weights): `[z_a; z_t]` with the offline MiniLM as text encoder."""
    torch.manual_seed(0)
    emotions = {0: "neutral", 1: "happy", 2: "sad"}
    aligner = MiseAlignerModel(
        MiseAlignerConfig(audio_dim=88, text_dim=384, projection_dim=8, hidden_sizes=[16], id2label=emotions)
    )
    classifier = MiseClassifierModel(
        MiseClassifierConfig(input_dim=8, text_dim=8, hidden_sizes=[16], multimodal=True, id2label=emotions)
    )
    model = MiseForAudioClassification.from_components(
        aligner.eval(), classifier.eval(), load_audio_encoder("opensmile/eGeMAPSv02")
    )
    folder = tmp_path_factory.mktemp("space_multimodal") / "audio-text-classifier"
    model.save_pretrained(folder)
    MiseFeatureExtractor().save_pretrained(folder)
    return folder


def test_transcript_box_and_transcript_for_a_multimodal_model(
    app, multimodal_model, clips, ravdess_rows, examples_dir, monkeypatch
):
    loaded, error = app.load_model(str(multimodal_model))
    assert error is None and loaded.multimodal
    monkeypatch.setattr(app, "MODEL", loaded)
    monkeypatch.setenv("MISE_EXAMPLES", str(examples_dir))
    demo = app.build_demo()
    blocks = {getattr(block, "elem_id", None): block for block in demo.blocks.values()}
    assert blocks["transcript"].visible is True and "transcript-note" not in blocks
    datasets = [block for block in demo.blocks.values() if isinstance(block, gr.Dataset)]
    assert all(len(row) == 2 for row in datasets[0].samples)  # example clips with an empty transcript
    transcript = ravdess_rows[0]["transcript"]
    with_text, info = app.classify(str(clips["good"]), transcript)
    without_text, info_without = app.classify(str(clips["good"]), "  ")
    assert "The transcript was used." in info and "transcript" not in info_without
    waveform, _ = load_audio(clips["good"])
    inputs = MiseFeatureExtractor()(waveform, return_tensors="pt")
    with torch.no_grad():
        expected_with = loaded.model(**inputs, transcripts=[transcript]).logits.softmax(-1)[0]
        expected_without = loaded.model(**inputs).logits.softmax(-1)[0]
    names = [loaded.id2label[i] for i in range(len(loaded.id2label))]
    assert np.allclose([with_text[n] for n in names], expected_with.numpy(), atol=1e-5)
    assert np.allclose([without_text[n] for n in names], expected_without.numpy(), atol=1e-5)
    assert not np.allclose(expected_with.numpy(), expected_without.numpy(), atol=1e-4)


# ------------------------------------------------------- the bad-input table of docs/bad_input.md, every entry point

ERROR_WORDS = ("refused", "exit 1", "exit 2", "AudioInputError")


def bad_input_table() -> list[dict]:
    """Rows of the bad-input table (docs/bad_input.md): case, file, message and what each entry point does."""
    section = (
        (REPO_ROOT / "docs" / "bad_input.md").read_text().split("\n## Bad audio\n", 1)[1].split("\n## ", 1)[0]
    )
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 6 or cells[0] == "case":
            continue
        case, file, message, *entries = cells
        row = {"case": case, "file": re.search(r"`([^`]+)`", file).group(1)}
        for name, cell in zip(("space", "cli", "pipeline"), entries, strict=True):
            override = re.search(r": `([^`]+)`", cell)
            code = re.match(r"exit (\d)", cell)
            row[name] = {
                "error": any(word in cell for word in ERROR_WORDS),
                "message": override.group(1) if override else re.search(r"`([^`]+)`", message).group(1),
                "code": int(code.group(1)) if code else None,
            }
        rows.append(row)
    return rows


BAD_INPUT_TABLE = bad_input_table()


def says(text: str, message: str) -> bool:
    """Whether `text` holds the table's `message` (`…` stands for any text)."""
    pattern = ".*?".join(re.escape(part) for part in message.split("…"))
    return re.search(pattern, text, flags=re.S) is not None


def test_the_bad_input_table_has_every_case():
    assert len(BAD_INPUT_TABLE) >= 9
    assert {row["file"] for row in BAD_INPUT_TABLE} >= {
        "notes.wav", "zero_bytes.wav", "empty.wav", "silent.wav", "short.wav", "long_40s.wav", "ten_minutes.wav"
    }  # fmt: skip


@pytest.mark.parametrize("row", BAD_INPUT_TABLE, ids=[row["case"] for row in BAD_INPUT_TABLE])
def test_bad_input_table_row(row, app, clips, space_model, classify_pipeline, caplog):
    """One row of the table through the Space function, `mise classify` (a subprocess) and `pipeline()`."""
    path = next(path for path in clips.values() if path.name == row["file"])
    # the Space
    expected = row["space"]
    if expected["error"]:
        with pytest.warns(UserWarning):
            scores, info = app.classify(str(path), "")
        assert scores is None and info.startswith(f"⚠️ Could not classify `{path.name}`: "), info
    else:
        scores, info = app.classify(str(path), "")
        assert scores is not None and "Prediction" in info, info
    assert says(info, expected["message"]), info
    # mise classify
    expected = row["cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "mise.cli", "classify", str(space_model), str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == expected["code"], result.stderr[-2000:]
    assert says(result.stderr, f"mise classify: {path}: {expected['message']}"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Malformed" not in result.stderr
    if expected["code"] != 2:  # a usage error prints no result; otherwise one JSON line for the file
        (line,) = result.stdout.splitlines()
        output = json.loads(line)
        if expected["error"]:
            assert output["label"] is None and says(output["error"], expected["message"])
        else:
            assert output["label"] == max(output["scores"], key=output["scores"].get)
            assert says(output["notices"][0], expected["message"])
    # pipeline()
    expected = row["pipeline"]
    if expected["error"]:
        with pytest.raises(AudioInputError) as error:
            classify_pipeline(str(path))
        assert str(error.value).startswith(f"{path}: ") and says(str(error.value), expected["message"])
    else:
        with caplog.at_level(logging.WARNING, logger="modeling_mise"):
            scores = classify_pipeline(str(path), top_k=None)
        assert len(scores) == len(app.MODEL.id2label)
        warnings = [
            record.getMessage() for record in caplog.records if record.name.startswith("modeling_mise")
        ]
        assert any(says(text, f"{path}: {expected['message']}") for text in warnings), warnings


def test_pipeline_names_bytes_and_arrays(classify_pipeline, clips):
    with pytest.raises(AudioInputError, match=r"^<bytes>: not a readable audio file"):
        classify_pipeline(clips["notes"].read_bytes())
    with pytest.raises(AudioInputError, match=r"^<input>: silent \(every sample is zero\)"):
        classify_pipeline({"raw": np.zeros(2 * RATE, dtype=np.float32), "sampling_rate": RATE})
    with pytest.raises(AudioInputError, match=r"^<array>: too short \(0\.05 s < 0\.25 s\)"):
        classify_pipeline(np.ones(800, dtype=np.float32) * 0.1)
    assert (
        classify_pipeline(clips["good"].read_bytes())[0]["label"]
        == classify_pipeline(str(clips["good"]))[0]["label"]
    )


# ---------------------------------------------------------------- the running Space


@pytest.fixture(scope="module")
def space_url(space_model, examples_dir):
    env = {"MISE_EXAMPLES": str(examples_dir), "HF_HUB_OFFLINE": "1"}
    with bench.serve_app(space_model, env=env, concurrency=2) as (url, log_path):
        yield url
    assert "Traceback" not in log_path.read_text()


def test_starting_without_a_model_shows_a_message(tmp_path):
    missing = tmp_path / "not-trained-yet"
    with bench.serve_app(missing, env={"HF_HUB_OFFLINE": "1"}) as (url, log_path):
        with urllib.request.urlopen(url + "config", timeout=30) as response:
            config = response.read().decode()
        from gradio_client import Client, handle_file

        empty = tmp_path / "x.wav"
        sf.write(empty, np.zeros(RATE, dtype=np.float32), RATE)
        label, info = Client(url, verbose=False).predict(handle_file(str(empty)), "", api_name="/classify")
    assert "No model is loaded" in config and "not-trained-yet" in config
    assert not label and "No model found at" in info
    log = log_path.read_text()
    assert "No model found at" in log and "Traceback" not in log


def test_gradio_client_api(space_url, clips, reference):
    from gradio_client import Client, handle_file

    client = Client(space_url, verbose=False)
    label, info = client.predict(handle_file(str(clips["good"])), "", api_name="/classify")
    expected = reference(clips["good"])
    assert label["label"] == max(expected, key=expected.get)
    for item in label["confidences"]:
        assert abs(item["confidence"] - expected[item["label"]]) < 1e-4
    assert "good.wav" in info
    label, info = client.predict(handle_file(str(clips["notes"])), "", api_name="/classify")
    assert not label and "notes.wav" in info and "not a readable audio file" in info


def test_twenty_concurrent_requests(space_url, space_model, clips, tmp_path):
    """bench/bench_space.py against the running Space: all 20 answers right, p50/p95 reported."""
    output = tmp_path / "bench.json"
    code = bench.main(
        [
            "--url",
            space_url,
            "--model",
            str(space_model),
            "--clip",
            str(clips["good"]),
            "--requests",
            "20",
            "--output",
            str(output),
        ]
    )
    report = json.loads(output.read_text())
    assert code == 0 and report["requests"] == 20 and report["correct"] == 20
    assert 0 < report["latency_s"]["p50"] <= report["latency_s"]["p95"] <= report["latency_s"]["max"]
    assert report["throughput_rps"] > 0
    print("bench:", json.dumps(report))


# ---------------------------------------------------------------- headless Chromium


@pytest.fixture(scope="module")
def page(space_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = os.environ.get("MISE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        message = "Chromium not found (install it or set MISE_CHROMIUM)"
        if os.environ.get("MISE_REQUIRE_BROWSER", "0") not in ("", "0", "false", "False"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["microphone"])
        page = context.new_page()
        page.goto(space_url)
        page.wait_for_selector("#classify")
        yield page
        browser.close()


def upload_and_classify(page, path: Path) -> str:
    """Upload `path` through the page, click Classify and return the clip-info text once it names the file."""
    clear = page.locator("#clip button[aria-label=Clear]")
    if clear.count():
        clear.first.click()
    page.locator("#clip input[type=file]").first.set_input_files(str(path))
    page.wait_for_selector(f'#clip a[data-testid="download-link"][href$="/{path.name}"]', timeout=30000)
    page.click("#classify")
    page.wait_for_function(
        "(name) => document.querySelector('#clip-info').innerText.includes(name)",
        arg=path.name,
        timeout=60000,
    )
    return page.locator("#clip-info").inner_text()


def shown_label(page) -> str | None:
    value = page.locator("#emotion [data-testid=label-output-value]")
    return value.inner_text().strip() if value.count() else None


@pytest.mark.browser
def test_browser_classifies_a_ravdess_clip(page, clips, reference, id2label):
    info = upload_and_classify(page, clips["good"])
    expected = reference(clips["good"])
    label = shown_label(page)
    assert label in id2label.values() and label == max(expected, key=expected.get)
    assert f"Prediction: {label}" in info and "16000 Hz" in info
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "space.png"), full_page=True)
    assert (ARTIFACTS / "space.png").stat().st_size > 10_000
    print("screenshot:", ARTIFACTS / "space.png")


@pytest.mark.browser
def test_browser_bad_files_get_a_message_and_the_page_keeps_working(page, clips, reference, tmp_path):
    expected = reference(clips["good"])
    top = max(expected, key=expected.get)
    cases = [
        ("notes", "not a readable audio file"),
        ("empty", "empty clip (0 samples)"),
        ("zero_bytes", "empty file (0 bytes)"),
        ("silent", "silent"),
        ("too_long", "longer than the 120 s limit"),
    ]
    for clip, reason in cases:
        info = upload_and_classify(page, clips[clip])
        assert info.startswith("⚠️ Could not classify") and reason in info, info
        assert "Traceback" not in page.content() and shown_label(page) is None
        good = tmp_path / f"good_after_{clip}.wav"
        shutil.copy(clips["good"], good)
        assert "Prediction" in upload_and_classify(page, good) and shown_label(page) == top
    toasts = page.locator(".toast-body").all_inner_texts()
    assert any("too_long_130s.wav" in toast for toast in toasts)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "space_after_bad_input.png"), full_page=True)


@pytest.mark.browser
def test_browser_reports_cropping_resampling_and_downmixing(page, clips):
    info = upload_and_classify(page, clips["long"])
    assert "Cut at pauses into" in info and shown_label(page) is not None
    page.wait_for_selector("#timeline", state="visible", timeout=60000)  # the segments' timeline
    info = upload_and_classify(page, clips["stereo"])
    assert "Resampled from 44100 Hz to 16000 Hz" in info and "Downmixed 2 channels to mono" in info
    assert shown_label(page) is not None


@pytest.mark.browser
def test_browser_example_clip(page, examples_dir, reference):
    example = sorted(examples_dir.iterdir())[0]
    clear = page.locator("#clip button[aria-label=Clear]")
    if clear.count():
        clear.first.click()
    page.get_by_text(example.name, exact=True).click()
    page.wait_for_selector(f'#clip a[data-testid="download-link"][href$="/{example.name}"]', timeout=30000)
    page.click("#classify")
    page.wait_for_function(
        "(name) => document.querySelector('#clip-info').innerText.includes(name)",
        arg=example.name,
        timeout=60000,
    )
    expected = reference(example)
    assert shown_label(page) == max(expected, key=expected.get)


@pytest.mark.browser
def test_browser_recording_from_the_microphone(page, id2label):
    """Chromium's fake microphone (a beep) through the record button: it is classified like an upload."""
    before = page.locator("#clip-info").inner_text()
    clear = page.locator("#clip button[aria-label=Clear]")
    if clear.count():
        clear.first.click()
    page.locator("#clip button[aria-label='Record audio']").click()
    page.locator("#clip button.record-button").click()
    page.wait_for_timeout(2000)
    page.locator("#clip button.stop-button").click()
    page.wait_for_selector('#clip a[data-testid="download-link"]', timeout=30000)
    page.click("#classify")
    page.wait_for_function(
        "(before) => { const t = document.querySelector('#clip-info').innerText; return t !== before && t.includes(' Hz'); }",
        arg=before,
        timeout=60000,
    )
    info = page.locator("#clip-info").inner_text()
    assert "Prediction" in info and shown_label(page) in id2label.values()
    page.locator("#clip button[aria-label='Upload file']").click()
