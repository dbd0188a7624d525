"""Worker-side readers (plain pyarrow, no Ray): interaction pairs and known positives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from cadc_ray.data.errors import DataError
from cadc_ray.data.split import SplitPaths


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


def known_positives(split: SplitPaths, num_users: int, num_items: int) -> sp.csr_matrix:
    """Binary ``(num_users, num_items)`` CSR matrix of every (user, item) in D_full."""
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
