"""One unit of the study: every variant on one fold for one seed, sharing what the variants have in common.

Per unit, stage 1 (`train_aligner`) runs once per alignment setting and stage 2 (`train_generator`) once per
generator setting; each variant trains its own stage-3 classifier (`train_classifier_choosing_ratio`, as the
training pipeline does), with the generated-to-real ratio chosen on the validation speakers. The generator's
checkpoints are scored as they are evaluated.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import Accelerator

from mise.folds import Fold
from mise.metrics import classification_metrics
from mise.quality import MIProbe, generation_quality

from .aligner import aligner_config, encode_audio, text_codes, train_aligner
from .arguments import DataArguments, MiseTrainingArguments, ModelArguments
from .classifier import classifier_config, predict, train_classifier_choosing_ratio
from .engine import StageRuntime
from .infogan import generator_config, train_generator
from .out_of_fold import out_of_fold_features
from .pipeline import refit_arguments, stage_seed
from .study_variants import StudyArguments, Variant, classic_baseline

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
    classic_cache: dict[str, np.ndarray] = field(default_factory=dict)  # fold -> test predictions
    speakers: np.ndarray | None = None  # (N,) speaker of every row: out-of-fold variants group by it

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


@dataclass
class Space:
    """A trained aligner and the `z_a` of the fold's training, validation and test rows."""

    aligner: object
    train: np.ndarray
    z_train: torch.Tensor
    z_val: torch.Tensor
    z_test: torch.Tensor
    summary: dict | None = None  # stage 1's summary (its chosen epoch: what a refit trains for)
    val: np.ndarray | None = None  # the rows of z_val (none after a refit)


