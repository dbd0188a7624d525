"""The embedded synthetic dataset: latent-factor preferences, power-law popularity.

Generative model (all draws from numpy's PCG64 seeded by ``SyntheticConfig.seed``; the same
config gives bit-identical shards whatever the machine):

1. Latent taste. User factors ``p_u`` and item factors ``q_i`` are i.i.d. Gaussian in
   ``latent_dim`` dimensions with variance ``1/sqrt(latent_dim)`` per element, so the
   affinity ``s(u, i) = p_u . q_i`` has unit variance.
2. Popularity. Item ``i`` gets the weight ``rank(i)^-popularity_exponent`` (ranks are a
   random permutation): a power law, as in real catalogues.
3. Activity. User ``u`` makes ``n_u`` interactions, log-normal (sigma ``activity_sigma``)
   scaled so that they sum to ``num_interactions``; at least 3 (so every user is evaluated),
   at most half the catalogue.
4. Choice. Each user draws ``candidates_per_interaction * n_u`` candidate items from the
   popularity distribution and keeps the ``n_u`` distinct ones with the largest
   ``s(u, i) / temperature + Gumbel noise`` (Gumbel-top-k: sampling without replacement
   with probability proportional to ``exp(s / temperature)`` among the candidates). The
   result: ``P(i | u)`` is roughly ``popularity(i) * exp(s(u, i) / temperature)``; the
   preference is mostly collaborative (latent), items are never repeated by a user.
5. Time. Each user starts at a uniform time within a year and spaces interactions by
   exponential gaps (mean one day); the order of a user's items is random, so the
   user's later items come from the same taste as the earlier ones (no drift).
6. Features, weakly informative. Users: three categorical attributes, each a quantile
   bucket (8 buckets) of a random projection of ``p_u`` plus Gaussian noise of standard
   deviation ``feature_noise`` (the projection has unit variance). Items: a ``category``
   (argmax of 12 noisy projections of ``q_i``) and ``tags`` (10 multi-hot flags, a flag set
   when its noisy projection exceeds 1).

Users are generated in chunks (at most ``GENERATION_CHUNK_ROWS`` interactions each), so memory
stays bounded at any size; shards hold ``shard_rows`` rows. Rows are ordered by user, then
time (like MovieLens' files). The count of rows can differ slightly from ``num_interactions``
(the floor of 3 per user adds rows; a user whose candidates hold fewer than ``n_u`` distinct
items loses some); the manifest has the exact count. Items that no user picked are dropped and the item ids compacted, so ids stay
contiguous over the items that appear.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cadc_ray.atomic import write_atomic
from cadc_ray.config import SyntheticConfig
from cadc_ray.data.errors import DataError
from cadc_ray.data.features import EntityFeatures
from cadc_ray.data.layout import INTERACTION_SCHEMA, interactions_table, shard_name

logger = logging.getLogger(__name__)

GENERATION_CHUNK_ROWS = 50_000  # x candidates_per_interaction rows of candidates in memory
START_EPOCH_SECONDS = 1_600_000_000
SECONDS_PER_DAY = 86_400
USER_ATTRIBUTE_BUCKETS = 8
ITEM_CATEGORIES = 12
ITEM_TAGS = 10
MIN_INTERACTIONS_PER_USER = 3


@dataclass(frozen=True)
class SyntheticResult:
    num_interactions: int
    num_users: int
    num_items: int
    num_shards: int
    user_features: EntityFeatures
    item_features: EntityFeatures
    item_raw_ids: np.ndarray  # (num_items,) generator item index of each contiguous item id


def validate_synthetic(config: SyntheticConfig) -> None:
    """DataError naming the ``data.synthetic`` field when the config cannot be generated."""
    checks = {
        "num_users": config.num_users >= 1,
        "num_items": config.num_items >= 2 * MIN_INTERACTIONS_PER_USER,
        "num_interactions": config.num_interactions >= MIN_INTERACTIONS_PER_USER * config.num_users,
        "latent_dim": config.latent_dim >= 1,
        "shard_rows": config.shard_rows >= 1,
        "temperature": config.temperature > 0,
        "candidates_per_interaction": config.candidates_per_interaction >= 1,
        "activity_sigma": config.activity_sigma >= 0,
        "feature_noise": config.feature_noise >= 0,
    }
    for name, ok in checks.items():
        if not ok:
            raise DataError(
                f"data.synthetic.{name}: invalid value {getattr(config, name)!r} "
                f"(num_items >= {2 * MIN_INTERACTIONS_PER_USER}, num_interactions >= "
                f"{MIN_INTERACTIONS_PER_USER} * num_users, positive sizes and temperature)"
            )


def _interactions_per_user(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """``(U,)`` int64 counts, log-normal, summing to about ``num_interactions``."""
    weights = rng.lognormal(0.0, config.activity_sigma, size=config.num_users)
    target = weights / weights.sum() * config.num_interactions
    counts = np.floor(target).astype(np.int64)
    remainder = config.num_interactions - int(counts.sum())
    if remainder > 0:  # largest remainders first: the total is exact before clipping
        counts[np.argsort(counts - target)[:remainder]] += 1
    return np.clip(counts, MIN_INTERACTIONS_PER_USER, config.num_items // 2)


def _user_features(factors: np.ndarray, noise: float, rng: np.random.Generator) -> EntityFeatures:
    n, k = factors.shape
    directions = rng.normal(size=(k, 3))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    projected = factors @ directions / np.sqrt(np.mean(np.sum(factors**2, axis=1)) / k)
    noisy = projected + noise * rng.normal(size=projected.shape)
    categorical = np.zeros((n, 3), dtype=np.int64)
    for j in range(3):
        edges = np.quantile(noisy[:, j], np.linspace(0, 1, USER_ATTRIBUTE_BUCKETS + 1)[1:-1])
        categorical[:, j] = np.searchsorted(edges, noisy[:, j]) + 1
    return EntityFeatures(
        categorical=categorical,
        categorical_names=("attribute_a", "attribute_b", "attribute_c"),
        categorical_cardinalities=(USER_ATTRIBUTE_BUCKETS + 1,) * 3,
        multi_hot=np.zeros((n, 0), dtype=np.float32),
    )


def _item_features(factors: np.ndarray, noise: float, rng: np.random.Generator) -> EntityFeatures:
    n, k = factors.shape
    scale = np.sqrt(np.mean(np.sum(factors**2, axis=1)) / k)
    category_directions = rng.normal(size=(k, ITEM_CATEGORIES)) / np.sqrt(k)
    category_scores = factors @ category_directions / scale
    category_scores += noise * rng.normal(size=category_scores.shape)
    tag_directions = rng.normal(size=(k, ITEM_TAGS)) / np.sqrt(k)
    tag_scores = factors @ tag_directions / scale + noise * rng.normal(size=(n, ITEM_TAGS))
    return EntityFeatures(
        categorical=(np.argmax(category_scores, axis=1) + 1).astype(np.int64).reshape(-1, 1),
        categorical_names=("category",),
        categorical_cardinalities=(ITEM_CATEGORIES + 1,),
        multi_hot=(tag_scores > 1.0).astype(np.float32),
        multi_hot_name="tags",
    )


def _generate_chunk(
    users: np.ndarray,
    counts: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    popularity_cdf: np.ndarray,
    user_start: np.ndarray,
    config: SyntheticConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interactions of ``users`` ``(C,)``: ``(user, item, timestamp)`` arrays, sorted by user
    then time."""
    candidate_counts = counts * config.candidates_per_interaction
    cand_user = np.repeat(users, candidate_counts)
    cand_item = np.searchsorted(popularity_cdf, rng.random(len(cand_user)), side="right")
    cand_item = np.minimum(cand_item, len(popularity_cdf) - 1)
    affinity = np.einsum("ij,ij->i", user_factors[cand_user], item_factors[cand_item])
    key = affinity / config.temperature + rng.gumbel(size=len(cand_user))
    # Sort by user, best key first: one float64 argsort (keys are clipped far inside the
    # per-user span, so users never interleave; np.lexsort was 10x slower here).
    span = 1_000.0
    composite = (cand_user - users[0]).astype(np.float64) * span - np.clip(key, -400.0, 400.0)
    order = np.argsort(composite)
    cand_user, cand_item = cand_user[order], cand_item[order]
    # Keep each (user, item) once, at its best key: np.unique's return_index is the first
    # occurrence in this order.
    _, first = np.unique(cand_user * len(popularity_cdf) + cand_item, return_index=True)
    first.sort()
    cand_user, cand_item = cand_user[first], cand_item[first]
    # Per user, the n_u best keys (Gumbel-top-k).
    starts = np.searchsorted(cand_user, users)
    rank = np.arange(len(cand_user)) - np.repeat(starts, np.diff(np.append(starts, len(cand_user))))
    chosen = rank < counts[cand_user - users[0]]
    user, item = cand_user[chosen], cand_item[chosen]
    # Random order within a user, then cumulative exponential gaps from the user's start.
    order = np.argsort((user - users[0]).astype(np.float64) + rng.random(len(user)))
    user, item = user[order], item[order]
    gaps = rng.exponential(SECONDS_PER_DAY, size=len(user)).astype(np.int64) + 1
    cumulative = np.cumsum(gaps)
    group_start = np.searchsorted(user, users)
    offset = np.concatenate([[0], cumulative])[group_start]
    per_user_offset = np.repeat(offset, np.diff(np.append(group_start, len(user))))
    timestamp = user_start[user] + cumulative - per_user_offset
    return user, item, timestamp


