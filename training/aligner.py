"""Stage 1 of MISE, the aligner (SPEC §1): audio and text features into one space, plain or with a LoRA-tuned text
encoder, and the codes the later stages read from it: `z_a` (`encode_audio`) and `z_t` (`text_codes`).

- `train_aligner`: CE + lambda_cl * symmetric InfoNCE on frozen audio and text features or, with a LoRA
  config, with the text encoder inside the aligner (base frozen, peft LoRA adapter trainable) on transcript
  tokens instead of cached text features; the fold's text codes then come from the tuned encoder.
- `text_codes`: `z_t` of clips for every stage and the study (NaN rows for clips without a transcript), and
  `drop_text_codes`, the text-code dropout of stages 2 and 3.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from accelerate.logging import get_logger
from torch import nn

from modeling_mise import MiseAlignerConfig, MiseAlignerModel
from modeling_mise.layers import bounded, feature_statistics, standardize, unvarying

from .arguments import MiseTrainingArguments, ModelArguments
from .engine import (
    Batches,
    StageRuntime,
    fit_supervised,
    initialised,
    library_stream,
    mixup,
    predict_in_chunks,
    stage_summary,
)

Tensor = torch.Tensor
logger = get_logger(__name__)


def aligner_config(
    model_args: ModelArguments,
    audio_dim: int,
    text_dim: int | None,
    id2label: dict[int, str],
    audio_encoder_spec: dict | None = None,
) -> MiseAlignerConfig:
    """Stage-1 config; without text features or with `no_alignment` the text head is left out.

    The text encoder's pooling / dtype / LoRA settings are recorded, so a saved aligner can rebuild its text side.
    """
    use_text = text_dim is not None and not model_args.no_alignment
    text_lora = None
    if model_args.text_lora_r and use_text:
        text_lora = {
            "r": model_args.text_lora_r,
            "alpha": model_args.text_lora_alpha,
            "dropout": model_args.text_lora_dropout,
            "target_modules": list(model_args.text_lora_target_modules),
        }
    return MiseAlignerConfig(
        audio_dim=audio_dim,
        text_dim=text_dim or 384,
        projection_dim=model_args.projection_dim,
        hidden_sizes=list(model_args.aligner_hidden_sizes),
        dropout=model_args.aligner_dropout,
        input_dropout=model_args.aligner_input_dropout,
        audio_limit=model_args.aligner_audio_limit or None,
        lambda_cl=model_args.effective_lambda_cl if use_text else 0.0,
        tau_init=model_args.tau,
        learn_temperature=model_args.learn_temperature,
        use_text=use_text,
        audio_encoder=model_args.audio_encoder,
        audio_encoder_spec=audio_encoder_spec,
        text_encoder=model_args.text_encoder or "none",
        pooling=model_args.audio_pooling,
        text_pooling=model_args.text_pooling,
        text_dtype=model_args.text_dtype,
        text_lora=text_lora,
        id2label=dict(id2label),
        label2id={name: index for index, name in id2label.items()},
    )


def _present_rows(text: Tensor) -> Tensor:
    """The rows of clips with a transcript (no NaN)."""
    return text[~torch.isnan(text).any(dim=1)]


def train_aligner(
    runtime: StageRuntime,
    config: MiseAlignerConfig,
    args: MiseTrainingArguments,
    audio_train: Tensor,
    labels_train: Tensor,
    audio_val: Tensor,
    labels_val: Tensor,
    text_train: Tensor | None = None,
    seed: int = 0,
    transcripts_train: Sequence[str | None] | None = None,
    columns: slice | None = None,
    extra_rows: ExtraRows | None = None,
) -> tuple[MiseAlignerModel, dict]:
    """Stage 1: CE + lambda_cl * symmetric InfoNCE; standardisation fitted on the training rows only.

    `columns`: the audio features it reads (one set of a combined encoder: the saved aligner's `audio_columns`),
    with `aligner_input_components` the top principal directions of those (`InputProjection`, folded into the
    first layer of the saved aligner).

    With `config.text_lora` the aligner holds the text encoder (base frozen, LoRA adapter trainable) and trains on
    the tokens of `transcripts_train` instead of the frozen text features (`_lora_setup`). Early stopping on the
    validation speakers (`early_stopping_metric`: UAR or cross-entropy); returns the best aligner (eval mode,
    with a LoRA-tuned text encoder attached) and a summary.

    `extra_rows` (`training.input_rows`): raw audio rows with labels, drawn anew each epoch and trained on with
    the real rows (no transcript: the cross-entropy term alone); the standardisation stays the real rows'.
    """
    mean, std = feature_statistics(audio_train)

    def read(audio: Tensor) -> Tensor:  # the standardised features as the saved aligner reads them
        return bounded(standardize(audio, mean, std), std, config.audio_limit)

    projection = InputProjection.fit(read(audio_train), columns, args.aligner_input_components)
    statistics, trained_config, reads = (mean, std), config, None
    if projection is not None:  # stage 1 on the projected features of the training clips, unfolded afterwards
        trained_config = copy.deepcopy(config)
        trained_config.audio_dim, trained_config.audio_limit = projection.size, None
        audio_train, audio_val = (projection(read(audio)) for audio in (audio_train, audio_val))
        statistics = (torch.zeros(projection.size), torch.ones(projection.size))
        reads = lambda audio: projection(read(audio))  # noqa: E731
    model = initialised(lambda: MiseAlignerModel(trained_config), seed)
    before_epoch = None
    if config.text_lora is not None:
        if extra_rows is not None:
            raise ValueError(
                "train_aligner: extra rows train with frozen text features, not a LoRA text encoder"
            )
        if transcripts_train is None or text_train is None:
            raise ValueError(
                "train_aligner: a LoRA-tuned text encoder trains on the transcripts and text features"
            )
        if args.aligner_mixup_alpha > 0:
            logger.info("stage 1: a LoRA-tuned text encoder trains on tokens, which do not mix: no mix-up")
        with library_stream(seed, -1):  # the adapter's initial weights
            optimizer, batches, parameters, batch_loss = _lora_setup(
                model, args, audio_train, statistics, labels_train, transcripts_train, text_train
            )
    else:
        optimizer, batches, parameters, batch_loss = _plain_setup(
            model, args, audio_train, statistics, labels_train, text_train
        )
        if extra_rows is not None:
            before_epoch = _with_extra_rows(batches, extra_rows, reads)
    model, state = fit_supervised(
        runtime, "aligner", model, optimizer, batches, parameters, args, args.aligner_epochs,
        batch_loss, lambda model, x: model(audio_features=x).logits, audio_val, labels_val, seed, before_epoch,
    )  # fmt: skip
    if projection is not None:
        model = projection.unfold(model, config, mean, std)
    summary = stage_summary(state)
    summary["constant_features"] = _constant_features(std, columns, config.audio_limit)
    summary["input_components"] = None if projection is None or projection.basis is None else projection.size
    return model, summary


def _constant_features(std: Tensor, columns: slice | None, audio_limit: float | None) -> int:
    """How many of the features stage 1 reads did not vary on its training clips (std at the floor), said in the
    log: the aligner reads them as 0 (`audio_limit`); without it a new clip's value would decide its class."""
    constant = int(unvarying(std[columns or slice(None)]).sum())
    if constant:
        reading = (
            "reads them as 0 (audio_limit)" if audio_limit is not None else "divides them by the std floor"
        )
        logger.info(
            f"stage 1: {constant} feature(s) did not vary on the training clips; the aligner {reading}"
        )
    return constant


def principal_basis(standardised: Tensor, components: int) -> Tensor:
    """The top `components` principal directions of the training clips' standardised (centred) features, as an
    `(audio_dim, k)` basis scaled so that the clips' coordinates have unit standard deviation on average; a
    `components` at least the clips' count takes every direction they occupy (their span). From the
    eigenvectors of the clips' Gram matrix (float64): a clips x clips problem, however wide the features."""
    rows = standardised.double()
    eigenvalues, vectors = torch.linalg.eigh(rows @ rows.T)  # ascending
    keep = eigenvalues > eigenvalues.max() * 1e-10  # numerically non-zero (centring removes one direction)
    eigenvalues, vectors = eigenvalues[keep].flip(0)[:components], vectors[:, keep].flip(1)[:, :components]
    basis = rows.T @ vectors / eigenvalues.sqrt()  # orthonormal columns, largest variance first
    coordinate_std = (eigenvalues / max(len(rows) - 1, 1)).sqrt().mean()
    return (basis / coordinate_std).to(standardised.dtype).contiguous()


@dataclass
class InputProjection:
    """What stage 1 reads of the standardised audio features: the `columns` of one feature set, and within them
    the coordinates on `basis` (principal directions, `principal_basis`) when one is fitted."""

    columns: slice
    basis: Tensor | None  # (columns' width, k)
    width: int  # the columns' width

    @classmethod
    def fit(cls, standardised: Tensor, columns: slice | None, components: int) -> InputProjection | None:
        """The projection of the training clips' standardised features, None when stage 1 reads them all."""
        if columns is None and not components:
            return None
        columns = columns or slice(0, standardised.shape[1])
        chosen = standardised[:, columns]
        return cls(columns, principal_basis(chosen, components) if components else None, chosen.shape[1])

    @property
    def size(self) -> int:
        return self.width if self.basis is None else self.basis.shape[1]

    def __call__(self, standardised: Tensor) -> Tensor:
        chosen = standardised[:, self.columns]
        return chosen if self.basis is None else chosen @ self.basis

    def unfold(
        self, small: MiseAlignerModel, config: MiseAlignerConfig, mean: Tensor, std: Tensor
    ) -> MiseAlignerModel:
        """The full aligner of a model trained on the projected features: it reads the chosen columns
        (`audio_columns`, when not all), the basis folded into the first audio layer (`W basis^T`), with the
        training clips' standardisation statistics; the same `z_a` for every clip."""
        config = copy.deepcopy(config)
        if (self.columns.start, self.columns.stop) != (0, config.audio_dim):
            config.audio_columns = [self.columns.start, self.columns.stop]
        model = MiseAlignerModel(config)
        if (
            small.text_encoder is not None
        ):  # the tuned encoder (its adapter tensors are in the state dict too)
            model.set_text_encoder(small.text_encoder)
        state = small.state_dict()
        if self.basis is not None:
            state["audio_projection.0.weight"] = state["audio_projection.0.weight"] @ self.basis.T
        state["audio_mean"], state["audio_std"] = mean, std
        model.load_state_dict(state)
        return model.to(small.audio_mean.device).eval()


class ExtraRows(Protocol):
    """Stage 1's extra rows (`training.input_rows.InputRows`): `count` rows a call, drawn from an epoch's stream."""

    count: int

    def __call__(self, generator: torch.Generator) -> tuple[Tensor, Tensor]: ...


def _with_extra_rows(
    batches: Batches, extra_rows: ExtraRows, reads: Callable[[Tensor], Tensor] | None
) -> Callable[[int, torch.Generator], None]:
    """Makes `batches` the real rows followed by each epoch's `extra_rows` (text features NaN: no transcript);
    `reads`: what the trained model reads of a raw row (the projection), when not the row itself. Returns the
    hook that draws them before an epoch."""
    real = batches.tensors
    batches.tensors, batches.rows = (), len(real[0]) + extra_rows.count

    def before_epoch(epoch: int, generator: torch.Generator) -> None:
        audio, labels = extra_rows(generator)
        extra = (audio if reads is None else reads(audio), labels.to(real[1].dtype))
        if len(real) > 2:  # text features
            extra += (torch.full((len(labels), real[2].shape[1]), float("nan"), dtype=real[2].dtype),)
        batches.tensors = tuple(torch.cat([a, b]) for a, b in zip(real, extra, strict=True))

    return before_epoch


def _plain_setup(
    model: MiseAlignerModel,
    args: MiseTrainingArguments,
    audio: Tensor,
    statistics: tuple[Tensor, Tensor],
    labels: Tensor,
    text: Tensor | None,
) -> tuple:
    """Optimiser, batches, trained parameters and batch loss of stage 1 on frozen audio and text features
    (`statistics`: the audio standardisation, mean and std)."""
    text_mean = text_std = None
    use_text = model.config.use_text and text is not None
    if use_text:
        present = _present_rows(text)
        text_mean, text_std = feature_statistics(present)
    model.set_feature_statistics(*statistics, text_mean, text_std)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.aligner_learning_rate,
        weight_decay=args.aligner_weight_decay,
        foreach=True,
    )
    batches = Batches(
        (audio, labels) + ((text,) if use_text else ()), args.aligner_batch_size,
        class_balanced=args.class_balanced_batches, min_batches=args.aligner_min_batches,
    )  # fmt: skip

    def batch_loss(model: nn.Module, batch: tuple, generator: torch.Generator) -> Tensor:
        audio, labels, text = batch[0], batch[1], batch[2] if use_text else None
        # audio and text mixed alike: a missing transcript (NaN) stays missing
        if args.aligner_mixup_alpha > 0:
            rows = audio if text is None else torch.cat([audio, text], dim=1)
            rows, labels = mixup(rows, labels, model.config.num_labels, args.aligner_mixup_alpha, generator)
            audio, text = rows[:, : audio.shape[1]], None if text is None else rows[:, audio.shape[1] :]
        return model(audio_features=audio, labels=labels, text_features=text).loss

    return optimizer, batches, list(model.parameters()), batch_loss


