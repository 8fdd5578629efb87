"""Checkpoints of a stage: safetensors of its models, optimisers and RNG states plus a small JSON of where it stood.

A run keeps one `CheckpointManager` per fold (`OUT/checkpoints/<fold>/`, see `for_fold`), so the processes that
train different folds never share a folder. `checkpoint_<n>/` holds `state.safetensors` (every tensor of the
stage's models and optimisers, and the torch / CUDA / NumPy RNG states of the process that trains the fold),
`progress.json` (fold, stage, epoch, early-stopping state, config hash, the optimisers' hyper-parameters and
Python's RNG state) and the best weights seen so far (`best_state.safetensors`). A folder is written under a
temporary name and renamed when complete, so a run killed while saving never leaves a half checkpoint behind
as `latest`. Nothing is unpickled.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .arguments import ConfigError, MiseTrainingArguments

PROGRESS_FILE = "progress.json"
STATE_FILE = "state.safetensors"
BEST_STATE_FILE = "best_state.safetensors"
_NAME = re.compile(r"^checkpoint_(\d+)$")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed from; the message names the folder and the reason. Exit 2: resume
    with the settings it was written with, or start a new output_dir."""


def prepare_output_dir(
    output_dir: Path,
    training_args: MiseTrainingArguments,
    accelerator,
    markers: Sequence[str],
    files: Sequence[str],
    config_hash: str | None = None,
    what: str = "run",
) -> bool:
    """Refuse to mix runs in `output_dir`: a previous one is continued (resume), replaced (overwrite) or an error.

    `markers` are the names whose presence means the folder holds a `what`; `files` (markers included) are what
    an overwrite deletes. With `config_hash`, a resumed run must have the hash of `run_info.json`. Creates the
    folder; returns whether the run resumes.

    Raises:
        ConfigError: naming `resume_from_checkpoint` (another configuration) or `output_dir` (a previous run and
            neither resume nor overwrite).
    """
    previous = output_dir / "run_info.json"
    if training_args.resume_from_checkpoint is not None:
        if config_hash is not None and previous.is_file():
            old_hash = json.loads(previous.read_text()).get("config_hash")
            if old_hash != config_hash:
                raise ConfigError(
                    f"resume_from_checkpoint: {output_dir} holds a {what} with another configuration "
                    f"(hash {old_hash} != {config_hash}); resume with the same settings or use a new output_dir"
                )
        output_dir.mkdir(parents=True, exist_ok=True)
        return True
    if any((output_dir / name).exists() for name in markers) and not training_args.overwrite_output_dir:
        raise ConfigError(
            f"output_dir: {output_dir} already holds a {what}; pass --resume_from_checkpoint latest to continue "
            "it or --overwrite_output_dir to start again"
        )
    if accelerator.is_main_process:
        for name in files:
            path = output_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    accelerator.wait_for_everyone()
    output_dir.mkdir(parents=True, exist_ok=True)
    return False


@dataclass
class ResumePoint:
    """The checkpoint a resumed run continues from: read once, used by the one stage it belongs to."""

    path: Path
    progress: dict
    consumed: bool = False

    def matches(self, fold: str, stage: str) -> bool:
        """Whether `stage` of `fold` should continue from this checkpoint (and has not already)."""
        return not self.consumed and self.progress.get("fold") == fold and self.progress.get("stage") == stage


