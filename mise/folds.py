"""Speaker-independent evaluation folds (SPEC §2).

Every fold holds out test speakers, takes validation speakers from the training side (never a test
speaker) and checks that the training side still covers every class. With several corpora, `loco` holds out a
whole corpus (leave one corpus out) and tests on its clips of the classes the other corpora have.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PROTOCOLS = ("loso", "loso_session", "kfold", "split", "loco")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "development": "validation",  # MSP-Podcast
    "test": "test",
    "testing": "test",
}


def canonical_split(value: str | None) -> str | None:
    """A given split cell -> ``train`` / ``validation`` / ``test`` (any case and spacing of an alias), ``None``
    when it is not one of :data:`SPLIT_ALIASES`."""
    return SPLIT_ALIASES.get((value or "").strip().casefold())


@dataclass
class Fold:
    """One train / validation / test partition of item indices, speaker-disjoint."""

    name: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    test_speakers: list[str]
    validation_speakers: list[str]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _as_str_array(values: Sequence, field: str, length: int) -> np.ndarray:
    array = np.asarray([None if value is None else str(value) for value in values], dtype=object)
    if array.ndim != 1 or len(array) != length:
        raise ValueError(f"make_folds: {field} has {len(array)} entries but labels has {length}")
    return array


def _class_name(label: int, id2label: Mapping | None) -> str:
    if id2label is None:
        return str(label)
    return str(id2label.get(label, id2label.get(str(label), label)))


def pick_validation_speakers(
    candidates: list[str],
    count: int,
    speakers: np.ndarray,
    labels: np.ndarray,
    train_side: np.ndarray,
    classes: list[int],
    rng: np.random.Generator,
    speaker_sessions: dict[str, str] | None = None,
) -> list[str]:
    """The one draw of validation speakers, for the folds and for the final models.

    Chooses ``count`` of ``candidates`` in a seeded random order (``rng``), preferring speakers whose removal
    keeps every class of ``classes`` on the training side (``train_side``, a mask over the items) and, with
    ``speaker_sessions``, speakers from a session not used yet. Returns them sorted. The caller checks that
    the training side left still covers every class ([`_check_training_classes`]).

    Raises:
        ValueError: when ``count`` leaves no training speaker.
    """
    if count == 0:
        return []
    if count >= len(candidates):
        raise ValueError(
            f"num_validation_speakers={count} leaves no training speaker "
            f"(only {len(candidates)} speakers on the training side)"
        )
    order = [candidates[i] for i in rng.permutation(len(candidates))]
    remaining = Counter(labels[train_side].tolist())
    per_speaker = {s: Counter(labels[train_side & (speakers == s)].tolist()) for s in candidates}
    chosen: list[str] = []
    used_sessions: set[str] = set()
    while len(chosen) < count:
        best, best_rank = None, None
        for speaker in order:
            if speaker in chosen:
                continue
            keeps_classes = all(remaining[c] - per_speaker[speaker][c] > 0 for c in classes)
            new_session = speaker_sessions is None or speaker_sessions[speaker] not in used_sessions
            rank = (not keeps_classes, not new_session)
            if best_rank is None or rank < best_rank:
                best, best_rank = speaker, rank
            if rank == (False, False):
                break
        chosen.append(best)
        remaining -= per_speaker[best]
        if speaker_sessions is not None:
            used_sessions.add(speaker_sessions[best])
    return sorted(chosen)


def final_fold(
    speakers: Sequence,
    labels: Sequence[int],
    num_validation_speakers: int,
    seed: int,
    name: str = "final",
    id2label: Mapping | None = None,
) -> Fold:
    """The fold of the released models: every speaker trains but ``num_validation_speakers`` validation
    speakers (early stopping), drawn by [`pick_validation_speakers`] with the seed stream ``[seed, 999]``.

    Raises:
        ValueError: when the validation speakers leave no training speaker, or leave the training side
            without a class (naming the class), as for any fold of [`make_folds`].
    """
    labels = np.asarray(labels)
    speakers = _as_str_array(speakers, "speakers", len(labels))
    classes = sorted(int(c) for c in id2label) if id2label is not None else sorted(set(labels.tolist()))
    everyone = np.ones(len(labels), dtype=bool)
    validation_speakers = pick_validation_speakers(
        sorted(set(speakers.tolist())), num_validation_speakers, speakers, labels, everyone, classes,
        np.random.default_rng([seed, 999]),
    )  # fmt: skip
    validation = np.isin(speakers, validation_speakers)
    train = np.flatnonzero(~validation)
    _check_training_classes(name, labels, train, classes, id2label)
    return Fold(name, train, np.flatnonzero(validation), np.zeros(0, dtype=np.int64), [], validation_speakers)


def _check_training_classes(
    name: str, labels: np.ndarray, train: np.ndarray, classes: list[int], id2label
) -> None:
    present = set(labels[train].tolist())
    for label in classes:
        if label not in present:
            raise ValueError(
                f"fold {name!r}: the training side has no clip of class {_class_name(label, id2label)!r} "
                f"(label id {label}); use fewer validation speakers, another protocol, or drop the class"
            )


def _warn_single_clip_speakers(speakers: np.ndarray) -> None:
    counts = Counter(speakers.tolist())
    for speaker, count in sorted(counts.items()):
        if count == 1:
            warnings.warn(
                f"speaker {speaker!r} has a single clip; it is still used, but a fold that tests on it "
                "measures one utterance",
                stacklevel=3,
            )


def _speaker_groups(
    speakers: np.ndarray, protocol: str, sessions, k: int, seed: int
) -> list[tuple[str, list[str], str | None]]:
    """Return (fold name, test speakers, held-out session) for the protocols that hold out speakers."""
    unique = sorted(set(speakers.tolist()))
    if protocol == "loso":
        return [(f"speaker-{speaker}", [speaker], None) for speaker in unique]
    if protocol == "kfold":
        if not _is_int(k) or k < 2:
            raise ValueError(f"make_folds: k must be an integer >= 2, got {k!r}")
        if k > len(unique):
            raise ValueError(
                f"make_folds: k={k} folds need at least {k} speakers, the corpus has {len(unique)}"
            )
        shuffled = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
        # speaker i of the shuffled order goes to fold i % k: fold sizes differ by at most one speaker
        return [(f"kfold-{fold}", sorted(shuffled[fold::k]), None) for fold in range(k)]
    # loso_session: the held-out session's speakers are the test speakers
    groups = []
    for session in sorted(set(sessions.tolist())):
        groups.append((f"session-{session}", sorted(set(speakers[sessions == session].tolist())), session))
    return groups


def make_folds(
    speakers: Sequence,
    labels: Sequence[int],
    *,
    protocol: str = "loso",
    sessions: Sequence | None = None,
    k: int = 5,
    num_validation_speakers: int = 1,
    split: Sequence[str] | None = None,
    max_folds: int | None = None,
    seed: int = 0,
    id2label: Mapping | None = None,
    corpora: Sequence | None = None,
) -> list[Fold]:
    """Build speaker-independent folds over items given by their ``speakers`` and integer ``labels``.

    Args:
        speakers: one speaker id per item.
        labels: one integer class id per item.
        protocol: ``"loso"`` (leave one speaker out), ``"loso_session"`` (leave one session out),
            ``"kfold"`` (``k`` speaker-grouped folds with balanced speaker counts), ``"split"``
            (a given ``split`` column of train / validation / test per item) or ``"loco"`` (leave one corpus out:
            [`corpus_folds`]).
        sessions: one session id per item, required for ``"loso_session"``.
        k: number of folds for ``"kfold"``.
        num_validation_speakers: speakers moved from each fold's training side to its validation side
            (deterministic per fold and seed; for ``"split"`` only used when no item is "validation").
        split: one of train / validation / test (also valid, val, dev) per item, for ``"split"``.
        max_folds: keep only the first ``max_folds`` folds.
        seed: seeds the choice of validation speakers and the ``"kfold"`` speaker assignment.
        id2label: class names for error messages; its keys are also the classes every training side must hold
            (under ``"loco"``: the classes of the training corpora).
        corpora: the corpus of every item, for ``"loco"``.

    Returns:
        The folds, each with sorted index arrays and disjoint train / validation / test speaker sets.

    Raises:
        ValueError: for a bad argument, or a fold whose training side lacks a class (naming fold and class).
    """
    _check_arguments(protocol, num_validation_speakers, max_folds)
    speakers, labels = _checked_items(speakers, labels)
    classes = sorted(int(c) for c in id2label) if id2label is not None else sorted(set(labels.tolist()))
    _warn_single_clip_speakers(speakers)

    if protocol == "split":
        return _split_fold(speakers, labels, split, num_validation_speakers, seed, classes, id2label)
    if protocol == "loco":
        return corpus_folds(speakers, labels, corpora, num_validation_speakers, seed, id2label)[:max_folds]

    speaker_sessions = None
    if protocol == "loso_session":
        sessions, speaker_sessions = _sessions(sessions, speakers)
    elif len(set(speakers.tolist())) < 2:
        raise ValueError("make_folds: speaker-independent folds need at least two speakers")

    folds = []
    groups = _speaker_groups(speakers, protocol, sessions, k, seed)
    for fold_index, (name, test_speakers, test_session) in enumerate(groups[:max_folds]):
        test_mask = np.isin(speakers, test_speakers)
        if test_session is not None:
            # a test speaker's clips from other sessions are left out of the fold entirely
            test_mask &= sessions == test_session
        train_side = ~np.isin(speakers, test_speakers)
        candidates = sorted(set(speakers[train_side].tolist()))
        if not candidates:
            raise ValueError(f"fold {name!r}: no speaker is left for training")
        rng = np.random.default_rng([seed, fold_index])
        validation_speakers = pick_validation_speakers(
            candidates, num_validation_speakers, speakers, labels, train_side, classes, rng, speaker_sessions
        )
        validation_mask = np.isin(speakers, validation_speakers)
        train = np.flatnonzero(train_side & ~validation_mask)
        _check_training_classes(name, labels, train, classes, id2label)
        folds.append(
            Fold(name, train, np.flatnonzero(validation_mask), np.flatnonzero(test_mask), list(test_speakers),
                 validation_speakers)
        )  # fmt: skip
    return folds


def corpus_folds(
    speakers: np.ndarray,
    labels: np.ndarray,
    corpora: Sequence | None,
    num_validation_speakers: int,
    seed: int,
    id2label: Mapping | None = None,
) -> list[Fold]:
    """Leave one corpus out: fold `corpus-<name>` (one per corpus, sorted by name) trains on the other corpora's
    speakers, but `num_validation_speakers` validation speakers drawn from them as any fold's are, and tests on the
    held-out corpus' clips of the classes the training corpora have (the others are left out, with a warning).

    Raises:
        ValueError: without `corpora` or with fewer than two, or when a held-out corpus has no class the training
            corpora have (naming its classes and theirs).
    """
    if corpora is None:
        raise ValueError("make_folds: protocol 'loco' needs corpora (the corpus of every item)")
    corpora = _as_str_array(corpora, "corpora", len(labels))
    names = sorted(set(corpora.tolist()))
    if len(names) < 2:
        raise ValueError(f"make_folds: protocol 'loco' needs at least two corpora, got {names}")
    folds = []
    for fold_index, name in enumerate(names):
        fold_name, held_out, train_side = f"corpus-{name}", corpora == name, corpora != name
        classes = sorted(set(labels[train_side].tolist()))
        test = held_out & np.isin(labels, classes)
        own = sorted(set(labels[held_out].tolist()))
        if not test.any():
            raise ValueError(
                f"fold {fold_name!r}: the held-out corpus {name!r} has no class the training corpora have (its "
                f"classes: {[_class_name(c, id2label) for c in own]}; theirs: "
                f"{[_class_name(c, id2label) for c in classes]}); map its labels onto theirs with its label_map"
            )
        left_out = sorted(set(own) - set(classes))
        if left_out:
            warnings.warn(
                f"fold {fold_name!r}: {int((held_out & ~test).sum())} clip(s) of {name!r} of classes the training "
                f"corpora lack ({', '.join(_class_name(c, id2label) for c in left_out)}) are left out of the test",
                stacklevel=3,
            )
        validation_speakers = pick_validation_speakers(
            sorted(set(speakers[train_side].tolist())), num_validation_speakers, speakers, labels, train_side,
            classes, np.random.default_rng([seed, fold_index]),
        )  # fmt: skip
        validation = train_side & np.isin(speakers, validation_speakers)
        train = np.flatnonzero(train_side & ~validation)
        _check_training_classes(fold_name, labels, train, classes, id2label)
        folds.append(
            Fold(fold_name, train, np.flatnonzero(validation), np.flatnonzero(test),
                 sorted(set(speakers[test].tolist())), validation_speakers)
        )  # fmt: skip
    return folds


def _checked_items(speakers: Sequence, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Speakers (strings, none missing) and integer labels as arrays of the same length."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError("make_folds: labels must be a non-empty 1-d sequence of class ids")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"make_folds: labels must be integer class ids, got dtype {labels.dtype}")
    speakers = _as_str_array(speakers, "speakers", len(labels))
    missing = np.flatnonzero(np.asarray([s is None or s == "" for s in speakers]))
    if len(missing):
        raise ValueError(
            f"make_folds: item {int(missing[0])} has no speaker; speaker-independent folds need one"
        )
    return speakers, labels


def _check_arguments(protocol: str, num_validation_speakers: object, max_folds: object) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"make_folds: protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not _is_int(num_validation_speakers) or num_validation_speakers < 0:
        raise ValueError(
            f"make_folds: num_validation_speakers must be an integer >= 0, got {num_validation_speakers!r}"
        )
    if max_folds is not None and (not _is_int(max_folds) or max_folds < 1):
        raise ValueError(f"make_folds: max_folds must be a positive integer or None, got {max_folds!r}")


def _sessions(sessions: Sequence | None, speakers: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    """The session of each item for protocol ``loso_session``, and each speaker's most frequent session."""
    if sessions is None:
        raise ValueError("make_folds: protocol 'loso_session' needs sessions (one per item)")
    sessions = _as_str_array(sessions, "sessions", len(speakers))
    missing = np.flatnonzero(np.asarray([s is None or s == "" for s in sessions]))
    if len(missing):
        raise ValueError(f"make_folds: item {int(missing[0])} has no session (protocol 'loso_session')")
    if len(set(sessions.tolist())) < 2:
        raise ValueError("make_folds: protocol 'loso_session' needs at least two sessions")
    # a speaker recorded in several sessions is filed under its most frequent one for preferences only
    speaker_sessions = {
        s: Counter(sessions[speakers == s].tolist()).most_common(1)[0][0] for s in set(speakers.tolist())
    }
    return sessions, speaker_sessions


