"""Multimodal mode (SPEC §1, multimodal extension) and the LoRA-tuned text encoder of stage 1.

- Stage 1 with LoRA (`train_aligner_lora`): the aligner holds the text encoder (base frozen, peft LoRA adapter
  trainable) and trains on transcript tokens instead of cached text features; afterwards the fold's text codes
  come from the tuned encoder (`transcript_codes`).
- Stage 2 (`TextSide`): the text-side generator `t_hat = G_t(eps, y, z_a)` trains inside the InfoGAN stage,
  in the same step module as `G` and `D` (`MultimodalInfoGANStep`), against its own pair discriminator
  `D_t([z_a; z_t])` with two Q heads on the text code alone: `Q_t^y` (emotion logits) and `Q_t^a` (a vector
  in the `z_a` space). Its loss mirrors `G`'s, with the roles of audio and text swapped:
  `L_Gt = adversarial + lambda_y * CE(Q_t^y(t_hat), y) + lambda_t * InfoNCE(z_a, Q_t^a(t_hat))`, the two
  InfoGAN lower bounds on `I(y; t_hat)` and `I(z_a; t_hat)`. Its quality is scored by an MI probe fitted on
  the real `(z_t, y, z_a)` only.
- Stage 3 (`MultimodalAugmenter`): the classifier sees `[z_a; z_t]`; with a generator, every real pair
  `(h, t)` also yields `(h, t_hat)`, `(h_hat, t)` and `(h_hat, t_hat)` each epoch (four times the data). A
  clip without transcript has the null text code (the zero vector, `multimodal_features`), and a fraction
  `multimodal_text_dropout` of all rows gets it too, so the classifier also works without a transcript.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate.utils import set_seed
from torch import nn
from torch.nn import functional as F

from mise.quality import MIProbe
from modeling_mise import MiseAlignerConfig, MiseAlignerModel, MiseGeneratorConfig, MiseGeneratorModel
from modeling_mise.layers import mlp
from modeling_mise.losses import generator_adversarial_loss, info_nce
from modeling_mise.modeling_audio_classifier import multimodal_features

from .arguments import MiseTrainingArguments
from .loop import StageRuntime
from .stages import Batches, InfoGANStep, _summary, fit_supervised

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------- stage 1 (LoRA)
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


def train_aligner_lora(
    runtime: StageRuntime,
    config: MiseAlignerConfig,
    args: MiseTrainingArguments,
    audio_train: Tensor,
    labels_train: Tensor,
    audio_val: Tensor,
    labels_val: Tensor,
    transcripts_train: Sequence[str | None],
    text_train: Tensor,
    seed: int = 0,
) -> tuple[MiseAlignerModel, dict]:
    """Stage 1 with a LoRA-tuned text encoder: CE + lambda_cl * InfoNCE on transcript tokens.

    The base text encoder is loaded from `config.text_encoder` and frozen; the heads train with
    `aligner_learning_rate`, the adapter with `text_lora_learning_rate`. Text standardisation uses the frozen
    features `text_train` (the adapter starts at zero, so they are the encoder's initial output). Early stopping
    on validation UAR like `stages.train_aligner`; returns the best aligner (eval mode, text encoder attached).
    """
    set_seed(seed)
    model = MiseAlignerModel(config)
    model.set_text_encoder()
    present = text_train[~torch.isnan(text_train).any(dim=1)]
    model.set_feature_statistics(audio_train.mean(0), audio_train.std(0), present.mean(0), present.std(0))
    lora = [p for name, p in model.named_parameters() if p.requires_grad and name.startswith("text_encoder.")]
    heads = [
        p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("text_encoder.")
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": heads, "lr": args.aligner_learning_rate, "weight_decay": args.aligner_weight_decay},
            {"params": lora, "lr": args.text_lora_learning_rate, "weight_decay": 0.0},
        ]
    )
    input_ids, attention_mask = tokenize_transcripts(model, transcripts_train)
    batches = Batches((audio_train, labels_train, input_ids, attention_mask), args.aligner_batch_size)

    def batch_loss(model: nn.Module, batch: tuple) -> Tensor:
        audio, labels, ids, mask = batch
        ids, mask = _trim_padding(ids, mask)
        return model(audio_features=audio, labels=labels, input_ids=ids, attention_mask=mask).loss

    model, state = fit_supervised(
        runtime, "aligner", model, optimizer, batches, heads + lora, args, args.aligner_epochs,
        batch_loss, lambda model, x: model(audio_features=x).logits, audio_val, labels_val,
    )  # fmt: skip
    return model, _summary(state)


@torch.no_grad()
def transcript_codes(
    aligner: MiseAlignerModel, transcripts: Sequence[str | None], batch_size: int = 64
) -> Tensor:
    """`z_t` (N, d) of transcripts through the aligner's attached (tuned) text encoder; NaN rows without one."""
    aligner.eval()
    codes = torch.full((len(transcripts), aligner.config.projection_dim), float("nan"))
    present = [i for i, text in enumerate(transcripts) if text]
    for start in range(0, len(present), batch_size):
        rows = present[start : start + batch_size]
        codes[rows] = aligner.get_text_features(texts=[transcripts[i] for i in rows]).float().cpu()
    return codes


# ---------------------------------------------------------------------------------------------- stage 2
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


class MultimodalInfoGANStep(InfoGANStep):
    """`InfoGANStep` plus the text side's two players, in one module.

    `player="text_discriminator"`: BCE of `D_t` on real pairs `(z_a, z_t)` (clips with a transcript) and
    generated pairs `(z_a, t_hat)` + lambda_y * CE(Q_t^y(z_t), y) + lambda_t * InfoNCE(z_a, Q_t^a(z_t)) on the
    real pairs. `player="text_generator"`: the `L_Gt` above.
    """

    def __init__(self, model: MiseGeneratorModel, text_discriminator: TextDiscriminator) -> None:
        super().__init__(model)
        self.text_discriminator = text_discriminator

    def forward(
        self,
        player: str,
        real: Tensor,
        labels: Tensor,
        text_codes: Tensor | None = None,
        mixed: Tensor | None = None,
        mixed_labels: Tensor | None = None,
    ) -> Tensor:
        if player not in ("text_discriminator", "text_generator"):
            return super().forward(player, real, labels, text_codes, mixed, mixed_labels)
        model, config = self.model, self.model.config
        noise = model.sample_noise(labels.shape[0])
        present = ~torch.isnan(text_codes).any(dim=1)
        if player == "text_generator":
            generated = model.generate_text_codes(noise, labels, real)
            fake_logits, fake_emotion, predicted_audio = self.text_discriminator(real, generated)
            loss = generator_adversarial_loss(fake_logits)
            if config.lambda_y > 0:
                loss = loss + config.lambda_y * F.cross_entropy(fake_emotion, labels)
            if config.lambda_t > 0:
                loss = loss + config.lambda_t * info_nce(predicted_audio, real, config.tau)
            return loss
        with torch.no_grad():
            generated = model.generate_text_codes(noise, labels, real)
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
        self.discriminator = TextDiscriminator(
            config.feature_dim,
            config.text_code_dim,
            config.num_labels,
            config.discriminator_hidden_sizes,
            config.discriminator_dropout,
        )
        self.optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=args.discriminator_learning_rate, betas=(0.5, 0.999)
        )
        self.seed = seed
        self.text_codes_train = text_codes_train
        self.probe = MIProbe().fit(
            text_codes_train[present], labels_train[present], features_train[present], seed=seed
        )

    def step_module(self, model: MiseGeneratorModel) -> MultimodalInfoGANStep:
        """The module of all four players."""
        return MultimodalInfoGANStep(model, self.discriminator)

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
    ) -> list[Tensor]:
        """One `D_t` step, then one `G_t` step through `optimizer_g` (G's own parameters have no gradient
        then). `batch` is the stage's `(z_a, y, ..., z_t)`; returns the two losses."""
        real, labels, codes = batch[0], batch[1], batch[-1]
        d_parameters = list(self.discriminator.parameters())
        with runtime.autocast():
            loss_d = step_module("text_discriminator", real, labels, codes)
        runtime.check_finite(loss_d, "generator (D_t step)", epoch, step)
        runtime.backward(loss_d)
        runtime.optimizer_step(optimizer_t, d_parameters)
        for parameter in d_parameters:  # D_t is fixed while G_t learns to fool it
            parameter.requires_grad_(False)
        with runtime.autocast():
            loss_g = step_module("text_generator", real, labels, codes)
        runtime.check_finite(loss_g, "generator (G_t step)", epoch, step)
        runtime.backward(loss_g)
        runtime.optimizer_step(optimizer_g, g_parameters)
        for parameter in d_parameters:
            parameter.requires_grad_(True)
        return [loss_d.detach().float(), loss_g.detach().float()]

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


