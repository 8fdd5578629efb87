"""Two real ranks on CPU (gloo): `accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU=true.

The two-rank run extracts the features (misses sharded across the ranks), then each rank trains whole folds
(fold i on rank i mod 2) and the main rank gathers them; the per-speaker final pair trains on the second rank
while the main rank trains the global final models. Every fold and every released weight must equal the
one-process run's exactly.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from training.train import main

REPO = Path(__file__).resolve().parents[1]
SPEAKERS = ("Actor_01", "Actor_02", "Actor_03", "Actor_04", "Actor_05", "Actor_06")
ARGS = [
    "--max_folds", "2", "--num_validation_speakers", "1", "--text_encoder", "none",
    "--projection_dim", "16", "--aligner_hidden_sizes", "32", "--noise_dim", "8",
    "--generator_hidden_sizes", "32", "--discriminator_hidden_sizes", "32", "--classifier_hidden_sizes", "32",
    "--aligner_dropout", "0", "--classifier_dropout", "0", "--discriminator_dropout", "0",
    "--generator_mixup_alpha", "0", "--text_code_dropout", "0",
    "--aligner_epochs", "30", "--generator_epochs", "4", "--generator_eval_every", "2", "--classifier_epochs", "30",
    "--early_stopping_patience", "0", "--checkpoint_every", "10", "--aligner_learning_rate", "3e-3",
    "--aligner_batch_size", "32", "--generator_batch_size", "32", "--classifier_batch_size", "32",
    "--report_to", "none", "--seed", "11",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_match_one_process(ravdess_rows, tmp_path):
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "speaker", "emotion"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(row for row in ravdess_rows if row["speaker"] in SPEAKERS)
    cache = tmp_path / "cache"
    common = ["--dataset", str(manifest), "--cache_dir", str(cache), *ARGS]

    env = dict(os.environ, ACCELERATE_USE_CPU="true", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for _attempt in range(2):  # a port taken between picking and binding it: try once more with another
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()),
            "training/train.py", *common, "--output_dir", str(tmp_path / "two"), "--overwrite_output_dir", "true",
        ]  # fmt: skip
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode == 0 or "address already in use" not in result.stderr.lower():
            break
    assert result.returncode == 0, result.stderr[-4000:]
    two = tmp_path / "two"
    info = json.loads((two / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert info["feature_cache"]["audio"] == {"hits": 0, "misses": 180}  # computed half by each rank
    assert len(list(cache.rglob("*.safetensors"))) == 180

    one = main([*common, "--output_dir", str(tmp_path / "one")])
    assert (
        json.loads((tmp_path / "one" / "run_info.json").read_text())["feature_cache"]["audio"]["hits"] == 180
    )
    summary_two = json.loads((two / "summary.json").read_text())
    assert summary_two["world_size"] == 2 and one["world_size"] == 1
    assert summary_two["uar_pooled"] == one["uar_pooled"]
    for fold in ("speaker-Actor_01", "speaker-Actor_02"):  # one fold trained on each rank
        a = json.loads((tmp_path / "one" / "folds" / fold / "metrics.json").read_text())
        b = json.loads((two / "folds" / fold / "metrics.json").read_text())
        assert a["y_true"] == b["y_true"] and a["y_pred"] == b["y_pred"], fold
        assert a["aligner_uar"] == b["aligner_uar"], fold
        assert a["stages"]["generator"]["best_score"] == b["stages"]["generator"]["best_score"], fold
    released = "models/mise-audio-classifier/model.safetensors"
    weights_one, weights_two = load_file(tmp_path / "one" / released), load_file(two / released)
    assert any(name.startswith("speaker_aligner.") for name in weights_two)  # the pair from the second rank
    assert weights_one.keys() == weights_two.keys()
    assert all(torch.equal(weights_one[name], weights_two[name]) for name in weights_one)
