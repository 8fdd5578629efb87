"""The InfoGAN of MISE (stage 2): generator, discriminator trunk, Q heads and the learned null text code."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.utils import ModelOutput

from .configuration_generator import MiseGeneratorConfig
from .layers import MisePreTrainedModel, mlp


@dataclass
class MiseDiscriminatorOutput(ModelOutput):
    """
    Heads of the discriminator trunk.

    Args:
        adversarial_logits: real/fake logit per row, shape `(batch,)`.
        emotion_logits: `Q_y`, shape `(batch, num_labels)`.
        text_code: `Q_t`, a vector in the text-code space, shape `(batch, text_code_dim)`.
    """

    adversarial_logits: torch.FloatTensor | None = None
    emotion_logits: torch.FloatTensor | None = None
    text_code: torch.FloatTensor | None = None


@dataclass
class MiseGenerationOutput(ModelOutput):
    """
    Labelled generated features.

    Args:
        features: generated `h_hat` in the `z_a` space, shape `(n, feature_dim)`.
        labels: their emotion ids, shape `(n,)`.
        text_codes: the text code each row was conditioned on (`None` rows used the null code: NaN).
    """

    features: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None
    text_codes: torch.FloatTensor | None = None


@dataclass
class MiseGeneratorOutput(ModelOutput):
    """
    Output of [`MiseGeneratorModel.forward`]: generated features and the discriminator heads on them, what the
    generator's side of an InfoGAN step scores (the losses are the training step's).

    Args:
        features: generated features, shape `(batch, feature_dim)`.
        adversarial_logits / emotion_logits / text_code_pred: discriminator heads on the generated features.
    """

    features: torch.FloatTensor | None = None
    adversarial_logits: torch.FloatTensor | None = None
    emotion_logits: torch.FloatTensor | None = None
    text_code_pred: torch.FloatTensor | None = None


class SpectralLinear(nn.Linear):
    """A linear layer whose weight is divided by its largest singular value (spectral normalisation, Miyato et al.
    2018): `y = x W^T / sigma(W) + b`. `sigma` is estimated by one power iteration per training forward pass from
    the left singular vector kept in the buffer `u` (saved with the weights, so a loaded model scores as the trained
    one did); outside training `u` is not updated."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self.register_buffer("u", torch.full((out_features,), out_features**-0.5))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "u"):  # nn.Linear.__init__ resets before the buffer exists
            self.u.fill_(self.out_features**-0.5)

    def spectral_norm(self) -> torch.Tensor:
        """`sigma(W) ~ u^T W v` (differentiable in W; `u`, `v` are constants of the gradient)."""
        weight = self.weight
        with torch.no_grad():
            u = self.u
            v = F.normalize(weight.t() @ u, dim=0, eps=1e-12)
            if self.training:
                u = F.normalize(weight @ v, dim=0, eps=1e-12)
                self.u.copy_(u)
                v = F.normalize(weight.t() @ u, dim=0, eps=1e-12)
        return torch.dot(u, weight @ v)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight / self.spectral_norm(), self.bias)


