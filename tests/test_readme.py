"""Every shell command of README.md is run here, in the form the README gives it (with `.venv` activated), or
skipped by name with a reason: long training runs, set-up that CI does, servers that tests/test_space.py starts.

Commands are read from the README at collection time, so a command added to it is covered: it must match
`RUN` or `SKIP`, or its test fails and says which list to extend.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# what a command looks like in prose: a `code span` starting like this is a command too
COMMAND_START = re.compile(
    r"^(\. |\.venv/bin/|python3?(\.\d+)? |mise |accelerate |make |pip |sudo |hf |[A-Z_]+=\S+ )"
)

# commands this test runs: pattern -> where (the repository root, or a scratch folder holding `runs/`)
RUN = {
    r"--help$": "repo",
    r"^\. \.venv/bin/activate$": "repo",
    r"^make lint$": "repo",
    r"^(\.venv/bin/)?mise classify \S+ \S+$": "scratch",
}
# commands that are not run, each with the reason (the first matching pattern wins)
SKIP = [
    (
        r"…|<file>|\.\.\.$|^\.venv/bin/$|^mise (classify|evaluate|push)$",
        "not a command: a command's name or shape in prose",
    ),
    (r"^make (test|setup)$", "CI runs it (.ci/run: make setup, make lint, make test)"),
    (
        r"^(python3\.11 -m venv|pip install|sudo apt-get)",
        "set-up that make setup (scripts/setup.sh) does in CI",
    ),
    (r"-m pytest", "the test suite itself, which CI runs (make test)"),
    (
        r"^make train( NUM_PROCESSES=\d+)?$",
        "a full 24-fold training run (minutes); tests/test_training.py runs train.py on subsets",
    ),
    (
        r"^(accelerate launch|ACCELERATE_USE_CPU=|python training/(train|study)\.py training/configs)|^for seed|^done",
        "a training or study run (minutes to hours; some need GPUs or IEMOCAP); tests/test_training.py, "
        "test_study.py and test_distributed.py run them on subsets",
    ),
    (r"^accelerate config$", "interactive"),
    (
        r"^hf auth login$|^mise push",
        "needs a Hub account and a finished run; tests/test_hub.py runs mise push --dry_run",
    ),
    (
        r"spaces_demo/app\.py$|bench/bench_space\.py",
        "a server; tests/test_space.py serves the app and benches it",
    ),
    (r"^python bench/bench_train\.py( |$)", "the 24-fold training benchmark (minutes)"),
    (
        r"^mise (classify|evaluate) (MODEL|OUT/|runs/)\S*.*(recordings/|interview|--enrolment|shared/data/emodb|CORPUS)",
        "a trained model and its files (OUT, MODEL, clips/ are placeholders); tests/test_file_classification.py, "
        "test_evaluate.py and test_training.py (enrolment) run these on real clips",
    ),
    (
        r"^python (training/cross_corpus\.py|bench/bench_classify\.py)",
        "trains models on both corpora / times 200 clips (minutes); tests/test_evaluate.py runs the pieces",
    ),
]
# commands the README shows failing on purpose: exit code and the message on stderr
EXPECTED_ERRORS = {"mise classify runs/nope clip.wav": (2, "mise classify: runs/nope: no such folder")}


def readme_commands(text: str) -> list[str]:
    """Shell lines of the README's ```bash blocks (continuations joined, comments dropped) and command spans."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
            if line:
                commands.append(line)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if COMMAND_START.match(span):
            commands.append(span)
    return list(dict.fromkeys(commands))


COMMANDS = readme_commands(README.read_text())


def how(command: str) -> tuple[str, str]:
    """`("run", where)` or `("skip", reason)`; `("unknown", "")` for a command neither list covers."""
    for pattern, reason in SKIP:
        if re.search(pattern, command):
            return "skip", reason
    for pattern, where in RUN.items():
        if re.search(pattern, command):
            return "run", where
    return "unknown", ""


def test_readme_says_to_activate_the_environment():
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "`. .venv/bin/activate`" in quick_start and "make setup" in quick_start
    assert sum(how(command)[0] == "run" for command in COMMANDS) >= 5


@pytest.mark.parametrize("command", COMMANDS, ids=[command[:60] for command in COMMANDS])
def test_readme_command(command, space_model, ravdess_dir, ravdess_wav, tmp_path):
    kind, detail = how(command)
    if kind == "unknown":
        pytest.fail(
            f"README command {command!r} is neither run nor skipped: add it to RUN or SKIP in {__file__}"
        )
    if kind == "skip":
        pytest.skip(detail)
    venv = Path(sys.executable).parent
    if command.startswith(("make", ". .venv")) and not (REPO / ".venv" / "bin" / "activate").is_file():
        pytest.skip("no .venv in the repository (make setup creates it)")
    expected_code, expected_message = EXPECTED_ERRORS.get(command, (0, None))
    cwd = REPO
    if detail == "scratch":  # the README's paths point at the test model, the data copy and a real clip
        cwd = tmp_path
        (cwd / "runs").mkdir()
        command = command.replace("runs/ravdess/models/mise-audio-classifier", str(space_model))
        command = command.replace("OUT/models/mise-audio-classifier", str(space_model))
        command = command.replace("../shared/data/ravdess", str(ravdess_dir))
        command = re.sub(r"(?<![\w/.-])clip\.wav\b", ravdess_wav, command)
    activate = f". {venv / 'activate'}" if (venv / "activate").is_file() else f"export PATH={venv}:$PATH"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        ["bash", "-c", f"{activate} && {command}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == expected_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    if expected_message is not None:
        assert expected_message in result.stderr
    elif command.endswith("--help"):
        assert "usage:" in result.stdout
    elif "mise classify" in command:
        output = json.loads(result.stdout.splitlines()[0])
        assert output["label"] == max(output["scores"], key=output["scores"].get) and "notices" in output
