"""Samplers, losses, LogQ, alternation, early stopping, optimizers over trainable params only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cadc_ray.config import ModelConfig
from cadc_ray.data.features import EntityFeatures
from cadc_ray.models import (
    MatrixFactorization,
    PretrainedTables,
    TwoTower,
    build_two_tower,
    count_parameters,
)
from cadc_ray.training import (
    DenseAdam,
    EarlyStopping,
    PopularityNegativeSampler,
    UniformNegativeSampler,
    alternation_phase,
    bce_with_sampled_negatives,
    build_negative_sampler,
    logq_correct,
    make_mf_optimizers,
    make_optimizer,
    sampled_logits,
    train_mf_epoch,
    train_two_tower_epoch,
)


def test_uniform_sampler_shape_range_and_seed() -> None:
    sampler = UniformNegativeSampler(5)
    first = sampler.sample(4, 3, torch.Generator().manual_seed(7))
    again = sampler.sample(4, 3, torch.Generator().manual_seed(7))
    assert first.shape == (4, 3) and first.dtype == torch.int64
    assert torch.equal(first, again)
    assert int(first.min()) >= 0 and int(first.max()) < 5


def test_popularity_sampler_follows_count_power() -> None:
    counts = np.array([0, 1, 16, 81])
    sampler = PopularityNegativeSampler(counts)
    # weights max(count, 1) ** 0.75 = 1, 1, 8, 27 -> / 37
    assert np.allclose(sampler.probabilities.numpy(), np.array([1, 1, 8, 27]) / 37)
    draws = sampler.sample(2000, 10, torch.Generator().manual_seed(0))
    shares = np.bincount(draws.flatten().numpy(), minlength=4) / draws.numel()
    assert np.allclose(shares, np.array([1, 1, 8, 27]) / 37, atol=0.01)


def test_build_negative_sampler_needs_item_counts_for_popularity() -> None:
    with pytest.raises(ValueError, match="needs the training item counts"):
        build_negative_sampler("popularity", 4)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        build_negative_sampler("popularity", 4, item_counts=np.array([3, 3, 1]))
    sampler = build_negative_sampler("popularity", 4, item_counts=np.array([0, 1, 2, 0]))
    assert isinstance(sampler, PopularityNegativeSampler)
    assert np.allclose(sampler.probabilities.numpy(), np.array([1, 1, 2**0.75, 1]) / (3 + 2**0.75))


def test_bce_matches_hand_computation() -> None:
    pos = torch.tensor([0.0, 2.0])
    neg = torch.tensor([[0.0, -1.0], [1.0, 3.0]])
    expected = (
        -math.log(0.5)
        - math.log(1 / (1 + math.exp(-2)))
        - math.log(0.5)
        - math.log(1 - 1 / (1 + math.exp(1)))
        - math.log(1 - 1 / (1 + math.exp(-1)))
        - math.log(1 - 1 / (1 + math.exp(-3)))
    ) / 6
    assert bce_with_sampled_negatives(pos, neg).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"neg_logits \(B, K\)"):
        bce_with_sampled_negatives(pos, neg[:1])


def test_logq_subtracts_log_frequency_of_the_item_for_positives_and_negatives() -> None:
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    assert torch.allclose(
        logq_correct(torch.zeros(2, 2), torch.tensor([[0, 1], [2, 0]]), log_q),
        -torch.log(torch.tensor([[0.5, 0.25], [0.25, 0.5]])),
    )

    class ConstantModel(torch.nn.Module):
        def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return torch.ones(users.shape[0])

    pos, neg = sampled_logits(
        ConstantModel(), torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[1], [0]]), log_q
    )
    assert torch.allclose(pos, 1 - log_q[torch.tensor([0, 1])])
    assert torch.allclose(neg, 1 - log_q[torch.tensor([[1], [0]])])


def test_alternation_schedule() -> None:
    assert [alternation_phase("epoch", e, 3) for e in range(4)] == ["user", "item", "user", "item"]
    assert [alternation_phase("batch", 1, b) for b in range(3)] == ["user", "item", "user"]
    assert alternation_phase("none", 5, 5) == "both"
    with pytest.raises(ValueError, match="unknown alternation"):
        alternation_phase("sometimes", 0, 0)  # type: ignore[arg-type]


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 4])),
        (torch.tensor([3, 2]), torch.tensor([0, 0])),
    ]


def test_mf_fixed_side_does_not_move_nor_its_adam_state() -> None:
    torch.manual_seed(0)
    model = MatrixFactorization(4, 5, dim=3)
    optimizers = make_mf_optimizers(model, lr=0.1, weight_decay=0.01)
    items_before = model.item_table.weight.detach().clone()
    users_before = model.user_table.weight.detach().clone()
    generator = torch.Generator().manual_seed(0)
    sampler = UniformNegativeSampler(5)
    train_mf_epoch(
        model, _batches(), optimizers, sampler, 2, generator, epoch=0, alternation="epoch"
    )
    assert isinstance(optimizers.user, DenseAdam) and isinstance(optimizers.item, DenseAdam)
    assert isinstance(optimizers.shared, DenseAdam)
    assert torch.equal(model.item_table.weight, items_before)
    assert optimizers.item.steps == [0] and optimizers.item.exp_avg == [None]
    assert not torch.equal(model.user_table.weight, users_before)
    assert optimizers.shared.steps == [2]  # the global bias steps with every batch
    user_moment = optimizers.user.exp_avg[0]
    assert user_moment is not None and optimizers.user.steps == [2]
    user_moment = user_moment.clone()
    train_mf_epoch(
        model, _batches(), optimizers, sampler, 2, generator, epoch=1, alternation="epoch"
    )
    assert optimizers.user.exp_avg[0] is not None
    assert torch.equal(optimizers.user.exp_avg[0], user_moment)
    assert optimizers.user.steps == [2] and optimizers.item.steps == [2]
    assert not torch.equal(model.item_table.weight, items_before)


def _teacher_tables() -> PretrainedTables:
    """Seeded MF rows of width 6 for 4 users and 5 items."""
    rng = np.random.default_rng(0)
    return PretrainedTables(
        user=rng.normal(size=(4, 6)).astype(np.float32),
        item=rng.normal(size=(5, 6)).astype(np.float32),
        pretrainer="mf",
    )


def _frozen_model() -> TwoTower:
    tables = _teacher_tables()
    config = ModelConfig(embedding_dim=6, tower_hidden=(8,), output_dim=4)
    torch.manual_seed(0)
    return build_two_tower(
        config, 4, 5, EntityFeatures.empty(4), EntityFeatures.empty(5), tables, "init_frz"
    )


def test_init_frz_tables_are_bit_identical_after_training_and_hold_no_optimizer_state() -> None:
    model = _frozen_model()
    user_table = dict(model.named_buffers())["user_tower.id_embedding.frozen_weight"]
    before = user_table.clone()
    optimizer = make_optimizer(model, lr=0.1, weight_decay=0.1)
    held = {id(p) for p in optimizer.params}
    assert id(user_table) not in held
    trainable, _ = count_parameters(model)
    assert sum(p.numel() for p in optimizer.params) == trainable
    mlp_before = next(model.user_tower.mlp.parameters()).detach().clone()
    loss = train_two_tower_epoch(
        model,
        _batches() * 3,
        optimizer,
        UniformNegativeSampler(5),
        2,
        torch.Generator().manual_seed(0),
    )
    assert math.isfinite(loss)
    assert torch.equal(user_table, before)
    assert user_table.grad is None
    assert not torch.equal(next(model.user_tower.mlp.parameters()), mlp_before)
    # State for the held parameters only, every one of them trained: none for the table.
    assert len(optimizer.exp_avg) == len(optimizer.params)
    assert all(moment is not None for moment in optimizer.exp_avg)


def test_make_optimizer_refuses_a_model_without_trainable_parameters() -> None:
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(model, 0.1, 0.0)


def test_loop_rejects_bad_batches_and_empty_epochs() -> None:
    model = _frozen_model()
    optimizer = make_optimizer(model, 0.1, 0.0)
    sampler = UniformNegativeSampler(5)
    with pytest.raises(ValueError, match="no batches"):
        train_two_tower_epoch(model, [], optimizer, sampler, 2, torch.Generator())
    with pytest.raises(ValueError, match=r"users \(B,\), items \(B,\)"):
        train_two_tower_epoch(
            model,
            [(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))],
            optimizer,
            sampler,
            2,
            torch.Generator(),
        )


def test_early_stopping_tracks_best_and_patience() -> None:
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0, 0.1) and stopper.update(1, 0.3)
    assert not stopper.update(2, 0.3)  # ties keep the earlier epoch
    assert not stopper.should_stop
    assert not stopper.update(3, 0.2)
    assert stopper.should_stop and stopper.best_epoch == 1 and stopper.best_value == 0.3
    never = EarlyStopping(patience=0)
    for epoch in range(10):
        never.update(epoch, 1.0 - epoch)
    assert not never.should_stop and never.best_epoch == 0
    with pytest.raises(ValueError, match="NaN"):
        never.update(11, float("nan"))


@pytest.mark.parametrize("technique", ["init_frz", "init", "hybrid", "linear", "mlp", "none"])
def test_every_technique_trains_and_keeps_its_frozen_table(technique: str) -> None:
    tables = _teacher_tables()
    config = ModelConfig(embedding_dim=6, tower_hidden=(8,), output_dim=4, adapter_hidden=3)
    torch.manual_seed(0)
    model = build_two_tower(
        config,
        4,
        5,
        EntityFeatures.empty(4),
        EntityFeatures.empty(5),
        None if technique == "none" else tables,
        technique,  # type: ignore[arg-type]
    )
    optimizer = make_optimizer(model, lr=0.05, weight_decay=0.0)
    trainable, frozen = count_parameters(model)
    assert sum(p.numel() for p in optimizer.params) == trainable
    assert frozen == (0 if technique in ("init", "none") else (4 + 5) * 6)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = train_two_tower_epoch(
        model,
        _batches() * 2,
        optimizer,
        UniformNegativeSampler(5),
        2,
        torch.Generator().manual_seed(0),
    )
    assert math.isfinite(loss)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    if frozen:
        table = dict(model.named_buffers())["item_tower.id_embedding.frozen_weight"]
        assert np.array_equal(table.numpy(), tables.item)


def test_loops_accept_ray_data_column_mappings() -> None:
    model = _frozen_model()
    optimizer = make_optimizer(model, 0.1, 0.0)
    mapping_batches = [{"user_id": users, "item_id": items} for users, items in _batches()]
    as_mappings = train_two_tower_epoch(
        model,
        mapping_batches,
        optimizer,
        UniformNegativeSampler(5),
        2,
        torch.Generator().manual_seed(1),
    )
    model = _frozen_model()
    optimizer = make_optimizer(model, 0.1, 0.0)
    as_tuples = train_two_tower_epoch(
        model, _batches(), optimizer, UniformNegativeSampler(5), 2, torch.Generator().manual_seed(1)
    )
    assert as_mappings == as_tuples
    with pytest.raises(ValueError, match=r"missing \['item_id'\]"):
        train_two_tower_epoch(
            model,
            [{"user_id": torch.zeros(2, dtype=torch.long)}],
            optimizer,
            UniformNegativeSampler(5),
            2,
            torch.Generator(),
        )
