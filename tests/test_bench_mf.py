"""``scripts/bench_mf.py``'s ``TowerMatmuls``: the rows each tower's MLP runs on, their
FLOPs, and the products its replay times (the timings themselves are the script's to run)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import load_script

from cadc_ray.config import ModelConfig
from cadc_ray.data.features import EntityFeatures
from cadc_ray.models import build_two_tower


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_mf")


def _features(n: int) -> EntityFeatures:
    return EntityFeatures(
        categorical=np.zeros((n, 1), dtype=np.int64),
        categorical_names=("a",),
        categorical_cardinalities=(2,),
        multi_hot=np.zeros((n, 3), dtype=np.float32),
    )


def _two_tower(dedup: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        dedup=dedup, embedding_dim=8, feature_embedding_dim=4, tower_hidden=(16,), output_dim=4
    )
    return build_two_tower(config, 10, 20, _features(10), _features(20), None, "none")


def test_layer_shapes_are_each_linear_of_the_mlp(bench: ModuleType) -> None:
    model = _two_tower(dedup=True)
    # [id 8; categorical 4; multi-hot 4] = 16 -> 16 -> 4
    assert bench.tower_layer_shapes(model.user_tower) == [(16, 16), (16, 4)]
    with pytest.raises(TypeError, match="has no mlp module"):
        bench.tower_layer_shapes(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("dedup", [True, False])
def test_the_calls_are_the_rows_each_tower_runs_on(bench: ModuleType, dedup: bool) -> None:
    model = _two_tower(dedup)
    matmuls = bench.TowerMatmuls(model)
    users = torch.tensor([1, 1, 2])  # 2 unique
    candidates = torch.tensor([[3, 4], [3, 5], [3, 3]])  # 3 unique of 6
    model(users, candidates)
    user_rows, item_rows = (2, 3) if dedup else (3, 6)
    calls = matmuls.take_calls()
    assert calls == [("user_tower", user_rows), ("item_tower", item_rows)]
    assert matmuls.take_calls() == []  # the record starts again after each take
    per_row = 2 * (16 * 16 + 16 * 4)  # forward FLOPs of one row; the backward's are twice
    assert matmuls.flops(calls) == 3 * per_row * (user_rows + item_rows)


def test_the_replay_runs_each_layers_three_products_at_the_calls_shapes(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    matmuls = bench.TowerMatmuls(_two_tower(dedup=True))
    products: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    mm = torch.mm

    def recording_mm(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        products.append((tuple(left.shape), tuple(right.shape)))
        return mm(left, right)

    monkeypatch.setattr(bench.torch, "mm", recording_mm)
    matmuls.replay_seconds([("item_tower", 5)], repeats=1)
    assert products == [
        ((5, 16), (16, 16)),  # forward: rows x in @ in x out
        ((16, 5), (5, 16)),  # weight gradient: out x rows @ rows x in
        ((5, 16), (16, 16)),  # input gradient: rows x out @ out x in
        ((5, 16), (16, 4)),
        ((4, 5), (5, 16)),
        ((5, 4), (4, 16)),
    ]
