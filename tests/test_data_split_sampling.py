"""Leave-last-two-out roles and seeded sampling: numpy cores by hand, then through Ray Data."""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cadc_ray.config import DataConfig, SyntheticConfig
from cadc_ray.data import (
    DataError,
    Manifest,
    SplitPaths,
    known_positives,
    leave_last_two_out_roles,
    materialize_sample,
    materialize_split,
    prepare_dataset,
    read_held_out,
    read_pairs,
    sample_dataset,
    sample_mask,
    sampling,
)
from cadc_ray.data.layout import INTERACTION_SCHEMA, interactions_dir
from cadc_ray.data.sampling import splitmix64
from cadc_ray.data.split import (
    SplitEngine,
    check_split_counts,
    distinct_sorted,
    split_user_range,
    user_range_of,
)


def test_roles_by_hand() -> None:
    # user 5: times 30, 10, 20, 20 (rows 0..3) -> order rows 1, 2, 3, 0: row 0 test,
    #         row 3 validation (tie at 20 broken by row index: 2 before 3).
    # user 7: two rows -> both train (fewer than 3).
    # user 9: three rows with equal times -> row order: 6 train, 7 validation, 8 test.
    user = np.array([5, 5, 5, 5, 7, 7, 9, 9, 9])
    time = np.array([30, 10, 20, 20, 1, 2, 4, 4, 4])
    row = np.arange(9)
    assert leave_last_two_out_roles(user, time, row).tolist() == [2, 0, 0, 1, 0, 0, 0, 1, 2]


def test_roles_empty() -> None:
    empty = np.zeros(0, dtype=np.int64)
    assert leave_last_two_out_roles(empty, empty, empty).shape == (0,)


def test_user_ranges_are_contiguous_and_cover_every_range() -> None:
    # 10 users in 4 ranges: [0, 3), [3, 5), [5, 8), [8, 10) (starts ceil(k * 10 / 4)).
    assert user_range_of(np.arange(10), 10, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    ranges = user_range_of(np.arange(1_000_003), 1_000_003, 7)
    assert (np.diff(ranges) >= 0).all() and set(ranges.tolist()) == set(range(7))
    # int64 products: ids near 2^31 times many ranges do not overflow.
    assert user_range_of(np.array([2**31 - 1]), 2**31, 4096).tolist() == [4095]


def test_split_user_range_by_hand() -> None:
    # user 5 (rows 10-13, times 30, 10, 20, 20): row 10 test, row 13 validation;
    # user 7 (rows 14-15): train only; item 4 twice for user 5 (a repeated interaction).
    table = pa.table(
        {
            "row_index": [13, 10, 11, 12, 15, 14],
            "user_id": [5, 5, 5, 5, 7, 7],
            "item_id": [3, 9, 4, 4, 1, 0],
            "timestamp": [20, 30, 10, 20, 2, 1],
            "rating": [1.0] * 6,
        },
        schema=INTERACTION_SCHEMA,
    )
    train, rest = split_user_range(table, num_items=10)
    assert train.column("row_index").to_pylist() == [11, 12, 14, 15]  # row_index order
    assert (
        rest.validation.column("row_index").to_pylist(),
        rest.test.column("row_index").to_pylist(),
    ) == ([13], [10])
    assert rest.validation.column_names == ["user_id", "item_id", "timestamp", "row_index"]
    # Distinct pairs in (user, item) order: (5, 4) once.
    assert list(zip(rest.known_users.tolist(), rest.known_items.tolist(), strict=True)) == [
        (5, 4),
        (7, 0),
        (7, 1),
    ]
    assert rest.train_rows == 4


def test_splitmix64_reference_values() -> None:
    # Reference outputs of splitmix64's finalizer from state 0 (Vigna's generator: the first
    # outputs for seed 0 are 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4).
    first = splitmix64(np.array([0], dtype=np.uint64))[0]
    second = splitmix64(np.array([0x9E3779B97F4A7C15], dtype=np.uint64))[0]
    assert (int(first), int(second)) == (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4)


def test_sample_fraction_within_binomial_tolerance() -> None:
    rows = np.arange(200_000)
    for ratio in (2.0, 10.0, 50.0):
        kept = int(sample_mask(rows, ratio, seed=1).sum())
        expected = len(rows) / ratio
        sd = np.sqrt(len(rows) * (1 / ratio) * (1 - 1 / ratio))
        assert abs(kept - expected) < 4 * sd
    assert sample_mask(rows[:100], 1.0, seed=1).all()


def test_sample_nested_and_seeded() -> None:
    rows = np.arange(50_000)
    masks = [sample_mask(rows, ratio, seed=7) for ratio in (2, 5, 10, 20)]
    for wider, narrower in itertools.pairwise(masks):
        assert not (narrower & ~wider).any()
    other = sample_mask(rows, 10, seed=8)
    overlap = (masks[2] & other).sum() / masks[2].sum()
    assert overlap < 0.2  # independent seeds overlap ~10%


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 2**62), min_size=1, max_size=200, unique=True),
    st.floats(1.0, 100.0),
    st.integers(0, 2**32),
)
def test_sample_mask_is_per_row(rows: list[int], ratio: float, seed: int) -> None:
    """A row's fate never depends on which other rows share its block."""
    array = np.array(rows, dtype=np.int64)
    whole = sample_mask(array, ratio, seed)
    pieces = np.concatenate(
        [sample_mask(array[i : i + 7], ratio, seed) for i in range(0, len(array), 7)]
    )
    np.testing.assert_array_equal(whole, pieces)


