"""Configuration of the InfoGAN generator (stage 2) with its discriminator and Q heads."""

from __future__ import annotations

from transformers import PretrainedConfig

from .config_checks import (
    check_int_list,
    check_labels,
    check_non_negative,
    check_positive_int,
    check_probability,
    check_temperature,
    label_kwargs,
)


class MiseGeneratorConfig(PretrainedConfig):
    r"""
    Configuration of [`MiseGeneratorModel`]: `G(eps, c)` with latent code `c = (onehot(y), z_t)` producing
    features in the `z_a` space, a discriminator trunk with real/fake, `Q_y` and `Q_t` heads, and optionally
    a text-side generator `t_hat = G_t(eps, onehot(y), z_a)` (multimodal augmentation).

    Args:
        feature_dim (`int`, defaults to 128): size of the generated features (the aligner's `projection_dim`).
        text_code_dim (`int`, defaults to 128): size of the text code `z_t`.
        noise_dim (`int`, defaults to 128): size of the noise `eps ~ N(0, I)`.
        hidden_sizes (`list[int]`, defaults to `[256, 256]`): hidden layers of the generator(s).
        discriminator_hidden_sizes (`list[int]`, defaults to `[256, 256]`): hidden layers of the trunk.
        dropout (`float`, defaults to 0.0): dropout in the generator.
        discriminator_dropout (`float`, defaults to 0.2): dropout in the discriminator trunk.
        discriminator_spectral_norm (`bool`, defaults to `False`): spectral normalisation of every linear layer of
            the trunk and of the real/fake head (a 1-Lipschitz critic, Miyato et al. 2018).
        use_text_code (`bool`, defaults to `True`): condition on `z_t`; `False` is the "no text code" ablation.
        text_code_dropout (`float`, defaults to 0.2): probability, during training, of replacing a text code
            with the learned null code, so generation also works without a transcript.
        multimodal (`bool`, defaults to `False`): add the text-side generator.
        normalize_output (`bool`, defaults to `True`): L2-normalise generated features, like `z_a` and `z_t`.
        lambda_y (`float`, defaults to 1.0): weight of the emotion MI term `CE(Q_y(h_hat), y)`.
        lambda_t (`float`, defaults to 1.0): weight of the text MI term `InfoNCE(z_t, Q_t(h_hat))`.
        tau (`float`, defaults to 0.07): temperature of the text MI InfoNCE.
    """

    model_type = "mise-generator"

    def __init__(
        self,
        feature_dim: int = 128,
        text_code_dim: int = 128,
        noise_dim: int = 128,
        hidden_sizes: list[int] | None = None,
        discriminator_hidden_sizes: list[int] | None = None,
        dropout: float = 0.0,
        discriminator_dropout: float = 0.2,
        discriminator_spectral_norm: bool = False,
        use_text_code: bool = True,
        text_code_dropout: float = 0.2,
        multimodal: bool = False,
        normalize_output: bool = True,
        lambda_y: float = 1.0,
        lambda_t: float = 1.0,
        tau: float = 0.07,
        **kwargs,
    ):
        name = type(self).__name__
        check_positive_int(name, "feature_dim", feature_dim)
        check_positive_int(name, "text_code_dim", text_code_dim)
        check_positive_int(name, "noise_dim", noise_dim)
        self.hidden_sizes = check_int_list(name, "hidden_sizes", hidden_sizes or [256, 256])
        self.discriminator_hidden_sizes = check_int_list(
            name, "discriminator_hidden_sizes", discriminator_hidden_sizes or [256, 256]
        )
        check_probability(name, "dropout", dropout)
        check_probability(name, "discriminator_dropout", discriminator_dropout)
        check_probability(name, "text_code_dropout", text_code_dropout, allow_one=True)
        check_non_negative(name, "lambda_y", lambda_y)
        check_non_negative(name, "lambda_t", lambda_t)
        check_temperature(name, "tau", tau)
        self.feature_dim = feature_dim
        self.text_code_dim = text_code_dim
        self.noise_dim = noise_dim
        self.dropout = dropout
        self.discriminator_dropout = discriminator_dropout
        self.discriminator_spectral_norm = bool(discriminator_spectral_norm)
        self.use_text_code = bool(use_text_code)
        self.text_code_dropout = float(text_code_dropout)
        self.multimodal = bool(multimodal)
        self.normalize_output = bool(normalize_output)
        self.lambda_y = float(lambda_y)
        self.lambda_t = float(lambda_t)
        self.tau = float(tau)
        super().__init__(**label_kwargs(kwargs))
        check_labels(name, self.num_labels)
