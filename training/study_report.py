"""The study's outputs from its finished (seed, fold) units: study.csv / .json / .md, quality.json and figures.

Aggregation: a variant's UAR per fold is averaged over seeds; `uar_mean ± uar_std` are over those folds and the
paired Wilcoxon signed-rank test against no augmentation pairs them by fold. Pooled metrics are computed per
seed on the concatenated test predictions of all folds and averaged over seeds (`*_pooled_seed_std`).
"""

from __future__ import annotations

import csv
import datetime
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from mise.hub.cards import STUDY_REFERENCE, environment_text
from mise.hub.run_card import numeric_environment
from mise.metrics import paired_wilcoxon, summarize_folds

from .classifier import chosen_aligner_candidate_counts, chosen_feature_set_counts, chosen_ratio_counts
from .study_variants import VARIANTS, StudyArguments

CSV_COLUMNS = (
    "variant", "seed", "fold", "test_speakers", "uar", "wa", "f1_macro", "val_uar", "generated_ratio",
    "feature_set", "classic_c", "aligner_candidate", "train_clips", "test_clips", "seconds",
)  # fmt: skip
QUALITY_KEYS = ("mi_emotion_nats", "mi_text_nats", "frechet_distance", "precision", "recall")
MAP_VARIANTS_TSNE = ("mise", "cgan")


def _mean(values: list) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize_variant(
    rows: list[dict], folds: list[str], seeds: list[int], num_labels: int, id2label: dict
) -> dict:
    """Mean ± std over folds (seed-averaged), pooled metrics per seed averaged, summed confusion matrix."""
    per_seed = []
    for seed in seeds:
        seed_rows = sorted((r for r in rows if r["seed"] == seed), key=lambda r: folds.index(r["fold"]))
        if not seed_rows:
            continue
        per_seed.append(
            summarize_folds(
                seed_rows,
                np.concatenate([r["y_true"] for r in seed_rows]),
                np.concatenate([r["y_pred"] for r in seed_rows]),
                num_labels,
                id2label,
            )
        )
    summary: dict = {"n_folds": len(folds), "n_seeds": len(per_seed)}
    by_fold = {}
    for key in ("uar", "wa", "f1_macro"):
        fold_values = [_mean([r[key] for r in rows if r["fold"] == fold]) for fold in folds]
        by_fold[key] = fold_values
        summary[f"{key}_mean"] = float(np.mean(fold_values))
        summary[f"{key}_std"] = _std(fold_values)
        pooled = [s[f"{key}_pooled"] for s in per_seed]
        summary[f"{key}_pooled"] = float(np.mean(pooled))
        summary[f"{key}_pooled_seed_std"] = _std(pooled)
    summary["uar_by_fold"] = dict(zip(folds, by_fold["uar"], strict=True))
    summary["confusion_matrix_pooled"] = np.sum(
        [s["confusion_matrix_pooled"] for s in per_seed], axis=0
    ).tolist()
    names = list(per_seed[0]["per_class_recall_pooled"])
    summary["per_class_recall_pooled"] = {
        name: _mean([s["per_class_recall_pooled"][name] for s in per_seed]) for name in names
    }
    summary["val_uar_mean"] = _mean([r["val_uar"] for r in rows])
    summary["generated_ratio_chosen"] = chosen_ratio_counts(r["generated_ratio"] for r in rows)
    summary["feature_set_chosen"] = chosen_feature_set_counts(r.get("feature_set") for r in rows)
    summary["classic_c_chosen"] = chosen_ratio_counts(r.get("classic_c") for r in rows)
    summary["aligner_candidate_chosen"] = chosen_aligner_candidate_counts(
        r.get("aligner_candidate") for r in rows
    )
    return summary


