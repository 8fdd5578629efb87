"""The engine every stage runs on: whole-tensor batches, the optimiser step, the supervised fit of stages 1 and 3,
mix-up, stage summaries and the shared epoch loop (evaluation, early stopping, NaN guard, checkpoints, resume,
logging).

A stage trains on this process alone (a run spreads whole folds over its processes): its batches are slices of
whole tensors (`Batches`), and `StageRuntime` does what `accelerator.prepare` would do for one process: autocast
under mixed precision, gradient accumulation, clipping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.nn import functional as F

from mise.metrics import uar
from modeling_mise.layers import reset_parameters, use_random_stream

from .arguments import MiseTrainingArguments
from .checkpoint import CheckpointManager, ResumePoint

Tensor = torch.Tensor


class NonFiniteLossError(FloatingPointError):
    """A NaN/Inf loss; the message names fold, stage, epoch and step and the last good checkpoint."""


def stage_seed(seed: int, fold_index: int, stage: int) -> int:
    """The seed of one stage of one fold (and run seed): every draw of the stage comes from streams derived from
    it (`epoch_stream`), none from the process' global generator, so stages can be reordered, resumed or
    trained side by side without changing each other's draws."""
    return int(np.random.SeedSequence([seed, fold_index, stage]).generate_state(1, np.uint32)[0])  # 32 bits


