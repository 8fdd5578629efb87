"""The losses the shipped models compute (InfoNCE, soft cross-entropy) and the InfoGAN mutual-information bounds.

Imported by the modeling files, which are copied next to saved weights for ``trust_remote_code``:
this module imports only ``torch``, ``math`` and ``typing``. The training-only losses (the InfoGAN players',
mix-up) live in the training code (``training.infogan``, ``training.engine``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "emotion_mi_lower_bound",
    "info_nce",
    "soft_cross_entropy",
    "symmetric_info_nce",
    "text_mi_lower_bound",
]


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(
            f"{name_a}/{name_b}: expected 2-D (batch, dim) tensors, got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape != b.shape:
        raise ValueError(f"{name_a}/{name_b}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.shape[0] == 0:
        raise ValueError(f"{name_a}: empty batch")


def _check_temperature(temperature: float | torch.Tensor) -> None:
    # a tensor temperature is left unchecked: reading it would synchronise the device every step
    if not isinstance(temperature, torch.Tensor) and not float(temperature) > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")


def info_nce(
    query: torch.Tensor,
    keys: torch.Tensor,
    temperature: float | torch.Tensor,
    normalize: bool = True,
) -> torch.Tensor:
    """InfoNCE with in-batch negatives: ``mean_i -log softmax_j(sim(q_i, k_j) / tau)[i]``.

    ``sim`` is the cosine similarity when ``normalize`` (default), else the dot product. ``temperature``
    may be a tensor (a learned temperature receives gradients).
    """
    _check_pair("query", query, "keys", keys)
    _check_temperature(temperature)
    if normalize:
        query = F.normalize(query, dim=-1)
        keys = F.normalize(keys, dim=-1)
    logits = query @ keys.t() / temperature  # (B, B), positives on the diagonal
    targets = torch.arange(query.shape[0], device=query.device)
    return F.cross_entropy(logits, targets)


def symmetric_info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float | torch.Tensor,
    normalize: bool = True,
) -> torch.Tensor:
    """CLIP-style symmetric InfoNCE: ``(info_nce(a, b) + info_nce(b, a)) / 2``."""
    return 0.5 * (info_nce(a, b, temperature, normalize) + info_nce(b, a, temperature, normalize))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets: ``mean_i -sum_c targets_ic * log_softmax(logits)_ic``."""
    _check_pair("logits", logits, "targets", targets)
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def emotion_mi_lower_bound(
    q_logits: torch.Tensor,
    labels: torch.Tensor,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoGAN's variational bound ``I(y; h) >= H(y) - CE(Q_y(h), y)`` in nats.

    ``prior`` (C,) is the label distribution whose entropy is ``H(y)``; by default the empirical
    distribution of ``labels``. Gradients flow into ``q_logits``.
    """
    if q_logits.dim() != 2:
        raise ValueError(f"q_logits: expected shape (N, C), got {tuple(q_logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != q_logits.shape[0] or labels.shape[0] == 0:
        raise ValueError(f"labels: expected shape ({q_logits.shape[0]},), got {tuple(labels.shape)}")
    num_labels = q_logits.shape[1]
    labels = labels.long()
    if int(labels.min()) < 0 or int(labels.max()) >= num_labels:
        raise ValueError(f"labels: class ids must lie in [0, {num_labels})")
    if prior is None:
        prior = torch.bincount(labels, minlength=num_labels).to(q_logits.dtype) / labels.shape[0]
    elif prior.shape != (num_labels,):
        raise ValueError(f"prior: expected shape ({num_labels},), got {tuple(prior.shape)}")
    prior = prior.to(device=q_logits.device, dtype=q_logits.dtype)
    entropy = -torch.where(
        prior > 0, prior * torch.log(prior.clamp_min(1e-30)), torch.zeros_like(prior)
    ).sum()
    return entropy - F.cross_entropy(q_logits, labels.to(q_logits.device))


def text_mi_lower_bound(
    text_codes: torch.Tensor,
    predicted_codes: torch.Tensor,
    temperature: float = 0.07,
) -> torch.Tensor:
    """InfoNCE bound ``I(t; h) >= log N - InfoNCE(z_t, Q_t(h))`` in nats over a batch of N pairs.

    The text codes are the queries and the predictions the keys, as in SPEC's ``L_It`` and the generator's loss.
    """
    _check_pair("text_codes", text_codes, "predicted_codes", predicted_codes)
    return math.log(text_codes.shape[0]) - info_nce(text_codes, predicted_codes, temperature)
