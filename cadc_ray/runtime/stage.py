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
``ray.train.report``, data-parallel wrapping) or in a plain process (:func:`local_environment`: rank
0 of 1, reports collected in a list). The second is how tests run every method's stages
on tiny data without Ray; the numbers are the same in both, by construction.
"""

from __future__ import annotations

import copy
import logging
import resource
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from cadc_ray.config import ExperimentConfig, from_dict, to_dict
from cadc_ray.console import StageProgress
from cadc_ray.data.pairs import InteractionCounts
from cadc_ray.runtime.checkpoint import (
    FORMAT_VERSION,
    capture_rng_state,
    check_resumable,
    software_versions,
)
from cadc_ray.runtime.metrics import StageGauges
from cadc_ray.runtime.worker import (
    EpochTimer,
    WorkerInfo,
    all_reduce_max,
    all_reduce_sums,
    derive_seed,
    epoch_batches,
    reseed_global_rng,
    seeded_generator,
)

logger = logging.getLogger(__name__)

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
"""One epoch of this rank's ``(users (b,), items (b,))`` positive batches."""


class TrainingRows(Protocol):
    """A stage's positives as one rank sees them, one epoch at a time."""

    def epoch_batches(
        self, seed: int, epoch: int, global_batch_size: int, worker: WorkerInfo
    ) -> Batches:
        """This rank's batches of ``epoch`` (the same number of batches on every rank)."""
        ...

    def rows_last_epoch(self, worker: WorkerInfo) -> int:
        """Rows this rank trained on in the epoch last iterated."""
        ...


class InMemoryRows:
    """Every rank holds all ``(N,)`` rows; epoch ``e`` is the ``(seed, "order", e)``
    permutation, global batch ``k`` split across ranks (``runtime.worker.epoch_batches``):
    the same positives per step for any worker count, and a bit-exact resume."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor) -> None:
        if users.shape != items.shape or users.dim() != 1:
            raise ValueError(f"users {tuple(users.shape)} and items {tuple(items.shape)} differ")
        self.users, self.items = users, items
        self.num_rows = int(users.numel())

    def epoch_batches(
        self, seed: int, epoch: int, global_batch_size: int, worker: WorkerInfo
    ) -> Batches:
        if self.num_rows < worker.world_size:
            raise ValueError(f"{self.num_rows} training rows for {worker.world_size} workers")
        for rows in epoch_batches(self.num_rows, global_batch_size, seed, epoch, worker):
            # index_select, not ``t[rows]``: the same rows, 1.4-3.6x faster on a CPU (an
            # ML-1M MF epoch's 60 batches of 8,192: 2.0-7.0 ms against 5.6-23.3 ms, 6 runs).
            yield self.users.index_select(0, rows), self.items.index_select(0, rows)

    def rows_last_epoch(self, worker: WorkerInfo) -> int:
        return self.num_rows // worker.world_size  # epoch_batches' share per rank


OpenEpoch = Callable[[int, int], Iterable[Mapping[str, torch.Tensor]]]
"""``open_epoch(batch_rows, shuffle_seed)`` -> one pass over this rank's shard in batches of
``{"user_id": (b,), "item_id": (b,)}`` tensors, shuffled locally with ``shuffle_seed``."""


class StreamedRows:
    """This rank's own shard, streamed again every epoch (``open_epoch``; in a Train worker
    Ray Data's ``iter_torch_batches`` over ``get_dataset_shard``): memory is bounded by the
    batch, the shuffle buffer and the model, not by the rows.

    Batches hold ``global_batch_size // world_size`` rows per rank. The shards must have equal
    row counts (Ray Data's ``streaming_split(equal=True)``) so every rank steps equally often.
    """

    def __init__(self, open_epoch: OpenEpoch) -> None:
        self.open_epoch = open_epoch
        self._rows = 0

    def epoch_batches(
        self, seed: int, epoch: int, global_batch_size: int, worker: WorkerInfo
    ) -> Batches:
        batch_rows = max(global_batch_size // worker.world_size, 1)
        shuffle_seed = derive_seed(seed, "order", epoch, worker.rank)
        self._rows = 0
        for batch in self.open_epoch(batch_rows, shuffle_seed):
            users, items = batch["user_id"], batch["item_id"]
            self._rows += int(users.numel())
            yield users.to(worker.device, torch.int64), items.to(worker.device, torch.int64)

    def rows_last_epoch(self, worker: WorkerInfo) -> int:
        return self._rows


@dataclass(frozen=True)
class TrainingData:
    """A stage's training input: the rows (held or streamed) and their counts."""

    rows: TrainingRows
    counts: InteractionCounts

    @classmethod
    def in_memory(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        num_users: int,
        num_items: int,
        device: torch.device | None = None,
    ) -> TrainingData:
        """``users (N,)`` / ``items (N,)`` held on ``device`` (default CPU)."""
        device = device or torch.device("cpu")
        return cls(
            rows=InMemoryRows(
                torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64)).to(device),
                torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64)).to(device),
            ),
            counts=InteractionCounts.of(users, items, num_users, num_items),
        )


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
    # Wraps the model for data-parallel training (``training.data_parallel.DataParallel``
    # in a Train worker group of 2+ workers).
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = _same_model
    gauges: StageGauges | None = None  # rank 0 under Ray with metrics on; else None


