"""Emotion corpora: a manifest CSV, a local ``audiofolder`` or a ``datasets`` dataset -> :class:`Corpus`.

Labels, speakers, transcripts, sessions and given splits are read and checked once here; audio is decoded
later by :meth:`Corpus.load_waveforms` through :mod:`modeling_mise.audio` (soundfile first, so WAV/FLAC need
no torchcodec), which rejects bad files with a reason instead of failing the run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from tqdm.auto import tqdm

from mise.console import UsageError
from mise.folds import SPLIT_ALIASES, canonical_split
from modeling_mise.audio import (
    AUDIO_EXTENSIONS,
    DEFAULT_POLICY,
    AudioInputError,
    decode_bytes,
    load_audio,
    prepare_waveform,
    rejection_reason,
)

logger = logging.getLogger(__name__)

AUDIO_COLUMN_CANDIDATES = ("path", "audio", "file", "file_name", "filename", "wav")
DATA_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")

# IEMOCAP's four-class protocol: excited is merged into happy, every other category is dropped.
_IEMOCAP4 = {
    "neu": "neutral",
    "neutral": "neutral",
    "hap": "happy",
    "happy": "happy",
    "happiness": "happy",
    "exc": "happy",
    "excited": "happy",
    "excitement": "happy",
    "ang": "angry",
    "angry": "angry",
    "anger": "angry",
    "sad": "sad",
    "sadness": "sad",
}
# The six emotions RAVDESS and Emo-DB share (angry, disgust, fear, happy, neutral, sad), the label space of a model
# trained on both: common spellings of each (the corpora's own names, RAVDESS' "fearful", Emo-DB's German names,
# IEMOCAP's and CREMA-D's codes) onto one name; every other label (calm, surprise, bored, ...) is dropped.
SHARED_EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad")
_SPELLINGS = {
    "angry": ("angry", "anger", "ang", "ärger", "wut"),
    "disgust": ("disgust", "disgusted", "dis", "ekel"),
    "fear": ("fear", "fearful", "fea", "angst", "anxiety"),
    "happy": ("happy", "happiness", "hap", "joy", "freude"),
    "neutral": ("neutral", "neu"),
    "sad": ("sad", "sadness", "trauer"),
}
_SHARED6 = {spelling: name for name, spellings in _SPELLINGS.items() for spelling in spellings}
LABEL_MAPS: dict[str, dict[str, str]] = {"iemocap4": _IEMOCAP4, "shared6": _SHARED6}
# a speaker (or session) of a corpus in a run of several corpora is named `<corpus><CORPUS_SEPARATOR><speaker>`
CORPUS_SEPARATOR = "."


@dataclass
class CorpusItem:
    """One clip of a corpus.

    ``audio`` is ``None`` when the clip is a file at ``path``; otherwise the source's own audio:
    ``{"array", "sampling_rate"}`` for decoded arrays or ``{"bytes", "path"}`` for an embedded file,
    decoded on demand by :meth:`read`. ``fingerprint`` is the sha256 of the file bytes (or of the array
    bytes and rate), empty when the file could not be read. ``row`` is the row in the source. ``split`` is
    the row's given partition (``"train"``, ``"validation"`` or ``"test"``), ``None`` without a split column.
    """

    index: int
    row: int
    path: str | None
    audio: dict | None
    label: str
    speaker: str
    transcript: str | None
    session: str | None
    fingerprint: str
    duration_s: float | None = None
    split: str | None = None
    corpus: str | None = None  # the corpus' name in a run of several corpora (`combine_corpora`)

    @property
    def source(self) -> str:
        """A name for messages: the file path, the embedded file's name, or the row."""
        if self.path:
            return self.path
        if self.audio is not None and self.audio.get("path"):
            return f"{self.audio['path']} (row {self.row})"
        return f"row {self.row}"

    def read(self, sampling_rate: int | None = None) -> np.ndarray:
        """Decode the clip to float32 mono ``(T,)`` at ``sampling_rate`` (the file's own when ``None``).

        Raises:
            AudioInputError: naming the file when it is missing, unreadable, empty or non-finite.
        """
        if self.audio is not None and self.audio.get("array") is not None:
            return prepare_waveform(
                self.audio["array"], self.audio["sampling_rate"], sampling_rate, self.source
            )
        if self.audio is not None and self.audio.get("bytes") is not None:
            return decode_bytes(self.audio["bytes"], self.audio.get("path"), sampling_rate, self.source)
        if not self.path:
            raise AudioInputError(self.source, "no audio (neither a path nor embedded audio)")
        return load_audio(self.path, sampling_rate)[0]


