"""The result tables of README.md and docs/*.md cannot drift from the study outputs they quote.

A table preceded by `<!-- study table: PATH/study.json -->` has one row per variant (`variant: description`)
with the columns UAR mean ± std over folds, pooled UAR, Δ pooled vs none, Wilcoxon p vs none (and, optionally,
the share of test clips predicted as `none` predicts them); every number
shown must be the study's value rounded as displayed. The README's summary table, the targets table and the
as-released table are checked against their `study.json` / `summary.json` files the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from training import study_targets

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- study table: (\S+) -->\n((?:\|.*\|\n)+)")
NUMBER = re.compile(r"[+\-−]?\d+(?:\.\d+)?(?:e-?\d+)?")


def pages_text() -> str:
    """README.md and the pages under docs/, one text."""
    return "\n".join(page.read_text() for page in PAGES)


def study_tables(readme: str) -> list[tuple[str, list[list[str]]]]:
    """(study.json path, rows of cells without the header and separator) for every marked table."""
    tables = []
    for path, block in MARKER.findall(readme):
        rows = [
            [cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
            for line in block.splitlines()
        ]
        tables.append((path, rows[2:]))
    return tables


def shown(cell: str) -> list[float]:
    return [float(text.replace("−", "-")) for text in NUMBER.findall(cell)]


def matches(display: str, value: float, scale: float = 100.0) -> bool:
    """`display` (as written in the README) is `value * scale` rounded to the decimals it shows."""
    digits = display.split("e")[0].split(".")
    decimals = len(digits[1]) if len(digits) == 2 else 0
    exponent = int(display.split("e")[1]) if "e" in display else 0
    tolerance = 0.5 * 10.0 ** (exponent - decimals) + 1e-9
    return abs(float(display.replace("−", "-")) - value * scale) <= tolerance


def check_row(cells: list[str], variants: dict) -> None:
    by_description = {variant["description"]: name for name, variant in variants.items()}
    name = by_description.get(cells[0], cells[0].split(":")[0].strip())
    assert name in variants, f"README row {cells[0]!r}: no variant {name!r} in the study"
    variant = variants[name]
    mean, std = NUMBER.findall(cells[1])
    assert matches(mean, variant["uar_mean"]) and matches(std, variant["uar_std"]), (name, cells[1])
    assert matches(NUMBER.findall(cells[2])[0], variant["uar_pooled"]), (name, cells[2])
    if name == "none":
        return
    assert matches(NUMBER.findall(cells[3])[0].replace("−", "-"), variant["delta_uar_pooled_vs_none"]), (
        name,
        cells[3],
    )
    assert matches(NUMBER.findall(cells[4])[0], variant["wilcoxon_vs_none"]["p_value"], 1.0), (name, cells[4])
    if len(cells) > 5:  # an optional last column: the test clips predicted as `none` predicts them, %
        assert matches(NUMBER.findall(cells[5])[0], variant["same_predictions_as_none"]), (name, cells[5])


def test_pages_have_study_tables():
    tables = study_tables(pages_text())
    assert len(tables) >= 5, "the results pages lost their tables tied to a study.json"


@pytest.mark.parametrize("path, rows", study_tables(pages_text()))
def test_readme_table_matches_its_study(path, rows):
    variants = json.loads((REPO / path).read_text())["variants"]
    assert rows, f"empty table for {path}"
    for cells in rows:
        check_row(cells, variants)


def test_a_drifted_number_is_caught():
    variants = {"mise": {"description": "full MISE", "uar_mean": 0.5716, "uar_std": 0.125, "uar_pooled": 0.5716,
                         "delta_uar_pooled_vs_none": 0.0269, "wilcoxon_vs_none": {"p_value": 0.00368}}}  # fmt: skip
    check_row(["mise: full MISE", "57.2 ± 12.5", "57.2", "+2.7", "0.0037"], variants)
    with pytest.raises(AssertionError):
        check_row(["mise: full MISE", "57.2 ± 12.5", "57.3", "+2.7", "0.0037"], variants)
    with pytest.raises(AssertionError):
        check_row(["mise: full MISE", "57.2 ± 12.5", "57.2", "+2.7", "0.005"], variants)


# ------------------------------------------------------------------------------------------- the targets table
TARGETS = re.compile(r"<!-- targets table -->\n((?:\|.*\|\n)+)")
SETTING = re.compile(r"^\| \[([^\]]+)\]\(([^)]+)/study\.md\)", re.M)


def test_readme_targets_match_their_studies():
    """The README's targets table is what `training/study_targets.py` prints for the studies its rows link."""
    blocks = TARGETS.findall((REPO / "README.md").read_text())
    assert len(blocks) == 1, "the README needs one targets table"
    settings = SETTING.findall(blocks[0])
    assert len(settings) >= 4, blocks[0]
    assert blocks[0].strip() == study_targets.markdown(study_targets.read_settings(settings, REPO))