class CheckpointManager:
    """Numbered checkpoints under `root`, newest `total_limit` kept."""

    def __init__(self, root: str | Path, config_hash: str, total_limit: int = 2) -> None:
        self.root = Path(root)
        self.config_hash = config_hash
        self.total_limit = total_limit

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [
            (int(match.group(1)), path)
            for path in self.root.iterdir()
            if (match := _NAME.match(path.name)) and (path / PROGRESS_FILE).is_file()
        ]
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    def resolve(self, name: str) -> ResumePoint | None:
        """`latest` (None when there is none yet) or a checkpoint folder; a folder that is not one is an error."""
        path = self.latest() if name == "latest" else Path(name)
        if path is None:
            return None
        if not (path / PROGRESS_FILE).is_file():
            raise CheckpointError(
                f"resume_from_checkpoint: {path} is not a checkpoint folder (no {PROGRESS_FILE})"
            )
        progress = read_progress(path)
        self.check(path, progress)
        return ResumePoint(path, progress)

    def for_fold(self, fold: str) -> CheckpointManager:
        """The manager of one fold's checkpoints, `<root>/<fold>/`."""
        return CheckpointManager(self.root / fold, self.config_hash, self.total_limit)

    def save(
        self,
        progress: dict,
        objects: dict[str, nn.Module | torch.optim.Optimizer],
        best_state: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Save `objects` (models and optimisers by name), this process' RNG states and `progress`."""
        found = self.checkpoints()
        number = int(_NAME.match(found[-1].name).group(1)) + 1 if found else 0
        final = self.root / f"checkpoint_{number}"
        staging = self.root / f".checkpoint_{number}.tmp"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        tensors, meta = training_state(objects)
        save_file(tensors, staging / STATE_FILE)
        if best_state is not None:
            save_file(
                {key: value.contiguous() for key, value in best_state.items()}, staging / BEST_STATE_FILE
            )
        record = dict(progress, config_hash=self.config_hash, state=meta)
        (staging / PROGRESS_FILE).write_text(json.dumps(record, indent=2))
        staging.rename(final)
        for old in self.checkpoints()[: -self.total_limit]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load(
        self, path: Path, objects: dict[str, nn.Module | torch.optim.Optimizer]
    ) -> tuple[dict, dict[str, torch.Tensor] | None]:
        """Restore `objects` and the RNG states from `path`; return (progress, best_state)."""
        progress = read_progress(path)
        self.check(path, progress)
        if not (path / STATE_FILE).is_file() or "state" not in progress:
            raise CheckpointError(
                f"{path}: no {STATE_FILE} (written by another version); start a new output_dir"
            )
        restore_training_state(objects, load_file(path / STATE_FILE), progress["state"])
        best_file = path / BEST_STATE_FILE
        return progress, (load_file(best_file) if best_file.is_file() else None)

    def check(self, path: Path, progress: dict) -> None:
        """A checkpoint of another configuration cannot continue this run."""
        if progress.get("config_hash") != self.config_hash:
            raise CheckpointError(
                f"{path}: written by a run with another configuration (hash {progress.get('config_hash')} != "
                f"{self.config_hash}); resume with the same settings or start a new output_dir"
            )


def read_progress(path: Path) -> dict:
    """The `progress.json` of a checkpoint folder."""
    try:
        return json.loads((Path(path) / PROGRESS_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable {PROGRESS_FILE} ({error})") from error


def training_state(
    objects: dict[str, nn.Module | torch.optim.Optimizer],
) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (weights, optimiser moments, RNG states) and JSON (hyper-parameters, Python RNG) of a stage."""
    tensors: dict[str, torch.Tensor] = {"rng/torch": torch.get_rng_state()}
    meta: dict = {"optimizers": {}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = state
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(keys.astype(np.int64))
    meta["numpy"] = [kind, int(position), int(has_gauss), float(gauss)]
    meta["python"] = list(random.getstate())
    for name, obj in objects.items():
        if isinstance(obj, nn.Module):
            for key, value in obj.state_dict().items():
                tensors[f"model/{name}/{key}"] = value.detach().cpu().contiguous()
            continue
        state = obj.state_dict()
        scalars = {}
        for index, values in state["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer/{name}/{index}/{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{index}/{key}"] = value
        meta["optimizers"][name] = {"param_groups": state["param_groups"], "scalars": scalars}
    return tensors, meta


def restore_training_state(
    objects: dict[str, nn.Module | torch.optim.Optimizer], tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    """The inverse of `training_state`: weights, optimiser states and this process' RNG states."""
    for name, obj in objects.items():
        if isinstance(obj, nn.Module):
            prefix = f"model/{name}/"
            obj.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            continue
        prefix, saved = f"optimizer/{name}/", meta["optimizers"][name]
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, field = key[len(prefix) :].split("/", 1)
                state.setdefault(int(index), {})[field] = value
        for key, value in saved["scalars"].items():
            index, field = key.split("/", 1)
            state.setdefault(int(index), {})[field] = value
        obj.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[key] for key in sorted(tensors) if key.startswith("rng/cuda/")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, position, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))
