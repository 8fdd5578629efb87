"""The one error convention of `training/train.py`, `training/study.py` and `mise` (mise/console.py): a usage or
config error exits 2 naming the flag, field or file; a data error exits 1 naming the file or row; one line on
stderr, and the traceback only with `--debug` or `MISE_DEBUG=1`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mise.console import UsageError, run_command
from tests.conftest import REPO_ROOT, write_manifest

TRAIN = [sys.executable, "training/train.py", "training/configs/mise.yaml"]
STUDY = [sys.executable, "training/study.py", "training/configs/mise.yaml", "training/configs/study.yaml"]
MISE = [sys.executable, "-m", "mise.cli"]


def run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "MISE_DEBUG"}
    environment.update(HF_HUB_OFFLINE="1", **env)
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=environment
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    """The error line: stderr holds it alone (logging aside), without a traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "command, field",
    [
        (TRAIN + ["--data_dir", "my_corpus", "--output_dir", "unused"], "--dataset: required"),
        (
            TRAIN + ["--dataset", "m.csv", "--output_dir", "unused", "--max_folds", "0"],
            "max_folds: must be >= 1",
        ),
        (
            TRAIN + ["--dataset", "m.csv", "--output_dir", "unused", "--max_folds", "two"],
            "argument --max_folds",
        ),
        (
            STUDY + ["--dataset", "m.csv", "--output_dir", "unused", "--protocol", "loocv"],
            "argument --protocol",
        ),
    ],
    ids=["train: no dataset", "train: a bad value", "train: not a number", "study: a bad choice"],
)
def test_a_config_error_exits_2_naming_the_field(command, field, tmp_path):
    result = run(command)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_line(result)
    assert line.startswith("error: ") and field in line, line
    assert not (REPO_ROOT / "unused").exists()


def test_a_data_error_exits_1_naming_the_file_and_row(ravdess_rows, tmp_path):
    rows = [dict(row) for row in ravdess_rows[:40]]
    rows[3]["speaker"] = ""
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    result = run(TRAIN + ["--dataset", str(manifest), "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 1, result.stderr[-3000:]
    line = one_line(result)
    assert line == f"error: {manifest}: row 3 (line 5): empty speaker in column 'speaker'", line


def test_mise_usage_and_data_errors(space_model, ravdess_rows, tmp_path):
    """A missing model folder is a usage error (2); a corpus manifest without a speaker column a data error (1)."""
    result = run(MISE + ["evaluate", str(tmp_path / "no-model"), str(tmp_path / "m.csv")])
    assert (
        result.returncode == 2
        and one_line(result) == f"mise evaluate: {tmp_path / 'no-model'}: no such folder"
    )
    manifest = write_manifest(tmp_path / "m.csv", ravdess_rows[:4], fieldnames=("path", "emotion"))
    result = run(MISE + ["evaluate", str(space_model), str(manifest), "--output_dir", str(tmp_path / "eval")])
    assert result.returncode == 1, result.stderr[-3000:]
    assert one_line(result).startswith(f"mise evaluate: {manifest}: missing speaker column 'speaker'")


def test_debug_gives_the_traceback():
    command = TRAIN + ["--output_dir", "unused"]
    for extra, env in (([], {"MISE_DEBUG": "1"}), (["--debug"], {})):
        result = run(command + extra, **env)
        assert result.returncode != 0 and "Traceback" in result.stderr, result.stderr[-3000:]
        assert "ConfigError: --dataset: required" in result.stderr
    assert run(command, MISE_DEBUG="0").returncode == 2  # 0 means off


def test_run_command_maps_each_kind_of_error(capsys):
    def failing(error: Exception):
        def main(argv: list[str]) -> None:
            assert "--debug" not in argv
            raise error

        return main

    assert run_command(failing(UsageError("--flag: wrong")), "tool", []) == 2
    assert capsys.readouterr().err == "tool: --flag: wrong\n"
    assert run_command(failing(ValueError("data.csv row 4: empty label")), "tool", []) == 1
    assert run_command(failing(FileNotFoundError("clip.wav")), "tool", []) == 1
    assert (
        run_command(
            failing(FloatingPointError("fold 1: NaN loss")), "tool", [], data_errors=(FloatingPointError,)
        )
        == 1
    )
    assert (
        run_command(lambda argv: {"summary": 1}, "tool", []) == 0
        and run_command(lambda argv: 3, "tool", []) == 3
    )
    with pytest.raises(UsageError):
        run_command(failing(UsageError("--flag: wrong")), "tool", ["--debug"])
    with pytest.raises(KeyError):  # a bug is not a user's error: its traceback always shows
        run_command(failing(KeyError("x")), "tool", [])
