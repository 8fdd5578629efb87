"""Every shell command of README.md and of the pages under docs/ is run here, in the form the page gives it
(with `.venv` activated), or skipped by name with a reason: long training runs, set-up that CI does, servers
that tests/test_space.py starts.

Commands are read from the pages at collection time, so a command added to one is covered: it must match a
rule of `RULES`, or its test fails and says so. The README's own-data command runs as shown on a small corpus
built from RAVDESS clips (only its paths point at the scratch folder, with tiny epochs added), and the model it
writes serves the tests of the Hugging Face tools page: `evaluate`'s evaluator and the label maps.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
# what a command looks like in prose: a `code span` starting like this is a command too
COMMAND_START = re.compile(
    r"^(\. |\.venv/bin/|python3?(\.\d+)? |mise |accelerate |make |pip |sudo |hf |[A-Z_]+=\S+ )"
)
OWN_DATA = "python training/train.py training/configs/mise.yaml --dataset my_corpus/manifest.csv --output_dir runs/my_corpus"
OWN_DATA_SPEAKERS = ("Actor_01", "Actor_02", "Actor_03", "Actor_04", "Actor_05")  # 150 clips, 8 emotions
# the own-data run, small: one fold and a few epochs of each stage (the command is the README's otherwise)
OWN_DATA_TINY = (
    "--max_folds 1 --aligner_epochs 10 --generator_epochs 2 --generator_eval_every 1 --classifier_epochs 10"
)
OWN_DATA_MODELS = ("aligner", "generator", "classifier", "audio-classifier")
EVALUATOR_CLIPS = "Actor_10"  # a speaker the own-data model never heard: 30 clips of 8 emotions

# (pattern, kind, detail): the first rule that matches a command decides. kind `run`: detail is where it runs
# (`repo`: the repository root; `scratch`: a scratch folder, the README's paths pointing at a test model, the
# data copy and a real clip; `own-data`: the own-data run); `error`: it runs and must fail as the page says,
# detail = (where, exit code, start of its last line on stderr); `skip`: detail is the reason.
RULES = [
    (rf"^{re.escape(OWN_DATA)}$", "run", "own-data"),
    (
        r"--data_dir my_corpus --output_dir runs/my_corpus$",
        "error",
        ("repo", 2, "error: --dataset: required"),
    ),
    (
        r"^mise classify runs/nope clip\.wav$",
        "error",
        ("scratch", 2, "mise classify: runs/nope: no such folder"),
    ),
    (
        r"…|<file>|\.\.\.$|^\.venv/bin/$|^mise (classify|evaluate|push)$|^mise \w+: ",
        "skip",
        "not a command: a command's name, shape or message in prose",
    ),
    (r"^make (test|setup)$", "skip", "CI runs it (.ci/run: make setup, make lint, make test)"),
    (
        r"^(python3\.11 -m venv|pip install|sudo apt-get)",
        "skip",
        "set-up that make setup (scripts/setup.sh) does in CI",
    ),
    (r"-m pytest", "skip", "the test suite itself, which CI runs (make test)"),
    (
        r"^make train( NUM_PROCESSES=\d+)?$",
        "skip",
        "a full 24-fold training run (minutes); the own-data command and tests/test_training.py run train.py on "
        "subsets",
    ),
    (
        r"^(accelerate launch|ACCELERATE_USE_CPU=|python training/(train|study)\.py training/configs)|^for seed|^done",
        "skip",
        "a training or study run (minutes to hours; some need GPUs or IEMOCAP); tests/test_training.py, "
        "test_study.py and test_distributed.py run them on subsets",
    ),
    (r"^accelerate config$", "skip", "interactive"),
    (
        r"^hf auth login$|^mise push",
        "skip",
        "needs a Hub account and a finished run; tests/test_hub.py runs mise push --dry_run",
    ),
    (
        r"spaces_demo/app\.py$|bench/bench_space\.py",
        "skip",
        "a server; tests/test_space.py serves the app and benches it",
    ),
    (r"^python bench/bench_train\.py( |$)", "skip", "the 24-fold training benchmark (minutes)"),
    (
        r"^python bench/bench_generator\.py ",
        "skip",
        "trains stage 2 under several settings on real folds (minutes); tests/test_generation.py tests each setting",
    ),
    (
        r"^python training/study_compare\.py ",
        "skip",
        "rewrites the committed directions table; tests/test_study_compare.py recomputes it from its studies",
    ),
    (r"^python training/study_targets\.py ", "run", "repo"),
    (r"^python \.\./training/study_targets\.py ", "run", "docs"),
    (
        r"^mise evaluate runs/my_corpus/\S+ test_clips/manifest\.csv",
        "skip",
        "test_evaluator_runs_on_the_pipeline runs it on real clips, against evaluate's evaluator",
    ),
    (
        r"^mise (classify|evaluate) (MODEL|OUT/|runs/)\S*.*(recordings/|interview|--enrolment|shared/data/emodb|CORPUS)",
        "skip",
        "a trained model and its files (OUT, MODEL, clips/ are placeholders); tests/test_file_classification.py, "
        "test_evaluate.py and test_training.py (enrolment) run these on real clips",
    ),
    (
        r"^python bench/bench_segments\.py|^for (pair|normalize) in |^mise evaluate runs/seg_",
        "skip",
        "trains models on held-out splits of both corpora (minutes); tests/test_segments.py, test_adaptation.py "
        "and test_evaluate.py run segmentation and adaptation on real clips",
    ),
    (
        r"^mise classify MODEL clips/ --adapt ",
        "skip",
        "MODEL and clips/ are placeholders; tests/test_adaptation.py runs --adapt on real clips",
    ),
    (
        r"^python (training/cross_corpus\.py|bench/bench_classify\.py)",
        "skip",
        "trains models on both corpora / times 200 clips (minutes); tests/test_evaluate.py runs the pieces",
    ),
    (r"--help$", "run", "repo"),
    (r"^\. \.venv/bin/activate$", "run", "repo"),
    (r"^make lint$", "run", "repo"),
    (r"^(\.venv/bin/)?mise classify \S+ \S+$", "run", "scratch"),
]


def readme_commands(text: str) -> list[str]:
    """Shell lines of a page's ```bash blocks (continuations joined, comments dropped) and command spans."""
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


