"""`OUT/card.json`: what a training run tells the model cards, the one contract between training and publishing.

`training/train.py` writes it at the end of a run ([`write_run_card`]); `mise push` reads it ([`read_run_card`])
and never looks at the rest of the run folder's layout or at argument names. Format 1, every field always
present (`null` when the run did not record it):

- `format`: 1.
- `command`: the training command line; `commit`: the code's git commit (`+dirty` with uncommitted changes,
  `unknown` outside git); `date`: when the run finished (UTC, ISO 8601); `environment`: what its last digits
  depend on beside the commit ([`numeric_environment`]: Python, the numeric packages' versions, the
  architecture, torch's kernel level and threads).
- `corpus`: `source` (the manifest, folder or Hub id read), `name` (a known corpus' name: RAVDESS, CREMA-D,
  IEMOCAP, MSP-Podcast), `clips`, `speakers`, `hours`, `license` (the `dataset_license` argument, else the
  known corpus' licence) and `license_source` (`argument`, `known corpus` or `null`).
- `protocol`: `name` (`loso`, `loso_session`, `kfold`, `split`, `loco`), `num_folds` (of `kfold`), `max_folds`,
  `num_validation_speakers`.
- `augmentation`: `method` (`none`, `noise`, `mixup`, `gan`, `mise`), `generated_ratio` (the released
  classifier's, chosen on the final models' validation speakers; the run's one ratio without final models, `null`
  where none applies or none was recorded), `generated_ratios` (the candidates, `[]`: `generated_ratio` alone),
  `generated_ratio_chosen` (how many folds chose each ratio) and `class_balanced_generation`.
- `metrics`: `n_folds`, `uar_pooled` (required, finite), `uar_mean`, `uar_std`, `wa_pooled`, `wa_mean`,
  `wa_std`, `f1_macro_pooled`, `f1_macro_mean`, `f1_macro_std`, `aligner_uar_mean`.
- `folds`: one object per fold: `name`, `test_speakers`, `uar`, `wa`, `f1_macro`, `generator_quality`.
- `final_generator_quality`: the released generator's quality (`mi_emotion_nats`, `mi_text_nats`,
  `frechet_distance`, `precision`, `recall`, `per_class`), `null` without one.
- `corpora`: a run of several corpora, per corpus (`summary.json` → `corpora`): `source`, `clips`, `speakers`,
  `test_clips` (its clips the folds tested), `uar_own` (pooled UAR of those clips standardised with the corpus'
  own statistics: the adapted number) and `uar_as_released` (with the fold's training clips' statistics: a
  released model on one clip); `null` for a run of one corpus.
- `config`: the run's complete, flat configuration (every argument), quoted by the cards.
- `study`: a folder written by `training/study.py` whose comparison the cards quote, or `null`
  (`mise push --study` sets it for one push).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from .cards import NUMERIC_PACKAGES, RunFolderError, is_finite_number, known_corpus

CARD_FILE = "card.json"
CARD_FORMAT = 1
METRIC_KEYS = ("n_folds", "uar_pooled", "uar_mean", "uar_std", "wa_pooled", "wa_mean", "wa_std",
               "f1_macro_pooled", "f1_macro_mean", "f1_macro_std", "aligner_uar_mean")  # fmt: skip


def git_commit(directory: str | os.PathLike) -> str:
    """The short commit of the code in `directory`, `+dirty` with uncommitted changes; `unknown` outside git."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True)

    try:
        head, changes = (
            git("rev-parse", "--short", "HEAD"),
            git("status", "--porcelain", "--untracked-files=no"),
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if changes.stdout.strip() else "")


def numeric_environment() -> dict:
    """What a run's last digits depend on beside its commit: Python, the numeric packages' versions, the CPU
    architecture, the kernel level torch dispatches to and its thread count. Adversarial training amplifies
    last-bit differences, so a GAN's rows can differ between machines that run the same commit; this is what to
    compare when they do."""
    import torch  # only when a report is written

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        **{name: version(name) for name in NUMERIC_PACKAGES},
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }


def _corpus(corpus: dict, config: dict) -> dict:
    source = corpus.get("source") or config.get("dataset")
    facts = known_corpus(source, config.get("data_dir"), config.get("dataset"))
    name, known_license = (facts.name, facts.license) if facts else (None, None)
    given = config.get("dataset_license")
    license_source = "argument" if given else ("known corpus" if known_license else None)
    return {"source": None if source is None else str(source), "name": name, "clips": corpus.get("clips"),
            "speakers": corpus.get("speakers"), "hours": corpus.get("hours"),
            "license": given or known_license, "license_source": license_source}  # fmt: skip


