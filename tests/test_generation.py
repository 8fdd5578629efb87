"""Stage 2's stabilisers of the adversarial game (spectral normalisation of D, the R1 penalty, annealed instance
noise, several D steps per G step, G's mode-seeking term) and its checkpoint criteria (MI, MI under a recall
floor, the stage-3 validation score): each test fails when its piece is taken out."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import development_folds
from torch.nn import functional as F

import training.classifier as classifier_module
from mise.folds import Fold
from mise.quality import knn_precision_recall
from modeling_mise import MiseAlignerModel, MiseGeneratorConfig, MiseGeneratorModel
from modeling_mise.modeling_generator import SpectralLinear
from training.aligner import drop_text_codes, encode_audio
from training.arguments import (
    ConfigError,
    DataArguments,
    MiseTrainingArguments,
    ModelArguments,
    _hashed,
    arguments_dict,
    config_hash,
    parse_arguments,
)
from training.classifier import predict
from training.engine import Batches, LoopState
from training.fold import FoldData, FoldTrainer, Generated, Variant
from training.infogan import (
    RECALL_FLOOR_PENALTY,
    InfoGANStep,
    InfoGANTraining,
    discriminator_loss,
    generator_config,
    mode_seeking_loss,
    r1_penalty,
    recall_floor_score,
    train_generator,
    with_instance_noise,
)
from training.study_unit import FoldUnit, Study, StudyRuntime
from training.study_variants import VARIANTS, StudyArguments

CLASSES = 4


def clustered(n: int = 96, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit-norm features in one cluster per class, their labels and unit-norm text codes."""
    rng = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat(n // CLASSES)
    centres = torch.randn(CLASSES, dim, generator=rng)
    features = F.normalize(centres[labels] + 0.4 * torch.randn(n, dim, generator=rng), dim=1)
    codes = F.normalize(torch.randn(n, 8, generator=rng), dim=1)
    return features, labels, codes


def tiny_config(**kwargs) -> MiseGeneratorConfig:
    values = dict(feature_dim=16, text_code_dim=8, noise_dim=4, hidden_sizes=[16], num_labels=CLASSES)
    values.setdefault("discriminator_hidden_sizes", [16, 16])
    return MiseGeneratorConfig(**{**values, **kwargs})


def runtime() -> StudyRuntime:
    return StudyRuntime(Accelerator(cpu=True))


def arguments(**kwargs) -> MiseTrainingArguments:
    values = dict(
        output_dir="unused", generator_epochs=6, generator_eval_every=1, generator_batch_size=32,
        early_stopping_patience=0,
    )  # fmt: skip
    return MiseTrainingArguments(**{**values, **kwargs})


# ---------------------------------------------------------------------------------------------- spectral norm
def test_spectral_linear_divides_the_weight_by_its_largest_singular_value():
    torch.manual_seed(0)
    layer = SpectralLinear(6, 5)
    x = torch.randn(7, 6)
    for _ in range(50):  # power iterations, one per training forward pass
        layer(x)
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), 2)
    assert layer.spectral_norm().item() == pytest.approx(sigma.item(), rel=1e-4)
    assert torch.allclose(layer(x), F.linear(x, layer.weight / sigma, layer.bias), atol=1e-5)
    layer.eval()
    u = layer.u.clone()
    layer(x)
    assert torch.equal(layer.u, u)  # outside training the estimate is kept


def test_a_spectrally_normalised_critic_is_1_lipschitz_and_saved_with_its_estimate(tmp_path):
    torch.manual_seed(0)
    model = MiseGeneratorModel(tiny_config(discriminator_spectral_norm=True, discriminator_dropout=0.0))
    spectral = [m for m in model.modules() if isinstance(m, SpectralLinear)]
    assert spectral == [model.discriminator[0], model.discriminator[2], model.adversarial_head]
    assert not any(isinstance(m, SpectralLinear) for m in MiseGeneratorModel(tiny_config()).modules())
    with torch.no_grad():  # make D far from 1-Lipschitz, so the normalisation has work to do
        for layer in spectral:
            layer.weight.mul_(10.0)
    x, y = torch.randn(64, 16), torch.randn(64, 16)
    for _ in range(100):
        model.discriminate(x)
    model.eval()
    gap = (model.discriminate(x).adversarial_logits - model.discriminate(y).adversarial_logits).abs()
    assert bool((gap <= (x - y).norm(dim=1) * (1 + 1e-3)).all())
    model.save_pretrained(tmp_path)
    loaded = MiseGeneratorModel.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.adversarial_head.u, model.adversarial_head.u)
    assert torch.allclose(loaded.discriminate(x).adversarial_logits, model.discriminate(x).adversarial_logits)


