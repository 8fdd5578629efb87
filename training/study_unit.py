"""One unit of the study: every variant on one fold for one seed, trained through `training.fold.FoldTrainer`
(stage 1 once per alignment setting, stage 2 once per generator setting, stage 3 per variant, as `train.py`
trains its one variant). The generator's checkpoints are scored as they are evaluated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import Accelerator

from mise.folds import Fold
from mise.metrics import classification_metrics
from mise.quality import MIProbe, generation_quality

from .aligner import encode_audio
from .arguments import DataArguments, MiseTrainingArguments, ModelArguments
from .classifier import predict
from .engine import StageRuntime
from .fold import GENERATOR, FoldData, FoldTrainer, Generated, Space, Variant, classifier_features
from .study_variants import StudyArguments, classic_baseline, validated_c

QUALITY_SCALARS = ("frechet_distance", "precision", "recall")


@dataclass
class StudyRuntime(StageRuntime):
    """A stage runtime that keeps every epoch's record (losses, and the MI bounds at each evaluation)."""

    records: list[dict] = field(default_factory=list)

    def log(self, values: dict[str, float], epoch: int) -> None:
        self.records.append({"epoch": epoch + 1, **values})


@dataclass
class Study:
    """Everything the units share: arguments, frozen features, labels."""

    accelerator: Accelerator
    data_args: DataArguments
    model_args: ModelArguments
    training_args: MiseTrainingArguments
    study_args: StudyArguments
    audio: torch.Tensor  # (N, audio_dim) frozen features
    text: torch.Tensor | None  # (N, text_dim), NaN rows without transcript
    labels: torch.Tensor  # (N,)
    id2label: dict[int, str]
    audio_spec: dict
    # (fold, validation rows, without_validation) -> (test predictions, the feature set chosen)
    classic_cache: dict[tuple, tuple] = field(default_factory=dict)
    speakers: np.ndarray | None = None  # (N,) speaker of every row: out-of-fold variants group by it
    corpora: np.ndarray | None = None  # (N,) corpus of every row in a run of several corpora
    transcripts: list[str | None] | None = None  # per row; a LoRA-tuned text encoder reads them
    test_speaker_clips: bool = (
        False  # the unit's fold reads its test speakers' clips (per-speaker statistics)
    )

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def fold_data(self) -> FoldData:
        return FoldData(
            self.audio, self.text, self.labels, self.id2label, self.audio_spec, self.model_args,
            self.training_args, self.accelerator.device, self.transcripts, self.speakers,
            out_of_fold_groups=self.study_args.out_of_fold_groups, test_speaker_clips=self.test_speaker_clips,
            corpora=self.corpora,
        )  # fmt: skip


