"""Long-tail baselines of METHOD 1.4: over-/under-sampling of the sample, LogQ frequencies.

Head and tail are defined on the interactions being rebalanced (the sample ``D_sub``): the
head is the ``head_item_fraction`` (default 20%) most frequent items *among the items that
occur* (ties broken by item id), the tail is every other occurring item — the Pareto split
usually used for long-tail recommendation (Zhang et al. 2021, the paper's [27], studies the
same head/tail transfer). Both rebalancers aim at equal interaction mass for head and tail:

- ``over_sampling`` keeps every row and adds ``max(0, head_rows - tail_rows)`` tail rows
  drawn uniformly with replacement from the tail rows;
- ``under_sampling`` keeps every tail row and ``min(head_rows, tail_rows)`` head rows drawn
  uniformly without replacement.

Arrays in, arrays out, seeded numpy ``Generator`` (same seed, same rows).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from cadc_ray.methods import Rebalance

logger = logging.getLogger(__name__)

HEAD_ITEM_FRACTION = 0.2

Interactions = tuple[np.ndarray, np.ndarray]


def _check(users: np.ndarray, items: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if users.ndim != 1 or users.shape != items.shape:
        raise ValueError(f"users {users.shape} and items {items.shape} must be 1-D and aligned")
    if items.size and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(
            f"item ids must lie in [0, {num_items}), got [{items.min()}, {items.max()}]"
        )
    return users, items


def head_items(
    items: np.ndarray, num_items: int, head_item_fraction: float = HEAD_ITEM_FRACTION
) -> np.ndarray:
    """Boolean (num_items,): the most frequent ``head_item_fraction`` of the occurring items."""
    if not 0.0 < head_item_fraction < 1.0:
        raise ValueError(f"head_item_fraction must lie in (0, 1), got {head_item_fraction}")
    counts = np.bincount(np.asarray(items, dtype=np.int64), minlength=num_items)
    occurring = np.flatnonzero(counts)
    num_head = int(np.ceil(head_item_fraction * occurring.size))
    # Stable sort on -count: equal counts keep ascending item id order.
    order = occurring[np.argsort(-counts[occurring], kind="stable")]
    is_head = np.zeros(num_items, dtype=bool)
    is_head[order[:num_head]] = True
    return is_head


def over_sampling(
    users: np.ndarray,
    items: np.ndarray,
    num_items: int,
    rng: np.random.Generator,
    head_item_fraction: float = HEAD_ITEM_FRACTION,
) -> Interactions:
    """All rows plus repeated tail rows until tail rows match head rows (see module doc)."""
    users, items = _check(users, items, num_items)
    in_head = head_items(items, num_items, head_item_fraction)[items]
    tail_rows = np.flatnonzero(~in_head)
    extra = int(in_head.sum()) - tail_rows.size
    if extra <= 0 or tail_rows.size == 0:
        return users.copy(), items.copy()
    repeated = rng.choice(tail_rows, size=extra, replace=True)
    logger.info("over_sampling: %d rows + %d repeated tail rows", users.size, extra)
    return np.concatenate([users, users[repeated]]), np.concatenate([items, items[repeated]])


def under_sampling(
    users: np.ndarray,
    items: np.ndarray,
    num_items: int,
    rng: np.random.Generator,
    head_item_fraction: float = HEAD_ITEM_FRACTION,
) -> Interactions:
    """Tail rows plus as many head rows (drawn without replacement), in original row order."""
    users, items = _check(users, items, num_items)
    in_head = head_items(items, num_items, head_item_fraction)[items]
    head_rows = np.flatnonzero(in_head)
    keep_head = min(head_rows.size, int((~in_head).sum()))
    keep = ~in_head
    keep[rng.choice(head_rows, size=keep_head, replace=False)] = True
    logger.info("under_sampling: kept %d of %d rows", int(keep.sum()), users.size)
    return users[keep], items[keep]


def no_rebalance(
    users: np.ndarray,
    items: np.ndarray,
    num_items: int,
    rng: np.random.Generator,
    head_item_fraction: float = HEAD_ITEM_FRACTION,
) -> Interactions:
    """The sample as it is."""
    users, items = _check(users, items, num_items)
    return users, items


Rebalancer = Callable[[np.ndarray, np.ndarray, int, np.random.Generator, float], Interactions]

REBALANCERS: dict[Rebalance, Rebalancer] = {
    "none": no_rebalance,
    "over_sampling": over_sampling,
    "under_sampling": under_sampling,
}
"""Mirrors ``methods.Rebalance``."""


def rebalance(
    name: Rebalance,
    users: np.ndarray,
    items: np.ndarray,
    num_items: int,
    seed: int,
    head_item_fraction: float = HEAD_ITEM_FRACTION,
) -> Interactions:
    """``REBALANCERS[name]`` with ``np.random.default_rng(seed)``."""
    if name not in REBALANCERS:
        raise ValueError(f"unknown rebalance {name!r} (known: {sorted(REBALANCERS)})")
    return REBALANCERS[name](
        users, items, num_items, np.random.default_rng(seed), head_item_fraction
    )


def log_frequency(item_counts: np.ndarray) -> np.ndarray:
    """log q(i) for LogQ from the items' training counts ``(num_items,)`` -> float32.

    q = the item's frequency in the training stream (counted, never held: the streamed
    path counts batch by batch). Items that never occur count once (log(1 / N)) so that a
    sampled negative of an unseen item gets a finite correction; occurring items keep their
    exact frequency.
    """
    counts = np.asarray(item_counts, dtype=np.int64)
    if counts.size and counts.min() < 0:
        raise ValueError(f"item counts must be >= 0, got {counts.min()}")
    rows = int(counts.sum())
    if rows == 0:
        raise ValueError("log_frequency needs a non-empty training stream")
    return np.log(np.maximum(counts, 1).astype(np.float64) / rows).astype(np.float32)
