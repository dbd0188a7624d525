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


# ---------------------------------------------------------------------------------------
# Row-sparse id tables (train.id_table_updates)

BIG_ITEMS = 10_000  # SPARSE_UPDATE_ROWS: the item table is sparse under auto, users not


def _big_model() -> TwoTower:
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=6, tower_hidden=(8,), output_dim=4, use_features=False)
    return build_two_tower(config, NUM_USERS, BIG_ITEMS, None, None, None, "none")


def _item_table(model: TwoTower) -> torch.nn.Embedding:
    table = dict(model.named_modules())["item_tower.id_embedding.table"]
    assert isinstance(table, torch.nn.Embedding)
    return table


def test_which_tables_each_mode_updates_row_sparsely() -> None:
    from cadc_ray.training.optim import SPARSE_UPDATE_ROWS, sparse_id_tables

    assert BIG_ITEMS == SPARSE_UPDATE_ROWS
    model = _big_model()
    items, users = "item_tower.id_embedding.table", "user_tower.id_embedding.table"
    assert sorted(sparse_id_tables(model, "auto", 0.0, True)) == [items]
    assert sorted(sparse_id_tables(model, "sparse", 0.0, True)) == [items, users]
    assert sparse_id_tables(model, "dense", 0.0, True) == {}
    # auto falls back to dense where SparseAdam or the process group cannot follow ...
    assert sparse_id_tables(model, "auto", 1e-4, True) == {}
    assert sparse_id_tables(model, "auto", 0.0, False) == {}
    # ... and sparse says why instead.
    with pytest.raises(ValueError, match=r"no weight decay .*weight_decay=0\.0001"):
        sparse_id_tables(model, "sparse", 1e-4, True)
    with pytest.raises(ValueError, match="NCCL"):
        sparse_id_tables(model, "sparse", 0.0, False)


def _item_table_after_two_steps(mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The item table before, after a step on items 0-7, after a step on items 100-107."""
    from cadc_ray.training.optim import sparse_id_tables, two_tower_optimizers

    model = _big_model()
    tables = sparse_id_tables(model, mode, 0.0, True)
    optimizers = list(two_tower_optimizers(model, 0.01, 0.0, tables).values())
    weight = _item_table(model).weight
    snapshots = [weight.detach().clone()]
    for first_item in (0, 100):
        users = torch.arange(8) % NUM_USERS
        items = torch.arange(first_item, first_item + 8)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        logits: torch.Tensor = model(users, items)
        torch.nn.functional.softplus(-logits).mean().backward()
        for optimizer in optimizers:
            optimizer.step()
        snapshots.append(weight.detach().clone())
    return snapshots[0], snapshots[1], snapshots[2]


def test_a_sparse_step_moves_only_the_rows_its_batch_looked_up() -> None:
    initial, first, second = _item_table_after_two_steps("auto")
    moved = (first != initial).any(dim=1)
    assert moved[:8].all() and not moved[8:].any()
    # Lazy Adam: rows 0-7 keep their value when the next batch does not touch them.
    assert torch.equal(second[:8], first[:8])
    assert (second[100:108] != first[100:108]).any(dim=1).all()
    # Dense Adam's first step is the same on the touched rows; its second step still moves
    # rows 0-7 along their momentum: the difference lazy Adam makes.
    dense_initial, dense_first, dense_second = _item_table_after_two_steps("dense")
    assert torch.equal(dense_initial, initial)
    torch.testing.assert_close(dense_first, first)
    assert (dense_second[:8] != dense_first[:8]).any(dim=1).all()


def test_row_sparse_tables_learn_as_dense_ones_do() -> None:
    from cadc_ray.training.optim import sparse_id_tables, two_tower_optimizers

    generator = torch.Generator().manual_seed(5)
    users = torch.randint(0, NUM_USERS, (512,), generator=generator)
    items = (users * 7 + torch.randint(0, 3, (512,), generator=generator)) % 40  # learnable
    batches = [(users[i : i + 64], items[i : i + 64]) for i in range(0, 512, 64)]
    losses: dict[str, list[float]] = {}
    for mode in ("dense", "sparse"):
        model = _big_model()
        optimizers = list(
            two_tower_optimizers(
                model, 0.01, 0.0, sparse_id_tables(model, mode, 0.0, True)
            ).values()
        )
        sampler = UniformNegativeSampler(BIG_ITEMS)
        losses[mode] = [
            train_two_tower_epoch(
                model, batches, optimizers, sampler, 4, torch.Generator().manual_seed(epoch)
            )
            for epoch in range(8)
        ]
        assert _item_table(model).sparse == (mode == "sparse")
    for mode, curve in losses.items():
        assert curve[-1] < 0.6 * curve[0], (mode, curve)
    assert abs(losses["sparse"][-1] - losses["dense"][-1]) < 0.1 * losses["dense"][-1]
