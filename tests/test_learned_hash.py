"""The learned-hash clustering (models/learned_hash.py) on hand-computed small cases."""

from __future__ import annotations

import numpy as np
import pytest

from cadc_ray.models.learned_hash import cluster_1d, merge_step, teacher_projection


def _ones(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.float64)


def test_one_merge_joins_the_closest_neighbours() -> None:
    # Equal counts: the frequency filter keeps pairs 0 and 1 (ties -> lower index); of
    # those, pair 1 (distance 0.1) is closer than pair 0 (distance 1).
    labels = merge_step(np.array([0.0, 1.0, 1.1, 5.0]), _ones(4), _ones(4), 1, size_cap=2)
    assert labels.tolist() == [0, 1, 1, 2]


def test_frequency_weighting_merges_rare_clusters_first() -> None:
    values = np.array([0.0, 0.5, 2.0, 3.5])
    # counts 100, 100, 0, 0: normalized 1.707, 1.707, 1, 1; pair products 2.91, 1.71, 1.
    # The closest pair (0, distance 0.5) is frequent and drops out at the 2K = 2 filter;
    # pairs 2 and 1 tie on distance 1.5 and pair 2 ranks first on frequency.
    frequent = merge_step(values, _ones(4), np.array([100.0, 100.0, 0.0, 0.0]), 1, size_cap=2)
    assert frequent.tolist() == [0, 1, 2, 2]
    # Without frequency information the same values merge the closest pair.
    uniform = merge_step(values, _ones(4), _ones(4), 1, size_cap=2)
    assert uniform.tolist() == [0, 0, 1, 2]


def test_size_cap_skips_a_too_large_merge_and_falls_back_to_the_smallest() -> None:
    values = np.array([0.0, 1.0, 2.0, 3.0])
    sizes = np.array([3.0, 1.0, 1.0, 1.0])
    # Pairs 0 (size 4) and 1 (size 2) pass the first two filters (ties -> index order).
    assert merge_step(values, sizes, _ones(4), 1, size_cap=10).tolist() == [0, 0, 1, 2]
    assert merge_step(values, sizes, _ones(4), 1, size_cap=3).tolist() == [0, 1, 1, 2]
    # Nothing within a cap of 1: the smallest merged size (pair 1) is taken anyway.
    assert merge_step(values, sizes, _ones(4), 1, size_cap=1).tolist() == [0, 1, 1, 2]


def test_chains_over_the_cap_split_left_to_right_into_pairs() -> None:
    values = np.arange(5, dtype=np.float64)
    # K = 4: all four pairs are selected, a chain ABCDE of size 5.
    assert merge_step(values, _ones(5), _ones(5), 4, size_cap=2).tolist() == [0, 0, 1, 1, 2]
    assert merge_step(values, _ones(5), _ones(5), 4, size_cap=5).tolist() == [0, 0, 0, 0, 0]


def test_cluster_1d_reaches_the_target_with_merged_means() -> None:
    values = np.array([10.1, 0.0, 5.0, 0.1, 10.0, 5.1])  # unsorted ids
    assignment = cluster_1d(values, _ones(6), target=3)
    # Steps (K = 1 each): merge 0.0+0.1, then 5.0+5.1 (the frequent pair 0 ranks last on
    # frequency), then 10.0+10.1. Cluster numbers follow the value order.
    assert assignment.tolist() == [2, 0, 1, 0, 2, 1]


def test_cluster_1d_respects_target_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=2000)
    counts = rng.zipf(1.5, size=2000).astype(np.float64)
    first = cluster_1d(values, counts, target=200)
    assert first.shape == (2000,)
    assert np.unique(first).tolist() == list(range(200))
    np.testing.assert_array_equal(first, cluster_1d(values, counts, target=200))
    # Clusters are contiguous in value: sorting by value never goes back to a cluster.
    assert np.all(np.diff(first[np.argsort(values, kind="stable")]) >= 0)


def test_cluster_1d_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="target must be >= 1"):
        cluster_1d(np.zeros(3), np.zeros(3), target=0)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        cluster_1d(np.zeros(3), -np.ones(3), target=1)


def test_teacher_projection_finds_the_leading_direction() -> None:
    rng = np.random.default_rng(1)
    direction = np.array([3.0, 4.0, 0.0]) / 5.0
    rows = rng.normal(size=(500, 1)) * 10 * direction + rng.normal(size=(500, 3)) * 0.01
    projected = teacher_projection(rows.astype(np.float32), 1)
    assert projected.shape == (500, 1)
    expected = (rows - rows.mean(axis=0)) @ direction
    np.testing.assert_allclose(np.abs(projected[:, 0]), np.abs(expected), atol=0.05)