# the targets tables of docs/results.md beside the README's: marker -> (the family's suffix, its settings)
FAMILY_TARGETS = {"oof": ("_oof", 4), "few-emotions": ("", 2)}


@pytest.mark.parametrize("marker", sorted(FAMILY_TARGETS))
def test_the_targets_tables_of_the_results_page_match_their_studies(marker):
    """docs/results.md's targets tables (out-of-fold family, speakers heard in few emotions) are what
    `study_targets.py [--suffix S]` prints for their studies."""
    suffix, count = FAMILY_TARGETS[marker]
    blocks = re.findall(
        rf"<!-- {marker} targets table -->\n((?:\|.*\|\n)+)", (REPO / "docs" / "results.md").read_text()
    )
    assert len(blocks) == 1, f"docs/results.md needs its {marker} targets table"
    settings = SETTING.findall(blocks[0])
    assert len(settings) == count, blocks[0]
    table = study_targets.markdown(study_targets.read_settings(settings, REPO / "docs"), suffix)
    assert blocks[0].strip() == table


TOY_FOLDS = [f"f{i}" for i in range(8)]


def toy_variant(pooled: float, offset: float) -> dict:
    """A toy study variant: its pooled UAR, and fold UARs shifted by `offset` from a shared ramp."""
    return {
        "uar_pooled": pooled,
        "uar_by_fold": {f: 0.6 + offset + 0.01 * i for i, f in enumerate(TOY_FOLDS)},
    }


def test_targets_say_met_only_past_the_margin_and_below_the_p_threshold():
    study = {"folds": TOY_FOLDS, "variants": {
        "classic": toy_variant(0.700, 0.0), "none": toy_variant(0.696, -0.004), "noise": toy_variant(0.705, 0.005),
        "mixup": toy_variant(0.69, -0.01), "copies": toy_variant(0.704, 0.004), "mise": toy_variant(0.716, 0.016)}}  # fmt: skip
    values = study_targets.target_values(study)
    assert values["none − classic"]["met"] and values["none − classic"]["p"] is None  # −0.4 ≥ −0.5
    assert values["best learned − classic"]["name"] == "mise" and values["best learned − classic"]["met"]
    assert values["MISE − noise"]["difference"] == pytest.approx(1.1) and values["MISE − noise"]["p"] < 0.05
    assert values["MISE − noise"]["met"] and not values["MISE − none"]["met"]  # +2.0 < 2.6
    assert values["MISE − best of classic, noise, mixup, copies"]["name"] == "noise"
    study["variants"]["none"] = toy_variant(0.694, -0.006)
    assert not study_targets.target_values(study)["none − classic"]["met"]  # −0.6
    study["variants"]["noise"]["uar_by_fold"] = dict(study["variants"]["mise"]["uar_by_fold"])
    assert not study_targets.target_values(study)["MISE − noise"]["met"]  # the same folds: p = 1


