"""The split's memory-mapped known-positives index: equal to the old CSR, read per rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch

from cadc_ray.config import DataConfig, SyntheticConfig
from cadc_ray.data import (
    DataError,
    SplitPaths,
    known_positives,
    materialize_split,
    open_known_positives,
    prepare_dataset,
)
from cadc_ray.data.known import (
    KNOWN_DIR,
    KnownPositives,
    open_known_index,
    sorted_pair_batches,
    write_known_index,
)
from cadc_ray.evaluation import full_ranking_sums

NUM_USERS, NUM_ITEMS = 40, 25


def _split_with_random_pairs(root: Path, seed: int = 0) -> SplitPaths:
    """Two shards of random pairs with repeats (a user re-rating an item), user 7 absent."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, NUM_USERS, 600)
    users[users == 7] = 8
    items = rng.integers(0, NUM_ITEMS, 600)
    split = SplitPaths.under(root)
    split.train_dir.mkdir(parents=True)
    for part, rows in enumerate((slice(0, 350), slice(350, None))):
        pq.write_table(
            pa.table({"user_id": users[rows], "item_id": items[rows]}),
            split.train_dir / f"part-{part}.parquet",
        )
    return split


def test_lazy_index_equals_the_scipy_csr(tmp_path: Path) -> None:
    split = _split_with_random_pairs(tmp_path)
    old = known_positives(split, NUM_USERS, NUM_ITEMS)
    index = open_known_positives(split, NUM_USERS, NUM_ITEMS)
    assert (split.root / KNOWN_DIR / "indices.bin").is_file()
    assert isinstance(index.indices, np.memmap)
    assert index.shape == old.shape and index.nnz == old.nnz
    assert (index.to_csr() != old).nnz == 0
    np.testing.assert_array_equal(index.indptr, old.indptr)
    users = np.array([8, 7, 3, 8, 39])  # repeats and an empty row
    assert (index.rows(users) != old[users]).nnz == 0
    assert index.rows(np.array([7])).nnz == 0
    # Reopened, not rebuilt: the folder is reused as it is.
    stamp = (split.root / KNOWN_DIR / "meta.json").stat().st_mtime_ns
    again = open_known_positives(split, NUM_USERS, NUM_ITEMS)
    assert (split.root / KNOWN_DIR / "meta.json").stat().st_mtime_ns == stamp
    assert (again.to_csr() != old).nnz == 0


@pytest.mark.parametrize("batch_rows", [1, 7, 1000])
def test_streamed_batches_dedup_across_batch_boundaries(tmp_path: Path, batch_rows: int) -> None:
    users = np.array([2, 0, 2, 2, 1, 0, 2])
    items = np.array([3, 1, 3, 0, 4, 1, 3])
    nnz = write_known_index(tmp_path, sorted_pair_batches(users, items, batch_rows), 4, 5)
    index = open_known_index(tmp_path, 4, 5)
    assert nnz == 4
    np.testing.assert_array_equal(index.indptr, [0, 1, 2, 4, 4])
    np.testing.assert_array_equal(np.asarray(index.indices), [1, 4, 0, 3])


def test_writer_and_reader_reject_bad_input(tmp_path: Path) -> None:
    unsorted = [(np.array([1, 0]), np.array([0, 0]))]
    with pytest.raises(DataError, match=r"not sorted by \(user_id, item_id\)"):
        write_known_index(tmp_path, unsorted, 2, 2)
    with pytest.raises(DataError, match="item id 5 out of range for 3"):
        write_known_index(tmp_path, [(np.array([0]), np.array([5]))], 2, 3)
    write_known_index(tmp_path, [(np.array([0]), np.array([1]))], 2, 3)
    with pytest.raises(DataError, match="index is for 2 users x 3 items, expected 3 x 3"):
        open_known_index(tmp_path, 3, 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    write_known_index(empty, [], 2, 3)
    assert open_known_index(empty, 2, 3).to_csr().nnz == 0


class _RecordingIndices(np.ndarray):
    """An int32 array that records which positions were read."""

    read: list[np.ndarray]

    def __getitem__(self, key: Any) -> Any:
        self.read.append(np.asarray(key).ravel())
        return np.asarray(self)[key]


def test_a_rank_slice_reads_only_its_users_and_metrics_are_unchanged(tmp_path: Path) -> None:
    split = _split_with_random_pairs(tmp_path)
    old = known_positives(split, NUM_USERS, NUM_ITEMS)
    index = open_known_positives(split, NUM_USERS, NUM_ITEMS)
    spy = np.asarray(index.indices).view(_RecordingIndices)
    spy.read = []
    recording = KnownPositives(indptr=index.indptr, indices=spy, num_items=NUM_ITEMS)

    rng = np.random.default_rng(1)
    eval_users = np.arange(0, NUM_USERS, 2)
    heldout = rng.integers(0, NUM_ITEMS, eval_users.size)
    extra = rng.integers(0, NUM_ITEMS, eval_users.size)
    scores = torch.from_numpy(rng.normal(size=(NUM_USERS, NUM_ITEMS)).astype(np.float32))

    def score(users: torch.Tensor) -> torch.Tensor:
        return scores[users]

    world = 3
    per_rank = []
    for rank in range(world):
        mine = slice(rank, None, world)
        spy.read = []
        per_rank.append(
            full_ranking_sums(
                score, eval_users[mine], heldout[mine], recording, (1, 5), 4, extra[mine]
            )
        )
        positions = np.concatenate(spy.read)
        owners = np.searchsorted(index.indptr, positions, side="right") - 1  # row of each read
        assert set(owners.tolist()) <= set(eval_users[mine].tolist()), rank
    merged = per_rank[0].merge(per_rank[1]).merge(per_rank[2])
    reference = full_ranking_sums(score, eval_users, heldout, old, (1, 5), 4, extra)
    assert merged.count == reference.count == eval_users.size
    for k in (1, 5):
        assert merged.hit_sums[k] == reference.hit_sums[k]
        assert merged.ndcg_sums[k] == pytest.approx(reference.ndcg_sums[k], abs=1e-12)
    assert reference.hit_sums[5] > 0  # the check compares something


@pytest.mark.ray
def test_materialize_split_writes_the_index(ray_session: None, tmp_path: Path) -> None:
    config = DataConfig(
        synthetic=SyntheticConfig(num_users=60, num_items=50, num_interactions=900, shard_rows=300)
    )
    prepared = prepare_dataset(config, tmp_path / "prepared")
    split = materialize_split(prepared, num_partitions=3)
    folder = split.root / KNOWN_DIR
    assert (folder / "meta.json").is_file()
    summary = split.summary()
    num_users, num_items = int(summary["num_users"]), int(summary["num_items"])
    index = open_known_index(folder, num_users, num_items)
    old = known_positives(split, num_users, num_items)
    assert isinstance(old, sp.csr_matrix) and old.nnz > 0
    assert (index.to_csr() != old).nnz == 0