def test_spectral_norm_flag_reaches_the_generator_config():
    model_args = ModelArguments(discriminator_spectral_norm=True)
    assert generator_config(model_args, 16, 8, {0: "a", 1: "b"}).discriminator_spectral_norm
    assert not generator_config(ModelArguments(), 16, 8, {0: "a", 1: "b"}).discriminator_spectral_norm


# ---------------------------------------------------------------------------------------------- R1
def test_r1_penalty_of_a_linear_critic_is_half_its_squared_weight():
    weight = torch.tensor([3.0, -4.0])
    rows = torch.randn(5, 2, requires_grad=True)
    logits = rows @ weight + 1.0
    assert r1_penalty(logits, rows).item() == pytest.approx(0.5 * 25.0)


def _d_loss(model: MiseGeneratorModel, real, labels, codes, **stabilisers) -> torch.Tensor:
    step = InfoGANStep(model, **stabilisers)
    return step("discriminator", real, labels, codes, generator=torch.Generator().manual_seed(5))


def test_the_discriminator_loss_adds_gamma_times_r1_on_real_rows():
    features, labels, codes = clustered(32)
    torch.manual_seed(0)
    model = MiseGeneratorModel(tiny_config(discriminator_dropout=0.0))
    plain = _d_loss(model, features, labels, codes)
    with_r1 = _d_loss(model, features, labels, codes, r1_gamma=2.0)
    real = features.clone().requires_grad_(True)
    gradient = torch.autograd.grad(model.discriminate(real).adversarial_logits.sum(), real)[0]
    expected = 2.0 * 0.5 * gradient.pow(2).sum(dim=1).mean()
    assert (with_r1 - plain).item() == pytest.approx(expected.item(), rel=1e-4) and expected > 0
    with_r1.backward()  # the penalty trains D
    assert all(p.grad is not None for p in model.discriminator.parameters())


# ---------------------------------------------------------------------------------------------- instance noise
def test_instance_noise_has_its_std_and_zero_is_the_identity():
    rows = torch.zeros(20000, 4)
    noisy = with_instance_noise(rows, 0.05, torch.Generator().manual_seed(0))
    assert noisy.std().item() == pytest.approx(0.05, rel=0.02) and abs(noisy.mean().item()) < 1e-3
    assert with_instance_noise(rows, 0.0, None) is rows


def _inputs_of_d(model: MiseGeneratorModel) -> list[torch.Tensor]:
    """What D's trunk is given, recorded by a forward pre-hook."""
    seen: list[torch.Tensor] = []
    model.discriminator.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    return seen


def test_d_sees_real_and_generated_rows_with_instance_noise():
    features, labels, codes = clustered(64)
    torch.manual_seed(0)
    model = MiseGeneratorModel(tiny_config(discriminator_dropout=0.0, text_code_dropout=0.0))
    seen = _inputs_of_d(model)
    _d_loss(model, features, labels, codes, instance_noise_std=0.3)
    assert (seen[-1][:64] - features).std().item() == pytest.approx(0.3, rel=0.1)  # the real rows
    generated = []
    model.generator.register_forward_hook(lambda module, args, output: generated.append(output.detach()))
    step = InfoGANStep(model, instance_noise_std=0.3)
    step("generator", features, labels, codes, generator=torch.Generator().manual_seed(1))
    assert (seen[-1] - F.normalize(generated[-1], dim=-1)).std().item() == pytest.approx(0.3, rel=0.1)
    step.instance_noise_std = 0.0
    step("generator", features, labels, codes, generator=torch.Generator().manual_seed(1))
    assert torch.equal(seen[-1], F.normalize(generated[-1], dim=-1))


def test_instance_noise_anneals_linearly_to_zero_over_the_stage():
    features, labels, codes = clustered()
    run = InfoGANTraining(
        runtime(), tiny_config(), arguments(instance_noise_std=0.2, generator_epochs=4),
        (features[:64], labels[:64], codes[:64]), (features[64:], labels[64:], codes[64:]), seed=0,
    )  # fmt: skip
    stds = []
    for epoch in range(4):
        run.train_epoch(epoch, _loop_state(), torch.Generator().manual_seed(epoch))
        stds.append(run.step_module.instance_noise_std)
    assert stds == pytest.approx([0.2, 0.15, 0.1, 0.05])