@dataclass
class Rejection:
    """A clip left out of training, and why."""

    row: int
    path: str
    reason: str


def fingerprint_array(array: np.ndarray, sampling_rate: int) -> str:
    """sha256 of a decoded clip: its dtype, shape, sample bytes and rate."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}|{array.shape}|{int(sampling_rate)}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _fingerprint_bytes(data: bytes) -> tuple[str, float | None]:
    """sha256 of encoded file bytes and the duration read from the header (``None`` if unreadable)."""
    try:
        duration = float(soundfile.info(io.BytesIO(data)).duration)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        duration = None
    return hashlib.sha256(data).hexdigest(), duration


def _fingerprint_file(path: str) -> tuple[str, float | None]:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return "", None
    return _fingerprint_bytes(data)


class Corpus:
    """Labelled clips with speakers, optional transcripts and sessions, and the label space.

    ``label_names`` are the sorted unique labels after mapping (or the ones given); ``id2label`` /
    ``label2id`` follow them. Subsets keep the label space of the corpus they come from. ``parts``: for several
    corpora trained as one (`combine_corpora`), what each brought, by name; empty for one corpus.
    """

    def __init__(
        self,
        items: Sequence[CorpusItem],
        label_names: Sequence[str] | None = None,
        source: str = "",
        dropped: Mapping[str, int] | None = None,
        parts: Mapping[str, dict] | None = None,
    ):
        self.parts = dict(parts or {})
        self.items = list(items)
        self.label_names = (
            sorted({item.label for item in self.items}) if label_names is None else list(label_names)
        )
        self.id2label = dict(enumerate(self.label_names))
        self.label2id = {name: index for index, name in self.id2label.items()}
        self.source = source
        self.dropped = dict(dropped or {})
        for item in self.items:
            if item.label not in self.label2id:
                raise ValueError(
                    f"{source}: row {item.row} has label {item.label!r}, not in {self.label_names}"
                )

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Corpus({self.source!r}, clips={len(self)}, labels={self.label_names})"

    def labels(self) -> np.ndarray:
        """Integer label ids ``(N,)``."""
        return np.asarray([self.label2id[item.label] for item in self.items], dtype=np.int64)

    def speakers(self) -> np.ndarray:
        """Speaker ids ``(N,)`` as strings."""
        return np.asarray([item.speaker for item in self.items], dtype=object)

    def sessions(self) -> np.ndarray | None:
        """Session ids ``(N,)`` (``None`` for a clip without one), or ``None`` when no clip has a session."""
        values = [item.session for item in self.items]
        if all(value is None for value in values):
            return None
        return np.asarray(values, dtype=object)

    def splits(self) -> np.ndarray | None:
        """Given partition ``(N,)`` (train / validation / test), or ``None`` when no clip has one."""
        values = [item.split for item in self.items]
        if all(value is None for value in values):
            return None
        return np.asarray(values, dtype=object)

    def corpora(self) -> np.ndarray | None:
        """The corpus of every clip ``(N,)`` in a run of several corpora, ``None`` for one corpus."""
        if not self.parts:
            return None
        return np.asarray([item.corpus for item in self.items], dtype=object)

    def transcripts(self) -> list[str | None]:
        """Transcripts, ``None`` where missing."""
        return [item.transcript for item in self.items]

    def fingerprints(self) -> list[str]:
        """Content fingerprints, the keys of :class:`mise.cache.FeatureCache`."""
        return [item.fingerprint for item in self.items]

    def subset(self, indices: Iterable[int]) -> Corpus:
        """The corpus restricted to ``indices`` (re-indexed from 0, same label space)."""
        items = [replace(self.items[i], index=new) for new, i in enumerate(indices)]
        return Corpus(items, self.label_names, self.source, self.dropped, self.parts)

    def summary(self) -> dict:
        """Clips, speakers, sessions, hours, clips per class, with / without transcript, dropped labels."""
        durations = [item.duration_s for item in self.items if item.duration_s is not None]
        per_class = Counter(item.label for item in self.items)
        sessions = {item.session for item in self.items if item.session is not None}
        with_transcript = sum(item.transcript is not None for item in self.items)
        several = {"corpora": self.parts} if self.parts else {}
        return {
            "source": self.source,
            "clips": len(self.items),
            "speakers": len({item.speaker for item in self.items}),
            "sessions": len(sessions) if sessions else None,
            "hours": sum(durations) / 3600.0,
            "clips_without_duration": len(self.items) - len(durations),
            "clips_per_class": {name: per_class.get(name, 0) for name in self.label_names},
            "with_transcript": with_transcript,
            "without_transcript": len(self.items) - with_transcript,
            "dropped": dict(self.dropped),
            **several,
        }

    def format_summary(self) -> str:
        """:meth:`summary` as a printable table."""
        return format_summary(self.summary())

    def load_waveforms(
        self, sampling_rate: int, **options: Any
    ) -> tuple[list[np.ndarray], Corpus, list[Rejection]]:
        """Decode every clip to float32 mono at ``sampling_rate``, leaving out unusable ones.

        Unreadable, empty, non-finite, silent (peak ``< silence_dbfs``) and too-short (``< min_seconds``) clips
        become :class:`Rejection` entries (:func:`modeling_mise.audio.rejection_reason`, the input policy of
        every entry point) and the rest go on; with ``strict`` the first one raises. ``options`` are
        :meth:`judge`'s (``min_seconds``, ``strict``, ``show_progress``, ``silence_dbfs``).

        Returns:
            ``(waveforms, usable_corpus, rejections)``; ``waveforms[i]`` belongs to ``usable_corpus.items[i]``.

        Raises:
            AudioInputError: with ``strict``, for the first unusable clip (naming file and row).
            ValueError: when no clip is usable.
        """
        judged = self.judge(sampling_rate, **options)
        kept = [position for position, (_, reason) in enumerate(judged) if reason is None]
        rejections = [
            self.rejection(position, reason)
            for position, (_, reason) in enumerate(judged)
            if reason is not None
        ]
        if not kept:
            raise ValueError(f"{self.source}: none of the {len(self.items)} clips is usable")
        return [judged[position][0] for position in kept], self.subset(kept), rejections

    def judge(
        self,
        sampling_rate: int,
        min_seconds: float = DEFAULT_POLICY.min_seconds,
        strict: bool = False,
        show_progress: bool = True,
        silence_dbfs: float = DEFAULT_POLICY.silence_dbfs,
    ) -> list[tuple[np.ndarray | None, str | None]]:
        """Decode and judge every clip: ``(waveform, None)`` for a usable one, ``(None, reason)`` for the others.

        The reasons are :func:`modeling_mise.audio.rejection_reason`'s (or why the file could not be read); with
        ``strict`` the first unusable clip raises :class:`AudioInputError` naming its file and row.
        """
        judged: list[tuple[np.ndarray | None, str | None]] = []
        for item in tqdm(self.items, desc="reading audio", disable=not show_progress, unit="clip"):
            try:
                waveform = item.read(sampling_rate)
                reason = rejection_reason(waveform, sampling_rate, min_seconds, silence_dbfs)
            except AudioInputError as error:
                reason = error.reason
            if reason is not None and strict:
                raise AudioInputError(f"{item.source} (row {item.row})", reason)
            judged.append((waveform, None) if reason is None else (None, reason))
        rejected = [position for position, (_, reason) in enumerate(judged) if reason is not None]
        if rejected:
            first = self.items[rejected[0]]
            logger.warning(
                "%s: %d of %d clips rejected (first: %s: %s)",
                self.source,
                len(rejected),
                len(self.items),
                first.source,
                judged[rejected[0]][1],
            )
        return judged

    def rejection(self, position: int, reason: str) -> Rejection:
        """The :class:`Rejection` of clip ``position`` for ``reason``."""
        item = self.items[position]
        return Rejection(row=item.row, path=item.source, reason=reason)


MIN_CLASS_CLIPS = 10
MIN_CLASS_SPEAKERS = 2


def check_class_sizes(
    corpus: Corpus, min_class_clips: int = MIN_CLASS_CLIPS, min_speakers: int = MIN_CLASS_SPEAKERS
) -> None:
    """Stop on a class too small to train and test speaker-independently (often a typo'd label).

    Raises:
        ValueError: naming each class with fewer than ``min_class_clips`` clips or ``min_speakers`` speakers,
            its counts and its first five rows, and how to merge or drop it.
    """
    problems = []
    for name in corpus.label_names:
        items = [item for item in corpus.items if item.label == name]
        speakers = {item.speaker for item in items}
        if len(items) >= min_class_clips and len(speakers) >= min_speakers:
            continue
        rows = ", ".join(f"{item.row} ({Path(item.source).name})" for item in items[:5])
        more = f" and {len(items) - 5} more" if len(items) > 5 else ""
        problems.append(
            f"class {name!r} has {len(items)} clip(s) from {len(speakers)} speaker(s) "
            f"{sorted(speakers)} (rows {rows or '-'}{more})"
        )
    if problems:
        raise ValueError(
            f"{corpus.source}: "
            + "; ".join(problems)
            + f". Every class needs at least {min_class_clips} clips "
            f"(min_class_clips) from {min_speakers} speakers. A typo? Merge the class into another or drop it "
            "with --label_map (a JSON mapping of every label to its class; null drops one), or drop it with "
            "--drop_labels."
        )


def format_summary(summary: dict) -> str:
    """A :meth:`Corpus.summary` dict as a two-column text table."""
    lines = [f"corpus: {summary.get('source') or '-'}"]
    rows = [
        ("clips", summary["clips"]),
        ("speakers", summary["speakers"]),
        ("sessions", summary["sessions"] if summary.get("sessions") is not None else "-"),
        ("hours", f"{summary['hours']:.2f}"),
        ("with transcript", summary["with_transcript"]),
        ("without transcript", summary["without_transcript"]),
    ]
    if summary.get("clips_without_duration"):
        rows.append(("clips without duration", summary["clips_without_duration"]))
    per_class = summary["clips_per_class"]
    width = max([len(name) for name, _ in rows] + [len(str(name)) for name in per_class] + [5])
    lines += [f"{name:<{width}}  {value:>8}" for name, value in rows]
    lines.append(f"{'class':<{width}}  {'clips':>8}")
    lines += [f"{name:<{width}}  {count:>8}" for name, count in per_class.items()]
    if summary.get("dropped"):
        lines.append(f"dropped labels: {_counts(summary['dropped'])}")
    for name, part in (summary.get("corpora") or {}).items():
        dropped = {**part["dropped"], **part["unshared"]}
        lines.append(
            f"corpus {name}: {part['clips']} clips, {part['speakers']} speakers"
            + (f"; dropped: {_counts(dropped)}" if dropped else "")
        )
    return "\n".join(lines)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{label} ({count})" for label, count in sorted(counts.items()))


def combine_corpora(corpora: Mapping[str, Corpus], keep_unshared_labels: bool = False) -> Corpus:
    """Several corpora as one, for training them together: speakers and sessions named per corpus
    (``<corpus>.<speaker>``), each clip's ``corpus`` set, one label space.

    Each corpus comes with its labels already mapped (its own ``label_map``). The label space is every class at least
    two corpora have; a class only one corpus has is dropped (with a warning naming it and its clips, and counted in
    ``parts[name]["unshared"]``) unless ``keep_unshared_labels``.

    Raises:
        ValueError: for fewer than two corpora, or a corpus none of whose labels another corpus has (naming its
            labels and theirs: its labels do not map onto theirs), or fewer than two classes left.
    """
    if len(corpora) < 2:
        raise ValueError(f"combine_corpora: needs at least two corpora, got {list(corpora)}")
    classes = {name: set(corpus.label_names) for name, corpus in corpora.items()}
    alone = [
        f"corpus {name!r} ({corpora[name].source}) has labels {sorted(own)}"
        for name, own in classes.items()
        if not own & set().union(*(labels for other, labels in classes.items() if other != name))
    ]
    if alone:
        raise ValueError(
            f"{'; '.join(alone)}: none of them is a label of another corpus; give each corpus a label_map onto one "
            f"set of names (e.g. label_map: shared6 for the six shared emotions {', '.join(SHARED_EMOTIONS)})"
        )
    owners = Counter(label for labels in classes.values() for label in labels)
    kept = sorted(owners) if keep_unshared_labels else sorted(label for label, n in owners.items() if n >= 2)
    if len(kept) < 2:
        raise ValueError(
            f"the corpora {list(corpora)} share fewer than two classes ({kept}): nothing to train"
        )
    items, parts = [], {}
    for name, corpus in corpora.items():
        unshared = Counter(item.label for item in corpus.items if item.label not in kept)
        if unshared:
            logger.warning(
                "%s: %d clip(s) of classes no other corpus has dropped: %s (keep_unshared_labels keeps them)",
                name, sum(unshared.values()), _counts(unshared),
            )  # fmt: skip
        own = [item for item in corpus.items if item.label in kept]
        for item in own:
            items.append(
                replace(item, index=len(items), corpus=name, speaker=_named(name, item.speaker),
                        session=None if item.session is None else _named(name, item.session))
            )  # fmt: skip
        parts[name] = {"source": corpus.source, "clips": len(own), "speakers": len({i.speaker for i in own}),
                       "classes": sorted({i.label for i in own}), "dropped": dict(corpus.dropped),
                       "unshared": dict(unshared)}  # fmt: skip
    return Corpus(items, kept, source=" + ".join(corpora), parts=parts)


def keep_emotions_per_speaker(corpus: Corpus, count: int) -> Corpus:
    """The corpus with each speaker heard in at most ``count`` emotions: a corpus of speakers heard in few
    emotions (as in natural speech), made from one that has them all, to measure what that does to a method.

    Speakers in sorted order each keep the ``count`` of their emotions that the fewest speakers before them kept
    (ties: the fewest clips kept, then the first in label order), so every emotion stays heard from as many
    speakers, and with as many clips, as the corpus allows; no seed, so every run of a study sees the same clips.
    The label space is unchanged.

    Raises:
        ValueError: for ``count`` < 1.
    """
    if count < 1:
        raise ValueError(f"emotions_per_speaker: must be >= 1, got {count}")
    clips = Counter((item.speaker, item.label) for item in corpus.items)
    heard, taken = Counter(), Counter()  # emotion -> speakers / clips kept in it so far
    kept: set[tuple[str, str]] = set()
    for speaker in sorted({speaker for speaker, _ in clips}):
        own = sorted((label for who, label in clips if who == speaker), key=corpus.label2id.get)
        for label in sorted(own, key=lambda name: (heard[name], taken[name]))[:count]:
            heard[label] += 1
            taken[label] += clips[speaker, label]
            kept.add((speaker, label))
    keep = [i for i, item in enumerate(corpus.items) if (item.speaker, item.label) in kept]
    logger.info(
        "%s: each speaker heard in at most %d emotion(s): %d of %d clips kept; speakers per emotion: %s",
        corpus.source, count, len(keep), len(corpus), _counts(heard),
    )  # fmt: skip
    return corpus.subset(keep)


def _named(corpus: str, name: str) -> str:
    return f"{corpus}{CORPUS_SEPARATOR}{name}"


def write_rejections(rejections: Sequence[Rejection], path: str | os.PathLike) -> None:
    """Write the rejected clips as a CSV with columns ``row,path,reason``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "reason"])
        for rejection in rejections:
            writer.writerow([rejection.row, rejection.path, rejection.reason])


