"""Hub loading both ways, the end-to-end audio classifier and `pipeline("audio-classification")`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from clean_process import run_clean
from transformers import (
    AudioClassificationPipeline,
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForSequenceClassification,
    Wav2Vec2Model,
    pipeline,
)

import modeling_mise  # noqa: F401  (registers the Auto classes)
from modeling_mise import (
    MiseAlignerConfig,
    MiseAlignerModel,
    MiseAudioClassificationPipeline,
    MiseClassifierConfig,
    MiseClassifierModel,
    MiseFeatureExtractor,
    MiseForAudioClassification,
    MiseGeneratorConfig,
    MiseGeneratorModel,
)
from modeling_mise.audio import AudioInputError, AudioPolicy, load_audio
from modeling_mise.encoders import load_audio_encoder

EMOTIONS = {0: "calm", 1: "angry", 2: "sad"}


def small_models():
    torch.manual_seed(0)
    aligner = MiseAlignerModel(
        MiseAlignerConfig(audio_dim=88, text_dim=384, projection_dim=16, hidden_sizes=[32], id2label=EMOTIONS)
    )
    generator = MiseGeneratorModel(
        MiseGeneratorConfig(
            feature_dim=16,
            text_code_dim=16,
            noise_dim=4,
            hidden_sizes=[16],
            discriminator_hidden_sizes=[16],
            id2label=EMOTIONS,
        )
    )
    classifier = MiseClassifierModel(MiseClassifierConfig(input_dim=16, hidden_sizes=[16], id2label=EMOTIONS))
    return aligner.eval(), generator.eval(), classifier.eval()


@pytest.mark.parametrize(
    "model_type", ["mise-aligner", "mise-generator", "mise-classifier", "mise-audio-classifier"]
)
def test_default_configs_build_offline(model_type):
    config = AutoConfig.for_model(model_type)
    model = AutoModel.from_config(config)
    assert model.config.model_type == model_type
    assert sum(p.numel() for p in model.parameters()) > 0


def test_auto_classes_load_registered_models(tmp_path):
    for model in small_models():
        folder = tmp_path / model.config.model_type
        model.save_pretrained(folder)
        saved = json.loads((folder / "config.json").read_text())
        assert saved["model_type"] == model.config.model_type and "auto_map" in saved
        assert type(AutoConfig.from_pretrained(folder)) is type(model.config)
        loaded = AutoModel.from_pretrained(folder)
        assert type(loaded) is type(model)
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, loaded.state_dict()[name])


def test_trust_remote_code_without_the_package(tmp_path):
    aligner, generator, classifier = small_models()
    for model in (aligner, generator, classifier):
        model.save_pretrained(tmp_path / model.config.model_type)
    x = torch.randn(2, 88, generator=torch.Generator().manual_seed(0))
    expected = {
        "aligner": aligner.get_audio_features(x).tolist(),
        "generator": generator.generate(
            num_per_label=2, generator=torch.Generator().manual_seed(5)
        ).features.tolist(),
        "classifier": classifier(features=aligner.get_audio_features(x)).logits.tolist(),
    }
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    out = run_clean(
        f"""
        import json, torch
        from pathlib import Path
        from transformers import AutoModel
        root = Path({str(tmp_path)!r})
        expected = json.loads((root / "expected.json").read_text())
        x = torch.randn(2, 88, generator=torch.Generator().manual_seed(0))
        aligner = AutoModel.from_pretrained(root / "mise-aligner", trust_remote_code=True).eval()
        generator = AutoModel.from_pretrained(root / "mise-generator", trust_remote_code=True).eval()
        classifier = AutoModel.from_pretrained(root / "mise-classifier", trust_remote_code=True).eval()
        assert "modeling_mise" not in type(aligner).__module__, type(aligner).__module__
        z = aligner.get_audio_features(x)
        assert torch.allclose(z, torch.tensor(expected["aligner"]), atol=1e-6)
        g = generator.generate(num_per_label=2, generator=torch.Generator().manual_seed(5))
        assert torch.allclose(g.features, torch.tensor(expected["generator"]), atol=1e-6)
        assert torch.allclose(classifier(features=z).logits, torch.tensor(expected["classifier"]), atol=1e-5)
        print("REMOTE_OK", type(generator).__module__, generator.config.id2label[1])
        """,
        tmp_path,
    )
    assert "REMOTE_OK" in out and "angry" in out


GENERATOR_LINE_BUDGET = 800
AUDIO_STACK = ("soundfile", "torchcodec", "opensmile", "librosa", "torchaudio", "audioread")


def test_generator_folder_is_small_and_loads_without_the_packages(tmp_path):
    """The generator maps noise to vectors: its folder ships a few hundred lines and no audio stack."""
    _, generator, _ = small_models()
    folder = tmp_path / "generator"
    generator.save_pretrained(folder)
    code = {path.name: path.read_text() for path in folder.glob("*.py")}
    assert "modeling_generator.py" in code and "configuration_generator.py" in code
    lines = sum(len(text.splitlines()) for text in code.values())
    assert lines <= GENERATOR_LINE_BUDGET, f"{lines} lines of Python in the generator folder: {sorted(code)}"
    assert not {"audio.py", "encoders.py", "segments.py", "feature_extraction_mise.py"} & set(code)
    imported = {
        name.split(".")[0]
        for text in code.values()
        for name in re.findall(r"^\s*(?:from|import)\s+([A-Za-z_][\w.]*)", text, flags=re.MULTILINE)
    }
    assert not imported & {*AUDIO_STACK, "mise", "modeling_mise"}, imported
    expected = generator.generate(num_per_label=2, generator=torch.Generator().manual_seed(5)).features
    torch.save(expected, tmp_path / "expected.pt")
    out = run_clean(
        f"""
        import sys, torch
        from transformers import AutoModel
        torch.set_num_threads({torch.get_num_threads()})  # as here: matrix products differ in the last bit otherwise
        generator = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        features = generator.generate(num_per_label=2, generator=torch.Generator().manual_seed(5)).features
        assert torch.equal(features, torch.load({str(tmp_path / "expected.pt")!r}))
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in {AUDIO_STACK!r})
        print("GENERATOR_OK", type(generator).__module__.split(".")[0], loaded)
        """,
        tmp_path,
    )
    assert "GENERATOR_OK transformers_modules []" in out, out


@pytest.fixture(scope="module")
def opensmile_classifier(tmp_path_factory):
    aligner, _, classifier = small_models()
    model = MiseForAudioClassification.from_components(
        aligner, classifier, load_audio_encoder("opensmile/eGeMAPSv02")
    )
    folder = tmp_path_factory.mktemp("audio_classifier")
    model.save_pretrained(folder)
    MiseFeatureExtractor(sampling_rate=model.config.sampling_rate).save_pretrained(folder)
    return model, folder


def test_end_to_end_classifier_on_real_clip(opensmile_classifier, ravdess_wav):
    model, folder = opensmile_classifier
    assert model.config.id2label == EMOTIONS
    waveform, rate = load_audio(ravdess_wav, target_sampling_rate=16000)
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert isinstance(extractor, MiseFeatureExtractor)
    inputs = extractor(waveform, sampling_rate=rate, return_tensors="pt")
    loaded = AutoModelForAudioClassification.from_pretrained(folder).eval()
    assert type(loaded) is MiseForAudioClassification
    with torch.no_grad():
        logits = loaded(**inputs).logits
        reference = model(**inputs).logits
    assert logits.shape == (1, 3) and torch.allclose(logits, reference, atol=1e-5)
    # the same clip through the aligner + classifier on encoder features
    hidden = load_audio_encoder("opensmile/eGeMAPSv02").encode([waveform], show_progress=False)
    with torch.no_grad():
        manual = model.classifier(features=model.aligner.get_audio_features(hidden)).logits
    assert torch.allclose(logits, manual, atol=1e-4)
    # padding a batch does not change a clip's prediction
    short = waveform[:rate]
    batch = extractor([waveform, short], sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        batched = loaded(**batch).logits
    assert torch.allclose(batched[0], logits[0], atol=1e-4)
    labelled = loaded(**inputs, labels=torch.tensor([1]))
    assert labelled.loss is not None and loaded(**inputs).loss is None


def test_pipeline_classifies_a_path_and_an_array_at_another_rate(opensmile_classifier, ravdess_wav):
    _, folder = opensmile_classifier
    classify = pipeline("audio-classification", model=str(folder))
    from_path = classify(ravdess_wav, top_k=3)
    assert {item["label"] for item in from_path} == set(EMOTIONS.values())
    assert abs(sum(item["score"] for item in from_path) - 1.0) < 1e-4
    waveform, _ = load_audio(ravdess_wav, target_sampling_rate=44100)
    stereo = np.stack([waveform, waveform], axis=1)
    from_array = classify({"raw": stereo, "sampling_rate": 44100}, top_k=3)
    assert from_array[0]["label"] == from_path[0]["label"]
    assert abs(from_array[0]["score"] - from_path[0]["score"]) < 0.05


def test_audio_classifier_with_remote_code_and_bad_input(opensmile_classifier, ravdess_wav, tmp_path):
    _, folder = opensmile_classifier
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"].endswith("MiseForAudioClassification")
    assert "AutoFeatureExtractor" in json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]
    out = run_clean(
        f"""
        import soundfile as sf, torch
        from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification
        folder = {str(folder)!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        again = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True).eval()
        extractor = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
        audio, rate = sf.read({ravdess_wav!r}, dtype="float32")
        inputs = extractor(audio, sampling_rate=rate, return_tensors="pt")
        with torch.no_grad():
            a, b = model(**inputs).logits, again(**inputs).logits
        assert torch.allclose(a, b)
        print("PRED", model.config.id2label[int(a.argmax())])
        """,
        tmp_path,
    )
    assert "PRED" in out
    extractor = MiseFeatureExtractor()
    bad = np.zeros(16000, dtype=np.float32)
    bad[10] = np.nan
    with pytest.raises(ValueError, match="NaN|non-finite"):
        extractor(bad, sampling_rate=16000)
    with pytest.raises(ValueError, match="empty|zero"):
        extractor(np.zeros(0, dtype=np.float32), sampling_rate=16000)


def test_end_to_end_with_a_transformers_encoder(tmp_path, ravdess_wav):
    """A tiny Wav2Vec2 as the frozen encoder: its weights travel inside the saved classifier."""
    torch.manual_seed(0)
    w2v_config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    encoder_dir = tmp_path / "tiny-wav2vec2"
    Wav2Vec2Model(w2v_config).save_pretrained(encoder_dir)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(encoder_dir)
    encoder = load_audio_encoder(str(encoder_dir))
    aligner = MiseAlignerModel(
        MiseAlignerConfig(
            audio_dim=16,
            projection_dim=8,
            hidden_sizes=[8],
            audio_encoder=str(encoder_dir),
            id2label=EMOTIONS,
        )
    )
    classifier = MiseClassifierModel(MiseClassifierConfig(input_dim=8, hidden_sizes=[8], id2label=EMOTIONS))
    model = MiseForAudioClassification.from_components(aligner.eval(), classifier.eval(), encoder)
    folder = tmp_path / "w2v-classifier"
    model.save_pretrained(folder)
    MiseFeatureExtractor().save_pretrained(folder)
    waveform, _ = load_audio(ravdess_wav, target_sampling_rate=16000)
    inputs = MiseFeatureExtractor()(waveform, return_tensors="pt")
    # load where the encoder folder no longer exists: the weights must come from the classifier's file
    encoder_dir.rename(tmp_path / "moved-away")
    loaded = AutoModelForAudioClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=1e-5)
    sf.write(tmp_path / "clip.wav", waveform, 16000)
    result = pipeline("audio-classification", model=str(folder))(str(tmp_path / "clip.wav"))
    assert result[0]["label"] in EMOTIONS.values()


def test_feature_extractor_applies_the_input_policy(opensmile_classifier, ravdess_wav, caplog):
    _, folder = opensmile_classifier
    saved = json.loads((folder / "preprocessor_config.json").read_text())
    assert (saved["min_duration_s"], saved["silence_dbfs"], saved["max_duration_s"]) == (0.25, -60.0, 30.0)
    extractor = MiseFeatureExtractor(max_duration_s=2.0, min_duration_s=0.5)
    assert extractor.policy == AudioPolicy(min_seconds=0.5, max_seconds=2.0)
    waveform, rate = load_audio(ravdess_wav, target_sampling_rate=16000)
    with caplog.at_level("WARNING", logger="modeling_mise"):
        inputs = extractor(waveform, sampling_rate=rate)
    assert inputs["input_values"].shape == (1, 2 * rate)  # classified on the window, and it says so
    assert any(
        "is longer than the 2 s window: only the first 2 s are classified" in r.message
        for r in caplog.records
    )
    with pytest.raises(AudioInputError, match=r"<input 1>: too short \(0\.30 s < 0\.50 s\)"):
        extractor([waveform, waveform[: int(0.3 * rate)]], sampling_rate=rate)
    with pytest.raises(AudioInputError, match=r"<input>: silent \(peak -80\.0 dBFS\)"):
        extractor(np.full(rate, 1e-4, dtype=np.float32), sampling_rate=rate)
    with pytest.raises(ValueError, match="AudioPolicy.min_seconds"):
        MiseFeatureExtractor(min_duration_s=-1)


def other_audio_classifier(folder: Path) -> Path:
    """A tiny Wav2Vec2 audio classifier (not MISE) saved in `folder`."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
        num_labels=2, id2label={0: "no", 1: "yes"},
    )  # fmt: skip
    Wav2Vec2ForSequenceClassification(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor().save_pretrained(folder)
    return folder


def test_pipeline_is_mise_for_mise_models_only(opensmile_classifier, tmp_path):
    """`import modeling_mise` gives MISE models the MISE pipeline; another model in the same process gets the
    stock `AudioClassificationPipeline`, with the stock behaviour."""
    model, folder = opensmile_classifier
    other = pipeline("audio-classification", model=str(other_audio_classifier(tmp_path / "other")))
    assert type(other) is AudioClassificationPipeline
    silent = np.zeros(16000, dtype=np.float32)
    assert len(other(silent)) == 2  # the stock pipeline classifies silence; MISE's policy is not applied
    with pytest.raises(
        ValueError, match="Malformed soundfile"
    ):  # the stock error for bytes that are not audio
        other(b"meeting notes, not audio" * 20)
    for mise in (
        pipeline("audio-classification", model=str(folder)),
        pipeline("audio-classification", model=str(folder), trust_remote_code=True),
        pipeline("audio-classification", model=model, feature_extractor=MiseFeatureExtractor()),
    ):
        assert type(mise) is MiseAudioClassificationPipeline
        with pytest.raises(AudioInputError, match="silent"):
            mise(silent)
    assert (
        type(pipeline("audio-classification", model=str(tmp_path / "other"))) is AudioClassificationPipeline
    )


def test_pipeline_from_a_saved_folder_without_the_packages(opensmile_classifier, ravdess_wav, tmp_path):
    """A saved MISE classifier names its pipeline (`custom_pipelines`) and carries its code: with
    `trust_remote_code=True` and neither package, `pipeline()` gives the MISE pipeline, other models the stock one."""
    _, folder = opensmile_classifier
    saved = json.loads((folder / "config.json").read_text())
    assert saved["custom_pipelines"]["audio-classification"]["impl"] == (
        "pipeline_audio_classification.MiseAudioClassificationPipeline"
    )
    assert (folder / "pipeline_audio_classification.py").is_file()
    expected = pipeline("audio-classification", model=str(folder))(ravdess_wav, window_seconds=1.0)
    other = other_audio_classifier(tmp_path / "other")
    out = run_clean(
        f"""
        import numpy as np
        from transformers import AudioClassificationPipeline, pipeline
        mise = pipeline("audio-classification", model={str(folder)!r}, trust_remote_code=True)
        assert type(mise).__name__ == "MiseAudioClassificationPipeline", type(mise)
        assert type(mise).__module__.startswith("transformers_modules."), type(mise).__module__
        print("RESULT", mise({ravdess_wav!r}, window_seconds=1.0))
        try:
            mise(np.zeros(16000, dtype=np.float32))
        except ValueError as error:
            print("REFUSED", error)
        other = pipeline("audio-classification", model={str(other)!r})
        assert type(other) is AudioClassificationPipeline, type(other)
        print("OTHER", len(other(np.zeros(16000, dtype=np.float32))))
        """,
        tmp_path,
    )
    assert f"RESULT {expected}" in out
    assert "REFUSED <array>: silent (every sample is zero)" in out and "OTHER 2" in out