# ---------------------------------------------------------------------------------------------- LoRA
def tokenize_transcripts(
    aligner: MiseAlignerModel, transcripts: Sequence[str | None]
) -> tuple[Tensor, Tensor]:
    """Token ids and mask (N, L) of every clip; a clip without transcript has an all-zero mask row."""
    present = [i for i, text in enumerate(transcripts) if text]
    encoder = aligner.text_encoder
    pad_id = encoder.tokenizer.pad_token_id
    if not present:
        return torch.full((len(transcripts), 1), pad_id), torch.zeros(len(transcripts), 1, dtype=torch.long)
    batch = aligner.tokenize([transcripts[i] for i in present])
    length = batch["input_ids"].shape[1]
    input_ids = torch.full((len(transcripts), length), pad_id, dtype=batch["input_ids"].dtype)
    attention_mask = torch.zeros(len(transcripts), length, dtype=batch["attention_mask"].dtype)
    input_ids[present], attention_mask[present] = batch["input_ids"], batch["attention_mask"]
    return input_ids, attention_mask


def _trim_padding(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the columns no row of this batch uses (left or right padding; positions follow the mask)."""
    used = attention_mask.bool().any(dim=0)
    if bool(used.all()) or not bool(used.any()):
        return input_ids, attention_mask
    columns = torch.nonzero(used).flatten()
    span = slice(int(columns.min()), int(columns.max()) + 1)
    return input_ids[:, span], attention_mask[:, span]


def _lora_setup(
    model: MiseAlignerModel,
    args: MiseTrainingArguments,
    audio: Tensor,
    statistics: tuple[Tensor, Tensor],
    labels: Tensor,
    transcripts: Sequence[str | None],
    text: Tensor,
) -> tuple:
    """Optimiser, batches, trained parameters and batch loss of stage 1 with a LoRA-tuned text encoder.

    The base text encoder is loaded from `config.text_encoder` and frozen; the heads train with
    `aligner_learning_rate`, the adapter with `text_lora_learning_rate`. Text standardisation uses the frozen
    features `text` (the adapter starts at zero, so they are the encoder's initial output).
    """
    model.set_text_encoder()
    present = _present_rows(text)
    model.set_feature_statistics(*statistics, *feature_statistics(present))
    lora = [p for name, p in model.named_parameters() if p.requires_grad and name.startswith("text_encoder.")]
    heads = [
        p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("text_encoder.")
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": heads, "lr": args.aligner_learning_rate, "weight_decay": args.aligner_weight_decay},
            {"params": lora, "lr": args.text_lora_learning_rate, "weight_decay": 0.0},
        ],
        foreach=True,
    )
    input_ids, attention_mask = tokenize_transcripts(model, transcripts)
    batches = Batches(
        (audio, labels, input_ids, attention_mask), args.aligner_batch_size,
        class_balanced=args.class_balanced_batches, min_batches=args.aligner_min_batches,
    )  # fmt: skip

    def batch_loss(model: nn.Module, batch: tuple, generator: torch.Generator) -> Tensor:
        audio, labels, ids, mask = batch  # the adapter's dropout draws from the epoch's global stream
        ids, mask = _trim_padding(ids, mask)
        return model(audio_features=audio, labels=labels, input_ids=ids, attention_mask=mask).loss

    return optimizer, batches, heads + lora, batch_loss


# ---------------------------------------------------------------------------------------------- codes
@torch.no_grad()
def encode_audio(aligner: MiseAlignerModel, audio: Tensor) -> Tensor:
    """`z_a` of frozen audio features, on CPU."""
    aligner.eval()
    device = aligner.audio_mean.device
    return predict_in_chunks(lambda x: aligner.get_audio_features(x.to(device)).float().cpu(), audio)


@torch.no_grad()
def text_codes(
    aligner: MiseAlignerModel,
    text: Tensor,
    transcripts: Sequence[str | None] | None = None,
    reference: Tensor | None = None,
    batch_size: int = 64,
) -> Tensor:
    """`z_t` (N, d) of clips on CPU, NaN rows for clips without a transcript; the one source of text codes.

    - An aligner with a LoRA-tuned text encoder (`config.text_lora`): the `transcripts` through that encoder,
      `batch_size` at a time.
    - An aligned space (`config.use_text`): the frozen text features `text` through the aligner's text head.
    - Without alignment: `text` standardised with the mean and std of the `reference` rows that have a
      transcript (the training rows).
    """
    aligner.eval()
    if aligner.config.text_lora is not None:
        if transcripts is None:
            raise ValueError("text_codes: an aligner with a LoRA-tuned text encoder needs the transcripts")
        codes = torch.full((len(transcripts), aligner.config.projection_dim), float("nan"))
        present = [i for i, transcript in enumerate(transcripts) if transcript]
        for start in range(0, len(present), batch_size):
            rows = present[start : start + batch_size]
            codes[rows] = aligner.get_text_features(texts=[transcripts[i] for i in rows]).float().cpu()
        return codes
    if aligner.config.use_text:
        device = aligner.audio_mean.device
        encode = lambda x: aligner.get_text_features(torch.nan_to_num(x).to(device)).float().cpu()  # noqa: E731
        codes = predict_in_chunks(encode, text)
        codes[torch.isnan(text).any(dim=1)] = float("nan")
        return codes
    if reference is None:
        raise ValueError("text_codes: without alignment the raw text features need the reference rows")
    return raw_text_codes(text, reference)


def raw_text_codes(text: Tensor, reference: Tensor) -> Tensor:
    """Text features standardised with the mean and std of the `reference` rows that have a transcript: the text
    codes of a space without alignment."""
    return standardize(text, *feature_statistics(_present_rows(reference)))


def drop_text_codes(
    codes: Tensor | None, rate: float, generator: torch.Generator | None = None
) -> Tensor | None:
    """`codes` with a random fraction `rate` of rows made NaN, the null text code of a clip without transcript
    (the text-code dropout of the generator's steps and of the multimodal classifier's rows)."""
    if codes is None or rate <= 0:
        return codes
    drop = torch.rand(codes.shape[0], 1, generator=generator, device=codes.device) < rate
    return torch.where(drop, torch.full_like(codes, float("nan")), codes)
