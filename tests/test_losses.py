"""Losses and MI bounds against values worked out by hand on tiny inputs."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from scipy import stats

from modeling_mise.losses import (
    emotion_mi_lower_bound,
    info_nce,
    soft_cross_entropy,
    symmetric_info_nce,
    text_mi_lower_bound,
)
from training.aligner import drop_text_codes
from training.engine import mixup, sample_beta
from training.infogan import discriminator_loss, generator_adversarial_loss, generator_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# q = [[2, 0], [0, 1]], k = [[1, 1], [0, 3]]: dot products q_i.k_j = [[2, 0], [1, 3]]
Q = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
K = torch.tensor([[1.0, 1.0], [0.0, 3.0]])


def test_info_nce_dot_product_by_hand():
    # tau = 0.5 -> logits [[4, 0], [2, 6]]; row i loss = log(1 + exp(l_ij - l_ii)), j != i
    row0 = math.log(1 + math.exp(0 - 4))
    row1 = math.log(1 + math.exp(2 - 6))
    assert info_nce(Q, K, 0.5, normalize=False).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_info_nce_cosine_by_hand():
    # normalised: q = [[1, 0], [0, 1]], k = [[1, 1]/sqrt2, [0, 1]] -> cos = [[1/sqrt2, 0], [1/sqrt2, 1]]
    tau = 0.1
    s = 1 / math.sqrt(2)
    row0 = math.log(1 + math.exp((0 - s) / tau))
    row1 = math.log(1 + math.exp((s - 1) / tau))
    assert info_nce(Q, K, tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # scaling the inputs does not change a cosine InfoNCE
    assert info_nce(3 * Q, 0.5 * K, tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_symmetric_info_nce_by_hand():
    # reverse direction: logits = (k q^T) / 0.5 = [[4, 2], [0, 6]]
    forward = (math.log(1 + math.exp(-4)) + math.log(1 + math.exp(-4))) / 2
    backward = (math.log(1 + math.exp(2 - 4)) + math.log(1 + math.exp(0 - 6))) / 2
    value = symmetric_info_nce(Q, K, 0.5, normalize=False).item()
    assert value == pytest.approx((forward + backward) / 2, rel=1e-5)


def test_info_nce_gradients_reach_inputs_and_learned_temperature():
    q = Q.clone().requires_grad_(True)
    k = K.clone().requires_grad_(True)
    log_tau = torch.tensor(math.log(0.07), requires_grad=True)
    symmetric_info_nce(q, k, log_tau.exp()).backward()
    for tensor in (q, k, log_tau):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_info_nce_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        info_nce(torch.zeros(2, 3), torch.zeros(3, 3), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(Q, K, 0.0)


def test_soft_cross_entropy_by_hand():
    # logits [0, log 3] -> softmax [1/4, 3/4]; target [1/2, 1/2] -> -(log(1/4) + log(3/4)) / 2
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    targets = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    row0 = -(math.log(0.25) + math.log(0.75)) / 2
    row1 = math.log(2.0)
    assert soft_cross_entropy(logits, targets).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # with one-hot targets it is the ordinary cross-entropy
    hard = torch.tensor([1, 0])
    one_hot = torch.nn.functional.one_hot(hard, 2).float()
    assert soft_cross_entropy(logits, one_hot).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, hard).item(), rel=1e-5
    )


def test_discriminator_and_generator_losses_by_hand():
    real = torch.tensor([0.0, 2.0])
    fake = torch.tensor([-1.0, 0.0])
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x)
    expected_d = (softplus(0.0) + softplus(-2.0)) / 2 + (softplus(-1.0) + softplus(0.0)) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-5)
    expected_g = (softplus(1.0) + softplus(0.0)) / 2
    assert generator_adversarial_loss(fake).item() == pytest.approx(expected_g, rel=1e-5)
    fake_param = fake.clone().requires_grad_(True)
    generator_adversarial_loss(fake_param).backward()
    # non-saturating: d/dx softplus(-x) / 2 = -sigmoid(-x) / 2, large even where D is confident
    expected_grad = torch.tensor([-1 / (1 + math.exp(-1.0)) / 2, -0.25])
    assert torch.allclose(fake_param.grad, expected_grad, atol=1e-6)


def _tiny_generator(**kwargs):
    from modeling_mise import MiseGeneratorConfig, MiseGeneratorModel

    config = MiseGeneratorConfig(
        feature_dim=8, text_code_dim=8, noise_dim=4, hidden_sizes=[16], discriminator_hidden_sizes=[16, 16],
        id2label={0: "a", 1: "b", 2: "c"}, **kwargs,
    )  # fmt: skip
    return MiseGeneratorModel(config)


def test_generator_loss_is_adversarial_plus_weighted_mi_terms():
    torch.manual_seed(0)
    model = _tiny_generator(lambda_y=2.0, lambda_t=0.5, text_code_dropout=0.0).eval()  # no dropout
    labels = torch.tensor([0, 1, 2, 1])
    codes = torch.randn(4, 8)
    codes[2] = float("nan")  # no transcript: left out of the text term
    noise = model.sample_noise(4, generator=torch.Generator().manual_seed(1))
    out = model(labels=labels, text_codes=codes, noise=noise)
    present = torch.tensor([True, True, False, True])
    expected = (
        generator_adversarial_loss(out.adversarial_logits)
        + 2.0 * torch.nn.functional.cross_entropy(out.emotion_logits, labels)
        + 0.5 * info_nce(codes[present], out.text_code_pred[present], model.config.tau)
    )
    loss = generator_loss(model, labels, codes, noise)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.generator_parameters() if p.grad is not None)
    # fewer than two rows with a text code: no text term
    few = torch.full_like(codes, float("nan"))
    few[0] = codes[0]
    heads = model(labels=labels, text_codes=few, noise=noise)
    expected_few = generator_adversarial_loss(
        heads.adversarial_logits
    ) + 2.0 * torch.nn.functional.cross_entropy(heads.emotion_logits, labels)
    assert torch.allclose(generator_loss(model, labels, few, noise), expected_few)


def test_text_code_dropout_replaces_a_fraction_of_rows_by_the_null_code():
    codes = torch.randn(4000, 3)
    dropped = drop_text_codes(codes, 0.25, torch.Generator().manual_seed(0))
    null = torch.isnan(dropped).all(dim=1)
    assert torch.isnan(dropped).any(dim=1).equal(null)  # whole rows
    assert 0.22 < float(null.float().mean()) < 0.28
    assert torch.equal(dropped[~null], codes[~null])
    assert drop_text_codes(codes, 0.0) is codes and drop_text_codes(None, 0.5) is None


def test_emotion_mi_perfect_q_balanced_four_classes_is_log4():
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    q_logits = 50.0 * torch.nn.functional.one_hot(labels, 4).float()
    assert emotion_mi_lower_bound(q_logits, labels).item() == pytest.approx(math.log(4), abs=1e-6)


def test_emotion_mi_uninformative_q_is_zero_and_imbalanced_by_hand():
    labels = torch.tensor([0, 0, 0, 1])
    # uniform Q: CE = log 2; H(y) with prior (3/4, 1/4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    value = emotion_mi_lower_bound(torch.zeros(4, 2), labels).item()
    assert value == pytest.approx(entropy - math.log(2), rel=1e-5)
    # Q equal to the prior: CE = H(y), bound 0
    prior_logits = torch.log(torch.tensor([[0.75, 0.25]])).repeat(4, 1)
    assert emotion_mi_lower_bound(prior_logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    # an explicit prior: uniform over 2 classes -> H = log 2
    uniform = torch.tensor([0.5, 0.5])
    assert emotion_mi_lower_bound(torch.zeros(4, 2), labels, prior=uniform).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_emotion_mi_gradient_flows_into_q_logits():
    labels = torch.tensor([0, 1])
    logits = torch.zeros(2, 2, requires_grad=True)
    emotion_mi_lower_bound(logits, labels).backward()
    # d(-CE)/dlogit = (onehot - softmax) / N = +-1/4
    assert torch.allclose(logits.grad, torch.tensor([[0.25, -0.25], [-0.25, 0.25]]))
    with pytest.raises(ValueError, match="labels"):
        emotion_mi_lower_bound(torch.zeros(2, 2), torch.tensor([0, 2]))


def test_text_mi_lower_bound_perfect_and_by_hand():
    codes = torch.eye(4)
    # perfect alignment: InfoNCE = log(1 + 3 exp(-1/tau)) -> bound close to log 4
    expected = math.log(4) - math.log(1 + 3 * math.exp(-1 / 0.07))
    assert text_mi_lower_bound(codes, codes.clone()).item() == pytest.approx(expected, rel=1e-5)
    assert text_mi_lower_bound(codes, codes.clone()).item() == pytest.approx(math.log(4), abs=1e-5)
    # 2 x 2 by hand with tau = 1, codes = I as queries, pred = K normalised = [[1, 1]/sqrt2, [0, 1]] as keys:
    # cos(code_i, pred_j) = [[1/sqrt2, 0], [1/sqrt2, 1]] -> row 0: log(1 + e^(0 - 1/sqrt2)), row 1: log(1 + e^(1/sqrt2 - 1))
    r = 1 / math.sqrt(2)
    nce = (math.log(1 + math.exp(-r)) + math.log(1 + math.exp(r - 1))) / 2
    value = text_mi_lower_bound(torch.eye(2), K, temperature=1.0).item()
    assert value == pytest.approx(math.log(2) - nce, rel=1e-5)


def test_text_mi_gradient_reaches_predicted_codes_only():
    codes = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    predicted = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    text_mi_lower_bound(codes, predicted).backward()
    assert predicted.grad is not None and predicted.grad.abs().sum() > 0
    assert codes.grad is None


def test_mixup_matches_its_definition():
    features = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    mixed, soft = mixup(features, labels, num_labels=4, alpha=0.4, generator=torch.Generator().manual_seed(3))
    assert mixed.shape == (4, 2) and soft.shape == (4, 4)
    assert torch.allclose(soft.sum(dim=1), torch.ones(4))
    # with distinct one-hot labels, row i of the soft labels is lam e_i + (1 - lam) e_perm(i): recover both
    diagonal = soft.diagonal()
    assert diagonal.min() < 1  # this seed's permutation moves some rows
    lam = diagonal.min().item()
    perm = []
    for i in range(4):
        rest = soft[i].clone()
        rest[i] -= lam
        perm.append(int(rest.argmax()) if rest.max() > 1e-6 else i)
    assert sorted(perm) == [0, 1, 2, 3]
    expected = lam * features.detach() + (1 - lam) * features.detach()[perm]
    assert torch.allclose(mixed.detach(), expected, atol=1e-6)
    mixed.sum().backward()
    assert torch.allclose(features.grad, torch.ones(4, 2))  # lam + (1 - lam) per row, perm is a bijection


def test_mixup_is_reproducible_and_alpha_zero_is_identity():
    features = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    first = mixup(features, labels, 3, 1.0, torch.Generator().manual_seed(7))
    second = mixup(features, labels, 3, 1.0, torch.Generator().manual_seed(7))
    other = mixup(features, labels, 3, 1.0, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])
    same, soft = mixup(features, labels, 3, 0.0, torch.Generator().manual_seed(7))
    assert torch.equal(same, features)
    assert torch.equal(soft, torch.nn.functional.one_hot(labels, 3).float())
    # soft labels in, mixed soft labels out; rows still sum to 1
    _, mixed_soft = mixup(features, soft, 3, 0.5, torch.Generator().manual_seed(1))
    assert torch.allclose(mixed_soft.sum(dim=1), torch.ones(8))
    with pytest.raises(ValueError, match="labels"):
        mixup(features, torch.tensor([0, 1, 5, 0, 1, 2, 0, 1]), 3, 1.0)


@pytest.mark.parametrize("alpha", [0.2, 0.4, 2.0])
def test_sample_beta_follows_beta_distribution(alpha: float):
    generator = torch.Generator().manual_seed(0)
    draws = [sample_beta(alpha, generator) for _ in range(1500)]
    assert all(0.0 <= d <= 1.0 for d in draws)
    assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_losses_module_imports_only_torch_math_typing():
    """Modeling files copy losses.py next to saved weights (trust_remote_code): no package imports allowed."""
    source = Path(__file__).resolve().parents[1] / "modeling_mise" / "losses.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in losses.py"
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "math", "typing", "torch"}, imported