def _fold(record: dict) -> dict:
    quality = ((record.get("stages") or {}).get("generator") or {}).get("quality")
    return {"name": record.get("fold"), "test_speakers": list(record.get("test_speakers") or []),
            "uar": record.get("uar"), "wa": record.get("wa"), "f1_macro": record.get("f1_macro"),
            "generator_quality": quality}  # fmt: skip


def _corpora(summary: dict) -> dict | None:
    """Per corpus of a run of several corpora, what it brought and the pooled UAR of its test clips."""
    corpora = (summary.get("corpora") or {}).get("corpora")
    if not corpora:
        return None

    def uar(entry: dict, key: str) -> float | None:
        return (entry.get(key) or {}).get("uar")

    return {name: {"source": entry.get("source"), "clips": entry.get("clips"), "speakers": entry.get("speakers"),
                   "test_clips": entry.get("test_clips"), "uar_own": uar(entry, "own"),
                   "uar_as_released": uar(entry, "as_released")}
            for name, entry in corpora.items()}  # fmt: skip


def _augmentation(config: dict, summary: dict) -> dict:
    candidates = list(config.get("generated_ratios") or [])
    ratio = (summary.get("generated_ratio_released") or {}).get("final")
    one_ratio = len(candidates) <= 1 and summary.get("generated_ratio_chosen")  # no final models, one ratio
    if ratio is None and one_ratio:
        ratio = candidates[0] if candidates else config.get("generated_ratio")
    return {"method": config.get("augmentation") or summary.get("augmentation"), "generated_ratio": ratio,
            "generated_ratios": candidates, "generated_ratio_chosen": summary.get("generated_ratio_chosen"),
            "class_balanced_generation": config.get("class_balanced_generation")}  # fmt: skip


def write_run_card(
    output_dir: str | os.PathLike,
    summary: dict,
    run_info: dict,
    fold_records: list[dict],
    final_generator_quality: dict | None = None,
    study: str | os.PathLike | None = None,
) -> Path:
    """Write `OUT/card.json` (fields in the module docstring) from what a finished run holds: its `summary`
    (`summary.json`), `run_info` (command, corpus summary, configuration), the fold records and the released
    generator's quality; returns the path."""
    config = dict(run_info.get("config") or {})
    card = {
        "format": CARD_FORMAT,
        "command": run_info.get("command"),
        "commit": run_info.get("commit") or git_commit(Path(__file__).resolve().parent),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": numeric_environment(),
        "corpus": _corpus(run_info.get("corpus") or {}, config),
        "protocol": {"name": config.get("protocol") or summary.get("protocol"),
                     **{key: config.get(key) for key in ("num_folds", "max_folds", "num_validation_speakers")}},
        "augmentation": _augmentation(config, summary),
        "metrics": {key: summary.get(key) for key in METRIC_KEYS},
        "folds": [_fold(record) for record in fold_records],
        "final_generator_quality": final_generator_quality,
        "corpora": _corpora(summary),
        "config": config,
        "study": None if study is None else str(study),
    }  # fmt: skip
    path = Path(output_dir) / CARD_FILE
    path.write_text(json.dumps(card, indent=2, default=str) + "\n")
    return path


def read_run_card(output_dir: str | os.PathLike) -> dict:
    """`OUT/card.json`, checked: a JSON object of format 1 with a finite `metrics.uar_pooled`; a missing
    optional field reads as `null`. Raises `RunFolderError` naming the file and the problem."""
    output_dir = Path(output_dir)
    path = output_dir / CARD_FILE
    if not output_dir.is_dir():
        raise RunFolderError(f"{output_dir}: not a run folder (no such directory)")
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; training/train.py writes it when the run has finished")
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path}: unreadable JSON ({error})") from error
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise RunFolderError(f"{path}: not a format {CARD_FORMAT} card.json object")
    metrics = card.get("metrics")
    if not isinstance(metrics, dict) or not is_finite_number(metrics.get("uar_pooled")):
        raise RunFolderError(f"{path}: field 'metrics.uar_pooled' missing or not a finite number")
    for key in ("corpus", "protocol", "augmentation", "config"):
        card[key] = card.get(key) or {}
    card["folds"] = [fold for fold in card.get("folds") or [] if isinstance(fold, dict)]
    for key in ("command", "commit", "date", "environment", "final_generator_quality", "corpora", "study"):
        card.setdefault(key, None)
    return card