# ----------------------------------------------------------------------------------------------------
# Label mapping


def _label_mapper(
    label_map: str | Mapping | None, drop_labels: Sequence[str], where: Callable[[int], str]
) -> Callable[[int, str], str | None]:
    """Return ``map(row, raw_label) -> mapped label or None (dropped)``."""
    if isinstance(drop_labels, str):
        drop_labels = [drop_labels]
    drop_labels = drop_labels or ()
    dropped = {str(label).strip().casefold() for label in drop_labels}
    if label_map is None:
        table, strict = None, False
    elif isinstance(label_map, str):
        if label_map.casefold() not in LABEL_MAPS:
            raise UsageError(f"label_map: unknown preset {label_map!r}; presets: {sorted(LABEL_MAPS)}")
        table, strict = LABEL_MAPS[label_map.casefold()], False
    elif isinstance(label_map, Mapping):
        table, strict = {str(key).strip(): value for key, value in label_map.items()}, True
    else:
        raise ValueError(f"label_map must be None, a preset name or a dict, got {type(label_map).__name__}")
    folded = None if table is None else {key.casefold(): value for key, value in table.items()}

    def mapper(row: int, raw: str) -> str | None:
        if raw.casefold() in dropped:
            return None
        if table is None:
            mapped = raw
        elif raw in table:
            mapped = table[raw]
        elif raw.casefold() in folded:
            mapped = folded[raw.casefold()]
        elif strict:
            raise ValueError(
                f"{where(row)}: label {raw!r} is not covered by label_map (keys: {sorted(table)}); "
                "map it to a class, or to None to drop it"
            )
        else:
            return None
        if mapped is None:
            return None
        mapped = str(mapped).strip()
        if not mapped:
            raise ValueError(f"{where(row)}: label_map maps {raw!r} to an empty label")
        return None if mapped.casefold() in dropped else mapped

    return mapper


