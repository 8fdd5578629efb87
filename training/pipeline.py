"""The folds of the protocol, one fold (stages 1-3 on training speakers, test on held-out ones), final models.

With several processes each takes whole folds (`run_folds`: fold i goes to process i mod world size) and trains
them alone, so a fold's result does not depend on the number of processes; the main process gathers the folds'
`metrics.json` and trains the final models.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, InitProcessGroupKwargs
from accelerate.logging import get_logger

from mise.data import Corpus
from mise.folds import Fold, make_folds
from mise.folds import final_fold as folds_final_fold
from mise.hub.cards import MODEL_FOLDERS
from mise.metrics import classification_metrics
from modeling_mise import (
    MiseAlignerModel,
    MiseClassifierModel,
    MiseFeatureExtractor,
    MiseForAudioClassification,
)
from modeling_mise.encoders import AudioEncoder
from modeling_mise.modeling_audio_classifier import multimodal_features
from modeling_mise.segments import utterance_range

from .aligner import encode_audio
from .arguments import SPLIT_NEEDS, ConfigError, DataArguments, MiseTrainingArguments, ModelArguments
from .checkpoint import CheckpointManager, ResumePoint
from .classifier import generated_ratio_candidates, predict
from .engine import StageRuntime
from .features import CorpusFeatures
from .fold import REFIT, FoldData, FoldTrainer, Trained, Variant, classifier_features, refit_arguments

logger = get_logger(__name__)

STAGE_MARKER = "stage.json"
# processes meet only between folds, so one may wait for another's whole fold or the final models: a long timeout
PROCESS_GROUP_KWARGS = InitProcessGroupKwargs(timeout=timedelta(hours=12))
FINAL_FOLD = "final"
SPEAKER_FINAL_FOLD = "final-speaker"  # the released per-speaker pair, used with enrolment clips


def build_folds(data_args: DataArguments, corpus: Corpus, seed: int) -> list[Fold]:
    """The speaker-independent folds of `data_args.protocol` over the corpus (train.py and study.py)."""
    return make_folds(
        corpus.speakers(), corpus.labels(), protocol=data_args.protocol, sessions=corpus.sessions(),
        k=data_args.num_folds, num_validation_speakers=data_args.num_validation_speakers,
        split=given_split(data_args, corpus) if data_args.protocol == "split" else None,
        max_folds=data_args.max_folds, seed=seed, id2label=corpus.id2label, corpora=corpus.corpora(),
    )  # fmt: skip


def given_split(data_args: DataArguments, corpus: Corpus) -> np.ndarray:
    """Protocol split: train / validation / test per clip, from the corpus' split column or the speaker lists.

    Raises:
        ConfigError: naming `test_speakers` / `split_column` when neither is there, or both (the run never
            picks one silently), and naming speakers of the lists that the corpus lacks or that are in both.
    """
    lists = [name for name in ("test_speakers", "validation_speakers") if getattr(data_args, name)]
    column = corpus.splits()
    if column is not None:
        if lists:
            raise ConfigError(
                f"{' / '.join(lists)} / split_column: protocol 'split' got {' and '.join(lists)} and the "
                f"split column {data_args.split_column!r} of {corpus.source}; give one (split_column: none "
                "uses the lists)"
            )
        return column
    if not data_args.test_speakers:
        name = data_args.split_column
        missing = f"{corpus.source} has no column {name!r}" if name else "split_column is none"
        raise ConfigError(f"{SPLIT_NEEDS} ({missing})")
    speakers = corpus.speakers()
    test, validation = set(data_args.test_speakers), set(data_args.validation_speakers)
    unknown = sorted((test | validation) - set(speakers.tolist()))
    if unknown or test & validation:
        problem = (
            f"{unknown} not among the corpus' speakers" if unknown else f"{sorted(test & validation)} in both"
        )
        raise ConfigError(f"test_speakers / validation_speakers: {problem}")
    split = np.where(np.isin(speakers, sorted(test)), "test", "train")
    return np.where(np.isin(speakers, sorted(validation)), "validation", split)


@dataclass
class RunContext:
    """Everything the folds share: arguments, features, labels, where to write, how to resume."""

    accelerator: Accelerator
    data_args: DataArguments
    model_args: ModelArguments
    training_args: MiseTrainingArguments
    features: CorpusFeatures
    labels: torch.Tensor  # (N,) class ids
    id2label: dict[int, str]
    output_dir: Path
    config_hash: str
    checkpoints: CheckpointManager
    resume_from: ResumePoint | None = None
    resuming: bool = False
    progress: object | None = None
    transcripts: list[str | None] | None = None  # per row of `features`; the LoRA text encoder reads them
    speakers: np.ndarray | None = None  # per row of `features`; the feature-set choice groups by them
    enrolment: object | None = None  # `Enrolment` in a per-speaker fold: the as-released evaluation
    # several corpora with global statistics: the training statistics of the as-released evaluation and of the
    # released aligner (`training.corpora.TrainingStatistics`)
    training_statistics: object | None = None
    resume_points: dict[str, ResumePoint | None] = field(default_factory=dict)  # per fold, read once

    @property
    def classifier_candidates(self) -> int:
        """Stage-3 trainings of one fold: one per candidate generated-to-real ratio."""
        margs = self.model_args
        return len(generated_ratio_candidates(self.training_args, margs.augmentation, margs.multimodal))

    @property
    def selection_epochs(self) -> int:
        """Epochs of the three stages of one fold, every candidate ratio of stage 3 included (at most)."""
        args = self.training_args
        generator_epochs = args.generator_epochs if self.model_args.uses_generator else 0
        return args.aligner_epochs + generator_epochs + self.classifier_candidates * args.classifier_epochs

    @property
    def epochs_per_fold(self) -> int:
        """Epochs of one fold, the refit's at most included (run-wide tracker steps advance by this per fold)."""
        args = self.training_args
        refit = args.aligner_epochs + args.classifier_epochs if args.refit else 0
        if args.refit and self.model_args.uses_generator:
            refit += args.generator_epochs
        return self.selection_epochs + refit

    def resume_point(self, fold: str) -> ResumePoint | None:
        """Where a resumed run continues `fold`: the given checkpoint when it is the fold's, else (`latest`) the
        fold's newest checkpoint written before this run started."""
        if fold not in self.resume_points:
            point = None
            if self.resume_from is not None:
                point = self.resume_from if self.resume_from.progress.get("fold") == fold else None
            elif self.resuming and self.training_args.resume_from_checkpoint == "latest":
                point = self.checkpoints.for_fold(fold).resolve("latest")
            self.resume_points[fold] = point
        return self.resume_points[fold]

    def runtime(self, fold: str, fold_index: int, stage_offset: int) -> StageRuntime:
        """The stage runtime of one stage of one fold."""
        return StageRuntime(
            accelerator=self.accelerator,
            fold=fold,
            fold_index=fold_index,
            checkpoints=self.checkpoints.for_fold(fold),
            resume_from=self.resume_point(fold),
            checkpoint_every=self.training_args.checkpoint_every,
            max_grad_norm=self.training_args.max_grad_norm,
            step_offset=fold_index * self.epochs_per_fold + stage_offset,
            progress=self.progress,
        )


