"""Speaker-independent folds on the real RAVDESS manifest (24 actors, 8 emotions)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mise.folds import final_fold, make_folds


@pytest.fixture(scope="module")
def ravdess(ravdess_rows):
    names = sorted({row["emotion"] for row in ravdess_rows})
    label2id = {name: index for index, name in enumerate(names)}
    speakers = np.asarray([row["speaker"] for row in ravdess_rows], dtype=object)
    labels = np.asarray([label2id[row["emotion"]] for row in ravdess_rows])
    return speakers, labels, dict(enumerate(names))


def _check_partition(fold, speakers, labels, covers_all=True):
    train_speakers = set(speakers[fold.train])
    validation_speakers = set(speakers[fold.validation])
    test_speakers = set(speakers[fold.test])
    assert train_speakers and test_speakers
    assert not train_speakers & validation_speakers
    assert not train_speakers & test_speakers
    assert not validation_speakers & test_speakers
    assert test_speakers == set(fold.test_speakers)
    assert validation_speakers == set(fold.validation_speakers)
    assert set(labels[fold.train]) == set(labels)
    indices = np.concatenate([fold.train, fold.validation, fold.test])
    assert len(indices) == len(set(indices.tolist()))
    if covers_all:
        assert sorted(indices.tolist()) == list(range(len(labels)))


def test_loso_on_ravdess(ravdess):
    speakers, labels, id2label = ravdess
    folds = make_folds(speakers, labels, id2label=id2label)
    assert len(folds) == 24
    for fold in folds:
        _check_partition(fold, speakers, labels)
        assert len(fold.test_speakers) == 1 and len(fold.validation_speakers) == 1
        assert fold.validation_speakers != fold.test_speakers
        assert len(fold.test) == 30
    # every speaker is tested exactly once
    assert sorted(s for fold in folds for s in fold.test_speakers) == sorted(set(speakers))
    # validation speakers are not all the same one
    assert len({fold.validation_speakers[0] for fold in folds}) > 5


def test_loso_is_deterministic_per_seed(ravdess):
    speakers, labels, _ = ravdess
    first = make_folds(speakers, labels, seed=3, num_validation_speakers=2)
    again = make_folds(speakers, labels, seed=3, num_validation_speakers=2)
    other = make_folds(speakers, labels, seed=4, num_validation_speakers=2)
    for a, b in zip(first, again, strict=True):
        assert a.name == b.name and a.validation_speakers == b.validation_speakers
        np.testing.assert_array_equal(a.train, b.train)
        np.testing.assert_array_equal(a.validation, b.validation)
        np.testing.assert_array_equal(a.test, b.test)
    assert [f.validation_speakers for f in first] != [f.validation_speakers for f in other]
    assert all(len(fold.validation_speakers) == 2 for fold in first)


def test_max_folds_and_no_validation(ravdess):
    speakers, labels, _ = ravdess
    folds = make_folds(speakers, labels, max_folds=3, num_validation_speakers=0)
    assert [fold.name for fold in folds] == ["speaker-Actor_01", "speaker-Actor_02", "speaker-Actor_03"]
    for fold in folds:
        assert len(fold.validation) == 0 and fold.validation_speakers == []
        assert len(fold.train) == 690


def test_loso_session(ravdess):
    speakers, labels, _ = ravdess
    # six sessions of four actors each, IEMOCAP style
    sessions = np.asarray([f"S{(int(s.split('_')[1]) - 1) // 4 + 1}" for s in speakers], dtype=object)
    folds = make_folds(
        speakers, labels, protocol="loso_session", sessions=sessions, num_validation_speakers=2
    )
    assert [fold.name for fold in folds] == [f"session-S{i}" for i in range(1, 7)]
    for fold in folds:
        _check_partition(fold, speakers, labels)
        assert len(fold.test_speakers) == 4 and set(sessions[fold.test]) == {fold.name.split("-")[1]}
        validation_sessions = [sessions[speakers == s][0] for s in fold.validation_speakers]
        # validation speakers come from other sessions, and from two different ones when possible
        assert fold.name.split("-")[1] not in validation_sessions
        assert len(set(validation_sessions)) == 2
    with pytest.raises(ValueError, match="needs sessions"):
        make_folds(speakers, labels, protocol="loso_session")


def test_kfold_is_balanced_and_deterministic(ravdess):
    speakers, labels, _ = ravdess
    folds = make_folds(speakers, labels, protocol="kfold", k=5, seed=7)
    assert len(folds) == 5
    assert sorted(len(fold.test_speakers) for fold in folds) == [4, 5, 5, 5, 5]
    assert sorted(s for fold in folds for s in fold.test_speakers) == sorted(set(speakers))
    for fold in folds:
        _check_partition(fold, speakers, labels)
    again = make_folds(speakers, labels, protocol="kfold", k=5, seed=7)
    assert [f.test_speakers for f in folds] == [f.test_speakers for f in again]
    other = make_folds(speakers, labels, protocol="kfold", k=5, seed=8)
    assert [f.test_speakers for f in folds] != [f.test_speakers for f in other]
    with pytest.raises(ValueError, match="k=30"):
        make_folds(speakers, labels, protocol="kfold", k=30)


def test_given_split(ravdess):
    speakers, labels, _ = ravdess
    number = np.asarray([int(s.split("_")[1]) for s in speakers])
    split = np.where(number <= 18, "train", np.where(number <= 20, "dev", "test"))
    (fold,) = make_folds(speakers, labels, protocol="split", split=split)
    assert fold.name == "split"
    assert fold.test_speakers == ["Actor_21", "Actor_22", "Actor_23", "Actor_24"]
    assert fold.validation_speakers == ["Actor_19", "Actor_20"]
    _check_partition(fold, speakers, labels)

    # no validation part given: speakers are taken from the training side
    split_no_validation = np.where(number <= 20, "train", "test")
    (fold,) = make_folds(
        speakers, labels, protocol="split", split=split_no_validation, num_validation_speakers=2
    )
    assert len(fold.validation_speakers) == 2
    assert not set(fold.validation_speakers) & set(fold.test_speakers)
    _check_partition(fold, speakers, labels)

    bad = split.astype(object)
    bad[5] = "holdout"
    with pytest.raises(ValueError, match="item 5 has split 'holdout'"):
        make_folds(speakers, labels, protocol="split", split=bad)

    leaky = split.copy()
    leaky[0] = "test"  # one Actor_01 clip in test while the rest trains
    with pytest.warns(UserWarning, match="Actor_01"):
        make_folds(speakers, labels, protocol="split", split=leaky)


def test_training_side_without_a_class_is_an_error(ravdess):
    speakers, labels, id2label = ravdess
    neutral = next(i for i, name in id2label.items() if name == "neutral")
    keep = (labels != neutral) | (speakers == "Actor_05")
    with pytest.raises(ValueError, match=r"fold 'speaker-Actor_05'.*'neutral'"):
        make_folds(speakers[keep], labels[keep], id2label=id2label)


def test_validation_choice_keeps_every_class_in_training(ravdess):
    speakers, labels, id2label = ravdess
    neutral = next(i for i, name in id2label.items() if name == "neutral")
    # only two actors keep their neutral clips: neither fold may move the other one to validation
    keep = (labels != neutral) | np.isin(speakers, ["Actor_05", "Actor_06"])
    kept_speakers, kept_labels = speakers[keep], labels[keep]
    for seed in range(3):
        folds = make_folds(
            kept_speakers, kept_labels, id2label=id2label, seed=seed, num_validation_speakers=8
        )
        folds = {fold.name: fold for fold in folds}
        assert "Actor_06" not in folds["speaker-Actor_05"].validation_speakers
        assert "Actor_05" not in folds["speaker-Actor_06"].validation_speakers
        for fold in folds.values():
            _check_partition(fold, kept_speakers, kept_labels)


def test_final_fold_draws_validation_speakers_as_the_folds_do(ravdess):
    """The released models' fold: every speaker trains but the validation speakers, drawn by the folds' own
    algorithm (keep every class on the training side); an impossible draw is an error, not a silent one."""
    speakers, labels, id2label = ravdess
    fold = final_fold(speakers, labels, 2, seed=42, id2label=id2label)
    assert fold.name == "final" and len(fold.test) == 0 and fold.test_speakers == []
    assert len(fold.validation_speakers) == 2 and set(speakers[fold.validation]) == set(
        fold.validation_speakers
    )
    assert sorted(np.concatenate([fold.train, fold.validation]).tolist()) == list(range(len(labels)))
    assert final_fold(speakers, labels, 2, seed=42).validation_speakers == fold.validation_speakers
    assert {tuple(final_fold(speakers, labels, 2, seed=s).validation_speakers) for s in range(5)} != {
        tuple(fold.validation_speakers)
    }
    neutral = next(i for i, name in id2label.items() if name == "neutral")
    # only Actor_05 keeps its neutral clips: it is never drawn, whatever the seed
    keep = (labels != neutral) | (speakers == "Actor_05")
    for seed in range(5):
        drawn = final_fold(speakers[keep], labels[keep], 12, seed, id2label=id2label).validation_speakers
        assert len(drawn) == 12 and "Actor_05" not in drawn
    # asking for every speaker leaves none to train; a corpus whose training side lacks a class is refused
    only = (labels != neutral) | (speakers == "Actor_05")
    with pytest.raises(ValueError, match="leaves no training speaker"):
        final_fold(speakers[only], labels[only], 24, 0, id2label=id2label)
    no_neutral = labels != neutral
    with pytest.raises(ValueError, match=r"fold 'final'.*'neutral'"):
        final_fold(speakers[no_neutral], labels[no_neutral], 1, 0, id2label=id2label)


def test_single_clip_speaker_warns(ravdess):
    speakers, labels, _ = ravdess
    keep = (speakers != "Actor_09") | (np.arange(len(speakers)) == np.flatnonzero(speakers == "Actor_09")[0])
    with pytest.warns(UserWarning, match="'Actor_09' has a single clip"):
        folds = make_folds(speakers[keep], labels[keep])
    assert len(folds) == 24
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_folds(speakers, labels)


def test_bad_arguments(ravdess):
    speakers, labels, _ = ravdess
    with pytest.raises(ValueError, match="protocol"):
        make_folds(speakers, labels, protocol="random")
    with pytest.raises(ValueError, match="speakers has 3 entries"):
        make_folds(speakers[:3], labels)
    with pytest.raises(ValueError, match="leaves no training speaker"):
        make_folds(speakers, labels, num_validation_speakers=23)
    with pytest.raises(ValueError, match="item 2 has no speaker"):
        make_folds(["a", "b", "", "c"], [0, 1, 0, 1])