def _loop_state() -> LoopState:
    return LoopState()


def test_on_a_small_corpus_the_generator_still_takes_min_batches_steps_an_epoch():
    """Fewer training rows than one batch: stage 2's batches shrink so that G takes `generator_min_batches` steps
    an epoch, at most one per row (with one step an epoch, G ended a corpus of ~150 clips untrained)."""
    features, labels, codes = clustered()
    train, val = (features[:64], labels[:64], codes[:64]), (features[64:], labels[64:], codes[64:])
    for min_batches, steps in ((3, 3), (1, 1), (100, 64)):
        args = arguments(generator_batch_size=128, generator_min_batches=min_batches)
        run = InfoGANTraining(runtime(), tiny_config(), args, train, val, seed=0)
        state = _loop_state()
        run.train_epoch(0, state, torch.Generator().manual_seed(0))
        assert state.step == steps
    assert MiseTrainingArguments(output_dir="unused").generator_min_batches == 3  # the shipped method's value
    with pytest.raises(ConfigError, match="generator_min_batches: must be > 0"):
        arguments(generator_min_batches=0)


@pytest.mark.parametrize("name", ["ravdess", "emodb"])
def test_the_full_corpora_already_give_the_generator_min_batches_in_every_fold(name):
    """The floor of batches changes only small corpora: every leave-one-speaker-out fold of the two development
    corpora (seeds 0-2) already has at least `generator_min_batches` batches of `generator_batch_size`, so the
    committed studies on them stand as they ran."""
    args = MiseTrainingArguments(output_dir="unused")
    for fold in development_folds(name):
        rows = (torch.zeros(len(fold.train)),)
        assert len(Batches(rows, args.generator_batch_size)) >= args.generator_min_batches, fold.name


# ---------------------------------------------------------------------------------------------- mode seeking
def test_mode_seeking_loss_is_the_inverse_of_the_rows_distance_over_the_noises_distance():
    features, other = torch.zeros(2, 3), torch.tensor([[0.3, 0.0, 0.0], [0.0, 0.0, -0.3]])
    noise, other_noise = torch.zeros(2, 4), torch.full((2, 4), 2.0)
    assert mode_seeking_loss(features, other, noise, other_noise).item() == pytest.approx(
        1 / (0.1 / 2 + 1e-5)
    )


def test_g_adds_the_weighted_mode_seeking_term_of_two_noises_with_the_same_conditions():
    features, labels, codes = clustered(32)
    torch.manual_seed(0)
    model = MiseGeneratorModel(tiny_config(discriminator_dropout=0.0, text_code_dropout=0.0))
    inputs, outputs = [], []

    def record(module, args, output) -> None:
        inputs.append(args[0].detach())
        outputs.append(output.detach())

    model.generator.register_forward_hook(record)

    def g_loss(weight: float) -> torch.Tensor:
        step = InfoGANStep(model, mode_seeking_weight=weight)
        return step("generator", features, labels, codes, generator=torch.Generator().manual_seed(3))

    plain = g_loss(0.0)
    assert len(outputs) == 1
    seeking = g_loss(0.5)
    assert len(outputs) == 3  # the same first rows, then a second noise
    first, second = inputs[1], inputs[2]
    noise_dim = model.config.noise_dim
    assert torch.equal(first, inputs[0]) and torch.equal(first[:, noise_dim:], second[:, noise_dim:])
    assert not torch.equal(first[:, :noise_dim], second[:, :noise_dim])
    rows = [F.normalize(out, dim=-1) for out in outputs[1:]]
    term = mode_seeking_loss(rows[0], rows[1], first[:, :noise_dim], second[:, :noise_dim])
    assert (seeking - plain).item() == pytest.approx(0.5 * term.item(), rel=1e-5)
    seeking.backward()  # the term trains G
    assert all(p.grad is not None for p in model.generator.parameters())