def test_targets_of_a_family_read_its_variants_in_the_place_of_the_plain_ones():
    study = {"folds": TOY_FOLDS, "variants": {
        "classic": toy_variant(0.700, 0.0), "none": toy_variant(0.60, -0.1), "mise": toy_variant(0.60, -0.1),
        "none_oof": toy_variant(0.696, -0.004), "noise_oof": toy_variant(0.705, 0.005), "copies_oof": toy_variant(0.71, 0.01),
        "mise_oof": toy_variant(0.722, 0.022)}}  # fmt: skip
    plain = study_targets.target_values(study)
    assert plain["MISE − none"]["difference"] == pytest.approx(0.0) and "MISE − noise" not in plain
    values = study_targets.target_values(study, "_oof")
    assert values["none − classic"]["difference"] == pytest.approx(-0.4)
    assert values["MISE − noise"]["difference"] == pytest.approx(1.7) and values["MISE − noise"]["p"] < 0.05
    assert values["MISE − copies"]["difference"] == pytest.approx(1.2)
    assert values["MISE − best of classic, noise, mixup, copies"]["name"] == "copies_oof"
    assert values["best learned − classic"]["name"] == "mise_oof"
    table = study_targets.markdown({"toy": ("toy", study)}, "_oof")
    assert "+1.7, p = " in table and "(`copies_oof`)" in table


RELEASED = re.compile(r"<!-- released table -->\n((?:\|.*\|\n)+)")
RELEASED_DIR = REPO / "docs" / "results" / "released"


def released_values(corpus: str) -> list[float]:
    """(a) global statistics, (b) k = 3, k = 10, all other clips, the fold number: from the as-released runs."""
    auto = json.loads((RELEASED_DIR / f"{corpus}_auto" / "summary.json").read_text())
    global_ = json.loads((RELEASED_DIR / f"{corpus}_false" / "summary.json").read_text())
    enrolment = auto["enrolment"]
    return [global_["uar_pooled"], enrolment["uar_pooled_k3"], enrolment["uar_pooled_k10"],
            enrolment["uar_pooled_all"], auto["uar_pooled"]]  # fmt: skip


def test_readme_released_table_matches_its_runs():
    blocks = RELEASED.findall(pages_text())
    assert len(blocks) == 1, "the results pages need one as-released table"
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in blocks[0].splitlines()][
        2:
    ]
    assert len(rows) == 2
    for cells in rows:
        corpus = cells[0].split()[0].lower().replace("-", "")
        for display, value in zip(cells[1:], released_values(corpus), strict=True):
            assert matches(display, value), (corpus, display, value)


# ------------------------------------------------------------------------------ the README's summary table
SUMMARY = re.compile(r"<!-- summary table -->\n((?:\|.*\|\n)+)")
SUMMARY_COLUMNS = {
    "no augmentation": "none", "Gaussian noise": "noise", "copies of real rows": "copies", "classic baseline": "classic"
}  # fmt: skip


def check_summary_row(cells: dict[str, str], variants: dict) -> None:
    """A row of the README's summary: MISE's pooled UAR with its Δ and p against `none`, and the pooled UAR of
    `none`, noise and the classic baseline, as the study has them."""
    mise, delta, p = (n.replace("−", "-") for n in NUMBER.findall(cells["MISE (vs no augmentation, p)"]))
    assert matches(mise, variants["mise"]["uar_pooled"]), cells
    assert matches(delta, variants["mise"]["delta_uar_pooled_vs_none"]), cells
    assert matches(p, variants["mise"]["wilcoxon_vs_none"]["p_value"], 1.0), cells
    for column, name in SUMMARY_COLUMNS.items():
        assert matches(NUMBER.findall(cells[column])[0], variants[name]["uar_pooled"]), (column, cells)


