"""Quality of generated features (SPEC §1 "MI as a quality metric").

The two mutual-information lower bounds of the InfoGAN objective, computed with a probe ``Q`` trained on
real data only (so a generator cannot flatter its own heads), reported in nats beside what the field uses
for generated data: the Fréchet distance and k-NN precision/recall (Kynkäänniemi et al. 2019) between
real and generated features, overall and per class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from modeling_mise.layers import feature_statistics, standardize
from modeling_mise.losses import emotion_mi_lower_bound, text_mi_lower_bound

__all__ = [
    "MIProbe",
    "frechet_distance",
    "gaussian_frechet_distance",
    "generation_quality",
    "knn_precision_recall",
]


def _as_matrix(values: Any, name: str) -> np.ndarray:
    """(N, D) float64 array from a tensor / array / nested list; a 1-D input is read as (N, 1)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty (N, D) array, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise ValueError(f"{name}: row {int(bad[0])} has non-finite values")
    return array


def _as_labels(values: Any, name: str, rows: int) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.shape != (rows,):
        raise ValueError(f"{name}: expected shape ({rows},), got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class ids, got dtype {array.dtype}")
    if rows and array.min() < 0:
        raise ValueError(f"{name}: row {int(np.argmin(array))} has a negative class id")
    return array.astype(np.int64)


