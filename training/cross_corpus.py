"""Cross-corpus matrix: train on each corpus, test on every other one, on the classes they share.

    python training/cross_corpus.py --corpus ravdess=../shared/data/ravdess emodb=../shared/data/emodb \
        --output_dir runs/cross_corpus

For each corpus, `training/train.py` (with `--config`, its other classes dropped) writes the released
audio classifier `OUT/train/<corpus>/models/mise-audio-classifier` (an existing one is reused); for each ordered
pair, `mise evaluate` scores it on the other corpus twice, with the model's own feature statistics (as
released) and with the test corpus' (unsupervised adaptation). Beside it, the classic baseline (openSMILE
functionals + standardised logistic regression) fits on the training corpus with the care the study gives it: the
released model's features (its encoder, the feature set it chose), the classes weighed as the config weighs
them, and its L2 chosen by speaker-grouped cross-validation on the training corpus. Writes `OUT/cross_corpus.json`,
`OUT/cross_corpus.md`, `OUT/eval/<train>_to_<test>_<normalize>/`, `OUT/features/<corpus>/rejected.csv` and
`OUT/figures/cross_corpus_uar.png`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `training` and `modeling_mise` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from mise.data import load_corpus
from mise.evaluation import corpus_source, evaluate_on_corpus
from mise.hub.cards import MODEL_FOLDERS
from mise.metrics import classification_metrics
from mise.plots import plot_cross_corpus
from modeling_mise.layers import feature_statistics, standardize
from training.arguments import DataArguments, MiseTrainingArguments, ModelArguments, _read_config_file
from training.features import prepare_features
from training.study_variants import CLASSIC_C, c_on_splits, classic_baseline

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad"]
METHODS = {
    "mise_model": "MISE, training statistics (as released)",
    "mise_corpus": "MISE, test-corpus statistics",
    "classic_model": "classic, training statistics",
    "classic_corpus": "classic, test-corpus statistics",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", nargs="+", required=True, help="NAME=FOLDER (a folder with manifest.csv)")
    parser.add_argument("--classes", nargs="+", default=SHARED_CLASSES, help="classes kept in every corpus")
    parser.add_argument("--config", default=str(REPO_ROOT / "training" / "configs" / "mise.yaml"))
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_folds", type=int, default=1, help="folds run before the final models (>= 1)")
    parser.add_argument(
        "--audio_encoder", default=None, help="the classic baseline's (default: the released models')"
    )
    parser.add_argument(
        "--classic_c", type=float, nargs="+", default=list(CLASSIC_C),
        help="the classic baseline's inverse L2 strengths, one chosen per training corpus on its speakers",
    )  # fmt: skip
    args = parser.parse_args(argv)
    corpora = dict(entry.split("=", 1) for entry in args.corpus)
    if len(corpora) < 2 or any(not name or not folder for name, folder in corpora.items()):
        parser.error("--corpus: give at least two NAME=FOLDER entries")
    if not all(c > 0 for c in args.classic_c):
        parser.error(f"--classic_c: every value must be > 0, got {args.classic_c}")
    args.corpora = corpora
    return args


def other_labels(folder: str, classes: list[str]) -> list[str]:
    """The corpus' labels outside `classes` (dropped for training and testing)."""
    names = load_corpus(corpus_source(folder)).label_names
    missing = sorted(set(classes) - set(names))
    if missing:
        raise SystemExit(f"{folder}: has no clips of {missing}; choose --classes it has")
    return [name for name in names if name not in classes]


def train_corpus(name: str, folder: str, drop: list[str], args: argparse.Namespace) -> Path:
    """The released audio classifier trained on one corpus (reused when it exists)."""
    run = Path(args.output_dir) / "train" / name
    model = run / "models" / MODEL_FOLDERS["audio-classifier"]
    if (model / "config.json").is_file():
        return model
    command = [
        sys.executable,
        str(REPO_ROOT / "training" / "train.py"),
        args.config,
        "--output_dir",
        str(run),
    ]
    command += ["--dataset", "manifest.csv", "--data_dir", str(Path(folder).resolve())]
    command += ["--max_folds", str(args.max_folds)]
    command += ["--report_to", "none", "--overwrite_output_dir", "true"]
    if drop:
        command += ["--drop_labels", *drop]
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    return model


@dataclass
class ClassicSetting:
    """How the classic arm reads a training corpus as its released model does: the model's audio encoder, the
    columns of the feature set it chose, and whether classes are weighed inversely to their counts."""

    audio_encoder: str
    columns: slice | None
    balanced: bool

    @classmethod
    def of(cls, model: Path, audio_encoder: str | None, balanced: bool) -> ClassicSetting:
        from modeling_mise.configuration_audio_classifier import MiseAudioClassifierConfig

        aligner = MiseAudioClassifierConfig.from_pretrained(model).aligner_config
        encoder = audio_encoder or aligner.audio_encoder
        columns = aligner.audio_columns if encoder == aligner.audio_encoder else None
        return cls(encoder, None if columns is None else slice(*columns), balanced)


def classic_features(
    folder: str, drop: list[str], args: argparse.Namespace, name: str, encoder: str
) -> tuple:
    """Frozen functionals of a corpus' usable clips (the feature stage training runs, through its cache), their
    labels and speakers; the rejected clips are listed in `OUT/features/<name>/rejected.csv`."""
    from accelerate import PartialState

    data_args = DataArguments(dataset=corpus_source(folder), drop_labels=drop, transcript_column=None)
    model_args = ModelArguments(audio_encoder=encoder, text_encoder=None)
    output_dir = Path(args.output_dir) / "features" / name
    output_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare_features(data_args, model_args, output_dir, PartialState())
    items = prepared.corpus.items
    return prepared.features.audio.numpy(), [item.label for item in items], [item.speaker for item in items]


