"""Two-tower: RecD dedup equals the naive tower (forward and gradients), features, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cadc_ray.config import ModelConfig
from cadc_ray.data.features import EntityFeatures
from cadc_ray.models import PretrainedTables, TwoTower, build_two_tower, count_parameters
from cadc_ray.models.two_tower import FeatureEncoder

NUM_USERS, NUM_ITEMS = 6, 5


def _user_features() -> EntityFeatures:
    return EntityFeatures(
        categorical=np.array([[1, 0], [2, 1], [0, 2], [1, 1], [2, 2], [1, 0]], dtype=np.int64),
        categorical_names=("gender", "age"),
        categorical_cardinalities=(3, 3),
        multi_hot=np.zeros((NUM_USERS, 0), dtype=np.float32),
    )


def _item_features() -> EntityFeatures:
    flags = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0]], dtype=np.float32)
    return EntityFeatures(
        categorical=np.array([[1], [2], [3], [1], [0]], dtype=np.int64),
        categorical_names=("year",),
        categorical_cardinalities=(4,),
        multi_hot=flags,
        multi_hot_name="genres",
    )


CONFIG = ModelConfig(embedding_dim=4, feature_embedding_dim=3, tower_hidden=(8,), output_dim=5)


def _model(dedup: bool, seed: int = 0) -> TwoTower:
    torch.manual_seed(seed)
    config = ModelConfig(**{**CONFIG.__dict__, "dedup": dedup})
    return build_two_tower(
        config, NUM_USERS, NUM_ITEMS, _user_features(), _item_features(), None, "none"
    )


def test_dedup_equals_naive_forward_and_gradients() -> None:
    deduped, naive = _model(dedup=True), _model(dedup=False)
    users = torch.tensor([0, 3, 3, 5, 0, 0, 1])
    items = torch.tensor([4, 4, 2, 1, 4, 0, 2])
    out_dedup, out_naive = deduped(users, items), naive(users, items)
    assert torch.allclose(out_dedup, out_naive, atol=1e-6)
    (out_dedup * torch.arange(7.0)).sum().backward()
    (out_naive * torch.arange(7.0)).sum().backward()
    for (name, a), (_, b) in zip(deduped.named_parameters(), naive.named_parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_multi_hot_is_the_mean_of_active_flag_embeddings() -> None:
    encoder = FeatureEncoder(_item_features(), feature_embedding_dim=2)
    assert encoder.output_dim == 4
    assert encoder.multi_hot_embedding is not None
    weight = encoder.multi_hot_embedding.weight  # (2, 3)
    out = encoder(torch.tensor([0, 1, 2]))[:, 2:]
    expected = torch.stack([(weight[:, 0] + weight[:, 2]) / 2, torch.zeros(2), weight.mean(dim=1)])
    assert torch.allclose(out, expected, atol=1e-6)


def test_score_users_matches_pairwise_forward() -> None:
    model = _model(dedup=True)
    model.eval()
    users = torch.tensor([1, 4])
    scores = model.score_users(users)
    assert scores.shape == (2, NUM_ITEMS)
    pairs = model(users.repeat_interleave(NUM_ITEMS), torch.arange(NUM_ITEMS).repeat(2)).view(
        2, NUM_ITEMS
    )
    assert torch.allclose(scores, pairs.detach(), atol=1e-6)
    assert torch.allclose(model.ranking_scorer()(users), scores)


def test_init_frz_model_shares_the_pretrained_tables_and_ddp_ignores_buffers() -> None:
    user = np.random.default_rng(0).normal(size=(NUM_USERS, 4)).astype(np.float32)
    item = np.random.default_rng(1).normal(size=(NUM_ITEMS, 4)).astype(np.float32)
    user.flags.writeable = item.flags.writeable = False
    model = build_two_tower(
        CONFIG,
        NUM_USERS,
        NUM_ITEMS,
        _user_features(),
        _item_features(),
        PretrainedTables(user=user, item=item, pretrainer="mf"),
        "init_frz",
    )
    buffers = dict(model.named_buffers())
    assert buffers["user_tower.id_embedding.frozen_weight"].data_ptr() == user.ctypes.data
    _, frozen = count_parameters(model)
    assert frozen == (NUM_USERS + NUM_ITEMS) * 4


def test_use_features_false_gives_id_only_towers() -> None:
    config = ModelConfig(**{**CONFIG.__dict__, "use_features": False})
    model = build_two_tower(
        config, NUM_USERS, NUM_ITEMS, _user_features(), _item_features(), None, "none"
    )
    assert model.user_tower.features.output_dim == 0
    assert model(torch.tensor([0]), torch.tensor([1])).shape == (1,)


@pytest.mark.parametrize(
    ("integration", "tables", "message"),
    [
        ("init_frz", None, "needs pretrained tables"),
        ("none", "ok", "must not receive pretrained"),
        ("auto", None, "must be resolved"),
        ("init_frz", "short", "has 5 rows, the dataset has 6 users"),
    ],
)
def test_build_two_tower_errors(integration: str, tables: str | None, message: str) -> None:
    pretrained = None
    if tables is not None:
        users = NUM_USERS - 1 if tables == "short" else NUM_USERS
        pretrained = PretrainedTables(
            user=np.zeros((users, 4), np.float32),
            item=np.zeros((NUM_ITEMS, 4), np.float32),
            pretrainer="mf",
        )
    with pytest.raises(ValueError, match=message):
        build_two_tower(CONFIG, NUM_USERS, NUM_ITEMS, None, None, pretrained, integration)  # type: ignore[arg-type]


def test_feature_codes_out_of_range_fail() -> None:
    features = _user_features()
    bad = EntityFeatures(
        categorical=features.categorical + 5,
        categorical_names=features.categorical_names,
        categorical_cardinalities=features.categorical_cardinalities,
        multi_hot=features.multi_hot,
    )
    with pytest.raises(ValueError, match=r"'gender': codes must lie in \[0, 3\)"):
        FeatureEncoder(bad, 2)