class FoldUnit:
    """Runs the study's variants on `fold` for `seed`; `train_rows` are the fold's (possibly cut) training rows."""

    def __init__(self, study: Study, fold: Fold, fold_index: int, seed: int, train_rows: np.ndarray) -> None:
        self.study, self.fold, self.fold_index, self.seed = study, fold, fold_index, seed
        self.trainer = FoldTrainer(
            study.fold_data(), fold, fold_index, seed, self.runtime, train_rows=train_rows, observer=self
        )
        self.probes: dict[tuple, MIProbe] = {}
        self.quality_records: list[dict] = []
        self.final_quality: dict[str, dict] = {}
        self.owners: dict[tuple, str] = {}  # generator setting -> the variant that trained it
        self.checkpoint_quality: dict[tuple, list[dict]] = {}  # generator setting -> its scored checkpoints
        self.maps: dict[str, dict[str, np.ndarray]] = {}

    def runtime(self, fold_name: str, offset: int) -> StudyRuntime:
        return StudyRuntime(
            self.study.accelerator,
            fold=fold_name,
            fold_index=self.fold_index,
            max_grad_norm=self.study.training_args.max_grad_norm,
        )

    # ------------------------------------------------------------------------------------------ stage 2
    def _probe(self, variant: Variant, space: Space, scored_codes: torch.Tensor | None) -> MIProbe:
        """The real-data MI probe of a space (with or without text codes), shared by its generators."""
        key = (variant.aligner_key, None if scored_codes is None else scored_codes.shape[1])
        if key not in self.probes:  # Q is trained on real data only
            seed = self.trainer.stage_seed(GENERATOR)
            labels = self.study.labels[space.train]
            self.probes[key] = MIProbe().fit(space.z_train, labels, scored_codes, seed=seed)
        return self.probes[key]

    @staticmethod
    def _scored_codes(codes: torch.Tensor | None) -> torch.Tensor | None:
        """The text bound needs a code on every row: with missing transcripts only the emotion bound is scored."""
        return None if codes is None or torch.isnan(codes).any() else codes

    def checkpoint_scorer(self, variant: Variant, space: Space, codes: torch.Tensor | None):
        """Fréchet distance and k-NN precision/recall of every checkpoint, in the first `quality_folds` folds."""
        if self.fold_index >= self.study.study_args.quality_folds:
            return None
        scored = self._scored_codes(codes)
        probe, seed, labels = (
            self._probe(variant, space, scored),
            self.trainer.stage_seed(GENERATOR),
            self.study.labels,
        )
        scored_checkpoints = self.checkpoint_quality.setdefault(variant.generator_key, [])

        def score(model) -> dict[str, float]:
            quality = generation_quality(
                model, space.z_train, labels[space.train], scored, seed=seed, probe=probe
            )
            scored_checkpoints.append(quality)
            return {key: quality[key] for key in QUALITY_SCALARS if quality[key] is not None}

        return score

    def generator_trained(
        self, variant: Variant, space: Space, generated: Generated, runtime: StudyRuntime
    ) -> None:
        """Record every evaluation of the new generator, its final quality and (first fold) its map."""
        scored = self._scored_codes(generated.codes_train)
        probe, seed = self._probe(variant, space, scored), self.trainer.stage_seed(GENERATOR)
        quality = self.checkpoint_quality.get(variant.generator_key, [])
        self._record_checkpoints(variant, runtime.records, generated.summary, quality)
        self.final_quality[variant.name] = generation_quality(
            generated.model, space.z_train, self.study.labels[space.train], scored, seed=seed, probe=probe
        )
        self.owners[variant.generator_key] = variant.name
        if self.fold_index == 0:  # the first fold's maps, one set per seed
            self._keep_map(variant, generated, space, seed)

    def _record_checkpoints(
        self, variant: Variant, records: list[dict], summary: dict, quality: list[dict]
    ) -> None:
        """One quality record per generator evaluation: MI bounds always, FD / k-NN where scored."""
        batches = summary["steps"] // max(1, summary["epochs_run"])  # the stage's steps per epoch
        evaluations = [record for record in records if "eval/generator_mi_emotion_nats" in record]
        for index, record in enumerate(evaluations):
            entry = {
                "variant": variant.name, "seed": self.seed, "fold": self.fold.name, "epoch": record["epoch"],
                "step": record["epoch"] * batches, "selected": record["epoch"] == summary["best_epoch"],
            }  # fmt: skip
            entry.update(
                {k.split("_", 1)[1]: v for k, v in record.items() if k.startswith("eval/generator_")}
            )
            if index < len(quality):
                entry["per_class"] = quality[index]["per_class"]
            self.quality_records.append(entry)

    def _keep_map(self, variant: Variant, generated: Generated, space: Space, seed: int) -> None:
        """Real and generated training features (one generated row per real row) for the 2-D maps."""
        model, codes = generated.model, generated.codes_train
        device = model.null_text_code.device
        labels = self.study.labels[space.train]
        output = model.generate(
            labels=labels.to(device), text_codes=None if codes is None else codes.to(device),
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        self.maps[variant.name] = {
            "real": space.z_train.numpy(),
            "real_labels": labels.numpy(),
            "generated": output.features.float().cpu().numpy(),
            "generated_labels": output.labels.cpu().numpy(),
        }

    # ------------------------------------------------------------------------------------------ stage 3
    def classify(self, variant: Variant) -> tuple[np.ndarray, dict]:
        """(test predictions, what the fold chose on its validation speakers: validation UAR, generated-to-real
        ratio, feature set) of `variant`."""
        study, labels, val = self.study, self.study.labels, self.fold.validation
        if variant.augmentation == "classic":
            # deterministic: shared by seeds that hold out the same speakers
            key = (self.fold.name, tuple(val), variant.without_validation)
            if key not in study.classic_cache:
                study.classic_cache[key] = self._classic(variant)
            return study.classic_cache[key]
        trained = self.trainer.train(variant)
        if variant.uses_generator and variant.name not in self.final_quality:  # the same generator, by name
            self.final_quality[variant.name] = self.final_quality[self.owners[variant.generator_key]]
        selected = trained.selected or trained
        if variant.aligner_head:  # stage 1's own head reads z_a alone
            val_pred = predict(selected.aligner, selected.space.z_val)
            y_pred = predict(trained.aligner, encode_audio(trained.aligner, study.audio[self.fold.test]))
        else:
            val_pred = predict(selected.classifier, selected.space.features_val)
            test = classifier_features(trained.aligner, self.trainer.data, self.fold.test, self.fold.train)
            y_pred = predict(trained.classifier, test)
        val_uar = classification_metrics(labels[val].numpy(), val_pred, study.num_labels)
        return y_pred, {
            "val_uar": val_uar["uar"],
            "generated_ratio": selected.stages["classifier"]["generated_ratio"],
            "feature_set": selected.stages["aligner"].get("feature_set"),
            "aligner_candidate": selected.stages["aligner"].get("aligner_candidate"),
        }

    def _classic(self, variant: Variant) -> tuple[np.ndarray, dict]:
        """The classic baseline's test predictions and choices: stage 1's feature set (chosen on the same
        training side), L2 chosen on the validation speakers as the learned arms choose theirs, the classes
        weighed as in the learned arms."""
        study, val, train = self.study, self.fold.validation, self.trainer.train_rows
        audio, labels = study.audio.numpy(), study.labels.numpy()
        name, columns, _ = self.trainer.feature_set
        max_iter, balanced = study.study_args.classic_max_iter, study.training_args.class_balanced_batches
        c, val_uar = validated_c(
            audio, labels, train, val, study.study_args.classic_c, max_iter, columns, balanced
        )
        rows = train if variant.without_validation else np.union1d(train, val)
        predictions = classic_baseline(
            audio, labels, rows, self.fold.test, c, max_iter, columns=columns, balanced=balanced
        )
        return predictions, {"feature_set": name, "val_uar": val_uar, "classic_c": c}

    def run(self) -> dict:
        """Every selected variant; returns the unit's rows, quality records and maps."""
        study, fold = self.study, self.fold
        y_test = study.labels[fold.test].numpy()
        rows = []
        for variant in study.study_args.selected:
            tick = time.perf_counter()
            y_pred, chosen = self.classify(variant)
            metrics = classification_metrics(y_test, y_pred, study.num_labels, study.id2label)
            train_rows = fold.train if variant.full_data else self.trainer.train_rows
            rows.append({
                "variant": variant.name, "seed": self.seed, "fold": fold.name,
                "test_speakers": " ".join(fold.test_speakers), "uar": metrics["uar"], "wa": metrics["wa"],
                "f1_macro": metrics["f1_macro"], "val_uar": chosen.get("val_uar"),
                "generated_ratio": chosen.get("generated_ratio"), "feature_set": chosen.get("feature_set"),
                "classic_c": chosen.get("classic_c"), "aligner_candidate": chosen.get("aligner_candidate"),
                "train_clips": int(len(train_rows)), "test_clips": int(len(fold.test)),
                "seconds": time.perf_counter() - tick, "per_class_recall": metrics["per_class_recall"],
                "y_true": y_test.tolist(), "y_pred": np.asarray(y_pred).tolist(),
            })  # fmt: skip
        return {
            "seed": self.seed,
            "fold": fold.name,
            "rows": rows,
            "quality": self.quality_records,
            "final_quality": self.final_quality,
            "maps": self.maps,
        }