def test_parquet_folders_are_read_file_by_file_in_name_order_without_markers(
    tmp_path: Path,
) -> None:
    from cadc_ray.data.layout import parquet_batches, parquet_files, parquet_rows

    folder = tmp_path / "train"
    folder.mkdir()
    pq.write_table(pa.table({"row_index": [3, 4, 5, 6, 7]}), folder / "b.parquet")
    pq.write_table(pa.table({"row_index": [0, 1, 2]}), folder / "a.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / ".a.parquet.crc").write_text("not parquet")
    assert [Path(file).name for file in parquet_files(folder)] == ["a.parquet", "b.parquet"]
    assert parquet_rows(folder) == 8
    batches = list(parquet_batches(folder, ["row_index"], batch_rows=2))
    assert [Path(file).name for file, _ in batches] == ["a.parquet"] * 2 + ["b.parquet"] * 3
    assert [batch.column("row_index").to_pylist() for _, batch in batches] == [
        [0, 1],
        [2],
        [3, 4],
        [5, 6],
        [7],
    ]
    assert parquet_rows(folder / "b.parquet") == 5  # a single file is a folder of one


def test_sampling_a_folder_without_data_files_names_it(tmp_path: Path) -> None:
    from cadc_ray.data.sampling import sample_table

    split = SplitPaths.under(tmp_path / "split")
    split.train_dir.mkdir(parents=True)
    (split.train_dir / "_SUCCESS").write_text("")
    with pytest.raises(DataError, match=r"train: no Parquet files \(D_full\) to sample from"):
        sample_table(split, 10.0, 0)


# --------------------------------------------------------------------------- Ray Data


@pytest.fixture(scope="module")
def prepared_split(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, SplitPaths]:
    config = DataConfig(
        synthetic=SyntheticConfig(
            num_users=150, num_items=120, num_interactions=3_000, shard_rows=1_000
        )
    )
    prepared = prepare_dataset(config, tmp_path_factory.mktemp("split"))
    return prepared, materialize_split(prepared, num_partitions=3)


@pytest.mark.ray
def test_split_matches_numpy_reference(prepared_split: tuple[Path, SplitPaths]) -> None:
    prepared, split = prepared_split
    table = pq.read_table(interactions_dir(prepared))
    user = table.column("user_id").to_numpy()
    time = table.column("timestamp").to_numpy()
    row = table.column("row_index").to_numpy()
    manifest = Manifest.load(prepared)
    validation = pq.read_table(split.val_path)
    test = pq.read_table(split.test_path)
    evaluated = np.flatnonzero(np.bincount(user) >= 3)
    for heldout in (validation, test):
        np.testing.assert_array_equal(heldout.column("user_id").to_numpy(), evaluated)
    # Each test row is its user's latest by (timestamp, row_index); validation the one before.
    for u, test_row, val_row in zip(
        evaluated,
        test.column("row_index").to_numpy(),
        validation.column("row_index").to_numpy(),
        strict=True,
    ):
        mine = np.flatnonzero(user == u)
        ordered = mine[np.lexsort((row[mine], time[mine]))]
        assert (row[ordered[-1]], row[ordered[-2]]) == (test_row, val_row)
    train_user, _ = read_pairs(split.train_dir)
    assert len(train_user) == manifest.num_interactions - 2 * len(evaluated)
    assert split.summary()["num_evaluated_users"] == len(evaluated)
    positives = known_positives(split, manifest.num_users, manifest.num_items)
    assert positives.nnz == len(train_user) and positives.max() == 1.0
    # D_full files hold no pass-1 column and are sorted by row_index.
    for shard in sorted(split.train_dir.glob("*.parquet")):
        rows = pq.read_table(shard)
        assert rows.column_names == INTERACTION_SCHEMA.names
        assert (np.diff(rows.column("row_index").to_numpy()) > 0).all()
    assert not (split.root / "by_range").exists()
    # Reused: a second call returns at once without recomputing.
    marker = (split.root / "_SUCCESS").stat().st_mtime_ns
    assert materialize_split(prepared) == split
    assert (split.root / "_SUCCESS").stat().st_mtime_ns == marker


@pytest.mark.ray
def test_split_is_the_same_for_any_number_of_user_ranges(
    prepared_split: tuple[Path, SplitPaths], tmp_path: Path
) -> None:
    """1 range (one task sees every user), 7, and the in-process engine give the module's
    3-range split exactly."""
    import shutil

    prepared, three = prepared_split
    manifest = Manifest.load(prepared)

    def contents(split: SplitPaths) -> tuple[list[int], pa.Table, pa.Table, list[list[int]]]:
        train_rows = sorted(pq.read_table(split.train_dir).column("row_index").to_pylist())
        known = known_positives(split, manifest.num_users, manifest.num_items)
        return (
            train_rows,
            pq.read_table(split.val_path),
            pq.read_table(split.test_path),
            known.toarray().tolist(),
        )

    expected = contents(three)
    engines: tuple[tuple[int, SplitEngine], ...] = (
        (1, "ray"),
        (7, "ray"),
        (1, "local"),
        (1, "auto"),
    )
    for ranges, engine in engines:
        copy = tmp_path / f"ranges-{ranges}-{engine}"
        shutil.copytree(prepared, copy, ignore=shutil.ignore_patterns("split"))
        partitions = None if engine != "ray" else ranges
        other = materialize_split(copy, num_partitions=partitions, engine=engine)
        # 3,000 interactions: auto splits in this process.
        assert other.summary()["engine"] == ("local" if engine == "auto" else engine)
        assert other.summary()["num_partitions"] == ranges
        train_rows, validation, test, known = contents(other)
        assert train_rows == expected[0]
        assert validation.equals(expected[1]) and test.equals(expected[2])
        assert known == expected[3]
        assert len(list(other.train_dir.glob("*.parquet"))) == ranges


@given(st.lists(st.integers(min_value=0, max_value=2**40), max_size=60))
@settings(max_examples=60, deadline=None)
def test_distinct_sorted_is_np_unique(values: list[int]) -> None:
    keys = np.array(values, dtype=np.int64)
    np.testing.assert_array_equal(distinct_sorted(keys.copy()), np.unique(keys))


def _held_out(users: list[int]) -> pa.Table:
    return pa.table({"user_id": pa.array(users, pa.int64())})


def test_split_counts_accept_one_row_per_user_and_every_other_row_in_d_full() -> None:
    # 10 interactions, 3 evaluated users: 6 held out, 4 in D_full.
    check_split_counts(Path("p"), _held_out([0, 2, 5]), _held_out([0, 2, 5]), 4, 10)


@pytest.mark.parametrize(
    ("validation", "test", "num_train", "message"),
    [
        ([0, 2, 2], [0, 2, 5], 4, "two validation rows for one user (user_id 2)"),
        ([0, 2, 5], [0, 5, 2], 4, "two test rows for one user (user_id 2)"),
        ([0, 2], [0, 2, 5], 4, "2 validation rows but 3 test rows"),
        ([0, 2, 5], [0, 2, 5], 5, "wrote 5 D_full rows, expected 4 (10 interactions, 3 evaluated"),
    ],
)
def test_split_counts_name_what_does_not_add_up(
    validation: list[int], test: list[int], num_train: int, message: str
) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        check_split_counts(Path("p"), _held_out(validation), _held_out(test), num_train, 10)


@pytest.mark.ray
def test_a_stray_shard_fails_the_split_and_leaves_no_split_behind(
    prepared_split: tuple[Path, SplitPaths], tmp_path: Path
) -> None:
    """A shard copied twice into the interactions folder breaks the row count: no split."""
    import shutil

    prepared, _ = prepared_split
    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy, ignore=shutil.ignore_patterns("split"))
    first = sorted(interactions_dir(copy).glob("*.parquet"))[0]
    shutil.copy(first, first.with_name("stray-copy.parquet"))
    local_or_ray: tuple[SplitEngine, ...] = ("ray", "local")
    for engine in local_or_ray:
        with pytest.raises(DataError, match=r"split wrote \d+ D_full rows, expected \d+"):
            materialize_split(copy, num_partitions=2 if engine == "ray" else None, engine=engine)
        assert sorted(path.name for path in copy.iterdir()) == sorted(
            path.name for path in prepared.iterdir() if path.name != "split"
        )