# ----------------------------------------------------------------------------------------------------
# Sources


@dataclass
class _Table:
    """Rows of a source with the columns a corpus needs."""

    name: str
    columns: list[str]
    rows: Iterable[dict]
    where: Callable[[int], str]
    base_dir: Path | None = None
    is_audiofolder: bool = False
    converters: dict[str, Callable[[Any], Any]] = field(default_factory=dict)


def _require_column(table: _Table, column: str, role: str, hint: str = "") -> None:
    if column not in table.columns:
        raise ValueError(
            f"{table.name}: missing {role} column {column!r}; available columns: {table.columns}{hint}"
        )


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    text = str(value).strip()
    return text or None


def _csv_table(path: Path) -> _Table:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise ValueError(f"{path}: empty manifest (no header row)")
        columns = [name.strip() for name in reader.fieldnames]
        rows, lines = [], []
        for record in reader:
            rows.append({name.strip(): value for name, value in record.items() if name is not None})
            lines.append(reader.line_num)
    if not rows:
        raise ValueError(f"{path}: the manifest has a header but no rows")
    return _Table(
        name=str(path),
        columns=columns,
        rows=rows,
        where=lambda row: f"{path}: row {row} (line {lines[row]})",
        base_dir=path.parent,
    )


def _dataset_table(
    dataset: Any, name: str, split: str, base_dir: Path | None, audio_column: str | None
) -> tuple[_Table, str | None]:
    from datasets import Audio, ClassLabel

    converters = {}
    for column, feature in dataset.features.items():
        if isinstance(feature, ClassLabel):
            converters[column] = _class_label_converter(feature)
        elif isinstance(feature, Audio) and feature.decode:
            dataset = dataset.cast_column(column, Audio(decode=False))
    if audio_column is None:
        audio_column = next((c for c, f in dataset.features.items() if isinstance(f, Audio)), None)
    return _Table(
        name=f"{name} [{split}]",
        columns=list(dataset.column_names),
        rows=dataset,
        where=lambda row: f"{name} [{split}]: row {row}",
        base_dir=base_dir,
        converters=converters,
    ), audio_column


