"""Stage 2 of MISE, the InfoGAN in the aligned space (SPEC §1), with every loss of its players.

- `InfoGANStep`: G and D in one module. `L_D = BCE(D(h), 1) + BCE(D(h_hat), 0) + lambda_y * CE(Q_y(h), y)
  (+ soft CE on mixed-up real rows) + lambda_t * InfoNCE(Q_t(h), z_t)`, and `L_G = BCE(D(h_hat), 1)
  + lambda_y * CE(Q_y(h_hat), y) + lambda_t * InfoNCE(z_t, Q_t(h_hat))`, the InfoGAN lower bounds on
  `I(y; h_hat)` and `I(t; h_hat)`. A fraction `text_code_dropout` of rows is generated from the null text code.
- Multimodal mode (`TextSide`, `InfoGANStep` with `D_t`): the text-side generator `t_hat = G_t(eps, y, z_a)`
  trains in the same step module against its own pair discriminator `D_t([z_a; z_t])` with two Q heads on the
  text code alone, `Q_t^y` (emotion logits) and `Q_t^a` (a vector in the `z_a` space). Its loss mirrors G's with
  the roles of audio and text swapped: `L_Gt = adversarial + lambda_y * CE(Q_t^y(t_hat), y) + lambda_t *
  InfoNCE(z_a, Q_t^a(t_hat))`. Its quality is scored by an MI probe fitted on the real `(z_t, y, z_a)` only.
- `train_generator`: separate Adam optimisers for G and D, the best-MI checkpoint kept; `generation_report`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mise.quality import MIProbe, frechet_distance, knn_precision_recall
from modeling_mise import MiseGeneratorConfig, MiseGeneratorModel
from modeling_mise.layers import mlp, use_random_stream
from modeling_mise.losses import info_nce, soft_cross_entropy

from .aligner import drop_text_codes
from .arguments import MiseTrainingArguments, ModelArguments
from .engine import (
    Batches,
    LoopState,
    StageRuntime,
    epoch_mean,
    initialised,
    mixup,
    run_epochs,
    stage_summary,
    training_step,
)

Tensor = torch.Tensor
BETAS = (0.5, 0.999)  # Adam of both players
# generator_selection mi_recall: subtracted from the MI of a checkpoint under the recall floor, so that every
# checkpoint above the floor ranks first (MI bounds are a few nats)
RECALL_FLOOR_PENALTY = 1e6


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
        discriminator_spectral_norm=model_args.discriminator_spectral_norm,
        use_text_code=text_code_dim is not None and not model_args.no_text_code,
        text_code_dropout=model_args.text_code_dropout,
        multimodal=model_args.multimodal,
        lambda_y=lambda_y,
        lambda_t=lambda_t,
        tau=model_args.mi_temperature,
        id2label=dict(id2label),
        label2id={name: index for index, name in id2label.items()},
    )


# ---------------------------------------------------------------------------------------------- losses
def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """GAN discriminator loss: ``BCE(real_logits, 1) + BCE(fake_logits, 0)`` (each a batch mean)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss: ``BCE(fake_logits, 1) = mean softplus(-fake_logits)``."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def _text_mi_term(queries: Tensor, keys: Tensor, text_codes: Tensor | None, tau: float) -> Tensor | None:
    """InfoNCE between the rows of `queries` and `keys` whose text code is present (None under two rows)."""
    if text_codes is None:
        return None
    present = ~torch.isnan(text_codes).any(dim=-1)
    if int(present.sum()) < 2:
        return None
    return info_nce(queries[present], keys[present], tau)