def page_commands() -> list[tuple[Path, str]]:
    """(page, command) of every page, each command once, with the first page that gives it."""
    first: dict[str, Path] = {}
    for page in PAGES:
        for command in readme_commands(page.read_text()):
            first.setdefault(command, page)
    return [(page, command) for command, page in first.items()]


COMMANDS = page_commands()


def how(command: str) -> tuple[str, object]:
    """`(kind, detail)` of the first rule matching `command`; `("unknown", None)` when none does."""
    for pattern, kind, detail in RULES:
        if re.search(pattern, command):
            return kind, detail
    return "unknown", None


def run_shell(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`command` in bash with this test's virtual environment first on PATH, offline."""
    venv = Path(sys.executable).parent
    activate = f". {venv / 'activate'}" if (venv / "activate").is_file() else f"export PATH={venv}:$PATH"
    environment = dict(os.environ, HF_HUB_OFFLINE="1", **env)
    return subprocess.run(
        ["bash", "-c", f"{activate} && {command}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )


def test_readme_says_to_activate_the_environment():
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "`. .venv/bin/activate`" in quick_start and "make setup" in quick_start
    assert sum(how(command)[0] == "run" for _, command in COMMANDS) >= 5


def test_readme_is_a_front_door():
    """At most 300 lines, with training on your own data (a five-row manifest, the command) in the first 100."""
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, len(lines)
    first = "\n".join(lines[:100])
    manifest = re.search(r"```csv\n(path,emotion,speaker[^\n]*)\n((?:[^\n`]+\n){5})```", first)
    assert manifest is not None, "no five-row example manifest in the README's first 100 lines"
    assert f"\n{OWN_DATA}\n" in first
    assert all(
        len(row.split(",")) == len(manifest.group(1).split(",")) for row in manifest.group(2).splitlines()
    )
    assert not re.search(r"\b[0-9a-f]{7}\b`", README.read_text()), "a commit hash in the README"


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of `page`."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_links_between_pages_resolve():
    """Every relative link of the README and the docs pages names a file that exists, and a heading in it."""
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: link to {target}, no such file"
            if anchor:
                assert anchor in anchors(linked), f"{page.name}: link to {target}, no such heading"


@pytest.fixture(scope="session")
def own_data_run(ravdess_rows, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's own-data command, run in a scratch folder holding `my_corpus/` (a manifest with paths
    relative to it, the clips linked from the RAVDESS copy): (the scratch folder, the finished process)."""
    scratch = tmp_path_factory.mktemp("own_data")
    clips = scratch / "my_corpus" / "clips"
    clips.mkdir(parents=True)
    with open(scratch / "my_corpus" / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "emotion", "speaker", "transcript"])
        writer.writeheader()
        for row in (row for row in ravdess_rows if row["speaker"] in OWN_DATA_SPEAKERS):
            link = clips / f"{row['speaker']}_{Path(row['path']).name}"
            link.symlink_to(row["path"])
            writer.writerow(
                {
                    **{key: row[key] for key in ("emotion", "speaker", "transcript")},
                    "path": f"clips/{link.name}",
                }
            )
    command = OWN_DATA.replace("training/", f"{REPO}/training/") + " " + OWN_DATA_TINY
    cache = tmp_path_factory.mktemp("own_data_cache")
    return scratch, run_shell(command, scratch, MISE_CACHE=str(cache))


@pytest.mark.parametrize(
    "page, command", COMMANDS, ids=[f"{page.relative_to(REPO)}: {command[:60]}" for page, command in COMMANDS]
)
def test_readme_command(page, command, request, tmp_path):
    kind, detail = how(command)
    if kind == "unknown":
        pytest.fail(
            f"{page.name} command {command!r} is neither run nor skipped: add a rule to RULES in {__file__}"
        )
    if kind == "skip":
        pytest.skip(detail)
    if detail == "own-data":
        check_own_data_run(*request.getfixturevalue("own_data_run"))
        return
    if command.startswith(("make", ". .venv")) and not (REPO / ".venv" / "bin" / "activate").is_file():
        pytest.skip("no .venv in the repository (make setup creates it)")
    where, expected_code, expected_message = detail if kind == "error" else (detail, 0, None)
    cwd = REPO / "docs" if where == "docs" else REPO
    if where == "scratch":  # the README's paths point at the test model, the data copy and a real clip
        cwd = tmp_path
        (cwd / "runs").mkdir()
        model = str(request.getfixturevalue("space_model"))
        for placeholder in ("runs/ravdess", "runs/my_corpus", "OUT"):
            command = command.replace(f"{placeholder}/models/mise-audio-classifier", model)
        command = command.replace("../shared/data/ravdess", str(request.getfixturevalue("ravdess_dir")))
        command = re.sub(r"(?<![\w/.-])clip\.wav\b", request.getfixturevalue("ravdess_wav"), command)
    result = run_shell(command, cwd)
    assert result.returncode == expected_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    if expected_message is not None:
        assert result.stderr.strip().splitlines()[-1].startswith(expected_message), result.stderr[-3000:]
    elif command.endswith("--help"):
        assert "usage:" in result.stdout
    elif "mise classify" in command:
        output = json.loads(result.stdout.splitlines()[0])
        assert output["label"] == max(output["scores"], key=output["scores"].get) and "notices" in output


def check_own_data_run(scratch: Path, result: subprocess.CompletedProcess) -> None:
    """The own-data run finished, wrote what the README lists, and its last log line says what the released
    model gives next to the fold number."""
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    out = scratch / "runs" / "my_corpus"
    for name in ("summary.json", "rejected.csv", "run_info.json", "card.json", "folds"):
        assert (out / name).exists(), name
    assert {path.name for path in (out / "models").iterdir()} == {f"mise-{kind}" for kind in OWN_DATA_MODELS}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_folds"] == 1 and 0.0 <= summary["uar_pooled"] <= 1.0
    released = summary["as_released"]  # RAVDESS speakers are heard in every emotion: per-speaker folds
    assert released["statistics"] == "per-speaker" and released["without_enrolment"] is None
    assert set(released["with_enrolment"]) == {"k3", "k10", "all"}
    line = next(line for line in reversed(result.stderr.splitlines()) if "pooled UAR" in line)
    assert f"pooled UAR {summary['uar_pooled']:.4f}" in line and "released model" in line, line
    assert "without enrolment uses global statistics" in line, line
    assert "█" not in result.stderr, "a progress bar in a log that is not a terminal"


def test_every_saved_model_has_both_label_maps(own_data_run):
    """The four models a run writes name their emotions both ways in `config.json` (a `label_mapping` for
    `evaluate` and the Hub widgets read `label2id`)."""
    scratch, result = own_data_run
    assert result.returncode == 0, result.stderr[-4000:]
    with open(scratch / "my_corpus" / "manifest.csv", newline="") as handle:
        emotions = sorted({row["emotion"] for row in csv.DictReader(handle)})
    for kind in OWN_DATA_MODELS:
        config = json.loads(
            (scratch / "runs" / "my_corpus" / "models" / f"mise-{kind}" / "config.json").read_text()
        )
        id2label, label2id = config.get("id2label"), config.get("label2id")
        assert id2label and label2id, (kind, id2label, label2id)
        assert sorted(id2label.values()) == emotions, (kind, id2label)
        assert {name: str(index) for name, index in label2id.items()} == {
            name: i for i, name in id2label.items()
        }


def page_block(page: Path, marker: str, language: str) -> str:
    """The first ```language block after `marker` on `page`."""
    text = page.read_text().split(marker, 1)[1]
    return re.search(rf"```{language}\n(.*?)```", text, flags=re.S).group(1)


def test_evaluator_runs_on_the_pipeline(own_data_run, ravdess_rows, tmp_path):
    """docs/ecosystem.md's evaluator example, as written but for its paths, on real clips of a speaker the model
    never heard: its UAR is what `mise evaluate` (the page's command) reports on the same clips, and without the
    work-around evaluate 0.4.6 still fails on transformers 5 (the page calls it an upstream limitation)."""
    scratch, result = own_data_run
    assert result.returncode == 0, result.stderr[-4000:]
    model = scratch / "runs" / "my_corpus" / "models" / "mise-audio-classifier"
    manifest = tmp_path / "test_clips" / "manifest.csv"
    manifest.parent.mkdir()
    rows = [row for row in ravdess_rows if row["speaker"] == EVALUATOR_CLIPS]
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "emotion", "speaker"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    page = REPO / "docs" / "ecosystem.md"
    code = page_block(page, "<!-- evaluator example -->", "python")
    code = code.replace("runs/my_corpus/models/mise-audio-classifier", str(model))
    evaluator = run_shell(f"python -c {shlex.quote(code)}", tmp_path)
    assert evaluator.returncode == 0, evaluator.stderr[-4000:]
    uar = float(evaluator.stdout.strip().splitlines()[-1])
    command = next(
        command
        for _, command in COMMANDS
        if re.match(r"^mise evaluate runs/my_corpus/\S+ test_clips/", command)
    )
    command = command.replace("runs/my_corpus/models/mise-audio-classifier", str(model))
    evaluated = run_shell(command + " --num_workers 0", tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    report = json.loads((tmp_path / "eval" / "test_clips" / "metrics.json").read_text())
    assert report["clips"] == len(rows) == 30 and len(report["classes"]) == 8
    assert uar == pytest.approx(report["uar"], abs=1e-12), (uar, report["uar"])
    with open(tmp_path / "eval" / "test_clips" / "predictions.csv", newline="") as handle:
        assert len({row["predicted"] for row in csv.DictReader(handle)}) > 1, "a model that names one class"
    without = code.replace('transformers.TFPreTrainedModel = type("TFPreTrainedModel", (), {})', "pass")
    assert without != code
    failing = run_shell(f"python -c {shlex.quote(without)}", tmp_path)
    assert failing.returncode != 0 and "has no attribute TFPreTrainedModel" in failing.stderr, failing.stderr[
        -2000:
    ]
