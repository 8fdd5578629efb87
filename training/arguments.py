"""Argument dataclasses of `training/train.py`, parsed by `HfArgumentParser` from a YAML/JSON file plus flags.

`python training/train.py CONFIG.yaml --key value ...`: the file gives the values, every flag overrides the
key of the same name. The method's hyper-parameters have one owner, `training/configs/mise.yaml` (the shipped
method): their defaults here are read from it (`shipped`), so `--help` and a run without that file describe
the method that ships.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import yaml
from transformers import HfArgumentParser

from mise.cache import default_cache_dir
from mise.console import UsageError
from mise.data import MIN_CLASS_CLIPS, MIN_CLASS_SPEAKERS
from mise.folds import PROTOCOLS
from modeling_mise.audio import DEFAULT_POLICY
from modeling_mise.configuration_aligner import LORA_DEFAULTS, TEXT_DTYPES, TEXT_POOLINGS

AUGMENTATIONS = ("none", "noise", "mixup", "gan", "mise")
GENERATOR_SELECTIONS = ("mi", "mi_recall", "classifier")
SPEAKER_NORMALIZATION_MODES = ("auto", "true", "false")
SPLIT_NEEDS = (
    "test_speakers / split_column: protocol 'split' needs a split column in the corpus (split_column, a "
    "column of train / validation / test per row) or test_speakers (with optional validation_speakers)"
)


class ConfigError(UsageError):
    """A malformed training configuration; the message names the field (the flag of the same name). Exit 2."""


METHOD_CONFIG = Path(__file__).resolve().parent / "configs" / "mise.yaml"


def _method_values() -> dict:
    values = yaml.safe_load(METHOD_CONFIG.read_text())
    if not isinstance(values, dict):
        raise ConfigError(f"{METHOD_CONFIG}: expected a mapping of keys to values")
    return values


METHOD = _method_values()  # the shipped method's hyper-parameters


def shipped(name: str) -> dict:
    """`field` keywords whose default is the shipped method's value of `name` (`training/configs/mise.yaml`)."""
    value = METHOD[name]
    if isinstance(value, list):
        return {"default_factory": lambda: list(value)}
    return {"default": value}


# the stage-1 settings `aligner_candidates` may vary, each with how its value is read
ALIGNER_CANDIDATE_KEYS = {
    "aligner_weight_decay": float,
    "aligner_dropout": float,
    "aligner_input_dropout": float,
    "aligner_hidden_sizes": lambda text: [int(size) for size in text.split("+") if size],
    "lambda_cl": float,
}


NONE_VALUES = ("", "none", "None")  # how a config or flag says "no value" for an optional string


def none_if_unset(value):
    """``None`` for an optional string given as empty or `none`, the value otherwise."""
    return None if value in NONE_VALUES else value


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value is None or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}: must be {bound}, got {value!r}")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}: must lie in [0, 1], got {value!r}")


