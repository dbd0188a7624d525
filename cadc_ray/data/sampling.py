"""Uniform, reproducible row samples of D_full (METHOD 1.1's ``D_sub``).

A row is kept when a seeded 64-bit hash (splitmix64) of its ``row_index``, read as a number
in [0, 1), is below ``1 / filter_ratio``. The decision depends only on (row_index, seed):
identical whatever the shards, blocks or workers, and nested across ratios (the 10% sample
is a subset of the 20% sample for the same seed).

Up to ``LOCAL_SPLIT_MAX_ROWS`` rows of D_full (the split's own threshold) the calling process
filters the folder batch by batch with pyarrow; above it Ray Data applies the filter lazily,
block by block, and nothing is collected in the driver. Both write the same rows.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cadc_ray.arrow_pool import system_arrow_pool
from cadc_ray.atomic import atomic_directory
from cadc_ray.data.errors import DataError
from cadc_ray.data.layout import (
    SUCCESS_MARKER,
    parquet_batches,
    parquet_files,
    parquet_rows,
    shard_name,
)
from cadc_ray.data.split import LOCAL_SPLIT_MAX_ROWS, SplitPaths

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, ``(N,)`` uint64 -> ``(N,)`` uint64 (a bijection)."""
    z = np.asarray(values, dtype=np.uint64) + _GOLDEN  # wraps modulo 2**64, as intended
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def check_filter_ratio(filter_ratio: float) -> None:
    if (
        not isinstance(filter_ratio, (int, float))
        or not math.isfinite(filter_ratio)
        or filter_ratio < 1
    ):
        raise DataError(
            f"data.filter_ratio: must be a finite number >= 1 (1/filter_ratio of D_full is "
            f"sampled), got {filter_ratio!r}"
        )


def uniform_hash(row_index: np.ndarray, seed: int) -> np.ndarray:
    """``(N,)`` float64 in [0, 1): the seeded hash of each row index."""
    seed_key = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    hashed = splitmix64(np.asarray(row_index).astype(np.uint64) ^ seed_key)
    return (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample_mask(row_index: np.ndarray, filter_ratio: float, seed: int) -> np.ndarray:
    """``(N,)`` bool: which rows belong to the ``1/filter_ratio`` sample for ``seed``."""
    check_filter_ratio(filter_ratio)
    return uniform_hash(row_index, seed) < 1.0 / filter_ratio


def sample_dataset(
    split: SplitPaths, filter_ratio: float, seed: int, *, override_num_blocks: int | None = None
) -> ray.data.Dataset:
    """The lazy, streaming Ray Dataset of ``D_sub`` (the D_full columns).

    ``override_num_blocks`` changes only the read layout, never the sample.
    """
    from cadc_ray.data.ray_read import read_parquet  # imports Ray: the rest runs without it

    check_filter_ratio(filter_ratio)

    def keep_sampled(batch: pa.Table) -> pa.Table:
        mask = sample_mask(batch.column("row_index").to_numpy(), filter_ratio, seed)
        return batch.filter(pa.array(mask))

    return read_parquet(split.train_dir, override_num_blocks=override_num_blocks).map_batches(
        keep_sampled, batch_format="pyarrow", zero_copy_batch=True
    )


def sample_table(split: SplitPaths, filter_ratio: float, seed: int) -> pa.Table:
    """``D_sub`` (the D_full columns) filtered in this process, one record batch at a time:
    memory holds the sample and one batch of D_full, not D_full."""
    check_filter_ratio(filter_ratio)
    files = parquet_files(split.train_dir)
    if not files:
        raise DataError(f"{split.train_dir}: no Parquet files (D_full) to sample from")
    kept = [
        batch.filter(
            pa.array(sample_mask(batch.column("row_index").to_numpy(), filter_ratio, seed))
        )
        for _, batch in parquet_batches(split.train_dir)
    ]
    return pa.Table.from_batches(kept, schema=pq.read_schema(files[0]))


def sample_dir(split: SplitPaths, filter_ratio: float, seed: int) -> Path:
    return split.root / "samples" / f"ratio-{filter_ratio:g}-seed-{seed}"


SampleEngine = Literal["auto", "ray", "local"]


def auto_sample_engine(split: SplitPaths) -> Literal["ray", "local"]:
    """What ``engine="auto"`` samples ``split`` with: ``local`` up to
    ``LOCAL_SPLIT_MAX_ROWS`` rows of D_full, ``ray`` above."""
    return "local" if parquet_rows(split.train_dir) <= LOCAL_SPLIT_MAX_ROWS else "ray"


def materialize_sample(
    split: SplitPaths, filter_ratio: float, seed: int, *, engine: SampleEngine = "auto"
) -> Path:
    """Writes ``D_sub`` as Parquet shards once (temp + rename, ``_SUCCESS``); reused after.

    ``engine``: ``ray`` (needs a running Ray) writes :func:`sample_dataset`; ``local``
    writes :func:`sample_table` as one shard, in this process; ``auto`` is ``local`` up to
    ``LOCAL_SPLIT_MAX_ROWS`` rows of D_full, as the split. Why: at that size a Ray Data job's
    start costs far more than the sample (1-in-10 of 96k / 960k rows on 2 cores, two runs:
    1.1-5.2 s through Ray Data, 0.01-0.10 s here; docs/results.md, "The sample in-process").
    Both engines write the same rows (tested).
    """
    check_filter_ratio(filter_ratio)
    if engine not in ("auto", "ray", "local"):
        raise ValueError(f"sample engine must be auto, ray or local, got {engine!r}")
    target = sample_dir(split, filter_ratio, seed)
    if (target / SUCCESS_MARKER).is_file():
        return target
    if engine == "auto":
        engine = auto_sample_engine(split)
    started = time.perf_counter()
    with system_arrow_pool(), atomic_directory(target) as temp:
        if engine == "local":
            pq.write_table(sample_table(split, filter_ratio, seed), temp / shard_name(0))
        else:
            sample_dataset(split, filter_ratio, seed).write_parquet(str(temp))
        (temp / SUCCESS_MARKER).write_text("", encoding="utf-8")
    logger.info(
        "sample 1/%g (seed %d, %s) written to %s (%.1f s)",
        filter_ratio,
        seed,
        engine,
        target,
        time.perf_counter() - started,
    )
    return target