@pytest.mark.ray
def test_sample_same_rows_for_any_block_layout(prepared_split: tuple[Path, SplitPaths]) -> None:
    _, split = prepared_split
    train = pq.read_table(split.train_dir)
    expected = np.sort(
        train.column("row_index").to_numpy()[
            sample_mask(train.column("row_index").to_numpy(), 4.0, 11)
        ]
    )

    def sampled_rows(blocks: int) -> np.ndarray:
        batch = sample_dataset(split, 4.0, 11, override_num_blocks=blocks).select_columns(
            ["row_index"]
        )
        return np.sort(
            np.concatenate([b["row_index"] for b in batch.iter_batches(batch_format="numpy")])
        )

    # Two read layouts (4 blocks here, the default in materialize_sample) give the
    # same rows as the layout-free numpy definition.
    np.testing.assert_array_equal(sampled_rows(4), expected)
    path = materialize_sample(split, 4.0, 11)
    sampled = pq.read_table(path)
    np.testing.assert_array_equal(np.sort(sampled.column("row_index").to_numpy()), expected)
    assert materialize_sample(split, 4.0, 11) == path  # reused
    assert 0.15 < len(expected) / train.num_rows < 0.35


@pytest.mark.ray
def test_both_sample_engines_write_the_same_rows_and_small_data_skips_ray(
    prepared_split: tuple[Path, SplitPaths], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, split = prepared_split
    train_rows = pq.read_table(split.train_dir).column("row_index").to_numpy()
    expected = np.sort(train_rows[sample_mask(train_rows, 3.0, 5)])
    written = {}
    for engine in ("ray", "local"):
        path = materialize_sample(split, 3.0, 5, engine=engine)
        written[engine] = pq.read_table(path).sort_by("row_index")
        shutil.rmtree(path)
    np.testing.assert_array_equal(written["local"].column("row_index").to_numpy(), expected)
    assert written["local"].column_names == written["ray"].column_names
    assert written["local"].equals(written["ray"])

    def no_ray_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("a small split was sampled through Ray Data")

    # 3,000 rows: the default engine samples in this process; above the threshold, Ray Data.
    assert sampling.auto_sample_engine(split) == "local"
    with monkeypatch.context() as patched:
        patched.setattr(sampling, "LOCAL_SPLIT_MAX_ROWS", 10)
        assert sampling.auto_sample_engine(split) == "ray"
    monkeypatch.setattr(sampling, "sample_dataset", no_ray_data)
    path = materialize_sample(split, 3.0, 5)
    assert pq.read_table(path).sort_by("row_index").equals(written["local"])
    with pytest.raises(ValueError, match="sample engine must be auto, ray or local, got 'spark'"):
        materialize_sample(split, 2.0, 5, engine="spark")  # type: ignore[arg-type]


@pytest.mark.ray
def test_reads_list_the_folder_once_not_at_every_execution(
    prepared_split: tuple[Path, SplitPaths],
) -> None:
    """Every Ray Data read of ours plans a V1 ``Read``: its files and footers are read when
    the dataset is created. Ray's default reader plans ``ListFiles -> ReadFiles``, which
    lists the folder on 32 new actors at every execution: every streamed epoch."""
    from ray.data._internal.logical.operators.read_operator import Read

    from cadc_ray.data.ray_read import read_parquet

    _, split = prepared_split
    for dataset in (
        read_parquet(split.train_dir, columns=["user_id"], target_block_bytes=1 << 20),
        sample_dataset(split, 4.0, 11),
    ):
        operators = []
        operator = dataset._logical_plan.dag
        while True:
            operators.append(operator)
            if not operator.input_dependencies:
                break
            operator = operator.input_dependencies[0]
        assert isinstance(operators[-1], Read), [op.name for op in operators]
        assert "ListFiles" not in [op.name for op in operators]
    # The sample folder's _SUCCESS marker is not read as data.
    path = materialize_sample(split, 4.0, 11)
    assert (path / "_SUCCESS").is_file()
    assert read_parquet(path).count() == pq.read_table(path).num_rows


@pytest.mark.ray
def test_a_scoped_data_context_is_restored_and_names_unknown_settings(ray_session: None) -> None:
    import ray.data

    from cadc_ray.data.ray_read import data_context

    context = ray.data.DataContext.get_current()
    before = (context.use_datasource_v2, context.target_max_block_size)
    with (
        pytest.raises(RuntimeError, match="inside"),
        data_context(use_datasource_v2=not before[0], target_max_block_size=1 << 20),
    ):
        assert context.use_datasource_v2 is not before[0]
        assert context.target_max_block_size == 1 << 20
        raise RuntimeError("inside")
    assert (context.use_datasource_v2, context.target_max_block_size) == before
    with (
        pytest.raises(AttributeError, match="target_max_block_bytes"),
        data_context(target_max_block_bytes=1),
    ):
        pass
    assert context.target_max_block_size == before[1]


def _write_pairs(path: Path, users: list[int], items: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": users, "item_id": items}), path)


def test_read_held_out_pairs_each_test_user_with_its_validation_item(tmp_path: Path) -> None:
    split = SplitPaths.under(tmp_path)
    _write_pairs(split.train_dir / "part-0.parquet", [0, 0, 1, 2], [0, 1, 1, 2])
    _write_pairs(split.val_path, [0, 2], [2, 0])
    _write_pairs(split.test_path, [2, 0], [1, 3])
    held_out = read_held_out(split, num_users=3, num_items=4)
    np.testing.assert_array_equal(held_out.test_extra_mask, [0, 2])  # user 2's, then user 0's
    assert held_out.known.toarray().tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    _write_pairs(split.val_path, [0], [2])  # user 2 lost its validation item
    with pytest.raises(DataError, match=r"test\.parquet: 1 test users .*val\.parquet.*user 2"):
        read_held_out(split, num_users=3, num_items=4)


def test_a_validation_user_sample_is_seeded_and_leaves_the_test_set_whole(tmp_path: Path) -> None:
    split = SplitPaths.under(tmp_path)
    users = list(range(50))
    _write_pairs(split.train_dir / "part-0.parquet", users, [u % 7 for u in users])
    _write_pairs(split.val_path, users[::-1], [(u + 1) % 7 for u in users[::-1]])
    _write_pairs(split.test_path, users, [(u + 2) % 7 for u in users])
    whole = read_held_out(split, num_users=50, num_items=7)
    sampled = read_held_out(split, 50, 7, validation_users=10, validation_seed=3)
    assert sampled.val_users.size == 10
    assert np.all(np.diff(sampled.val_users) != 0)  # distinct users
    np.testing.assert_array_equal(sampled.val_items, (sampled.val_users + 1) % 7)  # still paired
    assert set(sampled.val_users) < set(whole.val_users)
    # The test side is untouched, its validation masks included (users outside the sample too).
    np.testing.assert_array_equal(sampled.test_users, whole.test_users)
    np.testing.assert_array_equal(sampled.test_items, whole.test_items)
    np.testing.assert_array_equal(sampled.test_extra_mask, (whole.test_users + 1) % 7)
    again = read_held_out(split, 50, 7, validation_users=10, validation_seed=3)
    other = read_held_out(split, 50, 7, validation_users=10, validation_seed=4)
    np.testing.assert_array_equal(again.val_users, sampled.val_users)
    assert set(other.val_users) != set(sampled.val_users)
    all_kept = read_held_out(split, 50, 7, validation_users=50)
    np.testing.assert_array_equal(all_kept.val_users, whole.val_users)
