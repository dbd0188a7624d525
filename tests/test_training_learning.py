"""MF and the two-tower model learn on small latent-factor data (seeded, CPU, a few seconds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse
import torch

from cadc_ray.config import ModelConfig
from cadc_ray.data.features import EntityFeatures
from cadc_ray.evaluation import constant_item_scorer, evaluate_full_ranking, popularity_scores
from cadc_ray.models import MatrixFactorization, build_two_tower
from cadc_ray.training import (
    UniformNegativeSampler,
    make_mf_optimizers,
    make_optimizer,
    train_mf_epoch,
    train_two_tower_epoch,
)

NUM_USERS = 300
NUM_ITEMS = 120
PER_USER = 25


@dataclass
class LatentData:
    train_users: np.ndarray
    train_items: np.ndarray
    val_users: np.ndarray
    val_items: np.ndarray
    known: scipy.sparse.csr_matrix
    user_features: EntityFeatures
    item_features: EntityFeatures


def latent_factor_data(seed: int = 0) -> LatentData:
    """Each user draws PER_USER + 1 distinct items with p ~ exp(3 u.v); the last is held out.

    Users and items live in 4 clusters (a categorical feature), so features carry signal too.
    """
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(0, 4, NUM_USERS)
    item_cluster = rng.integers(0, 4, NUM_ITEMS)
    centers = rng.normal(size=(4, 8))
    user_vectors = centers[user_cluster] + 0.3 * rng.normal(size=(NUM_USERS, 8))
    item_vectors = centers[item_cluster] + 0.3 * rng.normal(size=(NUM_ITEMS, 8))
    logits = 0.8 * user_vectors @ item_vectors.T
    train_users, train_items, val_items = [], [], []
    for user in range(NUM_USERS):
        p = np.exp(logits[user] - logits[user].max())
        chosen = rng.choice(NUM_ITEMS, size=PER_USER + 1, replace=False, p=p / p.sum())
        train_users += [user] * PER_USER
        train_items += chosen[:PER_USER].tolist()
        val_items.append(chosen[PER_USER])
    users = np.array(train_users, dtype=np.int64)
    items = np.array(train_items, dtype=np.int64)
    known = scipy.sparse.csr_matrix(
        (np.ones(users.size, dtype=np.float32), (users, items)), shape=(NUM_USERS, NUM_ITEMS)
    )

    def features(cluster: np.ndarray) -> EntityFeatures:
        return EntityFeatures(
            categorical=(cluster + 1).reshape(-1, 1).astype(np.int64),
            categorical_names=("cluster",),
            categorical_cardinalities=(5,),
            multi_hot=np.zeros((cluster.size, 0), dtype=np.float32),
        )

    return LatentData(
        users,
        items,
        np.arange(NUM_USERS, dtype=np.int64),
        np.array(val_items, dtype=np.int64),
        known,
        features(user_cluster),
        features(item_cluster),
    )


def batches(
    data: LatentData, batch_size: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:

    order = np.random.default_rng(seed).permutation(data.train_users.size)
    return [
        (torch.from_numpy(data.train_users[idx]), torch.from_numpy(data.train_items[idx]))
        for idx in np.array_split(order, max(1, order.size // batch_size))
    ]


@pytest.fixture(scope="module")
def data() -> LatentData:
    return latent_factor_data()


def _popularity_hr(data: LatentData) -> float:
    scorer = constant_item_scorer(popularity_scores(data.train_items, NUM_ITEMS))
    return evaluate_full_ranking(scorer, data.val_users, data.val_items, data.known, (10,), 512)[
        "hr@10"
    ]


def test_mf_learns_with_alternation(data: LatentData) -> None:
    torch.manual_seed(0)
    model = MatrixFactorization(NUM_USERS, NUM_ITEMS, dim=16)
    optimizers = make_mf_optimizers(model, lr=0.02, weight_decay=0.0)
    sampler = UniformNegativeSampler(NUM_ITEMS)
    generator = torch.Generator().manual_seed(0)
    losses = [
        train_mf_epoch(
            model, batches(data, 512, epoch), optimizers, sampler, 4, generator, epoch, "epoch"
        )
        for epoch in range(10)
    ]
    metrics = evaluate_full_ranking(
        model.score_users, data.val_users, data.val_items, data.known, (10,), 512
    )
    popularity_hr = _popularity_hr(data)
    assert losses[-1] < 0.8 * losses[0], losses
    assert metrics["hr@10"] > popularity_hr + 0.2, (metrics, popularity_hr)


def test_two_tower_learns(data: LatentData) -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        embedding_dim=16, feature_embedding_dim=8, tower_hidden=(32,), output_dim=16
    )
    model = build_two_tower(
        config, NUM_USERS, NUM_ITEMS, data.user_features, data.item_features, None, "none"
    )
    optimizer = make_optimizer(model, lr=0.01, weight_decay=0.0)
    sampler = UniformNegativeSampler(NUM_ITEMS)
    generator = torch.Generator().manual_seed(0)
    losses = [
        train_two_tower_epoch(model, batches(data, 512, epoch), optimizer, sampler, 4, generator)
        for epoch in range(8)
    ]
    model.eval()
    metrics = evaluate_full_ranking(
        model.ranking_scorer(), data.val_users, data.val_items, data.known, (10,), 512
    )
    popularity_hr = _popularity_hr(data)
    assert losses[-1] < 0.8 * losses[0], losses
    assert metrics["hr@10"] > popularity_hr + 0.2, (metrics, popularity_hr)