class FoldUnit:
    """Runs the study's variants on `fold` for `seed`; `train_rows` are the fold's (possibly cut) training rows."""

    def __init__(self, study: Study, fold: Fold, fold_index: int, seed: int, train_rows: np.ndarray) -> None:
        self.study, self.fold, self.fold_index, self.seed, self.train_rows = (
            study,
            fold,
            fold_index,
            seed,
            train_rows,
        )
        self.spaces: dict[tuple, Space] = {}
        self.generators: dict[tuple, tuple] = {}
        self.generator_summaries: dict[tuple, dict] = {}  # the selection's, per generator setting
        self.probes: dict[tuple, MIProbe] = {}
        self.quality_records: list[dict] = []
        self.final_quality: dict[str, dict] = {}
        self.maps: dict[str, dict[str, np.ndarray]] = {}

    def runtime(self) -> StudyRuntime:
        return StudyRuntime(
            self.study.accelerator,
            fold=self.fold.name,
            fold_index=self.fold_index,
            max_grad_norm=self.study.training_args.max_grad_norm,
        )

    # ------------------------------------------------------------------------------------------ stage 1
    def space(self, variant: Variant) -> Space:
        """The aligned (or unaligned) space of `variant`, trained once per unit."""
        if variant.aligner_key not in self.spaces and variant.out_of_fold:
            self.spaces[variant.aligner_key] = self._out_of_fold_space(variant)
        if variant.aligner_key not in self.spaces:
            train = self.fold.train if variant.full_data else self.train_rows
            self.spaces[variant.aligner_key] = self._space(variant, train, self.fold.validation)
        return self.spaces[variant.aligner_key]

    def _space(
        self, variant: Variant, train: np.ndarray, val: np.ndarray, args: MiseTrainingArguments | None = None
    ) -> Space:
        """Stage 1 of `variant` on the rows `train`, selected on `val` (none: a refit with `args`' epochs)."""
        aligner, summary = self._train_aligner(
            variant, train, stage_seed(self.seed, self.fold_index, 1), val, args
        )
        encode = lambda rows: encode_audio(aligner, self.study.audio[rows])  # noqa: E731
        return Space(aligner, train, encode(train), encode(val), encode(self.fold.test), summary, val)

    def _train_aligner(
        self,
        variant: Variant,
        train: np.ndarray,
        seed: int,
        val: np.ndarray | None = None,
        args: MiseTrainingArguments | None = None,
    ):
        """Stage 1 of `variant` on the rows `train`, early-stopped on `val` (the fold's validation speakers by
        default); returns (aligner, summary)."""
        study = self.study
        val = self.fold.validation if val is None else val
        model_args = dataclasses.replace(study.model_args, no_alignment=not variant.alignment)
        text_dim = None if study.text is None else study.text.shape[1]
        config = aligner_config(model_args, study.audio.shape[1], text_dim, study.id2label, study.audio_spec)
        return train_aligner(
            self.runtime(), config, args or study.training_args, study.audio[train], study.labels[train],
            study.audio[val], study.labels[val], text_train=None if study.text is None else study.text[train],
            seed=seed,
        )  # fmt: skip

    def _out_of_fold_space(self, variant: Variant) -> Space:
        """The in-fold space of `variant` with out-of-fold `z_a` for its training rows (training.out_of_fold)."""
        base = self.space(dataclasses.replace(variant, out_of_fold=False))
        if self.study.speakers is None:
            raise ValueError("out-of-fold features need the speaker of every row (Study.speakers)")
        groups = self.study.study_args.out_of_fold_groups

        def fit(rows: np.ndarray, index: int):
            seed = stage_seed(self.seed, self.fold_index, 10 + index)
            return self._train_aligner(variant, base.train[rows], seed)[0]

        z_train = out_of_fold_features(
            base.z_train, self.study.audio[base.train], self.study.speakers[base.train], fit, groups,
            seed=stage_seed(self.seed, self.fold_index, 10),
        )  # fmt: skip
        return dataclasses.replace(base, z_train=z_train)

    def text_codes(self, space: Space, rows: np.ndarray, variant: Variant) -> torch.Tensor | None:
        """Text codes of a generator: `z_t` of an aligned space, the standardised raw `t` without alignment."""
        text = self.study.text
        if text is None or not variant.text_code:
            return None
        return text_codes(space.aligner, text[rows], reference=text[space.train])

    # ------------------------------------------------------------------------------------------ stage 2
    def generator(self, variant: Variant, space: Space) -> tuple:
        """(generator, training text codes) of `variant`, trained once per generator setting and unit."""
        if variant.generator_key in self.generators:
            model, codes_train, owner = self.generators[variant.generator_key]
            self.final_quality[variant.name] = self.final_quality[owner]  # the same generator, listed by name
            return model, codes_train
        study, targs = self.study, self.study.training_args
        labels, val = study.labels, self.fold.validation
        codes_train = self.text_codes(space, space.train, variant)
        codes_val = self.text_codes(space, val, variant)
        config = self._generator_config(variant, space, codes_train)
        seed = stage_seed(self.seed, self.fold_index, 2)
        # the text bound needs a code on every row: with missing transcripts only the emotion bound is scored
        scored_codes = None if codes_train is None or torch.isnan(codes_train).any() else codes_train
        probe_key = (variant.aligner_key, scored_codes is not None)
        if (
            probe_key not in self.probes
        ):  # Q is trained on real data only, shared by the generators of a space
            self.probes[probe_key] = MIProbe().fit(
                space.z_train, labels[space.train], scored_codes, seed=seed
            )
        probe = self.probes[probe_key]
        checkpoint_quality: list[dict] = []

        def score_checkpoint(model) -> dict[str, float]:
            quality = generation_quality(
                model, space.z_train, labels[space.train], scored_codes, seed=seed, probe=probe
            )
            checkpoint_quality.append(quality)
            return {key: quality[key] for key in QUALITY_SCALARS if quality[key] is not None}

        runtime = self.runtime()
        model, summary = train_generator(
            runtime, config, targs, space.z_train, labels[space.train], space.z_val, labels[val],
            text_codes_train=codes_train, text_codes_val=codes_val, seed=seed,
            on_evaluate=score_checkpoint if self.fold_index < study.study_args.quality_folds else None,
        )  # fmt: skip
        model.to(study.accelerator.device)
        self._record_checkpoints(
            variant, runtime.records, summary["best_epoch"], len(space.train), checkpoint_quality
        )
        self.final_quality[variant.name] = generation_quality(
            model, space.z_train, labels[space.train], scored_codes, seed=seed, probe=probe
        )
        if self.fold_index == 0:  # the first fold's maps, one set per seed
            self._keep_map(variant, model, space, codes_train, seed)
        self.generators[variant.generator_key] = (model, codes_train, variant.name)
        self.generator_summaries[variant.generator_key] = summary
        return model, codes_train

    def _generator_config(self, variant: Variant, space: Space, codes_train: torch.Tensor | None):
        model_args = dataclasses.replace(
            self.study.model_args, augmentation=variant.augmentation, no_alignment=not variant.alignment,
            no_text_code=not variant.text_code, no_mi=not variant.mi,
        )  # fmt: skip
        code_dim = None if codes_train is None else codes_train.shape[1]
        return generator_config(model_args, space.z_train.shape[1], code_dim, self.study.id2label)

    def _record_checkpoints(
        self, variant: Variant, records: list[dict], best_epoch: int, train_rows: int, quality: list[dict]
    ) -> None:
        """One quality record per generator evaluation: MI bounds always, FD / k-NN where scored."""
        batches = max(1, round(train_rows / self.study.training_args.generator_batch_size))  # as make_loader
        evaluations = [record for record in records if "eval/generator_mi_emotion_nats" in record]
        for index, record in enumerate(evaluations):
            entry = {
                "variant": variant.name, "seed": self.seed, "fold": self.fold.name, "epoch": record["epoch"],
                "step": record["epoch"] * batches, "selected": record["epoch"] == best_epoch,
            }  # fmt: skip
            entry.update(
                {k.split("_", 1)[1]: v for k, v in record.items() if k.startswith("eval/generator_")}
            )
            if index < len(quality):
                entry["per_class"] = quality[index]["per_class"]
            self.quality_records.append(entry)

    def _keep_map(self, variant: Variant, model, space: Space, codes_train, seed: int) -> None:
        """Real and generated training features (one generated row per real row) for the 2-D maps."""
        device = model.null_text_code.device
        labels = self.study.labels[space.train]
        output = model.generate(
            labels=labels.to(device), text_codes=None if codes_train is None else codes_train.to(device),
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        self.maps[variant.name] = {
            "real": space.z_train.numpy(),
            "real_labels": labels.numpy(),
            "generated": output.features.float().cpu().numpy(),
            "generated_labels": output.labels.cpu().numpy(),
        }

    # ------------------------------------------------------------------------------------------ stage 3
    def classify(self, variant: Variant) -> tuple[np.ndarray, float | None, float | None]:
        """(test predictions, validation UAR, chosen generated-to-real ratio) of `variant`."""
        study, targs = self.study, self.study.training_args
        labels, val = study.labels, self.fold.validation
        if variant.augmentation == "classic":
            if self.fold.name not in study.classic_cache:  # deterministic: shared by the seeds
                study.classic_cache[self.fold.name] = classic_baseline(
                    study.audio.numpy(), labels.numpy(), np.union1d(self.train_rows, val), self.fold.test,
                    study.study_args.classic_c, study.study_args.classic_max_iter,
                )  # fmt: skip
            return study.classic_cache[self.fold.name], None, None
        space = self.space(variant)
        generator, codes_train = self.generator(variant, space) if variant.uses_generator else (None, None)
        if variant.class_balanced is not None:
            targs = dataclasses.replace(targs, class_balanced_generation=variant.class_balanced)
        if variant.noise_std is not None:
            targs = dataclasses.replace(targs, noise_std=variant.noise_std)
        classifier, summary = self._classifier(variant, space, (generator, codes_train), targs)
        val_uar = classification_metrics(
            labels[val].numpy(), predict(classifier, space.z_val), study.num_labels
        )
        if targs.refit and not variant.out_of_fold:
            chosen = {"aligner": space.summary, "classifier": summary}
            chosen["generator"] = self.generator_summaries.get(variant.generator_key)
            classifier, space = self._refit(variant, refit_arguments(targs, chosen))
        return predict(classifier, space.z_test), val_uar["uar"], summary["generated_ratio"]

    def _classifier(self, variant: Variant, space: Space, generated: tuple, args: MiseTrainingArguments):
        """Stage 3 of `variant` on `space` (`generated`: its generator and training text codes, or Nones)."""
        study = self.study
        generator, codes_train = generated
        head = space.aligner.emotion_head if study.model_args.classifier_init_from_aligner else None
        return train_classifier_choosing_ratio(
            lambda index: self.runtime(), classifier_config(study.model_args, space.z_train.shape[1], study.id2label),
            args, (space.z_train, study.labels[space.train], space.z_val, study.labels[space.val]),
            variant.augmentation, generator=generator, text_codes_train=codes_train,
            seed=stage_seed(self.seed, self.fold_index, 3), head_init=head,
        )  # fmt: skip

    def _refit(self, variant: Variant, args: MiseTrainingArguments) -> tuple:
        """(classifier, space) of `variant` refitted (`training.pipeline.train_stages`): every stage once more on
        the training and validation rows with the choices in `args`; stage 1 and 2 once per setting and unit."""
        key = variant.aligner_key + ("refit",)
        if key not in self.spaces:
            rows = np.concatenate([self.space(variant).train, self.fold.validation])
            self.spaces[key] = self._space(variant, rows, self.fold.validation[:0], args)
        space, generated = self.spaces[key], (None, None)
        if variant.uses_generator:
            generator_key = variant.generator_key + ("refit",)
            if generator_key not in self.generators:
                codes = self.text_codes(space, space.train, variant)
                model, _ = train_generator(
                    self.runtime(), self._generator_config(variant, space, codes), args, space.z_train,
                    self.study.labels[space.train], space.z_val, self.study.labels[space.val],
                    text_codes_train=codes, seed=stage_seed(self.seed, self.fold_index, 2),
                )  # fmt: skip
                self.generators[generator_key] = (
                    model.to(self.study.accelerator.device),
                    codes,
                    variant.name,
                )
            generated = self.generators[generator_key][:2]
        return self._classifier(variant, space, generated, args)[0], space

    def run(self) -> dict:
        """Every selected variant; returns the unit's rows, quality records and maps."""
        study, fold = self.study, self.fold
        y_test = study.labels[fold.test].numpy()
        rows = []
        for variant in study.study_args.selected:
            tick = time.perf_counter()
            y_pred, val_uar, ratio = self.classify(variant)
            metrics = classification_metrics(y_test, y_pred, study.num_labels, study.id2label)
            rows.append({
                "variant": variant.name, "seed": self.seed, "fold": fold.name,
                "test_speakers": " ".join(fold.test_speakers), "uar": metrics["uar"], "wa": metrics["wa"],
                "f1_macro": metrics["f1_macro"], "val_uar": val_uar, "generated_ratio": ratio,
                "train_clips": int(len(fold.train if variant.full_data else self.train_rows)),
                "test_clips": int(len(fold.test)), "seconds": time.perf_counter() - tick,
                "per_class_recall": metrics["per_class_recall"], "y_true": y_test.tolist(),
                "y_pred": np.asarray(y_pred).tolist(),
            })  # fmt: skip
        return {
            "seed": self.seed,
            "fold": fold.name,
            "rows": rows,
            "quality": self.quality_records,
            "final_quality": self.final_quality,
            "maps": self.maps,
        }