def test_mode_seeking_spreads_a_generator_that_collapses_onto_its_classes():
    """Stage 2 with a strong emotion MI weight collapses onto the clusters (the RAVDESS pattern); the mode-seeking
    term keeps its rows spread: higher k-NN recall on the training features."""
    recalls = {}
    for weight in (0.0, 0.05):
        features, labels, _ = clustered(128, dim=4)
        args = arguments(
            generator_epochs=24, generator_eval_every=24, generator_batch_size=16, generator_learning_rate=3e-3,
            discriminator_learning_rate=3e-3, mode_seeking_weight=weight,
        )  # fmt: skip
        config = tiny_config(feature_dim=4, lambda_y=5.0, lambda_t=0.0, use_text_code=False)
        _, summary = train_generator(
            runtime(), config, args, features[:96], labels[:96], features[96:], labels[96:], seed=1
        )
        recalls[weight] = summary["quality"]["recall"]
    assert recalls[0.05] > recalls[0.0] + 0.2


def test_mode_seeking_enters_the_config_hash_only_when_on():
    """Off, the weight leaves the hash of runs from before it existed as it was (they resume); on, it changes it."""
    flags = ["--dataset", "x.csv", "--output_dir", "out"]
    off = parse_arguments(flags)
    assert "mode_seeking_weight" in arguments_dict(*off) and not _hashed("mode_seeking_weight", 0.0)
    assert config_hash(*off) != config_hash(*parse_arguments([*flags, "--mode_seeking_weight", "0.01"]))


# ---------------------------------------------------------------------------------------------- D steps
def _optimizer_steps(steps: int) -> tuple[dict[str, int], int]:
    """(optimiser steps of D and G, batches) in one epoch with `discriminator_steps` = `steps`."""
    features, labels, codes = clustered()
    run = InfoGANTraining(
        runtime(), tiny_config(), arguments(discriminator_steps=steps),
        (features[:64], labels[:64], codes[:64]), (features[64:], labels[64:], codes[64:]), seed=0,
    )  # fmt: skip
    counts = {"d": 0, "g": 0}
    run.optimizer_d.register_step_post_hook(lambda *_: counts.__setitem__("d", counts["d"] + 1))
    run.optimizer_g.register_step_post_hook(lambda *_: counts.__setitem__("g", counts["g"] + 1))
    run.train_epoch(0, _loop_state(), torch.Generator().manual_seed(0))
    return counts, len(run.batches)


@pytest.mark.parametrize("steps", [1, 3])
def test_discriminator_steps_per_generator_step(steps):
    counts, batches = _optimizer_steps(steps)
    assert counts == {"d": steps * batches, "g": batches}


def test_stabiliser_arguments_are_checked():
    flags = ["--dataset", "x.csv", "--output_dir", "out"]
    for flag, value in (("r1_gamma", "-1"), ("instance_noise_std", "-0.1"), ("discriminator_steps", "0"),
                        ("mode_seeking_weight", "-0.5"),
                        ("generator_recall_floor", "1.5"), ("generator_selection", "fid")):  # fmt: skip
        with pytest.raises((ConfigError, SystemExit), match=flag if flag != "generator_selection" else None):
            parse_arguments([*flags, f"--{flag}", value])


# ---------------------------------------------------------------------------------------------- selection
def _evaluations(records: list[dict]) -> list[dict]:
    return [r for r in records if "eval/generator_mi_emotion_nats" in r]


def _train(floor: float) -> tuple[MiseGeneratorModel, dict, list[dict], tuple]:
    """Stage 2 on 4-d clusters with a strong emotion MI weight: its MI keeps rising as its rows collapse onto the
    clusters (recall falls), the RAVDESS pattern; every checkpoint's MI and recall are recorded."""
    features, labels, _ = clustered(128, dim=4)
    run = runtime()
    args = arguments(
        generator_epochs=24, generator_eval_every=3, generator_batch_size=16, generator_learning_rate=3e-3,
        discriminator_learning_rate=3e-3, generator_selection="mi_recall", generator_recall_floor=floor,
    )  # fmt: skip
    config = tiny_config(feature_dim=4, lambda_y=5.0, lambda_t=0.0, use_text_code=False)
    model, summary = train_generator(
        run, config, args, features[:96], labels[:96], features[96:], labels[96:], seed=1
    )
    return model, summary, _evaluations(run.records), (features[:96], labels[:96])


