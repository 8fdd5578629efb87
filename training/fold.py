"""One fold's stages, trained in one place: `train.py` trains one variant of a fold through `FoldTrainer` (with
checkpoints, resume and the tracker), the study every variant of a (seed, fold) unit, the bench the shipped one.

Stage 1 trains once per alignment setting (`Variant.aligner_key`; once per `aligner_candidates` entry where it
chooses among several), stage 2 once per generator setting
(`Variant.generator_key`), stage 3 once per variant and candidate generated-to-real ratio; with `refit` the
stages then train once more on the training and validation speakers with the choices made (`FoldTrainer.refit`).
Every stage draws from its own streams, derived from (seed, fold, stage) (`training.engine.stage_seed`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from accelerate.logging import get_logger

from mise.folds import Fold
from mise.metrics import classification_metrics
from modeling_mise import MiseAlignerModel, MiseClassifierModel, MiseGeneratorModel
from modeling_mise.encoders import feature_groups
from modeling_mise.modeling_audio_classifier import multimodal_features

from .aligner import aligner_config, encode_audio, text_codes, train_aligner
from .arguments import (
    ConfigError,
    MiseTrainingArguments,
    ModelArguments,
    feature_sets_to_choose,
    with_aligner_candidate,
)
from .classifier import (
    CandidateStore,
    MultimodalAugmenter,
    classifier_config,
    generated_ratio_candidates,
    predict,
    train_classifier_choosing_ratio,
)
from .engine import StageRuntime, stage_seed
from .feature_choice import choose_feature_set
from .infogan import TextSide, generator_config, train_generator
from .input_rows import InputRows, input_rows
from .out_of_fold import out_of_fold_features
from .speaker_codes import SpeakerCodes, with_speaker_codes

logger = get_logger(__name__)

Tensor = torch.Tensor
ALIGNER, GENERATOR, CLASSIFIER = 1, 2, 3  # stage numbers: the streams of stage k derive from (seed, fold, k)
INPUT_ROWS = 4  # the extra rows of stage 1 and their generator (training.input_rows)
OUT_OF_FOLD = 10  # out-of-fold aligners: stages 10 (the groups) and 11, 12, ... (one per group)
NO_STAGE_3 = {"generated_ratio": None, "best_epoch": 0}  # the stage-3 summary of a variant that trains none


@dataclass(frozen=True)
class Variant:
    """What one fold trains: the augmentation of stage 3 and the settings of stages 1 and 2 (a row group of the
    study table; `train.py` trains the one its arguments name, `Variant.of`)."""

    name: str
    description: str
    augmentation: str  # "classic" or an `ModelArguments.augmentation` value
    alignment: bool = True
    text_code: bool = True
    mi: bool = True
    class_balanced: bool | None = None  # None: `class_balanced_generation` of the training arguments
    full_data: bool = False  # class-imbalance study: trained on the training side before the class was cut
    out_of_fold: bool = False  # stages 2 and 3 on out-of-fold z_a of the training rows (training.out_of_fold)
    noise_std: float | None = None  # None: `noise_std` of the training arguments; 0: extra rows are copies
    without_validation: bool = False  # classic only: fitted on the training speakers alone, as `none` learns
    speaker_code: str | None = None  # speaker-aware G: whose voices stage 3 asks for (training.speaker_codes)
    own_corpus: bool = False  # several corpora: stage 3's real rows are the test speakers' corpus' alone
    aligner_head: bool = False  # the study predicts with stage 1's emotion head on z_a, not with stage 3
    input_rows: str | None = None  # extra rows at stage 1's inputs: "mise" or "noise" (training.input_rows)

    @classmethod
    def of(cls, model_args: ModelArguments) -> Variant:
        """The variant a training run's arguments describe."""
        return cls(
            model_args.augmentation, "the run's configuration", model_args.augmentation,
            alignment=not model_args.no_alignment, text_code=not model_args.no_text_code,
            mi=not model_args.no_mi and model_args.augmentation != "gan",
        )  # fmt: skip

    @property
    def uses_generator(self) -> bool:
        return self.augmentation in ("gan", "mise")

    @property
    def aligner_key(self) -> tuple[bool, ...]:
        """Variants with the same key share one stage-1 space per fold and seed."""
        key = (self.alignment, self.full_data) + ((True,) if self.out_of_fold else ())
        return key + (("input", self.input_rows, self.noise_std) if self.input_rows else ())

    @property
    def generator_key(self) -> tuple[bool, ...] | None:
        """Variants with the same key share one stage-2 generator per fold and seed."""
        if not self.uses_generator:
            return None
        key = self.aligner_key + (self.text_code, self.mi and self.augmentation == "mise")
        return key + (("speaker",) if self.speaker_code else ())

    def model_arguments(self, model_args: ModelArguments) -> ModelArguments:
        """The run's model arguments with this variant's switches."""
        return dataclasses.replace(
            model_args, augmentation=self.augmentation, no_alignment=not self.alignment,
            no_text_code=not self.text_code, no_mi=not self.mi,
        )  # fmt: skip

    def check(self, model_args: ModelArguments, several_corpora: bool) -> None:
        """Raise `ConfigError` naming this variant where the run's settings cannot train it (a study checks its
        variants so before any audio is read, the fold trainer again before it trains one)."""
        if model_args.multimodal and (self.speaker_code or self.own_corpus):
            raise ConfigError(f"variant {self.name}: stage 3 reads z_a alone (multimodal: false)")
        if self.own_corpus and not several_corpora:
            raise ConfigError(f"variant {self.name}: needs a run of several corpora (corpus files stacked)")
        if self.input_rows and model_args.text_lora_r:
            raise ConfigError(f"variant {self.name}: extra stage-1 rows need frozen text features (no LoRA)")

    def training_arguments(self, args: MiseTrainingArguments) -> MiseTrainingArguments:
        """The training arguments with this variant's stage-3 settings."""
        if self.class_balanced is not None:
            args = dataclasses.replace(args, class_balanced_generation=self.class_balanced)
        if self.noise_std is not None:
            args = dataclasses.replace(args, noise_std=self.noise_std)
        return args


