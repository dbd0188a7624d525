"""Worker helpers: deterministic epoch order shared by ranks, seeds, session options."""

from __future__ import annotations

from pathlib import Path

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
    assert len(rank0) == len(rank1)  # DDP needs the same number of steps on every rank
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


def test_local_mode_reads_its_rows_in_row_index_order(tmp_path: Path) -> None:
    """``read_rows`` (local mode) returns what ``pull_shard`` does: rows sorted by
    ``row_index`` whatever the order of the shards and of the rows in them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cadc_ray.config import ExperimentConfig
    from cadc_ray.runtime.trainer import training_input
    from cadc_ray.runtime.worker import read_rows

    folder = tmp_path / "train"
    folder.mkdir()
    shards = {"part-1.parquet": [5, 2, 4], "part-0.parquet": [3, 0, 1]}
    for name, row_index in shards.items():
        rows = np.array(row_index)
        table = {"row_index": rows, "user_id": rows * 10, "item_id": rows * 100}
        pq.write_table(pa.table(table), folder / name)
    rows = read_rows(str(folder), ("user_id", "item_id"))
    assert rows["row_index"].tolist() == [0, 1, 2, 3, 4, 5]
    assert rows["user_id"].tolist() == [0, 10, 20, 30, 40, 50]
    assert rows["item_id"].tolist() == [0, 100, 200, 300, 400, 500]
    # Local mode gets the path, no Ray Data dataset.
    local = ExperimentConfig(resources=ResourcesConfig(num_workers=0))
    assert training_input(local, str(folder)) == (None, str(folder))
