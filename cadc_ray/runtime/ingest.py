"""How a stage's training rows reach its Train workers: held in memory, or streamed.

``resources.ingest`` chooses (``auto``: by the training folder's row count from its
Parquet metadata, :func:`resolve_ingest`):

- **memory**: every worker holds all rows, read from the training folder by itself
  (``runtime.worker.read_rows``: no Ray Data job, whose split would only be gathered back;
  the path is absolute, on the cluster's shared filesystem). The epoch order is a seeded
  permutation of ``row_index``: 1 and ``W`` workers train on the same positives per
  step, and a resumed run is bit-exact. Memory per worker grows with the rows.
- **stream**: each worker iterates only its own shard, every epoch, through Ray Data
  (``iter_torch_batches`` with a seeded local shuffle buffer over the folder's files, read
  in a per-epoch seeded order). Memory per worker is bounded by the batch, the shuffle
  buffer and the model. Shards must hold equal row counts so that every rank steps
  equally often (``DataParallel`` and the fused MF step synchronise every step): Train's split with
  ``equal=True`` (:func:`stream_data_config`) leaves out up to ``W - 1`` rows per epoch.
  Only the counts (users, items) are computed from the whole folder, batch by batch
  (``data.count_interactions``). Reproducibility: Ray Data's ``streaming_split`` hands
  blocks to whichever worker asks first, so with 2+ workers which rank sees which rows is
  not reproducible, and a resumed run continues from the checkpointed epoch with the same
  seeds but not bit-exactly. With one worker, the order is preserved
  (``preserve_order``, in a worker group and in Train's local mode): the same seed gives
  the same metrics.

Imported lazily by the stage drivers (it imports Ray Train).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from ray.data import ExecutionOptions
from ray.train import DataConfig

from cadc_ray.config import ExperimentConfig, ResourcesConfig
from cadc_ray.data.layout import parquet_rows
from cadc_ray.runtime.stage import StreamedRows, TrainingData
from cadc_ray.runtime.worker import WorkerInfo, derive_seed, read_rows

logger = logging.getLogger(__name__)

STREAMED_COLUMNS = ["user_id", "item_id"]

STREAM_BLOCK_BYTES = 8 << 20
"""Ray Data's block size target for the streamed training rows (its default is 128 MiB).
Each block a worker formats into batches and shuffles costs it memory: at 10^7 rows a
consumer peaked 239 MiB of anonymous memory above its start with the default (4.1 s) and
89 MiB with 8 MiB blocks (3.4 s) (``scripts/probe_stream_memory.py``; docs/scale.md,
"Streaming memory")."""

STREAM_BLOCKS_PER_WORKER = 4
"""With ``resources.stream_object_store_mib`` set, the stream's object-store budget is still
at least this many blocks per worker, so that no worker waits on a budget of one block."""

ResolvedIngest = Literal["memory", "stream"]


def resolve_ingest(
    config: ExperimentConfig, path: str | Path, *, announce: bool = True
) -> ResolvedIngest:
    """``resources.ingest`` for the training folder ``path``: ``auto`` streams above
    ``resources.stream_above_rows`` rows, except for the rebalancing methods (they
    resample the whole set in memory; ``stream`` is rejected for them at config load).
    ``announce``: log what ``auto`` chose (the stage's own call does; a caller that only
    plans where the stage runs does not, so the console says it once)."""
    from cadc_ray.methods import METHODS

    resources = config.resources
    if resources.ingest != "auto":
        return resources.ingest
    if METHODS[config.method].rebalance != "none":
        return "memory"
    rows = parquet_rows(path)
    chosen: ResolvedIngest = "stream" if rows > resources.stream_above_rows else "memory"
    if not announce:
        return chosen
    logger.info(
        "ingest auto: %d training rows (stream above %d) -> %s",
        rows,
        resources.stream_above_rows,
        chosen,
    )
    return chosen


def stream_object_store_bytes(resources: ResourcesConfig) -> int | None:
    """The object-store budget of one stream's Ray Data execution (all its workers), or
    None for Ray Data's own (``resources.stream_object_store_mib``)."""
    if resources.stream_object_store_mib is None:
        return None
    workers = max(resources.num_workers, 1)
    floor = STREAM_BLOCKS_PER_WORKER * STREAM_BLOCK_BYTES * workers
    return max(resources.stream_object_store_mib << 20, floor)


def stream_execution_options(
    options: ExecutionOptions, resources: ResourcesConfig
) -> ExecutionOptions:
    """``options`` (a copy) with the stream's settings: ``preserve_order`` for one worker
    (its stream is then deterministic) and the object-store budget of
    :func:`stream_object_store_bytes`."""
    options = copy.deepcopy(options)
    options.preserve_order = resources.num_workers <= 1
    budget = stream_object_store_bytes(resources)
    if budget is not None:
        options.resource_limits = options.resource_limits.copy(object_store_memory=budget)
    return options


