"""The `mise` command's model argument: a mistyped local folder fails at once, an unreachable Hub id in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mise.cli import resolve_model_source


def run_mise(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "mise.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_resolve_model_source(tmp_path, monkeypatch):
    (tmp_path / "runs" / "ravdess").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source("runs/ravdess") == "runs/ravdess"
    assert resolve_model_source("your-org/mise-classifier") == "your-org/mise-classifier"  # a Hub id
    assert resolve_model_source("~") == str(Path.home())
    for local in ("runs/nope", "./nope", "../nope", "/nope/model", "~/nope-mise-model", "runs/ravdess/nope/"):
        with pytest.raises(ValueError, match=f"^{local}: no such folder$"):
            resolve_model_source(local)


def test_mistyped_local_folder_fails_at_once(tmp_path, clips):
    (tmp_path / "runs").mkdir()
    start = time.perf_counter()
    result = run_mise("classify", "runs/nope", str(clips["good"]), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == "mise classify: runs/nope: no such folder"
    assert time.perf_counter() - start < 60  # no Hub retries (about 53 s before)


def test_unreachable_hub_id_is_one_line(clips):
    result = run_mise("classify", "your-org/no-such-mise-model", str(clips["good"]))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("mise classify: your-org/no-such-mise-model: could not load this Hub id")


def test_classify_prints_scores_and_notices(space_model, clips):
    result = run_mise("classify", str(space_model), str(clips["good"]), "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    (output,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert output["path"] == str(clips["good"]) and output["notices"] == [] and output["error"] is None
    assert output["label"] == max(output["scores"], key=output["scores"].get)