def speaker_validated_c(
    train: tuple, classes: list[str], setting: ClassicSetting, cs: list[float], groups: int = 5
) -> float:
    """The classic baseline's C for a training corpus, chosen on `groups` speaker-disjoint folds of that corpus
    (`c_on_splits`); the test corpus is never read."""
    from sklearn.model_selection import GroupKFold

    features, names, speakers = train
    labels = np.asarray([classes.index(label) for label in names])
    splits = list(GroupKFold(n_splits=min(groups, len(set(speakers)))).split(features, labels, speakers))
    return c_on_splits(features, labels, splits, cs, columns=setting.columns, balanced=setting.balanced)[0]


def classic_cross(
    train: tuple,
    test: tuple,
    classes: list[str],
    normalize: str,
    setting: ClassicSetting | None = None,
    c: float = 1.0,
) -> dict:
    """The classic baseline fit on `train`, scored on `test`; `corpus` z-scores each corpus on its own."""
    (x_train, y_train), (x_test, y_test) = train[:2], test[:2]
    setting = setting or ClassicSetting("", None, False)
    if normalize == "corpus":
        x_train = standardize(x_train, *feature_statistics(x_train))
        x_test = standardize(x_test, *feature_statistics(x_test))
    labels = np.asarray([classes.index(label) for label in list(y_train) + list(y_test)])
    rows = np.arange(len(labels))
    predicted = classic_baseline(
        np.concatenate([x_train, x_test]), labels, rows[: len(x_train)], rows[len(x_train) :], c,
        columns=setting.columns, balanced=setting.balanced,
    )  # fmt: skip
    metrics = classification_metrics(
        labels[len(x_train) :], predicted, len(classes), dict(enumerate(classes))
    )
    return {"uar": metrics["uar"], "wa": metrics["wa"], "macro_f1": metrics["f1_macro"], "c": c}


def run_pairs(args: argparse.Namespace, models: dict, drops: dict) -> dict:
    """Every method on every ordered (train, test) pair: {method: {train: {test: metrics}}}."""
    default = MiseTrainingArguments.__dataclass_fields__["class_balanced_batches"].default
    balanced = bool(_read_config_file(Path(args.config)).get("class_balanced_batches", default))
    settings = {
        name: ClassicSetting.of(model, args.audio_encoder, balanced) for name, model in models.items()
    }
    encoders = {setting.audio_encoder for setting in settings.values()}
    if len(encoders) > 1:
        raise SystemExit(
            f"the released models read different audio encoders {sorted(encoders)}: give --audio_encoder"
        )
    (encoder,) = encoders
    features = {
        name: classic_features(folder, drops[name], args, name, encoder)
        for name, folder in args.corpora.items()
    }
    results = {method: {name: {} for name in args.corpora} for method in METHODS}
    for train, model in models.items():
        c = speaker_validated_c(features[train], args.classes, settings[train], args.classic_c)
        for test, folder in args.corpora.items():
            if test == train:
                continue
            for normalize in ("model", "corpus"):
                report = evaluate_on_corpus(
                    model,
                    folder,
                    Path(args.output_dir) / "eval" / f"{train}_to_{test}_{normalize}",
                    drop_labels=drops[test],
                    normalize="training" if normalize == "model" else normalize,
                    show_progress=False,
                )
                results[f"mise_{normalize}"][train][test] = {k: report[k] for k in ("uar", "wa", "macro_f1")}
                classic = classic_cross(
                    features[train], features[test], args.classes, normalize, settings[train], c
                )
                results[f"classic_{normalize}"][train][test] = classic
    return results


def markdown_table(results: dict, corpora: list[str]) -> str:
    """One row per (train -> test) pair, UAR / WA / macro-F1 [%] per method."""
    lines = ["| train → test | " + " | ".join(METHODS.values()) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for train in corpora:
        for test in corpora:
            if test == train:
                continue
            cells = []
            for method in METHODS:
                m = results[method][train][test]
                cells.append(f"{100 * m['uar']:.1f} / {100 * m['wa']:.1f} / {100 * m['macro_f1']:.1f}")
            lines.append(f"| {train} → {test} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = Path(args.output_dir)
    drops = {name: other_labels(folder, args.classes) for name, folder in args.corpora.items()}
    models = {name: train_corpus(name, folder, drops[name], args) for name, folder in args.corpora.items()}
    results = run_pairs(args, models, drops)
    corpora = list(args.corpora)
    report = {"classes": args.classes, "corpora": args.corpora, "methods": METHODS, "results": results}
    (output / "cross_corpus.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(results, corpora)
    (output / "cross_corpus.md").write_text(
        f"UAR / WA / macro-F1 [%] on the shared classes ({', '.join(args.classes)}); chance UAR "
        f"{100 / len(args.classes):.1f}.\n\n" + table
    )
    matrices = {
        label: np.array([[results[m][a][b]["uar"] if a != b else np.nan for b in corpora] for a in corpora])
        for m, label in METHODS.items()
    }
    plot_cross_corpus(
        matrices, corpora, output / "figures" / "cross_corpus_uar.png", chance=1 / len(args.classes)
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
