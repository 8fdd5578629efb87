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
`tests/test_readme_results.py` checks the README's table against it. `--suffix _oof` reads the same targets off a
family of variants (`none_oof`, `noise_oof`, `copies_oof`, `mise_oof` in the place of `none`, ...; classic stays).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mise.console import run_command  # noqa: E402
from mise.metrics import paired_wilcoxon  # noqa: E402
from training.study_compare import read_study  # noqa: E402

BEST, LEARNED = (
    "best baseline",
    "best learned",
)  # sides picked per study: of BASELINES, of every variant but classic
BASELINES = ("classic", "noise", "mixup", "copies")  # what MISE must beat by a margin
ALPHA = 0.05
# (column, ours, theirs, target in points, whether p must also be below ALPHA)
TARGETS = (
    ("none − classic", "none", "classic", -0.5, False),
    ("best learned − classic", LEARNED, "classic", 1.0, False),
    ("MISE − none", "mise", "none", 2.6, True),
    ("MISE − noise", "mise", "noise", 1.0, True),
    ("MISE − copies", "mise", "copies", 1.0, True),
    ("MISE − best of classic, noise, mixup, copies", "mise", BEST, 1.0, False),
)


def target_values(study: dict, suffix: str = "") -> dict[str, dict]:
    """Per target column: the difference of the pooled UARs in points, p (the paired Wilcoxon test over folds)
    where tested, `met`, and `name`: the variant picked for a best-of side (None otherwise). `suffix`: each
    variant but classic read as the variant of that name plus `suffix` (a family such as `_oof`)."""
    variants, folds = study["variants"], study["folds"]
    pooled = {name: variant["uar_pooled"] for name, variant in variants.items()}

    def named(name: str) -> str:
        return name if name in ("classic", BEST, LEARNED) else name + suffix

    baselines = [named(name) for name in BASELINES if named(name) in pooled]
    picked = {
        BEST: max(baselines, key=pooled.get),
        LEARNED: max((name for name in pooled if name != "classic"), key=pooled.get),
    }
    values = {}
    for column, ours, theirs, margin, tested in TARGETS:
        first, second = (picked.get(side, named(side)) for side in (ours, theirs))
        if first not in variants or second not in variants:
            continue
        difference = 100 * (pooled[first] - pooled[second])
        pairs = [[variants[name]["uar_by_fold"][fold] for fold in folds] for name in (first, second)]
        p = paired_wilcoxon(*pairs)["p_value"] if tested else None
        values[column] = {
            "difference": difference,
            "name": picked.get(ours) or picked.get(theirs),
            "p": p,
            "met": round(difference, 1) >= margin and (p is None or p < ALPHA),
        }
    return values


def _number(value: float) -> str:
    text = f"{value:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text.replace("-", "−")


def _p(value: float) -> str:
    text = f"{value:.2g}" if value >= 0.001 else f"{value:.1g}"
    return f"{value:.3g}" if (float(text) < ALPHA) != (value < ALPHA) else text  # no rounding across 0.05


def cell(value: dict) -> str:
    text = _number(value["difference"])
    if value["name"]:
        text += f" (`{value['name']}`)"
    if value["p"] is not None:
        text += f", p = {_p(value['p'])}"
    return f"{text}, {'met' if value['met'] else 'missed'}"


def markdown(settings: dict[str, dict], suffix: str = "") -> str:
    """The targets table: one row per setting, one column per target (`suffix`: `target_values`)."""
    header = ["setting", *(f"{column} (≥ {_number(margin)})" for column, _, _, margin, _ in TARGETS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, (folder, study) in settings.items():
        values = target_values(study, suffix)
        row = [f"[{label}]({folder}/study.md)"]
        row += [cell(values[column]) if column in values else "–" for column, *_ in TARGETS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def parse_setting(text: str) -> tuple[str, str]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=FOLDER (a study output folder)")
    return label, folder


def read_settings(pairs: list[tuple[str, str]], root: Path = Path(".")) -> dict[str, tuple[str, dict]]:
    return {label: (folder, read_study(root / folder)) for label, folder in pairs}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="+", type=parse_setting, help="LABEL=FOLDER, one per setting")
    parser.add_argument(
        "--suffix",
        default="",
        help="Read each variant but classic as NAME + SUFFIX (e.g. _oof): that family's targets.",
    )
    args = parser.parse_args(argv)
    table = markdown(read_settings(args.settings), args.suffix)
    print(table)
    return table


if __name__ == "__main__":
    sys.exit(run_command(main, "study_targets"))