def _dropout(name: str, value: float) -> None:
    """A dropout rate: 1 would drop every unit (and scale by 1 / 0)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name}: a dropout rate must lie in [0, 1), got {value!r}")


@dataclass
class DataArguments:
    """Which corpus, how its labels map, which bad files to reject, which folds to run, where features cache."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Manifest CSV, local audiofolder directory, or `datasets` Hub id / local dataset dir."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local folder a relative `dataset` path lies in, or the `data_dir` of a Hub dataset."
        },
    )
    dataset_license: str | None = field(
        default=None,
        metadata={"help": "Licence id of the corpus (e.g. cc-by-4.0) for the model cards; default: the known "
                  "corpus' licence (RAVDESS, CREMA-D, IEMOCAP, MSP-Podcast), else not recorded."},
    )  # fmt: skip
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset to read."})
    audio_column: str | None = field(
        default=None, metadata={"help": "Audio column; default `path` for a manifest, `audio` for datasets."}
    )
    label_column: str = field(default="emotion", metadata={"help": "Emotion label column."})
    speaker_column: str = field(
        default="speaker", metadata={"help": "Speaker id column (folds group on it)."}
    )
    transcript_column: str | None = field(
        default="transcript",
        metadata={"help": "Transcript column (optional in the data); `none` for no text."},
    )
    session_column: str | None = field(
        default="session", metadata={"help": "Session column (optional; needed by protocol loso_session)."}
    )
    split_column: str | None = field(
        default="split",
        metadata={
            "help": "Column giving each row's part of a given split, train / validation / test (also valid, "
            "val, dev, development); protocol split uses it when the corpus has it (then leave test_speakers unset), other "
            "protocols ignore it; `none` for no column. Not `split`, the split of a Hub dataset to read."
        },
    )
    label_map: str | None = field(
        default=None,
        metadata={
            "help": "None: the corpus' own labels; `iemocap4` (excited merged into happy); a JSON object "
            "`{raw: mapped}` or a path to a JSON/YAML file holding one (a YAML config may give the mapping inline)."
        },
    )
    drop_labels: list[str] = field(default_factory=list, metadata={"help": "Labels (after mapping) to drop."})
    min_seconds: float = field(
        default=DEFAULT_POLICY.min_seconds, metadata={"help": "Clips shorter than this are rejected."}
    )
    silence_dbfs: float = field(
        default=DEFAULT_POLICY.silence_dbfs,
        metadata={"help": "Clips whose peak is below this level (dBFS) are rejected as silent."},
    )
    min_class_clips: int = field(
        default=MIN_CLASS_CLIPS,
        metadata={
            "help": f"A class with fewer clips (or fewer than {MIN_CLASS_SPEAKERS} speakers) stops the run, "
            "naming the class and its rows: merge or drop it with --label_map."
        },
    )
    strict: bool = field(
        default=False, metadata={"help": "Make a rejected file fatal instead of listing it."}
    )
    emotions_per_speaker: int | None = field(
        default=None,
        metadata={
            "help": "Keep each speaker's clips of at most N of their emotions (a stress test: a corpus whose "
            "speakers are heard in few emotions, as in natural speech; which ones: `mise.data."
            "keep_emotions_per_speaker`, the same in every run). Default: every clip."
        },
    )
    speaker_normalization: str = field(
        **shipped("speaker_normalization"),
        metadata={
            "help": "auto | true | false. Fold evaluation on per-speaker z-normalised features (each speaker's own "
            "mean/std, labels unused; the test speaker's unlabelled clips included). `auto` uses them in a fold "
            "only when they are label-neutral on its training side (H(emotion | speaker) / H(emotion) >= "
            "speaker_normalization_threshold) and otherwise falls back to global statistics, with a log line and "
            "the reason in summary.json; `true` stops with an error naming the speakers heard in few classes. The "
            "final models use global statistics, since a released model sees one clip at a time."
        },
    )
    speaker_normalization_threshold: float = field(
        default=0.9,
        metadata={
            "help": "Least H(emotion | speaker) / H(emotion) on a fold's training side for per-speaker statistics "
            "(1: every speaker shows the classes in the corpus' proportions; 0: one class per speaker)."
        },
    )
    protocol: Literal[PROTOCOLS] = field(
        **shipped("protocol"),
        metadata={
            "help": "Folds: leave-one-speaker-out, leave-one-session-out, k speaker-grouped, or a given split."
        },
    )
    num_folds: int = field(default=5, metadata={"help": "k of protocol kfold."})
    num_validation_speakers: int = field(
        **shipped("num_validation_speakers"),
        metadata={"help": "Speakers taken from each fold's training side for early stopping."},
    )
    test_speakers: list[str] = field(
        default_factory=list,
        metadata={"help": "Protocol split without a split column in the corpus: test speakers."},
    )
    validation_speakers: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Protocol split without a split column: validation speakers (default: drawn from train)."
        },
    )
    max_folds: int | None = field(default=None, metadata={"help": "Run only the first N folds (quick runs)."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Feature cache; default $MISE_CACHE or ~/.cache/mise/features."}
    )
    feature_batch_size: int = field(default=8, metadata={"help": "Clips per frozen-encoder forward."})
    corpora: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Several corpora trained together: their corpus files (training/configs/corpora/*.yaml; in a "
            "YAML config also mappings of corpus keys). Stacking two corpus files after the method config does the "
            "same. Speakers and sessions are named <corpus>.<speaker>, each corpus' label_map brings its labels "
            "onto one label space, and with global statistics each corpus is standardised with its own."
        },
    )
    corpus_name: str | None = field(
        default=None,
        metadata={
            "help": "Name of a corpus in a run of several (default: its corpus file's name, e.g. ravdess)."
        },
    )
    keep_unshared_labels: bool = field(
        default=False,
        metadata={
            "help": "Several corpora: keep the classes only one corpus has (default: dropped, with a warning "
            "naming them and their clips)."
        },
    )
    # one per corpus of `corpora`: this run's arguments with the corpus' own keys (`several_corpora`)
    corpus_args: list[DataArguments] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.corpora:
            if self.dataset:
                raise ConfigError(
                    f"dataset / corpora: got dataset {self.dataset!r} and corpora {self.corpora}; give one corpus "
                    "(dataset) or several (corpora, or corpus files stacked after the method config)"
                )
            self.corpus_args = several_corpora(self)
        elif not self.dataset:
            raise ConfigError(_missing_dataset(self.data_dir))
        self.transcript_column = none_if_unset(self.transcript_column)
        self.session_column = none_if_unset(self.session_column)
        self.split_column = none_if_unset(self.split_column)
        self.label_map = _parse_label_map(self.label_map)
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol: must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.protocol == "split" and not self.test_speakers and self.split_column is None:
            # with a split_column, whether the corpus has it is known once it is read (pipeline.build_folds)
            raise ConfigError(f"{SPLIT_NEEDS} (split_column is none)")
        if self.protocol == "kfold" and self.num_folds < 2:
            raise ConfigError(f"num_folds: must be >= 2 for protocol 'kfold', got {self.num_folds}")
        if self.num_validation_speakers < 1:
            raise ConfigError(f"num_validation_speakers: must be >= 1, got {self.num_validation_speakers}")
        if self.max_folds is not None and self.max_folds < 1:
            raise ConfigError(f"max_folds: must be >= 1, got {self.max_folds}")
        _positive("min_seconds", self.min_seconds, allow_zero=True)
        _positive("min_class_clips", self.min_class_clips)
        if self.emotions_per_speaker is not None:
            _positive("emotions_per_speaker", self.emotions_per_speaker)
        self.speaker_normalization = str(self.speaker_normalization).lower()
        if self.speaker_normalization not in SPEAKER_NORMALIZATION_MODES:
            raise ConfigError(
                f"speaker_normalization: must be one of {SPEAKER_NORMALIZATION_MODES}, "
                f"got {self.speaker_normalization!r}"
            )
        _probability("speaker_normalization_threshold", self.speaker_normalization_threshold)
        _positive("feature_batch_size", self.feature_batch_size)
        if self.cache_dir is None:
            self.cache_dir = str(default_cache_dir())


# what a corpus file holds: where the clips are and what the columns mean (a run of several corpora takes these
# from each corpus' file; every other key is the run's)
CORPUS_KEYS = ("dataset", "data_dir", "dataset_license", "split", "audio_column", "label_column", "speaker_column",
               "transcript_column", "session_column", "split_column", "label_map", "drop_labels", "corpus_name")  # fmt: skip
CORPUS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def several_corpora(args: DataArguments, overrides: dict | None = None) -> list[DataArguments]:
    """The arguments of each corpus of `args.corpora`: the run's, with the keys of the corpus' file (or mapping)
    and then `overrides` (flags given for every corpus).

    Raises:
        ConfigError: naming the corpus for a key that is not a corpus key, a missing dataset, or a name that is
            repeated or not made of letters, digits, `_` and `-`.
    """
    result = []
    for entry in args.corpora:
        values = {**corpus_entry(entry), **(overrides or {})}
        name = values["corpus_name"]
        if not CORPUS_NAME.match(name) or any(other.corpus_name == name for other in result):
            raise ConfigError(
                f"corpus_name: {name!r} ({entry}) must be unique among the corpora and made of letters, digits, "
                "_ and - (set corpus_name in its file)"
            )
        try:
            result.append(dataclasses.replace(args, corpora=[], **values))
        except ConfigError as error:
            raise ConfigError(f"corpora: {name}: {error}") from error
    return result


def corpus_entry(entry: str | dict) -> dict:
    """One entry of `corpora` as a mapping of corpus keys with its `corpus_name` (default: the file's name, or the
    folder of a mapping's dataset)."""
    if isinstance(entry, dict):
        values, where = dict(entry), "corpora"
    else:
        values, where = _read_config_file(Path(entry)), str(entry)
    unknown = sorted(set(values) - set(CORPUS_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: {unknown} are not corpus keys; with several corpora a corpus holds only {list(CORPUS_KEYS)}: "
            "give the others once, in the method config or as flags"
        )
    if not values.get("corpus_name"):
        folder = Path(str(values.get("data_dir") or values.get("dataset") or ""))
        folder = folder.parent if folder.suffix else folder
        values["corpus_name"] = Path(entry).stem if isinstance(entry, str) else folder.name
    return values


def _missing_dataset(data_dir: str | None) -> str:
    """The one-line error of a run without `--dataset`, with the flag to add when `data_dir` holds a manifest."""
    hint = "e.g. --dataset my_corpus/manifest.csv, or a corpus config such as training/configs/corpora/ravdess.yaml"
    if data_dir and (Path(data_dir) / "manifest.csv").is_file():
        hint = f"{data_dir} holds a manifest.csv: add --dataset manifest.csv"
    return f"--dataset: required (a manifest CSV, an audiofolder directory or a dataset id); {hint}"


def _parse_label_map(value: str | dict | None) -> str | dict | None:
    """`iemocap4`, a mapping, a JSON object string or a JSON/YAML file -> `iemocap4` or a dict."""
    if value is None or isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"label_map: expected a name, a mapping or a file, got {type(value).__name__}")
    text = value.strip()
    if text in NONE_VALUES:
        return None
    if text.startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"label_map: not a JSON object ({error})") from error
    elif text.endswith((".json", ".yaml", ".yml")):
        if not Path(text).is_file():
            raise ConfigError(f"label_map: file {text} does not exist")
        mapping = yaml.safe_load(Path(text).read_text())
    else:
        return text
    if not isinstance(mapping, dict):
        raise ConfigError(f"label_map: expected a mapping {{raw: mapped}}, got {type(mapping).__name__}")
    return {
        str(key): None if mapped is None else str(mapped) for key, mapped in mapping.items()
    }  # None drops


@dataclass
class ModelArguments:
    """Encoders, model sizes, loss weights and the ablation switches (SPEC §1)."""

    audio_encoder: str = field(
        **shipped("audio_encoder"),
        metadata={
            "help": "opensmile/eGeMAPSv02, opensmile/ComParE_2016, both (opensmile/eGeMAPSv02+ComParE_2016: the sets side by side, see aligner_feature_sets), or a transformers audio model id/path."
        },
    )
    audio_pooling: str = field(default="mean", metadata={"help": "Pooling over time of the audio encoder."})
    audio_layer: int = field(default=-1, metadata={"help": "Hidden layer of a transformers audio encoder."})
    max_duration_s: float = field(default=30.0, metadata={"help": "Longer clips are cropped to this."})
    text_encoder: str | None = field(
        **shipped("text_encoder"),
        metadata={
            "help": "Text encoder id/path (offline MiniLM by default); `none` for the audio-only path."
        },
    )
    text_pooling: str | None = field(
        default=None, metadata={"help": f"{' | '.join(TEXT_POOLINGS)} (None: by model)."}
    )
    text_dtype: str | None = field(
        default=None,
        metadata={"help": f"Weights of the text encoder: {', '.join(TEXT_DTYPES)} (default float32)."},
    )
    text_lora_r: int = field(
        default=0,
        metadata={"help": "LoRA rank of the text encoder, tuned (peft) in stage 1; 0 = frozen encoder."},
    )
    text_lora_alpha: float = field(
        default=LORA_DEFAULTS["alpha"], metadata={"help": "LoRA alpha (scale alpha / r)."}
    )
    text_lora_dropout: float = field(
        default=LORA_DEFAULTS["dropout"], metadata={"help": "Dropout on the LoRA input."}
    )
    text_lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_DEFAULTS["target_modules"]),
        metadata={"help": "Modules of the text encoder that get LoRA adapters (Llama: q_proj, v_proj, ...)."},
    )
    multimodal: bool = field(
        default=False,
        metadata={
            "help": "Multimodal mode: stage 2 adds the text-side generator t_hat = G_t(eps, y, z_a), stage 3 "
            "classifies [z_a; z_t] trained on (h,t), (h,t_hat), (h_hat,t), (h_hat,t_hat); test clips use "
            "their transcripts."
        },
    )
    multimodal_text_dropout: float = field(
        default=0.2,
        metadata={"help": "Multimodal: fraction of stage-3 rows given the null text code (no transcript)."},
    )
    projection_dim: int = field(
        **shipped("projection_dim"), metadata={"help": "d: size of the shared z_a / z_t space."}
    )
    aligner_hidden_sizes: list[int] = field(
        **shipped("aligner_hidden_sizes"), metadata={"help": "Hidden layers of the projection heads."}
    )
    aligner_dropout: float = field(
        **shipped("aligner_dropout"), metadata={"help": "Dropout in the projection heads."}
    )
    aligner_input_dropout: float = field(
        **shipped("aligner_input_dropout"), metadata={"help": "Dropout on the standardised h."}
    )
    aligner_audio_limit: float = field(
        **shipped("aligner_audio_limit"),
        metadata={
            "help": "Stage 1 reads the standardised h clamped to +-this many standard deviations, and a feature "
            "that did not vary on the training clips as 0 (the aligner's audio_limit); 0 = as standardised."
        },
    )
    lambda_cl: float = field(
        **shipped("lambda_cl"), metadata={"help": "Weight of the audio-text InfoNCE in stage 1."}
    )
    tau: float = field(default=0.07, metadata={"help": "Initial contrastive temperature of stage 1."})
    learn_temperature: bool = field(default=True, metadata={"help": "Learn tau in stage 1."})
    noise_dim: int = field(**shipped("noise_dim"), metadata={"help": "Size of the generator's noise eps."})
    generator_hidden_sizes: list[int] = field(
        default_factory=lambda: [256, 256], metadata={"help": "Hidden layers of G."}
    )
    discriminator_hidden_sizes: list[int] = field(
        default_factory=lambda: [256, 256], metadata={"help": "Hidden layers of the D trunk."}
    )
    generator_dropout: float = field(default=0.0, metadata={"help": "Dropout in G."})
    discriminator_dropout: float = field(default=0.2, metadata={"help": "Dropout in the D trunk."})
    discriminator_spectral_norm: bool = field(
        default=False,
        metadata={"help": "Spectral normalisation of every linear layer of D's trunk and real/fake head."},
    )
    text_code_dropout: float = field(
        default=0.2, metadata={"help": "Probability of replacing the text code by the learned null code."}
    )
    lambda_y: float = field(
        default=1.0, metadata={"help": "Weight of the emotion MI term CE(Q_y(h_gen), y)."}
    )
    lambda_t: float = field(
        default=1.0, metadata={"help": "Weight of the text MI term InfoNCE(z_t, Q_t(h_gen))."}
    )
    mi_temperature: float = field(default=0.07, metadata={"help": "Temperature of the text MI InfoNCE."})
    classifier_hidden_sizes: list[int] = field(
        **shipped("classifier_hidden_sizes"), metadata={"help": "Hidden sizes of the stage-3 MLP."}
    )
    classifier_dropout: float = field(
        **shipped("classifier_dropout"), metadata={"help": "Dropout of the stage-3 MLP."}
    )
    classifier_input_scale: float = field(
        default=1.0, metadata={"help": "Scale of the unit-norm z_a entering the stage-3 MLP."}
    )
    classifier_heads: int = field(
        **shipped("classifier_heads"),
        metadata={
            "help": "Stage-3 MLPs trained side by side (own initial weights and dropout), logits averaged."
        },
    )
    classifier_init_from_aligner: bool = field(
        default=False,
        metadata={
            "help": "Start a linear stage-3 classifier (classifier_hidden_sizes: []) from the aligner's emotion "
            "head, the paper's 'last layer' on z_a."
        },
    )
    augmentation: Literal[AUGMENTATIONS] = field(
        **shipped("augmentation"),
        metadata={
            "help": "Stage-3 training data: real only, + feature noise, mix-up, + cGAN (no MI), + MISE."
        },
    )
    no_alignment: bool = field(
        default=False, metadata={"help": "Ablation: no contrastive alignment (lambda_cl=0)."}
    )
    no_text_code: bool = field(
        default=False, metadata={"help": "Ablation: G always uses the null text code."}
    )
    no_mi: bool = field(default=False, metadata={"help": "Ablation: no MI terms (lambda_y = lambda_t = 0)."})

    def __post_init__(self) -> None:
        self.text_encoder = none_if_unset(self.text_encoder)
        self.text_dtype = none_if_unset(self.text_dtype)
        self.text_pooling = none_if_unset(self.text_pooling)
        if self.text_pooling not in (None, *TEXT_POOLINGS):
            raise ConfigError(f"text_pooling: must be one of {TEXT_POOLINGS}, got {self.text_pooling!r}")
        if self.text_dtype not in (None, *TEXT_DTYPES):
            raise ConfigError(f"text_dtype: must be one of {TEXT_DTYPES}, got {self.text_dtype!r}")
        if self.text_lora_r < 0:
            raise ConfigError(f"text_lora_r: must be >= 0 (0 = no LoRA), got {self.text_lora_r}")
        if self.text_lora_r and not self.text_lora_target_modules:
            raise ConfigError("text_lora_target_modules: LoRA needs at least one module name")
        _positive("text_lora_alpha", self.text_lora_alpha)
        _dropout("text_lora_dropout", self.text_lora_dropout)
        _probability("multimodal_text_dropout", self.multimodal_text_dropout)
        needs_text = [name for name in ("multimodal", "text_lora_r") if getattr(self, name)]
        if needs_text and self.text_encoder is None:
            raise ConfigError(f"{needs_text[0]}: needs a text encoder (text_encoder is none)")
        if needs_text and self.no_alignment:
            raise ConfigError(f"{needs_text[0]}: needs the aligned text head (no_alignment is set)")
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(f"augmentation: must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
        for name in (
            "projection_dim",
            "noise_dim",
            "tau",
            "mi_temperature",
            "classifier_input_scale",
            "classifier_heads",
        ):
            _positive(name, getattr(self, name))
        _positive("max_duration_s", self.max_duration_s)
        _positive("aligner_audio_limit", self.aligner_audio_limit, allow_zero=True)
        for name in ("lambda_cl", "lambda_y", "lambda_t"):
            _positive(name, getattr(self, name), allow_zero=True)
        _probability("text_code_dropout", self.text_code_dropout)  # 1: always the null code
        for name in ("aligner_dropout", "aligner_input_dropout", "classifier_dropout", "generator_dropout"):
            _dropout(name, getattr(self, name))
        _dropout("discriminator_dropout", self.discriminator_dropout)
        for name in ("tau", "mi_temperature"):  # as the aligner's and the generator's configs check them
            if not 0.0 < getattr(self, name) < 10.0:
                raise ConfigError(f"{name}: a temperature must lie in (0, 10), got {getattr(self, name)!r}")
        for name in ("aligner_hidden_sizes", "generator_hidden_sizes", "discriminator_hidden_sizes"):
            sizes = getattr(self, name)  # the projection heads may be linear ([]); G and D need a layer
            if (not sizes and name != "aligner_hidden_sizes") or any(size < 1 for size in sizes):
                raise ConfigError(f"{name}: must be a non-empty list of positive sizes, got {sizes}")
        if self.classifier_init_from_aligner and (
            self.classifier_hidden_sizes or self.classifier_input_scale != 1
        ):
            raise ConfigError(
                "classifier_init_from_aligner: needs a linear classifier on z_a "
                "(classifier_hidden_sizes: [] and classifier_input_scale: 1)"
            )
        if any(size < 1 for size in self.classifier_hidden_sizes):
            raise ConfigError(
                f"classifier_hidden_sizes: sizes must be positive, got {self.classifier_hidden_sizes}"
            )

    @property
    def uses_generator(self) -> bool:
        """Whether stage 2 runs (augmentation gan or mise)."""
        return self.augmentation in ("gan", "mise")

    @property
    def effective_lambda_cl(self) -> float:
        return 0.0 if self.no_alignment else self.lambda_cl

    @property
    def effective_mi_weights(self) -> tuple[float, float]:
        """(lambda_y, lambda_t) after the no-MI ablation and augmentation `gan` (a cGAN without MI)."""
        if self.no_mi or self.augmentation == "gan":
            return 0.0, 0.0
        return self.lambda_y, self.lambda_t


@dataclass
class MiseTrainingArguments:
    """Optimisation, checkpointing, logging and output of the three stages."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where metrics, checkpoints and models go."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete a previous run in output_dir."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "`latest` or a checkpoint folder: continue a killed run."}
    )
    seed: int = field(
        default=42, metadata={"help": "Base seed; each fold and stage gets seed + 1000*fold + stage."}
    )
    aligner_epochs: int = field(**shipped("aligner_epochs"), metadata={"help": "Max epochs of stage 1."})
    aligner_learning_rate: float = field(
        **shipped("aligner_learning_rate"), metadata={"help": "AdamW learning rate of stage 1."}
    )
    aligner_batch_size: int = field(
        **shipped("aligner_batch_size"), metadata={"help": "Batch size of stage 1 (all processes)."}
    )
    aligner_min_batches: int = field(
        **shipped("aligner_min_batches"),
        metadata={
            "help": "Least batches of a stage-1 epoch: with few training rows the batches shrink below "
            "aligner_batch_size, so that stage 1 still takes this many steps an epoch (at 128 rows a batch a "
            "corpus of ~250 clips would give it 2 steps an epoch; on Emo-DB two steps an epoch cost the base 2.4 and "
            "4.0 points, docs/results.md)."
        },
    )
    aligner_weight_decay: float = field(
        **shipped("aligner_weight_decay"), metadata={"help": "AdamW weight decay of stage 1."}
    )
    aligner_feature_sets: list[str] = field(
        **shipped("aligner_feature_sets"),
        metadata={
            "help": "Feature sets of a combined openSMILE encoder (audio_encoder opensmile/A+B) stage 1 chooses from: "
            "per fold the set a ridge classifier scores best by speaker cross-validation on the training side "
            "(training and validation speakers); the classic baseline reads the same set. The saved aligner reads "
            "every feature, with zero weights for the others. Empty: every feature at once."
        },
    )
    aligner_input_components: int = field(
        **shipped("aligner_input_components"),
        metadata={
            "help": "Stage 1 on the top-k principal directions of the fold's standardised training clips (fitted on "
            "its training rows only, coordinates scaled to unit average std), folded back into the first layer "
            "afterwards, so the saved aligner still reads the full features; a k at least the clips' count takes "
            "every direction they occupy; 0: the full features."
        },
    )
    aligner_candidates: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Stage-1 settings stage 1 chooses from per fold, each `key=value[,key=value]` over the configured "
            f'ones (keys: {", ".join(ALIGNER_CANDIDATE_KEYS)}; `""`: as configured; hidden sizes joined by '
            "`+`): stage 1 trains once per candidate on the training speakers, a stage-3 classifier without "
            "augmentation on each space, and the candidate whose classifier scores the best UAR on the validation "
            "speakers is kept (ties: the first); a refit trains it again. One: that setting, no choice; empty: "
            "as configured."
        },
    )
    text_lora_learning_rate: float = field(
        default=1e-4, metadata={"help": "AdamW learning rate of the text encoder's LoRA adapter (stage 1)."}
    )
    generator_epochs: int = field(
        **shipped("generator_epochs"), metadata={"help": "Epochs (passes over real data) of stage 2."}
    )
    generator_learning_rate: float = field(
        **shipped("generator_learning_rate"), metadata={"help": "Adam learning rate of G."}
    )
    discriminator_learning_rate: float = field(
        **shipped("discriminator_learning_rate"), metadata={"help": "Adam learning rate of D and Q."}
    )
    generator_batch_size: int = field(
        **shipped("generator_batch_size"), metadata={"help": "Batch size of stage 2 (all processes)."}
    )
    generator_min_batches: int = field(
        **shipped("generator_min_batches"),
        metadata={
            "help": "Least batches of a stage-2 epoch: with few training rows the batches shrink below "
            "generator_batch_size, so that G still takes this many steps an epoch (a corpus of ~150 clips would "
            "otherwise give it one step an epoch, and G would end its epochs untrained)."
        },
    )
    generator_eval_every: int = field(
        **shipped("generator_eval_every"),
        metadata={"help": "Epochs between MI evaluations of G (the best-MI checkpoint is kept)."},
    )
    generator_mixup_alpha: float = field(
        default=0.2, metadata={"help": "Mix-up alpha of the real features D sees in stage 2 (0 = off)."}
    )
    discriminator_steps: int = field(
        default=1, metadata={"help": "Stage 2: D steps (each with fresh noise) before each G step."}
    )
    r1_gamma: float = field(
        default=0.0,
        metadata={
            "help": "Stage 2: weight gamma of the R1 penalty gamma/2 * E ||grad_h D(h)||^2 on real rows (0 = off)."
        },
    )
    instance_noise_std: float = field(
        default=0.0,
        metadata={
            "help": "Stage 2: std of Gaussian noise added to every row D sees, annealed linearly to 0 over the "
            "stage's epochs (0 = off)."
        },
    )
    mode_seeking_weight: float = field(
        default=0.0,
        metadata={
            "help": "Stage 2: weight of the mode-seeking term 1 / (mean|G(eps_1) - G(eps_2)| / mean|eps_1 - eps_2|) "
            "in G's loss, two noises for the same emotion and text code (0 = off)."
        },
    )
    generator_selection: Literal[GENERATOR_SELECTIONS] = field(
        default="mi",
        metadata={
            "help": "How stage 2 chooses its checkpoint on the validation speakers: `mi` (the sum of the MI "
            "bounds), `mi_recall` (the MI among checkpoints whose k-NN recall on the training features reaches "
            "generator_recall_floor, the MI alone where none does) or `classifier` (the validation score of a "
            "stage-3 classifier trained with that checkpoint's rows at generated_ratio, early_stopping_metric as "
            "stage 3 uses it)."
        },
    )
    generator_mi_floor: float = field(
        **shipped("generator_mi_floor"),
        metadata={
            "help": "Stage 3 takes no generated rows (ratio 0) in a fold whose kept generator's rows carry no more "
            "than this many nats about their emotion: the MI bound a probe fitted on the real training rows reads "
            "from rows generated for the validation speakers' labels. 0: rows a real-data probe reads no emotion "
            "from are refused (the log names the fold); --generator_mi_floor=-inf: every generator's rows are "
            "taken. Applies where MI is part of the method (not the cGAN ablation) and stage 3 takes rows at a "
            "ratio."
        },
    )
    generator_recall_floor: float = field(
        default=0.3,
        metadata={"help": "generator_selection mi_recall: the k-NN recall a checkpoint needs (in [0, 1])."},
    )
    classifier_epochs: int = field(
        **shipped("classifier_epochs"), metadata={"help": "Max epochs of stage 3."}
    )
    classifier_learning_rate: float = field(
        default=1e-3, metadata={"help": "AdamW learning rate of stage 3."}
    )
    classifier_batch_size: int = field(
        **shipped("classifier_batch_size"), metadata={"help": "Batch size of stage 3 (all processes)."}
    )
    classifier_weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay of stage 3."})
    early_stopping_patience: int = field(
        **shipped("early_stopping_patience"),
        metadata={"help": "Evaluations without validation improvement before a stage stops (0 = off)."},
    )
    weight_averaging: bool = field(
        **shipped("weight_averaging"),
        metadata={
            "help": "Stages 1 and 3 keep the mean of their weights after each epoch of the second half of their "
            "epochs instead of the epoch the validation speakers chose (no early stopping; the validation "
            "speakers are still scored, and still choose the ratio and the generator checkpoint)."
        },
    )
    early_stopping_metric: Literal["uar", "loss"] = field(
        **shipped("early_stopping_metric"),
        metadata={
            "help": "Validation score of stages 1 and 3 that early stopping and checkpoint choice follow: UAR, or "
            "cross-entropy (smoother when the validation speakers have few clips)."
        },
    )
    mixup_alpha: float = field(default=0.2, metadata={"help": "Mix-up alpha of augmentation `mixup`."})
    aligner_mixup_alpha: float = field(
        **shipped("aligner_mixup_alpha"),
        metadata={
            "help": "Stage 1: mix-up alpha of its batches (each batch's audio features, text features and labels "
            "mixed alike with a permutation of them; a LoRA-tuned text encoder's batches are not mixed; 0 = off)."
        },
    )
    noise_std: float = field(
        default=0.1,
        metadata={"help": "Augmentation `noise`: std of the added noise, relative to each dimension."},
    )
    generated_ratio: float = field(
        **shipped("generated_ratio"),
        metadata={
            "help": "Generated-to-real ratio of stage-3 data (the one candidate when generated_ratios is empty)."
        },
    )
    generated_ratios: list[float] = field(
        **shipped("generated_ratios"),
        metadata={
            "help": "Candidate generated-to-real ratios of noise / cGAN / MISE: per fold, stage 3 trains once per "
            "candidate and keeps the classifier with the best validation score (early_stopping_metric) "
            "(empty: generated_ratio alone)."
        },
    )
    refit: bool = field(
        **shipped("refit"),
        metadata={
            "help": "After the choices on the validation speakers (stage-1 and stage-3 epochs, the generator "
            "checkpoint, the generated-to-real ratio), train the three stages once more on the training and "
            "validation speakers together with those choices; the refitted models are evaluated and released."
        },
    )
    class_balanced_generation: bool = field(
        **shipped("class_balanced_generation"),
        metadata={"help": "Generate more for minority classes so every class ends equally large."},
    )
    class_balanced_batches: bool = field(
        **shipped("class_balanced_batches"),
        metadata={
            "help": "Stages 1 and 3 draw the rows of an epoch with probability inversely proportional to their "
            "class's count (with replacement), so every class weighs equally in the loss, as UAR weighs them; "
            "the study's classic baseline then weights its classes the same way."
        },
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0 = off)."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches per optimizer step."}
    )
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(
        default=None, metadata={"help": "Overrides `accelerate launch --mixed_precision` when set."}
    )
    checkpoint_every: int = field(
        default=50, metadata={"help": "Epochs between mid-stage checkpoints (0 = only at stage ends)."}
    )
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept in OUT/checkpoints."})
    training_threads: int = field(
        **shipped("training_threads"),
        metadata={
            "help": "CPU threads (torch and BLAS) while the small feature-space models train (0 = library "
            "defaults). One is fastest at these sizes and never oversubscribes cores shared by several processes."
        },
    )
    report_to: str = field(default="tensorboard", metadata={"help": "Tracker: tensorboard or none."})
    final_models: bool = field(
        default=True, metadata={"help": "After the folds, train on all speakers and write OUT/models/."}
    )
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "Push the final models to the Hub as ORG/NAME-{aligner,generator,classifier,audio-classifier} "
            "(see `mise push`)."
        },
    )
    hub_model_id: str | None = field(
        default=None,
        metadata={
            "help": "ORG/NAME for push_to_hub: repos NAME-encoder, NAME-generator, NAME-classifier under ORG."
        },
    )

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir: required (give --output_dir OUT or `output_dir:` in the config)")
        self.resume_from_checkpoint = none_if_unset(self.resume_from_checkpoint)
        _positive("seed", self.seed, allow_zero=True)  # the stages' streams derive from it (SeedSequence)
        for name in ("aligner_batch_size", "generator_batch_size", "classifier_batch_size"):
            _positive(name, getattr(self, name))
        for name in ("aligner_learning_rate", "generator_learning_rate", "discriminator_learning_rate"):
            _positive(name, getattr(self, name))
        for name in ("classifier_learning_rate", "generator_eval_every", "gradient_accumulation_steps"):
            _positive(name, getattr(self, name))
        _positive("text_lora_learning_rate", self.text_lora_learning_rate)
        for name in ("aligner_epochs", "generator_epochs", "classifier_epochs", "early_stopping_patience"):
            _positive(name, getattr(self, name), allow_zero=True)
        for name in (
            "generator_mixup_alpha",
            "mixup_alpha",
            "aligner_mixup_alpha",
            "noise_std",
            "generated_ratio",
            "max_grad_norm",
        ):
            _positive(name, getattr(self, name), allow_zero=True)
        for name in ("r1_gamma", "instance_noise_std", "mode_seeking_weight"):
            _positive(name, getattr(self, name), allow_zero=True)
        _positive("discriminator_steps", self.discriminator_steps)
        _positive("generator_min_batches", self.generator_min_batches)
        _positive("aligner_min_batches", self.aligner_min_batches)
        _probability("generator_recall_floor", self.generator_recall_floor)
        if math.isnan(self.generator_mi_floor):
            raise ConfigError(
                "generator_mi_floor: must be a number of nats (--generator_mi_floor=-inf: every generator's rows are taken)"
            )
        if self.generator_selection not in GENERATOR_SELECTIONS:
            raise ConfigError(
                f"generator_selection: must be one of {GENERATOR_SELECTIONS}, got {self.generator_selection!r}"
            )
        for name in (
            "aligner_weight_decay",
            "classifier_weight_decay",
            "checkpoint_every",
            "aligner_input_components",
        ):
            _positive(name, getattr(self, name), allow_zero=True)
        for ratio in self.generated_ratios:
            _positive("generated_ratios", ratio, allow_zero=True)
        if len(set(self.generated_ratios)) != len(self.generated_ratios):
            raise ConfigError(f"generated_ratios: need distinct values, got {self.generated_ratios}")
        _positive("checkpoints_total_limit", self.checkpoints_total_limit)
        _positive("training_threads", self.training_threads, allow_zero=True)
        if self.early_stopping_metric not in ("uar", "loss"):
            raise ConfigError(
                f"early_stopping_metric: must be 'uar' or 'loss', got {self.early_stopping_metric!r}"
            )
        if self.report_to not in ("tensorboard", "none"):
            raise ConfigError(f"report_to: must be 'tensorboard' or 'none', got {self.report_to!r}")
        if self.push_to_hub:
            if not self.hub_model_id or "/" not in self.hub_model_id:
                raise ConfigError(f"hub_model_id: push_to_hub needs ORG/NAME, got {self.hub_model_id!r}")
            if not self.final_models:
                raise ConfigError(
                    "push_to_hub: needs final_models=true (the pushed models are the final ones)"
                )


ARGUMENT_TYPES = (DataArguments, ModelArguments, MiseTrainingArguments)

# Keys that change where or how a run is written, not what it computes: left out of the config hash, so a
# resumed run may change them.
_NOT_HASHED = {
    "output_dir",
    "dataset_license",  # what the model cards say
    "min_class_clips",  # a check: the runs it lets through are the same
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "cache_dir",
    "feature_batch_size",
    "max_folds",
    "strict",
    "checkpoint_every",
    "checkpoints_total_limit",
    "report_to",
    "final_models",
    "push_to_hub",
    "hub_model_id",
}


def parse_arguments(argv: list[str] | None = None, extra_types: tuple[type, ...] = ()) -> tuple:
    """Parse `[CONFIG.yaml|.json ...] [--key value ...]` into (data, model, training, *extra) arguments.

    Each leading file gives values (a later file overrides an earlier one: hyper-parameters first, then a corpus
    file with its paths, columns and label map); every flag overrides them all. Two corpus files or more (files
    with a `dataset`) are not merged but trained together, as the `corpora` key lists them: each keeps its own
    corpus keys (`CORPUS_KEYS`), and a flag of a corpus key applies to every corpus.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((*ARGUMENT_TYPES, *extra_types))
    known = {action.dest for action in parser._actions}
    files = []
    while argv and not argv[0].startswith("-"):
        config_path = Path(argv.pop(0))
        read = _read_config_file(config_path)
        unknown = sorted(set(read) - known)
        if unknown:
            raise ConfigError(f"{config_path}: unknown key(s) {unknown}")
        files.append((config_path, read))
    values = _merged_files(files)
    # file values become the parser's defaults, so any `--key value` on the command line overrides them.
    parser.set_defaults(**values)
    parser.error = _raise_config_error  # a bad flag value: one line naming it, not argparse's usage wall
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:  # e.g. a flag no argument class has
        raise ConfigError(str(error)) from error
    _check_feature_sets(parsed[1], parsed[2])
    candidates = parsed[2].aligner_candidates
    if len(set(candidates)) != len(candidates):
        raise ConfigError(f"aligner_candidates: need distinct entries, got {candidates}")
    for candidate in candidates:  # each a valid setting, before any audio is read
        with_aligner_candidate(parsed[1], parsed[2], candidate)
    _check_corpora(parsed[0], argv)
    return parsed


def _merged_files(files: list[tuple[Path, dict]]) -> dict:
    """The values of the leading config files, a later one overriding an earlier one; with several corpus files
    (or a `corpora` key) the corpus files go to `corpora` instead, in their order."""
    stacked = [str(path) for path, read in files if "dataset" in read]
    several = len(stacked) > 1 or any("corpora" in read for _, read in files)
    values: dict = {}
    for _, read in files:
        if not (several and "dataset" in read):
            values.update(read)
    if several:
        values["corpora"] = [*values.get("corpora", []), *stacked]
    return values


def _check_corpora(data_args: DataArguments, argv: list[str]) -> None:
    """Protocol loco needs several corpora; with several, a flag of a corpus key applies to every corpus, but
    their paths and names come from their own files."""
    if data_args.protocol == "loco" and not data_args.corpora:
        raise ConfigError(
            "protocol: loco (leave one corpus out) needs several corpora: stack corpus files after the method "
            "config or give corpora"
        )
    flagged = {token[2:].split("=", 1)[0] for token in argv if token.startswith("--")} & set(CORPUS_KEYS)
    if not data_args.corpora or not flagged:
        return
    own = sorted(flagged & {"dataset", "data_dir", "corpus_name"})
    if own:
        raise ConfigError(f"--{own[0]}: with several corpora each corpus file gives its own {own[0]}")
    data_args.corpus_args = several_corpora(data_args, {key: getattr(data_args, key) for key in flagged})


def feature_sets_to_choose(names: list[str], sets: list[str]) -> list[str]:
    """The sets stage 1 chooses from: `names`, or none when they are the shipped default and the encoder has fewer
    than two sets `sets` to choose from (one openSMILE set, or a `transformers` model)."""
    return [] if len(sets) < 2 and names == METHOD["aligner_feature_sets"] else names


def _check_feature_sets(model_args: ModelArguments, training_args: MiseTrainingArguments) -> None:
    """`aligner_feature_sets` names sets of the combined openSMILE encoder (`opensmile/A+B`), each once. With
    another encoder (one set, or a `transformers` model) the shipped choice has nothing to choose from and is
    off; sets named that the encoder lacks are an error."""
    encoder = model_args.audio_encoder
    sets = encoder.split("/", 1)[1].split("+") if encoder.startswith("opensmile/") else []
    names = training_args.aligner_feature_sets = feature_sets_to_choose(
        training_args.aligner_feature_sets, sets
    )
    if not names:
        return
    missing = [name for name in names if name not in sets]
    if missing or len(set(names)) != len(names):
        raise ConfigError(
            f"aligner_feature_sets: {names} must name distinct feature sets of the audio encoder {encoder!r} "
            f"({sets or 'not a combined openSMILE encoder such as opensmile/eGeMAPSv02+ComParE_2016'})"
        )


def aligner_candidate(text: str) -> dict:
    """The settings one `aligner_candidates` entry (`key=value[,key=value]`, `""`: none) changes."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in ALIGNER_CANDIDATE_KEYS:
            raise ConfigError(
                f"aligner_candidates: {text!r}: expected key=value with a key of {list(ALIGNER_CANDIDATE_KEYS)}"
            )
        try:
            overrides[key] = ALIGNER_CANDIDATE_KEYS[key](value)
        except ValueError as error:
            raise ConfigError(f"aligner_candidates: {text!r}: {key}: {error}") from error
    return overrides


def with_aligner_candidate(
    model_args: ModelArguments, training_args: MiseTrainingArguments, text: str
) -> tuple[ModelArguments, MiseTrainingArguments]:
    """The arguments with one `aligner_candidates` entry's settings, checked as the configured ones are."""
    overrides = aligner_candidate(text)
    model_keys = {f.name for f in fields(ModelArguments)}
    try:
        model_args = replace(model_args, **{k: v for k, v in overrides.items() if k in model_keys})
        training_args = replace(training_args, **{k: v for k, v in overrides.items() if k not in model_keys})
    except ConfigError as error:
        raise ConfigError(f"aligner_candidates: {text!r}: {error}") from error
    return model_args, training_args


def _raise_config_error(message: str):
    raise ConfigError(message)


def _read_config_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot parse ({error})") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(values).__name__}")
    return values


def arguments_dict(*arguments: object) -> dict:
    """All fields of the argument dataclasses in one flat, JSON-serialisable dict."""
    merged: dict = {}
    for item in arguments:
        merged.update(asdict(item))
    return merged


# options added after runs were committed, at their "off" value
_OFF_VALUES = {
    "emotions_per_speaker": None,
    "mode_seeking_weight": 0.0,
    "aligner_candidates": [],
    "generator_mi_floor": -math.inf,
}


def _hashed(key: str, value: object) -> bool:
    """Whether a setting enters the config hash: an option at its "off" value does not, so that runs from before
    the option existed keep their hash (and resume)."""
    return key not in _OFF_VALUES or value != _OFF_VALUES[key]


def config_hash(*arguments: object) -> str:
    """Hash of every setting that changes results (paths, logging and resume settings excluded)."""
    values = {key: value for key, value in arguments_dict(*arguments).items() if key not in _NOT_HASHED}
    if values.get("protocol") != "split":  # the split column is only read by protocol split
        values.pop("split_column", None)
    values.pop("corpora", None)  # where the corpus files are; what they say is in corpus_args
    values = {key: value for key, value in values.items() if _hashed(key, value)}
    if values.get("corpus_args"):  # several corpora: each corpus' settings
        values["corpus_args"] = [
            {key: value for key, value in corpus.items() if key not in _NOT_HASHED and _hashed(key, value)}
            for corpus in values["corpus_args"]
        ]
    else:  # one corpus: the hash of a run before several corpora existed
        for key in ("corpus_args", "corpus_name", "keep_unshared_labels"):
            values.pop(key, None)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]
