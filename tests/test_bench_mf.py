"""``scripts/bench_mf.py``: the towers' matmul FLOP count it divides by the step's time
(the timings themselves are the script's to run)."""

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


def test_flops_per_row_are_twice_in_times_out_of_each_linear(bench: ModuleType) -> None:
    model = _two_tower(dedup=True)
    # [id 8; categorical 4; multi-hot 4] = 16 -> 16 -> 4
    assert bench.tower_matmul_flops_per_row(model.user_tower) == 2 * (16 * 16 + 16 * 4)
    with pytest.raises(TypeError, match="has no mlp module"):
        bench.tower_matmul_flops_per_row(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("dedup", [True, False])
def test_the_counter_counts_the_rows_each_tower_runs_on(bench: ModuleType, dedup: bool) -> None:
    model = _two_tower(dedup)
    counter = bench.TowerMatmulCounter(model)
    users = torch.tensor([1, 1, 2])  # 2 unique
    candidates = torch.tensor([[3, 4], [3, 5], [3, 3]])  # 3 unique of 6
    model(users, candidates)
    per_row = 2 * (16 * 16 + 16 * 4)
    user_rows, item_rows = (2, 3) if dedup else (3, 6)
    assert counter.take_flops() == 3 * per_row * (user_rows + item_rows)
    assert counter.take_flops() == 0  # counts start again after each take
