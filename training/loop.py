"""The epoch loop every stage shares: evaluation, early stopping, NaN guard, checkpoints, resume, logging.

A stage trains on this process alone (a run spreads whole folds over its processes): its batches are slices of
whole tensors (`Batches`), and `StageRuntime` does what `accelerator.prepare` would do for one process: autocast
under mixed precision, gradient accumulation, clipping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from .checkpoint import CheckpointManager, ResumePoint

STAGES = ("aligner", "generator", "classifier")


class NonFiniteLossError(FloatingPointError):
    """A NaN/Inf loss; the message names fold, stage, epoch and step and the last good checkpoint."""


@dataclass
class StageRuntime:
    """What a stage needs from the run around it. The defaults train without checkpoints (e.g. in a study)."""

    accelerator: Accelerator
    fold: str = "all"
    fold_index: int = 0
    checkpoints: CheckpointManager | None = None
    resume_from: ResumePoint | None = None
    checkpoint_every: int = 0
    max_grad_norm: float = 1.0
    log_every_epoch: bool = True
    step_offset: int = 0
    progress: object | None = None  # a tqdm bar (main process only) or None
    sync: bool = field(default=True, init=False)  # whether this micro-batch ends an accumulation window
    scaler: object | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.accelerator.mixed_precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.accelerator.device.type)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def autocast(self):
        """The mixed-precision context of forward passes (a no-op without mixed precision)."""
        return self.accelerator.autocast()

    def begin_batch(self, index: int, count: int) -> None:
        """Micro-batch `index` of `count` this epoch: the optimisers step every `gradient_accumulation_steps`
        micro-batches and at the epoch's last one."""
        every = self.accelerator.gradient_accumulation_steps
        self.sync = (index + 1) % every == 0 or index + 1 == count

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of `loss`, divided by the accumulation steps (and scaled under fp16)."""
        every = self.accelerator.gradient_accumulation_steps
        if every > 1:
            loss = loss / every
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer, parameters: list) -> None:
        """At the end of an accumulation window: clip to `max_grad_norm`, step, zero the gradients."""
        if not self.sync:
            return
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad()

    def resume_checkpoint(self, stage: str) -> Path | None:
        """The checkpoint to continue `stage` of this fold from, if the run was resumed inside it."""
        if self.resume_from is None or not self.resume_from.matches(self.fold, stage):
            return None
        self.resume_from.consumed = True
        return self.resume_from.path

    def log(self, values: dict[str, float], epoch: int) -> None:
        """Log scalars to the tracker at a run-wide step (`train/...` and `eval/...` keys)."""
        if self.log_every_epoch and self.accelerator.trackers:
            self.accelerator.log(values, step=self.step_offset + epoch)

    def check_finite(self, loss: torch.Tensor, stage: str, epoch: int, step: int) -> None:
        """Stop with a clear message when the loss is NaN/Inf (nothing new is saved)."""
        if not bool(torch.isfinite(loss.detach()).all()):
            last = self.checkpoints.latest() if self.checkpoints is not None else None
            kept = (
                f"the last good checkpoint is {last}" if last is not None else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"fold {self.fold!r}, stage {stage}, epoch {epoch}, step {step}: loss is {loss.item()} "
                f"(non-finite); stopping, {kept}. Lower the {stage} learning rate or check the features."
            )


@dataclass
class LoopState:
    """Where a stage's loop stands; saved in `progress.json` so a resumed loop continues exactly."""

    epoch: int = 0  # epochs completed
    step: int = 0  # micro-batches seen
    best_score: float = -math.inf
    best_epoch: int = 0
    evaluations_without_improvement: int = 0
    stopped: bool = False
    seconds: float = 0.0  # wall time spent in this stage's epochs (across resumes)
    history: list[dict] = field(default_factory=list)


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict (the best weights seen so far)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}


def run_epochs(
    runtime: StageRuntime,
    stage: str,
    *,
    num_epochs: int,
    train_epoch: Callable[[int, LoopState], dict[str, float]],
    evaluate: Callable[[], tuple[float, dict[str, float]]],
    best_module: nn.Module,
    objects: dict[str, nn.Module | torch.optim.Optimizer],
    eval_every: int = 1,
    patience: int = 0,
) -> LoopState:
    """Train `num_epochs` epochs, evaluating every `eval_every`; keep the best-scoring weights in `best_module`.

    `train_epoch(epoch, state)` runs one epoch and returns mean losses; `evaluate()` returns (score, metrics) with
    higher scores better. With `patience` > 0 the loop stops after that many evaluations without improvement.
    Checkpoints (`objects`: the stage's models and optimisers, with the RNG states) every
    `runtime.checkpoint_every` epochs, resumes from `runtime.resume_from`. A finished stage needs no checkpoint:
    the run saves its model and marks it done.
    """
    state, best_state = LoopState(), None
    resume = runtime.resume_checkpoint(stage)
    if resume is not None:
        progress, best_state = runtime.checkpoints.load(resume, objects)
        state = LoopState(**progress["loop"])
    if runtime.progress is not None:
        runtime.progress.set_postfix_str(f"{runtime.fold} {stage}")
        runtime.progress.update(state.epoch)

    while state.epoch < num_epochs and not state.stopped:
        epoch = state.epoch
        started = time.perf_counter()
        losses = train_epoch(epoch, state)
        state.epoch += 1
        record = {f"train/{stage}_{key}": value for key, value in losses.items()}
        if state.epoch % eval_every == 0 or state.epoch == num_epochs:
            score, metrics = evaluate()
            record.update({f"eval/{stage}_{key}": value for key, value in metrics.items()})
            if score > state.best_score:
                state.best_score, state.best_epoch = score, state.epoch
                state.evaluations_without_improvement = 0
                best_state = clone_state(best_module)
            else:
                state.evaluations_without_improvement += 1
                state.stopped = patience > 0 and state.evaluations_without_improvement >= patience
        state.history.append({"epoch": state.epoch, **{key.split("/", 1)[1]: v for key, v in record.items()}})
        state.seconds += time.perf_counter() - started
        runtime.log(record, epoch)
        if runtime.progress is not None:
            runtime.progress.update(1)
        periodic = runtime.checkpoint_every > 0 and state.epoch % runtime.checkpoint_every == 0
        if periodic and state.epoch < num_epochs and not state.stopped:
            _save(runtime, stage, state, best_state, objects)

    if runtime.progress is not None:
        runtime.progress.update(max(num_epochs - state.epoch, 0))
    if best_state is not None:
        best_module.load_state_dict(best_state)
    state.stopped = True
    return state


def _save(
    runtime: StageRuntime, stage: str, state: LoopState, best_state: dict | None, objects: dict
) -> None:
    if runtime.checkpoints is None:
        return
    progress = {"fold": runtime.fold, "fold_index": runtime.fold_index, "stage": stage, "loop": asdict(state)}
    runtime.checkpoints.save(progress, objects, best_state)