# ---------------------------------------------------------------------------------------------- stage 3
class MultimodalAugmenter:
    """Stage-3 rows `[z_a; z_t]` per epoch: the real pairs, plus, with a generator, `(h, t_hat)`, `(h_hat, t)`
    and `(h_hat, t_hat)` for every real pair (`h_hat = G(eps, y, z_t)`, `t_hat = G_t(eps', y, z_a)` and, for the
    fully generated pair, `t_hat = G_t(eps'', y, h_hat)`); `noise` adds `generated_ratio` noisy copies. A
    fraction `text_dropout` of all rows gets the null text code. Rows are drawn anew every epoch from a
    generator seeded by (seed, epoch), so a resumed run sees the same.
    """

    def __init__(
        self,
        kind: str,
        features: Tensor,
        text_codes: Tensor,
        labels: Tensor,
        args: MiseTrainingArguments,
        text_dropout: float,
        generator: MiseGeneratorModel | None = None,
        seed: int = 0,
    ) -> None:
        if kind in ("gan", "mise") and (generator is None or not generator.config.multimodal):
            raise ValueError(
                f"multimodal augmentation {kind!r} needs a generator trained with multimodal=True"
            )
        self.kind, self.features, self.text_codes, self.labels = kind, features, text_codes, labels
        self.generator, self.text_dropout, self.seed = generator, text_dropout, seed
        self.noise_std, self.ratio = args.noise_std, args.generated_ratio
        if kind in ("gan", "mise"):
            self.extra_labels = labels.repeat(3)
        elif kind == "noise":
            count = round(len(labels) * self.ratio)
            self._noise_rows = torch.randint(
                len(labels), (count,), generator=torch.Generator().manual_seed(seed)
            )
            self.extra_labels = labels[self._noise_rows]
        else:
            self.extra_labels = torch.zeros(0, dtype=torch.long)

    @torch.no_grad()
    def _generated_pairs(self, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        model = self.generator
        was_training = model.training
        model.eval()
        device = model.null_text_code.device
        n = len(self.labels)
        labels = self.labels.to(device)
        z_a, z_t = self.features.to(device), self.text_codes.to(device)
        h_hat = model.generate_features(model.sample_noise(n, generator=rng), labels, z_t)
        t_hat = model.generate_text_codes(model.sample_noise(n, generator=rng), labels, z_a)
        t_hat_of_h_hat = model.generate_text_codes(model.sample_noise(n, generator=rng), labels, h_hat)
        model.train(was_training)
        audio = torch.cat([z_a, h_hat, h_hat]).float().cpu()
        text = torch.cat([t_hat, z_t, t_hat_of_h_hat]).float().cpu()
        return audio, text

    def rows(self, epoch: int) -> tuple[Tensor, Tensor]:
        """This epoch's `[z_a; z_t]` rows (real first) and their labels."""
        rng = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        audio, text, labels = self.features, self.text_codes, self.labels
        if self.kind in ("gan", "mise"):
            extra_audio, extra_text = self._generated_pairs(rng)
            audio, text = torch.cat([audio, extra_audio]), torch.cat([text, extra_text])
            labels = torch.cat([labels, self.extra_labels])
        elif self.kind == "noise" and len(self.extra_labels):
            pick = self._noise_rows
            extra_audio, extra_text = self.features[pick], self.text_codes[pick]
            extra_audio = extra_audio + self.features.std(0) * self.noise_std * torch.randn(
                extra_audio.shape, generator=rng
            )
            extra_text = extra_text + torch.nan_to_num(self.text_codes).std(0) * self.noise_std * torch.randn(
                extra_text.shape, generator=rng
            )
            audio, text = torch.cat([audio, extra_audio]), torch.cat([text, extra_text])
            labels = torch.cat([labels, self.extra_labels])
        if self.text_dropout > 0:
            drop = torch.rand(len(labels), 1, generator=rng) < self.text_dropout
            text = torch.where(drop, torch.full_like(text, float("nan")), text)
        return multimodal_features(audio, text), labels
