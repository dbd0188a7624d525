"""The epoch loop both training stages share, with Ray kept outside it.

A stage is a :class:`StageBody` (what one epoch of MF pretraining or of two-tower training
does, what it validates, what it checkpoints and what it returns) driven by
:func:`run_stage`, which owns everything the two stages have in common:

- resume: the checkpoint of a restarted run is checked against the config
  (``check_resumable``), the body reloads its part, the loop its own (epoch, history,
  seconds spent training);
- the reproducible epoch: the global RNG reseeded from ``(seed, rank, epoch)``, the
  negatives' generator from ``(seed, "negatives", rank, epoch)`` on the batches' device,
  and this rank's slice of the epoch's seeded permutation (``runtime.worker``);
- timing, the loss summed over ranks, the per-epoch metrics, the checkpoint dict (common
  keys plus the body's), the gauges and the one console line per epoch;
- the report, then early stopping when the body asks for it.

Where the loop runs is a :class:`StageEnvironment`: inside a Ray Train worker
(``runtime.worker.train_environment``: Train's rank, checkpoint restore and
``ray.train.report``, DDP wrapping) or in a plain process (:func:`local_environment`: rank
0 of 1, reports collected in a list). The second is how tests run every method's stages
on tiny data without Ray; the numbers are the same in both, by construction.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from cadc_ray.config import ExperimentConfig, to_dict
from cadc_ray.console import StageProgress
from cadc_ray.runtime.checkpoint import FORMAT_VERSION, capture_rng_state, software_versions
from cadc_ray.runtime.metrics import StageGauges
from cadc_ray.runtime.trainer import check_resumable
from cadc_ray.runtime.worker import (
    EpochTimer,
    WorkerInfo,
    all_reduce_sums,
    epoch_batches,
    reseed_global_rng,
    seeded_generator,
)

logger = logging.getLogger(__name__)

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
"""One epoch of this rank's ``(users (b,), items (b,))`` positive batches."""

ReportFn = Callable[[dict[str, Any], "dict[str, Any] | None", int], None]
"""``report(metrics, checkpoint_state_or_None, epoch)``: every rank calls it every epoch."""


def _no_checkpoint() -> dict[str, Any] | None:
    return None


def _same_model(model: torch.nn.Module) -> torch.nn.Module:
    return model


@dataclass
class StageEnvironment:
    """What the loop needs from where it runs (see the module docstring)."""

    worker: WorkerInfo
    report: ReportFn
    restore: Callable[[], dict[str, Any] | None] = _no_checkpoint
    # Wraps the model for data-parallel training (DDP in a Train worker group).
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = _same_model
    gauges: StageGauges | None = None  # rank 0 under Ray with metrics on; else None


@dataclass
class LocalReports:
    """The reports of a :func:`local_environment` run, in order."""

    metrics: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any] | None] = field(default_factory=list)


def local_environment(
    resume_from: dict[str, Any] | None = None,
) -> tuple[StageEnvironment, LocalReports]:
    """A one-process environment (rank 0 of 1, CPU) that keeps every report in memory.

    ``resume_from``: a checkpoint state (e.g. one of ``LocalReports.states``) to restart from.
    """
    reports = LocalReports()

    def report(metrics: dict[str, Any], state: dict[str, Any] | None, epoch: int) -> None:
        reports.metrics.append(dict(metrics))
        # A copy, as a checkpoint on disk would be: state_dict() tensors are the live ones.
        reports.states.append(copy.deepcopy(state))

    environment = StageEnvironment(
        worker=WorkerInfo(rank=0, world_size=1, device=torch.device("cpu")),
        report=report,
        restore=lambda: resume_from,
    )
    return environment, reports


class StageBody(Protocol):
    """One stage's own part of the loop; :func:`run_stage` calls it in this order."""

    stage: str  # "pretrain" | "ttnn": checkpoints name it; resume checks it
    epochs: int  # the configured number of epochs
    batch_size: int  # global: split across ranks
    seed: int  # the stage's seed (runtime.worker.stage_seed): every stream derives from it

    def load_state(self, state: dict[str, Any]) -> None:
        """Restores the body's own entries of a checkpoint :meth:`state` wrote."""

    def before_first_epoch(self) -> None:
        """Runs once on a fresh (not resumed) run, before epoch 1."""

    def train_epoch(self, epoch: int, batches: Batches, generator: torch.Generator) -> float:
        """One epoch over this rank's batches; returns this rank's mean loss."""
        ...

    def after_epoch(self, epoch: int) -> dict[str, Any]:
        """After the epoch's loss is known on every rank: validation etc. -> extra metrics."""
        ...

    @property
    def should_stop(self) -> bool:
        """Early stopping's verdict (checked before an epoch and after its report)."""
        ...

    def state(self) -> dict[str, Any]:
        """The body's checkpoint entries (model, optimizers, ...), rank 0 only."""
        ...

    def console_detail(self) -> str:
        """Validation text for the epoch's console line ("" for none)."""
        ...

    def gauge_value(self) -> float | None:
        """The validation HR@10 gauge's value, or None."""
        ...