@dataclass
class FoldData:
    """What every fold's stages read: the frozen features, labels and transcripts, and the run's arguments."""

    audio: Tensor  # (N, audio_dim)
    text: Tensor | None  # (N, text_dim), NaN rows without transcript
    labels: Tensor  # (N,) class ids
    id2label: dict[int, str]
    audio_spec: dict | None
    model_args: ModelArguments
    training_args: MiseTrainingArguments
    device: torch.device = torch.device("cpu")
    transcripts: list[str | None] | None = None  # per row; a LoRA-tuned text encoder reads them
    speakers: np.ndarray | None = None  # per row; out-of-fold variants group by it
    out_of_fold_groups: int = 4  # speaker groups of the out-of-fold variants (one extra aligner each)
    test_speaker_clips: bool = False  # the fold reads its test speakers' clips (per-speaker statistics)
    corpora: np.ndarray | None = None  # per row, in a run of several corpora; own-corpus variants read it


@dataclass
class Space:
    """A fold's rows in a trained aligner's space: `z_a` and (multimodal) the `z_t` of the classifier and the
    text-side generator."""

    aligner: MiseAlignerModel
    summary: dict  # stage 1's
    train: np.ndarray  # the rows of z_train
    val: np.ndarray  # the rows of z_val (none in a refit)
    z_train: Tensor
    z_val: Tensor
    text_train: Tensor | None = None
    text_val: Tensor | None = None

    @property
    def features_train(self) -> Tensor:
        """What stage 3 reads for the training rows: `z_a`, or `[z_a; z_t]` for a multimodal classifier."""
        return self.z_train if self.text_train is None else multimodal_features(self.z_train, self.text_train)

    @property
    def features_val(self) -> Tensor:
        """What stage 3 reads for the validation rows: `z_a`, or `[z_a; z_t]` for a multimodal classifier."""
        return self.z_val if self.text_val is None else multimodal_features(self.z_val, self.text_val)


@dataclass
class Generated:
    """A trained stage-2 generator with its training text codes and summary (or none of them)."""

    model: MiseGeneratorModel | None = None
    codes_train: Tensor | None = None
    summary: dict | None = None
    speaker_pool: Tensor | None = None  # speaker-aware generation: the codes of the voices stage 3 asks for


@dataclass
class Trained:
    """The models of one variant of a fold and the summaries of their stages; after a refit, `selected` holds the
    selection's models (which never saw the validation speakers)."""

    space: Space
    generated: Generated
    classifier: MiseClassifierModel | None  # None: `Variant.aligner_head`, stage 1's head predicts
    stages: dict
    selected: Trained | None = None

    @property
    def aligner(self) -> MiseAlignerModel:
        return self.space.aligner