EnvironmentHook = Callable[[StageEnvironment], StageEnvironment]
"""Adapts a Train worker's stage environment before the stage runs (``runtime.joint``: where
the stage resumes from, what its checkpoints carry)."""


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

    def console_detail(self, epoch: int) -> str:
        """Validation text for 1-based ``epoch``'s console line ("" for none)."""
        ...

    def gauge_value(self) -> float | None:
        """The validation HR@10 gauge's value, or None."""
        ...


VAL_PREFIX = "val_"
BEST_PREFIX = "best_val_"


def reported_metric(metric: str) -> str:
    """Name of a validation metric in the per-epoch reports: ``hr@10`` -> ``val_hr@10``."""
    return VAL_PREFIX + metric


def rank_sliced_ranking(
    score_users: Callable[[torch.Tensor], torch.Tensor],
    users: np.ndarray,
    heldout_items: np.ndarray,
    known: Any,
    ks: tuple[int, ...],
    user_batch_size: int,
    worker: WorkerInfo,
    extra_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Full ranking of ``users`` split over the ranks: each scores its slice
    (``rank::world_size``), the hit and NDCG sums are all-reduced, so every rank gets the
    same fractions and takes the same early-stopping decision."""
    from cadc_ray.evaluation import FullRankingSums, full_ranking_sums

    rank_slice = slice(worker.rank, None, worker.world_size)
    mine = users[rank_slice]
    if mine.size:
        sums = full_ranking_sums(
            score_users,
            mine,
            heldout_items[rank_slice],
            known,
            ks,
            user_batch_size,
            extra_mask_items=None if extra_mask is None else extra_mask[rank_slice],
            device=worker.device,
        )
    else:
        sums = FullRankingSums(
            ks=ks, hit_sums=dict.fromkeys(ks, 0.0), ndcg_sums=dict.fromkeys(ks, 0.0)
        )
    total = all_reduce_sums(sums.to_tensor().tolist(), worker)
    return FullRankingSums.from_tensor(ks, torch.tensor(total, dtype=torch.float64)).metrics()


class EpochSelection:
    """Which epoch a stage hands on, chosen by validation (METHOD 1.5), in both stages.

    Validates every ``eval_every`` epochs and after the configured last one; keeps a copy of
    the state (``snapshot()``) of the best value of ``metric`` so far (ties keep the earlier
    epoch) and stops after ``patience`` validations without a gain (0: never). Its reports
    are ``evaluated``, ``best_epoch`` (0: none yet, or the state before any step),
    ``val_<metric>`` of the last validation and ``best_val_<metric>``.
    """

    def __init__(
        self,
        *,
        patience: int,
        eval_every: int,
        epochs: int,
        metric: str,
        validate: Callable[[], dict[str, float]],
        snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        from cadc_ray.training.early_stopping import EarlyStopping

        if eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {eval_every}")
        self.stopper = EarlyStopping(patience, mode="max")
        self.eval_every, self.epochs, self.metric = eval_every, epochs, metric
        self.validate, self.snapshot = validate, snapshot
        self.best_state: dict[str, Any] | None = None
        self.best_val: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.last_epoch: int | None = None  # when last_val was measured (0: before any step)

    @property
    def best_epoch(self) -> int:
        return self.stopper.best_epoch or 0

    @property
    def should_stop(self) -> bool:
        return bool(self.stopper.should_stop)

    def record(self, epochs_done: int) -> None:
        """Validates the state after ``epochs_done`` epochs (0: before any step)."""
        self.last_val, self.last_epoch = self.validate(), epochs_done
        if self.stopper.update(epochs_done, self.last_val[self.metric]):
            self.best_val = dict(self.last_val)
            self.best_state = copy.deepcopy(self.snapshot())

    def after_epoch(self, epoch: int) -> dict[str, Any]:
        """Validation after 0-based ``epoch`` when it is due -> the epoch's report entries."""
        evaluated = (epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs
        if evaluated:
            self.record(epoch + 1)
        metrics: dict[str, Any] = {"evaluated": evaluated, "best_epoch": self.best_epoch}
        metrics.update({reported_metric(name): value for name, value in self.last_val.items()})
        metrics.update({BEST_PREFIX + name: value for name, value in self.best_val.items()})
        return metrics

    def console_detail(self, epoch: int) -> str:
        """The epoch line's validation part after 1-based ``epoch``: "" before the first
        validation; a value measured at an earlier epoch says which."""
        metric, measured_at = self.metric, self.last_epoch
        if measured_at is None or metric not in self.last_val:
            return ""
        when = "" if measured_at == epoch else f" at epoch {measured_at}"
        return (
            f"val {metric} {self.last_val[metric]:.4f}{when} (best "
            f"{self.best_val[metric]:.4f} at epoch {self.best_epoch})"
        )

    def state(self) -> dict[str, Any]:
        return {
            "early_stopping": {
                "best_value": self.stopper.best_value,
                "best_epoch": self.stopper.best_epoch,
                "epochs_without_improvement": self.stopper.epochs_without_improvement,
            },
            "best_model": self.best_state if self.best_state is not None else {},
            "best_val": self.best_val,
            "last_val": self.last_val,
            "last_val_epoch": self.last_epoch,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        stopping = state["early_stopping"]
        self.stopper.best_value = stopping["best_value"]
        self.stopper.best_epoch = stopping["best_epoch"]
        self.stopper.epochs_without_improvement = stopping["epochs_without_improvement"]
        self.best_state = state["best_model"]
        self.best_val = dict(state["best_val"])
        self.last_val = dict(state["last_val"])
        # Absent from checkpoints written before it: the line then waits for a validation.
        self.last_epoch = state.get("last_val_epoch")


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
    rows: TrainingRows,
) -> StageRun:
    """Runs ``body``'s epochs over this rank's ``rows``, resuming from the environment's
    checkpoint when it has one.

    ``config`` is the experiment's (checkpoints hold it; a resume must match it).
    """
    config_dict = to_dict(config)
    seed, batch_size = body.seed, body.batch_size
    worker = environment.worker
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
        batches = rows.epoch_batches(seed, epoch, batch_size, worker)
        with timer:
            loss = body.train_epoch(epoch, batches, generator)
        loop_seconds += timer.last_seconds
        rows_per_rank = rows.rows_last_epoch(worker)
        loss_sum, rows_seen = all_reduce_sums([loss * rows_per_rank, rows_per_rank], worker)
        if rows_seen == 0:
            raise ValueError(f"{body.stage} epoch {epoch + 1} had no training rows")
        samples_per_second = rows_seen / max(timer.last_seconds, 1e-9)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_sum / rows_seen,
            "samples_per_second": samples_per_second,
            "epoch_seconds": timer.last_seconds,
            "train_loop_seconds": loop_seconds,
            # The largest worker's peak memory: what a worker's memory must hold.
            "peak_rss_mib": all_reduce_max([peak_rss_mib()], worker)[0],
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
                progress.line(
                    epoch + 1, metrics["loss"], samples_per_second, body.console_detail(epoch + 1)
                )
            )
        environment.report(metrics, state, epoch + 1)
        if body.should_stop:
            early_stopped = epoch + 1 < body.epochs
            break
    return StageRun(history=history, loop_seconds=loop_seconds, early_stopped=early_stopped)


def train_environment(
    stage: str, loop_config: dict[str, Any], checkpoint_prefix: str = ""
) -> StageEnvironment:
    """The environment of a Ray Train worker (call inside ``train_loop_per_worker``).

    Rank, world size and device come from Train; a restarted run resumes from
    ``ray.train.get_checkpoint()``; reports go through ``ray.train.report`` (local mode:
    checkpoints under ``loop_config["local_checkpoint_root"]``), checkpoints named
    ``<checkpoint_prefix>epoch_XXXXXX``; the model goes to the worker's device
    (``runtime.device.prepare_model``: ``DataParallel`` for more than one worker); rank 0 sets the
    stage's gauges.
    """
    from cadc_ray.runtime.device import prepare_model
    from cadc_ray.runtime.metrics import stage_gauges
    from cadc_ray.runtime.worker import (
        current_worker,
        report_epoch,
        restore_from_train_checkpoint,
    )

    worker = current_worker()
    checkpoint_root = loop_config["local_checkpoint_root"]

    def report(metrics: dict[str, Any], state: dict[str, Any] | None, epoch: int) -> None:
        report_epoch(metrics, state, worker, epoch, checkpoint_root, checkpoint_prefix)

    return StageEnvironment(
        worker=worker,
        report=report,
        restore=restore_from_train_checkpoint,
        wrap_model=lambda model: prepare_model(model, worker.device, worker.is_distributed),
        gauges=stage_gauges(stage, loop_config["run_name"]) if worker.rank == 0 else None,
    )


def start_worker_stage(
    stage: str, loop_config: dict[str, Any], checkpoint_prefix: str = ""
) -> tuple[ExperimentConfig, StageEnvironment]:
    """What every ``train_loop_per_worker`` starts a stage with: Train's console lines
    quieted, the config carried (as a plain dict) through ``train_loop_config``, the torch
    threads it asks for, the host allocator set for training
    (``runtime.device.tune_cpu_allocator``), and this worker's :func:`train_environment`.
    Calling it again for a second stage in the same worker is safe: each step is idempotent."""
    from cadc_ray.console import quiet_train_worker
    from cadc_ray.runtime.device import tune_cpu_allocator

    quiet_train_worker()
    config = from_dict(ExperimentConfig, loop_config["config"], "<train_loop_config>")
    torch.set_num_threads(config.resources.torch_threads)
    tune_cpu_allocator()  # steps reuse freed host memory instead of faulting in new pages
    return config, train_environment(stage, loop_config, checkpoint_prefix)