def stream_data_config(resources: ResourcesConfig) -> DataConfig:
    """Train's ``DataConfig`` for the streaming path: its own split, which gives every
    worker an equal shard (``streaming_split(equal=True)``: equal step counts on every
    rank), with Train's ingest options and the stream's (:func:`stream_execution_options`)."""
    options = DataConfig.default_ingest_options()
    return DataConfig(execution_options=stream_execution_options(options, resources))


TRAIN_DATASET = "train"
"""The streamed dataset's name for Train (``get_dataset_shard``) when a run has one stage."""


@dataclass(frozen=True)
class TrainingInput:
    """What a stage's ``TorchTrainer`` gets for its training rows."""

    # {dataset_name: Dataset} to stream; None: workers read the folder
    datasets: dict[str, Any] | None
    dataset_config: DataConfig | None
    loop_entries: dict[str, Any] = field(default_factory=dict)  # merged into train_loop_config


def training_input(
    config: ExperimentConfig, path: str | Path, seed: int, dataset_name: str = TRAIN_DATASET
) -> TrainingInput:
    """How the training Parquet folder ``path`` reaches the stage's workers.

    ``seed`` is the stage's seed (the streamed file order derives from it). In memory,
    every worker reads the folder itself; a stream gets a Ray Data dataset for Train to
    split, named ``dataset_name`` (a run that trains two stages in one worker group streams
    one dataset per stage, ``runtime.joint``).
    """
    from cadc_ray.data.ray_read import read_parquet

    ingest = resolve_ingest(config, path)
    folder = str(Path(path).resolve())
    entries: dict[str, Any] = {
        "ingest": ingest,
        "train_folder": folder,
        "shuffle_buffer_rows": config.resources.shuffle_buffer_rows,
        "dataset_name": dataset_name,
    }
    if ingest == "memory":
        return TrainingInput(None, None, entries)
    # A new file order every epoch (every execution), the same sequence for the same seed.
    # Not Ray Data's randomize_block_order: it is an all-to-all operator, so every epoch
    # read the whole folder into the object store before its first batch. Shuffled files
    # plus the workers' local shuffle buffer keep the read a stream.
    # The smaller block target applies to this dataset only, not to the driver's other
    # Ray Data work.
    dataset = read_parquet(
        folder,
        columns=STREAMED_COLUMNS,
        target_block_bytes=STREAM_BLOCK_BYTES,
        file_order_seed=derive_seed(seed, "order") % (2**31),
    )
    # Train's local mode (num_workers: 0) hands the loop this dataset itself and ignores the
    # DataConfig: its own context (a copy per dataset) must have the stream's options too.
    # Without preserve_order there, the read tasks' completion order decided the batches,
    # and a repeated one-worker local run could differ (seen once in CI, 2026-12-01).
    dataset.context.execution_options = stream_execution_options(
        dataset.context.execution_options, config.resources
    )
    data_config = stream_data_config(config.resources)
    return TrainingInput({dataset_name: dataset}, data_config, entries)


def combined_training_inputs(inputs: Mapping[str, TrainingInput]) -> TrainingInput:
    """The ``TorchTrainer`` input of stages trained one after the other in one worker group:
    every streamed dataset (their names differ, :func:`training_input`'s ``dataset_name``),
    and Train's split config of a streamed one (the same for every stage of one run: it
    depends on the run's ``resources`` only). Each stage's ``loop_entries`` stay the
    caller's to merge into that stage's own loop config."""
    datasets: dict[str, Any] = {}
    dataset_config = None
    for training in inputs.values():
        if training.datasets:
            overlap = set(datasets) & set(training.datasets)
            if overlap:
                raise ValueError(f"two stages stream a dataset named {sorted(overlap)}")
            datasets.update(training.datasets)
            dataset_config = training.dataset_config
    return TrainingInput(datasets or None, dataset_config)


Resample = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``(users, items) -> (users, items)``: e.g. over-/under-sampling (memory path only)."""


def training_data(
    loop_config: Mapping[str, Any],
    worker: WorkerInfo,
    num_users: int,
    num_items: int,
    resample: Resample | None = None,
) -> TrainingData:
    """This worker's training input, on the path :func:`training_input` chose."""
    if loop_config["ingest"] == "memory":
        rows = read_rows(loop_config["train_folder"], ("user_id", "item_id"))
        users, items = rows["user_id"], rows["item_id"]
        if resample is not None:
            users, items = resample(users, items)
        return TrainingData.in_memory(users, items, num_users, num_items, worker.device)
    import ray.train

    from cadc_ray.data import count_interactions

    shard = ray.train.get_dataset_shard(loop_config["dataset_name"])
    buffer_rows = int(loop_config["shuffle_buffer_rows"])

    def open_epoch(batch_rows: int, shuffle_seed: int) -> Iterable[Mapping[str, torch.Tensor]]:
        return shard.iter_torch_batches(
            batch_size=batch_rows,
            dtypes=torch.int64,
            device="cpu",  # StreamedRows moves each batch to the worker's device
            local_shuffle_buffer_size=buffer_rows,
            local_shuffle_seed=shuffle_seed % (2**32),
        )

    counts = count_interactions(loop_config["train_folder"], num_users, num_items)
    return TrainingData(rows=StreamedRows(open_epoch), counts=counts)
