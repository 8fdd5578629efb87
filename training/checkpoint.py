"""Checkpoints of a run: `accelerator.save_state` folders plus a small JSON of where the run stood.

`OUT/checkpoints/checkpoint_<n>/` holds the prepared models, optimizers and every process' RNG states
(`save_state`), `progress.json` (fold, stage, epoch, early-stopping state, config hash) and, mid-stage, the
best weights seen so far (`best_state.safetensors`). A folder is written under a temporary name and renamed
when complete, so a run killed while saving never leaves a half checkpoint behind as `latest`.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

PROGRESS_FILE = "progress.json"
BEST_STATE_FILE = "best_state.safetensors"
_NAME = re.compile(r"^checkpoint_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the folder and the reason."""


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

    def save(
        self,
        accelerator: Accelerator,
        progress: dict,
        best_state: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Save the accelerator state + progress on every process (RNG states are per process)."""
        found = self.checkpoints()
        number = int(_NAME.match(found[-1].name).group(1)) + 1 if found else 0
        final = self.root / f"checkpoint_{number}"
        staging = self.root / f".checkpoint_{number}.tmp"
        if accelerator.is_main_process and staging.exists():
            shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            if best_state is not None:
                save_file(
                    {key: value.contiguous() for key, value in best_state.items()}, staging / BEST_STATE_FILE
                )
            record = dict(progress, config_hash=self.config_hash, world_size=accelerator.num_processes)
            (staging / PROGRESS_FILE).write_text(json.dumps(record, indent=2))
            staging.rename(final)
            for old in self.checkpoints()[: -self.total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load(self, accelerator: Accelerator, path: Path) -> tuple[dict, dict[str, torch.Tensor] | None]:
        """Restore the accelerator state (models, optimizers, RNG) from `path`; return (progress, best_state)."""
        progress = read_progress(path)
        self.check(path, progress)
        accelerator.load_state(str(path))
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
