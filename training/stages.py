"""The three training stages of MISE on plain tensors: features and labels in, a trained model and its metrics out.

A study script can call them per variant without re-running shared parts: `train_aligner` once per fold, then
`train_generator` / `train_classifier` per augmentation. Each stage seeds itself, trains on this process on
whole-tensor batches (`Batches`) and runs the shared epoch loop (`training.loop.run_epochs`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate.utils import set_seed
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from torch.nn import functional as F

from mise.quality import MIProbe, frechet_distance, knn_precision_recall
from modeling_mise import (
    MiseAlignerConfig,
    MiseAlignerModel,
    MiseClassifierConfig,
    MiseClassifierModel,
    MiseGeneratorConfig,
    MiseGeneratorModel,
)
from modeling_mise.losses import discriminator_loss, info_nce, mixup, soft_cross_entropy

from .arguments import MiseTrainingArguments, ModelArguments
from .loop import LoopState, StageRuntime, run_epochs

if TYPE_CHECKING:
    from .multimodal import TextSide

Tensor = torch.Tensor


class Batches:
    """Shuffled equal-sized batches of row-aligned tensors, sliced from the whole tensors (no DataLoader).

    About `batch_size` rows each: `round(N / batch_size)` batches' worth, so every batch has the same size and at
    most a few rows an epoch are left out. Epoch `e` is ordered by `randperm(N)` from a generator seeded with
    `seed + e` (`seed`: the process' torch seed when the stage starts, as `set_seed` left it), the order a
    seedable-sampler DataLoader gave, and takes one draw of the global generator as its iterator did, so
    runs at a fixed seed reproduce those of a DataLoader exactly.
    """

    def __init__(self, tensors: tuple[Tensor, ...], batch_size: int, seed: int | None = None) -> None:
        self.tensors = tensors
        self.seed = torch.initial_seed() if seed is None else seed
        rows = len(tensors[0])
        self.size = max(1, rows // max(1, round(rows / batch_size)))

    def __len__(self) -> int:
        return len(self.tensors[0]) // self.size

    def epoch(self, epoch: int) -> list[tuple[Tensor, ...]]:
        """The batches of `epoch`, in order."""
        torch.empty((), dtype=torch.int64).random_()  # the global draw a DataLoader iterator made
        rows = len(self.tensors[0])
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(self.seed + epoch))
        count = rows // self.size
        return [
            tuple(tensor[index] for tensor in self.tensors)
            for index in order[: count * self.size].view(count, self.size)
        ]


def _epoch_mean(totals: Tensor, batches: int) -> Tensor:
    """Mean per-batch losses of an epoch."""
    return totals.cpu() / max(batches, 1)


@torch.no_grad()
def _predict(forward, features: Tensor, batch_size: int = 4096) -> Tensor:
    if len(features) <= batch_size:  # one chunk: no copy
        return forward(features)
    return torch.cat([forward(chunk) for chunk in features.split(batch_size)])


def _selection_score(logits: Tensor, labels: Tensor, metric: str = "uar") -> tuple[float, dict[str, float]]:
    """Validation score, higher is better: UAR (scikit-learn's balanced accuracy, ties broken by the lower loss)
    or the negated validation cross-entropy (`metric="loss"`, smoother on a few validation clips)."""
    uar = float(balanced_accuracy_score(labels.numpy(), logits.argmax(-1).numpy()))
    loss = float(F.cross_entropy(logits, labels))
    score = -loss if metric == "loss" else uar - 1e-3 * loss
    return score, {"val_uar": uar, "val_loss": loss}


def _nan_mean_std(values: Tensor) -> tuple[Tensor, Tensor]:
    present = values[~torch.isnan(values).any(dim=1)]
    return present.mean(0), present.std(0)


# ---------------------------------------------------------------------------------------------- configs
def fit_supervised(
    runtime: StageRuntime,
    stage: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    parameters: list,
    args: MiseTrainingArguments,
    num_epochs: int,
    batch_loss: Callable[[nn.Module, tuple], Tensor],
    val_logits: Callable[[nn.Module, Tensor], Tensor],
    features_val: Tensor,
    labels_val: Tensor,
    before_epoch: Callable[[int], None] | None = None,
) -> tuple[nn.Module, LoopState]:
    """The loop of stages 1 and 3: `batch_loss(model, batch)` per step, early stopping on
    `val_logits(model, x)` of the validation speakers (`early_stopping_metric`). Returns the best model (eval
    mode) and the loop state."""
    device = runtime.device
    model.to(device)
    features_val = features_val.to(device)

    def train_epoch(epoch: int, state: LoopState) -> dict[str, float]:
        if before_epoch is not None:
            before_epoch(epoch)
        model.train()
        total = torch.zeros((), device=device)
        epoch_batches = batches.epoch(epoch)
        for index, batch in enumerate(epoch_batches):
            runtime.begin_batch(index, len(epoch_batches))
            with runtime.autocast():
                loss = batch_loss(model, tuple(tensor.to(device) for tensor in batch))
            runtime.check_finite(loss, stage, epoch, state.step)
            runtime.backward(loss)
            runtime.optimizer_step(optimizer, parameters)
            state.step += 1
            total += loss.detach().float()
        return {"loss": float(_epoch_mean(total, len(epoch_batches)))}

    def evaluate() -> tuple[float, dict[str, float]]:
        model.eval()
        with runtime.autocast():
            logits = _predict(lambda x: val_logits(model, x).float().cpu(), features_val)
        return _selection_score(logits, labels_val, args.early_stopping_metric)

    state = run_epochs(
        runtime,
        stage,
        num_epochs=num_epochs,
        train_epoch=train_epoch,
        evaluate=evaluate,
        best_module=model,
        objects={"model": model, "optimizer": optimizer},
        patience=args.early_stopping_patience,
    )
    return model.eval(), state


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


def generator_config(
    model_args: ModelArguments, feature_dim: int, text_code_dim: int | None, id2label: dict[int, str]
) -> MiseGeneratorConfig:
    """Stage-2 config; `no_text_code` (or no text codes at all) conditions G on the emotion only."""
    lambda_y, lambda_t = model_args.effective_mi_weights
    return MiseGeneratorConfig(
        feature_dim=feature_dim,
        text_code_dim=text_code_dim or feature_dim,
        noise_dim=model_args.noise_dim,
        hidden_sizes=list(model_args.generator_hidden_sizes),
        discriminator_hidden_sizes=list(model_args.discriminator_hidden_sizes),
        dropout=model_args.generator_dropout,
        discriminator_dropout=model_args.discriminator_dropout,
        use_text_code=text_code_dim is not None and not model_args.no_text_code,
        text_code_dropout=model_args.text_code_dropout,
        multimodal=model_args.multimodal,
        lambda_y=lambda_y,
        lambda_t=lambda_t,
        tau=model_args.mi_temperature,
        id2label=dict(id2label),
        label2id={name: index for index, name in id2label.items()},
    )


def classifier_config(
    model_args: ModelArguments, input_dim: int, id2label: dict[int, str], text_dim: int | None = None
) -> MiseClassifierConfig:
    """Stage-3 config: an MLP over `z_a`, or over `[z_a; z_t]` when `text_dim` is given (multimodal)."""
    return MiseClassifierConfig(
        input_dim=input_dim,
        text_dim=text_dim or input_dim,
        multimodal=text_dim is not None,
        hidden_sizes=list(model_args.classifier_hidden_sizes),
        dropout=model_args.classifier_dropout,
        input_scale=model_args.classifier_input_scale,
        id2label=dict(id2label),
        label2id={name: index for index, name in id2label.items()},
    )


# ---------------------------------------------------------------------------------------------- stage 1
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
) -> tuple[MiseAlignerModel, dict]:
    """Stage 1: CE + lambda_cl * symmetric InfoNCE; standardisation fitted on the training rows only.

    Early stopping on the validation speakers (`early_stopping_metric`: UAR or cross-entropy); returns the best
    aligner (eval mode) and a summary.
    """
    set_seed(seed)
    model = MiseAlignerModel(config)
    text_mean = text_std = None
    use_text = config.use_text and text_train is not None
    if use_text:
        text_mean, text_std = _nan_mean_std(text_train)
    model.set_feature_statistics(audio_train.mean(0), audio_train.std(0), text_mean, text_std)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.aligner_learning_rate, weight_decay=args.aligner_weight_decay
    )
    tensors = (audio_train, labels_train) + ((text_train,) if use_text else ())
    batches = Batches(tensors, args.aligner_batch_size)

    def batch_loss(model: nn.Module, batch: tuple) -> Tensor:
        return model(
            audio_features=batch[0], labels=batch[1], text_features=batch[2] if use_text else None
        ).loss

    model, state = fit_supervised(
        runtime, "aligner", model, optimizer, batches, list(model.parameters()), args, args.aligner_epochs,
        batch_loss, lambda model, x: model(audio_features=x).logits, audio_val, labels_val,
    )  # fmt: skip
    return model, _summary(state)


@torch.no_grad()
def encode_audio(aligner: MiseAlignerModel, audio: Tensor) -> Tensor:
    """`z_a` of frozen audio features, on CPU."""
    aligner.eval()
    device = aligner.audio_mean.device
    return _predict(lambda x: aligner.get_audio_features(x.to(device)).float().cpu(), audio)


@torch.no_grad()
def encode_text(aligner: MiseAlignerModel, text: Tensor) -> Tensor:
    """`z_t` of frozen text features (NaN rows, missing transcripts, stay NaN), on CPU."""
    aligner.eval()
    device = aligner.audio_mean.device
    codes = _predict(lambda x: aligner.get_text_features(torch.nan_to_num(x).to(device)).float().cpu(), text)
    codes[torch.isnan(text).any(dim=1)] = float("nan")
    return codes


# ---------------------------------------------------------------------------------------------- stage 2
class InfoGANStep(nn.Module):
    """Both players' losses through one `forward` (one module holds every player, so one checkpoint entry).

    `player="discriminator"`: real/fake BCE + lambda_y * CE(Q_y(real), y) (+ soft CE on mixed-up real rows)
    + lambda_t * InfoNCE(Q_t(real), z_t); the generated rows are detached. `player="generator"`: the
    generator's loss from `MiseGeneratorModel.forward` (adversarial + lambda_y * L_Iy + lambda_t * L_It).
    """

    def __init__(self, model: MiseGeneratorModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        player: str,
        real: Tensor,
        labels: Tensor,
        text_codes: Tensor | None = None,
        mixed: Tensor | None = None,
        mixed_labels: Tensor | None = None,
    ) -> Tensor:
        model, config = self.model, self.model.config
        noise = model.sample_noise(labels.shape[0])
        if player == "generator":
            return model(labels=labels, text_codes=text_codes, noise=noise, return_loss=True).loss
        with torch.no_grad():
            codes = text_codes
            if codes is not None and config.text_code_dropout > 0:
                # D also sees rows generated from the null code, as G produces them
                drop = torch.rand(codes.shape[0], 1, device=codes.device) < config.text_code_dropout
                codes = torch.where(drop, torch.full_like(codes, float("nan")), codes)
            fake = model.generate_features(noise, labels, codes)
        rows = [real, fake] + ([mixed] if mixed is not None else [])
        heads = model.discriminate(torch.cat(rows))
        n = real.shape[0]
        loss = discriminator_loss(heads.adversarial_logits[:n], heads.adversarial_logits[n : 2 * n])
        if config.lambda_y > 0:
            emotion = F.cross_entropy(heads.emotion_logits[:n], labels)
            if mixed is not None:
                emotion = (emotion + soft_cross_entropy(heads.emotion_logits[2 * n :], mixed_labels)) / 2
            loss = loss + config.lambda_y * emotion
        if config.lambda_t > 0 and config.use_text_code and text_codes is not None:
            present = ~torch.isnan(text_codes).any(dim=1)
            if int(present.sum()) >= 2:
                predicted = heads.text_code[:n][present]
                loss = loss + config.lambda_t * info_nce(predicted, text_codes[present], config.tau)
        return loss


@torch.no_grad()
def generation_report(
    model: MiseGeneratorModel,
    probe: MIProbe,
    features: Tensor,
    labels: Tensor,
    text_codes: Tensor | None = None,
    seed: int = 0,
) -> dict:
    """MI bounds (the real-data `probe`), Fréchet distance and k-NN precision/recall of one generated row per
    real row (same label and text code). Per-class figures: `mise.quality.generation_quality`."""
    device = model.null_text_code.device
    output = model.generate(
        labels=labels.to(device),
        text_codes=None if text_codes is None else text_codes.to(device),
        generator=torch.Generator().manual_seed(seed),
    )
    generated = output.features.float().cpu()
    scores = probe.score(generated, labels, text_codes)
    precision, recall = knn_precision_recall(features, generated)
    return {
        **scores,
        "frechet_distance": frechet_distance(features, generated),
        "precision": precision,
        "recall": recall,
        "num_generated": len(generated),
    }


def _mi_score(scores: dict) -> float:
    return float(scores["mi_emotion_nats"]) + float(scores.get("mi_text_nats") or 0.0)


def train_generator(
    runtime: StageRuntime,
    config: MiseGeneratorConfig,
    args: MiseTrainingArguments,
    features_train: Tensor,
    labels_train: Tensor,
    features_val: Tensor,
    labels_val: Tensor,
    text_codes_train: Tensor | None = None,
    text_codes_val: Tensor | None = None,
    seed: int = 0,
    on_evaluate: Callable[[MiseGeneratorModel], dict[str, float]] | None = None,
    text_side: TextSide | None = None,
) -> tuple[MiseGeneratorModel, dict]:
    """Stage 2: InfoGAN on `z_a` with separate Adam optimisers for G and D.

    Every `generator_eval_every` epochs an `MIProbe` fitted on the real training features scores features
    generated for the validation labels and text codes; the best-MI generator is kept (SPEC §1).
    `on_evaluate(generator)`, when given, adds scalars to each evaluation's record (logged, not selected on):
    the study scores every checkpoint with Fréchet distance and k-NN precision/recall this way.
    `text_side` (multimodal mode, `training.multimodal.TextSide`) also trains the text-side generator `G_t`
    against its discriminator after each G step, and adds its MI bounds to the selection score.
    """
    set_seed(seed)
    use_codes = config.use_text_code and text_codes_train is not None
    # the text bound needs a code on every row: with missing transcripts the probe scores emotion MI only
    probe_codes = use_codes and text_codes_val is not None
    probe_codes = probe_codes and not (
        torch.isnan(text_codes_train).any() or torch.isnan(text_codes_val).any()
    )
    probe = MIProbe().fit(features_train, labels_train, text_codes_train if probe_codes else None, seed=seed)
    model = MiseGeneratorModel(config)
    step_module = InfoGANStep(model) if text_side is None else text_side.step_module(model)
    betas = (0.5, 0.999)
    optimizer_g = torch.optim.Adam(model.generator_parameters(), lr=args.generator_learning_rate, betas=betas)
    optimizer_d = torch.optim.Adam(
        model.discriminator_parameters(), lr=args.discriminator_learning_rate, betas=betas
    )
    tensors = (features_train, labels_train) + ((text_codes_train,) if use_codes else ())
    tensors += (text_side.text_codes_train,) if text_side is not None else ()
    batches = Batches(tensors, args.generator_batch_size)
    device = runtime.device
    step_module.to(device)
    optimizer_t = text_side.optimizer if text_side is not None else None
    d_parameters, g_parameters = model.discriminator_parameters(), model.generator_parameters()
    num_labels = config.num_labels
    val_codes = text_codes_val if use_codes else None
    repeats = max(1, math.ceil(256 / max(len(labels_val), 1)))

    def train_epoch(epoch: int, state: LoopState) -> dict[str, float]:
        step_module.train()
        totals = torch.zeros(2 if text_side is None else 4, device=device)
        epoch_batches = batches.epoch(epoch)
        for index, batch in enumerate(epoch_batches):
            batch = tuple(tensor.to(device) for tensor in batch)
            real, labels = batch[0], batch[1]
            codes = batch[2] if use_codes else None
            mixed = mixed_labels = None
            if args.generator_mixup_alpha > 0:
                mixed, mixed_labels = mixup(real, labels, num_labels, args.generator_mixup_alpha)
            runtime.begin_batch(index, len(epoch_batches))
            with runtime.autocast():
                loss_d = step_module("discriminator", real, labels, codes, mixed, mixed_labels)
            runtime.check_finite(loss_d, "generator (D step)", epoch, state.step)
            runtime.backward(loss_d)
            runtime.optimizer_step(optimizer_d, d_parameters)
            for parameter in d_parameters:  # D is fixed while G learns to fool it
                parameter.requires_grad_(False)
            with runtime.autocast():
                loss_g = step_module("generator", real, labels, codes)
            runtime.check_finite(loss_g, "generator (G step)", epoch, state.step)
            runtime.backward(loss_g)
            runtime.optimizer_step(optimizer_g, g_parameters)
            for parameter in d_parameters:
                parameter.requires_grad_(True)
            losses = [loss_d.detach().float(), loss_g.detach().float()]
            if text_side is not None:
                losses += text_side.train_step(
                    runtime, step_module, optimizer_t, optimizer_g, g_parameters, batch, epoch, state.step
                )
            state.step += 1
            totals += torch.stack(losses)
        totals = _epoch_mean(totals, len(epoch_batches))
        names = ("d_loss", "g_loss", "text_d_loss", "text_g_loss")
        return {name: float(total) for name, total in zip(names, totals, strict=False)}

    def evaluate() -> tuple[float, dict[str, float]]:
        output = model.generate(
            labels=labels_val.to(device),
            text_codes=None if val_codes is None else val_codes.to(device),
            num_per_label=repeats,
            generator=torch.Generator().manual_seed(seed),
        )
        codes = output.text_codes.cpu() if probe_codes else None
        scores = probe.score(output.features.float().cpu(), output.labels.cpu(), codes)
        metrics = {"mi_emotion_nats": float(scores["mi_emotion_nats"])}
        if scores.get("mi_text_nats") is not None:
            metrics["mi_text_nats"] = float(scores["mi_text_nats"])
        if on_evaluate is not None:
            metrics.update(on_evaluate(model))
        score = _mi_score(scores)
        if text_side is not None:
            text_scores = text_side.evaluate(model, features_val, labels_val)
            metrics.update(text_scores)
            score += sum(text_scores.values())
        return score, metrics

    objects = {"model": step_module, "optimizer_g": optimizer_g, "optimizer_d": optimizer_d}
    if optimizer_t is not None:
        objects["optimizer_t"] = optimizer_t
    state = run_epochs(
        runtime,
        "generator",
        num_epochs=args.generator_epochs,
        train_epoch=train_epoch,
        evaluate=evaluate,
        best_module=model,
        objects=objects,
        eval_every=args.generator_eval_every,
        patience=args.early_stopping_patience,
    )
    model.eval()
    quality = generation_report(
        model, probe, features_train, labels_train, text_codes_train if probe_codes else None, seed
    )
    summary = {**_summary(state), "quality": quality}
    if text_side is not None:
        summary["text_side_quality"] = text_side.evaluate(model, features_train, labels_train)
    return model, summary


# ---------------------------------------------------------------------------------------------- stage 3
def generation_labels(labels: Tensor, num_labels: int, ratio: float, class_balanced: bool) -> Tensor:
    """Labels of the extra rows: `ratio` times the real count, filling minority classes first when balanced.

    Balanced: every class is topped up to `max(largest class, (real + ratio * real) / num_labels)` rows.
    """
    counts = torch.bincount(labels, minlength=num_labels)
    if ratio <= 0:
        return torch.zeros(0, dtype=torch.long)
    if class_balanced:
        target = max(int(counts.max()), math.ceil((1 + ratio) * len(labels) / num_labels))
        extra = (target - counts).clamp(min=0) * (counts > 0)
    else:
        extra = torch.round(counts.float() * ratio).long()
    return torch.repeat_interleave(torch.arange(num_labels), extra)


def _sample_codes(codes: Tensor, labels: Tensor, wanted: Tensor, generator: torch.Generator) -> Tensor:
    """For each wanted label, the text code of a random real training row of that class."""
    out = torch.full((len(wanted), codes.shape[1]), float("nan"))
    for label in wanted.unique():
        pool = torch.nonzero(labels == label).flatten()
        rows = torch.nonzero(wanted == label).flatten()
        out[rows] = codes[pool[torch.randint(len(pool), (len(rows),), generator=generator)]]
    return out


class Augmenter:
    """Extra stage-3 rows per epoch: feature noise, or features from a trained generator (cGAN / MISE).

    Rows are drawn anew every epoch from a generator seeded by (seed, epoch), so a resumed run sees the same.
    """

    def __init__(
        self,
        kind: str,
        features: Tensor,
        labels: Tensor,
        num_labels: int,
        args: MiseTrainingArguments,
        generator: MiseGeneratorModel | None = None,
        text_codes: Tensor | None = None,
        seed: int = 0,
    ) -> None:
        self.kind, self.features, self.labels, self.seed = kind, features, labels, seed
        self.generator, self.noise_std = generator, args.noise_std
        self.text_codes = text_codes if generator is not None and generator.config.use_text_code else None
        self.extra_labels = (
            generation_labels(labels, num_labels, args.generated_ratio, args.class_balanced_generation)
            if kind in ("noise", "gan", "mise")
            else torch.zeros(0, dtype=torch.long)
        )
        if kind in ("gan", "mise") and generator is None:
            raise ValueError(f"augmentation {kind!r} needs a trained generator")

    def rows(self, epoch: int) -> tuple[Tensor, Tensor]:
        """Real rows followed by this epoch's extra rows."""
        if len(self.extra_labels) == 0:
            return self.features, self.labels
        rng = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.kind == "noise":
            extra = _sample_codes(self.features, self.labels, self.extra_labels, rng)
            scale = self.features.std(0, keepdim=True) * self.noise_std
            extra = extra + scale * torch.randn(extra.shape, generator=rng)
        else:
            codes = None
            if self.text_codes is not None:
                codes = _sample_codes(self.text_codes, self.labels, self.extra_labels, rng)
            device = self.generator.null_text_code.device
            output = self.generator.generate(
                labels=self.extra_labels.to(device),
                text_codes=None if codes is None else codes.to(device),
                generator=rng,
            )
            extra = output.features.float().cpu()
        return torch.cat([self.features, extra]), torch.cat([self.labels, self.extra_labels])


def train_classifier(
    runtime: StageRuntime,
    config: MiseClassifierConfig,
    args: MiseTrainingArguments,
    features_train: Tensor,
    labels_train: Tensor,
    features_val: Tensor,
    labels_val: Tensor,
    augmentation: str = "none",
    generator: MiseGeneratorModel | None = None,
    text_codes_train: Tensor | None = None,
    seed: int = 0,
    augmenter: Augmenter | None = None,
    head_init: nn.Linear | None = None,
) -> tuple[MiseClassifierModel, dict]:
    """Stage 3: the MLP on real `z_a` plus augmentation (`none`, `noise`, `mixup`, `gan`, `mise`).

    Early stopping on the validation speakers (`early_stopping_metric`); returns the best classifier (eval mode).
    A given `augmenter` (anything with `rows(epoch)` and `extra_labels`, e.g. the multimodal one)
    replaces the default.
    `head_init` (the aligner's emotion head, "the classifier's last layer" of the paper) initialises a linear
    classifier (`hidden_sizes=[]`, `input_scale=1`), so stage 3 starts from stage 1's decision on `z_a` (a
    multimodal classifier's `z_t` weights start at zero).
    """
    set_seed(seed)
    if augmenter is None:
        augmenter = Augmenter(
            augmentation,
            features_train,
            labels_train,
            config.num_labels,
            args,
            generator,
            text_codes_train,
            seed,
        )
    model = MiseClassifierModel(config)
    if head_init is not None:
        if config.hidden_sizes or config.input_scale != 1:
            raise ValueError("head_init needs a linear classifier on z_a (hidden_sizes=[], input_scale=1)")
        with torch.no_grad():  # multimodal [z_a; z_t]: the z_t weights start at zero
            model.mlp[-1].weight.zero_()
            model.mlp[-1].weight[:, : config.input_dim].copy_(head_init.weight)
            model.mlp[-1].bias.copy_(head_init.bias)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.classifier_learning_rate, weight_decay=args.classifier_weight_decay
    )
    batches = Batches(augmenter.rows(0), args.classifier_batch_size)
    use_mixup = augmentation == "mixup" and args.mixup_alpha > 0

    def batch_loss(model: nn.Module, batch: tuple) -> Tensor:
        features, labels = batch
        if use_mixup:
            features, labels = mixup(features, labels, config.num_labels, args.mixup_alpha)
        return model(features=features, labels=labels).loss

    def before_epoch(epoch: int) -> None:
        batches.tensors = augmenter.rows(epoch)

    model, state = fit_supervised(
        runtime, "classifier", model, optimizer, batches, list(model.parameters()), args, args.classifier_epochs,
        batch_loss, lambda model, x: model(features=x).logits, features_val, labels_val, before_epoch,
    )  # fmt: skip
    summary = _summary(state)
    summary["generated_rows_per_epoch"] = len(augmenter.extra_labels)
    return model, summary


@torch.no_grad()
def predict(classifier: MiseClassifierModel, features: Tensor) -> np.ndarray:
    """Predicted class ids of `z_a` rows."""
    classifier.eval()
    device = next(classifier.parameters()).device
    logits = _predict(lambda x: classifier(features=x.to(device)).logits.float().cpu(), features)
    return logits.argmax(-1).numpy()


def _summary(state: LoopState) -> dict:
    return {
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "best_score": state.best_score,
        "steps": state.step,
        "seconds": round(state.seconds, 3),
    }