def _class_label_converter(feature: Any) -> Callable[[int], str | None]:
    """ClassLabel id -> name; ``-1`` (datasets' missing label) -> ``None``."""
    return lambda value: None if value is None or int(value) < 0 else feature.int2str(int(value))


def _is_saved_dataset(directory: Path) -> bool:
    return (directory / "dataset_dict.json").is_file() or (
        (directory / "state.json").is_file() and (directory / "dataset_info.json").is_file()
    )


def _is_audiofolder(directory: Path) -> bool:
    has_audio = False
    for file in directory.rglob("*"):
        suffix = file.suffix.lower()
        if suffix in DATA_FILE_BUILDERS or (suffix in (".csv", ".tsv") and file.name not in METADATA_FILES):
            return False
        has_audio = has_audio or suffix in AUDIO_EXTENSIONS
    return has_audio


def _open_source(
    source: str, split: str, data_dir: str | None, audio_column: str | None
) -> tuple[_Table, str]:
    """Dispatch ``source`` to a table and the audio column to use (``None``: pick by name)."""
    import datasets

    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            return _csv_table(path), audio_column
        if suffix in DATA_FILE_BUILDERS:
            dataset = datasets.load_dataset(DATA_FILE_BUILDERS[suffix], data_files=str(path), split="train")
            return _dataset_table(dataset, str(path), "train", path.parent, audio_column)
        raise UsageError(
            f"{source}: unsupported file type {suffix!r} (expected .csv, .tsv, .parquet, .json(l))"
        )
    if source == "audiofolder" or (path.is_dir() and not _is_saved_dataset(path) and _is_audiofolder(path)):
        root = Path(data_dir) if source == "audiofolder" else path
        if source == "audiofolder" and not data_dir:
            raise UsageError("load_corpus('audiofolder') needs data_dir, the folder of audio files")
        if not root.is_dir():
            raise UsageError(f"{root}: audiofolder directory not found")
        dataset = datasets.load_dataset("audiofolder", data_dir=str(root), split=split)
        table, audio_column = _dataset_table(dataset, str(root), split, root, audio_column or "audio")
        table.is_audiofolder = True
        return table, audio_column
    if path.is_dir() and _is_saved_dataset(path):
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{source}: no split {split!r}; splits: {list(dataset)}")
            dataset = dataset[split]
        return _dataset_table(dataset, source, split, path, audio_column)
    if not path.is_dir() and source.lower().endswith((".csv", ".tsv", ".parquet", ".json", ".jsonl")):
        raise UsageError(f"{source}: file not found")
    try:
        dataset = datasets.load_dataset(source, split=split, data_dir=data_dir)
    except (OSError, ConnectionError) as error:
        raise UsageError(
            f"{source}: not a manifest CSV, an audiofolder, or a dataset that `datasets` can load ({error})"
        ) from error
    return _dataset_table(dataset, source, split, path if path.is_dir() else None, audio_column)


