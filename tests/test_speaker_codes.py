"""Speaker-aware generation (training/speaker_codes.py): speaker codes, stage 3's voices drawn from a pool, the
test speaker's voice only where the fold reads their clips, and the study's two variants on RAVDESS clips."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_generation import CLASSES, arguments, clustered, fold_trainer, tiny_config
from test_study import StageCounter, cache_dir, manifest, read_rows, study_args  # noqa: F401 (fixtures)

from modeling_mise import MiseGeneratorModel
from training.aligner import encode_audio
from training.classifier import Augmenter
from training.fold import FoldTrainer
from training.speaker_codes import SpeakerCodes, with_speaker_codes
from training.study import main
from training.study_variants import VARIANTS


def _speaker_trainer(test_speaker_clips: bool) -> tuple[FoldTrainer, np.ndarray]:
    trainer, _ = fold_trainer("mi")
    speakers = np.repeat(np.arange(6), 24)
    trainer.data = dataclasses.replace(trainer.data, speakers=speakers, test_speaker_clips=test_speaker_clips)
    return trainer, speakers


def test_a_speaker_code_is_the_standardised_mean_of_the_speaker_s_rows():
    z = torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    speakers = np.repeat(["a", "b", "c"], 10)
    codes = SpeakerCodes(z, speakers)
    per_speaker = codes.of_speakers(z, speakers)
    means = torch.stack([z[speakers == s].mean(0) for s in ("a", "b", "c")])
    scale = (means - z.mean(0)).pow(2).sum(1).mean().sqrt()
    torch.testing.assert_close(per_speaker, (means - z.mean(0)) / scale)
    assert per_speaker.pow(2).sum(1).mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(codes.of_rows(z, speakers), per_speaker[[0] * 10 + [1] * 10 + [2] * 10])
    torch.testing.assert_close(with_speaker_codes(None, per_speaker), per_speaker)
    assert with_speaker_codes(torch.zeros(3, 2), per_speaker).shape == (3, 7)


def test_stage_3_draws_the_voice_of_a_generated_row_from_the_speaker_pool(monkeypatch):
    features, labels, codes = clustered()
    torch.manual_seed(0)
    model = MiseGeneratorModel(tiny_config(text_code_dim=8 + 3)).eval()
    codes = with_speaker_codes(codes, torch.randn(len(labels), 3, generator=torch.Generator().manual_seed(2)))
    asked, generate = [], MiseGeneratorModel.generate
    monkeypatch.setattr(
        MiseGeneratorModel,
        "generate",
        lambda self, **kw: asked.append(kw["text_codes"]) or generate(self, **kw),
    )
    extra = []
    for pool in (None, torch.zeros(1, 3), torch.full((1, 3), 5.0)):
        augmenter = Augmenter("mise", features, labels, CLASSES, arguments(), model, codes, pool)
        rows, row_labels = augmenter.rows(torch.Generator().manual_seed(3))
        extra.append(rows[len(labels) :])
        assert torch.equal(row_labels[: len(labels)], labels)
    # the same stream, three voices: the rows' own speakers', then the one code of each pool
    assert not torch.allclose(extra[0], extra[1]) and not torch.allclose(extra[1], extra[2])
    assert torch.equal(asked[2][:, -3:], torch.full((len(asked[2]), 3), 5.0))
    assert torch.equal(asked[0][:, :8], asked[2][:, :8])  # the text part is drawn as without a pool


@pytest.mark.parametrize("reads_test_clips", [False, True])
def test_speaker_aware_generation_asks_for_the_test_speaker_only_where_the_fold_reads_their_clips(
    reads_test_clips,
):
    trainer, speakers = _speaker_trainer(reads_test_clips)
    space = trainer.space(VARIANTS["mise"])
    by_training = trainer.generator(VARIANTS["mise_speaker"], space)
    by_test = trainer.generator(VARIANTS["mise_test_speaker"], space)
    assert by_test.model is by_training.model  # one generator, two pools
    test, train = trainer.fold.test, space.train
    # G reads [c_s] (no transcripts here): every training row's code is its speaker's
    codes = SpeakerCodes(space.z_train, speakers[train])
    torch.testing.assert_close(by_training.codes_train, codes.of_rows(space.z_train, speakers[train]))
    assert by_training.model.config.text_code_dim == space.z_train.shape[1]
    training_pool = codes.of_speakers(space.z_train, speakers[train])
    torch.testing.assert_close(by_training.speaker_pool, training_pool)
    if reads_test_clips:
        z_test = encode_audio(space.aligner, trainer.data.audio[test])
        torch.testing.assert_close(by_test.speaker_pool, codes.of_speakers(z_test, speakers[test]))
    else:
        torch.testing.assert_close(by_test.speaker_pool, training_pool)
    # the training pool never reads the test rows: changing them changes nothing
    other, _ = _speaker_trainer(reads_test_clips)
    other.data = dataclasses.replace(other.data, audio=other.data.audio.clone())
    other.data.audio[test] += 3.0
    moved = other.generator(VARIANTS["mise_speaker"], other.space(VARIANTS["mise"]))
    torch.testing.assert_close(moved.speaker_pool, training_pool)
    _, summary = trainer.classifier(VARIANTS["mise_test_speaker"], space, by_test)
    assert summary["generated_rows_per_epoch"] > 0


def test_speaker_aware_variants_share_one_generator_of_their_own():
    keys = {name: VARIANTS[name].generator_key for name in ("mise", "mise_speaker", "mise_test_speaker")}
    assert keys["mise_speaker"] == keys["mise_test_speaker"] != keys["mise"]


def test_the_study_trains_one_speaker_aware_generator_for_both_voices_on_real_clips(
    manifest,  # noqa: F811
    cache_dir,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    counter = StageCounter(monkeypatch)
    variants = ["none", "mise_speaker", "mise_test_speaker"]
    extra = ["--seeds", "0", "--variants", *variants]
    per_speaker = main(
        study_args(manifest, tmp_path / "speaker", cache_dir, *extra, "--speaker_normalization", "true")
    )
    units = 2  # folds x seeds
    assert counter.counts["train_generator"] == units
    assert set(per_speaker["variants"]) == set(variants)
    rows = read_rows(tmp_path / "speaker" / "study.csv")
    assert {row["variant"] for row in rows} == set(variants) and len(rows) == len(variants) * units
    # with global statistics the fold does not read its test speaker's clips: both variants ask for the same voices
    main(study_args(manifest, tmp_path / "global", cache_dir, *extra, "--speaker_normalization", "false"))
    by_variant = {}
    for row in read_rows(tmp_path / "global" / "study.csv"):
        by_variant.setdefault(row["variant"], []).append(row["uar"])
    assert by_variant["mise_speaker"] == by_variant["mise_test_speaker"]
