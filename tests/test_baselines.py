"""Over-/under-sampling towards the long tail, and LogQ frequencies, by hand."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from cadc_ray.baselines import (
    REBALANCERS,
    head_items,
    log_frequency,
    over_sampling,
    rebalance,
    under_sampling,
)
from cadc_ray.methods import Rebalance

# 10 occurring items (ids 0..9, item 10 never occurs): item 0 has 11 rows, item 1 has 5,
# items 2..9 one row each. Head = top 20% of 10 occurring items = items {0, 1}: 16 rows.
ITEMS = np.array([0] * 11 + [1] * 5 + list(range(2, 10)))
USERS = np.arange(ITEMS.size) % 7
NUM_ITEMS = 11


def test_rebalancers_mirror_the_methods_literal() -> None:
    assert set(REBALANCERS) == set(get_args(Rebalance))


def test_head_items_are_the_top_fifth_of_occurring_items() -> None:
    assert np.flatnonzero(head_items(ITEMS, NUM_ITEMS)).tolist() == [0, 1]
    # ties broken by item id: 5 items with equal counts -> ceil(0.2 * 5) = 1 head item, id 0
    assert np.flatnonzero(head_items(np.arange(5), 5)).tolist() == [0]


def test_over_sampling_repeats_tail_rows_until_balanced() -> None:
    users, items = over_sampling(USERS, ITEMS, NUM_ITEMS, np.random.default_rng(0))
    assert users.size == ITEMS.size + (16 - 8)
    assert np.array_equal(items[: ITEMS.size], ITEMS)
    extra_items = items[ITEMS.size :]
    assert set(extra_items.tolist()) <= set(range(2, 10))
    pairs = set(zip(USERS.tolist(), ITEMS.tolist(), strict=True))
    assert (
        set(zip(users.tolist(), items.tolist(), strict=True)) == pairs
    )  # only existing rows repeat


def test_under_sampling_drops_head_rows_until_balanced() -> None:
    users, items = under_sampling(USERS, ITEMS, NUM_ITEMS, np.random.default_rng(0))
    assert users.size == 8 + 8
    assert np.array_equal(np.sort(items[items >= 2]), np.arange(2, 10))
    assert int(np.isin(items, [0, 1]).sum()) == 8


def test_same_seed_same_rows() -> None:
    first = rebalance("under_sampling", USERS, ITEMS, NUM_ITEMS, seed=3)
    second = rebalance("under_sampling", USERS, ITEMS, NUM_ITEMS, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    _users, items = rebalance("none", USERS, ITEMS, NUM_ITEMS, seed=3)
    assert np.array_equal(items, ITEMS)


def test_log_frequency() -> None:
    log_q = log_frequency(np.array([3, 1, 0]))  # items 0, 0, 0, 1 of 3 items
    assert log_q.dtype == np.float32
    assert np.allclose(log_q, np.log([0.75, 0.25, 0.25]))  # unseen item 2 counts once
    with pytest.raises(ValueError, match="non-empty"):
        log_frequency(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="must be >= 0"):
        log_frequency(np.array([2, -1, 0]))
