"""Leave-last-two-out split by time (METHOD 1.1), computed once, then reused.

Per user, interactions are ordered by ``(timestamp, row_index)`` (the row index breaks ties
deterministically and is the time order itself when a dataset has no timestamps); the last
one is the test item, the one before it the validation item, the rest is ``D_full``. Users
with fewer than 3 interactions stay wholly in ``D_full`` and are not evaluated.

Up to ``LOCAL_SPLIT_MAX_ROWS`` interactions the calling process splits every user at once
(``split_user_range``, no Ray). Larger datasets take two passes with Ray, no shuffle
service. User ids are dense (``0 .. num_users - 1``), so contiguous
*user ranges* partition the users without sampling or hashing:

1. Ray Data tags each row with its range (``user_id * R // num_users``) and writes the rows
   under ``user_range=k/`` (``write_parquet(partition_cols=...)``): a map and a write, each
   read block independently.
2. One Ray task per range reads its folder (whole users, by construction), computes the
   roles with the numpy core ``leave_last_two_out_roles``, writes its D_full shard sorted by
   ``row_index`` and returns its held-out rows and its sorted, distinct ``(user, item)``
   pairs. Ranges are in user order, so the driver appends those pairs, range after range,
   straight into the known-positives index (``data.known``): no global sort.

Measured against the Ray Data hash repartition and global sort this replaced (one
repartition for the roles, one ``sort`` for the index: 13.0 s of fixed cost fitted over
10^6 and 10^7 rows on 2 cores, now 4.5 s): docs/results.md, "Scale". The result is written once under
``<prepared>/split`` (temp folder + rename, ``_SUCCESS`` marker) and reused.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cadc_ray.arrow_pool import system_arrow_pool
from cadc_ray.atomic import atomic_directory
from cadc_ray.data.errors import DataError
from cadc_ray.data.known import KNOWN_DIR, write_known_index
from cadc_ray.data.layout import (
    INTERACTION_SCHEMA,
    SUCCESS_MARKER,
    Manifest,
    interactions_dir,
    shard_name,
)

logger = logging.getLogger(__name__)

ROLE_TRAIN, ROLE_VALIDATION, ROLE_TEST = 0, 1, 2
MIN_INTERACTIONS_TO_EVALUATE = 3
SPLIT_DIR = "split"
ROWS_PER_RANGE = 1_000_000  # user ranges of the split: about this many rows each
RANGE_COLUMN = "user_range"  # pass 1's partition column; never in the written split
HELDOUT_COLUMNS = ("user_id", "item_id", "timestamp", "row_index")


@dataclass(frozen=True)
class SplitPaths:
    """Where a materialized split lives.

    ``train_dir``: D_full shards (the interaction columns). ``val_path`` / ``test_path``: one
    Parquet file each, one row per evaluated user, sorted by ``user_id``; columns
    ``user_id, item_id, timestamp, row_index``.
    """

    root: Path
    train_dir: Path
    val_path: Path
    test_path: Path

    @classmethod
    def under(cls, root: Path) -> SplitPaths:
        return cls(root, root / "train", root / "val.parquet", root / "test.parquet")

    @property
    def prepared(self) -> Path:
        """The prepared dataset this split belongs to."""
        return self.root.parent

    def summary(self) -> dict[str, int | bool | str]:
        """Counts written next to the split (``summary.json``)."""
        return dict(json.loads((self.root / "summary.json").read_text(encoding="utf-8")))


def leave_last_two_out_roles(
    user_id: np.ndarray, timestamp: np.ndarray, row_index: np.ndarray
) -> np.ndarray:
    """Roles ``(N,)`` int8 (0 train, 1 validation, 2 test) of interactions ``(N,)`` each.

    Every user must have all of its rows in the input (a whole user per call).
    """
    n = len(user_id)
    roles = np.zeros(n, dtype=np.int8)
    if n == 0:
        return roles
    order = np.lexsort((row_index, timestamp, user_id))
    users = user_id[order]
    is_last_of_user = np.ones(n, dtype=bool)
    is_last_of_user[:-1] = users[1:] != users[:-1]
    ends = np.flatnonzero(is_last_of_user)  # position of each user's last row
    starts = np.concatenate([[0], ends[:-1] + 1])
    counts = ends - starts + 1
    evaluated = counts >= MIN_INTERACTIONS_TO_EVALUATE
    sorted_roles = np.zeros(n, dtype=np.int8)
    sorted_roles[ends[evaluated]] = ROLE_TEST
    sorted_roles[ends[evaluated] - 1] = ROLE_VALIDATION
    roles[order] = sorted_roles
    return roles


def user_range_of(user_id: np.ndarray, num_users: int, num_ranges: int) -> np.ndarray:
    """``(N,)`` int32 range of each user id: ``user_id * num_ranges // num_users``.

    Range k holds the users ``[ceil(k U / R), ceil((k + 1) U / R))``: contiguous, in order.
    """
    return (np.asarray(user_id, dtype=np.int64) * num_ranges // num_users).astype(np.int32)


def distinct_sorted(keys: np.ndarray) -> np.ndarray:
    """The distinct values of ``keys (N,)``, ascending; sorts ``keys`` in place.

    What ``np.unique`` returns, at a sort's cost: numpy 2's ``np.unique`` hashes first and
    took 0.25 s of a range task's 0.55 s on 0.9 M pairs (cProfile); this takes 0.007 s on
    0.9 M random keys of the same range.
    """
    keys.sort()
    if keys.size == 0:
        return keys
    first = np.empty(keys.size, dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return keys[first]


@dataclass(frozen=True)
class RangeSplit:
    """What one user range gives back to the driver (its D_full shard is already written).

    ``validation`` / ``test``: one row per evaluated user of the range, sorted by user.
    ``known_users`` / ``known_items`` ``(K,)``: the range's distinct D_full pairs, sorted by
    ``(user_id, item_id)``.
    """

    validation: pa.Table
    test: pa.Table
    known_users: np.ndarray
    known_items: np.ndarray
    train_rows: int


def split_user_range(table: pa.Table, num_items: int) -> tuple[pa.Table, RangeSplit]:
    """Whole users' interactions -> (their D_full rows sorted by ``row_index``, the rest).

    Plain numpy/pyarrow: what each range's Ray task runs, tested without Ray.
    """
    roles = leave_last_two_out_roles(
        table.column("user_id").to_numpy(),
        table.column("timestamp").to_numpy(),
        table.column("row_index").to_numpy(),
    )
    train = table.filter(pa.array(roles == ROLE_TRAIN)).sort_by("row_index")

    def held_out(role: int) -> pa.Table:
        return (
            table.filter(pa.array(roles == role)).select(list(HELDOUT_COLUMNS)).sort_by("user_id")
        )

    keys = distinct_sorted(
        train.column("user_id").to_numpy() * np.int64(num_items)
        + train.column("item_id").to_numpy()
    )
    known = RangeSplit(
        validation=held_out(ROLE_VALIDATION),
        test=held_out(ROLE_TEST),
        known_users=keys // num_items,
        known_items=(keys % num_items).astype(np.int32),
        train_rows=train.num_rows,
    )
    return train, known


def _split_range_folder(folder: str, train_path: str, num_items: int) -> RangeSplit:
    """Ray task body: range ``folder`` (pass 1's files) -> its D_full shard at ``train_path``."""
    columns = INTERACTION_SCHEMA.names
    with system_arrow_pool():  # a Ray task's first split pays mimalloc's first use otherwise
        if Path(folder).is_dir():
            table = pq.read_table(folder, columns=columns, partitioning=None)
        else:  # no user of this range has a row
            table = INTERACTION_SCHEMA.empty_table()
        train, known = split_user_range(table.cast(INTERACTION_SCHEMA), num_items)
        if train.num_rows:
            pq.write_table(train, train_path)
    return known


def check_split_counts(
    prepared: Path, validation: pa.Table, test: pa.Table, num_train: int, num_interactions: int
) -> None:
    """Fails loudly when the ranges' results do not add up to one split of the dataset.

    Each held-out table must hold at most one row per user, in user order (a user whose rows
    landed in two ranges would appear twice), and D_full must hold every interaction but
    the two held out per evaluated user (a shard lost or read twice would break it).
    """
    for name, table in (("validation", validation), ("test", test)):
        users = table.column("user_id").to_numpy()
        if len(users) > 1 and (np.diff(users) <= 0).any():
            repeated = users[1:][np.diff(users) <= 0][0]
            raise DataError(
                f"{prepared}: split produced two {name} rows for one user (user_id {repeated})"
            )
    if validation.num_rows != test.num_rows:
        raise DataError(
            f"{prepared}: split produced {validation.num_rows} validation rows but "
            f"{test.num_rows} test rows (one each per evaluated user)"
        )
    expected = num_interactions - 2 * test.num_rows
    if num_train != expected:
        raise DataError(
            f"{prepared}: split wrote {num_train} D_full rows, expected {expected} "
            f"({num_interactions} interactions, {test.num_rows} evaluated users)"
        )


def _split_with_ray(
    prepared: Path, temp: Path, ranges: int, num_users: int, num_items: int
) -> tuple[pa.Table, pa.Table, int, float]:
    """Ray's two passes into the split folder ``temp`` (its ``train`` and ``known`` folders
    exist): D_full shards and the known-positives index written; returns the validation and
    test tables, the D_full row count and pass 1's seconds."""
    import ray  # local: the rest of the data layer runs without Ray

    from cadc_ray.data.ray_read import read_parquet

    started = time.perf_counter()
    by_range = temp / "by_range"

    def tag_range(batch: pa.Table) -> pa.Table:
        users = batch.column("user_id").to_numpy()
        return batch.append_column(RANGE_COLUMN, pa.array(user_range_of(users, num_users, ranges)))

    # Pass 1: every read block writes its rows under user_range=k/ (no shuffle). One read
    # block per range: Ray Data's default reader packed the shards into 128 MiB read
    # tasks, two for 10^7 rows, and with one CPU in Ray Data's budget they ran one after
    # the other (pass 1 in 23.7 s, against 7.2 s this way; docs/results.md, "Scale").
    # The V1 reader we use (data.ray_read) reads at most one task per file.
    (
        read_parquet(interactions_dir(prepared), override_num_blocks=ranges)
        .map_batches(tag_range, batch_format="pyarrow", zero_copy_batch=True)
        .write_parquet(str(by_range), partition_cols=[RANGE_COLUMN])
    )
    by_range_seconds = time.perf_counter() - started
    # Pass 2: one task per range, all submitted; results consumed in range order.
    split_range = ray.remote(num_cpus=1)(_split_range_folder)
    pending = [
        split_range.remote(
            str(by_range / f"{RANGE_COLUMN}={k}"),
            str(temp / "train" / shard_name(k)),
            num_items,
        )
        for k in range(ranges)
    ]
    held_out: dict[str, list[pa.Table]] = {"validation": [], "test": []}
    num_train = 0

    def known_batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal num_train
        for ref in pending:
            result: RangeSplit = ray.get(ref)
            held_out["validation"].append(result.validation)
            held_out["test"].append(result.test)
            num_train += result.train_rows
            yield result.known_users, result.known_items

    # Per-user D_full positives for evaluation masks, inside the same atomic folder.
    write_known_index(temp / KNOWN_DIR, known_batches(), num_users, num_items)
    shutil.rmtree(by_range)
    validation = pa.concat_tables(held_out["validation"])  # ranges >= 1: never empty
    test = pa.concat_tables(held_out["test"])
    return validation, test, num_train, by_range_seconds


LOCAL_SPLIT_MAX_ROWS = 2_000_000
"""``materialize_split`` splits datasets of at most this many interactions in the calling
process (one "range": every user), without Ray: a Ray Data job costs about 4.5 s before its
first row (fitted over 10^6 and 10^7 rows), while one process splits 1.09 M rows in 0.4 s
(docs/results.md, "Scale"). Larger datasets go through Ray's two passes."""

SplitEngine = Literal["auto", "ray", "local"]


def materialize_split(
    prepared: Path | str,
    *,
    num_partitions: int | None = None,
    engine: SplitEngine = "auto",
) -> SplitPaths:
    """The split of a prepared dataset, computed on first use, then reused.

    ``engine``: ``ray`` (needs a running Ray: ``ray.init``) runs the two passes above over
    ``num_partitions`` user ranges (by default one per ``ROWS_PER_RANGE`` rows, at least 2,
    so that two tasks share the work); ``local`` computes the same split in this process
    (``split_user_range`` over every user at once); ``auto`` is ``local`` up to
    ``LOCAL_SPLIT_MAX_ROWS`` interactions when ``num_partitions`` is not given, else ``ray``.
    Every engine and range count gives the same files' contents (tested).
    """
    prepared = Path(prepared).resolve()  # handed to Ray tasks: absolute
    manifest = Manifest.load(prepared)
    paths = SplitPaths.under(prepared / SPLIT_DIR)
    if (paths.root / SUCCESS_MARKER).is_file():
        logger.info("reusing split %s", paths.root)
        return paths
    if paths.root.exists():  # a crashed earlier attempt (no marker): start over
        shutil.rmtree(paths.root)
    if engine not in ("auto", "ray", "local"):
        raise ValueError(f"split engine must be auto, ray or local, got {engine!r}")
    if engine == "auto":
        small = manifest.num_interactions <= LOCAL_SPLIT_MAX_ROWS
        engine = "local" if small and num_partitions is None else "ray"
    started = time.perf_counter()
    num_users, num_items = manifest.num_users, manifest.num_items
    with system_arrow_pool(), atomic_directory(paths.root) as temp:
        temp_paths = SplitPaths.under(temp)
        temp_paths.train_dir.mkdir()
        (temp / KNOWN_DIR).mkdir()
        if engine == "local":
            ranges, by_range_seconds = 1, 0.0
            result = _split_range_folder(
                str(interactions_dir(prepared)),
                str(temp_paths.train_dir / shard_name(0)),
                num_items,
            )
            write_known_index(
                temp / KNOWN_DIR,
                [(result.known_users, result.known_items)],
                num_users,
                num_items,
            )
            validation, test, num_train = result.validation, result.test, result.train_rows
        else:
            ranges = num_partitions or max(2, -(-manifest.num_interactions // ROWS_PER_RANGE))
            ranges = max(1, min(ranges, num_users))
            validation, test, num_train, by_range_seconds = _split_with_ray(
                prepared, temp, ranges, num_users, num_items
            )
        check_split_counts(prepared, validation, test, num_train, manifest.num_interactions)
        pq.write_table(validation, temp_paths.val_path)
        pq.write_table(test, temp_paths.test_path)
        num_evaluated = test.num_rows
        summary = {
            "num_train": num_train,
            "num_evaluated_users": num_evaluated,
            "num_users": num_users,
            "num_items": num_items,
            "time_order": manifest.time_order,
            "has_timestamp": manifest.has_timestamp,
            "engine": engine,
            "num_partitions": ranges,
            "seconds": round(time.perf_counter() - started, 3),
            # Ray's pass 1 (read, tag, write by range); the rest is the range tasks, the
            # known-positives index and the held-out files.
            "by_range_seconds": round(by_range_seconds, 3),
        }
        (temp / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        (temp / SUCCESS_MARKER).write_text("", encoding="utf-8")
    logger.info(
        "split %s: %d train rows, %d evaluated users (%.1f s)",
        prepared,
        summary["num_train"],
        num_evaluated,
        summary["seconds"],
    )
    return paths
