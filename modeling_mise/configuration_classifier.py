"""Configuration of the emotion classifier (stage 3)."""

from __future__ import annotations

from transformers import PretrainedConfig

from .config_checks import check_int_list, check_labels, check_positive_int, check_probability, label_kwargs


class MiseClassifierConfig(PretrainedConfig):
    r"""
    Configuration of [`MiseClassifierModel`]: an MLP over `z_a` (speech emotion recognition) or over
    `[z_a; z_t]` (multimodal), trained on real plus generated features.

    Args:
        input_dim (`int`, defaults to 128): size of `z_a` (the aligner's `projection_dim`).
        text_dim (`int`, defaults to 128): size of `z_t`, used when `multimodal`.
        hidden_sizes (`list[int]`, defaults to `[256]`): hidden layers of the MLP; `[]` gives a linear classifier.
        dropout (`float`, defaults to 0.3): dropout after each hidden layer.
        multimodal (`bool`, defaults to `False`): classify `[z_a; z_t]` instead of `z_a`.
        input_scale (`float`, defaults to 1.0): multiplies the (unit-norm) input features before the MLP.
        num_heads (`int`, defaults to 1): MLPs trained side by side on the same batches, each with its own initial
            weights and dropout masks; the classifier's logits are their mean.
    """

    model_type = "mise-classifier"

    def __init__(
        self,
        input_dim: int = 128,
        text_dim: int = 128,
        hidden_sizes: list[int] | None = None,
        dropout: float = 0.3,
        multimodal: bool = False,
        input_scale: float = 1.0,
        num_heads: int = 1,
        **kwargs,
    ):
        name = type(self).__name__
        check_positive_int(name, "input_dim", input_dim)
        check_positive_int(name, "num_heads", num_heads)
        check_positive_int(name, "text_dim", text_dim)
        self.hidden_sizes = (
            [] if hidden_sizes == [] else check_int_list(name, "hidden_sizes", hidden_sizes or [256])
        )
        check_probability(name, "dropout", dropout)
        if isinstance(input_scale, bool) or not isinstance(input_scale, (int, float)) or not input_scale > 0:
            raise ValueError(f"{name}.input_scale must be a number > 0, got {input_scale!r}")
        self.input_dim = input_dim
        self.text_dim = text_dim
        self.dropout = dropout
        self.multimodal = bool(multimodal)
        self.input_scale = float(input_scale)
        self.num_heads = int(num_heads)
        super().__init__(**label_kwargs(kwargs))
        check_labels(name, self.num_labels)

    @property
    def feature_size(self) -> int:
        """Width of the classifier's input: `input_dim`, plus `text_dim` when multimodal."""
        return self.input_dim + (self.text_dim if self.multimodal else 0)
