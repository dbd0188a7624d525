"""Worker helpers: deterministic epoch order shared by ranks, seeds, session options."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cadc_ray.config import ConfigError, ResourcesConfig
from cadc_ray.runtime.session import (
    DATA_RESERVED_CPUS,
    local_ray_cpus,
    resolve_use_gpu,
    train_cpus,
)
from cadc_ray.runtime.worker import (
    WorkerInfo,
    derive_seed,
    epoch_batches,
    seeded_generator,
    stage_seed,
)


def _worker(rank: int, world_size: int) -> WorkerInfo:
    return WorkerInfo(rank=rank, world_size=world_size, device=torch.device("cpu"))


def _batches(num_rows: int, batch: int, epoch: int, rank: int, world: int) -> list[torch.Tensor]:
    return list(epoch_batches(num_rows, batch, seed=5, epoch=epoch, worker=_worker(rank, world)))


def test_one_worker_sees_every_row_once_per_epoch() -> None:
    batches = _batches(10, 4, epoch=0, rank=0, world=1)
    assert [b.numel() for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))


def test_two_workers_split_each_global_batch_of_one_worker() -> None:
    # Global batch k of 2 workers = global batch k of 1 worker: rank r takes its r-th half.
    single = _batches(11, 4, epoch=3, rank=0, world=1)
    rank0 = _batches(11, 4, epoch=3, rank=0, world=2)
    rank1 = _batches(11, 4, epoch=3, rank=1, world=2)
    assert len(rank0) == len(rank1)  # every step's collectives need every rank
    assert [b.numel() for b in rank0] == [2, 2, 1] == [b.numel() for b in rank1]
    # 11 rows, 2 ranks: one row left out this epoch, no row seen twice.
    seen = torch.cat(rank0 + rank1).tolist()
    assert len(seen) == len(set(seen)) == 10
    assert torch.equal(torch.cat([rank0[0], rank1[0]]), single[0])
    assert torch.equal(torch.cat([rank0[1], rank1[1]]), single[1])


def test_epoch_order_depends_on_epoch_only() -> None:
    first = torch.cat(_batches(50, 8, epoch=0, rank=0, world=1))
    again = torch.cat(_batches(50, 8, epoch=0, rank=0, world=1))
    other = torch.cat(_batches(50, 8, epoch=1, rank=0, world=1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_seeds_are_stable_and_distinct_per_stream_rank_epoch() -> None:
    base = derive_seed(0, "negatives", 0, 0)
    assert base == derive_seed(0, "negatives", 0, 0)
    assert len({base, derive_seed(0, "negatives", 1, 0), derive_seed(0, "negatives", 0, 1)}) == 3
    assert derive_seed(0, "order", 0) != derive_seed(0, "negatives", 0)
    assert 0 <= base < 2**63
    a = torch.rand(4, generator=seeded_generator(1, "negatives", 0, 2))
    b = torch.rand(4, generator=seeded_generator(1, "negatives", 0, 2))
    assert torch.equal(a, b)
    assert stage_seed(0, 1) != stage_seed(1, 0)


def test_cpu_reservation_leaves_room_for_ray_data() -> None:
    assert train_cpus(ResourcesConfig(num_workers=2, cpus_per_worker=2)) == 4
    assert train_cpus(ResourcesConfig(num_workers=0)) == 1  # local mode runs in the driver
    assert DATA_RESERVED_CPUS >= 1


def test_local_ray_cpus_is_one_rule_for_runs_and_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    two_by_two = ResourcesConfig(num_workers=2, cpus_per_worker=2)
    assert local_ray_cpus(two_by_two) == 4 + DATA_RESERVED_CPUS  # one run
    assert local_ray_cpus(two_by_two, concurrent_stages=3) == 12 + DATA_RESERVED_CPUS  # sweep
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert local_ray_cpus(two_by_two) == 64  # never fewer than the machine has


def test_use_gpu_no_needs_no_cluster() -> None:
    assert resolve_use_gpu(ResourcesConfig(use_gpu="no")) is False


@pytest.mark.ray
def test_use_gpu_yes_without_gpus_is_a_config_error(ray_session: None) -> None:
    import ray

    if ray.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("this cluster has GPUs")
    assert resolve_use_gpu(ResourcesConfig(use_gpu="auto")) is False
    with pytest.raises(
        ConfigError, match=r"resources\.use_gpu: 'yes' but the Ray cluster has no GPUs"
    ):
        resolve_use_gpu(ResourcesConfig(use_gpu="yes"))


def test_memory_path_reads_its_rows_in_row_index_order(tmp_path: Path) -> None:
    """``read_rows`` (every worker on the memory path) returns the rows sorted by
    ``row_index`` whatever the order of the shards and of the rows in them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cadc_ray.config import ExperimentConfig
    from cadc_ray.runtime.ingest import training_input
    from cadc_ray.runtime.worker import read_rows

    folder = tmp_path / "train"
    folder.mkdir()
    shards = {"part-1.parquet": [5, 2, 4], "part-0.parquet": [3, 0, 1]}
    for name, row_index in shards.items():
        indices = np.array(row_index)
        table = {"row_index": indices, "user_id": indices * 10, "item_id": indices * 100}
        pq.write_table(pa.table(table), folder / name)
    rows = read_rows(str(folder), ("user_id", "item_id"))
    assert rows["row_index"].tolist() == [0, 1, 2, 3, 4, 5]
    assert rows["user_id"].tolist() == [0, 10, 20, 30, 40, 50]
    assert rows["item_id"].tolist() == [0, 100, 200, 300, 400, 500]
    # In memory, local mode and worker groups alike get the absolute path, no Ray Data job.
    for workers in (0, 2):
        config = ExperimentConfig(resources=ResourcesConfig(num_workers=workers))
        training = training_input(config, folder, seed=0)
        assert training.datasets is None and training.dataset_config is None
        assert training.loop_entries["train_folder"] == str(folder.resolve())
        assert training.loop_entries["ingest"] == "memory"


