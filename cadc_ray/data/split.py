"""Leave-last-two-out split by time (METHOD 1.1), computed once with Ray Data.

Per user, interactions are ordered by ``(timestamp, row_index)`` (the row index breaks ties
deterministically and is the time order itself when a dataset has no timestamps); the last
one is the test item, the one before it the validation item, the rest is ``D_full``. Users
with fewer than 3 interactions stay wholly in ``D_full`` and are not evaluated.

Ray Data does the work: the interactions are hash-partitioned by ``user_id`` (Ray 2.60's hash
shuffle never splits a partition block, so every user's rows are in one block) and roles
are computed per block by the vectorised numpy core ``leave_last_two_out_roles`` inside
``map_batches`` (5x faster than ``groupby().map_groups``: docs/ray_notes.md, "Ray Data"). The result is written
once under ``<prepared>/split`` (temp folder + rename, ``_SUCCESS`` marker) and reused.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cadc_ray.atomic import atomic_directory
from cadc_ray.data.errors import DataError
from cadc_ray.data.known import KNOWN_DIR, write_known_index_with_ray
from cadc_ray.data.layout import SUCCESS_MARKER, Manifest, interactions_dir

logger = logging.getLogger(__name__)

ROLE_TRAIN, ROLE_VALIDATION, ROLE_TEST = 0, 1, 2
MIN_INTERACTIONS_TO_EVALUATE = 3
SPLIT_DIR = "split"
ROWS_PER_PARTITION = 1_000_000  # hash partitions of the split: about this many rows each
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


def _add_roles(batch: pa.Table) -> pa.Table:
    """Ray Data ``map_batches`` body: one whole hash partition in, same rows + ``role`` out."""
    roles = leave_last_two_out_roles(
        batch.column("user_id").to_numpy(),
        batch.column("timestamp").to_numpy(),
        batch.column("row_index").to_numpy(),
    )
    return batch.append_column("role", pa.array(roles))


def _read_role(folder: Path, role: int) -> pa.Table:
    part = folder / f"role={role}"
    if not part.is_dir():
        return pa.table({name: pa.array([], type=pa.int64()) for name in HELDOUT_COLUMNS})
    table = pq.read_table(part, columns=list(HELDOUT_COLUMNS))
    return table.sort_by("user_id")


def materialize_split(prepared: Path | str, *, num_partitions: int | None = None) -> SplitPaths:
    """The split of a prepared dataset, computed with Ray Data on first use, then reused.

    Needs a running Ray (``ray.init``); ``num_partitions`` defaults to one per
    ``ROWS_PER_PARTITION`` rows (at least 2).
    """
    import ray.data  # local: the rest of the data layer runs without Ray

    prepared = Path(prepared)
    manifest = Manifest.load(prepared)
    paths = SplitPaths.under(prepared / SPLIT_DIR)
    if (paths.root / SUCCESS_MARKER).is_file():
        logger.info("reusing split %s", paths.root)
        return paths
    if paths.root.exists():  # a crashed earlier attempt (no marker): start over
        shutil.rmtree(paths.root)
    started = time.perf_counter()
    partitions = num_partitions or max(2, -(-manifest.num_interactions // ROWS_PER_PARTITION))
    with atomic_directory(paths.root) as temp:
        temp_paths = SplitPaths.under(temp)
        by_role = temp / "by_role"
        (
            ray.data.read_parquet(str(interactions_dir(prepared)))
            .repartition(partitions, keys=["user_id"])
            .map_batches(_add_roles, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
            .write_parquet(str(by_role), partition_cols=["role"])
        )
        train_part = by_role / f"role={ROLE_TRAIN}"
        if train_part.is_dir():
            train_part.rename(temp_paths.train_dir)
        else:  # pragma: no cover - every prepared dataset has training rows
            temp_paths.train_dir.mkdir()
        validation = _read_role(by_role, ROLE_VALIDATION)
        test = _read_role(by_role, ROLE_TEST)
        for name, table in (("validation", validation), ("test", test)):
            users = table.column("user_id").to_numpy()
            if len(users) > 1 and (np.diff(users) == 0).any():
                # Would mean a user's rows were split across blocks: fail loudly.
                raise DataError(f"{prepared}: split produced two {name} rows for one user")
        pq.write_table(validation, temp_paths.val_path)
        pq.write_table(test, temp_paths.test_path)
        shutil.rmtree(by_role)
        # Per-user D_full positives for evaluation masks, inside the same atomic folder.
        write_known_index_with_ray(
            temp_paths.train_dir, temp / KNOWN_DIR, manifest.num_users, manifest.num_items
        )
        num_evaluated = test.num_rows
        summary = {
            "num_train": manifest.num_interactions - 2 * num_evaluated,
            "num_evaluated_users": num_evaluated,
            "num_users": manifest.num_users,
            "num_items": manifest.num_items,
            "time_order": manifest.time_order,
            "has_timestamp": manifest.has_timestamp,
            "num_partitions": partitions,
            "seconds": round(time.perf_counter() - started, 3),
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
