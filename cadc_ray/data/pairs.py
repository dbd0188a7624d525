"""Worker-side readers (plain pyarrow, no Ray): interaction pairs and known positives.

Workers mask known positives through the split's memory-mapped per-user index
(``data.known``), built here on first use for a split folder written before it existed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from cadc_ray.atomic import atomic_directory
from cadc_ray.data.errors import DataError
from cadc_ray.data.known import (
    KNOWN_DIR,
    META_FILE,
    KnownPositives,
    open_known_index,
    sorted_pair_batches,
    write_known_index,
)
from cadc_ray.data.layout import parquet_batches
from cadc_ray.data.split import SplitPaths

logger = logging.getLogger(__name__)


def read_pairs(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """``(user_id (N,), item_id (N,))`` int64 from a Parquet file or a folder of shards
    (files starting with ``_`` or ``.`` such as ``_SUCCESS`` are ignored)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found (expected a Parquet file or a folder of shards)")
    table = pq.read_table(path, columns=["user_id", "item_id"])
    return (
        table.column("user_id").to_numpy().astype(np.int64, copy=False),
        table.column("item_id").to_numpy().astype(np.int64, copy=False),
    )


COUNT_BATCH_ROWS = 1 << 16
"""Rows per record batch when counting: memory stays O(ids + batch), not O(rows). Files are
read one at a time, without read-ahead: pyarrow's dataset scanner reads ahead several files
and batches, which at 10^7 rows added 206 MiB of anonymous memory to a streaming worker
against 19 MiB this way (16 MiB at 10^6 rows), for 0.26 s instead of 0.06 s
(``scripts/probe_stream_memory.py``; docs/scale.md, "Streaming memory")."""


@dataclass(frozen=True)
class InteractionCounts:
    """How often each user and item occurs in a training stream (what the samplers, LogQ
    and the frequency-aware id tables need from the data besides the batches)."""

    rows: int
    users: np.ndarray  # (num_users,) int64
    items: np.ndarray  # (num_items,) int64

    @classmethod
    def of(
        cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int
    ) -> InteractionCounts:
        """The counts of in-memory ``users (N,)`` / ``items (N,)``."""
        return cls(
            rows=int(np.asarray(users).size),
            users=_bincount(np.asarray(users), num_users, "user_id", "<memory>"),
            items=_bincount(np.asarray(items), num_items, "item_id", "<memory>"),
        )


def count_interactions(path: Path | str, num_users: int, num_items: int) -> InteractionCounts:
    """The counts of a Parquet file or folder of shards, read batch by batch (the
    streaming path's workers never hold the rows themselves)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found (expected a Parquet file or a folder of shards)")
    users = np.zeros(num_users, dtype=np.int64)
    items = np.zeros(num_items, dtype=np.int64)
    rows = 0
    for file, batch in parquet_batches(path, ["user_id", "item_id"], COUNT_BATCH_ROWS):
        users += _bincount(batch.column("user_id").to_numpy(), num_users, "user_id", file)
        items += _bincount(batch.column("item_id").to_numpy(), num_items, "item_id", file)
        rows += batch.num_rows
    return InteractionCounts(rows=rows, users=users, items=items)


def _bincount(ids: np.ndarray, size: int, column: str, source: Path | str) -> np.ndarray:
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        raise DataError(
            f"{source}: {column} out of range [0, {size}) (min {ids.min()}, max {ids.max()})"
        )
    return np.bincount(ids, minlength=size).astype(np.int64)


def known_positives(split: SplitPaths, num_users: int, num_items: int) -> sp.csr_matrix:
    """Binary ``(num_users, num_items)`` CSR matrix of every (user, item) in D_full.

    Reads all of D_full into memory; workers use ``open_known_positives`` instead.
    """
    users, items = read_pairs(split.train_dir)
    if len(users) and (
        users.max() >= num_users or items.max() >= num_items or min(users.min(), items.min()) < 0
    ):
        raise DataError(
            f"{split.train_dir}: ids out of range for {num_users} users x {num_items} items "
            f"(max user {users.max()}, max item {items.max()})"
        )
    matrix = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=(num_users, num_items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def open_known_positives(split: SplitPaths, num_users: int, num_items: int) -> KnownPositives:
    """The split's per-user index of D_full (``<split>/known``), memory-mapped.

    ``materialize_split`` writes it; a split folder from before the index existed gets it
    here, once (temp folder + rename: concurrent workers may both build it, one copy wins).
    """
    folder = split.root / KNOWN_DIR
    if not (folder / META_FILE).is_file():
        users, items = read_pairs(split.train_dir)
        with atomic_directory(folder) as temp:
            nnz = write_known_index(temp, sorted_pair_batches(users, items), num_users, num_items)
        logger.info("built the known-positives index %s (%d pairs)", folder, nnz)
    return open_known_index(folder, num_users, num_items)


@dataclass(frozen=True)
class HeldOutSets:
    """What full-ranking evaluation needs (METHOD 1.5): the held-out pairs and the masks."""

    val_users: np.ndarray  # (V,) int64
    val_items: np.ndarray  # (V,) int64
    test_users: np.ndarray  # (T,) int64
    test_items: np.ndarray  # (T,) int64
    known: KnownPositives  # (num_users, num_items) D_full positives (memory-mapped rows)
    test_extra_mask: np.ndarray  # (T,) each test user's validation item, masked when testing


def read_held_out(
    split: SplitPaths,
    num_users: int,
    num_items: int,
    validation_users: int | None = None,
    validation_seed: int = 0,
) -> HeldOutSets:
    """Validation and test pairs of a split plus the masks that ranking them needs.

    ``validation_users``: keep a uniform sample of that many validation users (drawn with
    ``validation_seed``, in user order) for model selection; the test pairs and the test
    masks stay complete. None, or at least as many as there are, keeps them all.
    """
    val_users, val_items = read_pairs(split.val_path)
    test_users, test_items = read_pairs(split.test_path)
    val_item_of_user = np.full(num_users, -1, dtype=np.int64)
    val_item_of_user[val_users] = val_items
    test_extra_mask = val_item_of_user[test_users]
    if (test_extra_mask < 0).any():
        missing = test_users[test_extra_mask < 0]
        raise DataError(
            f"{split.test_path}: {missing.size} test users have no validation item in "
            f"{split.val_path} (e.g. user {missing[0]}): leave-last-two-out gives each both"
        )
    if validation_users is not None and validation_users < val_users.size:
        chosen = np.random.default_rng(validation_seed).choice(
            val_users.size, size=validation_users, replace=False
        )
        chosen.sort()
        val_users, val_items = val_users[chosen], val_items[chosen]
    return HeldOutSets(
        val_users=val_users,
        val_items=val_items,
        test_users=test_users,
        test_items=test_items,
        known=open_known_positives(split, num_users, num_items),
        test_extra_mask=test_extra_mask,
    )
