"""Feature cache with real openSMILE features of RAVDESS clips, and sharding across two real processes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from mise.cache import FeatureCache, spec_hash
from mise.data import load_corpus
from modeling_mise.encoders import load_audio_encoder

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder():
    return load_audio_encoder("opensmile/eGeMAPSv02")


@pytest.fixture
def clips(tmp_path, ravdess_rows) -> Path:
    """Six RAVDESS clips (two speakers) copied into tmp_path, with a manifest."""
    rows = ravdess_rows[:3] + ravdess_rows[30:33]
    folder = tmp_path / "clips"
    folder.mkdir()
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "emotion", "speaker"])
        for row in rows:
            name = Path(row["path"]).name
            shutil.copy(row["path"], folder / name)
            writer.writerow([name, row["emotion"], row["speaker"]])
    return folder / "manifest.csv"


class Encoding:
    """Real openSMILE features of a corpus's clips, recording which indices were computed."""

    def __init__(self, encoder, manifest: Path):
        self.encoder = encoder
        self.corpus = load_corpus(manifest)
        self.calls: list[list[int]] = []

    def __call__(self, indices: list[int]) -> torch.Tensor:
        self.calls.append(list(indices))
        waveforms = [self.corpus.items[i].read(self.encoder.sampling_rate) for i in indices]
        return self.encoder.encode(waveforms, show_progress=False)

    @property
    def computed(self) -> list[int]:
        return [index for call in self.calls for index in call]