def _stream_seed(seed: int, epoch: int, lane: int) -> int:
    state = np.random.SeedSequence([seed, epoch + 1, lane]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def epoch_stream(seed: int, epoch: int) -> torch.Generator:
    """The random stream of one epoch of the stage seeded by `seed`: batch order, dropout masks, GAN noise,
    text-code dropout, mix-up and generated rows all draw from it."""
    return torch.Generator().manual_seed(_stream_seed(seed, epoch, 1))


@contextmanager
def library_stream(seed: int, epoch: int):
    """The global stream seeded from epoch `epoch` of the stage seeded by `seed`, restored on exit: what a library
    draws from it meanwhile (a peft adapter's initial weights or dropout) is reproducible and moves no other draw."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_stream_seed(seed, epoch, 2))
        yield


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


def mean_state(mean: dict | None, state: dict, count: int) -> dict:
    """The running mean of `count` states, `state` the newest (floating tensors; the others are the newest's)."""
    if mean is None:
        return state
    return {
        key: mean[key] + (value - mean[key]) / count if value.is_floating_point() else value
        for key, value in state.items()
    }


def run_epochs(
    runtime: StageRuntime,
    stage: str,
    *,
    num_epochs: int,
    train_epoch: Callable[[int, LoopState, torch.Generator], dict[str, float]],
    evaluate: Callable[[], tuple[float, dict[str, float]]] | None,
    best_module: nn.Module,
    objects: dict[str, nn.Module | torch.optim.Optimizer],
    seed: int,
    eval_every: int = 1,
    patience: int = 0,
    average_from: int | None = None,
) -> LoopState:
    """Train `num_epochs` epochs, evaluating every `eval_every`; keep the best-scoring weights in `best_module`.

    `train_epoch(epoch, state, generator)` runs one epoch, drawing everything random from `generator` (the epoch's
    stream of the stage seeded by `seed`, `epoch_stream`), and returns mean losses; a draw some library makes from
    the global stream meanwhile is seeded from it too and restored after the epoch, so nothing leaks in or out.
    `evaluate()` returns (score, metrics) with higher scores better. With `patience` > 0 the loop stops after that many evaluations without improvement.
    Without `evaluate` (a refit: nothing left to select on) every epoch runs and the last weights are kept.
    With `average_from` every epoch runs and the mean of the weights after epochs `average_from + 1 ...
    num_epochs` is kept (stochastic weight averaging); `evaluate` is still logged.
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
        with library_stream(seed, epoch):
            losses = train_epoch(epoch, state, epoch_stream(seed, epoch))
        state.epoch += 1
        record = {f"train/{stage}_{key}": value for key, value in losses.items()}
        if average_from is not None and state.epoch > average_from:  # the running mean is the kept state
            best_state = mean_state(best_state, clone_state(best_module), state.epoch - average_from)
            state.best_epoch = state.epoch
        if evaluate is None:
            state.best_epoch = state.epoch
        elif state.epoch % eval_every == 0 or state.epoch == num_epochs:
            score, metrics = evaluate()
            record.update({f"eval/{stage}_{key}": value for key, value in metrics.items()})
            if average_from is not None:
                state.best_score = score
            elif score > state.best_score:
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
            _save_checkpoint(runtime, stage, state, best_state, objects)

    if runtime.progress is not None:
        runtime.progress.update(max(num_epochs - state.epoch, 0))
    if best_state is not None:
        best_module.load_state_dict(best_state)
        if average_from is not None and evaluate is not None:  # the kept weights' own validation score
            state.best_score = evaluate()[0]
    state.stopped = True
    return state


def _save_checkpoint(
    runtime: StageRuntime, stage: str, state: LoopState, best_state: dict | None, objects: dict
) -> None:
    if runtime.checkpoints is None:
        return
    progress = {"fold": runtime.fold, "fold_index": runtime.fold_index, "stage": stage, "loop": asdict(state)}
    runtime.checkpoints.save(progress, objects, best_state)


# ---------------------------------------------------------------------------------------------- batches
class Batches:
    """Shuffled equal-sized batches of row-aligned tensors, sliced from the whole tensors (no DataLoader).

    About `batch_size` rows each: `round(N / batch_size)` batches' worth, so every batch has the same size and at
    most a few rows an epoch are left out. An epoch's order is a permutation drawn from the epoch's stream.
    """

    def __init__(
        self,
        tensors: tuple[Tensor, ...],
        batch_size: int,
        rows: int | None = None,
        class_balanced: bool = False,
        min_batches: int = 1,
    ) -> None:
        """`rows`: the row count when `tensors` are set later, epoch by epoch (stage 3's real + generated rows).
        `class_balanced`: an epoch's rows are drawn with replacement, each with probability inversely proportional
        to the count of its class (the labels are `tensors[1]`), instead of a permutation. `min_batches`: at least
        this many batches an epoch (smaller than `batch_size` when the rows are few; at most one per row)."""
        self.tensors = tensors
        self.class_balanced = class_balanced
        self.rows = len(tensors[0]) if rows is None else rows
        count = min(self.rows, max(min_batches, round(self.rows / batch_size)))
        self.size = max(1, self.rows // max(1, count))

    def __len__(self) -> int:
        return self.rows // self.size

    def epoch(self, generator: torch.Generator) -> list[tuple[Tensor, ...]]:
        """The batches of one epoch, in the order `generator` draws."""
        if len(self.tensors[0]) != self.rows:
            raise ValueError(f"Batches: {len(self.tensors[0])} rows, expected {self.rows}")
        if self.class_balanced:
            labels = self.tensors[1].long().cpu()
            weights = 1.0 / torch.bincount(labels).double()[labels]
            order = torch.multinomial(weights, self.rows, replacement=True, generator=generator)
        else:
            order = torch.randperm(self.rows, generator=generator)
        count = len(self)
        return [
            tuple(tensor[index] for tensor in self.tensors)
            for index in order[: count * self.size].view(count, self.size)
        ]


def epoch_mean(totals: Tensor, batches: int) -> Tensor:
    """Mean per-batch losses of an epoch."""
    return totals.cpu() / max(batches, 1)


@torch.no_grad()
def predict_in_chunks(
    forward: Callable[[Tensor], Tensor], features: Tensor, batch_size: int = 4096
) -> Tensor:
    """`forward` over the rows of `features`, `batch_size` rows at a time."""
    if len(features) <= batch_size:  # one chunk: no copy
        return forward(features)
    return torch.cat([forward(chunk) for chunk in features.split(batch_size)])


def training_step(
    runtime: StageRuntime,
    loss_of_batch: Callable[[], Tensor],
    optimizer: torch.optim.Optimizer,
    parameters: Sequence[nn.Parameter],
    where: tuple[str, int, int],
    frozen: Sequence[nn.Parameter] = (),
) -> Tensor:
    """One training step of one player: the loss under autocast, the NaN guard, backward and (at the end of an
    accumulation window) the optimiser step. `where` = (stage, epoch, step) names a non-finite loss; the
    `frozen` parameters (the other player's) take no gradient meanwhile. Returns the detached loss (float32)."""
    for parameter in frozen:
        parameter.requires_grad_(False)
    with runtime.autocast():
        loss = loss_of_batch()
    runtime.check_finite(loss, *where)
    runtime.backward(loss)
    runtime.optimizer_step(optimizer, list(parameters))
    for parameter in frozen:
        parameter.requires_grad_(True)
    return loss.detach().float()


def initialised(build: Callable[[], nn.Module], seed: int, part: int = 0) -> nn.Module:
    """`build()` with its initial weights drawn from a stream of the stage seeded by `seed` (`part`: one stream
    per module a stage builds)."""
    with library_stream(seed, -1):
        model = build()
    reset_parameters(model, torch.Generator().manual_seed(_stream_seed(seed, -1, 3 + part)))
    return model


def selection_score(logits: Tensor, labels: Tensor, metric: str = "uar") -> tuple[float, dict[str, float]]:
    """Validation score, higher is better: UAR (`mise.metrics.uar`, ties broken by the lower loss) or the negated
    validation cross-entropy (`metric="loss"`, smoother on a few validation clips)."""
    val_uar = uar(labels.numpy(), logits.argmax(-1).numpy())
    loss = float(F.cross_entropy(logits, labels))
    score = -loss if metric == "loss" else val_uar - 1e-3 * loss
    return score, {"val_uar": val_uar, "val_loss": loss}


def stage_summary(state: LoopState) -> dict:
    """What a finished stage reports: epochs run, the chosen epoch and its score (None when nothing was scored,
    as in a refit), steps, seconds."""
    return {
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "best_score": state.best_score if math.isfinite(state.best_score) else None,
        "steps": state.step,
        "seconds": round(state.seconds, 3),
    }


# ---------------------------------------------------------------------------------------------- stages 1 and 3
def fit_supervised(
    runtime: StageRuntime,
    stage: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    parameters: list,
    args: MiseTrainingArguments,
    num_epochs: int,
    batch_loss: Callable[[nn.Module, tuple, torch.Generator], Tensor],
    val_logits: Callable[[nn.Module, Tensor], Tensor],
    features_val: Tensor,
    labels_val: Tensor,
    seed: int,
    before_epoch: Callable[[int, torch.Generator], None] | None = None,
) -> tuple[nn.Module, LoopState]:
    """The loop of stages 1 and 3: `batch_loss(model, batch, generator)` per step, early stopping on
    `val_logits(model, x)` of the validation speakers (`early_stopping_metric`). `seed` is the stage's: each epoch
    draws its batch order, dropout masks and whatever `before_epoch(epoch, generator)` and `batch_loss` draw from
    that epoch's stream. Returns the best model (eval mode) and the loop state. Without validation rows (a refit)
    it trains `num_epochs` and keeps the last."""
    device = runtime.device
    model.to(device)
    features_val = features_val.to(device)

    def train_epoch(epoch: int, state: LoopState, generator: torch.Generator) -> dict[str, float]:
        if before_epoch is not None:
            before_epoch(epoch, generator)
        model.train()
        use_random_stream(model, generator)
        total = torch.zeros((), device=device)
        epoch_batches = batches.epoch(generator)
        for index, batch in enumerate(epoch_batches):
            runtime.begin_batch(index, len(epoch_batches))
            batch = tuple(tensor.to(device) for tensor in batch)
            where = (stage, epoch, state.step)
            loss = partial(batch_loss, model, batch, generator)
            total += training_step(runtime, loss, optimizer, parameters, where)
            state.step += 1
        use_random_stream(model, None)
        return {"loss": float(epoch_mean(total, len(epoch_batches)))}

    def evaluate() -> tuple[float, dict[str, float]]:
        model.eval()
        with runtime.autocast():
            logits = predict_in_chunks(lambda x: val_logits(model, x).float().cpu(), features_val)
        return selection_score(logits, labels_val, args.early_stopping_metric)

    state = run_epochs(
        runtime,
        stage,
        num_epochs=num_epochs,
        train_epoch=train_epoch,
        evaluate=evaluate if len(features_val) else None,
        best_module=model,
        objects={"model": model, "optimizer": optimizer},
        seed=seed,
        patience=args.early_stopping_patience,
        average_from=num_epochs // 2 if args.weight_averaging else None,
    )
    return model.eval(), state


# ---------------------------------------------------------------------------------------------- mix-up
def _standard_gamma(shape: float, generator: torch.Generator | None) -> float:
    """One draw of Gamma(shape, 1) from ``generator`` (Marsaglia & Tsang 2000)."""
    device = generator.device if generator is not None else torch.device("cpu")
    if shape < 1.0:
        # Gamma(a) = Gamma(a + 1) * U^(1/a)
        u = float(torch.rand((), generator=generator, device=device))
        return _standard_gamma(shape + 1.0, generator) * max(u, 1e-300) ** (1.0 / shape)
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = float(torch.randn((), generator=generator, device=device))
        v = (1.0 + c * x) ** 3
        if v <= 0:
            continue
        u = float(torch.rand((), generator=generator, device=device))
        if math.log(max(u, 1e-300)) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v


def sample_beta(concentration: float, generator: torch.Generator | None = None) -> float:
    """One draw of ``lam ~ Beta(concentration, concentration)`` that honours a seeded ``generator``.

    ``torch.distributions.Beta`` takes no generator, so the two Gamma draws are made here.
    """
    if not concentration > 0:
        raise ValueError(f"concentration: must be > 0, got {concentration}")
    device = generator.device if generator is not None else torch.device("cpu")
    x = _standard_gamma(concentration, generator)
    y = _standard_gamma(concentration, generator)
    if x + y == 0.0:  # both underflowed (tiny concentration): the Beta mass sits at 0 and 1 equally
        return float(torch.rand((), generator=generator, device=device) < 0.5)
    return x / (x + y)


def _soft_labels(labels: Tensor, num_labels: int, dtype: torch.dtype) -> Tensor:
    if labels.dim() == 1:
        if labels.dtype.is_floating_point:
            raise ValueError(f"labels: 1-D labels must be integer class ids, got dtype {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
            raise ValueError(
                f"labels: class ids must lie in [0, {num_labels}), got {int(labels.min())}..{int(labels.max())}"
            )
        return F.one_hot(labels.long(), num_labels).to(dtype)
    if labels.dim() == 2 and labels.shape[1] == num_labels:
        return labels.to(dtype)
    raise ValueError(f"labels: expected shape (B,) or (B, {num_labels}), got {tuple(labels.shape)}")


def mixup(
    features: Tensor,
    labels: Tensor,
    num_labels: int,
    alpha: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mix-up (Zhang et al. 2018) of a batch of features and their (soft) labels: the real rows D sees in stage 2,
    the `mixup` augmentation of stage 3.

    ``lam ~ Beta(alpha, alpha)`` (one per batch) and a random permutation ``perm`` are drawn from
    ``generator``; returns ``lam * x + (1 - lam) * x[perm]`` and the soft labels mixed the same way,
    shape (B, num_labels). ``alpha <= 0`` returns the features unchanged and the labels as soft labels.
    """
    if features.dim() != 2:
        raise ValueError(f"features: expected shape (B, D), got {tuple(features.shape)}")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels: batch size {labels.shape[0]} != features batch size {features.shape[0]}")
    dtype = features.dtype if features.dtype.is_floating_point else torch.float32
    soft = _soft_labels(labels, num_labels, dtype).to(features.device)
    if alpha <= 0 or features.shape[0] < 2:
        return features, soft
    lam = sample_beta(alpha, generator)
    device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(features.shape[0], generator=generator, device=device).to(features.device)
    mixed = lam * features + (1.0 - lam) * features[perm]
    mixed_labels = lam * soft + (1.0 - lam) * soft[perm]
    return mixed, mixed_labels
