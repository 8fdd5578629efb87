"""Quality metrics of generated features: closed forms, hand-worked k-NN balls, and known Gaussian sources."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import linalg

from mise.quality import (
    MIProbe,
    frechet_distance,
    gaussian_frechet_distance,
    generation_quality,
    knn_precision_recall,
)

NUM_CLASSES = 4
FEATURE_DIM = 8
CODE_DIM = 4
ID2LABEL = {0: "neutral", 1: "happy", 2: "sad", 3: "angry"}


@dataclass
class Generated:
    features: torch.Tensor
    labels: torch.Tensor


class GaussianSource:
    """A distribution with a known form: ``x = means[y] + shift + mixing @ t + N(0, I)``.

    ``shuffle_labels`` draws each feature for a random other label (labels no longer inform the features);
    ``ignore_text`` replaces the given text codes by fresh random ones (text no longer informs them).
    """

    def __init__(self, shift: float = 0.0, shuffle_labels: bool = False, ignore_text: bool = False) -> None:
        parameters = torch.Generator().manual_seed(1234)
        self.means = 5.0 * torch.randn(NUM_CLASSES, FEATURE_DIM, generator=parameters)
        self.mixing = torch.randn(FEATURE_DIM, CODE_DIM, generator=parameters)
        self.shift = shift
        self.shuffle_labels = shuffle_labels
        self.ignore_text = ignore_text
        self.config = SimpleNamespace(id2label=dict(ID2LABEL))

    def generate(
        self,
        labels: torch.Tensor,
        text_codes: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Generated:
        n = labels.shape[0]
        drawn = labels[torch.randperm(n, generator=generator)] if self.shuffle_labels else labels
        if text_codes is None or self.ignore_text:
            text_codes = torch.randn(n, CODE_DIM, generator=generator)
        noise = torch.randn(n, FEATURE_DIM, generator=generator)
        features = self.means[drawn] + self.shift + text_codes @ self.mixing.T + noise
        return Generated(features=features, labels=labels.clone())


@pytest.fixture(scope="module")
def real_set() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """400 'real' items from the source: 100 per class, with their text codes."""
    generator = torch.Generator().manual_seed(99)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(100)
    codes = torch.randn(labels.shape[0], CODE_DIM, generator=generator)
    features = GaussianSource().generate(labels, codes, generator).features
    return features, labels, codes


def test_frechet_distance_1d_hand_example_and_closed_form():
    # x = [0, 2]: mean 1, sample var 2; y = [1, 1, 4]: mean 2, sample var (1 + 1 + 4) / 2 = 3
    assert frechet_distance([0.0, 2.0], [1.0, 1.0, 4.0]) == pytest.approx(
        1 + (math.sqrt(2) - math.sqrt(3)) ** 2
    )
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=5000)
    y = rng.normal(-0.5, 0.5, size=5000)
    # exact for the fitted 1-D Gaussians: (mu1 - mu2)^2 + (s1 - s2)^2
    exact = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert frechet_distance(x[:, None], y[:, None]) == pytest.approx(exact, rel=1e-8)
    # and close to the population value (1.5^2 + 1.5^2)
    assert frechet_distance(x, y) == pytest.approx(4.5, abs=0.2)


def test_gaussian_frechet_distance_diagonal_singular_and_full():
    # diagonal: |mu diff|^2 + sum (sqrt a_i - sqrt b_i)^2 = (1 + 4) + (1 - 2)^2 + 0 + (3 - 1)^2 = 10
    value = gaussian_frechet_distance(
        np.zeros(3), np.diag([1.0, 4.0, 9.0]), np.array([1.0, 2.0, 0.0]), np.diag([4.0, 4.0, 1.0])
    )
    assert value == pytest.approx(10.0)
    # singular covariances: only the first axis varies, (1 - 2)^2 = 1
    assert gaussian_frechet_distance(
        np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2), np.diag([4.0, 0.0])
    ) == pytest.approx(1.0, abs=1e-4)
    # full covariances against tr (s1 s2)^(1/2) = sum sqrt(eig(s1^(1/2) s2 s1^(1/2))), computed with eigh
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T, b @ b.T
    w, v = np.linalg.eigh(s1)
    root = v @ np.diag(np.sqrt(w)) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross
    assert gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert np.allclose(linalg.sqrtm(root @ root), root)  # the reference root is a real square root


def test_frechet_distance_more_dims_than_samples_is_finite():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 64))
    y = rng.normal(size=(20, 64)) + 1.0
    value = frechet_distance(x, y)
    assert np.isfinite(value) and value > 64 * 0.5  # the mean shift alone contributes 64
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(x, y[:, :3])
    with pytest.raises(ValueError, match="generated: row 1 has non-finite values"):
        frechet_distance(x, np.vstack([y[:1], np.full((1, 64), np.nan)]))


def test_knn_precision_recall_hand_examples():
    real = np.array([0.0, 1.0, 2.0, 10.0])
    # k = 1 radii of real: 0 -> 1, 1 -> 1, 2 -> 1, 10 -> 8
    # generated [0.5, 5, 20]: 0.5 in ball(0), 5 in ball(10) (5 <= 8), 20 outside (10 > 8) -> precision 2/3
    # generated radii 4.5, 4.5, 15: every real point is covered (10 by ball(20)) -> recall 1
    assert knn_precision_recall(real, np.array([0.5, 5.0, 20.0]), k=1) == pytest.approx((2 / 3, 1.0))
    # generated [0.5, 1.5, 2.5] (radii 1): all inside real balls; real 10 is 7.5 from the nearest -> 3/4
    assert knn_precision_recall(real, np.array([0.5, 1.5, 2.5]), k=1) == pytest.approx((1.0, 0.75))
    with pytest.raises(ValueError, match="k: need"):
        knn_precision_recall(real, np.array([0.5, 1.5, 2.5]), k=3)


def test_mi_probe_on_real_data(real_set):
    features, labels, codes = real_set
    probe = MIProbe().fit(features, labels, codes)
    scores = probe.score(features, labels, codes)
    assert 0.95 * math.log(NUM_CLASSES) < scores["mi_emotion_nats"] <= math.log(NUM_CLASSES)
    assert 1.0 < scores["mi_text_nats"] <= math.log(256)
    assert MIProbe().fit(features, labels).score(features, labels, codes)["mi_text_nats"] is None
    with pytest.raises(ValueError, match="call fit"):
        MIProbe().score(features, labels)


def test_generation_quality_same_distribution(real_set):
    features, labels, codes = real_set
    result = generation_quality(GaussianSource(), features, labels, codes, seed=0)
    assert result["num_real"] == result["num_generated"] == 400
    assert (
        result["frechet_distance"] < 1.0
    )  # against a spread of ~100 across classes (see the shifted source)
    assert result["precision"] > 0.85 and result["recall"] > 0.85
    assert result["mi_emotion_nats"] > 0.95 * math.log(NUM_CLASSES)
    assert result["mi_text_nats"] > 1.0
    assert set(result["per_class"]) == set(ID2LABEL.values())
    for entry in result["per_class"].values():
        assert entry["frechet_distance"] < 3.0 and entry["precision"] > 0.7 and entry["recall"] > 0.7
    # reproducible for a seed
    again = generation_quality(GaussianSource(), features, labels, codes, seed=0)
    assert again["frechet_distance"] == result["frechet_distance"]


def test_generation_quality_shifted_shuffled_and_textless_sources(real_set):
    features, labels, codes = real_set
    probe = MIProbe().fit(features, labels, codes)
    shifted = generation_quality(GaussianSource(shift=5.0), features, labels, codes, probe=probe)
    assert shifted["frechet_distance"] > 150.0  # the shift alone contributes 8 * 5^2 = 200
    assert shifted["precision"] < 0.05 and shifted["recall"] < 0.05

    shuffled = generation_quality(GaussianSource(shuffle_labels=True), features, labels, codes, probe=probe)
    # labels carry no information about the features: the bound drops to 0 or below (uninformative)
    assert shuffled["mi_emotion_nats"] < 0.1
    # the classes are balanced, so the marginal still matches; per class it does not
    assert shuffled["frechet_distance"] < 1.0
    assert min(entry["frechet_distance"] for entry in shuffled["per_class"].values()) > 10.0

    textless = generation_quality(GaussianSource(ignore_text=True), features, labels, codes, probe=probe)
    assert textless["mi_text_nats"] < 0.3
    assert textless["mi_emotion_nats"] > 0.9 * math.log(NUM_CLASSES)


def test_generation_quality_num_per_label_and_small_classes(real_set):
    features, labels, codes = real_set
    result = generation_quality(GaussianSource(), features, labels, codes, num_per_label=50, seed=1)
    assert result["num_generated"] == 50 * NUM_CLASSES
    assert result["mi_emotion_nats"] > 0.95 * math.log(NUM_CLASSES)
    assert result["mi_text_nats"] > 1.0  # sampled real text codes of the same class condition the source
    without_text = generation_quality(GaussianSource(), features, labels, None, num_per_label=50, seed=1)
    assert without_text["mi_text_nats"] is None
    tiny = generation_quality(GaussianSource(), features, labels, codes, num_per_label=3, k=5)
    assert (
        tiny["per_class"]["sad"]["precision"] is None
        and tiny["per_class"]["sad"]["frechet_distance"] is not None
    )
    with pytest.raises(ValueError, match="real_text_codes: 3 rows"):
        generation_quality(GaussianSource(), features, labels, codes[:3])
