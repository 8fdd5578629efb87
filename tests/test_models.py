"""The three feature-level models: shapes, losses, gradients, save/load, configs."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig

import modeling_mise  # noqa: F401  (registers the Auto classes)
from modeling_mise import (
    MiseAlignerConfig,
    MiseAlignerModel,
    MiseAudioClassifierConfig,
    MiseClassifierConfig,
    MiseClassifierModel,
    MiseGeneratorConfig,
    MiseGeneratorModel,
)

ID2LABEL = {0: "low", 1: "mid", 2: "high"}


def tiny_aligner(**kwargs) -> MiseAlignerModel:
    config = MiseAlignerConfig(
        audio_dim=10, text_dim=6, projection_dim=8, hidden_sizes=[12], id2label=ID2LABEL, **kwargs
    )
    return MiseAlignerModel(config)


def tiny_generator(**kwargs) -> MiseGeneratorModel:
    config = MiseGeneratorConfig(
        feature_dim=8,
        text_code_dim=8,
        noise_dim=4,
        hidden_sizes=[16],
        discriminator_hidden_sizes=[16, 16],
        id2label=ID2LABEL,
        **kwargs,
    )
    return MiseGeneratorModel(config)


def tiny_classifier(**kwargs) -> MiseClassifierModel:
    return MiseClassifierModel(
        MiseClassifierConfig(input_dim=8, text_dim=8, hidden_sizes=[16], id2label=ID2LABEL, **kwargs)
    )


def assert_finite_grads(model: torch.nn.Module) -> None:
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------------------------- aligner
def test_aligner_shapes_normalised_and_loss_only_when_asked():
    torch.manual_seed(0)
    model = tiny_aligner()
    audio, text = torch.randn(5, 10), torch.randn(5, 6)
    out = model(audio_features=audio, text_features=text)
    assert out.loss is None and out.logits.shape == (5, 3)
    assert out.audio_embeds.shape == (5, 8) and out.text_embeds.shape == (5, 8)
    assert torch.allclose(out.audio_embeds.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(model.get_text_features(text).norm(dim=-1), torch.ones(5), atol=1e-5)
    assert out.contrastive_loss is not None and out.ce_loss is None
    assert abs(out.temperature.item() - 0.07) < 1e-6

    labels = torch.tensor([0, 1, 2, 0, 1])
    out = model(audio_features=audio, text_features=text, labels=labels)
    expected = out.ce_loss + model.config.lambda_cl * out.contrastive_loss
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    assert_finite_grads(model)
    assert model.logit_scale.grad is not None  # the temperature is learned

    only_contrastive = model(audio_features=audio, text_features=text, return_loss=True)
    weighted = model.config.lambda_cl * only_contrastive.contrastive_loss
    assert torch.allclose(only_contrastive.loss, weighted)


def test_aligner_missing_transcripts_and_audio_only():
    model = tiny_aligner()
    text = torch.randn(4, 6)
    text[1] = float("nan")  # a clip without transcript
    out = model(torch.randn(4, 10), text, labels=torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(out.loss)
    audio_only = tiny_aligner(use_text=False)
    out = audio_only(torch.randn(4, 10), labels=torch.tensor([0, 1, 2, 0]))
    assert out.contrastive_loss is None and torch.allclose(out.loss, out.ce_loss)
    with pytest.raises(ValueError, match="use_text=False"):
        audio_only.get_text_features(text)


def test_aligner_feature_statistics_are_saved(tmp_path):
    model = tiny_aligner().eval()
    model.set_feature_statistics(torch.full((10,), 3.0), torch.full((10,), 2.0), torch.ones(6), torch.ones(6))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = MiseAlignerModel.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.audio_mean, model.audio_mean) and torch.equal(loaded.audio_std, model.audio_std)
    x = torch.randn(3, 10)
    assert torch.allclose(loaded.get_audio_features(x), model.get_audio_features(x))


def test_feature_statistics_are_the_one_standardisation():
    """Unbiased std floored at 1e-6 (a constant feature stays finite), 1 for a single row; a NumPy array gives
    NumPy arrays of the same numbers (the MI probe and the classic baseline standardise NumPy features)."""
    import numpy as np

    from modeling_mise.layers import STD_FLOOR, feature_statistics, standardize

    rows = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]], dtype=torch.float64)
    mean, std = feature_statistics(rows)
    torch.testing.assert_close(mean, torch.tensor([3.0, 5.0, 5.0], dtype=torch.float64))
    torch.testing.assert_close(std, torch.tensor([2.0, STD_FLOOR, 13.0**0.5], dtype=torch.float64))
    assert torch.equal(standardize(rows, mean, std)[:, 1], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(feature_statistics(rows[:1])[1], torch.ones(3, dtype=torch.float64))
    as_numpy = feature_statistics(rows.numpy())
    assert all(isinstance(value, np.ndarray) and value.dtype == np.float64 for value in as_numpy)
    np.testing.assert_array_equal(as_numpy[1], std.numpy())
    model = tiny_aligner().eval()  # the aligner divides by the same floor whatever std it is given
    model.set_feature_statistics(torch.zeros(10), torch.zeros(10))
    assert torch.equal(model.audio_std, torch.full((10,), STD_FLOOR))
    with pytest.raises(ValueError, match="rows of shape"):
        feature_statistics(torch.ones(3))


def test_aligner_rejects_wrong_feature_size():
    with pytest.raises(ValueError, match="audio_dim"):
        tiny_aligner()(torch.randn(2, 11))


# ----------------------------------------------------------------------------------------------- generator
def test_generator_generate_is_reproducible_and_labelled():
    model = tiny_generator()
    first = model.generate(num_per_label=4, generator=torch.Generator().manual_seed(7))
    second = model.generate(num_per_label=4, generator=torch.Generator().manual_seed(7))
    other = model.generate(num_per_label=4, generator=torch.Generator().manual_seed(8))
    assert first.features.shape == (12, 8)
    assert first.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(first.features, second.features)
    assert not torch.allclose(first.features, other.features)
    assert torch.allclose(first.features.norm(dim=-1), torch.ones(12), atol=1e-5)

    codes = torch.randn(2, 8)
    out = model.generate(
        labels=[2, 0], text_codes=codes, num_per_label=3, generator=torch.Generator().manual_seed(0)
    )
    assert out.labels.tolist() == [2, 2, 2, 0, 0, 0] and out.text_codes.shape == (6, 8)


def test_generator_null_code_replaces_missing_text():
    model = tiny_generator()
    noise = model.sample_noise(2, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1])
    without = model.generate_features(noise, labels, None)
    nan_codes = torch.full((2, 8), float("nan"))
    assert torch.allclose(model.generate_features(noise, labels, nan_codes), without)
    with_codes = model.generate_features(noise, labels, torch.randn(2, 8))
    assert not torch.allclose(with_codes, without)
    # the "no text code" ablation ignores text codes entirely
    ablated = tiny_generator(use_text_code=False)
    assert torch.allclose(
        ablated.generate_features(noise, labels, torch.randn(2, 8)), ablated.generate_features(noise, labels)
    )


def test_generator_forward_heads_and_gradients():
    torch.manual_seed(0)
    model = tiny_generator(lambda_y=2.0, lambda_t=0.5)
    labels = torch.tensor([0, 1, 2, 1])
    codes = torch.randn(4, 8)
    noise = model.sample_noise(4, generator=torch.Generator().manual_seed(0))
    out = model(labels=labels, text_codes=codes, noise=noise)
    assert torch.equal(out.features, model.generate_features(noise, labels, codes))
    assert out.features.shape == (4, 8) and out.adversarial_logits.shape == (4,)
    assert out.emotion_logits.shape == (4, 3) and out.text_code_pred.shape == (4, 8)
    (out.adversarial_logits.sum() + out.emotion_logits.sum() + out.text_code_pred.sum()).backward()
    assert_finite_grads(model)
    disc = model.discriminate(torch.randn(3, 8))
    assert disc.adversarial_logits.shape == (3,) and disc.emotion_logits.shape == (3, 3)
    g_params = {id(p) for p in model.generator_parameters()}
    d_params = {id(p) for p in model.discriminator_parameters()}
    assert not g_params & d_params
    assert g_params | d_params == {id(p) for p in model.parameters()}


def test_generator_multimodal_text_side():
    model = tiny_generator(multimodal=True)
    noise = model.sample_noise(3)
    t_hat = model.generate_text_codes(noise, torch.tensor([0, 1, 2]), torch.randn(3, 8))
    assert t_hat.shape == (3, 8)
    assert torch.allclose(t_hat.norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="multimodal"):
        tiny_generator().generate_text_codes(noise, torch.tensor([0, 1, 2]), torch.randn(3, 8))


def test_generator_rejects_bad_labels():
    with pytest.raises(ValueError, match="emotion ids"):
        tiny_generator().generate(labels=[0, 5])
    with pytest.raises(ValueError, match="num_per_label"):
        tiny_generator().generate(num_per_label=0)


# ----------------------------------------------------------------------------------------------- classifier
def test_classifier_shapes_loss_and_multimodal():
    model = tiny_classifier()
    out = model(features=torch.randn(4, 8))
    assert out.loss is None and out.logits.shape == (4, 3)
    out = model(features=torch.randn(4, 8), labels=torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    assert_finite_grads(model)
    soft = torch.tensor([[0.5, 0.5, 0.0]]).repeat(4, 1)
    assert torch.isfinite(model(features=torch.randn(4, 8), labels=soft).loss)
    multimodal = tiny_classifier(multimodal=True)
    assert multimodal(features=torch.randn(2, 16)).logits.shape == (2, 3)
    with pytest.raises(ValueError, match="16"):
        multimodal(features=torch.randn(2, 8))


# ----------------------------------------------------------------------------------------------- all three
@pytest.mark.parametrize("factory", [tiny_aligner, tiny_generator, tiny_classifier])
def test_save_load_round_trip_and_config_dict(factory, tmp_path):
    torch.manual_seed(0)
    model = factory().eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.config.id2label == ID2LABEL
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    config_class = type(model.config)
    again = config_class.from_dict(model.config.to_dict())
    assert again.to_dict() == model.config.to_dict()
    if isinstance(model, MiseGeneratorModel):
        a = model.generate(num_per_label=2, generator=torch.Generator().manual_seed(3)).features
        b = loaded.generate(num_per_label=2, generator=torch.Generator().manual_seed(3)).features
    elif isinstance(model, MiseAlignerModel):
        x = torch.randn(2, 10)
        a, b = model(x).logits, loaded(x).logits
    else:
        x = torch.randn(2, 8)
        a, b = model(x).logits, loaded(x).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("config_class", "field", "value"),
    [
        (MiseAlignerConfig, "projection_dim", 0),
        (MiseAlignerConfig, "dropout", 1.5),
        (MiseAlignerConfig, "tau_init", -1.0),
        (MiseAlignerConfig, "hidden_sizes", "256"),
        (MiseAlignerConfig, "lambda_cl", float("nan")),
        (MiseGeneratorConfig, "noise_dim", -3),
        (MiseGeneratorConfig, "lambda_y", -1.0),
        (MiseGeneratorConfig, "text_code_dropout", 2.0),
        (MiseClassifierConfig, "input_dim", 2.5),
        (MiseClassifierConfig, "input_scale", 0),
        (MiseAudioClassifierConfig, "sampling_rate", 0),
        (MiseAudioClassifierConfig, "max_duration_s", -1),
    ],
)
def test_bad_config_values_name_the_field(config_class, field, value):
    with pytest.raises(ValueError, match=field):
        config_class(**{field: value})


def test_single_class_is_rejected():
    with pytest.raises(ValueError, match="id2label"):
        MiseClassifierConfig(id2label={0: "only"})


def test_audio_classifier_config_checks_dimensions():
    with pytest.raises(ValueError, match="input_dim"):
        MiseAudioClassifierConfig(
            aligner_config=MiseAlignerConfig(projection_dim=16),
            classifier_config=MiseClassifierConfig(input_dim=8),
        )


def test_audio_classifier_config_holds_sub_configs_and_reads_older_files(tmp_path):
    """The parts are config objects (`sub_configs`), saved nested; a `config.json` of an earlier version (plain
    nested dicts without `model_type`, speaker pair included) loads the same."""
    aligner = MiseAlignerConfig(projection_dim=8, id2label=ID2LABEL)
    classifier = MiseClassifierConfig(input_dim=8, hidden_sizes=[], id2label=ID2LABEL)
    config = MiseAudioClassifierConfig(
        aligner_config=aligner,
        classifier_config=classifier,
        speaker_aligner_config=aligner,
        speaker_classifier_config=classifier,
        speaker_normalization={"allowed": True},
    )
    assert set(MiseAudioClassifierConfig.sub_configs) == {
        "aligner_config", "classifier_config", "speaker_aligner_config", "speaker_classifier_config"
    }  # fmt: skip
    assert isinstance(config.aligner_config, MiseAlignerConfig) and config.aligner_config is not aligner
    assert isinstance(config.speaker_classifier_config, MiseClassifierConfig) and config.speaker_adaptive
    assert config.aligner_config is config.aligner_config  # an attribute, not rebuilt on access
    assert config.id2label == ID2LABEL and not config.multimodal
    config.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert saved["aligner_config"]["model_type"] == "mise-aligner"
    assert saved["speaker_classifier_config"]["input_dim"] == 8

    old = dict(saved)  # as an earlier version wrote it: the parts as plain dicts
    for key in MiseAudioClassifierConfig.sub_configs:
        old[key] = {k: v for k, v in saved[key].items() if k not in ("model_type", "transformers_version")}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    for folder in ("new", "old"):
        loaded = AutoConfig.from_pretrained(tmp_path / folder)
        assert isinstance(loaded.aligner_config, MiseAlignerConfig), folder
        assert isinstance(loaded.speaker_aligner_config, MiseAlignerConfig) and loaded.speaker_adaptive
        assert loaded.aligner_config.projection_dim == 8 and loaded.classifier_config.hidden_sizes == []
        assert loaded.id2label == ID2LABEL and loaded.speaker_normalization == {"allowed": True}


def test_fast_dropout_drops_with_probability_p_scales_the_rest_and_masks_the_gradient():
    from torch import nn

    from modeling_mise.layers import FastDropout

    dropout = FastDropout(0.2)
    torch.manual_seed(0)
    ones = torch.ones(1000, 1000)
    out = dropout(ones)
    assert abs((out == 0).float().mean().item() - 0.2) < 0.002  # 1e6 draws: 0.2 +- 4 sd
    assert set(out.unique().tolist()) == {0.0, 1.25}
    rows = (out == 0).float().mean(1)  # no pattern across rows: every row near p as well
    assert rows.min() > 0.14 and rows.max() < 0.26
    torch.manual_seed(0)
    assert torch.equal(dropout(ones), out)  # seeded: the same mask
    inputs = torch.randn(33, 7, requires_grad=True)  # a size that is not a multiple of 4
    kept = dropout(inputs)
    kept.sum().backward()
    assert torch.equal(inputs.grad, (kept != 0).float() * 1.25)
    dropout.eval()
    assert torch.equal(dropout(inputs), inputs)
    assert torch.equal(FastDropout(0.0)(inputs), inputs)
    assert isinstance(dropout, nn.Dropout) and torch.equal(FastDropout(1.0)(ones), torch.zeros_like(ones))