def generate_synthetic(
    config: SyntheticConfig,
    interactions_dir: Path,
    log_progress: Callable[[str], None] | None = None,
) -> SyntheticResult:
    """Writes the synthetic interactions as Parquet shards into ``interactions_dir`` (which
    must exist and be empty) and returns the counts and feature tables."""
    validate_synthetic(config)
    started = time.perf_counter()
    rng = np.random.default_rng([config.seed, 0])
    k = config.latent_dim
    scale = k**-0.25  # element std so that p . q has unit variance
    user_factors = (rng.normal(size=(config.num_users, k)) * scale).astype(np.float32)
    item_factors = (rng.normal(size=(config.num_items, k)) * scale).astype(np.float32)
    ranks = rng.permutation(config.num_items) + 1
    weights = ranks.astype(np.float64) ** -config.popularity_exponent
    popularity_cdf = np.cumsum(weights / weights.sum())
    counts = _interactions_per_user(config, rng)
    user_start = START_EPOCH_SECONDS + rng.integers(0, 365 * SECONDS_PER_DAY, config.num_users)

    item_seen = np.zeros(config.num_items, dtype=bool)
    row_count = 0
    shard_index = 0
    shard_rows = 0
    writer: pq.ParquetWriter | None = None
    # Chunk boundaries: a new chunk starts where the running count crosses a multiple of
    # GENERATION_CHUNK_ROWS (bounded memory; chunk i always holds the same users).
    chunk_of_user = (np.cumsum(counts) - 1) // GENERATION_CHUNK_ROWS
    boundaries = np.concatenate([[0], np.flatnonzero(np.diff(chunk_of_user)) + 1, [len(counts)]])
    try:
        for chunk, (low, high) in enumerate(itertools.pairwise(boundaries)):
            chunk_rng = np.random.default_rng([config.seed, 1, chunk])
            users = np.arange(low, high, dtype=np.int64)
            user, item, timestamp = _generate_chunk(
                users,
                counts[low:high],
                user_factors,
                item_factors,
                popularity_cdf,
                user_start,
                config,
                chunk_rng,
            )
            item_seen[item] = True
            position = 0
            while position < len(user):
                if writer is None:
                    writer = pq.ParquetWriter(
                        interactions_dir / shard_name(shard_index), INTERACTION_SCHEMA
                    )
                take = min(config.shard_rows - shard_rows, len(user) - position)
                part = slice(position, position + take)
                writer.write_table(
                    interactions_table(
                        np.arange(row_count, row_count + take),
                        user[part],
                        item[part],
                        timestamp[part],
                        None,
                    )
                )
                position += take
                row_count += take
                shard_rows += take
                if shard_rows >= config.shard_rows:
                    writer.close()
                    writer = None
                    if log_progress is not None:
                        log_progress(
                            f"synthetic shard {shard_index} written ({row_count:,} rows, "
                            f"{time.perf_counter() - started:.1f} s)"
                        )
                    shard_index += 1
                    shard_rows = 0
    finally:
        if writer is not None:
            writer.close()
            shard_index += 1
    num_shards = shard_index

    feature_rng = np.random.default_rng([config.seed, 2])
    user_features = _user_features(user_factors, config.feature_noise, feature_rng)
    item_features = _item_features(item_factors, config.feature_noise, feature_rng)
    kept_items = np.flatnonzero(item_seen)
    if len(kept_items) < config.num_items:
        # Compact item ids over the items that appear (rare: tiny datasets).
        new_id = np.full(config.num_items, -1, dtype=np.int64)
        new_id[kept_items] = np.arange(len(kept_items))
        for index in range(num_shards):
            path = interactions_dir / shard_name(index)
            table = pq.read_table(path)
            item = new_id[table.column("item_id").to_numpy()]
            table = table.set_column(2, "item_id", pa.array(item))
            write_atomic(path, functools.partial(pq.write_table, table))
        item_features = EntityFeatures(
            categorical=item_features.categorical[kept_items],
            categorical_names=item_features.categorical_names,
            categorical_cardinalities=item_features.categorical_cardinalities,
            multi_hot=item_features.multi_hot[kept_items],
            multi_hot_name=item_features.multi_hot_name,
        )
    if row_count == 0:  # pragma: no cover - validate_synthetic rules it out
        raise DataError("data.synthetic: generated no interactions")
    return SyntheticResult(
        num_interactions=row_count,
        num_users=config.num_users,
        num_items=len(kept_items),
        num_shards=num_shards,
        user_features=user_features,
        item_features=item_features,
        item_raw_ids=kept_items,
    )
