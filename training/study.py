"""The comparison study: every augmentation variant on the same folds and seeds, with MI quality and figures.

    accelerate launch training/study.py training/configs/mise.yaml training/configs/study.yaml CORPUS.yaml --output_dir OUT [--key value ...]

Per seed and fold, stage 1 (the aligner) is trained once per alignment setting and stage 2 (the InfoGAN) once
per generator setting; each variant then trains its stage-3 classifier (training/classifier.py). Frozen features
come from the shared cache. Writes `OUT/study.csv` (variant x seed x fold), `OUT/study.json`, `OUT/study.md`,
`OUT/quality.json` (every generator checkpoint) and `OUT/figures/*.png`; `OUT/runs/` keeps each finished
(seed, fold) so `--resume_from_checkpoint latest` continues a killed study. With several processes
(`accelerate launch --num_processes N`, one per core or GPU) each takes whole (seed, fold) units and the main
process writes the tables and figures; the results do not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `training` and `modeling_mise` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from mise.console import progress_bars, run_command
from mise.folds import Fold
from training.arguments import (
    ConfigError,
    DataArguments,
    MiseTrainingArguments,
    ModelArguments,
    arguments_dict,
    config_hash,
    parse_arguments,
)
from training.engine import NonFiniteLossError
from training.features import PreparedCorpus
from training.pipeline import build_folds, write_json
from training.run import Run, start_run, training_threads
from training.speaker_normalization import NormalizationChoice, SpeakerNormalization, normalization_report
from training.study_report import write_report
from training.study_unit import FoldUnit, Study
from training.study_variants import StudyArguments, cut_class

logger = get_logger("mise.study")
STUDY_FILES = ("runs", "figures", "study.csv", "study.json", "study.md", "quality.json", "study_info.json")


def parse_study_arguments(
    argv: list[str] | None = None,
) -> tuple[DataArguments, ModelArguments, MiseTrainingArguments, StudyArguments]:
    """`[CONFIG.yaml|.json ...] [--key value ...]`: the training arguments plus [`StudyArguments`]; each variant
    checked against them (`Variant.check`) before any audio is read."""
    parsed = parse_arguments(argv, (StudyArguments,))
    data_args, model_args, _, study_args = parsed
    for variant in study_args.selected:
        variant.check(model_args, bool(data_args.corpora))
    return parsed


# ---------------------------------------------------------------------------------------------- the whole study
def study_hash(data_args, model_args, training_args, study_args: StudyArguments) -> str:
    """Hash of what changes a (seed, fold) unit's results; the choice of variants and seeds is left out."""
    study_values = {
        key: value
        for key, value in dataclasses.asdict(study_args).items()
        if key not in ("variants", "seeds", "figures", "map_max_points")
    }
    if len(study_args.classic_c) == 1:  # one value hashes as before the grid, so earlier studies resume
        study_values["classic_c"] = study_args.classic_c[0]
    text = config_hash(data_args, model_args, training_args) + json.dumps(study_values, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_unit(path: Path, hash_: str, variants: list[str]) -> dict | None:
    if not path.is_file():
        return None
    unit = json.loads(path.read_text())
    if unit.get("config_hash") != hash_:
        logger.warning(
            f"{path}: computed with another configuration (hash {unit.get('config_hash')}); recomputing"
        )
        return None
    if not set(variants) <= {row["variant"] for row in unit["rows"]}:
        return None
    unit["rows"] = [row for row in unit["rows"] if row["variant"] in variants]
    unit["quality"] = [record for record in unit.get("quality", []) if record["variant"] in variants]
    unit["final_quality"] = {name: q for name, q in unit.get("final_quality", {}).items() if name in variants}
    return unit


def _training_rows(study: Study, fold: Fold, fold_index: int) -> tuple[np.ndarray, dict]:
    """The fold's training rows, with the imbalance cut applied (same cut for every seed and variant)."""
    name = study.study_args.imbalance_class
    if name is None:
        return fold.train, {}
    label2id = {label: index for index, label in study.id2label.items()}
    if name not in label2id:
        raise ConfigError(f"imbalance_class: {name!r} is not a class of the corpus ({sorted(label2id)})")
    reduced, counts = cut_class(
        fold.train, study.labels.numpy(), label2id[name], study.study_args.imbalance_keep,
        seed=study.training_args.seed + fold_index,
    )  # fmt: skip
    return reduced, counts


def _write_unit(output_dir: Path, path: Path, unit: dict, maps: dict, seed: int) -> None:
    """A finished unit's JSON and, for the first fold, its 2-D maps (per seed: processes never collide)."""
    for name, arrays in maps.items():
        folder = output_dir / "runs" / "maps" / f"seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / f"{name}.npz", **arrays)
    write_json(path, unit)


def _run_units(
    study: Study,
    folds: dict[int, list[Fold]],
    output_dir: Path,
    hash_: str,
    resuming: bool,
    study_for: Callable[[int, Fold], Study],
) -> list[dict]:
    """Every (seed, fold) unit, whole units spread over the processes (unit i on process i mod world size, each
    writes its own `OUT/runs/seed-S/<fold>.json`); every process returns all units, in (seed, fold) order.
    `folds[seed]`: the seed's folds; `study_for(seed, fold)` is the study with that unit's features."""
    accelerator, study_args = study.accelerator, study.study_args
    pairs = [(seed, index, fold) for seed in study_args.seeds for index, fold in enumerate(folds[seed])]
    rank, world = accelerator.process_index, accelerator.num_processes
    units: dict[int, dict] = {}
    progress = tqdm(total=len(pairs[rank::world]), desc="study", unit="fold",
                    disable=not (accelerator.is_local_main_process and progress_bars()))  # fmt: skip
    for position, (seed, fold_index, fold) in enumerate(pairs):
        if position % world != rank:
            continue
        path = output_dir / "runs" / f"seed-{seed}" / f"{fold.name}.json"
        unit = _load_unit(path, hash_, study_args.variants) if resuming else None
        if unit is None:
            tick = time.perf_counter()
            train_rows, counts = _training_rows(study, fold, fold_index)
            unit = FoldUnit(study_for(seed, fold), fold, fold_index, seed, train_rows).run()
            unit.update(config_hash=hash_, seconds=time.perf_counter() - tick, imbalance_counts=counts)
            _write_unit(output_dir, path, unit, unit.pop("maps"), seed)
        units[position] = unit
        progress.update(1)
        logger.info(
            f"seed {seed} {fold.name}: "
            + ", ".join(f"{row['variant']} {row['uar']:.3f}" for row in unit["rows"])
        )
    progress.close()
    if world > 1:
        accelerator.wait_for_everyone()
        for position, (seed, _, fold) in enumerate(pairs):
            if position not in units:
                path = output_dir / "runs" / f"seed-{seed}" / f"{fold.name}.json"
                units[position] = _load_unit(path, hash_, study_args.variants)
    return [units[position] for position in range(len(pairs))]


def main(argv: list[str] | None = None) -> dict:
    """Run the study; returns the content of `OUT/study.json`."""
    started = time.perf_counter()
    raw_argv = list(sys.argv[1:] if argv is None else argv)

    # 1. arguments: the training config keys plus the study's own
    data_args, model_args, training_args, study_args = parse_study_arguments(raw_argv)
    hash_ = study_hash(data_args, model_args, training_args, study_args)
    # 2.-3. accelerator, logging, output folder; corpus and frozen features (cached: a second study on the same
    # corpus computes nothing)
    run = start_run(  # no tracker; each unit's file carries its hash
        data_args,
        model_args,
        training_args,
        hash_,
        STUDY_FILES,
        STUDY_FILES,
        "study",
        resume_checks_hash=False,
    )
    with training_threads(training_args.training_threads):  # one thread: fastest for these sizes
        return _run_study(raw_argv, started, run, study_args)


def _run_study(raw_argv: list[str], started: float, run: Run, study_args: StudyArguments) -> dict:
    data_args, model_args, training_args = run.data_args, run.model_args, run.training_args
    accelerator, output_dir, hash_, resuming = run.accelerator, run.output_dir, run.config_hash, run.resuming
    prepared = run.prepared
    corpus, features = prepared.corpus, prepared.features
    normalization = SpeakerNormalization.from_arguments(data_args, features, corpus)  # all variants alike
    study = Study(
        accelerator, data_args, model_args, training_args, study_args, features.audio, features.text,
        torch.as_tensor(corpus.labels()), dict(corpus.id2label), features.audio_spec,
        speakers=np.asarray(corpus.speakers()), corpora=corpus.corpora(), transcripts=corpus.transcripts(),
    )  # fmt: skip

    # 4. folds, shared by every variant: each seed's own validation speakers, drawn as `train.py --seed S` draws
    # them (one draw would make every seed share its luck); the test speakers are the same for every seed except
    # under kfold, whose seeds also redraw the groups
    folds = {seed: build_folds(data_args, corpus, seed) for seed in study_args.seeds}
    first = folds[study_args.seeds[0]]
    logger.info(
        f"{len(first)} fold(s) x {len(study_args.seeds)} seed(s) x {len(study_args.variants)} variant(s)"
    )
    # each seed's folds get their own choice: under kfold the seeds redraw the test groups, so a fold name stands for
    # other speakers in each seed (under loso, losession and split every seed's choices are the same)
    choices = {seed: normalization.plan(seed_folds) for seed, seed_folds in folds.items()}

    # 5. per (seed, fold): shared stage-1/2 models, one classifier per variant -> OUT/runs/
    units = _run_units(
        study, folds, output_dir, hash_, resuming,
        lambda seed, fold: dataclasses.replace(
            study, audio=normalization.features_for(choices[seed][fold.name]).audio,
            test_speaker_clips=choices[seed][fold.name].per_speaker,
        ),
    )  # fmt: skip

    # 6. tables, tests, quality and figures
    report_normalization = normalization_report(_reported_choices(choices), data_args.speaker_normalization)
    info = _study_info(
        raw_argv, started, hash_, run.commit, study, prepared, units, folds, report_normalization
    )
    report = {}
    if accelerator.is_main_process:
        report = write_report(output_dir, units, study_args, study.id2label, info)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report


def _alike(by_seed: dict):
    """The value every seed has, or None where the seeds differ (kfold redraws the test groups per seed)."""
    first, *others = by_seed.values()
    return first if all(other == first for other in others) else None


def _reported_choices(choices: dict[int, dict[str, NormalizationChoice]]) -> dict[str, NormalizationChoice]:
    """Every fold's choice, by fold name where every seed chose alike, else by `seed-S/<fold>`."""
    alike = _alike(choices)
    if alike is not None:
        return alike
    return {
        f"seed-{seed}/{name}": choice for seed, by_fold in choices.items() for name, choice in by_fold.items()
    }


def _study_info(
    raw_argv: list[str],
    started: float,
    hash_: str,
    commit: str,
    study: Study,
    prepared: PreparedCorpus,
    units: list[dict],
    folds: dict[int, list[Fold]],
    speaker_normalization: dict,
) -> dict:
    """How the study was launched, on what corpus, with which settings and how long it took."""
    arguments = arguments_dict(study.data_args, study.model_args, study.training_args, study.study_args)
    return {
        "command": shlex.join(["training/study.py", *raw_argv]),
        "commit": commit,
        "config_hash": hash_,
        "seconds": time.perf_counter() - started,
        "unit_seconds": sum(unit.get("seconds", 0.0) for unit in units),  # earlier attempts included
        "world_size": study.accelerator.num_processes,
        "corpus": prepared.corpus.summary(),
        "rejected": len(prepared.rejections),
        "speaker_normalization": speaker_normalization,
        "folds": [
            {
                "name": f.name,
                "test": _alike(tests := {str(seed): folds[seed][index].test_speakers for seed in folds})
                or tests,
                "validation": {str(seed): folds[seed][index].validation_speakers for seed in folds},
            }
            for index, f in enumerate(next(iter(folds.values())))
        ],
        # the feature cache is a local path of no consequence to the results
        "config": {key: value for key, value in arguments.items() if key != "cache_dir"},
    }


def _cli() -> None:
    sys.exit(run_command(main, "error", data_errors=(NonFiniteLossError,)))  # the exit codes of mise.console


if __name__ == "__main__":
    _cli()