def _write_pairs(folder: Path, shards: dict[str, list[tuple[int, int]]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for name, pairs in shards.items():
        users, items = (np.array(column) for column in zip(*pairs, strict=True))
        row_index = np.arange(start, start + len(pairs))
        start += len(pairs)
        pq.write_table(
            pa.table({"row_index": row_index, "user_id": users, "item_id": items}), folder / name
        )


def test_ingest_auto_streams_only_above_the_row_threshold(tmp_path: Path) -> None:
    from cadc_ray.config import ExperimentConfig
    from cadc_ray.data.layout import parquet_rows
    from cadc_ray.runtime.ingest import resolve_ingest

    folder = tmp_path / "train"
    _write_pairs(folder, {"a.parquet": [(0, 1), (1, 2)], "b.parquet": [(2, 0), (0, 0), (1, 1)]})
    (folder / "_SUCCESS").write_text("")  # marker files are not data
    assert parquet_rows(folder) == 5

    def ingest(**resources: Any) -> str:
        method = resources.pop("method", "cadc")
        config = ExperimentConfig(method=method, resources=ResourcesConfig(**resources))
        return resolve_ingest(config, folder)

    assert ingest(stream_above_rows=4) == "stream"
    assert ingest(stream_above_rows=5) == "memory"
    assert ingest(stream_above_rows=4, ingest="memory") == "memory"
    assert ingest(stream_above_rows=10, ingest="stream") == "stream"
    # Over-/under-sampling resample the whole set in memory: auto keeps them there.
    assert ingest(stream_above_rows=4, method="over_sampling") == "memory"


def test_stream_ingest_rejects_rebalancing_methods_at_load() -> None:
    from cadc_ray.config import load_config

    with pytest.raises(
        ConfigError,
        match=r"resources\.ingest: 'stream' cannot serve method 'under_sampling': its "
        r"under_sampling rebalancing",
    ):
        load_config(None, ["method=under_sampling", "resources.ingest=stream"])
    with pytest.raises(ConfigError, match=r"resources\.ingest: 'disk' is not one of"):
        load_config(None, ["resources.ingest=disk"])
    with pytest.raises(ConfigError, match=r"resources\.shuffle_buffer_rows: must be >= 1"):
        load_config(None, ["resources.shuffle_buffer_rows=0"])


def test_counting_a_folder_batch_by_batch_matches_bincount(tmp_path: Path) -> None:
    from cadc_ray.data import DataError, InteractionCounts, count_interactions

    folder = tmp_path / "train"
    pairs = [(0, 1), (1, 2), (2, 0), (0, 0), (1, 1), (0, 2)]
    _write_pairs(folder, {"a.parquet": pairs[:4], "b.parquet": pairs[4:]})
    counts = count_interactions(folder, num_users=4, num_items=3)
    users, items = (np.array(column) for column in zip(*pairs, strict=True))
    expected = InteractionCounts.of(users, items, 4, 3)
    assert counts.rows == expected.rows == 6
    assert counts.users.tolist() == expected.users.tolist() == [3, 2, 1, 0]
    assert counts.items.tolist() == expected.items.tolist() == [2, 2, 2]
    with pytest.raises(
        DataError, match=r"train/a\.parquet: item_id out of range \[0, 2\) \(min 0, max 2\)"
    ):
        count_interactions(folder, num_users=4, num_items=2)


def test_one_cpu_worker_runs_in_trains_local_mode_in_this_process_or_in_a_ray_task() -> None:
    from cadc_ray.runtime.session import stage_placement, stage_resources

    def placed(
        own_local_ray: bool = True, use_gpu: bool = False, streams: bool = False, **resources: Any
    ) -> tuple[int, str]:
        configured = ResourcesConfig(**{"num_workers": 1, **resources})
        effective = stage_resources(
            configured, use_gpu=use_gpu, own_local_ray=own_local_ray, streams=streams
        )
        assert effective.num_workers in (0, configured.num_workers)
        assert effective.cpus_per_worker == configured.cpus_per_worker
        return effective.num_workers, stage_placement(effective, own_local_ray=own_local_ray)

    # The laptop case: a worker group would only add its start.
    assert placed() == (0, "this_process")
    assert placed(streams=True) == (0, "this_process")
    # A cluster (any Ray the command did not start): the command's process is no place to
    # train, a task is (a pooled worker process: no controller, worker actor, process group).
    assert placed(own_local_ray=False) == (0, "ray_task")
    assert placed(num_workers=0, own_local_ray=False) == (0, "ray_task")
    # What keeps its worker group: asked for, a GPU, 2+ workers, Train restarts, and a
    # streamed stage on a cluster.
    assert placed(in_process="never") == (1, "worker_group")
    assert placed(in_process="never", own_local_ray=False) == (1, "worker_group")
    assert placed(use_gpu=True) == (1, "worker_group")
    assert placed(use_gpu=True, own_local_ray=False) == (1, "worker_group")
    assert placed(num_workers=2) == (2, "worker_group")
    assert placed(num_workers=2, own_local_ray=False) == (2, "worker_group")
    assert placed(max_failures=1) == (1, "worker_group")  # restarts need Train's worker group
    assert placed(streams=True, own_local_ray=False) == (1, "worker_group")


@pytest.mark.ray
def test_stream_ingest_hands_train_an_equal_ordered_split(
    ray_session: None, tmp_path: Path
) -> None:
    """``stream``: a Ray Data dataset for Train to split (its split is ``equal=True``),
    order preserved for one worker only, the folder kept for counting."""
    import ray.data
    from ray.train import DataConfig

    from cadc_ray.config import ExperimentConfig
    from cadc_ray.runtime.ingest import STREAM_BLOCK_BYTES, training_input

    driver_block_bytes = ray.data.DataContext.get_current().target_max_block_size
    driver_limits = ray.data.DataContext.get_current().execution_options.resource_limits
    driver_order = ray.data.DataContext.get_current().execution_options.preserve_order

    folder = tmp_path / "train"
    _write_pairs(folder, {"a.parquet": [(0, 1), (1, 2), (2, 0)]})
    for workers, ordered in ((0, True), (1, True), (2, False)):
        config = ExperimentConfig(resources=ResourcesConfig(num_workers=workers, ingest="stream"))
        training = training_input(config, folder, seed=0)
        assert training.datasets is not None and set(training.datasets) == {"train"}
        assert training.datasets["train"].count() == 3
        assert type(training.dataset_config) is DataConfig  # Train's own equal split
        options = training.dataset_config._resolve_execution_options("train")
        assert options.preserve_order is ordered
        # Local mode iterates the dataset itself, without Train's DataConfig.
        assert training.datasets["train"].context.execution_options.preserve_order is ordered
        # Ray Data's own object-store budget unless resources.stream_object_store_mib caps it.
        capped = training_input(
            dataclasses.replace(
                config, resources=dataclasses.replace(config.resources, stream_object_store_mib=64)
            ),
            folder,
            seed=0,
        )
        assert capped.datasets is not None and capped.dataset_config is not None
        for stream, budget in ((training, None), (capped, 64 << 20)):
            assert stream.datasets is not None and stream.dataset_config is not None
            for stream_options in (
                stream.dataset_config._resolve_execution_options("train"),
                stream.datasets["train"].context.execution_options,
            ):
                assert stream_options.resource_limits.object_store_memory == (
                    budget if budget is not None else driver_limits.object_store_memory
                )
        assert training.loop_entries["ingest"] == "stream"
        assert training.loop_entries["train_folder"] == str(folder.resolve())
        # Small blocks for this dataset only: the driver's other Ray Data work keeps its own.
        assert training.datasets["train"].context.target_max_block_size == STREAM_BLOCK_BYTES
        assert ray.data.DataContext.get_current().target_max_block_size == driver_block_bytes
    assert driver_block_bytes != STREAM_BLOCK_BYTES
    assert ray.data.DataContext.get_current().execution_options.resource_limits == driver_limits
    assert ray.data.DataContext.get_current().execution_options.preserve_order is driver_order


@pytest.mark.ray
def test_a_stream_reads_its_files_in_a_new_seeded_order_every_epoch_with_no_barrier(
    ray_session: None, tmp_path: Path
) -> None:
    """Every execution (a streamed epoch) reads each row once, its files in a new order;
    the same seed repeats the sequence of orders. No all-to-all operator in the plan: one
    (Ray Data's ``randomize_block_order`` was) holds every block of the epoch in the
    object store before the first batch leaves, so the stream would not stream."""
    from ray.data._internal.logical.operators.all_to_all_operator import AbstractAllToAll

    from cadc_ray.config import ExperimentConfig
    from cadc_ray.runtime.ingest import training_input

    folder = tmp_path / "train"
    num_files, rows_per_file = 6, 2  # file k holds the rows of user k
    _write_pairs(
        folder,
        {f"part-{k}.parquet": [(k, j) for j in range(rows_per_file)] for k in range(num_files)},
    )
    config = ExperimentConfig(resources=ResourcesConfig(num_workers=1, ingest="stream"))

    def file_orders(seed: int, epochs: int = 3) -> list[list[int]]:
        datasets = training_input(config, folder, seed=seed).datasets
        assert datasets is not None
        dataset = datasets["train"]
        operators, pending = [], [dataset._logical_plan.dag]
        while pending:
            operator = pending.pop()
            operators.append(operator)
            pending.extend(operator.input_dependencies)
        assert not [op.name for op in operators if isinstance(op, AbstractAllToAll)]
        orders = []
        for _ in range(epochs):
            users = [int(row["user_id"]) for row in dataset.iter_rows()]
            assert sorted(users) == sorted(
                k for k in range(num_files) for _ in range(rows_per_file)
            )
            orders.append(list(dict.fromkeys(users)))  # one worker: the order is preserved
        return orders

    first = file_orders(seed=3)
    assert len({tuple(order) for order in first}) > 1  # a new order per epoch
    assert file_orders(seed=3) == first  # the same seed, the same orders
    assert file_orders(seed=4) != first


def test_a_capped_streams_object_store_budget_keeps_blocks_for_every_worker() -> None:
    """``resources.stream_object_store_mib`` caps a stream's read-ahead, but never below
    ``STREAM_BLOCKS_PER_WORKER`` blocks per worker; unset, Ray Data's budget applies."""
    from cadc_ray.config import load_config
    from cadc_ray.runtime.ingest import (
        STREAM_BLOCK_BYTES,
        STREAM_BLOCKS_PER_WORKER,
        stream_object_store_bytes,
    )

    assert stream_object_store_bytes(ResourcesConfig()) is None
    assert stream_object_store_bytes(ResourcesConfig(stream_object_store_mib=256)) == 256 << 20
    floor = STREAM_BLOCKS_PER_WORKER * STREAM_BLOCK_BYTES
    many = ResourcesConfig(num_workers=8, stream_object_store_mib=1)
    assert stream_object_store_bytes(many) == 8 * floor
    local = ResourcesConfig(num_workers=0, stream_object_store_mib=1)  # local mode: one worker
    assert stream_object_store_bytes(local) == floor
    with pytest.raises(ConfigError, match=r"resources\.stream_object_store_mib: must be >= 1"):
        load_config(None, ["resources.stream_object_store_mib=0"])
