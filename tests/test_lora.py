"""A decoder-only text encoder (a tiny random Llama built here) LoRA-tuned inside the aligner (stage 1)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from modeling_mise import MiseAlignerConfig, MiseAlignerModel
from modeling_mise.encoders import has_text_lora, load_text_encoder

EMOTIONS = {0: "neutral", 1: "happy", 2: "sad"}
TEXTS = [
    "Kids are talking by the door",
    "Dogs are sitting by the door",
    "I cannot believe you did that again",
    "Fine",
]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def lora_aligner(llama_dir, lora: dict = LORA, **kwargs) -> MiseAlignerModel:
    config = MiseAlignerConfig(
        audio_dim=10,
        text_dim=32,
        projection_dim=8,
        hidden_sizes=[16],
        text_encoder=str(llama_dir),
        text_lora=lora,
        id2label=EMOTIONS,
        **kwargs,
    )
    model = MiseAlignerModel(config)
    model.set_text_encoder()
    return model


def text_features(model: MiseAlignerModel) -> torch.Tensor:
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        return model.encode_text(batch["input_ids"], batch["attention_mask"])


def train_steps(model: MiseAlignerModel, steps: int = 5) -> None:
    """A few stage-1 steps on tokens, so the LoRA matrices move away from their zero start."""
    torch.manual_seed(1)
    audio, labels = torch.randn(4, 10), torch.tensor([0, 1, 2, 0])
    batch = model.tokenize(TEXTS)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        out = model(
            audio, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()


def test_only_lora_and_head_parameters_receive_gradients(tiny_llama_dir):
    model = lora_aligner(tiny_llama_dir)
    encoder = model.text_encoder
    assert has_text_lora(encoder) and encoder.pooling == "last"  # decoder-only: last-token pooling
    base_before = {
        k: v.clone() for k, v in encoder.model.get_base_model().state_dict().items() if "lora" not in k
    }
    model.train()
    assert encoder.training  # trainable adapter: follows the parent's mode
    batch = model.tokenize(TEXTS)
    out = model(
        torch.randn(4, 10),
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=torch.tensor([0, 1, 2, 0]),
    )
    assert out.contrastive_loss is not None and out.text_embeds.shape == (4, 8)
    out.loss.backward()
    with_grad = {
        name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lora = {name for name in trainable if name.startswith("text_encoder.")}
    heads = trainable - lora
    assert lora and all(".lora_A." in name or ".lora_B." in name for name in lora)
    # 2 layers x 2 target modules x (A, B)
    assert len(lora) == 8 and all(("q_proj" in n or "v_proj" in n) for n in lora)
    assert {"logit_scale", "emotion_head.weight"} <= heads and not any("text_encoder" in n for n in heads)
    # lora_B starts at zero, so at the first step only the B matrices (and the heads) get gradients
    assert with_grad <= trainable and {n for n in with_grad if "lora_B" in n} == {
        n for n in lora if "lora_B" in n
    }
    frozen = [
        p for name, p in model.named_parameters() if name.startswith("text_encoder.") and name not in lora
    ]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    train_steps(model)
    base_after = encoder.model.get_base_model().state_dict()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)


def test_save_writes_heads_and_adapter_only_and_load_restores_text_features(tiny_llama_dir, tmp_path):
    model = lora_aligner(tiny_llama_dir)
    base = load_text_encoder(str(tiny_llama_dir)).encode(TEXTS, show_progress=False)
    untuned = text_features(model)
    torch.testing.assert_close(untuned, base, atol=1e-5, rtol=0)  # zero-initialised B: base features
    train_steps(model)
    tuned = text_features(model)
    with torch.no_grad():
        z_t = model.get_text_features(texts=TEXTS)
    assert (tuned - base).abs().max() > 1e-3  # the adapter changed the features

    folder = tmp_path / "aligner"
    model.save_pretrained(folder)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and not any(key.startswith("text_encoder.") or "lora_" in key for key in keys)  # heads only
    adapter = folder / "text_adapter"  # peft's own adapter files
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 4
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as handle:
        adapter_keys = list(handle.keys())
    assert len(adapter_keys) == 8 and all("lora_" in key for key in adapter_keys)
    base_size = (tiny_llama_dir / "model.safetensors").stat().st_size
    assert (adapter / "adapter_model.safetensors").stat().st_size < base_size / 50
    saved = json.loads((folder / "config.json").read_text())
    assert saved["text_encoder"] == str(tiny_llama_dir) and saved["text_lora"]["r"] == 4

    # the audio side loads alone; the text encoder and its adapter load on the first text
    loaded = MiseAlignerModel.from_pretrained(folder)
    assert loaded.text_encoder is None and not loaded.training
    with torch.no_grad():
        audio = torch.randn(3, 10)
        torch.testing.assert_close(loaded.get_audio_features(audio), model.get_audio_features(audio))
        torch.testing.assert_close(loaded.get_text_features(texts=TEXTS), z_t, atol=1e-6, rtol=0)
    assert has_text_lora(loaded.text_encoder)
    torch.testing.assert_close(text_features(loaded), tuned, atol=1e-6, rtol=0)
    # the same adapter through peft alone, on the base model
    from peft import PeftModel

    base_encoder = load_text_encoder(str(tiny_llama_dir))
    base_encoder.model = PeftModel.from_pretrained(base_encoder.model, adapter)
    torch.testing.assert_close(base_encoder.encode(TEXTS, show_progress=False), tuned, atol=1e-5, rtol=0)

    # saving a loaded model again copies its adapter: the text encoder is not loaded for that
    again = MiseAlignerModel.from_pretrained(folder)
    again.save_pretrained(tmp_path / "again")
    assert again.text_encoder is None
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "again" / "text_adapter" / name).read_bytes() == (adapter / name).read_bytes()

    # a folder whose adapter is missing, or does not match text_lora, says so
    (adapter / "adapter_model.safetensors").rename(tmp_path / "moved.safetensors")
    (adapter / "adapter_config.json").rename(tmp_path / "moved.json")
    with pytest.raises(ValueError, match="no LoRA adapter"):
        MiseAlignerModel.from_pretrained(folder).set_text_encoder()
    (tmp_path / "moved.safetensors").rename(adapter / "adapter_model.safetensors")
    (tmp_path / "moved.json").write_text(json.dumps({**adapter_config, "r": 2}))
    (tmp_path / "moved.json").rename(adapter / "adapter_config.json")
    with pytest.raises(ValueError, match="does not match text_lora"):
        MiseAlignerModel.from_pretrained(folder).set_text_encoder()


def test_state_dict_round_trip_for_checkpoints(tiny_llama_dir):
    """Training checkpoints and best-epoch copies use state_dict / load_state_dict: heads + adapter only."""
    model = lora_aligner(tiny_llama_dir)
    train_steps(model)
    state = model.state_dict()
    base_keys = set(load_text_encoder(str(tiny_llama_dir)).model.state_dict())
    adapter_keys = [key for key in state if key.startswith("text_encoder.")]
    assert len(adapter_keys) == 8 and all(".lora_" in key for key in adapter_keys)
    assert not any(key.split(".", 1)[-1] in base_keys for key in state)  # never the base weights
    fresh = lora_aligner(tiny_llama_dir).eval()
    result = fresh.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(fresh.get_text_features(texts=TEXTS), model.get_text_features(texts=TEXTS))
    # a wrapped parent (as DDP / accelerate hold it) sees the same keys under its prefix
    parent = torch.nn.ModuleDict({"module": fresh})
    assert set(parent.state_dict()) == {f"module.{key}" for key in state}
    assert not parent.load_state_dict({f"module.{k}": v for k, v in state.items()}).missing_keys
    # an adapter of another shape is refused with the tensor's name
    other = lora_aligner(tiny_llama_dir, lora={**LORA, "r": 2})
    with pytest.raises(RuntimeError, match="lora_A"):
        other.load_state_dict(state)


def test_missing_transcripts_are_left_out_of_the_contrastive_loss(tiny_llama_dir):
    model = lora_aligner(tiny_llama_dir).eval()
    batch = model.tokenize(TEXTS)
    mask = batch["attention_mask"].clone()
    mask[1] = 0  # clip 1 has no transcript
    audio, labels = torch.randn(4, 10), torch.tensor([0, 1, 2, 0])
    features = model.encode_text(batch["input_ids"], mask)
    assert torch.isnan(features[1]).all() and torch.isfinite(features[[0, 2, 3]]).all()
    out = model(audio, input_ids=batch["input_ids"], attention_mask=mask, labels=labels)
    assert torch.isfinite(out.loss)
    keep = [0, 2, 3]
    reference = model(
        audio[keep], input_ids=batch["input_ids"][keep], attention_mask=batch["attention_mask"][keep]
    )
    torch.testing.assert_close(out.contrastive_loss, reference.contrastive_loss)


def test_bad_lora_settings_name_the_field(tiny_llama_dir):
    with pytest.raises(ValueError, match=r"text_lora: unknown key\(s\) \['rank'\]"):
        MiseAlignerConfig(text_lora={"rank": 8})
    with pytest.raises(ValueError, match=r"text_lora\.r"):
        MiseAlignerConfig(text_lora={"r": 0})
    with pytest.raises(ValueError, match=r"text_lora\.dropout"):
        MiseAlignerConfig(text_lora={"dropout": 1.5})
    with pytest.raises(ValueError, match="use_text"):
        MiseAlignerConfig(text_lora={}, use_text=False)
    with pytest.raises(ValueError, match="text_pooling"):
        MiseAlignerConfig(text_pooling="max")
    assert MiseAlignerConfig(text_lora={}).text_lora == {
        "r": 8,
        "alpha": 16.0,
        "dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"],
    }
    config = MiseAlignerConfig(
        audio_dim=10,
        text_dim=32,
        text_encoder=str(tiny_llama_dir),
        text_lora={"target_modules": ["not_a_layer"]},
        id2label=EMOTIONS,
    )
    with pytest.raises(ValueError, match=r"text_lora\.target_modules"):
        MiseAlignerModel(config).set_text_encoder()
    wrong_size = MiseAlignerModel(
        MiseAlignerConfig(audio_dim=10, text_dim=384, text_encoder=str(tiny_llama_dir))
    )
    with pytest.raises(ValueError, match="text_dim=384"):
        wrong_size.set_text_encoder()
