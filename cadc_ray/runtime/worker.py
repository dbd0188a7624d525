"""Helpers shared by the Train worker loops of both stages (run inside Train workers).

Design choices, all made so that a run restarted from epoch ``k``'s checkpoint ends
with the same metrics as an uninterrupted run of the same seed (by construction):

- **Data in memory, identical on every rank.** Each worker pulls its Ray Data shard
  once (``get_dataset_shard("train")``), the shards are all-gathered and sorted by
  ``row_index``, so every rank holds the same array regardless of how Ray Data split
  the blocks (its split is dynamic: not reproducible across restarts). Epochs then
  iterate in-memory tensors, much faster than re-streaming MovieLens-size data every
  epoch. Interaction data that does not fit a worker's memory would instead iterate
  ``shard.iter_torch_batches(local_shuffle_seed=...)`` per epoch (not implemented;
  bit-exact resume would then be lost because the split is dynamic).
- **Deterministic epoch order.** Epoch ``e``'s permutation comes from
  ``(seed, "order", e)``, the same on all ranks; global batch ``k`` is
  ``perm[k*B:(k+1)*B]`` and rank ``r`` trains on its ``r``-th ``B/W`` slice, so 1 and
  ``W`` workers see the same positives per step (``train.batch_size`` is global).
  Every rank runs the same number of steps (DDP would hang otherwise).
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
    import ray.train.torch

    context = ray.train.get_context()
    device = ray.train.torch.get_device()  # cpu, or this worker's GPU
    if isinstance(device, list):  # several GPUs per worker: use the first
        device = device[0]
    if device.type == "cuda":
        # Before any collective: NCCL's all_gather_object uses the current device.
        torch.cuda.set_device(device)
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


def pull_shard(shard: Any, columns: Sequence[str], worker: WorkerInfo) -> dict[str, np.ndarray]:
    """This worker's Ray Data shard -> numpy columns, all-gathered, sorted by ``row_index``.

    ``shard`` is a ``DataIterator`` (or, in local mode, the ``Dataset`` itself).
    Returns ``{column: (N,) array}`` with the same ``N`` rows on every rank.
    """
    needed = list(dict.fromkeys([*columns, "row_index"]))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in needed}
    for batch in shard.iter_batches(batch_format="numpy", batch_size=65_536):
        missing = [name for name in needed if name not in batch]
        if missing:
            raise ValueError(f"training data lacks columns {missing} (has {sorted(batch)})")
        for name in needed:
            parts[name].append(np.asarray(batch[name]))
    local = {
        name: np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        for name, chunks in parts.items()
    }
    if worker.is_distributed:
        gathered: list[Any] = [None] * worker.world_size
        torch.distributed.all_gather_object(gathered, local)
        local = {name: np.concatenate([part[name] for part in gathered]) for name in needed}
    order = np.argsort(local["row_index"], kind="stable")
    return {name: values[order] for name, values in local.items()}


def read_rows(path: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The Parquet file or folder ``path`` -> numpy columns sorted by ``row_index``: what
    :func:`pull_shard` returns, read by this process alone (no Ray Data job)."""
    import pyarrow.parquet as pq

    needed = list(dict.fromkeys([*columns, "row_index"]))
    table = pq.read_table(path, columns=needed)
    local = {name: table.column(name).to_numpy() for name in needed}
    order = np.argsort(local["row_index"], kind="stable")
    return {name: values[order] for name, values in local.items()}


def training_rows(loop_config: Mapping[str, Any], worker: WorkerInfo) -> dict[str, np.ndarray]:
    """A stage's training positives (``user_id``, ``item_id``, sorted by ``row_index``).

    Local mode (one in-process worker, ``loop_config["train_path"]`` set) reads the
    Parquet folder directly: starting a Ray Data job to feed one process cost about 2.4 s
    per stage, against 0.05 s of training for a sweep's tiny trial (measured on the
    synthetic quick-start data). A worker group pulls its Ray Data shard. Same rows, same
    order either way, so the same metrics.
    """
    path = loop_config.get("train_path")
    if path is not None:
        return read_rows(str(path), ("user_id", "item_id"))
    import ray.train

    return pull_shard(ray.train.get_dataset_shard("train"), ("user_id", "item_id"), worker)


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
    if not worker.is_distributed:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        tensor = tensor.to(worker.device)
    torch.distributed.all_reduce(tensor)
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
) -> None:
    """``ray.train.report`` from every rank (a barrier); rank 0 attaches the checkpoint.

    ``state`` is the checkpoint dict (rank 0 only; None elsewhere). In local mode
    (``num_workers=0``) Train persists nothing, so the checkpoint is written to
    ``local_checkpoint_root/epoch_XXXXXX`` when a root is given (the latest
    ``LOCAL_CHECKPOINTS_TO_KEEP`` kept, as Train keeps its own).
    """
    import ray.train

    clean = dict(metrics)
    if worker.rank == 0:
        for listener in list(_EPOCH_LISTENERS):
            listener(dict(clean))
    if worker.rank != 0 or state is None:
        ray.train.report(clean, checkpoint=None)
        return
    name = f"epoch_{epoch:06d}"
    if local_checkpoint_root is not None:
        root = Path(local_checkpoint_root)
        save_checkpoint(root / name, state)
        kept = sorted(root.glob("epoch_*"))
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
