"""The targets of the comparison studies, per setting, from their `study.json` files.

    python training/study_targets.py "RAVDESS, global=docs/results/ravdess_global" ...

Each `LABEL=FOLDER` names a setting (corpus and regime) and its `training/study.py` output folder. Per setting,
from the pooled UARs over folds and seeds and the paired Wilcoxon test over folds (each fold's UAR averaged over
the seeds, as the study pairs variants):

- the base against the classic baseline: `none` − classic ≥ −0.5;
- the best learned variant (any but classic) ≥ classic + 1.0;
- MISE against no augmentation: ≥ +2.6 with p < 0.05 (the gain the paper reports);
- MISE against Gaussian noise and against copies of real rows: ≥ +1.0 with p < 0.05 each (generated rows that
  carry information noise and extra steps do not);
- MISE ≥ the best of classic, noise, mix-up and copies + 1.0.

Prints the markdown table (each cell the difference, its p where there is a test, and whether the target holds);
`tests/test_readme_results.py` checks the README's table against it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mise.metrics import paired_wilcoxon  # noqa: E402

BASELINES = ("classic", "noise", "mixup", "copies")  # what MISE must beat by a margin
# (column, target in points, p must be below 0.05)
TARGETS = {
    "none − classic": (-0.5, False),
    "best learned − classic": (1.0, False),
    "MISE − none": (2.6, True),
    "MISE − noise": (1.0, True),
    "MISE − copies": (1.0, True),
    "MISE − best of classic, noise, mixup, copies": (1.0, False),
}
ALPHA = 0.05


def _versus(variants: dict, folds: list[str], ours: str, theirs: str) -> tuple[float, float]:
    """Pooled UAR difference of `ours` over `theirs` in points, and the paired Wilcoxon p over folds."""
    difference = 100 * (variants[ours]["uar_pooled"] - variants[theirs]["uar_pooled"])
    pairs = [[variants[name]["uar_by_fold"][fold] for fold in folds] for name in (ours, theirs)]
    return difference, paired_wilcoxon(*pairs)["p_value"]


def target_values(study: dict) -> dict[str, dict]:
    """Per target column: the difference in points, the compared variant (`name`), p where tested, and `met`."""
    variants, folds = study["variants"], study["folds"]
    pooled = {name: variant["uar_pooled"] for name, variant in variants.items()}
    best = max((name for name in BASELINES if name in pooled), key=pooled.get)
    learned = max((name for name in pooled if name != "classic"), key=pooled.get)
    pairs = {
        "none − classic": ("none", "classic"),
        "best learned − classic": (learned, "classic"),
        "MISE − none": ("mise", "none"),
        "MISE − noise": ("mise", "noise"),
        "MISE − copies": ("mise", "copies"),
        "MISE − best of classic, noise, mixup, copies": ("mise", best),
    }
    values = {}
    for column, (ours, theirs) in pairs.items():
        if ours not in variants or theirs not in variants:
            continue
        difference, p = _versus(variants, folds, ours, theirs)
        margin, tested = TARGETS[column]
        values[column] = {
            "difference": difference,
            "name": learned if column.startswith("best learned") else theirs,
            "p": p if tested else None,
            "met": round(difference, 1) >= margin and (not tested or p < ALPHA),
        }
    return values


def _number(value: float) -> str:
    text = f"{value:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text.replace("-", "−")


def _p(value: float) -> str:
    text = f"{value:.2g}" if value >= 0.001 else f"{value:.1g}"
    return f"{value:.3g}" if (float(text) < ALPHA) != (value < ALPHA) else text  # no rounding across 0.05


def cell(value: dict, named: bool) -> str:
    text = _number(value["difference"])
    if named:
        text += f" (`{value['name']}`)"
    if value["p"] is not None:
        text += f", p = {_p(value['p'])}"
    return f"{text}, {'met' if value['met'] else 'missed'}"


def markdown(settings: dict[str, dict]) -> str:
    """The targets table: one row per setting, one column per target."""
    header = ["setting", *(f"{column} (≥ {_number(m[0])})" for column, m in TARGETS.items())]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, (folder, study) in settings.items():
        values = target_values(study)
        row = [f"[{label}]({folder}/study.md)"]
        for column in TARGETS:
            named = column.startswith(("best learned", "MISE − best"))
            row.append(cell(values[column], named) if column in values else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def parse_setting(text: str) -> tuple[str, str]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=FOLDER (a study output folder)")
    return label, folder


def read_settings(pairs: list[tuple[str, str]], root: Path = Path(".")) -> dict[str, tuple[str, dict]]:
    settings = {}
    for label, folder in pairs:
        path = root / folder / "study.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no study.json (a finished training/study.py output folder)")
        settings[label] = (folder, json.loads(path.read_text()))
    return settings


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="+", type=parse_setting, help="LABEL=FOLDER, one per setting")
    table = markdown(read_settings(parser.parse_args(argv).settings))
    print(table)
    return table


if __name__ == "__main__":
    main()
