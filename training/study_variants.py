"""What a comparison study compares: the variants (SPEC §2), the study's own arguments, and the classic baseline.

A variant (`training.fold.Variant`) names its augmentation, the stage-1 setting it shares with others (alignment
or not) and the stage-2 setting (text code, MI terms); variants with equal settings share the trained aligner /
generator of a fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mise.metrics import classification_metrics
from modeling_mise.layers import feature_statistics, standardize

from .arguments import ConfigError
from .fold import Variant

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("classic", "openSMILE functionals + standardised logistic regression", "classic"),
        Variant("none", "no augmentation (aligned space)", "none"),
        Variant(
            "classic_without_validation",
            "diagnostic: the classic baseline fitted without the validation speakers (the rows `none` learns from)",
            "classic",
            without_validation=True,
        ),
        Variant(
            "aligner_head",
            "diagnostic: stage 1's own emotion head on z_a (the linear head the aligner trains with), no stage 3",
            "none",
            aligner_head=True,
        ),
        Variant("noise", "Gaussian feature noise", "noise"),
        Variant("mixup", "mix-up only", "mixup"),
        Variant("cgan", "conditional GAN without MI (lambda_y = lambda_t = 0)", "gan", mi=False),
        Variant("mise", "full MISE", "mise"),
        Variant(
            "mise_no_text",
            "ablation: no text code (G conditioned on the emotion alone)",
            "mise",
            text_code=False,
        ),
        Variant("mise_no_alignment", "ablation: no alignment", "mise", alignment=False),
        Variant(
            "mise_no_alignment_no_text",
            "ablation: no alignment, no text code",
            "mise",
            alignment=False,
            text_code=False,
        ),
        Variant("mise_no_alignment_no_mi", "ablation: no alignment, no MI", "gan", alignment=False, mi=False),
        Variant(
            "copies",
            "control: extra rows are copies of real rows (noise with std 0), as many steps as noise / MISE",
            "noise",
            noise_std=0.0,
        ),
        # speaker-aware generation (training.speaker_codes): G also reads a speaker code; one generator for both
        Variant(
            "mise_speaker",
            "MISE with G also conditioned on a speaker code; extra rows in the voices of the training speakers",
            "mise",
            speaker_code="training",
        ),
        Variant(
            "mise_test_speaker",
            "MISE with G also conditioned on a speaker code; extra rows in the test speaker's voice, from their "
            "unlabelled clips (where per-speaker statistics read them; else the training speakers')",
            "mise",
            speaker_code="test",
        ),
        # several corpora: stage 3 on the test speakers' corpus alone, stages 1 and 2 on every corpus
        Variant(
            "none_own",
            "no augmentation, stage 3 on the real rows of the test speakers' corpus",
            "none",
            own_corpus=True,
        ),
        Variant(
            "copies_own",
            "control: copies (as `copies`), stage 3 on the test speakers' corpus",
            "noise",
            noise_std=0.0,
            own_corpus=True,
        ),
        Variant(
            "mise_own",
            "full MISE, G on every corpus, stage 3 on the real rows of the test speakers' "
            "corpus and G's rows",
            "mise",
            own_corpus=True,
        ),
        # out-of-fold z_a for stages 2 and 3 (training/out_of_fold.py), each with its in-fold counterpart above
        Variant("none_oof", "no augmentation, out-of-fold training features", "none", out_of_fold=True),
        Variant(
            "noise_oof", "Gaussian feature noise, out-of-fold training features", "noise", out_of_fold=True
        ),
        Variant(
            "mise_oof", "full MISE, generator on out-of-fold training features", "mise", out_of_fold=True
        ),
        Variant(
            "copies_oof",
            "control: copies of real rows as extra rows (as `copies`), out-of-fold training features",
            "noise",
            noise_std=0.0,
            out_of_fold=True,
        ),
        # extra rows at stage 1's inputs (training/input_rows.py); stage 3 on real rows alone, as `none`
        Variant(
            "mise_input",
            "MISE's generator on stage 1's inputs (top principal directions); stage 1 trains on real + its rows",
            "none",
            input_rows="mise",
        ),
        Variant(
            "noise_input",
            "control: Gaussian noise on real rows in the same directions, as extra stage-1 rows",
            "none",
            input_rows="noise",
        ),
        Variant(
            "copies_input",
            "control: copies of real rows in the same directions (noise with std 0), as extra stage-1 rows",
            "none",
            input_rows="noise",
            noise_std=0.0,
        ),
        # class-imbalance study only
        Variant(
            "none_full_data", "no augmentation, before the class was cut (reference)", "none", full_data=True
        ),
        Variant(
            "mise_proportional",
            "MISE, generation proportional to the (imbalanced) class sizes",
            "mise",
            class_balanced=False,
        ),
        Variant("mise_balanced", "MISE, class-balanced generation", "mise", class_balanced=True),
    )
}
DEFAULT_VARIANTS = (
    "classic",
    "none",
    "noise",
    "mixup",
    "cgan",
    "mise",
    "mise_no_alignment",
    "mise_no_alignment_no_text",
    "mise_no_alignment_no_mi",
)
IMBALANCE_VARIANTS = ("none_full_data", "mise_proportional", "mise_balanced")
CLASSIC_C = (0.01, 0.03, 0.1, 0.3, 1.0)  # the classic baseline's L2 grid, chosen per fold (`validated_c`)


@dataclass
class StudyArguments:
    """Which variants and seeds the study runs, and its class-imbalance option."""

    variants: list[str] = field(
        default_factory=lambda: list(DEFAULT_VARIANTS),
        metadata={
            "help": f"Variants to compare (of {sorted(VARIANTS)}); `none` is the reference of the tests."
        },
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds; every fold runs each."}
    )
    quality_folds: int = field(
        default=1,
        metadata={
            "help": "Per seed, the first N folds score every generator checkpoint with Fréchet distance and "
            "k-NN precision/recall (the MI bounds are recorded for every checkpoint of every fold)."
        },
    )
    out_of_fold_groups: int = field(
        default=4,
        metadata={
            "help": "Out-of-fold variants: speaker groups of a fold's training side, one extra aligner each "
            "(training/out_of_fold.py)."
        },
    )
    classic_c: list[float] = field(
        default_factory=lambda: list(CLASSIC_C),
        metadata={
            "help": "Inverse L2 strengths of the classic baseline: with several, each fold fits one logistic "
            "regression per value on its training speakers, keeps the value whose fit scores the best UAR on "
            "its validation speakers (ties: the stronger L2), and fits it on the whole training side, the care "
            "the learned arms' choices get. One value: that one, no choice."
        },
    )
    classic_max_iter: int = field(
        default=2000, metadata={"help": "Solver iterations of the classic baseline."}
    )
    imbalance_class: str | None = field(
        default=None,
        metadata={
            "help": "Class-imbalance study: cut most training clips of this class (a label name) and add the "
            f"variants {list(IMBALANCE_VARIANTS)}."
        },
    )
    imbalance_keep: float = field(
        default=0.2,
        metadata={"help": "Fraction of the cut class' training clips that is kept (at least one)."},
    )
    figures: bool = field(default=True, metadata={"help": "Write the PNG figures to OUT/figures/."})
    map_max_points: int = field(
        default=800, metadata={"help": "Real + generated points at most in each PCA / t-SNE map."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.variants, str):
            self.variants = [name.strip() for name in self.variants.split(",") if name.strip()]
        unknown = [name for name in self.variants if name not in VARIANTS]
        if unknown:
            raise ConfigError(f"variants: unknown {unknown}; choose from {sorted(VARIANTS)}")
        if not self.variants:
            raise ConfigError("variants: at least one variant is needed")
        if self.imbalance_class in ("", "none", "None"):
            self.imbalance_class = None
        if self.imbalance_class is not None:
            self.variants += [name for name in ("none", *IMBALANCE_VARIANTS) if name not in self.variants]
        self.variants = list(dict.fromkeys(self.variants))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: need distinct seeds, got {self.seeds}")
        if self.quality_folds < 0:
            raise ConfigError(f"quality_folds: must be >= 0, got {self.quality_folds}")
        if self.out_of_fold_groups < 2:
            raise ConfigError(f"out_of_fold_groups: must be >= 2, got {self.out_of_fold_groups}")
        if isinstance(self.classic_c, int | float):  # a config of before the grid: one value
            self.classic_c = [float(self.classic_c)]
        self.classic_c = sorted({float(c) for c in self.classic_c})
        if not self.classic_c or not all(c > 0 for c in self.classic_c) or self.classic_max_iter < 1:
            raise ConfigError(
                f"classic_c / classic_max_iter: must be > 0, got {self.classic_c}, {self.classic_max_iter}"
            )
        if not 0.0 < self.imbalance_keep < 1.0:
            raise ConfigError(f"imbalance_keep: must lie in (0, 1), got {self.imbalance_keep}")
        if self.map_max_points < 20:
            raise ConfigError(f"map_max_points: must be >= 20, got {self.map_max_points}")

    @property
    def selected(self) -> list[Variant]:
        return [VARIANTS[name] for name in self.variants]


def cut_class(
    train: np.ndarray, labels: np.ndarray, class_id: int, keep: float, seed: int
) -> tuple[np.ndarray, dict[str, int]]:
    """Training rows with all but `keep` (at least one) of the clips of `class_id` removed, seeded."""
    rows = train[labels[train] == class_id]
    kept = max(1, int(round(keep * len(rows))))
    chosen = np.random.default_rng(seed).choice(rows, size=kept, replace=False) if len(rows) else rows
    reduced = np.sort(np.concatenate([train[labels[train] != class_id], chosen]))
    return reduced, {"before": int(len(rows)), "after": int(len(chosen))}


def classic_baseline(
    features: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    c: float = 1.0,
    max_iter: int = 2000,
    columns: slice | None = None,
    balanced: bool = False,
) -> np.ndarray:
    """SPEC §5's reference: standardised frozen features (`columns` of them: one feature set) + multinomial
    logistic regression; test predictions. It trains on the whole training side (`train`: training and
    validation speakers). `balanced`: each row's loss weighted inversely to its class's count, as the learned
    variants weigh classes under `class_balanced_batches`."""
    columns = columns or slice(None)
    model, statistics = _logistic(features[:, columns], labels, train, c, max_iter, balanced)
    return model.predict(standardize(features[test][:, columns], *statistics))


def validated_c(
    features: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    validation: np.ndarray,
    cs: list[float],
    max_iter: int = 2000,
    columns: slice | None = None,
    balanced: bool = False,
) -> tuple[float, float | None]:
    """(C, its validation UAR) of the classic baseline: each of `cs` fitted on the `train` rows (training
    speakers) and scored on the `validation` rows; the best UAR wins, ties going to the smaller C (the stronger
    L2). One value, or no validation rows: that value (the first), no score. Test rows are never read."""
    if len(cs) == 1 or len(validation) == 0:
        return cs[0], None
    return c_on_splits(features, labels, [(train, validation)], cs, max_iter, columns, balanced)


def c_on_splits(
    features: np.ndarray,
    labels: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    cs: list[float],
    max_iter: int = 2000,
    columns: slice | None = None,
    balanced: bool = False,
) -> tuple[float, float]:
    """(C, its UAR) of the classic baseline chosen on `splits` of (fitted rows, held-out rows): each C predicts
    every split's held-out rows from its fitted rows, and the pooled UAR of those predictions scores it; ties go
    to the smaller C (the stronger L2)."""
    num_labels = int(labels.max()) + 1
    held_out = np.concatenate([rows for _, rows in splits])
    scores = []
    for c in sorted(cs):
        predicted = np.concatenate([
            classic_baseline(features, labels, fit, rows, c, max_iter, columns, balanced) for fit, rows in splits
        ])  # fmt: skip
        scores.append((classification_metrics(labels[held_out], predicted, num_labels)["uar"], -c))
    uar, negative_c = max(scores)
    return -negative_c, uar


def _logistic(
    features: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    c: float,
    max_iter: int,
    balanced: bool = False,
):
    """Logistic regression on the standardised `rows`, with their standardisation statistics."""
    from sklearn.linear_model import LogisticRegression

    statistics = feature_statistics(features[rows])
    model = LogisticRegression(C=c, max_iter=max_iter, class_weight="balanced" if balanced else None)
    return model.fit(standardize(features[rows], *statistics), labels[rows]), statistics