class MiseGeneratorModel(MisePreTrainedModel):
    """
    Stage 2 of MISE: an InfoGAN in the aligned feature space. `generator` maps `(eps, onehot(y), z_t)` to
    `h_hat`; the `discriminator` trunk feeds a real/fake head, `q_head_y` (emotion) and `q_head_t` (text code).
    Without a transcript the learned `null_text_code` replaces `z_t`. The adversarial and MI terms are combined
    in the training step (separate optimisers for G and D); `forward` returns generated features and their heads.
    """

    config_class = MiseGeneratorConfig
    main_input_name = "labels"

    def __init__(self, config: MiseGeneratorConfig):
        super().__init__(config)
        code_dim = config.text_code_dim if config.use_text_code else 0
        self.generator = mlp(
            config.noise_dim + config.num_labels + code_dim,
            config.hidden_sizes,
            config.feature_dim,
            config.dropout,
        )
        self.null_text_code = nn.Parameter(torch.zeros(config.text_code_dim))
        linear = SpectralLinear if config.discriminator_spectral_norm else nn.Linear
        self.discriminator = mlp(
            config.feature_dim,
            config.discriminator_hidden_sizes[:-1],
            config.discriminator_hidden_sizes[-1],
            config.discriminator_dropout,
            activation=nn.LeakyReLU,
            linear=linear,
        )
        trunk_dim = config.discriminator_hidden_sizes[-1]
        self.trunk_activation = nn.LeakyReLU()
        self.adversarial_head = linear(trunk_dim, 1)
        self.q_head_y = nn.Linear(trunk_dim, config.num_labels)
        self.q_head_t = nn.Linear(trunk_dim, config.text_code_dim)
        if config.multimodal:
            self.text_generator = mlp(
                config.noise_dim + config.num_labels + config.feature_dim,
                config.hidden_sizes,
                config.text_code_dim,
                config.dropout,
            )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            with torch.no_grad():
                self.null_text_code.normal_(0.0, 0.02)

    # ----------------------------------------------------------------- building blocks
    def generator_parameters(self) -> list[nn.Parameter]:
        """Parameters of G (and G_t, the null code): the generator optimiser's."""
        modules = [self.generator] + ([self.text_generator] if self.config.multimodal else [])
        return [p for m in modules for p in m.parameters()] + [self.null_text_code]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trunk and its three heads: the discriminator optimiser's."""
        modules = [self.discriminator, self.adversarial_head, self.q_head_y, self.q_head_t]
        return [p for m in modules for p in m.parameters()]

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`eps ~ N(0, I)` of shape `(n, noise_dim)`, reproducible for a seeded `torch.Generator`."""
        noise = torch.randn(
            n, self.config.noise_dim, generator=generator, device="cpu" if generator else None
        )
        return noise.to(device=self.null_text_code.device, dtype=self.null_text_code.dtype)

    def _text_code_input(self, text_codes: torch.Tensor | None, n: int) -> torch.Tensor:
        """Text codes with missing rows (None, or NaN rows) replaced by the learned null code."""
        null = self.null_text_code.unsqueeze(0).expand(n, -1)
        if text_codes is None:
            return null
        if text_codes.shape != (n, self.config.text_code_dim):
            raise ValueError(
                f"text_codes must have shape ({n}, {self.config.text_code_dim}), got {tuple(text_codes.shape)}"
            )
        missing = torch.isnan(text_codes).any(dim=-1, keepdim=True)
        return torch.where(missing, null, torch.nan_to_num(text_codes.to(null.dtype)))

    def _onehot(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() != 1:
            raise ValueError(f"labels must be a 1-D tensor of emotion ids, got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.config.num_labels):
            raise ValueError(
                f"labels must be emotion ids in [0, {self.config.num_labels}), got {labels.tolist()}"
            )
        return F.one_hot(labels.long(), self.config.num_labels).to(self.null_text_code.dtype)

    def _finish(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) if self.config.normalize_output else features

    def generate_features(
        self, noise: torch.Tensor, labels: torch.Tensor, text_codes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`h_hat = G(eps, onehot(y), z_t)` (differentiable). Missing text codes use the null code."""
        parts = [noise, self._onehot(labels)]
        if self.config.use_text_code:
            parts.append(self._text_code_input(text_codes, noise.shape[0]))
        return self._finish(self.generator(torch.cat(parts, dim=-1)))

    def generate_text_codes(
        self, noise: torch.Tensor, labels: torch.Tensor, audio_features: torch.Tensor
    ) -> torch.Tensor:
        """Multimodal text-side generator: `t_hat = G_t(eps, onehot(y), z_a)` in the `z_t` space."""
        if not self.config.multimodal:
            raise ValueError("generate_text_codes needs a generator built with multimodal=True")
        inputs = torch.cat([noise, self._onehot(labels), audio_features.to(noise.dtype)], dim=-1)
        return F.normalize(self.text_generator(inputs), dim=-1)

    def discriminate(self, features: torch.Tensor) -> MiseDiscriminatorOutput:
        """Run the discriminator trunk and its real/fake, `Q_y` and `Q_t` heads."""
        hidden = self.trunk_activation(self.discriminator(features))
        return MiseDiscriminatorOutput(
            adversarial_logits=self.adversarial_head(hidden).squeeze(-1),
            emotion_logits=self.q_head_y(hidden),
            text_code=self.q_head_t(hidden),
        )

    # ----------------------------------------------------------------- public API
    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor | list[int] | None = None,
        text_codes: torch.Tensor | None = None,
        num_per_label: int = 1,
        generator: torch.Generator | None = None,
    ) -> MiseGenerationOutput:
        """
        Generate labelled features.

        Args:
            labels: emotion ids to generate, or `None` for `num_per_label` rows of every emotion.
            text_codes: `z_t` per label row (`(len(labels), text_code_dim)`), NaN rows or `None` for no transcript.
            num_per_label: rows generated per given label (per emotion when `labels` is `None`).
            generator: a seeded `torch.Generator` for reproducible noise.

        Returns:
            [`MiseGenerationOutput`] with `features`, `labels` and the `text_codes` used.
        """
        if isinstance(num_per_label, bool) or not isinstance(num_per_label, int) or num_per_label < 1:
            raise ValueError(f"num_per_label must be a positive integer, got {num_per_label!r}")
        device = self.null_text_code.device
        if labels is None:
            labels = torch.arange(self.config.num_labels, device=device)
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
        labels = labels.repeat_interleave(num_per_label)
        if text_codes is not None:
            text_codes = torch.as_tensor(text_codes, device=device).repeat_interleave(num_per_label, dim=0)
        was_training = self.training
        self.eval()
        try:
            noise = self.sample_noise(labels.shape[0], generator=generator)
            features = self.generate_features(noise, labels, text_codes)
        finally:
            self.train(was_training)
        return MiseGenerationOutput(features=features, labels=labels, text_codes=text_codes)

    def forward(
        self,
        labels: torch.Tensor,
        text_codes: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> MiseGeneratorOutput:
        """
        The generator's side of an InfoGAN step: generate `h_hat = G(eps, onehot(y), z_t)` for `labels` (and text
        codes) and score it with the discriminator heads (differentiable).

        Args:
            labels: emotion ids `(batch,)` of the code `c`.
            text_codes: `z_t` `(batch, text_code_dim)`; NaN rows / `None` use the null code.
            noise: `eps` `(batch, noise_dim)`; sampled when omitted.
        """
        if noise is None:
            noise = self.sample_noise(labels.shape[0])
        features = self.generate_features(noise, labels, text_codes)
        heads = self.discriminate(features)
        return MiseGeneratorOutput(
            features=features,
            adversarial_logits=heads.adversarial_logits,
            emotion_logits=heads.emotion_logits,
            text_code_pred=heads.text_code,
        )
