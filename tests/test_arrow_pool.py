"""pyarrow's memory pool while our code splits, samples, prepares and reads: the system
allocator inside, the previous pool after, and the user's ARROW_DEFAULT_MEMORY_POOL kept."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cadc_ray.arrow_pool import ARROW_POOL_ENV, system_arrow_pool
from cadc_ray.config import DataConfig, SyntheticConfig
from cadc_ray.data import materialize_sample, materialize_split, prepare_dataset
from cadc_ray.data import prepare as prepare_module
from cadc_ray.data import sampling as sampling_module
from cadc_ray.data import split as split_module
from cadc_ray.data.layout import parquet_rows
from cadc_ray.runtime.worker import read_rows


def non_system_pool() -> pa.MemoryPool:
    """mimalloc (pyarrow's default) or jemalloc, whichever this build has."""
    for backend, make in (
        ("mimalloc", pa.mimalloc_memory_pool),
        ("jemalloc", pa.jemalloc_memory_pool),
    ):
        if backend in pa.supported_memory_backends():
            return make()
    pytest.skip("this pyarrow has only the system allocator")


@pytest.fixture
def other_default_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The process's default pool is a non-system one for the test, whatever it was before;
    ``ARROW_DEFAULT_MEMORY_POOL`` unset. -> that pool's backend name."""
    monkeypatch.delenv(ARROW_POOL_ENV, raising=False)
    before = pa.default_memory_pool()
    pool = non_system_pool()
    pa.set_memory_pool(pool)
    try:
        yield pool.backend_name
    finally:
        pa.set_memory_pool(before)


def test_system_pool_inside_and_the_previous_one_after(other_default_pool: str) -> None:
    with system_arrow_pool():
        assert pa.default_memory_pool().backend_name == "system"
        with system_arrow_pool():  # nested: still system, and the outer block restores
            assert pa.default_memory_pool().backend_name == "system"
        assert pa.default_memory_pool().backend_name == "system"
        array = pa.array(np.arange(1_000))
    assert pa.default_memory_pool().backend_name == other_default_pool
    assert array.sum().as_py() == 499_500  # made inside, still usable after the switch back


def test_previous_pool_restored_after_an_error(other_default_pool: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), system_arrow_pool():
        raise RuntimeError("boom")
    assert pa.default_memory_pool().backend_name == other_default_pool


def test_the_users_environment_variable_wins(
    other_default_pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ARROW_POOL_ENV, other_default_pool)
    with system_arrow_pool():
        assert pa.default_memory_pool().backend_name == other_default_pool


def pool_during(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, seen: list[str]) -> None:
    """Wraps ``module.name`` so that each call records the default pool it ran under."""
    original: Callable[..., Any] = getattr(module, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(pa.default_memory_pool().backend_name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)


def test_prepare_split_sample_and_row_reads_allocate_from_the_system_pool(
    other_default_pool: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, list[str]] = {"prepare": [], "split": [], "known_index": [], "sample": []}
    pool_during(monkeypatch, prepare_module, "_build", seen["prepare"])
    pool_during(monkeypatch, split_module, "split_user_range", seen["split"])
    pool_during(monkeypatch, split_module, "write_known_index", seen["known_index"])
    pool_during(monkeypatch, sampling_module, "sample_table", seen["sample"])
    config = DataConfig(
        synthetic=SyntheticConfig(num_users=40, num_items=30, num_interactions=600, shard_rows=200)
    )
    prepared = prepare_dataset(config, tmp_path)
    split = materialize_split(prepared, engine="local")
    materialize_sample(split, 2.0, seed=3, engine="local")
    assert seen == {name: ["system"] for name in seen}
    assert pa.default_memory_pool().backend_name == other_default_pool

    read: list[str] = []
    pool_during(monkeypatch, pq, "read_table", read)  # read_rows imports pq when called
    rows = read_rows(str(split.train_dir), ["user_id", "item_id"])
    assert read == ["system"] and len(rows["user_id"]) == parquet_rows(split.train_dir)
    assert pa.default_memory_pool().backend_name == other_default_pool
