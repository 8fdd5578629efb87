"""Publish a training run on the Hugging Face Hub: model cards, upload-ready folders, validation and push.

A run folder `OUT` written by `training/train.py` holds the trained models, each in a folder named as its Hub
repository (`models/mise-{aligner,generator,classifier,audio-classifier}`), and `card.json`, what the cards say
about the run ([`mise.hub.run_card`]). [`build_hub_folders`] turns it into `OUT/hub/<prefix>-<kind>/` (weights,
config with `auto_map`, the model code, the feature extractor of the audio classifier, a `README.md` model card
rendered from the templates in `model_cards/`) and validates them offline. [`push_run`] uploads them with
`huggingface_hub`; nothing under `OUT` is deleted, so a failed push can simply be rerun. [`push_space`] builds
and uploads the Gradio Space that loads the pushed end-to-end classifier through remote code.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from .cards import (
    HUB_KINDS,
    MODEL_FOLDERS,
    PIPELINE_TAGS,
    RunFolderError,
    card_context,
    is_finite_number,
    read_held_out_corpora,
    read_study,
    render_card,
    repo_ids,
)
from .run_card import read_run_card
from .space import build_space_folder

__all__ = [
    "HubPushError",
    "RunFolderError",
    "build_hub_folders",
    "build_space",
    "check_remote_code_loading",
    "push_run",
    "push_space",
    "read_run_card",
    "read_held_out_corpora",
    "read_study",
    "repo_ids",
    "run_without_package",
    "validate_hub_folder",
]

AUTO_CLASSES = {
    "aligner": ("AutoConfig", "AutoModel"),
    "generator": ("AutoConfig", "AutoModel"),
    "classifier": ("AutoConfig", "AutoModel"),
    "audio-classifier": ("AutoConfig", "AutoModel", "AutoModelForAudioClassification"),
}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class HubPushError(RuntimeError):
    """The upload failed (no token, Hub unreachable, refused); the message says what to do. `OUT` is intact."""


# ------------------------------------------------------------------------------------------------ folders
def _load_source(kind: str, source: Path):
    """The trained model (and the audio classifier's feature extractor) from `OUT/models/<folder>`, safetensors
    only."""
    from modeling_mise import (
        MiseAlignerModel,
        MiseClassifierModel,
        MiseFeatureExtractor,
        MiseForAudioClassification,
        MiseGeneratorModel,
    )

    model_class = {"aligner": MiseAlignerModel, "generator": MiseGeneratorModel, "classifier": MiseClassifierModel,
                   "audio-classifier": MiseForAudioClassification}[kind]  # fmt: skip
    if not (source / "model.safetensors").is_file():
        raise RunFolderError(f"{source}: no model.safetensors (only safetensors weights are published)")
    try:
        model = model_class.from_pretrained(source, use_safetensors=True).eval()
    except (OSError, ValueError, KeyError) as error:
        raise RunFolderError(f"{source}: cannot load the {kind} model ({error})") from error
    extractor = None
    if kind == "audio-classifier":
        if (source / "preprocessor_config.json").is_file():
            extractor = MiseFeatureExtractor.from_pretrained(source)
        else:
            extractor = MiseFeatureExtractor(
                sampling_rate=model.config.sampling_rate, max_duration_s=model.config.max_duration_s
            )
    return model, extractor


def build_hub_folders(
    output_dir: str | os.PathLike,
    org: str | None = None,
    prefix: str | None = None,
    *,
    license: str | None = None,
    check_remote_code: bool = True,
    study: str | os.PathLike | None = None,
    held_out: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write and validate `OUT/hub/<prefix>-<kind>/` for the kinds `HUB_KINDS`; returns `{kind: folder}`.

    Each folder is built from the trained `OUT/models/mise-<kind>` with `save_pretrained` (weights as safetensors,
    config with `auto_map`, the model code), plus the audio classifier's `preprocessor_config.json` and a
    `README.md` card rendered from `model_cards/<kind>.md` with what the run's `card.json` records. A folder is
    assembled under a temporary name and replaces the old one only once it validates, so a failed build leaves
    the previous one (and everything else in `OUT`) as it was. `org`/`prefix` name the repositories in the cards
    (`<org>/<prefix>-<kind>`). With `check_remote_code` the folders are also loaded in a clean Python process in
    which neither `modeling_mise` nor `mise` can be imported. The generator is left out when the run trained none (augmentation `none`, `noise` or `mixup`). `study`, a
    folder written by `training/study.py`, adds a "Comparison study" section quoting its `study.json` to
    every card ([`read_study`]); without it, the study `card.json` names, if any. `held_out`, a folder of
    leave-one-corpus-out runs' `summary.json` (one per seed), adds their UAR per held-out corpus, adapted and as
    released ([`read_held_out_corpora`]).
    """
    output_dir = Path(output_dir)
    card = read_run_card(output_dir)
    study = study if study is not None else card["study"]
    study_section = read_study(study) if study is not None else None
    held_out_section = read_held_out_corpora(held_out) if held_out is not None else None
    models_dir = output_dir / "models"
    kinds = tuple(k for k in HUB_KINDS if (models_dir / MODEL_FOLDERS[k]).is_dir())
    for required in ("aligner", "classifier", "audio-classifier"):
        if required not in kinds:
            raise RunFolderError(
                f"{models_dir / MODEL_FOLDERS[required]}: missing (train.py writes it with final_models=true)"
            )
    repos = repo_ids(org, prefix, kinds)
    loaded = {kind: _load_source(kind, models_dir / MODEL_FOLDERS[kind]) for kind in kinds}
    configs = {kind: model.config.to_dict() for kind, (model, _) in loaded.items()}
    hub_dir = output_dir / "hub"
    names = {kind: repo.split("/", 1)[1] for kind, repo in repos.items()}
    staging = {kind: hub_dir / f".{names[kind]}.partial" for kind in kinds}
    try:
        for kind, (model, extractor) in loaded.items():
            folder = staging[kind]
            if folder.exists():
                shutil.rmtree(folder)
            model.save_pretrained(folder)
            if extractor is not None:
                extractor.save_pretrained(folder)
            render_card(
                kind, card_context(kind, card, configs, repos, license, study_section, held_out_section)
            ).save(folder / "README.md")
            validate_hub_folder(folder, kind, card)
        if check_remote_code:
            check_remote_code_loading(staging)
    except BaseException:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    folders = {}
    for kind, folder in staging.items():
        final = hub_dir / names[kind]
        if final.exists():
            shutil.rmtree(final)
        folder.rename(final)
        folders[kind] = final
    (hub_dir / "repos.json").write_text(json.dumps(repos, indent=2) + "\n")
    return folders


def _relative_imports(source: str) -> set[str]:
    tree = ast.parse(source)
    return {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    }


def validate_hub_folder(folder: str | os.PathLike, kind: str, run_card: dict | None = None):
    """Offline checks of an upload-ready folder; returns its parsed `ModelCard`.

    Files: `config.json` whose `auto_map` names the Auto classes of `kind` and code files that exist (with
    every relative import they make), `model.safetensors` and no pickle-based weights, `README.md`, and for
    the audio classifier `preprocessor_config.json` with an `AutoFeatureExtractor` entry. Card: YAML metadata
    that parses, a `model-index` with finite results (the pooled UAR equal to that of `run_card`, the run's
    `card.json`), licence, library and pipeline tag. Raises `RunFolderError` naming the file and the problem.
    """
    from huggingface_hub import ModelCard

    folder = Path(folder)
    for name in ("config.json", "model.safetensors", "README.md"):
        if not (folder / name).is_file():
            raise RunFolderError(f"{folder}: missing {name}")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise RunFolderError(
            f"{folder}: pickle-based files {pickles} must not be published (safetensors only)"
        )
    auto_maps = {"config.json": (json.loads((folder / "config.json").read_text()).get("auto_map") or {},
                                 AUTO_CLASSES[kind])}  # fmt: skip
    if kind == "audio-classifier":
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            raise RunFolderError(f"{folder}: missing preprocessor_config.json (the pipeline needs it)")
        auto_maps["preprocessor_config.json"] = (json.loads(path.read_text()).get("auto_map") or {},
                                                 ("AutoFeatureExtractor",))  # fmt: skip
    modules = set()
    for file_name, (auto_map, required) in auto_maps.items():
        for auto_class in required:
            if auto_class not in auto_map:
                raise RunFolderError(f"{folder / file_name}: auto_map has no {auto_class} entry")
            modules.add(str(auto_map[auto_class]).rsplit(".", 1)[0])
    pending = set(modules)
    while pending:
        module = pending.pop()
        path = folder / f"{module}.py"
        if not path.is_file():
            raise RunFolderError(f"{folder}: code file {path.name} is missing (trust_remote_code needs it)")
        new = _relative_imports(path.read_text()) - modules
        modules |= new
        pending |= new
    try:
        card = ModelCard.load(folder / "README.md", ignore_metadata_errors=False)
    except ValueError as error:
        raise RunFolderError(f"{folder / 'README.md'}: invalid model card metadata ({error})") from error
    data = card.data
    problems = []
    if not data.eval_results:
        problems.append("no model-index results")
    for result in data.eval_results or []:
        if not is_finite_number(result.metric_value):
            problems.append(f"result {result.metric_name!r} is not a finite number")
    if data.library_name != "transformers":
        problems.append(f"library_name is {data.library_name!r}, expected 'transformers'")
    if data.pipeline_tag != PIPELINE_TAGS[kind]:
        problems.append(f"pipeline_tag is {data.pipeline_tag!r}, expected {PIPELINE_TAGS[kind]!r}")
    if not data.license:
        problems.append("no license")
    if run_card is not None and data.eval_results:
        uar = [
            r.metric_value for r in data.eval_results if (r.metric_name or "").startswith("UAR (unweighted")
        ]
        expected = round(float(run_card["metrics"]["uar_pooled"]), 4)
        if uar != [expected]:
            problems.append(f"pooled UAR in model-index {uar} does not match card.json ({expected})")
    if problems:
        raise RunFolderError(f"{folder / 'README.md'}: " + "; ".join(problems))
    return card


# ------------------------------------------------------------------------------------------------ clean process
# Prepended to code run by `run_without_package`: neither `modeling_mise` nor the `mise` tools can be imported,
# even when installed.
BLOCK_PACKAGE = textwrap.dedent(
    """
    import sys
    class _BlockMise:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_mise", "mise"):
                raise ImportError(f"{name} is blocked in this process")
    sys.meta_path.insert(0, _BlockMise())
    """
)

_REMOTE_CHECK = """
import json, sys
import numpy as np, torch
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification
report = {}
for kind, folder in json.loads(sys.argv[1]).items():
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    if kind == "aligner":
        output = model.get_audio_features(torch.zeros(2, model.config.audio_dim))
    elif kind == "generator":
        output = model.generate(num_per_label=1, generator=torch.Generator().manual_seed(0)).features
    elif kind == "classifier":
        width = model.config.input_dim + (model.config.text_dim if model.config.multimodal else 0)
        output = model(torch.zeros(2, width)).logits
    else:
        model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True).eval()
        extractor = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
        rate = extractor.sampling_rate
        t = np.arange(rate) / rate
        wave = (0.1 * np.sin(2 * np.pi * 220 * t) * (1.2 + np.sin(2 * np.pi * 3 * t))).astype("float32")
        with torch.no_grad():
            output = model(**extractor(wave, sampling_rate=rate, return_tensors="pt")).logits
    if type(model).__module__.startswith("modeling_mise") or not bool(torch.isfinite(output).all()):
        raise SystemExit(f"{kind}: loaded from {type(model).__module__} with output {output}")
    report[kind] = {"class": type(model).__name__, "module": type(model).__module__, "shape": list(output.shape)}
print("MISE_REMOTE_CODE " + json.dumps(report))
"""


def run_without_package(code: str, args: tuple[str, ...] = (), cwd: str | os.PathLike | None = None,
                        env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:  # fmt: skip
    """Run `code` in a fresh interpreter where neither `modeling_mise` nor `mise` can be imported, offline, with
    its own `HF_HOME` (unless `env` sets one) and working directory: what a user without the packages gets."""
    with tempfile.TemporaryDirectory(prefix="mise-clean-") as scratch:
        environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN")}
        environment.update(
            HF_HOME=str(Path(scratch) / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
        )
        environment.update(env or {})
        return subprocess.run(
            [sys.executable, "-c", BLOCK_PACKAGE + textwrap.dedent(code), *args],
            cwd=str(cwd or scratch),
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def check_remote_code_loading(folders: dict[str, Path]) -> dict:
    """Load each folder with the Auto classes and `trust_remote_code=True` in a clean process without
    `modeling_mise`, and run it once; returns `{kind: {"class", "module", "shape"}}`."""
    payload = json.dumps({kind: str(Path(folder).resolve()) for kind, folder in folders.items()})
    result = run_without_package(_REMOTE_CHECK, (payload,))
    lines = [line for line in result.stdout.splitlines() if line.startswith("MISE_REMOTE_CODE ")]
    if result.returncode != 0 or not lines:
        raise RunFolderError(
            f"{', '.join(map(str, folders.values()))}: loading with trust_remote_code=True in a clean process "
            f"(without modeling_mise) failed:\n{result.stderr[-3000:]}"
        )
    return json.loads(lines[-1].split(" ", 1)[1])


# ------------------------------------------------------------------------------------------------ push
def _network_errors() -> tuple[type[BaseException], ...]:
    """What the Hub client raises when the Hub is unreachable or refuses (its HTTP library varies by version)."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    errors: list[type[BaseException]] = [HfHubHTTPError, HFValidationError, OSError]
    for module_name in ("httpx2", "httpx", "requests"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        base = getattr(module, "HTTPError", None) if module_name != "requests" else module.RequestException
        if isinstance(base, type) and issubclass(base, BaseException):
            errors.append(base)
    return tuple(errors)


def _hub_api(output_dir: Path, rerun: str, token: str | None):
    """An `HfApi` with a usable token and a reachable Hub, checked before anything is built; else `HubPushError`
    saying that nothing was uploaded and how to `rerun`."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import OIDCError

    if constants.HF_HUB_OFFLINE:
        raise HubPushError(
            f"cannot push: HF_HUB_OFFLINE is set, so the Hub is unreachable by configuration. Nothing was uploaded "
            f"and {output_dir} is unchanged; unset HF_HUB_OFFLINE and {rerun}."
        )
    try:
        token = token or get_token()
    except (OIDCError, *_network_errors()) as error:
        raise HubPushError(f"cannot push: no usable Hugging Face token ({error}); {rerun}.") from error
    if not token:
        raise HubPushError(
            "cannot push: no Hugging Face token (log in with `hf auth login`, set HF_TOKEN, or pass --token). "
            f"Nothing was uploaded and {output_dir} is unchanged; {rerun}."
        )
    api = HfApi(token=token)
    try:  # fail fast, before the build, when the Hub is unreachable or the token is refused
        api.whoami()
    except _network_errors() as error:
        raise HubPushError(
            f"cannot push: {constants.ENDPOINT} is unreachable or refused the token "
            f"({type(error).__name__}: {error}). Nothing was uploaded and {output_dir} is unchanged; {rerun}."
        ) from error
    return api


_REPLACED = ["*.py", "*.json", "*.md", "*.safetensors"]  # a model repo's files a new upload replaces


def _upload(api, repo_id: str, folder: Path, private: bool, message: str, repo_type: str = "model",
            space_sdk: str | None = None, delete_patterns: list[str] | None = None) -> str:  # fmt: skip
    """Create `repo_id` if needed and upload `folder` as one commit; returns the commit URL."""
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, space_sdk=space_sdk)
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type, commit_message=message,
                               delete_patterns=delete_patterns)  # fmt: skip
    return str(getattr(commit, "commit_url", commit))


def push_run(
    output_dir: str | os.PathLike,
    org: str,
    prefix: str | None = None,
    token: str | None = None,
    private: bool = False,
    license: str | None = None,
    study: str | os.PathLike | None = None,
    held_out: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Build, validate and upload `OUT/hub/*` to `<org>/<prefix>-<kind>` for each kind of `HUB_KINDS`.

    Returns `{kind: commit URL}` (also written to `OUT/hub/pushed.json`). Raises `HubPushError` with what to do
    when there is no token, the Hub is unreachable (or `HF_HUB_OFFLINE=1`) or refuses; the run folder is never
    modified beyond `OUT/hub/`, so the same call can be repeated. Repositories are created if needed
    (`exist_ok`), so a rerun after a partial upload continues where it stopped. `study`, `held_out`: see
    [`build_hub_folders`].
    """
    from huggingface_hub import constants

    output_dir = Path(output_dir)
    repos = repo_ids(org, prefix)
    options = (f" --prefix {prefix}" if prefix else "") + (f" --study {study}" if study is not None else "")
    options += f" --held_out {held_out}" if held_out is not None else ""
    rerun = f"rerun `mise push {output_dir} --org {org}{options}`"
    api = _hub_api(output_dir, rerun, token)
    folders = build_hub_folders(output_dir, org, prefix, license=license, study=study, held_out=held_out)
    pushed: dict[str, str] = {}
    for kind, folder in folders.items():
        repo_id = repos[kind]
        try:
            message = f"Upload MISE {kind} (run {output_dir.name})"
            pushed[kind] = _upload(api, repo_id, folder, private, message, delete_patterns=_REPLACED)
        except _network_errors() as error:
            done = ", ".join(f"{k} -> {repos[k]}" for k in pushed) or "none"
            raise HubPushError(
                f"pushing {folder} to {constants.ENDPOINT}/{repo_id} failed: {type(error).__name__}: {error}. "
                f"Already uploaded: {done}. The upload-ready folders stay in {output_dir / 'hub'} and the run is "
                f"unchanged; {rerun} when the Hub is reachable."
            ) from error
    (output_dir / "hub" / "pushed.json").write_text(
        json.dumps({"repos": repos, "commits": pushed}, indent=2) + "\n"
    )
    return pushed


def space_repo_id(org: str, prefix: str | None = None) -> str:
    """The Space of a run: `<org>/<prefix>-demo`."""
    return repo_ids(org, prefix, ("demo",))["demo"]


def build_space(output_dir: str | os.PathLike, org: str | None = None, prefix: str | None = None) -> Path:
    """Write `OUT/hub/space/`, the Gradio Space that loads `<org>/<prefix>-audio-classifier`
    ([`build_space_folder`])."""
    model_id = repo_ids(org, prefix, ("audio-classifier",))["audio-classifier"]
    return build_space_folder(Path(output_dir) / "hub" / "space", model_id)


def push_space(
    output_dir: str | os.PathLike,
    org: str,
    prefix: str | None = None,
    token: str | None = None,
    private: bool = False,
) -> dict[str, str]:
    """Build `OUT/hub/space/` ([`build_space`]) and upload it as the Gradio Space `<org>/<prefix>-demo`; returns
    `{"space": commit URL}`. The models are pushed by [`push_run`]; errors as there (`HubPushError`)."""
    from huggingface_hub import constants

    output_dir = Path(output_dir)
    space = space_repo_id(org, prefix)
    rerun = f"rerun `mise push {output_dir} --org {org}{f' --prefix {prefix}' if prefix else ''} --space`"
    api = _hub_api(output_dir, rerun, token)
    folder = build_space(output_dir, org, prefix)
    try:
        message = f"Upload the MISE Space (run {output_dir.name})"
        commit_url = _upload(api, space, folder, private, message, repo_type="space", space_sdk="gradio")
    except _network_errors() as error:
        raise HubPushError(
            f"pushing {folder} to {constants.ENDPOINT}/spaces/{space} failed: {type(error).__name__}: {error}. "
            f"The Space folder stays in {folder}; {rerun} when the Hub is reachable."
        ) from error
    return {"space": commit_url}