def _audio_reference(value: Any, base_dir: Path | None) -> tuple[str | None, dict | None]:
    """A cell of the audio column -> (path, embedded audio)."""
    if isinstance(value, Mapping):
        if value.get("array") is not None:
            return None, {"array": np.asarray(value["array"]), "sampling_rate": int(value["sampling_rate"])}
        if value.get("bytes") is not None:
            return None, {"bytes": value["bytes"], "path": value.get("path")}
        value = value.get("path")
    text = _cell(value)
    if text is None:
        return None, None
    if base_dir is not None and not os.path.isabs(text):
        text = str(base_dir / text)
    return text, None


def load_corpus(
    source: str | os.PathLike,
    *,
    audio_column: str | None = None,
    label_column: str = "emotion",
    speaker_column: str = "speaker",
    transcript_column: str | None = "transcript",
    session_column: str | None = "session",
    split_column: str | None = "split",
    split: str = "train",
    label_map: str | Mapping | None = None,
    drop_labels: Sequence[str] = (),
    data_dir: str | None = None,
) -> Corpus:
    """Load an emotion corpus.

    Args:
        source: a manifest CSV/TSV (relative paths resolve against its folder), a local ``audiofolder``
            directory (or ``"audiofolder"`` with ``data_dir``), a dataset folder or data file that
            ``datasets`` loads, or a Hub dataset id.
        audio_column: column with the audio path / audio; ``None`` picks the ``Audio`` feature or the
            first of ``path, audio, file, file_name, filename, wav``.
        label_column: emotion column. In an audiofolder without it, the folder names are the labels.
        speaker_column: speaker column (required: folds are speaker-independent).
        transcript_column: optional transcript column; missing column or empty cells give ``None``.
        session_column: optional session column (for leave-one-session-out).
        split_column: optional column giving each row's partition, ``train`` / ``validation`` / ``test`` (also
            training, valid, val, dev, development, testing; any case), for a given split such as MSP-Podcast's; when the
            source has it, every row needs one of these values. ``None`` ignores the column.
        split: split of a ``datasets`` source.
        label_map: ``None`` (the corpus' own labels), a preset (``"iemocap4"``: neutral, happy with excited
            merged, angry, sad; short codes or names, any case; others dropped), or a dict
            ``{raw: mapped}`` where ``None`` drops a class and a label it does not cover is an error.
        drop_labels: labels (raw or mapped, any case) whose clips are left out.
        data_dir: ``data_dir`` passed to ``datasets.load_dataset``.

    Raises:
        ValueError: for a missing column (naming it and the available ones), an empty label / speaker /
            split cell, an unknown split or a label the map does not cover (naming the row), or no clip left.
    """
    source = os.fspath(source)
    table, audio_column = _open_source(source, split, data_dir, audio_column)
    columns = _resolve_columns(
        table, audio_column, label_column, speaker_column, transcript_column, session_column, split_column
    )
    mapper = _label_mapper(label_map, drop_labels, table.where)
    items, dropped = [], Counter()
    for row, record in enumerate(_select(table.rows, columns)):
        fields = _read_row(table, columns, row, record)
        label = mapper(row, fields["label"])
        if label is None:
            dropped[fields["label"]] += 1
            continue
        items.append(CorpusItem(index=len(items), row=row, fingerprint="", **{**fields, "label": label}))
    if not items:
        raise ValueError(f"{table.name}: no clip left after label mapping (dropped: {dict(dropped)})")
    if dropped:
        logger.info("%s: dropped %d clips with labels %s", table.name, sum(dropped.values()), dict(dropped))
    _fingerprint_items(items)
    return Corpus(items, source=table.name, dropped=dropped)


