"""Figures of a MISE study (SPEC §3 "reports people would rather look at than read"), written as PNG files.

Every function draws on its own `matplotlib.figure.Figure` (rendered by the Agg canvas), so importing this
module never changes the pyplot backend of the caller. Class names always come from `id2label`.
Needs the `train` extra (`matplotlib`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "QUALITY_METRICS",
    "plot_confusion_matrix",
    "plot_cross_corpus",
    "plot_feature_map",
    "plot_precision_recall_steps",
    "plot_quality_curves",
    "plot_study_bars",
    "save_figure",
]

QUALITY_METRICS = {
    "mi_emotion_nats": "emotion MI bound I(y; h) [nats] ↑",
    "mi_text_nats": "text MI bound I(t; h) [nats] ↑",
    "frechet_distance": "Fréchet distance ↓",
    "precision": "k-NN precision ↑",
    "recall": "k-NN recall ↑",
}


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write `figure` as a PNG at `path` (folders created): every figure of this module ends here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _class_names(id2label: Mapping[int, str], num_labels: int) -> list[str]:
    names = []
    for index in range(num_labels):
        name = id2label.get(index, id2label.get(str(index)))  # JSON round trips turn keys into strings
        if name is None:
            raise ValueError(f"id2label: no name for class id {index}")
        names.append(str(name))
    return names


def _colours(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def plot_quality_curves(records: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Quality of generated features against the generator's training step, one line per variant.

    `records` are generator evaluations, each `{"variant", "step", <metric>: float | None, ...}` for the
    metrics of `QUALITY_METRICS`; records of several folds / seeds at the same step are averaged and their
    standard deviation shaded. A metric nobody reported is left out.
    """
    if not records:
        raise ValueError("records: no generator evaluations to plot")
    metrics = [m for m in QUALITY_METRICS if any(r.get(m) is not None for r in records)]
    if not metrics:
        raise ValueError(f"records: none holds any of {list(QUALITY_METRICS)}")
    variants = sorted({str(r["variant"]) for r in records})
    colours = dict(zip(variants, _colours(len(variants)), strict=True))
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in grid[len(metrics) :]:
        axis.set_visible(False)
    axes = grid[: len(metrics)]
    for axis, metric in zip(axes, metrics, strict=True):
        for variant in variants:
            by_step: dict[int, list[float]] = defaultdict(list)
            for record in records:
                if str(record["variant"]) == variant and record.get(metric) is not None:
                    by_step[int(record["step"])].append(float(record[metric]))
            if not by_step:
                continue
            steps = np.array(sorted(by_step))
            mean = np.array([np.mean(by_step[s]) for s in steps])
            std = np.array([np.std(by_step[s]) for s in steps])
            axis.plot(steps, mean, marker="o", markersize=3, color=colours[variant], label=variant)
            axis.fill_between(steps, mean - std, mean + std, color=colours[variant], alpha=0.15)
        axis.set_title(QUALITY_METRICS[metric], fontsize=10)
        axis.set_xlabel("generator step")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def _generator_curves(records: Sequence[Mapping[str, Any]], metric: str) -> dict[str, dict[tuple, list]]:
    """variant -> (seed, fold) -> that generator's `(step, value, selected)` checkpoints of `metric`, by step."""
    curves: dict[str, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.get(metric) is not None:
            key = (record.get("seed"), record.get("fold"))
            point = (int(record["step"]), float(record[metric]), bool(record.get("selected")))
            curves[str(record["variant"])][key].append(point)
    return {
        variant: {key: sorted(points) for key, points in by_key.items()} for variant, by_key in curves.items()
    }


def plot_precision_recall_steps(
    records: Sequence[Mapping[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """k-NN precision and recall of every generator against its training step, its chosen checkpoint marked.

    `records` are generator evaluations `{"variant", "seed", "fold", "step", "precision", "recall", "selected"}`
    (the study's `quality.json`). One panel per metric; per variant a thin line per generator (seed, fold), a
    thick line at the mean over generators per step (labelled with the variant), and a star on each generator's
    chosen checkpoint (`selected`).
    """
    metrics = [m for m in ("precision", "recall") if any(r.get(m) is not None for r in records)]
    if not metrics:
        raise ValueError("records: no generator evaluation has k-NN precision or recall")
    variants = sorted({str(r["variant"]) for r in records if r.get(metrics[0]) is not None})
    colours = dict(zip(variants, _colours(len(variants)), strict=True))
    figure = Figure(figsize=(5.2 * len(metrics), 4.0), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(metrics)))
    for axis, metric in zip(axes, metrics, strict=True):
        for variant, generators in _generator_curves(records, metric).items():
            colour = colours[variant]
            for points in generators.values():
                steps, values, _ = zip(*points, strict=True)
                axis.plot(steps, values, color=colour, alpha=0.25, lw=0.8, label="_generator")
            by_step: dict[int, list[float]] = defaultdict(list)
            for step, value, _ in (point for points in generators.values() for point in points):
                by_step[step].append(value)
            steps = sorted(by_step)
            axis.plot(steps, [np.mean(by_step[s]) for s in steps], color=colour, lw=2.2, label=variant)
            chosen = [(step, value) for points in generators.values() for step, value, kept in points if kept]
            if chosen:
                axis.scatter(*zip(*chosen, strict=True), marker="*", s=90, color=colour, edgecolor="black",
                             linewidth=0.6, zorder=3, label=f"{variant}: chosen checkpoint")  # fmt: skip
        axis.set_title(QUALITY_METRICS[metric], fontsize=10)
        axis.set_xlabel("generator step")
        axis.set_ylim(-0.03, 1.03)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def _embed(values: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(values)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(values) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            values
        )
    raise ValueError(f"method: must be 'pca' or 'tsne', got {method!r}")


def plot_feature_map(
    real: Any,
    real_labels: Any,
    generated: Any,
    generated_labels: Any,
    id2label: Mapping[int, str],
    path: str | Path,
    method: str = "pca",
    title: str = "",
    seed: int = 0,
) -> Path:
    """Real (dots) and generated (crosses) features in 2-D, coloured by emotion.

    One projection (`method` `pca` or `tsne`) is fitted on real and generated rows together, so distances
    between the two sets mean the same in the picture.
    """
    real, generated = np.asarray(real, dtype=np.float64), np.asarray(generated, dtype=np.float64)
    real_labels, generated_labels = np.asarray(real_labels), np.asarray(generated_labels)
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(
            f"real/generated: need (N, D) and (M, D) arrays, got {real.shape} and {generated.shape}"
        )
    if len(real_labels) != len(real) or len(generated_labels) != len(generated):
        raise ValueError("real_labels/generated_labels: one label per row is needed")
    num_labels = int(max(real_labels.max(initial=0), generated_labels.max(initial=0))) + 1
    names = _class_names(id2label, max(num_labels, len(id2label)))
    points = _embed(np.concatenate([real, generated]), method, seed)
    real_points, generated_points = points[: len(real)], points[len(real) :]
    colours = _colours(len(names))
    figure = Figure(figsize=(6.4, 5.4), layout="constrained")
    axis = figure.subplots()
    for index, name in enumerate(names):
        mask = real_labels == index
        axis.scatter(*real_points[mask].T, s=14, color=colours[index], alpha=0.75, label=name)
        mask = generated_labels == index
        axis.scatter(*generated_points[mask].T, s=18, color=colours[index], alpha=0.6, marker="x")
    axis.scatter([], [], s=14, color="grey", label="real (dot)")
    axis.scatter([], [], s=18, color="grey", marker="x", label="generated (cross)")
    axis.legend(fontsize=7, loc="best", ncols=2)
    axis.set_title(title or f"real vs generated features ({method.upper()})", fontsize=10)
    axis.set_xticks([])
    axis.set_yticks([])
    return save_figure(figure, path)


def plot_confusion_matrix(
    matrix: Any, id2label: Mapping[int, str], path: str | Path, title: str = "", normalize: bool = True
) -> Path:
    """A confusion matrix (rows = true class, columns = predicted), as row-normalised recall by default."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"matrix: expected a square matrix, got shape {counts.shape}")
    names = _class_names(id2label, counts.shape[0])
    values = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None) if normalize else counts
    size = 1.0 + 0.65 * len(names)
    figure = Figure(figsize=(size + 1.2, size), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(names)), names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = values.max() / 2 if values.size else 0
    for (row, column), value in np.ndenumerate(values):
        text = f"{value:.2f}" if normalize else f"{int(value)}"
        colour = "white" if value > threshold else "black"
        axis.text(column, row, text, ha="center", va="center", fontsize=7, color=colour)
    axis.set_title(title, fontsize=10)
    return save_figure(figure, path)


def plot_study_bars(
    summary: Mapping[str, Mapping[str, float]],
    path: str | Path,
    reference: str | None = None,
    title: str = "",
    metric: str = "uar",
) -> Path:
    """The study table as bars: `<metric>_mean` ± `<metric>_std` over folds, with `<metric>_pooled` marked.

    `summary` maps variant -> its summary dict (values as fractions); `reference` draws a dashed line at that
    variant's pooled value (e.g. no augmentation).
    """
    if not summary:
        raise ValueError("summary: no variants to plot")
    variants = list(summary)
    for variant in variants:
        for key in (f"{metric}_mean", f"{metric}_std", f"{metric}_pooled"):
            if summary[variant].get(key) is None:
                raise ValueError(f"summary[{variant!r}]: missing {key!r}")
    name = metric.upper() if len(metric) <= 3 else metric  # UAR, WA; longer names as they are
    means = np.array([summary[v][f"{metric}_mean"] for v in variants]) * 100
    stds = np.array([summary[v][f"{metric}_std"] for v in variants]) * 100
    pooled = np.array([summary[v][f"{metric}_pooled"] for v in variants]) * 100
    figure = Figure(figsize=(max(6.5, 1.0 + 0.9 * len(variants)), 4.6), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(len(variants))
    axis.bar(
        positions,
        means,
        yerr=stds,
        capsize=4,
        color=_colours(len(variants)),
        alpha=0.85,
        label=f"{name} mean ± std over folds",
    )
    axis.scatter(positions, pooled, marker="D", color="black", zorder=3, label=f"pooled {name}")
    for x, value, top in zip(positions, pooled, np.maximum(means + stds, pooled), strict=True):
        axis.annotate(
            f"{value:.1f}", (x, top), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8
        )
    if reference is not None:
        if reference not in summary:
            raise ValueError(f"reference: {reference!r} is not one of the variants {variants}")
        axis.axhline(
            summary[reference][f"{metric}_pooled"] * 100,
            ls="--",
            color="grey",
            lw=1,
            label=f"{reference} (pooled)",
        )
    axis.set_xticks(positions, variants, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel(f"{name} [%]")
    low = max(0.0, float(np.min(means - stds)) - 10)
    axis.set_ylim(low, min(100.0, float(np.max(np.maximum(means + stds, pooled))) + 8))
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=3, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


def plot_cross_corpus(
    matrices: Mapping[str, Any], corpora: Sequence[str], path: str | Path, chance: float | None = None
) -> Path:
    """Cross-corpus UAR heat maps, one panel per method: rows = training corpus, columns = test corpus
    (NaN cells, e.g. the diagonal, are left blank)."""
    if not matrices:
        raise ValueError("matrices: nothing to plot")
    names = list(corpora)
    figure = Figure(figsize=(0.6 + 2.6 * len(matrices), 1.4 + 0.55 * len(names)), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(matrices)))
    image = None
    for axis, (title, matrix) in zip(axes, matrices.items(), strict=True):
        values = np.asarray(matrix, dtype=np.float64) * 100
        if values.shape != (len(names), len(names)):
            raise ValueError(
                f"matrices[{title!r}]: expected shape {(len(names), len(names))}, got {values.shape}"
            )
        image = axis.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100)
        for (row, column), value in np.ndenumerate(values):
            if np.isfinite(value):
                axis.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=8, color="white")
        axis.set_xticks(range(len(names)), names, fontsize=8)
        axis.set_yticks(range(len(names)), names, fontsize=8)
        axis.set_xlabel("test corpus", fontsize=8)
        axis.set_title(title, fontsize=8)
    axes[0].set_ylabel("training corpus", fontsize=8)
    bar = figure.colorbar(image, ax=list(axes), fraction=0.03, pad=0.02)
    bar.set_label("UAR [%]" + (f" (chance {100 * chance:.1f})" if chance else ""), fontsize=8)
    return save_figure(figure, path)
