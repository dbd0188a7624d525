"""Helpers shared by the Train worker loops of both stages (run inside Train workers).

Design choices, all made so that a run restarted from epoch ``k``'s checkpoint ends
with the same metrics as an uninterrupted run of the same seed (by construction):

- **Data in memory, identical on every rank** (``resources.ingest: memory``). Each
  worker reads the training Parquet folder itself (:func:`read_rows`, an absolute path on
  the shared filesystem) sorted by ``row_index``, so every rank holds the same array.
  Epochs then iterate in-memory tensors, much faster than re-streaming MovieLens-size
  data every epoch. Data that does not fit a worker's memory streams instead
  (``runtime.ingest``, ``stream``), giving up bit-exact resume with 2+ workers.
- **Deterministic epoch order.** Epoch ``e``'s permutation comes from
  ``(seed, "order", e)``, the same on all ranks; global batch ``k`` is
  ``perm[k*B:(k+1)*B]`` and rank ``r`` trains on its ``r``-th ``B/W`` slice, so 1 and
  ``W`` workers see the same positives per step (``train.batch_size`` is global).
  Every rank runs the same number of steps (each step's collectives would hang otherwise).
- **Per-epoch generators.** Negatives and any other sampling use a generator seeded
  from ``(seed, stream, rank, epoch)``; the global torch RNG (dropout) is reseeded
  at every epoch start the same way.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cadc_ray.runtime.checkpoint import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

LOCAL_CHECKPOINTS_TO_KEEP = 2

STREAM_CODES = {"init": 1, "order": 2, "negatives": 3, "global": 4, "rebalance": 5}
"""Named random streams; the code enters the seed so streams never share a sequence."""


@dataclass(frozen=True)
class WorkerInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1 and torch.distributed.is_initialized()


def current_worker() -> WorkerInfo:
    """Rank, world size and device of this Train worker (local mode: 0, 1, cpu)."""
    import ray.train

    from cadc_ray.runtime.device import worker_device

    context = ray.train.get_context()
    # The assigned GPU (made current before any collective), or the CPU: with a warning
    # when the worker holds a GPU resource its torch cannot use.
    device = worker_device()
    return WorkerInfo(
        rank=int(context.get_world_rank()),
        world_size=int(context.get_world_size()),
        device=device,
    )


def derive_seed(seed: int, stream: str, *parts: int) -> int:
    """A 63-bit seed for ``(seed, stream, *parts)``, e.g. ``(seed, "negatives", rank, epoch)``."""
    sequence = np.random.SeedSequence([seed, STREAM_CODES[stream], *parts])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def stage_seed(experiment_seed: int, stage_seed_value: int) -> int:
    """One seed per stage from the experiment's ``seed`` and the stage's own ``seed``."""
    sequence = np.random.SeedSequence([experiment_seed, stage_seed_value])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def seeded_generator(
    seed: int, stream: str, *parts: int, device: torch.device | None = None
) -> torch.Generator:
    generator = torch.Generator(device=device or "cpu")
    generator.manual_seed(derive_seed(seed, stream, *parts))
    return generator


def read_rows(path: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The Parquet file or folder ``path`` -> numpy columns sorted by ``row_index``, the
    same on every rank whatever the order of the shards and of the rows in them."""
    import pyarrow.parquet as pq

    from cadc_ray.arrow_pool import system_arrow_pool

    needed = list(dict.fromkeys([*columns, "row_index"]))
    with system_arrow_pool():
        table = pq.read_table(path, columns=needed)
    local = {name: table.column(name).to_numpy() for name in needed}
    order = np.argsort(local["row_index"], kind="stable")
    return {name: values[order] for name, values in local.items()}