def test_readme_summary_matches_its_studies():
    blocks = SUMMARY.findall((REPO / "README.md").read_text())
    assert len(blocks) == 1, "the README needs one results summary table"
    lines = blocks[0].splitlines()
    header = [cell.strip() for cell in lines[0].strip().strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[2:]]
    assert len(rows) >= 4, rows
    for row in rows:
        cells = dict(zip(header, row, strict=True))
        study = re.search(r"\]\((docs/results/[^)]+)/study\.md\)", cells["details"]).group(1)
        check_summary_row(cells, json.loads((REPO / study / "study.json").read_text())["variants"])


def test_a_drifted_summary_number_is_caught():
    variants = {"classic": {"uar_pooled": 0.75}, "none": {"uar_pooled": 0.675}, "noise": {"uar_pooled": 0.70},
                "copies": {"uar_pooled": 0.701},
                "mise": {"uar_pooled": 0.697, "delta_uar_pooled_vs_none": 0.022, "wilcoxon_vs_none": {"p_value": 0.055}}}  # fmt: skip
    cells = {"MISE (vs no augmentation, p)": "**69.7** (+2.2, p = 0.055)", "no augmentation": "67.5",
             "Gaussian noise": "70.0", "copies of real rows": "70.1", "classic baseline": "75.0"}  # fmt: skip
    check_summary_row(cells, variants)
    with pytest.raises(AssertionError):
        check_summary_row({**cells, "Gaussian noise": "70.1"}, variants)
    with pytest.raises(AssertionError):
        check_summary_row({**cells, "MISE (vs no augmentation, p)": "**69.7** (+2.2, p = 0.08)"}, variants)


# ------------------------------------------------------------------------------ several corpora (leave one out)
SEVERAL = re.compile(r"<!-- several corpora table -->\n((?:\|.*\|\n)+)")
SEVERAL_DIR = REPO / "docs" / "results" / "several_corpora"
HELD_OUT = {"Emo-DB": "emodb", "RAVDESS": "ravdess"}


def several_corpora_values(setting: str, corpus: str) -> list[float]:
    """The held-out corpus' pooled UAR, adapted (its own statistics) and as released (the training corpus'), mean
    over the seeds of the committed leave-one-corpus-out runs of `setting`."""
    runs = sorted((SEVERAL_DIR / setting).glob("seed-*/summary.json"))
    assert len(runs) == 3, (setting, runs)
    entries = [json.loads(path.read_text())["corpora"]["corpora"][corpus] for path in runs]
    return [float(np.mean([entry[key]["uar"] for entry in entries])) for key in ("own", "as_released")]


def test_readme_several_corpora_table_matches_its_runs():
    blocks = SEVERAL.findall((REPO / "README.md").read_text())
    assert len(blocks) == 1, "the README needs one several-corpora table"
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in blocks[0].splitlines()][
        2:
    ]
    assert [row[0].split()[0] for row in rows] == list(HELD_OUT)
    for cells in rows:
        corpus = HELD_OUT[cells[0].split()[0]]
        shown_values = [NUMBER.findall(cell)[0] for cell in cells[1:5]]
        expected = several_corpora_values("shipped", corpus) + several_corpora_values(
            "components_128", corpus
        )
        for display, value in zip(shown_values, expected, strict=True):
            assert matches(display, value), (corpus, display, value)


# ------------------------------------------------------------------------ several corpora (one speaker out)
UNION = re.compile(r"<!-- union table -->\n((?:\|.*\|\n)+)")
TARGET_POINTS = 1.0  # the union's LOSO on a corpus within 1 point of its single-corpus LOSO, or better