def test_mi_recall_keeps_the_best_mi_among_checkpoints_that_reach_the_recall_floor():
    _, by_mi, evaluations, _ = _train(0.0)  # floor 0: every checkpoint passes, the MI criterion
    mi = {r["epoch"]: r["eval/generator_mi_emotion_nats"] for r in evaluations}
    recall = {r["epoch"]: r["eval/generator_recall"] for r in evaluations}
    assert by_mi["best_epoch"] == max(mi, key=mi.get)
    higher = [epoch for epoch in mi if recall[epoch] > recall[by_mi["best_epoch"]]]
    assert higher, "the test needs a checkpoint with more recall than the best-MI one"
    floor = min(recall[epoch] for epoch in higher)
    model, summary, again, (features, labels) = _train(floor)
    assert [r["eval/generator_recall"] for r in again] == list(recall.values())  # the same training
    passing = [epoch for epoch in mi if recall[epoch] >= floor]
    assert summary["best_epoch"] == max(passing, key=mi.get) != by_mi["best_epoch"]
    assert summary["best_score"] == pytest.approx(mi[summary["best_epoch"]])
    # the kept generator is that checkpoint: its recall, as the criterion measured it
    generated = model.generate(labels=labels, generator=torch.Generator().manual_seed(1))
    assert knn_precision_recall(features, generated.features)[1] == pytest.approx(
        recall[summary["best_epoch"]]
    )


def test_under_the_recall_floor_a_checkpoint_ranks_below_every_one_above_it():
    assert recall_floor_score(-5.0, 0.31, 0.3) == -5.0
    assert recall_floor_score(2.0, 0.29, 0.3) == 2.0 - RECALL_FLOOR_PENALTY < -5.0
    # where none reaches the floor the MI decides among them
    assert recall_floor_score(2.0, 0.1, 0.3) > recall_floor_score(1.0, 0.2, 0.3)


def fold_trainer(selection: str) -> tuple[FoldTrainer, Variant]:
    speakers = np.repeat(np.arange(6), 24)
    rng = torch.Generator().manual_seed(0)
    labels = torch.arange(len(speakers)) % CLASSES
    audio = torch.randn(len(speakers), 12, generator=rng) + 1.5 * F.one_hot(labels, 12).float()
    model_args = ModelArguments(
        projection_dim=8, aligner_hidden_sizes=[16], text_encoder="none", augmentation="mise", noise_dim=4,
        generator_hidden_sizes=[16], discriminator_hidden_sizes=[16], classifier_hidden_sizes=[16],
    )  # fmt: skip
    args = MiseTrainingArguments(
        output_dir="unused", aligner_epochs=3, generator_epochs=4, generator_eval_every=1, classifier_epochs=3,
        generator_batch_size=32, generated_ratios=[0.5, 1.0], early_stopping_patience=0,
        generator_selection=selection, generator_mi_floor=-float("inf"),  # the rows are taken: the choice is run
    )  # fmt: skip
    id2label = {index: f"class{index}" for index in range(CLASSES)}
    data = FoldData(audio, None, labels, id2label, None, model_args, args)
    rows = np.arange(len(speakers))
    fold = Fold("speaker-5", rows[speakers < 4], rows[speakers == 4], rows[speakers == 5], ["5"], ["4"])
    run = runtime()
    return FoldTrainer(data, fold, 0, 7, lambda name, offset: run), Variant.of(model_args)


def test_classifier_selection_keeps_the_checkpoint_with_the_best_stage_3_validation_score():
    trainer, variant = fold_trainer("classifier")
    space = trainer.space(variant)
    generated = trainer.generator(variant, space)
    evaluations = _evaluations(trainer.runtime("speaker-5", 0).records)
    scores = {r["epoch"]: r["eval/generator_classifier_score"] for r in evaluations}
    assert len(scores) == 4 and len(set(scores.values())) > 1
    assert generated.summary["best_epoch"] == max(scores, key=scores.get)
    # the score is stage 3's validation score at the one ratio generated_ratio, with the kept checkpoint's rows
    single = dataclasses.replace(trainer.args, generated_ratios=[])
    _, stage_3 = trainer.classifier(variant, space, Generated(generated.model, None), single)
    assert stage_3["generated_ratio"] == single.generated_ratio
    assert stage_3["best_score"] == pytest.approx(scores[generated.summary["best_epoch"]])
    # the MI criterion, on the same training, keeps the best-MI checkpoint
    by_mi, _ = fold_trainer("mi")
    mi_generated = by_mi.generator(variant, by_mi.space(variant))
    mi = {r["epoch"]: r["eval/generator_mi_emotion_nats"] for r in _evaluations(by_mi.runtime("", 0).records)}
    assert mi_generated.summary["best_epoch"] == max(mi, key=mi.get)


