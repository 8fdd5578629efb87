"""Directions measured against a base: one variant of several studies, each compared with the base study's same
variant on the same folds and seeds.

    python training/study_compare.py --variant none --output_dir docs/results/directions \
        emodb_global=docs/results/directions/base_emodb_global:docs/results/directions/pca_emodb_global ...

Each `SETTING=BASE:OTHER[:OTHER...]` names a setting (corpus and regime), its base study folder and the studies of
the directions measured in it (each a `training/study.py` run with the base's command plus the direction's flags,
which name the direction; `OTHER#LABEL` names it `LABEL` instead, e.g. a study of another configuration).
Per direction and setting: the variant's pooled UAR in both, their difference, and the paired Wilcoxon test over
folds (each fold's UAR averaged over the seeds, as the study pairs variants). Writes `directions.json` and
`directions.md` (a table: one row per direction, one column per setting) and prints the table.
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

FILES = ("directions.json", "directions.md")


def read_study(folder: str | Path) -> dict:
    path = Path(folder) / "study.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no study.json (a finished training/study.py output folder)")
    return json.loads(path.read_text())


def direction_flags(base: dict, other: dict) -> str:
    """The flags `other`'s command adds to `base`'s (what the direction is), output folders aside."""

    def flags(study: dict) -> list[str]:
        words = study["info"]["command"].split()
        drop = {i + 1 for i, word in enumerate(words) if word == "--output_dir"}
        return [word for i, word in enumerate(words) if i not in drop and word != "--output_dir"]

    base_words = flags(base)
    extra = flags(other)
    return " ".join(extra[len(base_words) :]) if extra[: len(base_words)] == base_words else " ".join(extra)


def compare(base: dict, other: dict, variant: str) -> dict:
    """`variant` of `other` against `variant` of `base`: pooled UARs, their difference and the paired Wilcoxon
    test over folds. The two studies must share folds and seeds (the pairing is by fold)."""
    folds = [fold["name"] for fold in base["info"]["folds"]]
    other_folds = [fold["name"] for fold in other["info"]["folds"]]
    if sorted(folds) != sorted(other_folds) or base["seeds"] != other["seeds"]:
        raise ValueError(
            f"studies differ in folds or seeds ({len(folds)} vs {len(other_folds)} folds, seeds {base['seeds']} vs "
            f"{other['seeds']}): a paired comparison needs the same"
        )
    for name, study in (("base", base), ("other", other)):
        if variant not in study["variants"]:
            raise ValueError(f"{name} study: no variant {variant!r} (has {sorted(study['variants'])})")
    ours, theirs = other["variants"][variant], base["variants"][variant]
    test = paired_wilcoxon([ours["uar_by_fold"][f] for f in folds], [theirs["uar_by_fold"][f] for f in folds])
    return {
        "uar_pooled": ours["uar_pooled"],
        "base_uar_pooled": theirs["uar_pooled"],
        "delta_uar_pooled": ours["uar_pooled"] - theirs["uar_pooled"],
        "delta_uar_mean": test["mean_difference"],
        "p_value": test["p_value"],
        "n_folds": test["n"],
        "seeds": other["seeds"],
    }


def compare_settings(settings: dict[str, list[str]], variant: str) -> dict:
    """{setting: [base folder, other folders...]} -> directions.json's content."""
    results: dict[str, dict] = {}
    bases = {}
    for setting, (base_folder, *others) in settings.items():
        base = read_study(base_folder)
        bases[setting] = {"study": str(base_folder), "uar_pooled": base["variants"][variant]["uar_pooled"]}
        for item in others:
            folder, _, label = item.partition("#")
            other = read_study(folder)
            flags = label or direction_flags(base, other)
            entry = results.setdefault(flags, {})
            entry[setting] = {"study": item, **compare(base, other, variant)}
    return {"variant": variant, "bases": bases, "directions": results}


def markdown(report: dict) -> str:
    """A table: one row per direction (its flags), one column per setting, `Δ pooled UAR (p)` in points."""
    settings = list(report["bases"])
    lines = [
        f"| direction (flags added to the base) | {' | '.join(settings)} |",
        "|---|" + "---|" * len(settings),
        "| base: pooled UAR of `"
        + report["variant"]
        + "` | "
        + " | ".join(f"{100 * report['bases'][s]['uar_pooled']:.1f}" for s in settings)
        + " |",
    ]
    for flags, by_setting in report["directions"].items():
        cells = []
        for setting in settings:
            entry = by_setting.get(setting)
            cells.append(
                "–"
                if entry is None
                else f"{100 * entry['delta_uar_pooled']:+.1f} (p = {entry['p_value']:.2g})"
            )
        lines.append(f"| `{flags}` | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def parse_setting(text: str) -> tuple[str, list[str]]:
    name, sep, folders = text.partition("=")
    parts = folders.split(":")
    if not sep or not name or len(parts) < 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected SETTING=BASE:OTHER[:OTHER...]")
    return name, parts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="+", type=parse_setting, help="SETTING=BASE:OTHER[:OTHER...]")
    parser.add_argument("--variant", default="none", help="the variant compared (default: none)")
    parser.add_argument("--output_dir", type=Path, required=True)
    args = parser.parse_args(argv)
    report = compare_settings(dict(args.settings), args.variant)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / FILES[0]).write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.output_dir / FILES[1]).write_text(table)
    print(table, end="")
    return report


if __name__ == "__main__":
    main()