class StageStore(Protocol):
    """Where a run keeps a fold's finished stages, so that a resumed run reuses them (`train.py`)."""

    def load(self, name: str, model_class: type) -> tuple[object, dict] | None: ...

    def save(self, name: str, model, summary: dict) -> None: ...

    def child(self, name: str) -> StageStore: ...


class GeneratorObserver(Protocol):
    """What the study adds to a generator's training: a score of every checkpoint and a look at the result."""

    def checkpoint_scorer(self, variant: Variant, space: Space, codes: Tensor | None) -> Callable | None: ...

    def generator_trained(
        self, variant: Variant, space: Space, generated: Generated, runtime: StageRuntime
    ) -> None: ...


class _Candidates:
    """Stage 3's finished candidates in a `StageStore` (`classifier_candidates/ratio-<r>`)."""

    def __init__(self, store: StageStore) -> None:
        self.store = store

    def load(self, ratio: float):
        return self.store.load(f"classifier_candidates/ratio-{ratio:g}", MiseClassifierModel)

    def save(self, ratio: float, model: MiseClassifierModel, summary: dict) -> None:
        self.store.save(f"classifier_candidates/ratio-{ratio:g}", model, summary)


def chosen_feature_sets(audio_spec: dict | None, names: list[str]) -> list[tuple[str | None, slice | None]]:
    """The candidate feature sets of stage 1 as (name, columns): the named sets of a combined encoder
    (`aligner_feature_sets`, see `feature_sets_to_choose`), or every feature at once (`(None, None)`) when none
    are named."""
    groups = dict(feature_groups(audio_spec))
    names = feature_sets_to_choose(names, list(groups))
    if not names:
        return [(None, None)]
    missing = [name for name in names if name not in groups]
    if missing:
        raise ConfigError(
            f"aligner_feature_sets: {missing} not among the audio encoder's feature sets {list(groups)}"
        )
    return [(name, groups[name]) for name in names]