def test_classifier_selection_needs_the_stage_3_score():
    features, labels, codes = clustered()
    with pytest.raises(ValueError, match="checkpoint_score"):
        train_generator(
            runtime(), tiny_config(), arguments(generator_selection="classifier"), features[:64], labels[:64],
            features[64:], labels[64:],
        )  # fmt: skip


def test_discriminator_loss_is_unchanged_without_stabilisers():
    """Off by default: D's loss is the plain BCE on real and generated rows (no MI weights, no mix-up here)."""
    features, labels, codes = clustered(32)
    torch.manual_seed(0)
    model = MiseGeneratorModel(tiny_config(discriminator_dropout=0.0, lambda_y=0.0, lambda_t=0.0))
    loss = _d_loss(model, features, labels, codes)
    generator = torch.Generator().manual_seed(5)  # the stream the step draws its noise and code dropout from
    noise = model.sample_noise(32, generator=generator)
    fake = model.generate_features(
        noise, labels, drop_text_codes(codes, model.config.text_code_dropout, generator)
    )
    logits = model.discriminate(torch.cat([features, fake])).adversarial_logits
    assert loss.item() == pytest.approx(discriminator_loss(logits[:32], logits[32:]).item(), rel=1e-5)


def test_own_corpus_variants_train_stage_3_on_the_test_corpus_alone(monkeypatch):
    """`mise_own` / `none_own` / `copies_own`: stages 1 and 2 read every corpus' training rows, stage 3 (selection
    and refit) the real rows of the test speakers' corpus alone; validation rows of other corpora choose only
    where the test corpus has none. Without several corpora the variants refuse to run."""
    trainer, _ = fold_trainer("mi")
    speakers = np.repeat(np.arange(6), 24)
    corpora = np.where(np.isin(speakers, [0, 1, 5]), "a", "b")  # test speaker 5 is of corpus a
    trainer.data = dataclasses.replace(trainer.data, corpora=corpora)
    trainer.args = dataclasses.replace(trainer.args, refit=True)
    seen = []
    classifier = FoldTrainer.classifier

    def recording(self, variant, space, generated, *args, **kwargs):
        seen.append((self.fold.name, space.train, space.val, len(space.z_train)))
        return classifier(self, variant, space, generated, *args, **kwargs)

    monkeypatch.setattr(FoldTrainer, "classifier", recording)
    own_rows = np.flatnonzero(np.isin(speakers, [0, 1]))
    for name in ("none_own", "copies_own", "mise_own"):
        seen.clear()
        trained = trainer.train(VARIANTS[name])
        assert trained.selected.space.train.tolist() == np.flatnonzero(speakers < 4).tolist()  # stage 1: all
        (selection, train, val, rows), (refit, refit_train, refit_val, _) = seen
        assert refit == f"{selection}/refit" and rows == len(train)
        assert train.tolist() == own_rows.tolist() and refit_train.tolist() == own_rows.tolist()
        assert val.tolist() == np.flatnonzero(speakers == 4).tolist()  # corpus b: the only validation speaker
        assert len(refit_val) == 0
    shared = trainer.train(VARIANTS["mise"])
    assert seen[-1][1].tolist() == np.flatnonzero(speakers != 5).tolist()  # mise's stage 3 reads both corpora
    assert shared.generated.model is trained.generated.model  # one generator for mise and mise_own
    # validation speakers of both corpora: the test corpus' alone choose
    rows = np.arange(len(speakers))
    trainer = FoldTrainer(
        dataclasses.replace(trainer.data, corpora=np.where(speakers == 3, "b", "a")),
        Fold("speaker-5", rows[speakers < 3], rows[np.isin(speakers, [3, 4])], rows[speakers == 5], ["5"],
             ["3", "4"]),
        0, 7, trainer.runtime, args=trainer.args,
    )  # fmt: skip
    seen.clear()
    trainer.train(VARIANTS["none_own"])
    assert seen[0][1].tolist() == np.flatnonzero(speakers < 3).tolist()
    assert seen[0][2].tolist() == np.flatnonzero(speakers == 4).tolist()
    assert seen[1][1].tolist() == np.flatnonzero(np.isin(speakers, [0, 1, 2, 4])).tolist()  # refit
    trainer.data = dataclasses.replace(trainer.data, corpora=None)
    with pytest.raises(ConfigError, match="several corpora"):
        trainer.train(VARIANTS["none_own"])


