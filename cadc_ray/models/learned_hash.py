"""Learned hash functions ("Learning to Collide"): 1-D agglomerative clustering of ids.

Pure numpy, no torch. The input is one teacher dimension (a value per id) and each id's
access count; the output maps every id to a cluster in ``[0, target)``, so that ids with
close teacher values (similar ids) share an embedding row.

The algorithm (METHOD 2, the paper's pseudocode, vectorized): clusters are kept sorted by
value; only neighbouring pairs are merge candidates. Each step, with ``K`` merges allowed:

1. the ``2K`` pairs with the smallest product of normalized counts
   (``count / ||counts||_2 + 1``: rarely accessed clusters merge first),
2. of those, the ``1.5K`` pairs with the smallest value distance,
3. of those, up to ``K`` (closest first) whose merged size is within the size cap, or,
   when none is, the ``K`` with the smallest merged size.

Selected pairs that touch form chains; a chain whose total size exceeds the cap is split
left to right into pairs (``ABCDE`` -> ``AB``, ``CD``, ``E``). A merged cluster's value is
the mean of the merged clusters' values; sizes and counts add up. Steps repeat until the
number of clusters reaches the target.

Choices the paper leaves open (docs/compression.md): ``K`` per step is
``max(1, ceil(merge_fraction * clusters))`` capped at ``clusters - target`` so a step
never undershoots the target; the cap test is ``size <= cap``; chains are split in the
fallback step too (so a step never creates one huge cluster); ties in the filters fall to
the lower pair index (stable sorts), which makes the result deterministic.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_MERGE_FRACTION = 0.05
"""Share of the current clusters merged per step: ~50 numpy passes for a 10x reduction."""


def _smallest(keys: np.ndarray, count: int, among: np.ndarray | None = None) -> np.ndarray:
    """Indices (into ``keys``, or into ``among`` when given) of the ``count`` smallest keys,
    smallest first, ties to the lower index. ``among``: candidate positions to choose from."""
    candidates = np.arange(keys.size) if among is None else among
    values = keys[candidates]
    if count < values.size:
        # O(N) threshold on the big first filter; the stable sort below is on few. Ties at
        # the threshold go to the earliest candidates, as a full stable sort would.
        threshold = np.partition(values, count - 1)[count - 1]
        below = np.flatnonzero(values < threshold)
        tied = np.flatnonzero(values == threshold)[: count - below.size]
        keep = np.sort(np.concatenate([below, tied]))
        candidates, values = candidates[keep], values[keep]
    order = np.argsort(values, kind="stable")[:count]
    result: np.ndarray = candidates[order]
    return result


def merge_step(
    values: np.ndarray,
    sizes: np.ndarray,
    counts: np.ndarray,
    merges: int,
    size_cap: float,
) -> np.ndarray:
    """One step of the clustering: the new cluster label of each current cluster.

    values, sizes, counts: (C,) per cluster, sorted by value. ``merges``: K >= 1.
    Returns labels (C,) int64, non-decreasing, from 0: neighbours with one label merge.
    """
    num_clusters = values.size
    if num_clusters < 2 or merges < 1:
        return np.arange(num_clusters, dtype=np.int64)
    counts = counts.astype(np.float64)
    norm = float(np.linalg.norm(counts))
    normalized = counts / norm + 1.0 if norm > 0 else np.ones_like(counts)
    pair_frequency = normalized[:-1] * normalized[1:]  # (C-1,) pair p merges p and p+1
    pair_distance = values[1:] - values[:-1]
    pair_size = sizes[:-1] + sizes[1:]

    by_frequency = _smallest(pair_frequency, min(2 * merges, num_clusters - 1))
    by_distance = _smallest(
        pair_distance, min(math.ceil(1.5 * merges), by_frequency.size), among=by_frequency
    )
    within_cap = by_distance[pair_size[by_distance] <= size_cap]
    if within_cap.size:
        chosen = within_cap[:merges]
    else:
        chosen = _smallest(pair_size, min(merges, by_distance.size), among=by_distance)

    linked = np.zeros(num_clusters, dtype=bool)  # linked[i]: cluster i joins cluster i-1
    linked[chosen + 1] = True
    run_start = ~linked
    run_id = np.cumsum(run_start) - 1  # (C,) chain of each cluster
    start_index = np.flatnonzero(run_start)
    position = np.arange(num_clusters) - start_index[run_id]
    run_size = np.bincount(run_id, weights=sizes)
    run_length = np.bincount(run_id)
    split = (run_size > size_cap) & (run_length > 2)
    # A split chain restarts a group at every even position: pairs, left to right.
    new_group = run_start | (split[run_id] & (position % 2 == 0))
    labels: np.ndarray = np.cumsum(new_group) - 1
    return labels.astype(np.int64)


def cluster_1d(
    values: np.ndarray,
    counts: np.ndarray,
    target: int,
    size_cap: float | None = None,
    merge_fraction: float = DEFAULT_MERGE_FRACTION,
) -> np.ndarray:
    """Clusters ids by one teacher value each -> cluster of each id, (N,) int64 in [0, target).

    values: (N,) float teacher values; counts: (N,) access counts (>= 0). ``size_cap``:
    the most ids a merged cluster may hold (default: twice the mean, ``2 * N / target``).
    Cluster numbers follow the value order (cluster 0 holds the smallest values).
    """
    values = np.asarray(values, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    num_ids = values.size
    if values.ndim != 1 or counts.shape != values.shape:
        raise ValueError(
            f"values and counts must be equal 1-D arrays, got {values.shape}, {counts.shape}"
        )
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    if np.any(counts < 0) or not np.all(np.isfinite(values)):
        raise ValueError("counts must be >= 0 and values finite")
    if not 0 < merge_fraction <= 0.5:
        raise ValueError(f"merge_fraction must lie in (0, 0.5], got {merge_fraction}")
    cap = 2.0 * num_ids / target if size_cap is None else float(size_cap)
    order = np.argsort(values, kind="stable")
    cluster_of_sorted: np.ndarray = np.arange(num_ids, dtype=np.int64)  # sorted pos -> cluster
    cluster_values: np.ndarray = values[order]
    cluster_counts: np.ndarray = counts[order]
    cluster_sizes: np.ndarray = np.ones(num_ids, dtype=np.float64)
    while cluster_values.size > target:
        excess = cluster_values.size - target
        merges = min(excess, max(1, math.ceil(merge_fraction * cluster_values.size)))
        labels = merge_step(cluster_values, cluster_sizes, cluster_counts, merges, cap)
        members = np.bincount(labels)
        cluster_values = np.bincount(labels, weights=cluster_values) / members
        cluster_sizes = np.bincount(labels, weights=cluster_sizes)
        cluster_counts = np.bincount(labels, weights=cluster_counts)
        cluster_of_sorted = labels[cluster_of_sorted]
    assignment = np.empty(num_ids, dtype=np.int64)
    assignment[order] = cluster_of_sorted
    return assignment


def teacher_projection(rows: np.ndarray, dims: int) -> np.ndarray:
    """The leading ``dims`` principal components of teacher rows: (N, W) -> (N, dims).

    A low-dimensional teacher (METHOD 2: D = 2 or 4) from CADC's MF rows without training a
    second MF. Signs are fixed (largest loading positive) so the result is deterministic.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or not 1 <= dims <= rows.shape[1]:
        raise ValueError(f"need (N, W) rows with 1 <= dims <= W, got {rows.shape}, dims {dims}")
    centered = rows - rows.mean(axis=0)
    covariance = centered.T @ centered / max(rows.shape[0] - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    components = eigenvectors[:, np.argsort(eigenvalues)[::-1][:dims]]  # (W, dims)
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(dims)])
    projected: np.ndarray = centered @ (components * np.where(signs == 0, 1.0, signs))
    return projected
