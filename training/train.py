"""Train and evaluate MISE end to end on a corpus, then write the models trained on all speakers.

    accelerate launch training/train.py training/configs/ravdess.yaml --output_dir OUT [--key value ...]

Writes `OUT/rejected.csv`, `OUT/folds/<fold>/metrics.json`, `OUT/summary.json`, `OUT/run_info.json`,
`OUT/checkpoints/` (resume with `--resume_from_checkpoint latest`), TensorBoard logs under `OUT/mise/` and
`OUT/card.json` (what the model cards say about the run) and
`OUT/models/mise-{aligner,generator,classifier,audio-classifier}/`.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `training` and `modeling_mise` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from mise.hub.push import HubPushError, push_run
from mise.hub.run_card import write_run_card
from mise.metrics import summarize_folds
from modeling_mise.encoders import load_audio_encoder, load_text_encoder
from training.arguments import ConfigError, arguments_dict, config_hash, parse_arguments
from training.checkpoint import CheckpointManager
from training.features import (
    cached_fingerprints,
    extract_features,
    read_corpus,
    reject_nonfinite,
    usable_clips,
)
from training.loop import NonFiniteLossError
from training.pipeline import (
    PROCESS_GROUP_KWARGS,
    SPEAKER_FINAL_FOLD,
    RunContext,
    build_folds,
    final_fold,
    released_generator_quality,
    run_folds,
    train_final_models,
)
from training.speaker_normalization import (
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


def _prepare_output_dir(output_dir: Path, args, hash_: str, accelerator: Accelerator) -> bool:
    """Refuse to mix runs: a previous run is continued (resume), replaced (overwrite) or an error."""
    previous = output_dir / "run_info.json"
    has_run = any((output_dir / name).exists() for name in RUN_MARKERS)
    if args.resume_from_checkpoint is not None:
        if previous.is_file():
            old_hash = json.loads(previous.read_text()).get("config_hash")
            if old_hash != hash_:
                raise ConfigError(
                    f"resume_from_checkpoint: {output_dir} holds a run with another configuration "
                    f"(hash {old_hash} != {hash_}); resume with the same settings or use a new output_dir"
                )
        return True
    if has_run and not args.overwrite_output_dir:
        raise ConfigError(
            f"output_dir: {output_dir} already holds a run; pass --resume_from_checkpoint latest to continue "
            "it or --overwrite_output_dir to start again"
        )
    if accelerator.is_main_process:
        for name in RUN_FILES:
            path = output_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    accelerator.wait_for_everyone()
    return False


def _tracker_config(values: dict) -> dict:
    """TensorBoard hparams take scalars and strings only."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in values.items()}


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    """Run the whole protocol; returns the summary (also written to `OUT/summary.json`)."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    # 1. arguments: YAML/JSON config + `--key value` overrides, validated per field
    data_args, model_args, training_args = parse_arguments(argv)
    output_dir = Path(training_args.output_dir)
    hash_ = config_hash(data_args, model_args, training_args)

    # 2. accelerator (tracker, mixed precision, gradient accumulation), seeds, output folder
    accelerator = Accelerator(
        log_with=None if training_args.report_to == "none" else training_args.report_to,
        project_dir=str(output_dir),
        mixed_precision=training_args.mixed_precision,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True),
        kwargs_handlers=[PROCESS_GROUP_KWARGS],
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint otherwise
    hf_logging.disable_progress_bar()  # save/load bars of every fold's models: one progress bar is enough
    logger.info(f"{accelerator.num_processes} process(es), device {accelerator.device}, config hash {hash_}")
    resuming = _prepare_output_dir(output_dir, training_args, hash_, accelerator)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(training_args.seed)
    all_args = arguments_dict(data_args, model_args, training_args)
    if training_args.report_to != "none":
        accelerator.init_trackers("mise", config=_tracker_config(all_args))

    # 3. corpus: summary, usable clips, rejected files -> OUT/rejected.csv
    tick = time.perf_counter()
    corpus = read_corpus(data_args)
    logger.info("corpus summary\n" + corpus.format_summary())
    audio_encoder = load_audio_encoder(
        model_args.audio_encoder, model_args.audio_pooling, model_args.audio_layer
    )
    cached = cached_fingerprints(corpus, audio_encoder, data_args, model_args)  # decode only the misses
    waveforms, corpus, rejections = usable_clips(
        corpus, audio_encoder.sampling_rate, data_args, output_dir, accelerator, cached
    )
    seconds["read_audio"] = time.perf_counter() - tick

    # 4. frozen features through the cache (misses sharded across processes)
    has_text = any(corpus.transcripts())
    text_encoder = None
    if model_args.text_encoder is not None and has_text and data_args.transcript_column is not None:
        text_encoder = load_text_encoder(
            model_args.text_encoder, model_args.text_pooling, dtype=model_args.text_dtype
        )
    features = extract_features(
        corpus, waveforms, audio_encoder, text_encoder, data_args, model_args, accelerator
    )
    del waveforms, text_encoder  # a LoRA-tuned stage 1 loads its own copy per fold
    corpus, features = reject_nonfinite(corpus, features, rejections, data_args.strict)
    if accelerator.is_main_process:
        from mise.data import write_rejections

        write_rejections(rejections, output_dir / "rejected.csv")
    seconds["features"] = features.seconds
    labels = torch.as_tensor(corpus.labels())

    # 5. speaker-independent folds
    folds = build_folds(data_args, corpus, training_args.seed)
    logger.info(f"{len(folds)} fold(s) ({data_args.protocol}): {', '.join(f.name for f in folds)}")

    checkpoints = CheckpointManager(output_dir / "checkpoints", hash_, training_args.checkpoints_total_limit)
    resume_from = None
    if resuming:
        resume_from = checkpoints.resolve(training_args.resume_from_checkpoint)
        where = resume_from.path if resume_from is not None else "each fold's latest checkpoint"
        logger.info(f"resuming from {where}")
    run_info = {
        "config_hash": hash_,
        "command": "accelerate launch training/train.py " + shlex.join(sys.argv[1:]),
        "world_size": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "corpus": corpus.summary(),
        "rejected": len(rejections),
        "feature_cache": features.cache_stats,
        "folds": [fold.name for fold in folds],
        "config": all_args,
    }
    if accelerator.is_main_process:
        _write_json(output_dir / "run_info.json", run_info)

    normalization = SpeakerNormalization.from_arguments(data_args, features, corpus)
    choices = normalization.plan(folds)
    # 6. per fold: stage 1 aligner, stage 2 InfoGAN, stage 3 classifier, test -> folds/<fold>/metrics.json
    final = final_fold(
        corpus.speakers(), data_args.num_validation_speakers, training_args.seed, corpus.labels()
    )
    final_choice = normalization.choose(np.union1d(final.train, final.validation), "the final models")
    speaker_adaptive = training_args.final_models and final_choice.per_speaker and not model_args.multimodal
    total_folds = len(folds) + (1 + speaker_adaptive if training_args.final_models else 0)
    progress = tqdm(
        total=0, desc="MISE", unit="epoch", disable=not accelerator.is_local_main_process, dynamic_ncols=True
    )
    ctx = RunContext(
        accelerator, data_args, model_args, training_args, features, labels, dict(corpus.id2label),
        output_dir, hash_, checkpoints, resume_from, resuming, progress if not progress.disable else None,
        corpus.transcripts(),
    )  # fmt: skip
    progress.total = total_folds * ctx.epochs_per_fold
    if training_args.training_threads:
        torch.set_num_threads(training_args.training_threads)
        threadpool_limits(training_args.training_threads)
    tick = time.perf_counter()
    enrolment = Enrolment(features.audio, np.asarray(corpus.speakers()), training_args.seed)
    records = run_folds(
        ctx,
        folds,
        training_args.final_models,
        lambda fold: normalization.fold_context(ctx, choices[fold.name], enrolment),
    )
    seconds["folds"] = time.perf_counter() - tick

    # 7. summary: pooled and mean +- std over folds
    pooled_true = np.concatenate([record["y_true"] for record in records])
    pooled_pred = np.concatenate([record["y_pred"] for record in records])
    summary = summarize_folds(records, pooled_true, pooled_pred, len(corpus.id2label), corpus.id2label)
    summary.update(
        folds={record["fold"]: record["uar"] for record in records},
        aligner_uar_mean=float(np.mean([record["aligner_uar"] for record in records])),
        protocol=data_args.protocol,
        augmentation=model_args.augmentation,
        world_size=accelerator.num_processes,
        config_hash=hash_,
        feature_cache=features.cache_stats,
        rejected=len(rejections),
        speaker_normalization=normalization_report(choices, data_args.speaker_normalization),
        enrolment=enrolment_summary(records, len(corpus.id2label), corpus.id2label),
    )
    logger.info(
        f"pooled UAR {summary['uar_pooled']:.4f}, mean UAR {summary['uar_mean']:.4f} +- {summary['uar_std']:.4f} "
        f"over {summary['n_folds']} fold(s)"
    )

    # 8. final models on all speakers (a few validation speakers drive early stopping)
    if training_args.final_models:
        tick = time.perf_counter()
        # `ctx` keeps the global statistics (a released model without enrolment sees one clip); the folds ran on
        # copies with their own features
        speaker_ctx = (
            replace(ctx, features=normalization.features_for(final_choice)) if speaker_adaptive else None
        )
        train_final_models(ctx, final, len(folds), audio_encoder, FINAL_SEED_INDEX, speaker_ctx,
                           {"allowed": speaker_adaptive, **asdict(final_choice)})  # fmt: skip
        seconds["final_models"] = time.perf_counter() - tick
    progress.close()
    seconds["total"] = time.perf_counter() - started
    summary["seconds"] = seconds
    if accelerator.is_main_process:
        _write_json(output_dir / "summary.json", summary)
        _write_json(output_dir / "run_info.json", {**run_info, "seconds": seconds})
    if accelerator.is_main_process:  # the contract with publishing: OUT/card.json, what the model cards say
        write_run_card(output_dir, summary, run_info, records, released_generator_quality(output_dir))

    # 9. hub: build OUT/hub/* (cards, code, validation) and upload; a failure keeps OUT and `mise push` retries
    if training_args.push_to_hub and accelerator.is_main_process:
        org, _, prefix = training_args.hub_model_id.partition("/")
        summary["hub"] = push_run(output_dir, org=org, prefix=prefix or None)
        _write_json(output_dir / "summary.json", summary)
    accelerator.end_training()
    return summary


def _cli() -> None:
    try:
        main()
    except (ValueError, NonFiniteLossError) as error:  # bad input / config / NaN loss: a message, not a trace
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except HubPushError as error:  # the run is complete in OUT; `mise push OUT --org ORG` retries
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _cli()