def test_the_text_code_ablation_keeps_the_alignment_and_drops_only_g_s_text_code():
    """`mise_no_text` shares `mise`'s aligned space and trains its own generator, conditioned on the emotion alone
    (no text codes reach G, so the text MI term is absent)."""
    mise, no_text = VARIANTS["mise"], VARIANTS["mise_no_text"]
    assert no_text.aligner_key == mise.aligner_key and no_text.generator_key != mise.generator_key
    model_args = no_text.model_arguments(ModelArguments(augmentation="none"))
    assert model_args.no_text_code and not model_args.no_alignment and not model_args.no_mi
    trainer, _ = fold_trainer("mi")
    text = torch.randn(len(trainer.data.labels), 6, generator=torch.Generator().manual_seed(1))
    trainer.data = dataclasses.replace(trainer.data, text=text)
    space = trainer.space(mise)
    assert trainer.text_codes(space.aligner, space.train, mise) is not None
    assert trainer.text_codes(space.aligner, space.train, no_text) is None


def test_the_aligner_head_variant_predicts_with_stage_1_s_emotion_head(monkeypatch):
    """`aligner_head` scores the aligner's own linear head on `z_a` (validation and test), not stage 3: with the
    head made to answer one class, every prediction is that class, while `none` still predicts with stage 3."""

    trainer, _ = fold_trainer("mi")
    data = trainer.data
    study = Study(
        Accelerator(cpu=True), DataArguments(dataset="unused"), data.model_args, data.training_args,
        StudyArguments(variants=["none", "aligner_head"], figures=False), data.audio, None, data.labels,
        data.id2label, None,
    )  # fmt: skip
    unit = FoldUnit(study, trainer.fold, 0, 7, trainer.fold.train)
    head, _ = unit.classify(VARIANTS["aligner_head"])
    trained = unit.trainer.train(VARIANTS["none"])  # stage 1 is shared: the same aligner, kept by the trainer
    z_test = encode_audio(trained.aligner, data.audio[trainer.fold.test])
    assert head.tolist() == predict(trained.aligner, z_test).tolist()
    assert head.tolist() == trained.aligner.classify(z_test).argmax(-1).tolist()
    stage_3 = predict(trained.classifier, z_test).tolist()

    def one_class(self, audio_embeds):
        return F.one_hot(torch.full((len(audio_embeds),), 2), CLASSES).float()

    monkeypatch.setattr(MiseAlignerModel, "classify", one_class)
    head, chosen = unit.classify(VARIANTS["aligner_head"])
    assert set(head.tolist()) == {2} and chosen["val_uar"] == pytest.approx(1 / CLASSES)
    assert unit.classify(VARIANTS["none"])[0].tolist() == stage_3  # `none` still reads stage 3


def test_the_aligner_head_variant_trains_no_stage_3(monkeypatch):
    """`aligner_head` predicts with stage 1's head, so it trains no stage-3 classifier, in the selection or the
    refit (before, it trained one and left it unused)."""
    trainer, _ = fold_trainer("mi")
    trainer.args = dataclasses.replace(trainer.args, refit=True)
    data = trainer.data
    study = Study(
        Accelerator(cpu=True), DataArguments(dataset="unused"), data.model_args, trainer.args,
        StudyArguments(variants=["aligner_head"], figures=False), data.audio, None, data.labels, data.id2label,
        None,
    )  # fmt: skip
    unit = FoldUnit(study, trainer.fold, 0, 7, trainer.fold.train)

    def no_stage_3(*args, **kwargs):
        raise AssertionError("aligner_head trained a stage-3 classifier")

    monkeypatch.setattr(classifier_module, "train_classifier", no_stage_3)
    head, chosen = unit.classify(VARIANTS["aligner_head"])
    trained = unit.trainer.train(VARIANTS["aligner_head"])
    assert trained.classifier is None and trained.selected is not None and trained.selected.classifier is None
    z_test = encode_audio(trained.aligner, data.audio[trainer.fold.test])
    assert head.tolist() == predict(trained.aligner, z_test).tolist() and 0 <= chosen["val_uar"] <= 1
