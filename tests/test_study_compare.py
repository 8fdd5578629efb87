"""Directions compared with a base study (training/study_compare.py), and the committed directions table tied to
the studies it was computed from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from training.study_compare import compare, compare_settings, direction_flags, main, markdown

REPO = Path(__file__).resolve().parents[1]
DIRECTIONS = REPO / "docs" / "results" / "directions"
BASE_COMMAND = (
    "training/study.py training/configs/mise.yaml --output_dir runs/base --variants none --seeds 0 1 2"
)


def study(uar_by_fold: dict[str, float], pooled: float, command: str = BASE_COMMAND, seeds=(0, 1, 2)) -> dict:
    return {
        "info": {"command": command, "folds": [{"name": name} for name in uar_by_fold]},
        "seeds": list(seeds),
        "variants": {"none": {"uar_by_fold": uar_by_fold, "uar_pooled": pooled}},
    }


def test_the_pairing_is_by_fold_name_not_position():
    rng = np.random.default_rng(0)
    names = [f"speaker-{i}" for i in range(8)]
    base = dict(zip(names, rng.uniform(0.4, 0.7, 8), strict=True))
    other = {name: base[name] + 0.01 * (i + 1) for i, name in enumerate(names)}
    shuffled = {name: other[name] for name in reversed(names)}  # another fold order in the file
    result = compare(study(base, 0.55), study(shuffled, 0.58, BASE_COMMAND + " --refit true"), "none")
    expected = wilcoxon([other[n] for n in names], [base[n] for n in names]).pvalue
    assert result["p_value"] == pytest.approx(expected)
    assert result["delta_uar_mean"] == pytest.approx(np.mean([0.01 * (i + 1) for i in range(8)]))
    assert result["delta_uar_pooled"] == pytest.approx(0.03) and result["n_folds"] == 8


def test_studies_on_other_folds_or_seeds_are_refused():
    base = study({"a": 0.5, "b": 0.6}, 0.55)
    with pytest.raises(ValueError, match="folds or seeds"):
        compare(base, study({"a": 0.5, "c": 0.6}, 0.55), "none")
    with pytest.raises(ValueError, match="folds or seeds"):
        compare(base, study({"a": 0.5, "b": 0.6}, 0.55, seeds=(0,)), "none")
    with pytest.raises(ValueError, match="no variant 'mise'"):
        compare(base, base, "mise")


def test_a_direction_is_named_by_the_flags_it_adds():
    other = study({}, 0.0, BASE_COMMAND.replace("runs/base", "runs/pca") + " --aligner_input_components 128")
    assert direction_flags(study({}, 0.0), other) == "--aligner_input_components 128"


def test_the_command_writes_the_table(tmp_path):
    folds = {"a": 0.5, "b": 0.6, "c": 0.7, "d": 0.4, "e": 0.55, "f": 0.65}
    for name, shift, command in (("base", 0.0, BASE_COMMAND), ("heads", 0.02, BASE_COMMAND + " --heads 5")):
        (tmp_path / name).mkdir()
        data = study({k: v + shift for k, v in folds.items()}, 0.6 + shift, command)
        (tmp_path / name / "study.json").write_text(json.dumps(data))
    report = main(
        [f"x_global={tmp_path / 'base'}:{tmp_path / 'heads'}", "--output_dir", str(tmp_path / "out")]
    )
    table = (tmp_path / "out" / "directions.md").read_text()
    assert table == markdown(report)
    assert "| `--heads 5` | +2.0 (p = 0.031) |" in table and "| base: pooled UAR of `none` | 60.0 |" in table


@pytest.mark.parametrize(
    "directions, page",
    [
        (DIRECTIONS, "README.md"),
        (DIRECTIONS / "on_shipped", "docs/results.md"),
        (DIRECTIONS / "classic_c", "docs/results.md"),
        (DIRECTIONS / "stage_1", "docs/results.md"),
        (DIRECTIONS / "emodb_more", "docs/results.md"),
        (DIRECTIONS / "stage_1_mixup", "docs/results.md"),
        (DIRECTIONS / "emodb_stage_1", "docs/results.md"),
        (DIRECTIONS / "small_corpus", "docs/results.md"),
        (DIRECTIONS / "mi_floor", "docs/results.md"),
    ],
    ids=[
        "against the earlier base",
        "against the shipped method",
        "the classic baseline's L2 choice",
        "stage-1 settings chosen on the validation speakers",
        "three more directions on Emo-DB",
        "mix-up at stage 1",
        "eight settings of stage 1 on Emo-DB",
        "stage 1 on a small corpus",
        "the MI floor of stage 3",
    ],
)
def test_the_committed_directions_table_is_computed_from_its_studies(directions, page):
    report = json.loads((directions / "directions.json").read_text())
    settings = {name: [base["study"]] for name, base in report["bases"].items()}
    for by_setting in report["directions"].values():
        for name, entry in by_setting.items():
            settings[name].append(entry["study"])
    recomputed = compare_settings(
        {k: [str(REPO / p) for p in v] for k, v in settings.items()}, report["variant"]
    )
    assert markdown(recomputed) == (directions / "directions.md").read_text()
    assert (directions / "directions.md").read_text() in (REPO / page).read_text(), f"{page} shows the table"