def _psd_root(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance, negative round-off eigenvalues clipped to 0."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian_frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``.

    ``tr (sigma1 sigma2)^(1/2)`` is the sum of the square roots of the eigenvalues of the symmetric
    ``sigma1^(1/2) sigma2 sigma1^(1/2)``: two symmetric eigendecompositions, exact for singular covariances too
    (no general matrix square root, which is slow and unstable when ``D`` exceeds the number of rows).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mu/sigma: inconsistent shapes {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    root = _psd_root(sigma1)
    cross = np.linalg.eigvalsh(root @ sigma2 @ root)
    diff = mu1 - mu2
    distance = (
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(np.clip(cross, 0.0, None)).sum()
    )
    return float(max(distance, 0.0))


def frechet_distance(real: Any, generated: Any) -> float:
    """Fréchet distance between Gaussians fitted (mean, sample covariance) to two feature sets (N, D), (M, D)."""
    x = _as_matrix(real, "real")
    y = _as_matrix(generated, "generated")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real/generated: feature sizes differ, {x.shape[1]} vs {y.shape[1]}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"real/generated: need >= 2 rows each, got {x.shape[0]} and {y.shape[0]}")
    sigma1 = np.atleast_2d(np.cov(x, rowvar=False))
    sigma2 = np.atleast_2d(np.cov(y, rowvar=False))
    return gaussian_frechet_distance(x.mean(axis=0), sigma1, y.mean(axis=0), sigma2)


def _distances(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), computed in row chunks."""
    tb = torch.from_numpy(b)
    rows = [torch.cdist(torch.from_numpy(a[i : i + chunk]), tb).numpy() for i in range(0, len(a), chunk)]
    return np.concatenate(rows, axis=0)


def _kth_neighbour_radii(x: np.ndarray, k: int) -> np.ndarray:
    # column 0 of the partition is the point itself (distance 0), so index k is the k-th other neighbour
    return np.partition(_distances(x, x), k, axis=1)[:, k]


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 2048) -> float:
    """Fraction of ``points`` inside at least one ball ``(centres[j], radii[j])``."""
    inside = 0
    for i in range(0, len(points), chunk):
        inside += int((_distances(points[i : i + chunk], centres) <= radii[None, :]).any(axis=1).sum())
    return inside / len(points)


def knn_precision_recall(real: Any, generated: Any, k: int = 5) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls in feature space.

    Precision: fraction of generated samples inside the union of balls around real samples whose radius
    is the distance to their k-th nearest real neighbour. Recall: the same with the roles swapped.
    Needs more than ``k`` samples on each side.
    """
    x = _as_matrix(real, "real")
    y = _as_matrix(generated, "generated")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real/generated: feature sizes differ, {x.shape[1]} vs {y.shape[1]}")
    if k < 1 or x.shape[0] <= k or y.shape[0] <= k:
        raise ValueError(
            f"k: need 1 <= k < number of samples, got k={k} with {x.shape[0]} real, {y.shape[0]} generated"
        )
    precision = _coverage(y, x, _kth_neighbour_radii(x, k))
    recall = _coverage(x, y, _kth_neighbour_radii(y, k))
    return precision, recall


class MIProbe:
    """Variational probe ``Q`` of the two MI lower bounds, trained on real features only.

    ``Q_y`` is a multinomial logistic regression and ``Q_t`` a ridge regression from the standardised
    features to the text codes. ``score`` returns, in nats,
    ``mi_emotion_nats = H(y) - CE(Q_y(h), y)`` (``H`` of the scored labels' empirical distribution) and
    ``mi_text_nats = log B - InfoNCE(Q_t(h), z_t)`` (cosine similarity, ``temperature``), averaged over
    batches of ``text_batch_size`` pairs in a seeded order so that sets of different sizes compare fairly
    (a set smaller than one batch is scored as one batch).

    Args:
        C: inverse L2 strength of ``Q_y``.
        ridge_alpha: L2 strength of ``Q_t``.
        temperature: InfoNCE temperature of the text bound.
        text_batch_size: batch size ``B`` of the text bound.
        max_iter: iterations of the logistic regression solver.
    """

    def __init__(
        self,
        C: float = 1.0,
        ridge_alpha: float = 1.0,
        temperature: float = 0.07,
        text_batch_size: int = 256,
        max_iter: int = 2000,
    ) -> None:
        if not C > 0 or not ridge_alpha >= 0 or not temperature > 0 or text_batch_size < 2:
            raise ValueError(
                f"MIProbe: need C > 0, ridge_alpha >= 0, temperature > 0, text_batch_size >= 2; got C={C}, "
                f"ridge_alpha={ridge_alpha}, temperature={temperature}, text_batch_size={text_batch_size}"
            )
        self.C = C
        self.ridge_alpha = ridge_alpha
        self.temperature = temperature
        self.text_batch_size = text_batch_size
        self.max_iter = max_iter
        self.classifier = None
        self.text_regressor = None
        self.seed = 0

    def _standardise(self, features: np.ndarray, name: str) -> np.ndarray:
        if features.shape[1] != self.mean_.size:
            raise ValueError(f"{name}: feature size {features.shape[1]} != probe's {self.mean_.size}")
        return standardize(features, self.mean_, self.scale_)

    def fit(self, features: Any, labels: Any, text_codes: Any = None, seed: int = 0) -> MIProbe:
        """Fit ``Q_y`` (and ``Q_t`` when ``text_codes`` are given) on real features (N, D)."""
        from sklearn.linear_model import LogisticRegression, Ridge

        x = _as_matrix(features, "features")
        y = _as_labels(labels, "labels", x.shape[0])
        if np.unique(y).size < 2:
            raise ValueError("labels: the probe needs at least two classes in the real data")
        self.seed = seed
        self.mean_, self.scale_ = feature_statistics(x)
        z = self._standardise(x, "features")
        self.classifier = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=seed).fit(z, y)
        self.text_regressor = None
        if text_codes is not None:
            t = _as_matrix(text_codes, "text_codes")
            if t.shape[0] != x.shape[0]:
                raise ValueError(f"text_codes: {t.shape[0]} rows != {x.shape[0]} feature rows")
            self.text_regressor = Ridge(alpha=self.ridge_alpha).fit(z, t)
        return self

    def _text_bound(self, z: np.ndarray, t: np.ndarray) -> float | None:
        n = z.shape[0]
        if n < 2:
            return None
        predicted = torch.from_numpy(self.text_regressor.predict(z))
        codes = torch.from_numpy(t)
        if predicted.shape != codes.shape:
            raise ValueError(
                f"text_codes: shape {tuple(codes.shape)} != probe's output {tuple(predicted.shape)}"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        size = min(self.text_batch_size, n)
        # full batches only (drop_last), so every batch has the same log B ceiling
        bounds = [
            float(text_mi_lower_bound(codes[idx], predicted[idx], self.temperature))
            for idx in order[: n - n % size].split(size)
        ]
        return float(np.mean(bounds))

    def score(self, features: Any, labels: Any, text_codes: Any = None) -> dict:
        """Both MI lower bounds (nats) of a feature set: ``{"mi_emotion_nats", "mi_text_nats"}``.

        ``mi_text_nats`` is None without ``text_codes`` or a probe fitted without them.
        """
        if self.classifier is None:
            raise ValueError("MIProbe: call fit() on real features before score()")
        x = _as_matrix(features, "features")
        y = _as_labels(labels, "labels", x.shape[0])
        z = self._standardise(x, "features")
        classes = self.classifier.classes_
        unknown = np.setdiff1d(np.unique(y), classes)
        if unknown.size:
            raise ValueError(f"labels: class id {int(unknown[0])} was not in the probe's real training data")
        index = np.searchsorted(classes, y)
        log_probs = torch.from_numpy(self.classifier.predict_log_proba(z))  # (N, C_fit), used as logits
        mi_emotion = float(emotion_mi_lower_bound(log_probs, torch.from_numpy(index)))
        mi_text = None
        if text_codes is not None and self.text_regressor is not None:
            mi_text = self._text_bound(z, _as_matrix(text_codes, "text_codes"))
        return {"mi_emotion_nats": mi_emotion, "mi_text_nats": mi_text}


def _id2label(config: Any) -> dict[int, str]:
    mapping = getattr(config, "id2label", None)
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError("generator_model.config.id2label: missing or empty")
    return {int(i): str(name) for i, name in sorted(mapping.items(), key=lambda item: int(item[0]))}


def _sample_text_codes(
    codes: np.ndarray, real_labels: np.ndarray, labels: np.ndarray, seed: int
) -> np.ndarray:
    """One real text code of the same class per generated label; all-NaN (the null code) when none."""
    rng = np.random.default_rng(seed)
    out = np.full((labels.size, codes.shape[1]), np.nan)
    for c in np.unique(labels):
        pool = np.flatnonzero(real_labels == c)
        rows = np.flatnonzero(labels == c)
        if pool.size:
            out[rows] = codes[rng.choice(pool, size=rows.size)]
    return out


def _pair_metrics(real: np.ndarray, generated: np.ndarray, k: int) -> dict:
    fd = frechet_distance(real, generated) if min(len(real), len(generated)) >= 2 else None
    precision = recall = None
    if min(len(real), len(generated)) > k:
        precision, recall = knn_precision_recall(real, generated, k)
    return {"frechet_distance": fd, "precision": precision, "recall": recall}


def _generate(
    generator_model: Any, wanted: np.ndarray, wanted_codes: np.ndarray | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels the generator makes for the `wanted` labels (and text codes), in eval mode."""
    device = getattr(generator_model, "device", torch.device("cpu"))
    was_training = bool(getattr(generator_model, "training", False))
    if hasattr(generator_model, "eval"):
        generator_model.eval()
    try:
        with torch.no_grad():
            output = generator_model.generate(
                labels=torch.as_tensor(wanted, dtype=torch.long, device=device),
                text_codes=None
                if wanted_codes is None
                else torch.as_tensor(wanted_codes, dtype=torch.float32, device=device),
                generator=torch.Generator().manual_seed(seed),
            )
    finally:
        if was_training:
            generator_model.train()
    generated = _as_matrix(output.features, "generated features")
    return generated, _as_labels(output.labels, "generated labels", generated.shape[0])


def generation_quality(
    generator_model: Any,
    real_features: Any,
    real_labels: Any,
    real_text_codes: Any = None,
    num_per_label: int | None = None,
    seed: int = 0,
    probe: MIProbe | None = None,
    k: int = 5,
) -> dict:
    """Generate labelled features and score them against real ones.

    Uses only ``generator_model.generate(labels=LongTensor, text_codes=Tensor | None, generator=...)``
    (returning ``.features`` (N, d) and ``.labels`` (N,)) and ``generator_model.config.id2label``.
    With ``num_per_label=None`` one sample is generated per real item, with its label and text code;
    otherwise ``num_per_label`` per class, each with the text code of a random real item of that class
    (the null code, an all-NaN row, for a class without real items). The MI ``probe`` is fitted on the real
    data when not given. Per-class entries are None where a class has too few samples (2 for the Fréchet
    distance, ``k + 1`` for precision/recall).

    Returns ``{"mi_emotion_nats", "mi_text_nats", "frechet_distance", "precision", "recall", "num_real",
    "num_generated", "per_class": {label_name: {"frechet_distance", "precision", "recall"}}}``.
    """
    id2label = _id2label(generator_model.config)
    real = _as_matrix(real_features, "real_features")
    labels = _as_labels(real_labels, "real_labels", real.shape[0])
    if labels.max() >= len(id2label):
        raise ValueError(f"real_labels: class id {int(labels.max())} has no name in config.id2label")
    codes = None
    if real_text_codes is not None:
        codes = _as_matrix(real_text_codes, "real_text_codes")
        if codes.shape[0] != real.shape[0]:
            raise ValueError(f"real_text_codes: {codes.shape[0]} rows != {real.shape[0]} real_features rows")

    if num_per_label is None:
        wanted, wanted_codes = labels, codes
    else:
        if num_per_label < 1:
            raise ValueError(f"num_per_label: must be >= 1, got {num_per_label}")
        wanted = np.repeat(np.array(sorted(id2label), dtype=np.int64), num_per_label)
        wanted_codes = None if codes is None else _sample_text_codes(codes, labels, wanted, seed)

    generated, generated_labels = _generate(generator_model, wanted, wanted_codes, seed)
    if generated.shape[1] != real.shape[1]:
        raise ValueError(
            f"generated features: size {generated.shape[1]} != real feature size {real.shape[1]}"
        )

    if probe is None:
        probe = MIProbe().fit(real, labels, codes, seed=seed)
    # the probe can only score classes it saw in the real data
    known = np.isin(generated_labels, probe.classifier.classes_)
    if not known.any():
        raise ValueError("generated labels: none of the generated classes occurs in the real data")
    mi = probe.score(generated[known], generated_labels[known])
    if wanted_codes is not None and generated_labels.shape == wanted.shape:
        keep = known & np.isfinite(wanted_codes).all(axis=1)
        if keep.sum() >= 2:
            scored = probe.score(generated[keep], generated_labels[keep], wanted_codes[keep])
            mi["mi_text_nats"] = scored["mi_text_nats"]

    result = {**mi, **_pair_metrics(real, generated, k)}
    result.update(num_real=int(real.shape[0]), num_generated=int(generated.shape[0]))
    result["per_class"] = {
        name: _pair_metrics(real[labels == c], generated[generated_labels == c], k)
        for c, name in id2label.items()
    }
    return result
