"""Readers on the real files (through the shared_data fixture) and on tiny generic files."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from conftest import generic_log_config

from cadc_ray.config import DataConfig, DatasetName, GenericColumnsConfig
from cadc_ray.data.errors import DataError
from cadc_ray.data.features import age_bucket_codes, zip_prefix_codes
from cadc_ray.data.readers import DATASETS, list_input_files, read_dataset


@pytest.mark.real_data
def test_ml100k_counts_and_features(shared_data: Path) -> None:
    data = read_dataset(DataConfig(dataset="ml-100k", path=str(shared_data / "ml-100k")))
    assert (data.num_interactions, data.num_users, data.num_items) == (100_000, 943, 1_682)
    assert data.has_timestamp and data.duplicates_dropped == 0
    # Row order kept: u.data's first line is "196\t242\t3\t881250949".
    assert data.user_raw_ids[data.user_id[0]] == 196 and data.item_raw_ids[data.item_id[0]] == 242
    assert data.timestamp[0] == 881250949 and data.rating is not None and data.rating[0] == 3.0
    users = data.user_features
    assert users.categorical_names == ("gender", "age_bucket", "occupation", "zip_prefix")
    # User 1 is 24|M|technician|85711 -> M (F=1, M=2), age 24 -> bucket 18 (code 2),
    # technician (index 19 of 21 sorted occupations -> code 20), zip '8' -> 9.
    assert data.user_raw_ids[0] == 1
    assert users.categorical[0].tolist() == [2, 2, 20, 9]
    assert users.categorical_cardinalities == (3, 8, 22, 12)
    items = data.item_features
    # Item 1: Toy Story, 01-Jan-1995, genres Animation|Children's|Comedy (flags 3, 4, 5).
    assert np.flatnonzero(items.multi_hot[0]).tolist() == [3, 4, 5]
    assert items.multi_hot.shape == (1_682, 19)
    assert items.categorical[0, 0] > 0


@pytest.mark.real_data
def test_ml1m_subset_counts_and_features(shared_data: Path) -> None:
    data = read_dataset(DataConfig(dataset="ml-1m", path=str(shared_data / "ml-1m")))
    assert (data.num_interactions, data.num_users, data.num_items) == (487_650, 2_999, 3_615)
    # users.dat line 1: 1::F::1::10::48067 -> F=1, age code 1 -> 1, occupation 10 -> 11, '4' -> 5
    assert data.user_features.categorical[0].tolist() == [1, 1, 11, 5]
    # ML-1M has 18 genres; movie 1 is Animation|Children's|Comedy.
    assert data.item_features.multi_hot.shape == (3_615, 18)
    assert int(data.item_features.multi_hot[0].sum()) == 3


@pytest.mark.real_data
def test_epinions_dedup_and_row_order(shared_data: Path) -> None:
    data = read_dataset(DataConfig(dataset="epinions", path=str(shared_data / "epinions")))
    assert data.duplicates_dropped == 9_826
    assert data.num_interactions == 922_267 - 9_826
    assert not data.has_timestamp
    np.testing.assert_array_equal(data.timestamp, np.arange(data.num_interactions))
    assert data.num_users == 22_164
    assert data.item_features.categorical_names == ("category",)
    assert data.item_features.categorical_cardinalities == (28,)
    assert data.user_features.categorical.shape == (22_164, 0)


def test_generic_csv_with_string_ids_and_keep_first(tmp_path: Path) -> None:
    config = generic_log_config(
        tmp_path / "log.csv",
        "who,what,when,stars\nbob,x,5,1\nalice,y,3,2\nbob,x,9,3\nalice,z,4,5\n",
        GenericColumnsConfig(user="who", item="what", timestamp="when", rating="stars"),
        duplicates="keep_first",
    )
    data = read_dataset(config)
    assert data.user_raw_ids.tolist() == ["alice", "bob"]
    assert data.item_raw_ids.tolist() == ["x", "y", "z"]
    # keep_first drops bob's second x (line 4); row indices stay contiguous.
    assert data.user_id.tolist() == [1, 0, 0]
    assert data.item_id.tolist() == [0, 1, 2]
    assert data.timestamp.tolist() == [5, 3, 4]
    assert data.rating is not None and data.rating.tolist() == [1.0, 2.0, 5.0]
    assert data.duplicates_dropped == 1


def test_generic_tsv_without_header_or_timestamp(tmp_path: Path) -> None:
    config = generic_log_config(
        tmp_path / "log.tsv",
        "7\t70\n3\t30\n7\t30\n",
        GenericColumnsConfig(user="0", item="1", timestamp=None, has_header=False),
    )
    data = read_dataset(config)
    assert not data.has_timestamp
    assert data.timestamp.tolist() == [0, 1, 2]
    assert data.user_raw_ids.tolist() == ["3", "7"] and data.user_id.tolist() == [1, 0, 1]


def test_feature_helpers_by_hand() -> None:
    assert age_bucket_codes(np.array([7, 18, 24, 25, 44, 45, 50, 55, 56, 73])).tolist() == [
        1,
        2,
        2,
        3,
        4,
        5,
        6,
        6,
        7,
        7,
    ]
    assert zip_prefix_codes(["85711", "T8H1N", "0", ""]).tolist() == [9, 11, 1, 0]


def test_registry_names_every_dataset_and_nothing_else() -> None:
    assert set(DATASETS) == set(get_args(DatasetName))
    assert [name for name, source in DATASETS.items() if source.generated] == ["synthetic"]


def test_synthetic_is_generated_not_read() -> None:
    assert list_input_files(DataConfig(), Path(".")) == []
    with pytest.raises(DataError, match="'synthetic' is generated"):
        read_dataset(DataConfig())


def test_movielens_tables_read_a_tiny_1m_folder_without_users(tmp_path: Path) -> None:
    # ML-10M's layout: ratings + movies, no users.dat (users get ids only).
    (tmp_path / "ratings.dat").write_text("5::20::4::100\n3::10::2::99\n5::10::1::101\n")
    (tmp_path / "movies.dat").write_text(
        "10::Heat (1995)::Action|Crime\n20::Up (2009)::Animation\n30::X::(no genres listed)\n"
    )
    config = DataConfig(dataset="ml-10m", path=str(tmp_path))
    assert list_input_files(config, tmp_path) == [
        tmp_path / "ratings.dat",
        tmp_path / "movies.dat",
    ]
    data = read_dataset(config)
    assert data.user_raw_ids.tolist() == [3, 5] and data.item_raw_ids.tolist() == [10, 20]
    assert data.user_id.tolist() == [1, 0, 1] and data.item_id.tolist() == [1, 0, 0]
    assert data.user_features.categorical.shape == (2, 0)
    # Genres vocabulary sorted over all of movies.dat: Action, Animation, Crime.
    assert data.item_features.multi_hot.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert data.inputs == (tmp_path / "ratings.dat", tmp_path / "movies.dat")
