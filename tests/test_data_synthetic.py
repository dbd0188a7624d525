"""The synthetic generator (determinism, shape, structure) and prepare's reuse rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cadc_ray.config import DataConfig, SyntheticConfig
from cadc_ray.data import DataError, Manifest, load_entity_features, prepare_dataset
from cadc_ray.data.layout import interactions_dir
from cadc_ray.data.prepare import main

SMALL = SyntheticConfig(
    num_users=200, num_items=300, num_interactions=6_000, shard_rows=2_500, seed=3
)


def _table(prepared: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(interactions_dir(prepared))
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


@pytest.fixture(scope="module")
def small_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_dataset(DataConfig(synthetic=SMALL), tmp_path_factory.mktemp("syn"))


def test_shape_and_manifest(small_prepared: Path) -> None:
    manifest = Manifest.load(small_prepared)
    rows = _table(small_prepared)
    assert manifest.num_interactions == len(rows["user_id"])
    assert 0.97 * 6_000 <= manifest.num_interactions <= 6_000
    assert manifest.num_shards == 3  # 2,500 rows per shard
    assert manifest.num_users == 200 and manifest.has_timestamp and not manifest.has_rating
    np.testing.assert_array_equal(rows["row_index"], np.arange(manifest.num_interactions))
    # Contiguous ids over the entities that appear.
    assert set(np.unique(rows["user_id"])) == set(range(manifest.num_users))
    assert set(np.unique(rows["item_id"])) == set(range(manifest.num_items))
    # Every user has >= 3 interactions, no repeated (user, item), time rises within a user.
    assert np.bincount(rows["user_id"]).min() >= 3
    pairs = rows["user_id"] * manifest.num_items + rows["item_id"]
    assert len(np.unique(pairs)) == len(pairs)
    same_user = rows["user_id"][1:] == rows["user_id"][:-1]
    assert (np.diff(rows["timestamp"])[same_user] > 0).all()
    assert np.isnan(rows["rating"]).all()


def test_features_tables(small_prepared: Path) -> None:
    manifest = Manifest.load(small_prepared)
    users = load_entity_features(small_prepared, "user")
    items = load_entity_features(small_prepared, "item")
    assert users.categorical.shape == (manifest.num_users, 3)
    assert users.categorical.min() >= 1 and users.categorical.max() <= 8
    assert items.categorical.shape == (manifest.num_items, 1)
    assert items.multi_hot.shape == (manifest.num_items, 10) and items.multi_hot_name == "tags"
    assert [spec.name for spec in manifest.item_features] == ["category", "tags"]


def test_same_seed_same_bits_any_shard_size(small_prepared: Path, tmp_path: Path) -> None:
    again = prepare_dataset(
        DataConfig(synthetic=SyntheticConfig(**{**SMALL.__dict__, "shard_rows": 4_000})), tmp_path
    )
    first, second = _table(small_prepared), _table(again)
    for name in ("user_id", "item_id", "timestamp", "row_index"):
        np.testing.assert_array_equal(first[name], second[name])
    other = prepare_dataset(
        DataConfig(synthetic=SyntheticConfig(**{**SMALL.__dict__, "seed": 4})), tmp_path
    )
    assert not np.array_equal(_table(other)["item_id"][:500], first["item_id"][:500])


def test_preferences_are_collaborative(small_prepared: Path) -> None:
    """Users who share items share more items than chance: item-item co-occurrence of a
    user's early items predicts their last item better than popularity alone."""
    rows = _table(small_prepared)
    manifest = Manifest.load(small_prepared)
    users, items = rows["user_id"], rows["item_id"]
    last = np.flatnonzero(np.append(users[1:] != users[:-1], True))
    train = np.ones(len(users), dtype=bool)
    train[last] = False
    matrix = np.zeros((manifest.num_users, manifest.num_items))
    matrix[users[train], items[train]] = 1.0
    popularity = matrix.sum(axis=0)
    cooccurrence = matrix.T @ matrix
    np.fill_diagonal(cooccurrence, 0)
    scores_cf = matrix @ (cooccurrence / np.maximum(popularity, 1)[None, :] ** 0.5)
    scores_cf[matrix > 0] = -np.inf
    scores_pop = np.where(matrix > 0, -np.inf, popularity[None, :])
    heldout = items[last]

    def hit_rate(scores: np.ndarray) -> float:
        top = np.argsort(-scores, axis=1)[:, :10]
        return float((top == heldout[:, None]).any(axis=1).mean())

    assert hit_rate(scores_cf) > 1.3 * hit_rate(scores_pop)


def test_reuse_refuse_and_force(tmp_path: Path) -> None:
    config = DataConfig(synthetic=SMALL, prepared_dir=str(tmp_path / "p"))
    prepared = prepare_dataset(config, tmp_path)
    stamp = (prepared / "manifest.json").stat().st_mtime_ns
    assert prepare_dataset(config, tmp_path) == prepared
    assert (prepared / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    changed = DataConfig(
        synthetic=SyntheticConfig(**{**SMALL.__dict__, "seed": 9}), prepared_dir=str(prepared)
    )
    with pytest.raises(DataError, match="data config differ"):
        prepare_dataset(changed, tmp_path)
    prepare_dataset(changed, tmp_path, force=True)
    assert Manifest.load(prepared).data_config["synthetic"]["seed"] == 9
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temp folders left


def test_cli_prepares_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "--dataset",
            "synthetic",
            "--num-users",
            "50",
            "--num-items",
            "80",
            "--num-interactions",
            "600",
            "--set",
            "synthetic.latent_dim=4",
            "--output",
            str(tmp_path / "syn"),
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "syn")
    manifest = json.loads((tmp_path / "syn" / "manifest.json").read_text())
    assert manifest["data_config"]["synthetic"]["latent_dim"] == 4
    assert manifest["num_users"] == 50
