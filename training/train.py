"""Train and evaluate MISE end to end on a corpus, then write the models trained on all speakers.

    accelerate launch training/train.py training/configs/mise.yaml CORPUS.yaml --output_dir OUT [--key value ...]

Writes `OUT/rejected.csv`, `OUT/folds/<fold>/metrics.json`, `OUT/summary.json`, `OUT/run_info.json`,
`OUT/checkpoints/` (resume with `--resume_from_checkpoint latest`), TensorBoard logs under `OUT/mise/` and
`OUT/card.json` (what the model cards say about the run) and
`OUT/models/mise-{aligner,generator,classifier,audio-classifier}/`.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `training` and `modeling_mise` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from mise.console import progress_bars, run_command
from mise.folds import Fold
from mise.hub.push import HubPushError, push_run
from mise.hub.run_card import write_run_card
from mise.metrics import summarize_folds
from training.arguments import arguments_dict, config_hash, parse_arguments
from training.checkpoint import CheckpointManager
from training.classifier import (
    chosen_aligner_candidate_counts,
    chosen_feature_set_counts,
    chosen_ratio_counts,
)
from training.corpora import corpora_summary, released_uar_pooled
from training.engine import NonFiniteLossError
from training.pipeline import (
    FINAL_FOLD,
    SPEAKER_FINAL_FOLD,
    RunContext,
    build_folds,
    final_fold,
    released_generator_quality,
    released_stage_summary,
    run_folds,
    train_final_models,
    write_json,
)
from training.run import Run, start_run, training_threads
from training.speaker_normalization import (
    ENROLMENT_SIZES,
    Enrolment,
    SpeakerNormalization,
    enrolment_summary,
    normalization_report,
)

logger = get_logger("mise.train")

# what a run writes; `--overwrite_output_dir` deletes exactly these
# written once the folds start: without them the folder holds no run, only what a run that stopped on bad
# input left behind (TensorBoard's `mise/`, `rejected.csv`), which a new run replaces
RUN_MARKERS = ("folds", "final", SPEAKER_FINAL_FOLD, "checkpoints", "models", "summary.json", "run_info.json",
               "card.json")  # fmt: skip
RUN_FILES = (*RUN_MARKERS, "mise", "rejected.csv")
FINAL_SEED_INDEX = 1_000_000


def _start(argv: list[str] | None) -> Run:
    """Arguments (YAML/JSON config + `--key value` overrides) and the run's set-up (`training.run.start_run`:
    accelerator and tracker, output folder, feature stage)."""
    data_args, model_args, training_args = parse_arguments(argv)
    hash_ = config_hash(data_args, model_args, training_args)
    run = start_run(
        data_args, model_args, training_args, hash_, RUN_MARKERS, RUN_FILES,
        tracker_config=arguments_dict(data_args, model_args, training_args),
    )  # fmt: skip
    accelerator = run.accelerator
    logger.info(f"{accelerator.num_processes} process(es), device {accelerator.device}, config hash {hash_}")
    return run


def _run_info(run: Run, folds: list[Fold]) -> dict:
    """`OUT/run_info.json`: how the run was launched, on what corpus, with which settings."""
    accelerator, prepared = run.accelerator, run.prepared
    return {
        "config_hash": run.config_hash,
        "command": "accelerate launch training/train.py " + shlex.join(sys.argv[1:]),
        "commit": run.commit,
        "world_size": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "corpus": prepared.corpus.summary(),
        "rejected": len(prepared.rejections),
        "decoded_clips": prepared.decoded,  # those the feature cache had not judged yet
        "feature_cache": prepared.features.cache_stats,
        "folds": [fold.name for fold in folds],
        "config": arguments_dict(run.data_args, run.model_args, run.training_args),
    }


def _context(run: Run, total_folds: int) -> RunContext:
    """What every fold shares (features, labels, checkpoints, the resume point, the progress bar)."""
    training_args, corpus, accelerator = run.training_args, run.prepared.corpus, run.accelerator
    checkpoints = CheckpointManager(
        run.output_dir / "checkpoints", run.config_hash, training_args.checkpoints_total_limit
    )
    resume_from = None
    if run.resuming:
        resume_from = checkpoints.resolve(training_args.resume_from_checkpoint)
        where = resume_from.path if resume_from is not None else "each fold's latest checkpoint"
        logger.info(f"resuming from {where}")
    ctx = RunContext(
        accelerator, run.data_args, run.model_args, training_args, run.prepared.features,
        torch.as_tensor(corpus.labels()), dict(corpus.id2label), run.output_dir, run.config_hash, checkpoints,
        resume_from, run.resuming, None, corpus.transcripts(), speakers=np.asarray(corpus.speakers()),
    )  # fmt: skip
    if accelerator.is_local_main_process and progress_bars():  # a terminal: one bar; a log: the log lines
        ctx.progress = tqdm(
            total=total_folds * ctx.epochs_per_fold, desc="MISE", unit="epoch", dynamic_ncols=True
        )
    return ctx


def _summary(run: Run, records: list[dict], choices: dict, folds: list[Fold]) -> dict:
    """Pooled and mean +- std metrics over the folds, with what the run used and rejected (and with several
    corpora, the results per corpus)."""
    corpus, features = run.prepared.corpus, run.prepared.features
    pooled_true = np.concatenate([record["y_true"] for record in records])
    pooled_pred = np.concatenate([record["y_pred"] for record in records])
    summary = summarize_folds(records, pooled_true, pooled_pred, len(corpus.id2label), corpus.id2label)
    # each fold's stage 1 as its validation speakers chose it (before a refit)
    selected_aligners = [record["stages"].get("selection", record["stages"])["aligner"] for record in records]
    summary.update(
        folds={record["fold"]: record["uar"] for record in records},
        generated_ratio_by_fold={record["fold"]: record.get("generated_ratio") for record in records},
        generated_ratio_chosen=chosen_ratio_counts(record.get("generated_ratio") for record in records),
        feature_set_chosen=chosen_feature_set_counts(stage.get("feature_set") for stage in selected_aligners),
        aligner_candidate_chosen=chosen_aligner_candidate_counts(
            stage.get("aligner_candidate") for stage in selected_aligners
        ),
        aligner_uar_mean=float(np.mean([record["aligner_uar"] for record in records])),
        protocol=run.data_args.protocol,
        augmentation=run.model_args.augmentation,
        world_size=run.accelerator.num_processes,
        config_hash=run.config_hash,
        feature_cache=features.cache_stats,
        rejected=len(run.prepared.rejections),
        speaker_normalization=normalization_report(choices, run.data_args.speaker_normalization),
        enrolment=enrolment_summary(records, len(corpus.id2label), corpus.id2label),
    )
    if corpus.parts:
        summary["corpora"] = corpora_summary(folds, records, corpus)
        summary["released_uar_pooled"] = released_uar_pooled(records, len(corpus.id2label))
    summary["as_released"], note = _as_released(summary)
    logger.info(
        f"pooled UAR {summary['uar_pooled']:.4f}, mean UAR {summary['uar_mean']:.4f} +- {summary['uar_std']:.4f} "
        f"over {summary['n_folds']} fold(s); {note}"
    )
    return summary


def _as_released(summary: dict) -> tuple[dict, str]:
    """Which number the released model gives a user, next to the fold number: `summary.json`'s `as_released` and
    the words of the summary log line. A clip classified without enrolment is normalised with global statistics,
    so the fold number is that number only where the folds used global statistics too."""
    if summary["speaker_normalization"]["per_speaker_folds"] == 0 and "corpora" in summary:
        released = {"without_enrolment": summary["released_uar_pooled"], "statistics": "training corpora"}
        value = "-" if released["without_enrolment"] is None else f"{released['without_enrolment']:.4f}"
        return released, (
            "each corpus standardised with its own statistics (its unlabelled clips: adapted); the released model on "
            f"one clip, with the training corpora's statistics, gives {value} (summary.json: corpora)"
        )
    if summary["speaker_normalization"]["per_speaker_folds"] == 0:
        released = {"without_enrolment": summary["uar_pooled"], "statistics": "global"}
        return released, "global statistics: what the released model gives on a clip without enrolment"
    enrolment = summary["enrolment"] or {}
    with_enrolment = {size: enrolment.get(f"uar_pooled_{size}") for size in ENROLMENT_SIZES}
    released = {"without_enrolment": None, "with_enrolment": with_enrolment, "statistics": "per-speaker"}
    scores = " / ".join("-" if value is None else f"{value:.4f}" for value in with_enrolment.values())
    return released, (
        "per-speaker statistics from all of each test speaker's clips, itself included; the released model "
        f"gives {scores} with 3 / 10 / all other clips of the speaker as enrolment, and without enrolment uses "
        "global statistics, not measured by this run (a run with --speaker_normalization false measures it)"
    )


def main(argv: list[str] | None = None) -> dict:
    """Run the whole protocol; returns the summary (also written to `OUT/summary.json`)."""
    started = time.perf_counter()
    # 1.-3. arguments, accelerator, output folder; corpus -> usable clips -> frozen features
    run = _start(argv)
    with training_threads(run.training_args.training_threads):  # restored when the run ends
        return _train(run, started)


def _train(run: Run, started: float) -> dict:
    """Steps 4-8 of the run: folds, summary, final models, card, hub."""
    training_args, corpus, features = run.training_args, run.prepared.corpus, run.prepared.features
    seconds = dict(run.prepared.seconds)

    # 4. speaker-independent folds
    folds = build_folds(run.data_args, corpus, training_args.seed)
    logger.info(f"{len(folds)} fold(s) ({run.data_args.protocol}): {', '.join(f.name for f in folds)}")
    run_info = _run_info(run, folds)
    if run.accelerator.is_main_process:
        write_json(run.output_dir / "run_info.json", run_info)

    # 5. per fold: stage 1 aligner, stage 2 InfoGAN, stage 3 classifier, test -> folds/<fold>/metrics.json
    normalization = SpeakerNormalization.from_arguments(run.data_args, features, corpus)
    choices = normalization.plan(folds)
    final = final_fold(
        corpus.speakers(), run.data_args.num_validation_speakers, training_args.seed, corpus.labels()
    )
    final_choice = normalization.choose(np.union1d(final.train, final.validation), "the final models")
    speaker_adaptive = (
        training_args.final_models and final_choice.per_speaker and not run.model_args.multimodal
    )
    # the main process trains the released pair, and the per-speaker pair too when it is the only process
    final_trainings = (
        1 + (speaker_adaptive and run.accelerator.num_processes == 1)
    ) * training_args.final_models
    ctx = _context(run, len(folds) + final_trainings)
    tick = time.perf_counter()
    enrolment = Enrolment(
        features.audio, np.asarray(corpus.speakers()), np.asarray(corpus.labels()), training_args.seed
    )
    records = run_folds(
        ctx,
        folds,
        final_trainings,
        lambda fold: normalization.fold_context(ctx, choices[fold.name], enrolment),
    )
    seconds["folds"] = time.perf_counter() - tick

    # 6. summary: pooled and mean +- std over folds
    summary = _summary(run, records, choices, folds)

    # 7. final models on all speakers (a few validation speakers drive early stopping)
    if training_args.final_models:
        tick = time.perf_counter()
        # `ctx` keeps the global statistics (a released model without enrolment sees one clip); the folds ran on
        # copies with their own features
        speaker_ctx = (
            replace(ctx, features=normalization.features_for(final_choice), enrolment=enrolment)
            if speaker_adaptive
            else None
        )
        train_final_models(normalization.released_context(ctx), final, len(folds), run.prepared.audio_encoder,
                           FINAL_SEED_INDEX, speaker_ctx, {"allowed": speaker_adaptive, **asdict(final_choice)})  # fmt: skip
        seconds["final_models"] = time.perf_counter() - tick
        summary["generated_ratio_released"] = {  # chosen on the final models' validation speakers
            name: released_stage_summary(run.output_dir, "classifier", name).get("generated_ratio")
            for name in (FINAL_FOLD, SPEAKER_FINAL_FOLD)[: 1 + speaker_adaptive]
        }
    if ctx.progress is not None:
        ctx.progress.close()
    seconds["total"] = time.perf_counter() - started
    summary["seconds"] = seconds
    if run.accelerator.is_main_process:
        write_json(run.output_dir / "summary.json", summary)
        write_json(run.output_dir / "run_info.json", {**run_info, "seconds": seconds})
        # the contract with publishing: OUT/card.json, what the model cards say
        write_run_card(run.output_dir, summary, run_info, records, released_generator_quality(run.output_dir))

    # 8. hub: build OUT/hub/* (cards, code, validation) and upload; a failure keeps OUT and `mise push` retries
    if training_args.push_to_hub and run.accelerator.is_main_process:
        org, _, prefix = training_args.hub_model_id.partition("/")
        summary["hub"] = push_run(run.output_dir, org=org, prefix=prefix or None)
        write_json(run.output_dir / "summary.json", summary)
    run.accelerator.end_training()
    return summary


def _cli() -> None:
    # config errors exit 2, bad data and NaN losses 1 (mise.console); a failed push leaves the run complete in
    # OUT (`mise push OUT --org ORG` retries) and exits 2
    sys.exit(run_command(main, "error", usage_errors=(HubPushError,), data_errors=(NonFiniteLossError,)))


if __name__ == "__main__":
    _cli()
