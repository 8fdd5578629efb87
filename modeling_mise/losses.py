"""Losses and mutual-information bounds of MISE (stages 1 and 2).

Imported by the modeling files, which are copied next to saved weights for ``trust_remote_code``:
this module imports only ``torch``, ``math`` and ``typing``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "discriminator_loss",
    "emotion_mi_lower_bound",
    "generator_adversarial_loss",
    "info_nce",
    "mixup",
    "sample_beta",
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


def _standard_gamma(shape: float, generator: torch.Generator | None) -> float:
    """One draw of Gamma(shape, 1) from ``generator`` (Marsaglia & Tsang 2000)."""
    device = generator.device if generator is not None else torch.device("cpu")
    if shape < 1.0:
        # Gamma(a) = Gamma(a + 1) * U^(1/a)
        u = float(torch.rand((), generator=generator, device=device))
        return _standard_gamma(shape + 1.0, generator) * max(u, 1e-300) ** (1.0 / shape)
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = float(torch.randn((), generator=generator, device=device))
        v = (1.0 + c * x) ** 3
        if v <= 0:
            continue
        u = float(torch.rand((), generator=generator, device=device))
        if math.log(max(u, 1e-300)) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v


def sample_beta(concentration: float, generator: torch.Generator | None = None) -> float:
    """One draw of ``lam ~ Beta(concentration, concentration)`` that honours a seeded ``generator``.

    ``torch.distributions.Beta`` takes no generator, so the two Gamma draws are made here.
    """
    if not concentration > 0:
        raise ValueError(f"concentration: must be > 0, got {concentration}")
    device = generator.device if generator is not None else torch.device("cpu")
    x = _standard_gamma(concentration, generator)
    y = _standard_gamma(concentration, generator)
    if x + y == 0.0:  # both underflowed (tiny concentration): the Beta mass sits at 0 and 1 equally
        return float(torch.rand((), generator=generator, device=device) < 0.5)
    return x / (x + y)


def _soft_labels(labels: torch.Tensor, num_labels: int, dtype: torch.dtype) -> torch.Tensor:
    if labels.dim() == 1:
        if labels.dtype.is_floating_point:
            raise ValueError(f"labels: 1-D labels must be integer class ids, got dtype {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
            raise ValueError(
                f"labels: class ids must lie in [0, {num_labels}), got {int(labels.min())}..{int(labels.max())}"
            )
        return F.one_hot(labels.long(), num_labels).to(dtype)
    if labels.dim() == 2 and labels.shape[1] == num_labels:
        return labels.to(dtype)
    raise ValueError(f"labels: expected shape (B,) or (B, {num_labels}), got {tuple(labels.shape)}")


def mixup(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    alpha: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix-up (Zhang et al. 2018) of a batch of features and their (soft) labels.

    ``lam ~ Beta(alpha, alpha)`` (one per batch) and a random permutation ``perm`` are drawn from
    ``generator``; returns ``lam * x + (1 - lam) * x[perm]`` and the soft labels mixed the same way,
    shape (B, num_labels). ``alpha <= 0`` returns the features unchanged and the labels as soft labels.
    """
    if features.dim() != 2:
        raise ValueError(f"features: expected shape (B, D), got {tuple(features.shape)}")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels: batch size {labels.shape[0]} != features batch size {features.shape[0]}")
    dtype = features.dtype if features.dtype.is_floating_point else torch.float32
    soft = _soft_labels(labels, num_labels, dtype).to(features.device)
    if alpha <= 0 or features.shape[0] < 2:
        return features, soft
    lam = sample_beta(alpha, generator)
    device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(features.shape[0], generator=generator, device=device).to(features.device)
    mixed = lam * features + (1.0 - lam) * features[perm]
    mixed_labels = lam * soft + (1.0 - lam) * soft[perm]
    return mixed, mixed_labels


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets: ``mean_i -sum_c targets_ic * log_softmax(logits)_ic``."""
    _check_pair("logits", logits, "targets", targets)
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """GAN discriminator loss: ``BCE(real_logits, 1) + BCE(fake_logits, 0)`` (each a batch mean)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: ``BCE(fake_logits, 1) = mean softplus(-fake_logits)``."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


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