def write_json(path: Path, value: dict) -> None:
    """`value` as indented JSON, replaced in one step (a crash leaves the old file or the new one, whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=_json_default))
    tmp.replace(path)


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _completed_stage(directory: Path, ctx: RunContext) -> dict | None:
    """The stage summary of a stage finished by an earlier attempt of this run (resume only)."""
    marker = directory / STAGE_MARKER
    if not ctx.resuming or not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    return record if record.get("config_hash") == ctx.config_hash else None


@dataclass
class FolderStore:
    """A fold's finished stages under `directory` (`aligner/`, `generator/`, `classifier_candidates/ratio-<r>/`,
    `classifier/`, and a refit's in `refit/`): safetensors weights and a marker with the config hash, so a resumed
    run reuses them."""

    ctx: RunContext
    directory: Path

    def load(self, name: str, model_class: type) -> tuple[object, dict] | None:
        done = _completed_stage(self.directory / name, self.ctx)
        if done is None:
            return None
        model = model_class.from_pretrained(self.directory / name).eval()
        return model.to(self.ctx.accelerator.device), done["summary"]

    def save(self, name: str, model, summary: dict) -> None:
        model.save_pretrained(self.directory / name)
        write_json(
            self.directory / name / STAGE_MARKER, {"config_hash": self.ctx.config_hash, "summary": summary}
        )

    def child(self, name: str) -> FolderStore:
        return FolderStore(self.ctx, self.directory / name)


def fold_data(ctx: RunContext) -> FoldData:
    """What a fold's stages read, from the run's (or a fold's) context."""
    features = ctx.features
    return FoldData(
        features.audio, features.text, ctx.labels, ctx.id2label, features.audio_spec, ctx.model_args,
        ctx.training_args, ctx.accelerator.device, ctx.transcripts, ctx.speakers,
    )  # fmt: skip


def train_stages(
    ctx: RunContext, fold: Fold, fold_index: int, directory: Path, seed_index: int | None = None
) -> Trained:
    """Stages 1-3 of the run's variant on the fold's training speakers, selected on its validation speakers (and,
    with `refit`, once more on both), through `training.fold.FoldTrainer`, finished stages kept in `directory`.
    Stage k of the fold draws from the streams of `stage_seed(seed, seed_index, k)` (`seed_index` defaults to
    the fold's)."""
    trainer = FoldTrainer(
        fold_data(ctx), fold, fold_index, ctx.training_args.seed,
        lambda name, offset: ctx.runtime(name, fold_index, offset), FolderStore(ctx, directory),
        seed_index=seed_index,
    )  # fmt: skip
    trained = trainer.train(Variant.of(ctx.model_args))
    if (
        trained.selected is not None and ctx.progress is not None
    ):  # the bar counts every stage's maximum epochs
        fixed = refit_arguments(ctx.training_args, trained.selected.stages)
        refit_epochs = fixed.aligner_epochs + fixed.classifier_epochs
        refit_epochs += fixed.generator_epochs if ctx.model_args.uses_generator else 0
        ctx.progress.update(ctx.epochs_per_fold - ctx.selection_epochs - refit_epochs)
    return trained


def run_fold(ctx: RunContext, fold: Fold, fold_index: int) -> dict:
    """Train one fold and write `OUT/folds/<fold>/metrics.json` (UAR, WA, macro-F1, confusion matrix)."""
    directory = ctx.output_dir / "folds" / fold.name
    metrics_path = directory / "metrics.json"
    if ctx.resuming and metrics_path.is_file():
        previous = json.loads(metrics_path.read_text())
        if previous.get("config_hash") == ctx.config_hash:
            logger.info(f"fold {fold.name}: already complete, skipped")
            if ctx.progress is not None:
                ctx.progress.update(ctx.epochs_per_fold)
            return previous
    trained = train_stages(ctx, fold, fold_index, directory)
    test = fold.test
    num_labels = len(ctx.id2label)
    z_test = encode_audio(trained.aligner, ctx.features.audio[test])
    y_true = ctx.labels[test].numpy()
    extra = {}
    if ctx.model_args.multimodal:  # test clips with their transcripts; also scored as if they had none
        features = classifier_features(trained.aligner, fold_data(ctx), test, fold.train, z_a=z_test)
        y_pred = predict(trained.classifier, features)
        y_null = predict(
            trained.classifier, multimodal_features(z_test, text_dim=trained.classifier.config.text_dim)
        )
        extra["uar_without_transcript"] = classification_metrics(y_true, y_null, num_labels, ctx.id2label)[
            "uar"
        ]
    else:
        y_pred = predict(trained.classifier, z_test)
        if ctx.enrolment is not None:
            selected = trained.selected  # after a refit: its selection's models choose n0
            pair = None if selected is None else (selected.aligner, selected.classifier)
            extra.update(ctx.enrolment.evaluate(trained.aligner, trained.classifier, fold, pair))
        if ctx.training_statistics is not None:
            extra.update(ctx.training_statistics.evaluate(trained.aligner, trained.classifier, fold))
    metrics = classification_metrics(y_true, y_pred, num_labels, ctx.id2label)
    with torch.no_grad():
        aligner_logits = trained.aligner.classify(z_test.to(ctx.accelerator.device)).argmax(-1).cpu().numpy()
    ratio = trained.stages["classifier"]["generated_ratio"]
    record = {
        "fold": fold.name,
        "test_speakers": fold.test_speakers,
        "validation_speakers": fold.validation_speakers,
        "clips": {"train": len(fold.train), "validation": len(fold.validation), "test": len(test)},
        **metrics,
        "aligner_uar": classification_metrics(y_true, aligner_logits, num_labels, ctx.id2label)["uar"],
        "generated_ratio": ratio,  # chosen on the validation speakers (stages.classifier: every candidate's score)
        **extra,
        "stages": trained.stages,
        "y_true": y_true.tolist(),
        "y_pred": y_pred.tolist(),
        "config_hash": ctx.config_hash,
    }
    write_json(metrics_path, record)
    shutil.rmtree(
        ctx.checkpoints.root / fold.name, ignore_errors=True
    )  # a finished fold resumes from its metrics
    logger.info(
        f"fold {fold.name}: UAR {metrics['uar']:.4f} WA {metrics['wa']:.4f} F1 {metrics['f1_macro']:.4f}"
        + ("" if ratio is None else f", generated ratio {ratio:g} ({_candidate_scores(trained.stages)})")
    )
    if ctx.accelerator.trackers:
        scalars = {f"eval/fold_{key}": metrics[key] for key in ("uar", "wa", "f1_macro")}
        ctx.accelerator.log(scalars, step=(fold_index + 1) * ctx.epochs_per_fold)
    return record


def _candidate_scores(stages: dict) -> str:
    """The validation score of every candidate ratio, for the fold's log line (a refit's: its selection's)."""
    return ", ".join(
        f"{candidate['generated_ratio']:g}: {candidate['best_score']:.4f}"
        for candidate in stages.get("selection", stages)["classifier"]["generated_ratio_candidates"]
    )


def run_folds(
    ctx: RunContext,
    folds: list[Fold],
    final_trainings: int = 0,
    context_for: Callable[[Fold], RunContext] | None = None,
) -> list[dict]:
    """Every fold, whole folds spread over the processes (fold i on process i mod world size); every process
    returns all folds' records, read from their `metrics.json`. `final_trainings`: how many final models (the
    released pair, the per-speaker pair) the main process trains after its folds (counted in its progress bar).
    `context_for(fold)`: the fold's context (e.g. its features), `ctx` when not given."""
    accelerator = ctx.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = [index for index in range(len(folds)) if index % world == rank]
    if ctx.progress is not None:
        ctx.progress.total = (len(mine) + final_trainings) * ctx.epochs_per_fold
    context_for = context_for or (lambda fold: ctx)
    records = {index: run_fold(context_for(folds[index]), folds[index], index) for index in mine}
    if world > 1:
        accelerator.wait_for_everyone()
        for index, fold in enumerate(folds):
            if index not in records:
                records[index] = json.loads(
                    (ctx.output_dir / "folds" / fold.name / "metrics.json").read_text()
                )
    return [records[index] for index in range(len(folds))]


def final_fold(speakers: np.ndarray, num_validation_speakers: int, seed: int, labels: np.ndarray) -> Fold:
    """All speakers but a few validation speakers (for early stopping) train the released models; drawn as the
    folds' validation speakers are (`mise.folds.final_fold`), an error when no draw keeps every class."""
    return folds_final_fold(speakers, labels, num_validation_speakers, seed, name=FINAL_FOLD)


def released_stage_summary(output_dir: Path, stage: str, fold: str = FINAL_FOLD) -> dict:
    """The summary of a released model's stage (its stage marker under `OUT/final` or `OUT/final-speaker`, or
    their `refit/`), empty without one."""
    refit = output_dir / fold / REFIT / stage / STAGE_MARKER
    marker = refit if refit.is_file() else output_dir / fold / stage / STAGE_MARKER
    return (json.loads(marker.read_text())["summary"] or {}) if marker.is_file() else {}


def released_generator_quality(output_dir: Path) -> dict | None:
    """The quality scores of the released generator, None without one."""
    return released_stage_summary(output_dir, "generator").get("quality")


def _load_pair(directory: Path) -> tuple[MiseAlignerModel, MiseClassifierModel]:
    """The (aligner, classifier) a fold's stages saved in `directory`, in eval mode."""
    return (
        MiseAlignerModel.from_pretrained(directory / "aligner").eval(),
        MiseClassifierModel.from_pretrained(directory / "classifier").eval(),
    )


def train_final_models(
    ctx: RunContext,
    fold: Fold,
    fold_index: int,
    audio_encoder: AudioEncoder,
    seed_index: int,
    speaker_ctx: RunContext | None = None,
    speaker_normalization: dict | None = None,
) -> Path:
    """Train on all speakers and write the models, each folder named as its Hub repository:
    `OUT/models/mise-{aligner,generator,classifier,audio-classifier}`.

    With `speaker_ctx` (per-speaker features), a second aligner + classifier trains on them too, on the second
    process when there is one (it saves its stages; the main process reads them back); the end-to-end model then
    takes enrolment clips (`speaker_normalization` records the choice either way)."""
    directory = ctx.output_dir / "models"
    accelerator = ctx.accelerator
    speaker_directory = ctx.output_dir / SPEAKER_FINAL_FOLD
    speaker_fold = dataclasses.replace(fold, name=SPEAKER_FINAL_FOLD)
    if speaker_ctx is not None and accelerator.process_index == 1 % accelerator.num_processes:
        train_stages(speaker_ctx, speaker_fold, fold_index + 1, speaker_directory, seed_index)
    if accelerator.is_main_process:
        trained = train_stages(ctx, fold, fold_index, ctx.output_dir / FINAL_FOLD, seed_index)
        if ctx.training_statistics is not None:  # several corpora: the released aligner reads raw features
            ctx.training_statistics.release(trained.aligner, np.union1d(fold.train, fold.validation))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        speaker_pair = speaker_prior = None
        if speaker_ctx is not None:
            refit = speaker_ctx.training_args.refit
            selected_pair = _load_pair(
                speaker_directory
            )  # the selection's: it never saw the validation speakers
            speaker_pair = _load_pair(speaker_directory / REFIT) if refit else selected_pair
            if speaker_ctx.enrolment is not None:  # enrolment prior, n0 chosen on the validation speakers
                prior = speaker_ctx.enrolment.calibrate(*selected_pair, speaker_fold, refit=refit)
                speaker_prior = (prior.mean, prior.var, prior.strength)
        models = {
            "aligner": trained.aligner,
            "classifier": trained.classifier,
            "generator": trained.generated.model,
        }
        for kind, model in models.items():  # folders named as their Hub repositories
            if model is not None:
                model.save_pretrained(directory / MODEL_FOLDERS[kind])
        aligner, classifier = trained.aligner.to("cpu"), trained.classifier.to("cpu")
        audio_model = MiseForAudioClassification.from_components(
            aligner, classifier, audio_encoder, speaker_pair, speaker_normalization, speaker_prior
        )
        audio_model.config.max_duration_s = ctx.model_args.max_duration_s
        audio_model.config.utterance_seconds = utterance_range(
            ctx.features.durations, audio_model.config.max_duration_s
        )
        audio_model.save_pretrained(directory / MODEL_FOLDERS["audio-classifier"])
        MiseFeatureExtractor(
            sampling_rate=audio_encoder.sampling_rate, max_duration_s=ctx.model_args.max_duration_s
        ).save_pretrained(directory / MODEL_FOLDERS["audio-classifier"])
        for name in (FINAL_FOLD, SPEAKER_FINAL_FOLD):
            shutil.rmtree(ctx.checkpoints.root / name, ignore_errors=True)
    accelerator.wait_for_everyone()
    logger.info(f"final models written to {directory}")
    return directory