@dataclass
class _Columns:
    audio: str
    label: str | None  # None: the audiofolder's label folders
    speaker: str
    transcript: str | None
    session: str | None
    split: str | None = None


def _resolve_columns(
    table: _Table,
    audio_column: str | None,
    label_column: str,
    speaker_column: str,
    transcript_column: str | None,
    session_column: str | None,
    split_column: str | None = None,
) -> _Columns:
    """Check the required columns exist (naming the missing one and the available ones)."""
    if audio_column is None:
        audio_column = next((c for c in AUDIO_COLUMN_CANDIDATES if c in table.columns), None)
        if audio_column is None:
            raise ValueError(
                f"{table.name}: no audio column (tried {list(AUDIO_COLUMN_CANDIDATES)}); "
                f"available columns: {table.columns}; set audio_column"
            )
    _require_column(table, audio_column, "audio")
    if label_column not in table.columns and table.is_audiofolder:
        if "label" in table.columns:
            logger.info("%s: no %r column, using the folder-name labels in 'label'", table.name, label_column)
            label_column = "label"
        else:
            logger.info("%s: no %r column, using folder names as labels", table.name, label_column)
            label_column = None
    if label_column is not None:
        _require_column(table, label_column, "label")
    hint = ""
    if table.is_audiofolder:
        hint = (
            "; an audiofolder needs a metadata.csv with a file_name column and a speaker column "
            "(speaker-independent folds need speakers)"
        )
    _require_column(table, speaker_column, "speaker", hint)
    if transcript_column and transcript_column not in table.columns:
        logger.info("%s: no transcript column %r; transcripts are None", table.name, transcript_column)
        transcript_column = None
    if session_column and session_column not in table.columns:
        session_column = None
    if split_column and split_column not in table.columns:
        split_column = None
    return _Columns(
        audio_column, label_column, speaker_column, transcript_column, session_column, split_column
    )


