"""The set-up `train.py` and the study share: the accelerator and logging, the output folder (continue, replace or
refuse a previous run), and the feature stage; and the thread limits the small feature-space models train under,
restored when the run ends."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from threadpoolctl import threadpool_limits
from transformers.utils import logging as hf_logging

from mise.hub.run_card import git_commit

from .arguments import DataArguments, MiseTrainingArguments, ModelArguments
from .checkpoint import prepare_output_dir
from .features import PreparedCorpus, prepare_features
from .pipeline import PROCESS_GROUP_KWARGS


@dataclass
class Run:
    """One training run or study: its arguments, accelerator, output folder and prepared features."""

    data_args: DataArguments
    model_args: ModelArguments
    training_args: MiseTrainingArguments
    accelerator: Accelerator
    output_dir: Path
    config_hash: str
    resuming: bool
    prepared: PreparedCorpus
    commit: str  # the code's git commit when the run started (`mise.hub.run_card.git_commit`)


def start_run(
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: MiseTrainingArguments,
    config_hash: str,
    markers: Sequence[str],
    files: Sequence[str],
    what: str = "run",
    tracker_config: dict | None = None,
    resume_checks_hash: bool = True,
) -> Run:
    """Accelerator (mixed precision, gradient accumulation, and the tracker with `tracker_config` as its
    hyper-parameters when that is given and `report_to` asks for one), logging, the output folder (`markers` mean it holds a `what`; `files` are what an overwrite deletes; a
    resumed one must have `config_hash` in its `run_info.json` when `resume_checks_hash`) and the feature stage
    (usable clips, rejected files -> OUT/rejected.csv, frozen features through the cache). The code's commit is
    read first, so that what the run reports is the code it ran, whatever changes in the checkout meanwhile."""
    commit = git_commit(Path(__file__).resolve().parent)
    output_dir = Path(training_args.output_dir)
    accelerator = Accelerator(
        log_with=None
        if tracker_config is None or training_args.report_to == "none"
        else training_args.report_to,
        project_dir=str(output_dir),
        mixed_precision=training_args.mixed_precision,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        kwargs_handlers=[PROCESS_GROUP_KWARGS],
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint otherwise
    logging.getLogger("mise").setLevel(logging.INFO)
    hf_logging.disable_progress_bar()  # save/load bars of every fold's models: one progress bar is enough
    hash_ = config_hash if resume_checks_hash else None
    resuming = prepare_output_dir(output_dir, training_args, accelerator, markers, files, hash_, what)
    if accelerator.log_with:  # TensorBoard hparams take scalars and strings only
        values = {
            k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
            for k, v in tracker_config.items()
        }
        accelerator.init_trackers("mise", config=values)
    prepared = prepare_features(data_args, model_args, output_dir, accelerator)
    return Run(
        data_args, model_args, training_args, accelerator, output_dir, config_hash, resuming, prepared, commit
    )


@contextmanager
def training_threads(threads: int) -> Iterator[None]:
    """torch and BLAS on `threads` threads while the small feature-space models train (0: the libraries'
    defaults), the previous limits restored on exit."""
    previous = torch.get_num_threads()
    with threadpool_limits(threads or None):
        if threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)