def test_hits_misses_and_changes(tmp_path, clips, encoder):
    cache_dir = tmp_path / "cache"
    spec = encoder.spec()

    first = Encoding(encoder, clips)
    cache = FeatureCache(cache_dir, spec)
    features = cache.get_or_compute(first.corpus.fingerprints(), first, desc="eGeMAPS")
    assert features.shape == (6, 88) and features.dtype == torch.float32
    assert cache.last_stats == {"hits": 0, "misses": 6}
    assert first.computed == list(range(6))
    entries = sorted((cache_dir / spec_hash(spec)).glob("*.safetensors"))
    assert len(entries) == 6
    assert json.loads((cache_dir / spec_hash(spec) / "spec.json").read_text()) == spec

    second = Encoding(encoder, clips)
    cache = FeatureCache(cache_dir, spec)
    again = cache.get_or_compute(second.corpus.fingerprints(), second)
    assert cache.last_stats == {"hits": 6, "misses": 0} and second.calls == []
    assert torch.equal(again, features)

    # change the samples of clip 4: only its fingerprint changes, only it is recomputed
    changed = Path(second.corpus.items[4].path)
    waveform, rate = soundfile.read(changed, dtype="int16")
    soundfile.write(changed, (waveform // 2).astype(np.int16), rate)
    third = Encoding(encoder, clips)
    assert third.corpus.fingerprints()[4] != second.corpus.fingerprints()[4]
    updated = cache.get_or_compute(third.corpus.fingerprints(), third)
    assert cache.last_stats == {"hits": 5, "misses": 1} and third.computed == [4]
    keep = [0, 1, 2, 3, 5]
    assert torch.equal(updated[keep], features[keep]) and not torch.equal(updated[4], features[4])

    # another encoder spec is another key: everything is recomputed, in its own folder
    other_spec = {**spec, "pooling": "functionals-v2"}
    fourth = Encoding(encoder, clips)
    other = FeatureCache(cache_dir, other_spec)
    assert other.directory != cache.directory
    other.get_or_compute(fourth.corpus.fingerprints(), fourth)
    assert other.last_stats == {"hits": 0, "misses": 6} and fourth.computed == list(range(6))


def test_corrupt_entry_is_recomputed(tmp_path, clips, encoder):
    cache = FeatureCache(tmp_path / "cache", encoder.spec())
    first = Encoding(encoder, clips)
    features = cache.get_or_compute(first.corpus.fingerprints(), first)

    truncated = cache.entry_path(first.corpus.fingerprints()[2])
    truncated.write_bytes(truncated.read_bytes()[:40])
    garbage = cache.entry_path(first.corpus.fingerprints()[5])
    garbage.write_bytes(b"\x80\x04\x95 not safetensors, never unpickled")

    second = Encoding(encoder, clips)
    again = cache.get_or_compute(second.corpus.fingerprints(), second)
    assert cache.last_stats == {"hits": 4, "misses": 2} and second.computed == [2, 5]
    torch.testing.assert_close(again, features)
    assert cache.load(first.corpus.fingerprints()[2]) is not None  # rewritten whole
    assert not list(cache.directory.glob("*.tmp"))


def test_duplicates_bad_output_and_bad_arguments(tmp_path):
    cache = FeatureCache(tmp_path / "cache", {"name": "toy", "dim": 2})
    calls = []

    def compute(indices):
        calls.append(list(indices))
        return np.asarray([[float(i), float(i) + 0.5] for i in indices], dtype=np.float32)

    out = cache.get_or_compute(["a", "b", "a"], compute)
    assert calls == [[0, 1]] and cache.last_stats == {"hits": 0, "misses": 3}
    assert torch.equal(out, torch.tensor([[0.0, 0.5], [1.0, 1.5], [0.0, 0.5]]))

    with pytest.raises(ValueError, match=r"returned shape \(1, 2\), expected \(2, D\)"):
        cache.get_or_compute(["c", "d"], lambda indices: torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"fingerprints\[1\]"):
        cache.get_or_compute(["a", ""], compute)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        FeatureCache(tmp_path / "cache", {"name": object()})


def test_verdicts_are_kept_with_the_features(tmp_path):
    """Each entry keeps the input policy its item was judged under and, for a rejected item, the reason."""
    cache = FeatureCache(tmp_path / "cache", {"name": "toy", "dim": 2})
    policy = {"sampling_rate": 16000, "min_seconds": 0.25, "silence_dbfs": -60.0}

    def compute(indices):
        return torch.tensor([[float(i), 1.0] for i in indices])

    features = cache.get_or_compute(["a", "b"], compute, policy=policy)
    cache.store_rejection("c", "too short (0.10 s < 0.25 s)", policy)
    cache.store("d", torch.tensor([4.0, 1.0]))  # features from a run that kept no verdict
    verdicts = cache.verdicts(["a", "b", "c", "d", "e", "a"], policy)
    assert verdicts == {"a": None, "b": None, "c": "too short (0.10 s < 0.25 s)"}
    assert cache.verdicts(["a", "c"], {**policy, "min_seconds": 0.5}) == {}  # another policy judges again
    assert cache.load("c") is None  # a rejection holds no features

    def unexpected(indices):
        raise AssertionError(f"recomputed {indices}")

    # an entry found without the verdict gets it, its features untouched; found entries are not recomputed
    again = cache.get_or_compute(["a", "b", "d"], unexpected, policy=policy)
    assert torch.equal(again[:2], features) and torch.equal(again[2], torch.tensor([4.0, 1.0]))
    assert cache.verdicts(["d"], policy) == {"d": None}
    # a rejected item judged usable under another policy is computed and stored with that policy's verdict
    lenient = {**policy, "min_seconds": 0.0}
    cache.get_or_compute(["c"], compute, policy=lenient)
    assert cache.last_stats == {"hits": 0, "misses": 1}
    assert cache.verdicts(["c"], lenient) == {"c": None} and cache.verdicts(["c"], policy) == {}


SHARDED_SCRIPT = """
import json, sys
import torch
from accelerate import Accelerator
from mise.cache import FeatureCache

accelerator = Accelerator(cpu=True)
assert accelerator.num_processes == 2, accelerator.num_processes
cache = FeatureCache(sys.argv[1], {"name": "toy", "dim": 3})
fingerprints = [f"clip{i:02d}" for i in range(11)]
computed = []

def compute(indices):
    computed.extend(indices)
    return torch.tensor([[i, 2.0 * i, 3.0 * i] for i in indices])

features = cache.get_or_compute(fingerprints, compute, accelerator=accelerator)
with open(f"{sys.argv[2]}/rank{accelerator.process_index}.json", "w") as handle:
    json.dump({"computed": computed, "features": features.tolist(), "stats": cache.last_stats}, handle)
"""


def test_misses_are_sharded_across_processes(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    cache_dir = tmp_path / "cache"
    FeatureCache(cache_dir, {"name": "toy", "dim": 3}).store("clip03", torch.tensor([3.0, 6.0, 9.0]))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*command, str(script), str(cache_dir), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    misses = [i for i in range(11) if i != 3]
    # each process computed its share misses[rank::2], and nothing twice
    assert ranks[0]["computed"] == misses[0::2] and ranks[1]["computed"] == misses[1::2]
    expected = [[i, 2.0 * i, 3.0 * i] for i in range(11)]
    for rank in ranks:
        assert rank["features"] == expected
        assert rank["stats"] == {"hits": 1, "misses": 10}
