"""Validation shared by the MISE configs: a bad value raises a ValueError that names the field."""

from __future__ import annotations

from collections.abc import Sequence


def check_positive_int(config_name: str, field: str, value: object) -> None:
    """Raise unless ``value`` is an ``int`` (not bool) greater than zero."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{config_name}.{field} must be a positive integer, got {value!r}")


def check_non_negative(config_name: str, field: str, value: object) -> None:
    """Raise unless ``value`` is a finite real number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value >= 0
        or value == float("inf")
    ):
        raise ValueError(f"{config_name}.{field} must be a finite number >= 0, got {value!r}")


def check_probability(config_name: str, field: str, value: object, *, allow_one: bool = False) -> None:
    """Raise unless ``0 <= value < 1`` (or ``<= 1`` with ``allow_one``)."""
    check_non_negative(config_name, field, value)
    if value > 1 or (value == 1 and not allow_one):
        bound = "<= 1" if allow_one else "< 1"
        raise ValueError(
            f"{config_name}.{field} must be in [0, 1{']' if allow_one else ')'} ({bound}), got {value!r}"
        )


def check_int_list(config_name: str, field: str, value: object) -> list[int]:
    """Raise unless ``value`` is a sequence of positive integers; return it as a list."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{config_name}.{field} must be a list of positive integers, got {value!r}")
    for item in value:
        check_positive_int(config_name, field, item)
    return list(value)


def check_choice(config_name: str, field: str, value: object, choices: Sequence[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{config_name}.{field} must be one of {list(choices)}, got {value!r}")


def check_temperature(config_name: str, field: str, value: object) -> None:
    """Raise unless ``value`` is a real number in (0, 10): an InfoNCE temperature."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10:
        raise ValueError(f"{config_name}.{field} must be in (0, 10), got {value!r}")


def check_labels(config_name: str, num_labels: int) -> None:
    """An emotion model needs at least two classes."""
    if num_labels < 2:
        raise ValueError(f"{config_name}.id2label must name at least 2 emotions, got {num_labels}")


def label_kwargs(kwargs: dict, default_num_labels: int = 4) -> dict:
    """A config's keyword arguments with both label maps: `default_num_labels` placeholder classes when neither
    `id2label` nor `num_labels` is given, and `label2id` filled from `id2label` when missing or null
    (transformers 5 derives it only from `num_labels`), so every saved `config.json` has both."""
    if "id2label" not in kwargs and "num_labels" not in kwargs:
        kwargs["num_labels"] = default_num_labels
    id2label = kwargs.get("id2label")
    if id2label and not kwargs.get("label2id"):
        kwargs["label2id"] = {name: int(index) for index, name in id2label.items()}
    return kwargs