@dataclass
class FoldTrainer:
    """Trains the variants of one fold, sharing stage 1 per alignment setting and stage 2 per generator setting.

    `runtime(fold_name, offset)`: the stage runtime of a stage of the fold named `fold_name` (a refit's is
    `<fold>/refit`) that starts `offset` epochs into the fold (`train.py` maps it to checkpoints and tracker steps;
    the study records the epochs). `store`: keeps finished stages for a resumed run.
    `train_rows`: the fold's training rows (the class-imbalance study cuts them). `seed_index` numbers the fold in
    the stage seeds (default: `fold_index`).
    """

    data: FoldData
    fold: Fold
    fold_index: int
    seed: int
    runtime: Callable[[str, int], StageRuntime]
    store: StageStore | None = None
    train_rows: np.ndarray | None = None
    seed_index: int | None = None
    observer: GeneratorObserver | None = None
    args: MiseTrainingArguments | None = None  # a refit's fixed choices; default the run's
    spaces: dict[tuple, Space] = field(default_factory=dict)
    generators: dict[tuple, Generated] = field(default_factory=dict)
    refits: dict[tuple, FoldTrainer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.args = self.args or self.data.training_args
        self.seed_index = self.fold_index if self.seed_index is None else self.seed_index
        if self.train_rows is None:
            self.train_rows = self.fold.train

    def stage_seed(self, stage: int) -> int:
        return stage_seed(self.seed, self.seed_index, stage)

    @property
    def selection_epochs(self) -> int:
        """Epochs of the fold's stages 1 and 2 (the offset of stage 3's first candidate)."""
        generator = self.args.generator_epochs if self.data.model_args.uses_generator else 0
        return self.args.aligner_epochs + generator

    def _store(self, name: str, model_class: type):
        return None if self.store is None else self.store.load(name, model_class)

    def _runtime(self, offset: int) -> StageRuntime:
        return self.runtime(self.fold.name, offset)

    # ------------------------------------------------------------------------------------------ stage 1
    def space(self, variant: Variant) -> Space:
        """The aligned (or unaligned) space of `variant`, trained once per alignment setting."""
        key = variant.aligner_key
        if key not in self.spaces:
            if variant.out_of_fold:
                self.spaces[key] = self._out_of_fold_space(variant)
            else:
                train = self.fold.train if variant.full_data else self.train_rows
                self.spaces[key] = self._space(variant, train)
        return self.spaces[key]

    def _train_aligner(
        self,
        variant: Variant,
        train: np.ndarray,
        seed: int,
        name: str | None,
        extra_rows: InputRows | None = None,
        candidate: str | None = None,
    ):
        """(aligner, summary) of stage 1 on the rows `train` (and `extra_rows`), early-stopped on the fold's
        validation rows; `name`: where the store keeps it (None: not kept); `candidate`: an `aligner_candidates`
        entry (default: the first, or as configured where none is given)."""
        done = None if name is None else self._store(name, MiseAlignerModel)
        if done is not None:
            return done
        data, val = self.data, self.fold.validation
        if candidate is None:
            candidate = self.args.aligner_candidates[0] if self.args.aligner_candidates else ""
        model_args, args = with_aligner_candidate(
            variant.model_arguments(data.model_args), self.args, candidate
        )
        text_dim = None if data.text is None else data.text.shape[1]
        config = aligner_config(model_args, data.audio.shape[1], text_dim, data.id2label, data.audio_spec)
        lora = config.text_lora is not None  # the text encoder trains too: tokens, not cached features
        feature_set, columns, scores = self.feature_set
        aligner, summary = train_aligner(
            self._runtime(0), config, args, data.audio[train], data.labels[train], data.audio[val],
            data.labels[val], text_train=None if data.text is None else data.text[train], seed=seed,
            transcripts_train=[data.transcripts[i] for i in train] if lora else None, columns=columns,
            extra_rows=extra_rows,
        )  # fmt: skip
        if scores is not None:
            summary["feature_set"], summary["feature_set_scores"] = feature_set, scores
        if name is not None and self.store is not None:
            self.store.save(name, aligner, summary)
        return aligner, summary

    @functools.cached_property
    def feature_set(self) -> tuple[str | None, slice | None, dict | None]:
        """`(name, columns, scores)` of the feature set every stage 1 of the fold reads: of the candidates
        (`aligner_feature_sets`), the one with the best speaker cross-validated UAR on the fold's training side,
        its training and validation speakers (`training.feature_choice`); scores are None where there is
        nothing to choose."""
        candidates = chosen_feature_sets(self.data.audio_spec, self.args.aligner_feature_sets)
        if len(candidates) > 1 and self.data.speakers is None:
            raise ValueError("aligner_feature_sets: choosing a feature set needs the speaker of every row")
        training_side = np.union1d(self.train_rows, self.fold.validation)
        audio, labels = self.data.audio.cpu().numpy(), self.data.labels.cpu().numpy()
        return choose_feature_set(audio, labels, self.data.speakers, training_side, candidates)

    def _space(self, variant: Variant, train: np.ndarray) -> Space:
        extra_rows, generator_summary = self._input_rows(variant, train)
        name = None if extra_rows is not None else "aligner"  # a study variant: nothing to resume
        if len(self.args.aligner_candidates) > 1 and len(self.fold.validation):
            aligner, summary = self._chosen_aligner(variant, train, name, extra_rows)
        else:
            aligner, summary = self._train_aligner(variant, train, self.stage_seed(ALIGNER), name, extra_rows)
        if generator_summary is not None:
            summary = {**summary, "input_generator": generator_summary}
        return self.encode(aligner, summary, variant, train)

    def _chosen_aligner(
        self, variant: Variant, train: np.ndarray, name: str | None, extra_rows: InputRows | None
    ) -> tuple[MiseAlignerModel, dict]:
        """`aligner_candidates`: stage 1 once per candidate (the same streams), each scored by the validation UAR of
        a stage-3 classifier without augmentation on its space; the best (ties: the first) with the scores in its
        summary. The test speakers are never read."""
        done = None if name is None else self._store(name, MiseAlignerModel)
        if done is not None:
            return done
        scores, best = {}, None
        for candidate in self.args.aligner_candidates:
            aligner, summary = self._train_aligner(
                variant, train, self.stage_seed(ALIGNER), None, extra_rows, candidate
            )
            scores[candidate] = self._plain_validation_uar(
                variant, self.encode(aligner, summary, variant, train)
            )
            if best is None or scores[candidate] > scores[best[0]]:
                best = (candidate, aligner, summary)
        candidate, aligner, summary = best
        summary = {**summary, "aligner_candidate": candidate, "aligner_candidate_scores": scores}
        if name is not None and self.store is not None:
            self.store.save(name, aligner, summary)
        return aligner, summary

    def _plain_validation_uar(self, variant: Variant, space: Space) -> float:
        """The validation UAR of a stage-3 classifier without augmentation on `space` (`none`'s own stage 3)."""
        plain = dataclasses.replace(variant, augmentation="none", noise_std=None, speaker_code=None)
        runtime = bare_runtime(self._runtime(0))
        classifier, _ = self.classifier(plain, space, Generated(), runtime=lambda index: runtime)
        labels = self.data.labels[space.val].numpy()
        return classification_metrics(
            labels, predict(classifier, space.features_val), len(self.data.id2label)
        )["uar"]

    def _input_rows(self, variant: Variant, train: np.ndarray) -> tuple[InputRows | None, dict | None]:
        """`Variant.input_rows`: stage 1's extra rows (`training.input_rows`) and their generator's summary."""
        if variant.input_rows is None:
            return None, None
        data, val = self.data, self.fold.validation

        def rows(index: np.ndarray) -> tuple[Tensor, Tensor, Tensor | None]:
            return data.audio[index], data.labels[index], None if data.text is None else data.text[index]

        return input_rows(
            variant.input_rows, data.model_args, variant.training_arguments(self.args), rows(train), rows(val),
            self.feature_set[1], data.id2label, self.stage_seed(INPUT_ROWS), self._runtime(0),
        )  # fmt: skip

    def encode(self, aligner: MiseAlignerModel, summary: dict, variant: Variant, train: np.ndarray) -> Space:
        """The fold's training and validation rows in `aligner`'s space."""
        val, multimodal = self.fold.validation, self.data.model_args.multimodal
        space = Space(
            aligner, summary, train, val, encode_audio(aligner, self.data.audio[train]),
            encode_audio(aligner, self.data.audio[val]),
        )  # fmt: skip
        if multimodal:
            space.text_train = self.text_codes(aligner, train, variant, for_generator=False)
            space.text_val = self.text_codes(aligner, val, variant, for_generator=False)
        return space

    def text_codes(
        self, aligner: MiseAlignerModel, rows: np.ndarray, variant: Variant, for_generator: bool = True
    ) -> Tensor | None:
        """`z_t` of `rows` (`training.aligner.text_codes`; without alignment the raw text standardised on the
        fold's training rows). The multimodal classifier asks with `for_generator=False`: z_t even under the
        `no_text_code` ablation."""
        data = self.data
        if data.text is None or (for_generator and not variant.text_code):
            return None
        transcripts = None if data.transcripts is None else [data.transcripts[i] for i in rows]
        return text_codes(aligner, data.text[rows], transcripts, reference=data.text[self.fold.train])

    def _out_of_fold_space(self, variant: Variant) -> Space:
        """The in-fold space of `variant` with out-of-fold `z_a` for its training rows (training.out_of_fold)."""
        base = self.space(dataclasses.replace(variant, out_of_fold=False))
        if self.data.speakers is None:
            raise ValueError("out-of-fold features need the speaker of every row (FoldData.speakers)")

        candidate = base.summary.get("aligner_candidate")  # the in-fold space's stage-1 setting

        def fit(rows: np.ndarray, index: int) -> MiseAlignerModel:
            return self._train_aligner(
                variant, base.train[rows], self.stage_seed(OUT_OF_FOLD + 1 + index), None, candidate=candidate
            )[0]

        z_train = out_of_fold_features(
            base.z_train, self.data.audio[base.train], self.data.speakers[base.train], fit,
            self.data.out_of_fold_groups, seed=self.stage_seed(OUT_OF_FOLD),
        )  # fmt: skip
        return dataclasses.replace(base, z_train=z_train)

    # ------------------------------------------------------------------------------------------ stage 2
    def generator(self, variant: Variant, space: Space) -> Generated:
        """The generator of `variant` in `space` (nothing for an augmentation without one), trained once per
        generator setting."""
        if not variant.uses_generator:
            return Generated()
        key = variant.generator_key
        if key not in self.generators:
            self.generators[key] = self._train_generator(variant, space)
        if variant.speaker_code:  # one generator, each variant's voices
            return dataclasses.replace(self.generators[key], speaker_pool=self._speaker_pool(variant, space))
        return self.generators[key]

    def _train_generator(self, variant: Variant, space: Space) -> Generated:
        data, labels = self.data, self.data.labels
        codes_train = self.text_codes(space.aligner, space.train, variant)  # the generator's text codes
        codes_val = self.text_codes(space.aligner, space.val, variant)
        if variant.speaker_code:
            codes_train, codes_val = self._speaker_codes(space, codes_train, codes_val)
        done = self._store("generator", MiseGeneratorModel)
        if done is not None:
            return Generated(done[0].to(data.device), codes_train, done[1])
        model_args = variant.model_arguments(data.model_args)
        code_dim = None if codes_train is None else codes_train.shape[1]
        config = generator_config(model_args, space.z_train.shape[1], code_dim, data.id2label)
        seed = self.stage_seed(GENERATOR)
        text_side = None
        if model_args.multimodal:
            text_side = TextSide(
                config, self.args, space.z_train, labels[space.train], space.text_train, seed
            )
        scorer = (
            None if self.observer is None else self.observer.checkpoint_scorer(variant, space, codes_train)
        )
        runtime = self._runtime(self.args.aligner_epochs)
        checkpoint_score = None
        if self.args.generator_selection == "classifier":
            # a generator shared by both speaker-aware variants is scored with the training voices
            training_voices = dataclasses.replace(variant, speaker_code="training")
            pool = self._speaker_pool(training_voices, space) if variant.speaker_code else None
            checkpoint_score = self._classifier_score(variant, space, codes_train, runtime, pool)
        model, summary = train_generator(
            runtime, config, self.args, space.z_train, labels[space.train], space.z_val, labels[space.val],
            text_codes_train=codes_train, text_codes_val=codes_val, seed=seed, text_side=text_side,
            on_evaluate=scorer, checkpoint_score=checkpoint_score,
        )  # fmt: skip
        if self.store is not None:
            self.store.save("generator", model, summary)
        generated = Generated(model.to(data.device), codes_train, summary)
        if self.observer is not None:
            self.observer.generator_trained(variant, space, generated, runtime)
        return generated

    def _speaker_codes(
        self, space: Space, codes_train: Tensor | None, codes_val: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Speaker-aware generation (`training.speaker_codes`): the generator's training and validation codes with
        each row's speaker code appended."""
        speakers = self.data.speakers
        if speakers is None:
            raise ValueError("speaker-aware generation needs the speaker of every row (FoldData.speakers)")
        codes = SpeakerCodes(space.z_train, speakers[space.train])
        return (
            with_speaker_codes(codes_train, codes.of_rows(space.z_train, speakers[space.train])),
            with_speaker_codes(codes_val, codes.of_rows(space.z_val, speakers[space.val])),
        )

    def _speaker_pool(self, variant: Variant, space: Space) -> Tensor:
        """The codes of the voices stage 3 asks for: the test speakers', from their unlabelled clips, only where
        the fold already reads those clips (per-speaker statistics); else the training speakers'."""
        speakers, train = self.data.speakers, space.train
        codes = SpeakerCodes(space.z_train, speakers[train])
        if variant.speaker_code == "test" and self.data.test_speaker_clips:
            test = self.fold.test
            return codes.of_speakers(encode_audio(space.aligner, self.data.audio[test]), speakers[test])
        return codes.of_speakers(space.z_train, speakers[train])

    def _classifier_score(
        self,
        variant: Variant,
        space: Space,
        codes_train: Tensor | None,
        runtime: StageRuntime,
        pool: Tensor | None = None,
    ) -> Callable[[MiseGeneratorModel], float]:
        """`generator_selection: classifier`: a generator checkpoint's score is the validation score of stage 3
        trained with its rows at the one ratio `generated_ratio` (on a runtime without checkpoints or tracker)."""
        args = dataclasses.replace(self.args, generated_ratios=[])
        bare = bare_runtime(runtime)

        def score(model: MiseGeneratorModel) -> float:
            _, summary = self.classifier(
                variant, space, Generated(model, codes_train, speaker_pool=pool), args, lambda index: bare
            )
            return summary["best_score"]

        return score

    # ------------------------------------------------------------------------------------------ stage 3
    def classifier(
        self,
        variant: Variant,
        space: Space,
        generated: Generated,
        args: MiseTrainingArguments | None = None,
        runtime: Callable[[int], StageRuntime] | None = None,
    ) -> tuple[MiseClassifierModel, dict]:
        """Stage 3 of `variant`, once per candidate generated-to-real ratio, the best on the validation speakers
        kept: (classifier, summary). `runtime(index)`: candidate `index`'s runtime (default: the fold's)."""
        data = self.data
        args = variant.training_arguments(args or self.args)
        model_args = variant.model_arguments(data.model_args)
        labels, seed = data.labels, self.stage_seed(CLASSIFIER)
        augmenter_for, text_dim = None, None
        if model_args.multimodal:  # [z_a; z_t] over the four real/generated combinations

            def augmenter_for(stage_args: MiseTrainingArguments) -> MultimodalAugmenter:
                return MultimodalAugmenter(
                    model_args.augmentation, space.z_train, space.text_train, labels[space.train], stage_args,
                    model_args.multimodal_text_dropout, generated.model, seed=seed,
                )  # fmt: skip

            text_dim = space.text_train.shape[1]
        candidates = len(generated_ratio_candidates(args, model_args.augmentation, model_args.multimodal))
        first = self.selection_epochs  # tracker offsets of the candidates
        head = space.aligner.emotion_head if model_args.classifier_init_from_aligner else None
        store: CandidateStore | None = (
            None if self.store is None or candidates < 2 else _Candidates(self.store)
        )
        classifier, summary = train_classifier_choosing_ratio(
            runtime or (lambda index: self._runtime(first + index * args.classifier_epochs)),
            classifier_config(model_args, space.z_train.shape[1], data.id2label, text_dim), args,
            (space.features_train, labels[space.train], space.features_val, labels[space.val]),
            model_args.augmentation,
            multimodal=model_args.multimodal, augmenter_for=augmenter_for, store=store,
            generator=generated.model, text_codes_train=generated.codes_train, seed=seed, head_init=head,
            speaker_codes=generated.speaker_pool,
        )  # fmt: skip
        return classifier, summary

    def _own_corpus(self, variant: Variant, space: Space, generated: Generated) -> tuple[Space, Generated]:
        """`Variant.own_corpus`: stage 3's real rows, and the text codes G's rows are drawn with, cut to the corpus
        of the fold's test speakers; stages 1 and 2 keep every corpus' rows, so that G has learnt from more clips
        than the classifier reads. Validation rows are cut the same way where the corpus has any."""
        if not variant.own_corpus:
            return space, generated
        corpora = self.data.corpora
        own = np.unique(corpora[self.fold.test])
        train, val = np.isin(corpora[space.train], own), np.isin(corpora[space.val], own)
        if not train.any():
            raise ValueError(f"fold {self.fold.name}: no training clip of its test corpus {own.tolist()}")
        if not val.any():  # the validation speakers all come from other corpora: they choose
            val = np.ones(len(space.val), dtype=bool)
        space = dataclasses.replace(
            space, train=space.train[train], val=space.val[val], z_train=space.z_train[train],
            z_val=space.z_val[val],
        )  # fmt: skip
        if generated.codes_train is not None:
            generated = dataclasses.replace(generated, codes_train=generated.codes_train[train])
        return space, generated

    # ------------------------------------------------------------------------------------------ a variant
    def train(self, variant: Variant) -> Trained:
        """Stages 1-3 of `variant`, selected on the validation speakers; with `refit`, trained once more on the
        training and validation speakers with those choices (`refit`)."""
        variant.check(self.data.model_args, self.data.corpora is not None)
        if self.data.model_args.multimodal and self.data.text is None:
            raise ValueError(
                "multimodal: no usable clip has a transcript (check transcript_column and the text encoder)"
            )
        trained = self._stages(variant)
        if not self.args.refit or len(self.fold.validation) == 0:
            return trained
        return self.refit(variant, trained)

    def _stages(self, variant: Variant) -> Trained:
        space = self.space(variant)
        generated = self.generator(variant, space)
        if variant.aligner_head:  # stage 1's own emotion head predicts: no stage 3 to train
            stages = {
                "aligner": space.summary,
                "generator": generated.summary,
                "classifier": dict(NO_STAGE_3),
            }
            return Trained(space, generated, None, stages)
        done = self._store("classifier", MiseClassifierModel) if self.store is not None else None
        if done is None:
            args = self._refusing_rows(variant, generated)
            classifier, summary = self.classifier(
                variant, *self._own_corpus(variant, space, generated), args=args
            )
            if self.store is not None:
                self.store.save("classifier", classifier, summary)
        else:
            classifier, summary = done[0].to(self.data.device), done[1]
        stages = {"aligner": space.summary, "generator": generated.summary, "classifier": summary}
        return Trained(space, generated, classifier, stages)

    def _refusing_rows(self, variant: Variant, generated: Generated) -> MiseTrainingArguments | None:
        """Stage 3's arguments at ratio 0 where the kept generator's rows carry no more than `generator_mi_floor`
        nats about their emotion on the validation speakers (an MI variant whose rows stage 3 takes at a ratio;
        said in the log); None: its rows are taken as configured."""
        model_args, floor = variant.model_arguments(self.data.model_args), self.args.generator_mi_floor
        carried = (generated.summary or {}).get("mi_emotion_nats")
        candidates = generated_ratio_candidates(self.args, model_args.augmentation, model_args.multimodal)
        if not variant.mi or None in candidates or carried is None or carried > floor:
            return None
        logger.warning(
            f"fold {self.fold.name}, {variant.name}: the kept generator's rows tell a probe fitted on real rows "
            f"{carried:.2f} nats about their emotion (the MI bound, rows for the validation speakers' labels; "
            f"generator_mi_floor {floor:g}): stage 3 takes none of them"
        )
        return dataclasses.replace(self.args, generated_ratios=[], generated_ratio=0.0)

    def refit(self, variant: Variant, selected: Trained) -> Trained:
        """The stages of `variant` once more on the training and validation rows, each for the epochs the
        selection chose (stage 3 with the kept ratio); stage 1 and 2 once per setting. `stages.selection` and
        `selected` keep the selection's."""
        fixed = refit_arguments(self.args, selected.stages)
        key = variant.aligner_key
        if key not in self.refits:
            self.refits[key] = self._refit_trainer(fixed)
        child = self.refits[key]
        child.args = fixed
        refitted = child._stages(variant)
        refitted.stages["selection"] = selected.stages
        refitted.selected = selected
        return refitted

    def _refit_trainer(self, fixed: MiseTrainingArguments) -> FoldTrainer:
        fold = dataclasses.replace(
            self.fold,
            name=f"{self.fold.name}/{REFIT}",
            train=np.concatenate([self.train_rows, self.fold.validation]),
            validation=self.fold.validation[:0],
        )
        offset = self.selection_epochs + self.data.training_args.classifier_epochs * len(
            generated_ratio_candidates(
                self.data.training_args, self.data.model_args.augmentation, self.data.model_args.multimodal
            )
        )
        return FoldTrainer(
            self.data, fold, self.fold_index, self.seed, lambda name, start: self.runtime(name, offset + start),
            None if self.store is None else self.store.child(REFIT), seed_index=self.seed_index, args=fixed,
        )  # fmt: skip


def classifier_features(
    aligner: MiseAlignerModel,
    data: FoldData,
    rows: np.ndarray,
    reference: np.ndarray,
    z_a: Tensor | None = None,
) -> Tensor:
    """What a fold's stage-3 classifier reads for new `rows` (its test clips): `z_a` in `aligner`'s space (given,
    or encoded here), or `[z_a; z_t]` for a multimodal classifier, `z_t` of each clip's transcript (the text
    standardised on the `reference` rows, the fold's training rows)."""
    z_a = encode_audio(aligner, data.audio[rows]) if z_a is None else z_a
    if not data.model_args.multimodal:
        return z_a
    names = None if data.transcripts is None else [data.transcripts[i] for i in rows]
    return multimodal_features(
        z_a, text_codes(aligner, data.text[rows], names, reference=data.text[reference])
    )


def bare_runtime(runtime: StageRuntime) -> StageRuntime:
    """`runtime` without checkpoints, tracker or per-epoch log: a stage trained only to score a choice."""
    return StageRuntime(
        runtime.accelerator, fold=runtime.fold, fold_index=runtime.fold_index,
        max_grad_norm=runtime.max_grad_norm, log_every_epoch=False,
    )  # fmt: skip


REFIT = "refit"  # a fold's stages trained once more on training + validation speakers: `<fold>/refit/`


def refit_arguments(args: MiseTrainingArguments, stages: dict) -> MiseTrainingArguments:
    """The choices a fold made on its validation speakers as fixed settings: stage 1 on its chosen feature set,
    each stage for its chosen epoch (stage 1 and 3: early stopping, stage 2 or the generator of stage 1's extra
    rows: the best-MI checkpoint), stage 1 with its chosen `aligner_candidates` entry, stage 3 with the kept
    generated-to-real ratio, nothing left to select."""
    generator, classifier = stages["generator"], stages["classifier"]
    generator = generator or stages["aligner"].get("input_generator")  # stage 1's extra rows' generator
    ratio = classifier["generated_ratio"]
    chosen = stages["aligner"].get("feature_set")
    candidate = stages["aligner"].get("aligner_candidate")
    return dataclasses.replace(
        args,
        aligner_feature_sets=[chosen] if chosen else args.aligner_feature_sets,
        aligner_candidates=args.aligner_candidates if candidate is None else [candidate],
        aligner_epochs=max(1, stages["aligner"]["best_epoch"]),
        generator_epochs=args.generator_epochs if generator is None else max(1, generator["best_epoch"]),
        classifier_epochs=max(1, classifier["best_epoch"]),
        generated_ratios=[],
        generated_ratio=args.generated_ratio if ratio is None else ratio,
        early_stopping_patience=0,
    )
