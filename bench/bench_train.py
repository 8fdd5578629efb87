"""Benchmark of training on RAVDESS: the feature stage, the full leave-one-speaker-out run, a study seed, scaling.

    python bench/bench_train.py [--only features train study scale seeds] [--baseline_repo PATH] [--num_processes N]
                                [--output_dir runs/bench] [--key value ...]

Parts (all by default; `--only` picks some, e.g. `--only train`):
- `features`: the feature stage of `training/configs/mise.yaml` (ComParE_2016 + MiniLM) with an empty cache (the
  first extraction), then warm (corpus scan, cache look-up, loading the cached features; target <= 2 s); the
  classic baseline on the same features and folds.
- `train`: `training/train.py` with the shipped RAVDESS config on the warm cache: 24 folds + final models, on
  `--num_processes` processes (whole folds each; target <= 90 s wall), with its peak memory and where its time goes
  (each stage's seconds summed over the folds, against the target).
- `study`: one seed of `training/study.py` with `training/configs/mise.yaml` + `study.yaml` (all variants, 24 folds,
  ComParE_2016; target <= 300 s wall, peak memory < 2 GB), with each variant's seconds summed over the units.
- `seeds`: the shipped config on RAVDESS and Emo-DB (`--seed_runs corpus:regime ...`, per-speaker `auto` and global
  `false`), all folds, seeds 0, 1, 2, no final models (one process), here and in `--baseline_repo`: where an
  optimisation changes the arithmetic, the 3-seed comparison of pooled UAR.
- `scale`: the first two folds at 1x, 2x and 4x the clips (the manifest repeated, same speakers), eGeMAPS and
  ComParE_2016 features: how time and memory grow.
- `stage2`: where stage 2's time goes: one InfoGAN step (D step + G step) of the shipped config at the shapes of a
  RAVDESS fold, at the shipped batch size and at 1/8 of it; the fixed cost per step (at 0 rows: what batching the
  folds' models into one could share) and the step's matrix-product FLOPs (`torch.utils.flop_counter`) at the rate
  this machine reaches on one product of those sizes.

`--baseline_repo PATH` (a checkout of an earlier commit, e.g. `git worktree add /tmp/base <commit>`) runs the
`train` and `study` commands there too, on as many processes, in the same run: the ratio of wall times and whether the
fold metrics are identical. Extra `--key value` arguments go to every training and study command (e.g.
`--max_folds 4` for a shorter look; the targets are for the full workload). Prints a table, writes
`OUT/bench.json` and `OUT/bench.md` (the speed table of docs/speed.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = REPO / "training" / "configs" / "mise.yaml"
STUDY_CONFIGS = [REPO / "training" / "configs" / name for name in ("mise.yaml", "study.yaml")]
CORPUS = (
    REPO / "training" / "configs" / "corpora" / "ravdess.yaml"
)  # where the clips are and what columns mean
DATA = REPO.parent / "shared" / "data" / "ravdess"
TARGETS = {"warm_features_s": 2.0, "train_wall_s": 90.0, "study_seed_wall_s": 300.0, "peak_rss_gb": 2.0}
PARTS = ("features", "train", "study", "scale", "seeds", "stage2")
SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------------------------- features
def feature_stage(config: Path, data_dir: str, cache_dir: str, extra: list[str]) -> dict:
    """The feature stage of `training/train.py` (`prepare_features`, same arguments): corpus scan, cache look-up,
    decoding of the misses, extraction; returns its wall time (encoders loaded in it) and the cache statistics."""
    from accelerate import Accelerator

    from training.arguments import parse_arguments
    from training.features import prepare_features

    arguments = [
        str(config),
        str(CORPUS),
        "--output_dir",
        tempfile.mkdtemp(),
        "--cache_dir",
        cache_dir,
        *extra,
    ]
    data_args, model_args, training_args = parse_arguments([*arguments, "--data_dir", data_dir])
    accelerator = Accelerator()
    start = time.perf_counter()
    prepared = prepare_features(data_args, model_args, Path(training_args.output_dir), accelerator)
    return {
        "seconds": time.perf_counter() - start,
        "decoded": prepared.decoded,
        "cache": prepared.features.cache_stats,
        "corpus": prepared.corpus,
        "features": prepared.features,
        "data_args": data_args,
        "seed": training_args.seed,
    }


def classic_baseline_uar(corpus, features, data_args, seed: int) -> dict:
    """SPEC §5's reference on the same features and folds: standardised logistic regression (C=1), pooled UAR,
    on globally standardised features and on per-speaker normalised ones (what `speaker_normalization` feeds
    the folds)."""
    import numpy as np

    from mise.metrics import classification_metrics
    from training.features import speaker_normalized
    from training.pipeline import build_folds
    from training.study_variants import classic_baseline

    labels, speakers = corpus.labels(), corpus.speakers()
    folds = build_folds(data_args, corpus, seed)  # the folds training used, whatever the protocol
    result = {}
    for name, audio in (
        ("global", features.audio),
        ("speaker", speaker_normalized(features, speakers).audio),
    ):
        x, true, pred = audio.numpy(), [], []
        for fold in folds:
            train = np.concatenate([fold.train, fold.validation])
            true.append(labels[fold.test])
            pred.append(classic_baseline(x, labels, train, fold.test))
        metrics = classification_metrics(np.concatenate(true), np.concatenate(pred), len(corpus.id2label))
        result[f"uar_pooled_{name}_normalization"] = metrics["uar"]
    return result


def bench_features(args, cache_dir: str, extra: list[str]) -> dict:
    """Cold then warm feature stage of the RAVDESS config, and the classic baseline on its features."""
    empty = not any(Path(cache_dir).iterdir())
    cold_cache = cache_dir if empty else tempfile.mkdtemp(prefix="mise-bench-cold-")
    cold = feature_stage(args.config, args.data_dir, cold_cache, extra)
    assert cold["cache"]["audio"]["hits"] == 0, "the first extraction must start from an empty cache"
    warm = feature_stage(args.config, args.data_dir, cold_cache, extra)
    return {
        "first_extraction_s": cold["seconds"],
        "warm_features_s": warm["seconds"],
        "warm_decoded_clips": warm["decoded"],
        "warm_cache": warm["cache"],
        "clips": len(warm["corpus"]),
        "classic_baseline": classic_baseline_uar(
            warm["corpus"], warm["features"], warm["data_args"], warm["seed"]
        ),
    }


# ---------------------------------------------------------------------------------------------- runs
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(repo: Path, script: str, arguments: list[str], processes: int, log: Path) -> dict:
    """Run `script` of `repo` on `processes` processes; wall time and peak resident memory of the process tree."""
    import psutil

    command = [sys.executable, script, *arguments]
    env = dict(os.environ, PYTHONPATH=str(repo), HF_HUB_OFFLINE="1")
    if processes > 1:
        import torch

        if not torch.cuda.is_available():
            env["ACCELERATE_USE_CPU"] = "true"
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), script, *arguments,
        ]  # fmt: skip
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=repo, env=env, stdout=handle, stderr=subprocess.STDOUT)
        peak, root = 0, psutil.Process(process.pid)
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}); see {log}")
    return {
        "wall_s": wall,
        "peak_rss_gb": peak / 2**30,
        "processes": processes,
        "load_average_1_5_15_min_at_end": os.getloadavg(),  # other jobs on the machine slow every number
        "command": " ".join(command),
    }


def fold_predictions(output_dir: Path) -> dict[str, list[int]]:
    """Test predictions per fold of a `train.py` run."""
    return {
        path.parent.name: json.loads(path.read_text())["y_pred"]
        for path in sorted((output_dir / "folds").glob("*/metrics.json"))
    }


def study_predictions(output_dir: Path) -> list[tuple]:
    """(variant, seed, fold, UAR) rows of a study, sorted."""
    with open(output_dir / "study.csv") as handle:
        return sorted((r["variant"], r["seed"], r["fold"], r["uar"]) for r in csv.DictReader(handle))


def stage_seconds(output_dir: Path) -> dict[str, float]:
    """Seconds per stage of a `train.py` run, summed over its folds (`folds/*/metrics.json` -> `stages`, and after a
    refit `stages.selection` too: a stage's time is its selection's and its refit's)."""
    totals: dict[str, float] = {}
    for path in sorted((output_dir / "folds").glob("*/metrics.json")):
        stages = json.loads(path.read_text())["stages"]
        for records in (stages, stages.get("selection", {})):
            for stage, record in records.items():
                if stage != "selection":
                    totals[stage] = totals.get(stage, 0.0) + record["seconds"]
    return totals


def variant_seconds(output_dir: Path) -> dict[str, float]:
    """Seconds per variant of a study, summed over its (seed, fold) units (`runs/seed-*/*.json` -> rows)."""
    totals: dict[str, float] = {}
    for path in sorted((output_dir / "runs").glob("seed-*/*.json")):
        for row in json.loads(path.read_text())["rows"]:
            totals[row["variant"]] = totals.get(row["variant"], 0.0) + row["seconds"]
    return totals


def bench_train(args, cache_dir: str, extra: list[str]) -> dict:
    """The full run of the shipped config on the warm cache, here (and in the baseline checkout)."""
    common = ["--data_dir", args.data_dir, "--cache_dir", cache_dir, "--report_to", "none"]
    common += ["--overwrite_output_dir", "true", *extra]
    out = Path(args.output_dir) / "train"
    result = launch(REPO, "training/train.py", [str(args.config), str(CORPUS), *common, "--output_dir", str(out)],
                    args.num_processes, Path(args.output_dir) / "train.log")  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    result.update(
        {key: summary[key] for key in ("n_folds", "uar_pooled", "uar_mean", "uar_std", "wa_pooled")}
    )
    result.update(f1_macro_pooled=summary["f1_macro_pooled"], aligner_uar_mean=summary["aligner_uar_mean"])
    result.update(stage_seconds=stage_seconds(out), seconds=summary["seconds"])
    if args.baseline_repo:
        base_out = Path(args.output_dir) / "train-baseline"
        configs = [str(Path(args.baseline_repo) / path.relative_to(REPO)) for path in (args.config, CORPUS)]
        baseline = launch(args.baseline_repo, "training/train.py", [*configs, *common, "--output_dir",
                          str(base_out)], args.num_processes, Path(args.output_dir) / "train-baseline.log")  # fmt: skip
        baseline["uar_pooled"] = json.loads((base_out / "summary.json").read_text())["uar_pooled"]
        baseline["identical_predictions"] = fold_predictions(base_out) == fold_predictions(out)
        result["baseline"] = baseline
    return result


def bench_study(args, cache_dir: str, extra: list[str]) -> dict:
    """One seed of the study (all variants), here (and in the baseline checkout)."""
    common = ["--data_dir", args.data_dir, "--cache_dir", cache_dir, "--seeds", "0"]
    common += ["--figures", "false", "--overwrite_output_dir", "true", *extra]
    out = Path(args.output_dir) / "study"
    configs = [str(path) for path in (*STUDY_CONFIGS, CORPUS)]
    result = launch(REPO, "training/study.py", [*configs, *common, "--output_dir", str(out)], args.num_processes,
                    Path(args.output_dir) / "study.log")  # fmt: skip
    result["units"] = len(list((out / "runs" / "seed-0").glob("*.json")))
    result["variant_seconds"] = variant_seconds(out)
    if args.baseline_repo:
        base_out = Path(args.output_dir) / "study-baseline"
        configs = [
            str(Path(args.baseline_repo) / path.relative_to(REPO)) for path in (*STUDY_CONFIGS, CORPUS)
        ]
        baseline = launch(args.baseline_repo, "training/study.py", [*configs, *common, "--output_dir",
                          str(base_out)], args.num_processes, Path(args.output_dir) / "study-baseline.log")  # fmt: skip
        baseline["identical_results"] = study_predictions(base_out) == study_predictions(out)
        result["baseline"] = baseline
    return result


def bench_seeds(args, cache_dir: str, extra: list[str]) -> dict:
    """Where an optimisation changes the arithmetic: the shipped config at 3 seeds, all folds, no final models, for
    every `--seed_runs` corpus:regime (`auto` or `false`, the `speaker_normalization`), here and in
    `--baseline_repo` (one process each); pooled UAR per seed. A run whose `summary.json` exists in
    `OUT/seeds[-baseline]/<corpus>-<regime>-s<seed>` is read, not rerun (its `card.json` names its commit)."""
    result = {}
    repos = {"current": REPO, **({"baseline": args.baseline_repo} if args.baseline_repo else {})}
    for pair in args.seed_runs:
        corpus, regime = pair.split(":")
        rows = {}
        for name, repo in repos.items():
            for seed in SEEDS:
                folder = "seeds" if name == "current" else "seeds-baseline"
                out = Path(args.output_dir) / folder / f"{corpus}-{regime}-s{seed}"
                if not (out / "summary.json").is_file():
                    configs = Path(repo) / "training" / "configs"  # each version with its own config files
                    arguments = [str(configs / CONFIG.name), str(configs / "corpora" / f"{corpus}.yaml"),
                                 "--data_dir", str(DATA.parent / corpus), "--cache_dir", cache_dir,
                                 "--speaker_normalization", regime, "--final_models", "false", "--report_to",
                                 "none", "--seed", str(seed), "--overwrite_output_dir", "true", "--output_dir",
                                 str(out), *extra]  # fmt: skip
                    launch(Path(repo), "training/train.py", arguments, 1, out.with_suffix(".log"))
                summary = json.loads((out / "summary.json").read_text())
                commit = json.loads((out / "card.json").read_text()).get("commit")
                rows.setdefault(name, []).append(
                    {"seed": seed, "uar_pooled": summary["uar_pooled"], "commit": commit}
                )
        result[f"{corpus}, speaker_normalization {regime}"] = rows
    return result


def bench_scale(args, cache_dir: str, extra: list[str]) -> list[dict]:
    """Two folds (no final models) at `--scale_factors` times the clips (1x, 2x, 4x), eGeMAPS and ComParE_2016
    (`--scale_encoders`), on one process."""
    with open(Path(args.data_dir) / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["path"] = str(Path(args.data_dir) / row["path"])
    results = []
    for encoder in args.scale_encoders:
        for factor in args.scale_factors:
            manifest = Path(args.output_dir) / f"manifest-x{factor}.csv"
            with open(manifest, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows * factor)
            out = Path(args.output_dir) / f"scale-{encoder.split('/')[1]}-x{factor}"
            arguments = [str(args.config), "--dataset", str(manifest), "--cache_dir", cache_dir,
                         "--audio_encoder", encoder, "--max_folds", "2", "--final_models", "false",
                         "--report_to", "none", "--overwrite_output_dir", "true", "--output_dir", str(out), *extra]  # fmt: skip
            run = launch(REPO, "training/train.py", arguments, 1, out.with_suffix(".log"))
            summary = json.loads((out / "summary.json").read_text())
            results.append(
                {"encoder": encoder, "clips": len(rows) * factor, "n_folds": summary["n_folds"], **run,
                 "seconds": summary["seconds"]}
            )  # fmt: skip
    return results


# ---------------------------------------------------------------------------------------------- report
def _mean_uar(runs: list[dict]) -> float:
    return 100 * sum(run["uar_pooled"] for run in runs) / len(runs)


def _seed_cell(runs: list[dict]) -> str:
    """`mean (per seed; commit)` of one version's 3-seed runs."""
    per_seed = ", ".join(f"{100 * run['uar_pooled']:.1f}" for run in runs)
    commits = "/".join(sorted({str(run.get("commit")) for run in runs}))
    return f"{_mean_uar(runs):.1f} ({per_seed}; at {commits})"


def bench_stage2(args, cache_dir: str, extra: list[str]) -> dict:
    """One stage-2 step of the shipped config at RAVDESS fold shapes (630 training rows of z_a and text codes in the
    `projection_dim` space, 8 classes; the values are random unit vectors, as the arithmetic does not depend on
    them), on `training_threads` threads: milliseconds per step at the shipped batch size and at 1/8 of it, the fixed
    cost per step (the line through the two, at 0 rows: dispatch, Python, autograd bookkeeping, which batching the
    folds' models into one would share), and the step's matrix-product FLOPs at the rate one product of the D
    trunk's shape reaches here."""
    import torch

    from training.arguments import parse_arguments

    arguments = [str(args.config), str(CORPUS), "--output_dir", tempfile.mkdtemp(), *extra]
    _, model_args, targs = parse_arguments(arguments)
    threads, previous_threads = targs.training_threads or torch.get_num_threads(), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _stage2_costs(model_args, targs, threads)
    finally:
        torch.set_num_threads(previous_threads)


def _stage2_costs(model_args, targs, threads: int) -> dict:
    """`bench_stage2`'s measurements on the current threads."""
    import torch
    from torch.nn import functional as F

    from training.infogan import generator_config

    rows, classes, dim = 630, 8, model_args.projection_dim
    generator = torch.Generator().manual_seed(0)
    z, codes = (F.normalize(torch.randn(rows, dim, generator=generator), dim=-1) for _ in range(2))
    data = (z, torch.arange(rows) % classes, codes)
    config = generator_config(model_args, dim, dim, {index: str(index) for index in range(classes)})
    step_s, flops, batch = _stage2_step_cost(config, targs, data, targs.generator_batch_size, epochs=10)
    small_s, _, small = _stage2_step_cost(config, targs, data, targs.generator_batch_size // 8, epochs=5)
    fixed_s = small_s - (step_s - small_s) * small / (batch - small)
    # the rate of the D trunk's product: real, fake and mixed-up rows through its widest layer
    rate = _matmul_rate(3 * batch, max(model_args.discriminator_hidden_sizes))
    return {
        "threads": threads,
        "batch_size": batch,
        "step_ms": 1e3 * step_s,
        "small_batch_size": small,
        "small_batch_step_ms": 1e3 * small_s,
        "fixed_ms": 1e3 * fixed_s,
        "gflop_per_step": flops / 1e9,
        "matmul_gflops": rate / 1e9,
        "matmul_ms": 1e3 * flops / rate,
    }


def _stage2_step_cost(config, targs, data: tuple, batch_size: int, epochs: int) -> tuple[float, float, int]:
    """(seconds per step, matrix-product FLOPs per step, rows per batch) of stage 2 on `data` = (z_a, labels,
    text codes) at `batch_size` (the batches split the rows evenly), timed over `epochs` epochs after one counted
    (and warming) epoch."""
    import dataclasses

    from accelerate import Accelerator
    from torch.utils.flop_counter import FlopCounterMode

    from training.engine import LoopState, StageRuntime, epoch_stream
    from training.infogan import InfoGANTraining

    z, labels, codes = data
    run = InfoGANTraining(StageRuntime(Accelerator(cpu=True), log_every_epoch=False), config,
                          dataclasses.replace(targs, generator_batch_size=batch_size), data,
                          (z[:60], labels[:60], codes[:60]), seed=0)  # fmt: skip
    state = LoopState()
    with FlopCounterMode(display=False) as counter:
        run.train_epoch(0, state, epoch_stream(0, 0))
    flops = counter.get_total_flops() / state.step
    before, start = state.step, time.perf_counter()
    for epoch in range(1, 1 + epochs):
        run.train_epoch(epoch, state, epoch_stream(0, epoch))
    return (time.perf_counter() - start) / (state.step - before), flops, run.batches.size


def _matmul_rate(rows: int, width: int, repeats: int = 200) -> float:
    """FLOP/s of one `(rows, width) @ (width, width)` product on the current threads."""
    import torch

    a, b = torch.randn(rows, width), torch.randn(width, width)
    for _ in range(10):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * rows * width * width * repeats / (time.perf_counter() - start)


STAGE_NAMES = {"aligner": "stage 1", "generator": "stage 2", "classifier": "stage 3"}


def _time_budget_rows(result: dict) -> list[tuple[str, str]]:
    """Where the run's and the study seed's time goes: the training seconds summed over folds (units), and what
    they alone take on the run's processes, against the targets."""
    rows = []
    train = result.get("train")
    if train and "stage_seconds" in train:
        stages, processes, seconds = train["stage_seconds"], train["processes"], train["seconds"]
        total = sum(stages.values())
        parts = ", ".join(f"{STAGE_NAMES.get(name, name)} {value:.0f} s" for name, value in stages.items())
        rows.append(("leave-one-speaker-out run: where the time goes",
                     f"training stages summed over the folds {total:.0f} s ({parts}): {total / processes:.0f} s "
                     f"on {processes} process(es) before any other cost (target {TARGETS['train_wall_s']:.0f} s); "
                     f"{stages.get('generator', 0.0) / processes:.0f} s of it is stage 2. Folds {seconds['folds']:.0f} s "
                     f"wall, final models {seconds.get('final_models', 0.0):.0f} s, start-up and features "
                     f"{train['wall_s'] - seconds['folds'] - seconds.get('final_models', 0.0):.0f} s"))  # fmt: skip
    study = result.get("study")
    if study and "variant_seconds" in study:
        from training.study_variants import VARIANTS

        variants, processes = study["variant_seconds"], study["processes"]
        total = sum(variants.values())
        generators = sum(value for name, value in variants.items() if VARIANTS[name].uses_generator)
        rows.append(("one study seed: where the time goes",
                     f"variants summed over the units {total:.0f} s: {total / processes:.0f} s on {processes} "
                     f"process(es) before any other cost (target {TARGETS['study_seed_wall_s']:.0f} s); the "
                     f"{sum(VARIANTS[name].uses_generator for name in variants)} variants with a generator "
                     f"{generators:.0f} s of it ({generators / total:.0%}), "
                     f"{(total - generators) / processes:.0f} s on {processes} process(es) without them"))  # fmt: skip
    return rows


def table(result: dict) -> list[tuple[str, str]]:
    """(measurement, value) rows of the speed table of docs/speed.md, from `bench.json`."""
    rows = []
    features = result.get("features")
    if features:
        rows.append((f"first extraction of the config's features, {features['clips']} clips",
                     f"{features['first_extraction_s']:.1f} s"))  # fmt: skip
        rows.append(("warm feature stage, corpus scan included",
                     f"{features['warm_features_s']:.2f} s ({features['warm_decoded_clips']} clips decoded; "
                     f"target ≤ {TARGETS['warm_features_s']:.0f} s)"))  # fmt: skip
    for name, label, target in (
        ("train", "leave-one-speaker-out run, {} folds + final models", "train_wall_s"),
        ("study", "one study seed, 9 variants × {} folds (ComParE_2016)", "study_seed_wall_s"),
    ):
        run = result.get(name)
        if not run:
            continue
        label = label.format(run.get("n_folds", run.get("units")))
        value = (
            f"{run['wall_s']:.0f} s wall on {run['processes']} process(es) "
            f"(target for 24 folds ≤ {TARGETS[target]:.0f} s)"
        )
        baseline = run.get("baseline")
        if baseline:
            same = baseline.get("identical_predictions", baseline.get("identical_results"))
            speed = baseline["wall_s"] / run["wall_s"]
            value += (f"; previous version {baseline['wall_s']:.0f} s on {baseline['processes']} process(es): "
                      f"{f'{speed:.2f}× faster' if speed >= 1 else f'{1 / speed:.2f}× slower'}, "
                      f"{'identical' if same else 'different'} results")  # fmt: skip
            if not same and "uar_pooled" in baseline:
                value += f" (pooled UAR {baseline['uar_pooled']:.1%} there)"
        rows.append((label, value))
        rows.append((f"{label}: peak memory", f"{run['peak_rss_gb']:.2f} GB (all processes)"))
    rows += _time_budget_rows(result)
    train = result.get("train")
    if train:
        rows.append(("MISE pooled UAR / mean ± std / WA / macro-F1",
                     f"{train['uar_pooled']:.1%} / {100 * train['uar_mean']:.1f} ± {100 * train['uar_std']:.1f} / "
                     f"{train['wa_pooled']:.1%} / {train['f1_macro_pooled']:.1%}"))  # fmt: skip
        rows.append(("aligner head alone, mean UAR", f"{train['aligner_uar_mean']:.1%}"))
    if features:
        baseline = features["classic_baseline"]
        rows.append(("logistic regression, same features and folds",
                     f"{baseline['uar_pooled_global_normalization']:.1%} (global standardisation), "
                     f"{baseline['uar_pooled_speaker_normalization']:.1%} (per-speaker)"))  # fmt: skip
    for corpus, runs in result.get("seeds", {}).items():
        value = _seed_cell(runs["current"])
        if "baseline" in runs:
            difference = _mean_uar(runs["current"]) - _mean_uar(runs["baseline"])
            value += f"; previous version {_seed_cell(runs['baseline'])}: {difference:+.1f} points"
        rows.append(
            (f"{corpus}, all folds, seeds {', '.join(map(str, SEEDS))}: mean pooled UAR (per seed)", value)
        )
    for run in result.get("scale", []):
        rows.append((f"{run['n_folds']} fold(s), {run['clips']} clips, {run['encoder'].split('/')[1]}",
                     f"{run['seconds']['folds']:.1f} s folds, {run['wall_s']:.0f} s wall, "
                     f"{run['peak_rss_gb']:.2f} GB peak"))  # fmt: skip
    stage2 = result.get("stage2")
    if stage2:
        batch = stage2["batch_size"]
        rows.append((f"stage 2, one D + G step ({batch} rows, {stage2['threads']} thread(s))",
                     f"{stage2['step_ms']:.1f} ms ({stage2['small_batch_step_ms']:.1f} ms with {stage2['small_batch_size']} rows): "
                     f"{stage2['fixed_ms']:.1f} ms fixed per step, the rest grows with the rows; its matrix "
                     f"products ({stage2['gflop_per_step']:.2f} GFLOP) take {stage2['matmul_ms']:.1f} ms at the "
                     f"{stage2['matmul_gflops']:.0f} GFLOP/s one product reaches here"))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--data_dir", default=str(DATA))
    parser.add_argument("--output_dir", default=str(REPO / "runs" / "bench"))
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--report", action="store_true", help="only rewrite the table from OUT/bench.json")
    parser.add_argument("--baseline_repo", type=Path, default=None)
    parser.add_argument("--num_processes", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--cache_dir", default=None, help="feature cache of the runs (default: a new one)")
    parser.add_argument("--scale_factors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--seed_runs", nargs="+", default=["ravdess:auto", "emodb:auto", "ravdess:false", "emodb:false"]
    )
    parser.add_argument(
        "--scale_encoders", nargs="+", default=["opensmile/eGeMAPSv02", "opensmile/ComParE_2016"]
    )
    args, extra = parser.parse_known_args()
    args.output_dir = str(Path(args.output_dir).resolve())  # the baseline's runs start in its own checkout
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="mise-bench-cache-")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": load,
        },  # fmt: skip
        "targets": TARGETS,
        "extra_arguments": extra,
    }
    path = Path(args.output_dir) / "bench.json"
    if path.is_file():  # parts run one at a time add up in one file
        previous = json.loads(path.read_text())
        result = {**result, **previous} if args.report else {**previous, **result}
    if args.report:
        args.only = []
    if "features" in args.only:
        result["features"] = bench_features(args, cache_dir, [])
    # the runs below start from a warm cache: eGeMAPS (train) and ComParE_2016 (study, scale) features
    if set(args.only) - {"stage2"}:  # stage 2 runs on vectors of its own
        feature_stage(args.config, args.data_dir, cache_dir, [])
    compare = "opensmile/ComParE_2016"
    if "study" in args.only or ("scale" in args.only and compare in args.scale_encoders):
        feature_stage(args.config, args.data_dir, cache_dir, ["--audio_encoder", compare])
    parts = {"train": bench_train, "study": bench_study, "scale": bench_scale, "seeds": bench_seeds,
             "stage2": bench_stage2}  # fmt: skip
    for name, part in parts.items():
        if name in args.only:
            result[name] = part(args, cache_dir, extra)
            path.write_text(json.dumps(result, indent=2))
    path.write_text(json.dumps(result, indent=2))
    rows = table(result)
    markdown = ["| measurement | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
    (Path(args.output_dir) / "bench.md").write_text("\n".join(markdown) + "\n")
    width = max(len(name) for name, _ in rows) if rows else 0
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


if __name__ == "__main__":
    main()