def with_instance_noise(rows: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    """`rows + N(0, std^2)` drawn from `generator` (instance noise, Sønderby et al. 2017): what D sees of real and
    generated rows alike, so the two distributions overlap early in training; `std` 0 returns `rows`."""
    if std <= 0:
        return rows
    noise = torch.randn(rows.shape, generator=generator, device="cpu" if generator is not None else None)
    return rows + std * noise.to(device=rows.device, dtype=rows.dtype)


def mode_seeking_loss(features: Tensor, other: Tensor, noise: Tensor, other_noise: Tensor) -> Tensor:
    """Mode seeking (Mao et al. 2019): `1 / (mean|h_1 - h_2| / mean|eps_1 - eps_2| + 1e-5)` for two rows
    generated from two noises with the same emotion and text code; small when G maps different noises apart,
    so that a conditional G does not collapse each condition onto one row."""
    ratio = (features - other).abs().mean() / (noise - other_noise).abs().mean()
    return 1.0 / (ratio + 1e-5)


def generator_loss(
    model: MiseGeneratorModel,
    labels: Tensor,
    text_codes: Tensor | None,
    noise: Tensor,
    generator: torch.Generator | None = None,
    instance_noise_std: float = 0.0,
    mode_seeking_weight: float = 0.0,
) -> Tensor:
    """`L_G = BCE(D(h_hat), 1) + lambda_y * CE(Q_y(h_hat), y) + lambda_t * InfoNCE(z_t, Q_t(h_hat))` of
    `h_hat = G(noise, y, z_t)`; a fraction `text_code_dropout` of the codes is replaced by the null code first
    (drawn from `generator`), and D sees `h_hat` with instance noise of `instance_noise_std`. With
    `mode_seeking_weight` > 0, G also generates the same conditions from a second noise (drawn from `generator`)
    and adds that weight times `mode_seeking_loss`."""
    config = model.config
    text_codes = drop_text_codes(text_codes, config.text_code_dropout, generator)
    features = model.generate_features(noise, labels, text_codes)
    seeking = None
    if mode_seeking_weight > 0:
        other_noise = model.sample_noise(labels.shape[0], generator=generator)
        other = model.generate_features(other_noise, labels, text_codes)
        seeking = mode_seeking_weight * mode_seeking_loss(features, other, noise, other_noise)
    heads = model.discriminate(with_instance_noise(features, instance_noise_std, generator))
    adversarial = generator_adversarial_loss(heads.adversarial_logits)
    loss = adversarial + config.lambda_y * F.cross_entropy(heads.emotion_logits, labels.long())
    if config.use_text_code:
        text_mi = _text_mi_term(text_codes, heads.text_code, text_codes, config.tau)
        if text_mi is not None:
            loss = loss + config.lambda_t * text_mi
    return loss if seeking is None else loss + seeking


def r1_penalty(adversarial_logits: Tensor, inputs: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): `1/2 * mean_i ||grad_h D(h_i)||^2` over the real rows whose real/fake logits are
    `adversarial_logits`; `inputs` (requiring grad) are the rows D was given, those real rows among them (D scores
    each row alone, so the other rows get no gradient). Differentiable in D's parameters."""
    (gradient,) = torch.autograd.grad(adversarial_logits.sum(), inputs, create_graph=True)
    return 0.5 * gradient.pow(2).sum() / adversarial_logits.shape[0]


# ---------------------------------------------------------------------------------------------- multimodal
class TextDiscriminator(nn.Module):
    """`D_t`: a trunk on the pair `[z_a; z_t]` with a real/fake head, and two heads on `z_t` alone: `Q_t^y`
    (emotion logits) and `Q_t^a` (the paired `z_a` it predicts)."""

    def __init__(
        self,
        feature_dim: int,
        text_code_dim: int,
        num_labels: int,
        hidden_sizes: Sequence[int],
        dropout: float,
    ) -> None:
        super().__init__()
        hidden = list(hidden_sizes)
        self.pair = mlp(feature_dim + text_code_dim, hidden, 1, dropout, activation=nn.LeakyReLU)
        self.q_head_y = mlp(text_code_dim, hidden[:1], num_labels, dropout, activation=nn.LeakyReLU)
        self.q_head_a = mlp(text_code_dim, hidden[:1], feature_dim, dropout, activation=nn.LeakyReLU)

    def forward(self, audio: Tensor, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, d_a), (N, d_t) -> real/fake logits (N,), `Q_t^y` logits (N, C), `Q_t^a` (N, d_a)."""
        return (
            self.pair(torch.cat([audio, text], dim=-1)).squeeze(-1),
            self.q_head_y(text),
            self.q_head_a(text),
        )


class InfoGANStep(nn.Module):
    """Every player's loss through one `forward` (one module holds every player, so one checkpoint entry).

    `player="discriminator"`: real/fake BCE + lambda_y * CE(Q_y(real), y) (+ soft CE on mixed-up real rows)
    + lambda_t * InfoNCE(Q_t(real), z_t); the generated rows are detached. `player="generator"`:
    `generator_loss` (adversarial + lambda_y * L_Iy + lambda_t * L_It). With a `text_discriminator` (multimodal
    mode) two more: `player="text_discriminator"`: BCE of `D_t` on real pairs `(z_a, z_t)` (clips with a
    transcript) and generated pairs `(z_a, t_hat)` + lambda_y * CE(Q_t^y(z_t), y) + lambda_t * InfoNCE(z_a,
    Q_t^a(z_t)) on the real pairs; `player="text_generator"`: `L_Gt`.
    """

    def __init__(
        self,
        model: MiseGeneratorModel,
        text_discriminator: TextDiscriminator | None = None,
        r1_gamma: float = 0.0,
        instance_noise_std: float = 0.0,
        mode_seeking_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.text_discriminator = text_discriminator
        self.r1_gamma = r1_gamma  # weight of the R1 penalty on D's real rows
        self.instance_noise_std = instance_noise_std  # the current std (the training loop anneals it)
        self.mode_seeking_weight = mode_seeking_weight  # weight of G's mode-seeking term

    def forward(
        self,
        player: str,
        real: Tensor,
        labels: Tensor,
        text_codes: Tensor | None = None,
        mixed: Tensor | None = None,
        mixed_labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The loss of `player`; the noise and the text-code dropout draw from `generator` (the epoch's stream)."""
        noise = self.model.sample_noise(labels.shape[0], generator=generator)
        if player == "generator":
            return generator_loss(
                self.model,
                labels,
                text_codes,
                noise,
                generator,
                self.instance_noise_std,
                self.mode_seeking_weight,
            )
        if player == "discriminator":
            return self._discriminator_loss(noise, real, labels, text_codes, mixed, mixed_labels, generator)
        if player not in ("text_generator", "text_discriminator"):
            raise ValueError(f"unknown player {player!r}")
        if self.text_discriminator is None:
            raise ValueError(f"player {player!r} needs a text discriminator (multimodal mode)")
        if player == "text_generator":
            return self._text_generator_loss(noise, real, labels)
        return self._text_discriminator_loss(noise, real, labels, text_codes)

    def _discriminator_loss(
        self,
        noise: Tensor,
        real: Tensor,
        labels: Tensor,
        text_codes: Tensor | None,
        mixed: Tensor | None,
        mixed_labels: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        model, config = self.model, self.model.config
        with torch.no_grad():  # D also sees rows generated from the null code, as G produces them
            fake = model.generate_features(
                noise, labels, drop_text_codes(text_codes, config.text_code_dropout, generator)
            )
        rows = [real, fake] + ([mixed] if mixed is not None else [])
        inputs = with_instance_noise(torch.cat(rows), self.instance_noise_std, generator)
        if self.r1_gamma > 0:
            inputs.requires_grad_(True)
        heads = model.discriminate(inputs)
        n = real.shape[0]
        loss = discriminator_loss(heads.adversarial_logits[:n], heads.adversarial_logits[n : 2 * n])
        if self.r1_gamma > 0:
            loss = loss + self.r1_gamma * r1_penalty(heads.adversarial_logits[:n], inputs)
        if config.lambda_y > 0:
            emotion = F.cross_entropy(heads.emotion_logits[:n], labels)
            if mixed is not None:
                emotion = (emotion + soft_cross_entropy(heads.emotion_logits[2 * n :], mixed_labels)) / 2
            loss = loss + config.lambda_y * emotion
        if config.lambda_t > 0 and config.use_text_code:
            text_mi = _text_mi_term(heads.text_code[:n], text_codes, text_codes, config.tau)
            if text_mi is not None:
                loss = loss + config.lambda_t * text_mi
        return loss

    def _text_generator_loss(self, noise: Tensor, real: Tensor, labels: Tensor) -> Tensor:
        config = self.model.config
        generated = self.model.generate_text_codes(noise, labels, real)
        fake_logits, fake_emotion, predicted_audio = self.text_discriminator(real, generated)
        loss = generator_adversarial_loss(fake_logits)
        if config.lambda_y > 0:
            loss = loss + config.lambda_y * F.cross_entropy(fake_emotion, labels)
        if config.lambda_t > 0:
            loss = loss + config.lambda_t * info_nce(predicted_audio, real, config.tau)
        return loss

    def _text_discriminator_loss(
        self, noise: Tensor, real: Tensor, labels: Tensor, text_codes: Tensor
    ) -> Tensor:
        config = self.model.config
        present = ~torch.isnan(text_codes).any(dim=1)
        with torch.no_grad():
            generated = self.model.generate_text_codes(noise, labels, real)
        codes = torch.nan_to_num(text_codes)
        logits, emotion, predicted_audio = self.text_discriminator(
            torch.cat([real, real]), torch.cat([codes, generated])
        )
        n = real.shape[0]
        targets = torch.cat(
            [present.to(logits.dtype), torch.zeros(n, dtype=logits.dtype, device=logits.device)]
        )
        # clips without a transcript have no real pair: they weigh 0 on the real side
        weights = torch.cat(
            [present.to(logits.dtype), torch.ones(n, dtype=logits.dtype, device=logits.device)]
        )
        per_row = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        real_rows = present.sum().clamp(min=1)
        loss = (per_row[:n] * weights[:n]).sum() / real_rows + per_row[n:].mean()
        if config.lambda_y > 0:
            emotion_loss = F.cross_entropy(emotion[:n], labels, reduction="none")
            loss = loss + config.lambda_y * (emotion_loss * weights[:n]).sum() / real_rows
        if config.lambda_t > 0 and int(present.sum()) >= 2:
            loss = loss + config.lambda_t * info_nce(predicted_audio[:n][present], real[present], config.tau)
        return loss


class TextSide:
    """What the InfoGAN stage needs for the text side: `D_t`, its optimiser, the two extra steps per batch and
    an MI evaluation of `t_hat` with a probe fitted on real `(z_t, y, z_a)` of clips with a transcript."""

    def __init__(
        self,
        config: MiseGeneratorConfig,
        args: MiseTrainingArguments,
        features_train: Tensor,
        labels_train: Tensor,
        text_codes_train: Tensor,
        seed: int = 0,
    ) -> None:
        present = ~torch.isnan(text_codes_train).any(dim=1)
        if int(present.sum()) < 2:
            raise ValueError(
                "multimodal: the text-side generator needs at least two training clips with a transcript"
            )
        self.discriminator = initialised(
            lambda: TextDiscriminator(
                config.feature_dim, config.text_code_dim, config.num_labels, config.discriminator_hidden_sizes,
                config.discriminator_dropout,
            ),
            seed,
            part=1,
        )  # fmt: skip
        self.optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=args.discriminator_learning_rate, betas=BETAS, foreach=True
        )
        self.seed = seed
        self.text_codes_train = text_codes_train
        self.probe = MIProbe().fit(
            text_codes_train[present], labels_train[present], features_train[present], seed=seed
        )

    def step_module(self, model: MiseGeneratorModel, **stabilisers: float) -> InfoGANStep:
        """The module of all four players (`stabilisers`: `InfoGANStep`'s R1 weight, instance noise and mode-seeking
        weight)."""
        return InfoGANStep(model, self.discriminator, **stabilisers)

    def train_step(
        self,
        runtime: StageRuntime,
        step_module: nn.Module,
        optimizer_t,
        optimizer_g,
        g_parameters: list,
        batch: tuple[Tensor, ...],
        epoch: int,
        step: int,
        generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """One `D_t` step, then one `G_t` step through `optimizer_g` (G's own parameters have no gradient
        then). `batch` is the stage's `(z_a, y, ..., z_t)`; returns the two losses."""
        real, labels, codes = batch[0], batch[1], batch[-1]
        d_parameters = list(self.discriminator.parameters())
        loss_d = training_step(
            runtime, lambda: step_module("text_discriminator", real, labels, codes, generator=generator), optimizer_t, d_parameters,
            ("generator (D_t step)", epoch, step),
        )  # fmt: skip
        loss_g = training_step(  # D_t is fixed while G_t learns to fool it
            runtime, lambda: step_module("text_generator", real, labels, codes, generator=generator), optimizer_g, g_parameters,
            ("generator (G_t step)", epoch, step), frozen=d_parameters,
        )  # fmt: skip
        return [loss_d, loss_g]

    @torch.no_grad()
    def evaluate(self, model: MiseGeneratorModel, features: Tensor, labels: Tensor) -> dict[str, float]:
        """MI bounds (nats) of `t_hat = G_t(eps, y, z_a)` for real `(z_a, y)`: with `y` and with `z_a`."""
        was_training = model.training
        model.eval()
        device = model.null_text_code.device
        noise = model.sample_noise(len(labels), generator=torch.Generator().manual_seed(self.seed))
        generated = model.generate_text_codes(noise, labels.to(device), features.to(device)).float().cpu()
        model.train(was_training)
        scores = self.probe.score(generated, labels, features)
        if scores["mi_text_nats"] is None:  # fewer than two rows
            return {"text_side_mi_emotion_nats": scores["mi_emotion_nats"]}
        return {
            "text_side_mi_emotion_nats": scores["mi_emotion_nats"],
            "text_side_mi_audio_nats": scores["mi_text_nats"],
        }


# ---------------------------------------------------------------------------------------------- stage 2
def recall_floor_score(mi_score: float, recall: float, floor: float) -> float:
    """`generator_selection: mi_recall`: a checkpoint's summed MI bounds, less `RECALL_FLOOR_PENALTY` when its k-NN
    recall is under `floor`: the best MI among the checkpoints that reach the floor, the best MI where none does."""
    return mi_score if recall >= floor else mi_score - RECALL_FLOOR_PENALTY


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


class InfoGANTraining:
    """One stage-2 run: the players and their optimisers, the batches and the real-data MI probe.
    `train_epoch` and `evaluate` are what the epoch loop calls.

    The probe is fitted on the real training features (with their text codes when every training and validation
    clip has one: with missing transcripts it scores the emotion bound only) and scores features generated for
    the validation labels and text codes; the selection score is the sum of the MI bounds (and the text side's).
    """

    def __init__(
        self,
        runtime: StageRuntime,
        config: MiseGeneratorConfig,
        args: MiseTrainingArguments,
        train: tuple[Tensor, Tensor, Tensor | None],
        val: tuple[Tensor, Tensor, Tensor | None],
        seed: int,
        text_side: TextSide | None = None,
        on_evaluate: Callable[[MiseGeneratorModel], dict[str, float]] | None = None,
        checkpoint_score: Callable[[MiseGeneratorModel], float] | None = None,
    ) -> None:
        features_train, labels_train, codes_train = train
        codes_val = val[2]
        self.runtime, self.args, self.seed, self.text_side, self.val = runtime, args, seed, text_side, val
        self.on_evaluate = on_evaluate
        self.use_codes = config.use_text_code and codes_train is not None
        self.probe_codes = (
            self.use_codes
            and codes_val is not None
            and not (torch.isnan(codes_train).any() or torch.isnan(codes_val).any())
        )
        self.probe = MIProbe().fit(
            features_train, labels_train, codes_train if self.probe_codes else None, seed=seed
        )
        self.model = model = initialised(lambda: MiseGeneratorModel(config), seed)
        stabilisers = {
            "r1_gamma": args.r1_gamma,
            "instance_noise_std": args.instance_noise_std,
            "mode_seeking_weight": args.mode_seeking_weight,
        }
        self.step_module = (
            InfoGANStep(model, **stabilisers)
            if text_side is None
            else text_side.step_module(model, **stabilisers)
        )
        self.train_data = train
        self.checkpoint_score = checkpoint_score
        self.optimizer_g = torch.optim.Adam(
            model.generator_parameters(), lr=args.generator_learning_rate, betas=BETAS, foreach=True
        )
        self.optimizer_d = torch.optim.Adam(
            model.discriminator_parameters(), lr=args.discriminator_learning_rate, betas=BETAS, foreach=True
        )
        tensors = (features_train, labels_train) + ((codes_train,) if self.use_codes else ())
        tensors += (text_side.text_codes_train,) if text_side is not None else ()
        self.batches = Batches(tensors, args.generator_batch_size, min_batches=args.generator_min_batches)
        self.step_module.to(runtime.device)

    @property
    def objects(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        """What a checkpoint holds: the step module (every player) and the optimisers."""
        objects = {
            "model": self.step_module,
            "optimizer_g": self.optimizer_g,
            "optimizer_d": self.optimizer_d,
        }
        if self.text_side is not None:
            objects["optimizer_t"] = self.text_side.optimizer
        return objects

    def _batch_losses(
        self, batch: tuple[Tensor, ...], epoch: int, step: int, generator: torch.Generator
    ) -> list[Tensor]:
        """One D step, then one G step with D fixed (then the text side's two steps); noise, mix-up and text-code
        dropout draw from `generator`, the epoch's stream."""
        runtime, args, model = self.runtime, self.args, self.model
        real, labels = batch[0], batch[1]
        codes = batch[2] if self.use_codes else None
        mixed = mixed_labels = None
        if args.generator_mixup_alpha > 0:
            mixed, mixed_labels = mixup(
                real, labels, model.config.num_labels, args.generator_mixup_alpha, generator
            )
        d_parameters, g_parameters = model.discriminator_parameters(), model.generator_parameters()
        for _ in range(args.discriminator_steps):  # each D step on fresh noise
            loss_d = training_step(
                runtime, lambda: self.step_module("discriminator", real, labels, codes, mixed, mixed_labels, generator),
                self.optimizer_d, d_parameters, ("generator (D step)", epoch, step),
            )  # fmt: skip
        loss_g = training_step(  # D is fixed while G learns to fool it
            runtime, lambda: self.step_module("generator", real, labels, codes, generator=generator), self.optimizer_g, g_parameters,
            ("generator (G step)", epoch, step), frozen=d_parameters,
        )  # fmt: skip
        losses = [loss_d, loss_g]
        if self.text_side is not None:
            losses += self.text_side.train_step(
                runtime, self.step_module, self.text_side.optimizer, self.optimizer_g, g_parameters, batch,
                epoch, step, generator,
            )  # fmt: skip
        return losses

    def train_epoch(self, epoch: int, state: LoopState, generator: torch.Generator) -> dict[str, float]:
        """One epoch over the batches, every draw from `generator`; returns the mean losses of the players."""
        device = self.runtime.device
        self.step_module.train()
        # instance noise annealed linearly from its std at the first epoch to 0 after the last
        self.step_module.instance_noise_std = self.args.instance_noise_std * max(
            0.0, 1.0 - epoch / max(self.args.generator_epochs, 1)
        )
        totals = torch.zeros(2 if self.text_side is None else 4, device=device)
        use_random_stream(self.step_module, generator)
        epoch_batches = self.batches.epoch(generator)
        for index, batch in enumerate(epoch_batches):
            self.runtime.begin_batch(index, len(epoch_batches))
            batch = tuple(tensor.to(device) for tensor in batch)
            totals += torch.stack(self._batch_losses(batch, epoch, state.step, generator))
            state.step += 1
        use_random_stream(self.step_module, None)
        totals = epoch_mean(totals, len(epoch_batches))
        names = ("d_loss", "g_loss", "text_d_loss", "text_g_loss")
        return {name: float(total) for name, total in zip(names, totals, strict=False)}

    def validation_scores(self) -> dict:
        """The real-data probe's MI bounds of features generated for the validation labels (and text codes), at a
        fixed seed: `mi_emotion_nats` and, where it scores text codes, `mi_text_nats`."""
        model, device = self.model, self.runtime.device
        features_val, labels_val, codes_val = self.val
        output = model.generate(
            labels=labels_val.to(device),
            text_codes=codes_val.to(device) if self.use_codes and codes_val is not None else None,
            num_per_label=max(1, math.ceil(256 / max(len(labels_val), 1))),
            generator=torch.Generator().manual_seed(self.seed),
        )
        codes = output.text_codes.cpu() if self.probe_codes else None
        return self.probe.score(output.features.float().cpu(), output.labels.cpu(), codes)

    def evaluate(self) -> tuple[float, dict[str, float]]:
        """The selection score of the current generator and what it measured (`validation_scores`)."""
        model, features_val, labels_val = self.model, self.val[0], self.val[1]
        scores = self.validation_scores()
        metrics = {"mi_emotion_nats": float(scores["mi_emotion_nats"])}
        if scores.get("mi_text_nats") is not None:
            metrics["mi_text_nats"] = float(scores["mi_text_nats"])
        if self.on_evaluate is not None:
            metrics.update(self.on_evaluate(model))
        score = float(scores["mi_emotion_nats"]) + float(scores.get("mi_text_nats") or 0.0)
        if self.text_side is not None:
            text_scores = self.text_side.evaluate(model, features_val, labels_val)
            metrics.update(text_scores)
            score += sum(text_scores.values())
        return self._selection_score(score, metrics), metrics

    def _selection_score(self, mi_score: float, metrics: dict[str, float]) -> float:
        """The checkpoint's score under `generator_selection` (higher is better), from its summed MI bounds;
        adds what it measured to `metrics`."""
        selection = self.args.generator_selection
        if selection == "classifier":
            metrics["classifier_score"] = float(self.checkpoint_score(self.model))
            return metrics["classifier_score"]
        if selection == "mi_recall":
            features, labels, codes = self.train_data
            quality = generation_report(
                self.model, self.probe, features, labels, codes if self.use_codes else None, self.seed
            )
            metrics.update(precision=quality["precision"], recall=quality["recall"])
            return recall_floor_score(mi_score, quality["recall"], self.args.generator_recall_floor)
        return mi_score


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
    checkpoint_score: Callable[[MiseGeneratorModel], float] | None = None,
) -> tuple[MiseGeneratorModel, dict]:
    """Stage 2: InfoGAN on `z_a` with separate Adam optimisers for G and D.

    Every `generator_eval_every` epochs an `MIProbe` fitted on the real training features scores features
    generated for the validation labels and text codes; the best checkpoint under `generator_selection` is kept:
    the best MI (SPEC §1), the best MI among those whose k-NN recall on the training features reaches
    `generator_recall_floor` (`mi_recall`), or the best `checkpoint_score(generator)` (`classifier`: the fold's
    stage-3 validation score with that checkpoint's rows, which `training.fold` passes).
    `on_evaluate(generator)`, when given, adds scalars to each evaluation's record (logged, not selected on):
    the study scores every checkpoint with Fréchet distance and k-NN precision/recall this way.
    `text_side` (multimodal mode) also trains the text-side generator `G_t` against its discriminator after
    each G step, and adds its MI bounds to the selection score.
    """
    if args.generator_selection == "classifier" and checkpoint_score is None:
        raise ValueError(
            "generator_selection 'classifier' needs a checkpoint_score (the stage-3 validation score)"
        )
    run = InfoGANTraining(
        runtime, config, args, (features_train, labels_train, text_codes_train),
        (features_val, labels_val, text_codes_val), seed, text_side, on_evaluate, checkpoint_score,
    )  # fmt: skip
    state = run_epochs(
        runtime,
        "generator",
        num_epochs=args.generator_epochs,
        train_epoch=run.train_epoch,
        evaluate=run.evaluate if len(features_val) else None,  # a refit keeps the last epoch
        best_module=run.model,
        objects=run.objects,
        seed=seed,
        eval_every=args.generator_eval_every,
        patience=args.early_stopping_patience,
    )
    model = run.model.eval()
    codes = text_codes_train if run.probe_codes else None
    quality = generation_report(model, run.probe, features_train, labels_train, codes, seed)
    summary = {**stage_summary(state), "quality": quality}
    if len(features_val):  # what the kept checkpoint's rows tell a real-data probe about their emotion
        summary["mi_emotion_nats"] = float(run.validation_scores()["mi_emotion_nats"])
    if text_side is not None:
        summary["text_side_quality"] = text_side.evaluate(model, features_train, labels_train)
    return model, summary