def _quality_summary(units: list[dict]) -> dict:
    """Quality of the selected generator checkpoints, averaged over folds and seeds, overall and per class."""
    collected: dict[str, list[dict]] = defaultdict(list)
    for unit in units:
        for variant, quality in unit["final_quality"].items():
            collected[variant].append(quality)
    summary = {}
    for variant, qualities in collected.items():
        entry = {key: _mean([q.get(key) for q in qualities]) for key in QUALITY_KEYS}
        classes = list(qualities[0]["per_class"])
        entry["per_class"] = {
            name: {
                k: _mean([q["per_class"][name][k] for q in qualities])
                for k in ("frechet_distance", "precision", "recall")
            }
            for name in classes
        }
        entry["n"] = len(qualities)
        summary[variant] = entry
    return summary


def _imbalance(summaries: dict, units: list[dict], study_args: StudyArguments) -> dict | None:
    name = study_args.imbalance_class
    if name is None:
        return None
    recall = {v: s["per_class_recall_pooled"].get(name) for v, s in summaries.items()}
    full, cut = recall.get("none_full_data"), recall.get("none")
    recovered = {}
    for variant in ("mise_proportional", "mise_balanced", "mise"):
        if variant in recall and None not in (full, cut, recall[variant]) and full > cut:
            recovered[variant] = (recall[variant] - cut) / (full - cut)
    seen = {}
    for unit in units:
        seen.setdefault(unit["fold"], unit["imbalance_counts"])
    return {
        "class": name,
        "keep": study_args.imbalance_keep,
        "training_clips_per_fold": seen,
        "recall_pooled": recall,
        "recovered_fraction": recovered,
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _environment_line(environment: dict | None) -> list[str]:
    """study.md's line on the numeric environment (none for a study written before it was recorded)."""
    text = environment_text(environment)
    return [f"- environment: {text}"] if text else []


def _markdown(report: dict, id2label: dict) -> str:
    info, variants = report["info"], report["variants"]
    lines = [
        "# MISE comparison study",
        "",
        f"- command: `{info['command']}`",
        f"- date: {info['date']}, commit: `{info['commit']}`",
        *_environment_line(info.get("environment")),
        f"- corpus: {info['corpus'].get('clips')} clips, {info['corpus'].get('speakers')} speakers; "
        f"folds: {len(info['folds'])} ({info['config']['protocol']}); seeds: {report['seeds']}",
        f"- encoders: {info['config']['audio_encoder']} + {info['config']['text_encoder']}; "
        f"training time {info['unit_seconds'] / 60:.1f} min ({info['world_size']} process(es))",
        "",
        "UAR mean ± std over folds (each fold averaged over seeds); pooled = over the concatenated test predictions "
        "of all folds, averaged over seeds. p: two-sided paired Wilcoxon signed-rank test against `none` across "
        "folds. All numbers in %.",
        "",
        "| variant | what | UAR mean ± std | pooled UAR | pooled WA | pooled macro-F1 | Δ pooled UAR vs none | p vs none | chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in variants.items():
        test = s.get("wilcoxon_vs_none")
        delta = s.get("delta_uar_pooled_vs_none")
        ratio = s.get("generated_ratio_chosen")
        what, counts = ("ratio", ratio) if ratio else ("C", s.get("classic_c_chosen"))
        choices = [(what, counts), ("stage 1", s.get("aligner_candidate_chosen"))]
        chosen = "; ".join(
            f"{what} {', '.join(f'{k}×{v}' for k, v in counts.items())}" for what, counts in choices if counts
        )
        chosen = chosen or "–"
        lines.append(
            f"| {name} | {VARIANTS[name].description} | {_pct(s['uar_mean'])} ± {_pct(s['uar_std'])} | "
            f"{_pct(s['uar_pooled'])} | {_pct(s['wa_pooled'])} | {_pct(s['f1_macro_pooled'])} | "
            f"{'–' if delta is None else f'{100 * delta:+.1f}'} | "
            f"{'–' if test is None else format(test['p_value'], '.3g')} | "
            f"{chosen} |"
        )
    same = {
        name: s["same_predictions_as_none"]
        for name, s in variants.items()
        if s.get("same_predictions_as_none") is not None
    }
    if same:
        lines += [
            "",
            "Test clips predicted as `none` predicts them (every seed and fold): "
            + ", ".join(f"{name} {_pct(value)}" for name, value in same.items())
            + ".",
        ]
    if report["quality"]:
        lines += [
            "",
            "## Quality of generated features (selected checkpoints, mean over folds and seeds)",
            "",
            "MI bounds in nats from a probe trained on real training features only; Fréchet distance and k-NN "
            "precision/recall (k = 5) between real and generated training-speaker features.",
            "",
            "| generator | I(y; ĥ) | I(t; ĥ) | Fréchet distance | precision | recall |",
            "|---|---|---|---|---|---|",
        ]
        for name, q in report["quality"].items():
            cells = [("–" if q[k] is None else f"{q[k]:.3f}") for k in QUALITY_KEYS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    imbalance = report.get("imbalance")
    if imbalance:
        lines += [
            "",
            f"## Class imbalance: `{imbalance['class']}` cut to {100 * imbalance['keep']:.0f}% of its training clips",
            "",
            "| variant | pooled recall of the cut class |",
            "|---|---|",
        ]
        for name, value in imbalance["recall_pooled"].items():
            lines.append(f"| {name} | {_pct(value)} |")
        for name, value in imbalance["recovered_fraction"].items():
            lines.append(f"\n{name} recovers {100 * value:.0f}% of the recall lost by the cut.")
    if report["figures"]:
        lines += ["", "## Figures", ""] + [f"- [{Path(p).name}]({p})" for p in report["figures"]]
    return "\n".join(lines) + "\n"


def _figures(
    output_dir: Path, report: dict, units: list[dict], id2label: dict, study_args: StudyArguments
) -> list[str]:
    from mise.plots import (
        plot_confusion_matrix,
        plot_feature_map,
        plot_precision_recall_steps,
        plot_quality_curves,
        plot_study_bars,
    )

    figures = output_dir / "figures"
    written = []
    variants = report["variants"]
    reference = STUDY_REFERENCE if STUDY_REFERENCE in variants else None
    written.append(plot_study_bars(variants, figures / "study_uar.png", reference=reference,
                                   title="UAR per variant (bars: mean ± std over folds; diamonds: pooled)"))  # fmt: skip
    for name, summary in variants.items():
        written.append(
            plot_confusion_matrix(
                summary["confusion_matrix_pooled"],
                id2label,
                figures / f"confusion_{name}.png",
                title=f"{name}: pooled confusion (recall per true class)",
            )  # fmt: skip
        )
    records = [record for unit in units for record in unit["quality"]]
    if records:
        written.append(plot_quality_curves(records, figures / "quality_vs_step.png",
                                           title="generated-feature quality per generator checkpoint"))  # fmt: skip
    if any(record.get("recall") is not None for record in records):
        written.append(plot_precision_recall_steps(records, figures / "precision_recall_vs_step.png",
                                                   title="k-NN precision and recall of each generator (star: "
                                                   "its chosen checkpoint)"))  # fmt: skip
    rng = np.random.default_rng(0)
    half = study_args.map_max_points // 2
    for path in sorted((output_dir / "runs" / "maps" / f"seed-{study_args.seeds[0]}").glob("*.npz")):
        if path.stem not in study_args.variants:  # a unit's map of a variant this report leaves out
            continue
        data = np.load(path)
        real = rng.permutation(len(data["real"]))[:half]
        generated = rng.permutation(len(data["generated"]))[:half]
        name = path.stem
        methods = ("pca", "tsne") if name in MAP_VARIANTS_TSNE else ("pca",)
        for method in methods:
            written.append(
                plot_feature_map(
                    data["real"][real],
                    data["real_labels"][real],
                    data["generated"][generated],
                    data["generated_labels"][generated],
                    id2label,
                    figures / f"map_{method}_{name}.png",
                    method=method,
                    title=f"{name}: real vs generated, {method.upper()} (first fold, first seed)",
                )  # fmt: skip
            )
    imbalance = report.get("imbalance")
    if imbalance:
        bars = {}
        for name, unit_rows in _rows_by_variant(units).items():
            values = [row["per_class_recall"][imbalance["class"]] for row in unit_rows]
            values = [v for v in values if v is not None]
            pooled = imbalance["recall_pooled"].get(name)
            if values and pooled is not None:
                bars[name] = {
                    "recall_mean": float(np.mean(values)),
                    "recall_std": _std(values),
                    "recall_pooled": pooled,
                }
        if bars:
            written.append(plot_study_bars(bars, figures / "imbalance_recall.png", metric="recall",
                                           reference=STUDY_REFERENCE if STUDY_REFERENCE in bars else None,
                                           title=f"recall of the cut class {imbalance['class']!r}"))  # fmt: skip
    return [str(Path(p).relative_to(output_dir)) for p in written]


def same_predictions(rows: list[dict], reference: list[dict]) -> float | None:
    """The fraction of test clips, over every (seed, fold), that `rows` predict as the `reference` rows do."""
    theirs = {(row["seed"], row["fold"]): row["y_pred"] for row in reference}
    pairs = [
        (row["y_pred"], theirs[row["seed"], row["fold"]])
        for row in rows
        if (row["seed"], row["fold"]) in theirs
    ]
    total = sum(len(ours) for ours, _ in pairs)
    same = sum(int(np.sum(np.asarray(ours) == np.asarray(other))) for ours, other in pairs)
    return same / total if total else None


def _rows_by_variant(units: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for unit in units:
        for row in unit["rows"]:
            grouped[row["variant"]].append(row)
    return grouped


def write_report(
    output_dir: Path, units: list[dict], study_args: StudyArguments, id2label: dict, info: dict
) -> dict:
    """Write study.csv, study.json, study.md, quality.json and the figures; return the study.json content."""
    output_dir = Path(output_dir)
    folds = [fold["name"] for fold in info["folds"]]
    grouped = _rows_by_variant(units)
    num_labels = len(id2label)
    variants = {}
    for name in study_args.variants:
        variants[name] = {
            "description": VARIANTS[name].description,
            **summarize_variant(grouped[name], folds, study_args.seeds, num_labels, id2label),
        }
    if STUDY_REFERENCE in variants:
        reference = variants[STUDY_REFERENCE]
        for name, summary in variants.items():
            if name == STUDY_REFERENCE:
                continue
            ours = [summary["uar_by_fold"][f] for f in folds]
            theirs = [reference["uar_by_fold"][f] for f in folds]
            summary["wilcoxon_vs_none"] = paired_wilcoxon(ours, theirs)
            summary["delta_uar_pooled_vs_none"] = summary["uar_pooled"] - reference["uar_pooled"]
            summary["same_predictions_as_none"] = same_predictions(grouped[name], grouped[STUDY_REFERENCE])
    info = {
        **info,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": numeric_environment(),
    }
    report = {
        "info": info,
        "seeds": list(study_args.seeds),
        "folds": folds,
        "variants": variants,
        "quality": _quality_summary(units),
        "imbalance": _imbalance(variants, units, study_args),
        "figures": [],
    }
    with open(output_dir / "study.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for unit in units:
            writer.writerows(unit["rows"])
    quality = [record for unit in units for record in unit["quality"]]
    (output_dir / "quality.json").write_text(json.dumps(quality, indent=1))
    if study_args.figures:
        report["figures"] = _figures(output_dir, report, units, id2label, study_args)
    (output_dir / "study.json").write_text(json.dumps(report, indent=2))
    (output_dir / "study.md").write_text(_markdown(report, id2label))
    return report