def union_values(corpus: str) -> tuple[list[float], list[float], list[float]]:
    """Per seed, the corpus' pooled LOSO UAR (six shared classes) trained alone (the committed runs under
    `single_shared6/<corpus>`) and trained on the union of both corpora (its speakers' folds of `union`), with its
    own statistics and as released."""
    single = sorted((SEVERAL_DIR / "single_shared6" / corpus).glob("seed-*/summary.json"))
    union = sorted((SEVERAL_DIR / "union").glob("seed-*/summary.json"))
    assert (
        [path.parent.name for path in single]
        == [path.parent.name for path in union]
        == [
            "seed-0",
            "seed-1",
            "seed-2",
        ]
    )
    alone = [json.loads(path.read_text()) for path in single]
    together = [json.loads(path.read_text()) for path in union]
    shared = ["angry", "disgust", "fear", "happy", "neutral", "sad"]
    assert all(sorted(run["per_class_recall_pooled"]) == shared for run in alone + together)
    assert all(run["protocol"] == "loso" and "corpora" not in run for run in alone)
    assert all(run["protocol"] == "loso" and run["n_folds"] == 34 for run in together)
    entries = [run["corpora"]["corpora"][corpus] for run in together]
    return (
        [run["uar_pooled"] for run in alone],
        [entry["own"]["uar"] for entry in entries],
        [entry["as_released"]["uar"] for entry in entries],
    )


def test_readme_union_table_matches_its_runs():
    readme = (REPO / "README.md").read_text()
    blocks = UNION.findall(readme)
    assert len(blocks) == 1, "the README needs one union table"
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in blocks[0].splitlines()][
        2:
    ]
    assert [row[0] for row in rows] == list(HELD_OUT)
    for cells in rows:
        single, union, _ = (float(np.mean(values)) for values in union_values(HELD_OUT[cells[0]]))
        shown = [NUMBER.findall(cell)[0] for cell in cells[1:4]]
        for display, value in zip(shown, (single, union, union - single), strict=True):
            assert matches(display, value), (cells[0], display, value)
        assert cells[4] == ("met" if 100 * (union - single) >= -TARGET_POINTS else "missed"), cells
    # the prose under the table: each seed's difference, and the union's folds as released
    seeds = re.search(r"its seeds differ by (\S+), (\S+) and (\S+)\s+\(Emo-DB: (\S+), (\S+), (\S+)\)", readme)
    released = re.search(r"the union's folds give (\S+) on\s+Emo-DB and (\S+) on RAVDESS", readme)
    assert seeds and released, "the README names each seed's difference and the union's folds as released"
    expected = {corpus: union_values(corpus) for corpus in ("ravdess", "emodb")}
    differences = [
        u - a for corpus in ("ravdess", "emodb") for a, u in zip(*expected[corpus][:2], strict=True)
    ]
    for display, value in zip(seeds.groups(), differences, strict=True):
        assert matches(display, value), (display, value)
    for display, corpus in zip(released.groups(), ("emodb", "ravdess"), strict=True):
        assert matches(display, float(np.mean(expected[corpus][2]))), (display, corpus)


# ------------------------------------------------------------------------------ generation quality per corpus
QUALITY = re.compile(r"<!-- generation quality table -->\n((?:\|.*\|\n)+)")


def test_generation_quality_table_matches_its_studies():
    """k-NN precision and recall of the cGAN's and MISE's chosen checkpoints, per study, as study.json has them (a
    row may read the cGAN from a study of its own: `...study.json`; cGAN: `...study.json`)."""
    blocks = QUALITY.findall(pages_text())
    assert len(blocks) == 1, "the results pages need one generation quality table"
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in blocks[0].splitlines()][
        2:
    ]
    assert len(rows) == 4, rows
    for cells in rows:
        path = re.search(r"\(`([^`]+study\.json)`", cells[0]).group(1)
        own = re.search(r"cGAN: `([^`]+study\.json)`", cells[0])
        quality = {
            g: json.loads((REPO / (own.group(1) if own and g == "cgan" else path)).read_text())["quality"][g]
            for g in ("cgan", "mise")
        }
        expected = [quality[g][m] for g in ("cgan", "mise") for m in ("precision", "recall")]
        for display, value in zip(cells[1:5], expected, strict=True):
            assert matches(display, value, 1.0), (path, display, value)
