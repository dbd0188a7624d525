"""Per-step cost of the autograd loops: candidate lists for the TTNN, one host sync per epoch."""

from __future__ import annotations

import pytest
import torch

from cadc_ray.config import ModelConfig
from cadc_ray.models import TwoTower, build_two_tower
from cadc_ray.training import (
    UniformNegativeSampler,
    make_optimizer,
    sampled_logits,
    train_two_tower_epoch,
)

NUM_USERS, NUM_ITEMS = 12, 9


def _towers(dedup: bool) -> TwoTower:
    torch.manual_seed(0)
    config = ModelConfig(
        embedding_dim=6, tower_hidden=(8,), output_dim=4, use_features=False, dedup=dedup
    )
    return build_two_tower(config, NUM_USERS, NUM_ITEMS, None, None, None, "none")


class _FlatOnly(TwoTower):
    """A subclass with its own forward (as the residual model): must get flat pairs."""

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        assert items.ndim == 1, "a model without candidate_list_forward got (B, M) items"
        return super().forward(users, items)


@pytest.mark.parametrize("dedup", [True, False])
def test_candidate_lists_run_the_user_tower_once_per_row(dedup: bool) -> None:
    model = _towers(dedup)
    assert model.candidate_list_forward
    users = torch.tensor([3, 3, 7])
    items = torch.tensor([1, 2, 5])
    negatives = torch.tensor([[0, 4], [8, 8], [2, 6]])
    seen: list[int] = []
    model.user_tower.mlp.register_forward_hook(
        lambda _m, inputs, _o: seen.append(inputs[0].shape[0])
    )
    pos, neg = sampled_logits(model, users, items, negatives)
    assert seen == [2 if dedup else 3]  # B rows (unique ones with RecD), not B * (1+K)
    assert pos.shape == (3,) and neg.shape == (3, 2)
    flat_users = users.repeat_interleave(3)
    flat_items = torch.cat([items.unsqueeze(1), negatives], 1).reshape(-1)
    with torch.no_grad():
        expected = model(flat_users, flat_items).view(3, 3)
    assert torch.allclose(torch.cat([pos.unsqueeze(1), neg], 1).detach(), expected, atol=1e-6)

    log_q = torch.linspace(-3.0, -1.0, NUM_ITEMS)
    pos_q, neg_q = sampled_logits(model, users, items, negatives, log_q)
    assert torch.allclose(pos_q, pos - log_q[items], atol=1e-6)
    assert torch.allclose(neg_q, neg - log_q[negatives], atol=1e-6)


def test_a_subclass_with_its_own_forward_gets_flat_pairs() -> None:
    base = _towers(True)
    model = _FlatOnly(base.user_tower, base.item_tower)
    assert not model.candidate_list_forward
    pos, neg = sampled_logits(
        model, torch.tensor([1, 2]), torch.tensor([0, 3]), torch.ones(2, 4).long()
    )
    assert pos.shape == (2,) and neg.shape == (2, 4)


def test_a_diverging_batch_still_raises_once_per_epoch() -> None:
    model = _towers(True)
    optimizer = make_optimizer(model, lr=0.01, weight_decay=0.0)
    first = model.user_tower.mlp[0]
    assert isinstance(first, torch.nn.Linear)
    with torch.no_grad():
        first.weight[0, 0] = float("nan")
    batches = [(torch.tensor([0, 1]), torch.tensor([2, 3]))] * 2
    with pytest.raises(FloatingPointError, match="the epoch's loss is nan"):
        train_two_tower_epoch(
            model, batches, optimizer, UniformNegativeSampler(NUM_ITEMS), 2, torch.Generator()
        )