@dataclass(frozen=True)
class StageRun:
    """How the loop went: what :func:`run_stage` hands back to the stage."""

    history: list[dict[str, Any]]
    loop_seconds: float  # inside training epochs only (no start-up, no evaluation)
    early_stopped: bool  # stopped by the body before the configured last epoch


def run_stage(
    body: StageBody,
    environment: StageEnvironment,
    config: ExperimentConfig,
    users: torch.Tensor,
    items: torch.Tensor,
) -> StageRun:
    """Runs ``body``'s epochs over the positives ``(users, items)`` (the same ``(N,)`` rows
    on every rank), resuming from the environment's checkpoint when it has one.

    ``config`` is the experiment's (checkpoints hold it; a resume must match it).
    """
    config_dict = to_dict(config)
    seed, batch_size = body.seed, body.batch_size
    worker = environment.worker
    num_rows = int(users.numel())
    if num_rows < worker.world_size:
        raise ValueError(f"{body.stage} data has {num_rows} rows for {worker.world_size} workers")
    start_epoch, history, loop_seconds = 0, [], 0.0
    resumed = environment.restore()
    if resumed is not None:
        check_resumable(resumed, body.stage, config_dict)
        body.load_state(resumed)
        start_epoch = int(resumed["epoch"])
        history = list(resumed["history"])
        loop_seconds = float(resumed["loop_seconds"])
    else:
        body.before_first_epoch()
    timer = EpochTimer()
    progress = StageProgress(body.stage, body.epochs, start_epoch)
    # Resumed after the report of the epoch that stopped it: nothing left to train.
    early_stopped = body.should_stop and start_epoch < body.epochs
    for epoch in range(start_epoch, body.epochs):
        if body.should_stop:
            break
        reseed_global_rng(seed, worker.rank, epoch)
        # Negatives drawn where the batches are: no host-to-device copy per step.
        generator = seeded_generator(seed, "negatives", worker.rank, epoch, device=worker.device)
        batches = (
            (users[rows], items[rows])
            for rows in epoch_batches(num_rows, batch_size, seed, epoch, worker)
        )
        with timer:
            loss = body.train_epoch(epoch, batches, generator)
        loop_seconds += timer.last_seconds
        rows_per_rank = num_rows // worker.world_size  # epoch_batches' share per rank
        loss_sum, rows_seen = all_reduce_sums([loss * rows_per_rank, rows_per_rank], worker)
        samples_per_second = rows_seen / max(timer.last_seconds, 1e-9)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_sum / rows_seen,
            "samples_per_second": samples_per_second,
            "epoch_seconds": timer.last_seconds,
            "train_loop_seconds": loop_seconds,
        }
        metrics.update(body.after_epoch(epoch))
        history.append(metrics)
        state = None
        if worker.rank == 0:
            state = {
                "format_version": FORMAT_VERSION,
                "stage": body.stage,
                "config": config_dict,
                "versions": software_versions(),
                "seed": config.seed,
                "stage_seed": seed,  # what the per-epoch generators derive from
                "epoch": epoch + 1,
                **body.state(),
                "history": history,
                "loop_seconds": loop_seconds,
                "rng": capture_rng_state(),
            }
            if environment.gauges is not None:
                environment.gauges.record_epoch(epoch + 1, samples_per_second, body.gauge_value())
            logger.info(
                progress.line(epoch + 1, metrics["loss"], samples_per_second, body.console_detail())
            )
        environment.report(metrics, state, epoch + 1)
        if body.should_stop:
            early_stopped = epoch + 1 < body.epochs
            break
    return StageRun(history=history, loop_seconds=loop_seconds, early_stopped=early_stopped)


def train_environment(stage: str, loop_config: dict[str, Any]) -> StageEnvironment:
    """The environment of a Ray Train worker (call inside ``train_loop_per_worker``).

    Rank, world size and device come from Train; a restarted run resumes from
    ``ray.train.get_checkpoint()``; reports go through ``ray.train.report`` (local mode:
    checkpoints under ``loop_config["local_checkpoint_root"]``); the model is wrapped by
    ``ray.train.torch.prepare_model`` (DDP for more than one worker); rank 0 sets the
    stage's gauges.
    """
    import ray.train.torch

    from cadc_ray.runtime.metrics import stage_gauges
    from cadc_ray.runtime.worker import (
        current_worker,
        report_epoch,
        restore_from_train_checkpoint,
    )

    worker = current_worker()
    checkpoint_root = loop_config["local_checkpoint_root"]

    def report(metrics: dict[str, Any], state: dict[str, Any] | None, epoch: int) -> None:
        report_epoch(metrics, state, worker, epoch, checkpoint_root)

    return StageEnvironment(
        worker=worker,
        report=report,
        restore=restore_from_train_checkpoint,
        wrap_model=ray.train.torch.prepare_model,
        gauges=stage_gauges(stage, loop_config["run_name"]) if worker.rank == 0 else None,
    )