def epoch_batches(
    num_rows: int, global_batch_size: int, seed: int, epoch: int, worker: WorkerInfo
) -> Iterator[torch.Tensor]:
    """Row indices (b,) of this rank's batches for ``epoch``; same count on every rank.

    At most ``world_size - 1`` rows (a different few each epoch) are left out so that
    the last global batch splits evenly across ranks.
    """
    world = worker.world_size
    per_rank = max(global_batch_size // world, 1)
    step = per_rank * world
    order = torch.randperm(num_rows, generator=seeded_generator(seed, "order", epoch))
    usable = (num_rows // world) * world
    for start in range(0, usable, step):
        chunk = order[start : min(start + step, usable)]
        size = chunk.numel() // world
        yield chunk[worker.rank * size : (worker.rank + 1) * size]


def reseed_global_rng(seed: int, rank: int, epoch: int) -> None:
    """Dropout and any other global-RNG use: a function of (seed, rank, epoch) only."""
    torch.manual_seed(derive_seed(seed, "global", rank, epoch))


def all_reduce_sums(values: Sequence[float], worker: WorkerInfo) -> list[float]:
    """Element-wise sum over ranks (float64 on CPU; a no-op for one worker)."""
    return _all_reduce(values, worker, "sum")


def all_reduce_max(values: Sequence[float], worker: WorkerInfo) -> list[float]:
    """Element-wise maximum over ranks (float64; a no-op for one worker)."""
    return _all_reduce(values, worker, "max")


def _all_reduce(values: Sequence[float], worker: WorkerInfo, op: str) -> list[float]:
    if not worker.is_distributed:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        tensor = tensor.to(worker.device)
    reduce_op = torch.distributed.ReduceOp.SUM if op == "sum" else torch.distributed.ReduceOp.MAX
    torch.distributed.all_reduce(tensor, op=reduce_op)
    return [float(v) for v in tensor.cpu().tolist()]


def restore_from_train_checkpoint() -> dict[str, Any] | None:
    """The state of ``ray.train.get_checkpoint()`` (a resumed run), else None."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        state = load_checkpoint(folder)
    logger.info("resuming from checkpoint after epoch %d", state["epoch"])
    return state


_EPOCH_LISTENERS: list[Callable[[dict[str, Any]], None]] = []
"""Called with each rank-0 epoch report in this process (see :func:`epoch_listener`)."""


@contextmanager
def epoch_listener(listener: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Registers ``listener`` for the epoch reports of Train runs in this process.

    Train V2's local mode (``num_workers=0``) runs the loop in-process and has no
    RunConfig callbacks; this is how a sweep still sees each epoch there (the sweep's
    local-mode task streams them to its Tune trial). Worker groups run elsewhere and
    use ``SweepReportCallback`` instead.
    """
    _EPOCH_LISTENERS.append(listener)
    try:
        yield
    finally:
        _EPOCH_LISTENERS.remove(listener)


def report_epoch(
    metrics: Mapping[str, Any],
    state: dict[str, Any] | None,
    worker: WorkerInfo,
    epoch: int,
    local_checkpoint_root: str | None,
    checkpoint_prefix: str = "",
) -> None:
    """``ray.train.report`` from every rank (a barrier); rank 0 attaches the checkpoint.

    ``state`` is the checkpoint dict (rank 0 only; None elsewhere), saved as
    ``<checkpoint_prefix>epoch_XXXXXX`` (the prefix names the stage where one Train run
    trains two, ``runtime.joint``). In local mode (``num_workers=0``) Train persists nothing,
    so the checkpoint is written under ``local_checkpoint_root`` when a root is given (the
    latest ``LOCAL_CHECKPOINTS_TO_KEEP`` kept, as Train keeps its own).
    """
    import ray.train

    clean = dict(metrics)
    if worker.rank == 0:
        for listener in list(_EPOCH_LISTENERS):
            listener(dict(clean))
    if worker.rank != 0 or state is None:
        ray.train.report(clean, checkpoint=None)
        return
    name = f"{checkpoint_prefix}epoch_{epoch:06d}"
    if local_checkpoint_root is not None:
        root = Path(local_checkpoint_root)
        save_checkpoint(root / name, state)
        kept = sorted(root.glob(f"{checkpoint_prefix}epoch_*"))
        for older in kept[:-LOCAL_CHECKPOINTS_TO_KEEP]:
            _remove_tree(older)
        ray.train.report(clean, checkpoint=ray.train.Checkpoint.from_directory(root / name))
        return
    with tempfile.TemporaryDirectory(prefix="cadc-ckpt-") as folder:
        save_checkpoint(folder, state)
        ray.train.report(
            clean,
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name=name,
        )


def _remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


class EpochTimer:
    """Seconds spent inside training epochs (excludes worker start-up and evaluation)."""

    def __init__(self) -> None:
        self.total_seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> EpochTimer:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.last_seconds = time.perf_counter() - self._started
        self.total_seconds += self.last_seconds
