"""Known positives per user, written once beside the split and memory-mapped by workers.

Full-ranking evaluation masks each evaluated user's D_full items (METHOD 1.5). Building a
(num_users, num_items) CSR of all of D_full in every worker costs a read of D_full per
worker and its memory; instead the split folder holds the CSR itself, users in order:

``known/indptr.npy``  (num_users + 1,) int64: user u's items are ``indices[indptr[u]:indptr[u+1]]``
``known/indices.bin`` (nnz,) raw little-endian int32 item ids, sorted and distinct per user
``known/meta.json``   num_users, num_items, nnz

``indices`` is opened with ``numpy.memmap``: a worker reads the pages of the users it
evaluates and nothing else. Writing streams batches sorted by ``(user_id, item_id)`` (one
user range after another when the split is materialized, ``data.split``), so no process
ever holds all of D_full.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cadc_ray.data.errors import DataError

KNOWN_DIR = "known"
INDPTR_FILE = "indptr.npy"
INDICES_FILE = "indices.bin"
META_FILE = "meta.json"
INDEX_DTYPE = np.dtype("<i4")  # item ids; checked against num_items when writing


@dataclass(frozen=True)
class KnownPositives:
    """Row-sliceable binary (num_users, num_items) matrix of D_full's (user, item) pairs.

    indptr (num_users + 1,) int64 in memory (small); indices (nnz,) int32, typically a
    read-only ``numpy.memmap``.
    """

    indptr: np.ndarray
    indices: np.ndarray
    num_items: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.indptr.size - 1), self.num_items)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def rows(self, users: np.ndarray) -> sp.csr_matrix:
        """The rows of ``users`` (B,) -> (B, num_items) CSR; reads only those users' items."""
        users = np.asarray(users, dtype=np.int64)
        starts = self.indptr[users]
        lengths = self.indptr[users + 1] - starts
        row_ptr = np.zeros(users.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=row_ptr[1:])
        # Position j of the output reads indices[starts[row] + (j - row_ptr[row])].
        positions = np.repeat(starts - row_ptr[:-1], lengths) + np.arange(row_ptr[-1])
        columns = np.asarray(self.indices[positions], dtype=np.int32)
        data = np.ones(columns.size, dtype=np.float32)
        return sp.csr_matrix((data, columns, row_ptr), shape=(users.size, self.num_items))

    def to_csr(self) -> sp.csr_matrix:
        """The whole matrix in memory (for small data and tests)."""
        return self.rows(np.arange(self.shape[0]))

    def toarray(self) -> np.ndarray:
        return np.asarray(self.to_csr().toarray())


def sorted_pair_batches(
    users: np.ndarray, items: np.ndarray, batch_rows: int = 1 << 20
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """In-memory pairs (N,), (N,) -> batches sorted by (user, item), for ``write_known_index``."""
    order = np.lexsort((items, users))
    for start in range(0, order.size, batch_rows):
        chunk = order[start : start + batch_rows]
        yield users[chunk], items[chunk]


def write_known_index(
    folder: Path,
    sorted_batches: Iterable[tuple[np.ndarray, np.ndarray]],
    num_users: int,
    num_items: int,
) -> int:
    """Stream (user_id (b,), item_id (b,)) batches, globally sorted by (user, item), into
    ``folder`` (which must exist). Duplicate pairs are kept once. Returns nnz.

    Memory: O(num_users + one batch). Raises ``DataError`` on ids out of range or an
    unsorted stream (which would corrupt the index silently).
    """
    if num_items > np.iinfo(INDEX_DTYPE).max:
        raise DataError(f"{num_items} items do not fit the known-positives index's int32 ids")
    counts = np.zeros(num_users, dtype=np.int64)
    previous: tuple[int, int] | None = None
    nnz = 0
    with open(folder / INDICES_FILE, "wb") as out:
        for batch_users, batch_items in sorted_batches:
            users = np.asarray(batch_users, dtype=np.int64)
            items = np.asarray(batch_items, dtype=np.int64)
            if users.size == 0:
                continue
            if users.min() < 0 or users.max() >= num_users or items.min() < 0:
                raise DataError(f"{folder}: user or item ids out of range for {num_users} users")
            if items.max() >= num_items:
                raise DataError(f"{folder}: item id {items.max()} out of range for {num_items}")
            keys = users * num_items + items  # (b,) sorted iff the stream is
            if previous is not None:
                keys = np.concatenate([[previous[0] * num_items + previous[1]], keys])
            steps = np.diff(keys)
            if (steps < 0).any():
                raise DataError(f"{folder}: pairs are not sorted by (user_id, item_id)")
            new = steps > 0 if previous is not None else np.concatenate([[True], steps > 0])
            users, items = users[new], items[new]
            counts += np.bincount(users, minlength=num_users)
            out.write(items.astype(INDEX_DTYPE).tobytes())
            nnz += int(items.size)
            previous = (int(batch_users[-1]), int(batch_items[-1]))
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    np.save(folder / INDPTR_FILE, indptr)
    meta = {"num_users": num_users, "num_items": num_items, "nnz": nnz}
    (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return nnz


def open_known_index(folder: Path, num_users: int, num_items: int) -> KnownPositives:
    """The index in ``folder``, its indices memory-mapped read-only; checks the sizes."""
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if (meta["num_users"], meta["num_items"]) != (num_users, num_items):
        raise DataError(
            f"{folder}: known positives index is for {meta['num_users']} users x "
            f"{meta['num_items']} items, expected {num_users} x {num_items}"
        )
    indptr = np.load(folder / INDPTR_FILE)
    nnz = int(meta["nnz"])
    if indptr.shape != (num_users + 1,) or int(indptr[-1]) != nnz:
        raise DataError(f"{folder}: indptr does not match meta.json (nnz {nnz})")
    indices: np.ndarray
    if nnz == 0:  # numpy cannot map an empty file
        indices = np.zeros(0, dtype=INDEX_DTYPE)
    else:
        indices = np.memmap(folder / INDICES_FILE, dtype=INDEX_DTYPE, mode="r", shape=(nnz,))
    return KnownPositives(indptr=indptr, indices=indices, num_items=num_items)
