"""ALS pretrainer through implicit: shapes, orientation, determinism, a usable teacher."""

from __future__ import annotations

import numpy as np
import pytest

from cadc_ray.pretrain import fit_als, interaction_matrix


def _block_data() -> tuple[np.ndarray, np.ndarray]:
    """Users 0-19 like items 0-9, users 20-39 like items 10-19 (each user all but one)."""
    users, items = [], []
    for user in range(40):
        block = range(0, 10) if user < 20 else range(10, 20)
        for item in block:
            if item % 10 != user % 10:
                users.append(user)
                items.append(item)
    return np.array(users), np.array(items)


def test_interaction_matrix_has_users_as_rows_and_binary_values() -> None:
    matrix = interaction_matrix(np.array([0, 0, 2]), np.array([1, 1, 3]), 3, 4)
    assert matrix.shape == (3, 4)
    assert matrix.toarray().tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match=r"item_id must lie in \[0, 4\)"):
        interaction_matrix(np.array([0]), np.array([4]), 3, 4)


def test_fit_als_tables_rank_in_block_items_first_and_are_seeded() -> None:
    users, items = _block_data()
    kwargs = {
        "num_users": 40,
        "num_items": 21,  # item 20 never occurs
        "dim_plus_bias": 4,
        "iterations": 5,
        "regularization": 0.01,
        "alpha": 1.0,
        "seed": 0,
        "num_threads": 1,
    }
    tables = fit_als(users, items, **kwargs)  # type: ignore[arg-type]
    assert tables.user.shape == (40, 4) and tables.item.shape == (21, 4)
    assert tables.user.dtype == np.float32 and tables.pretrainer == "als"
    scores = tables.user @ tables.item.T  # (40, 21)
    # The held-back item of each user's own block beats every item of the other block.
    for user in (3, 27):
        own = (user % 10) + (0 if user < 20 else 10)
        other = range(10, 20) if user < 20 else range(0, 10)
        assert scores[user, own] > max(scores[user, o] for o in other)
    again = fit_als(users, items, **kwargs)  # type: ignore[arg-type]
    assert np.array_equal(tables.user, again.user) and np.array_equal(tables.item, again.item)