def _select(rows: Iterable[dict], columns: _Columns) -> Iterable[dict]:
    """Only the needed columns of a ``datasets`` source (others may be large)."""
    if not hasattr(rows, "select_columns"):
        return rows
    return rows.select_columns(list(dict.fromkeys(c for c in vars(columns).values() if c)))


def _read_row(table: _Table, columns: _Columns, row: int, record: dict) -> dict:
    """One source row -> the fields of a :class:`CorpusItem` with the raw label; ValueError naming the row."""

    def value(column: str | None) -> str | None:
        if not column or record.get(column) is None:
            return None
        cell = record[column]
        return _cell(table.converters[column](cell) if column in table.converters else cell)

    path, audio = _audio_reference(record.get(columns.audio), table.base_dir)
    if path is None and audio is None:
        raise ValueError(f"{table.where(row)}: empty audio cell in column {columns.audio!r}")
    if columns.label is None:
        folder = Path(path or (audio or {}).get("path") or "").resolve().parent
        if folder == table.base_dir.resolve():
            raise ValueError(
                f"{table.where(row)}: {path} lies at the top of the audiofolder, so it has no label folder, "
                "and metadata has no label column"
            )
        raw_label = _cell(folder.name)
    else:
        raw_label = value(columns.label)
    if raw_label is None:
        raise ValueError(f"{table.where(row)}: empty label in column {columns.label!r}")
    speaker = value(columns.speaker)
    if speaker is None:
        raise ValueError(f"{table.where(row)}: empty speaker in column {columns.speaker!r}")
    return {
        "path": path,
        "audio": audio,
        "label": raw_label,
        "speaker": speaker,
        "transcript": value(columns.transcript),
        "session": value(columns.session),
        "split": _split_value(table, columns.split, row, value(columns.split)),
    }


def _split_value(table: _Table, column: str | None, row: int, raw: str | None) -> str | None:
    """A split cell -> ``train`` / ``validation`` / ``test``; ValueError naming the row and the column."""
    if column is None:
        return None
    if raw is None:
        raise ValueError(
            f"{table.where(row)}: empty split in column {column!r}; with a split column every row needs "
            "train, validation or test (set split_column to None to ignore the column)"
        )
    name = canonical_split(raw)
    if name is None:
        raise ValueError(
            f"{table.where(row)}: split {raw!r} in column {column!r} is not train, validation or test "
            f"(accepted: {', '.join(SPLIT_ALIASES)}; set split_column to None to ignore the column)"
        )
    return name


def _fingerprint_items(items: list[CorpusItem]) -> None:
    """Content fingerprints and durations (header only) of every item, reading each file once."""
    for item in tqdm(items, desc="fingerprinting", disable=len(items) < 2000, unit="clip"):
        if item.audio is None:
            item.fingerprint, item.duration_s = _fingerprint_file(item.path)
        elif item.audio.get("bytes") is not None:
            item.fingerprint, item.duration_s = _fingerprint_bytes(item.audio["bytes"])
        else:
            array, rate = item.audio["array"], item.audio["sampling_rate"]
            item.fingerprint = fingerprint_array(array, rate)
            item.duration_s = len(array) / rate if np.ndim(array) == 1 else None