def _split_fold(speakers, labels, split, num_validation_speakers, seed, classes, id2label) -> list[Fold]:
    if split is None:
        raise ValueError("make_folds: protocol 'split' needs split (train / validation / test per item)")
    raw = _as_str_array(split, "split", len(labels))
    names = []
    for index, value in enumerate(raw):
        name = canonical_split(value)
        if name is None:
            raise ValueError(
                f"make_folds: item {index} has split {value!r}; expected one of train, validation, test "
                "(or training, valid, val, dev, testing)"
            )
        names.append(name)
    names = np.asarray(names)
    if not (names == "test").any():
        raise ValueError("make_folds: protocol 'split' found no 'test' item")
    test_speakers = sorted(set(speakers[names == "test"].tolist()))
    if (names == "validation").any():
        validation_speakers = sorted(set(speakers[names == "validation"].tolist()))
    else:
        train_side = names == "train"
        candidates = sorted(set(speakers[train_side].tolist()) - set(test_speakers))
        rng = np.random.default_rng([seed, 0])
        validation_speakers = pick_validation_speakers(
            candidates, num_validation_speakers, speakers, labels, train_side, classes, rng, None
        )
        names = np.where(train_side & np.isin(speakers, validation_speakers), "validation", names)
    train_speakers = set(speakers[names == "train"].tolist())
    overlap = sorted(
        (train_speakers & set(test_speakers))
        | (train_speakers & set(validation_speakers))
        | (set(validation_speakers) & set(test_speakers))
    )
    if overlap:
        warnings.warn(
            f"the given split is not speaker-independent: speakers {overlap} appear in more than one part",
            stacklevel=3,
        )
    train = np.flatnonzero(names == "train")
    _check_training_classes("split", labels, train, classes, id2label)
    return [
        Fold(
            name="split",
            train=train,
            validation=np.flatnonzero(names == "validation"),
            test=np.flatnonzero(names == "test"),
            test_speakers=test_speakers,
            validation_speakers=validation_speakers,
        )
    ]
