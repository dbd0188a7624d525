"""The row-sparse fused MF step: equal to autograd + Adam on what it touches, learns, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cadc_ray.adam import RowAdam
from cadc_ray.models import MatrixFactorization
from cadc_ray.training import (
    UniformNegativeSampler,
    bce_with_sampled_negatives,
    make_mf_optimizers,
    sampled_logits,
)
from cadc_ray.training.fused_mf import (
    FusedMFTrainer,
    bce_logit_grads,
    coalesce_rows,
    exchange_row_gradients,
    mf_logits,
)
from cadc_ray.training.loops import train_mf_epoch_fused

NUM_USERS, NUM_ITEMS, DIM = 7, 9, 3


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    users = torch.tensor([0, 2, 2, 5])  # user 2 twice: its gradients must add up
    items = torch.tensor([1, 3, 4, 1])
    negatives = torch.tensor([[0, 3], [8, 8], [1, 0], [3, 2]])  # repeats within and across rows
    return users, items, negatives


def _model(seed: int = 0) -> MatrixFactorization:
    torch.manual_seed(seed)
    model = MatrixFactorization(NUM_USERS, NUM_ITEMS, DIM)
    with torch.no_grad():  # non-zero biases so that the bias gradients are exercised
        model.user_table.weight[:, DIM].normal_(0.0, 0.1)
        model.item_table.weight[:, DIM].normal_(0.0, 0.1)
        model.global_bias.fill_(0.05)
    return model


def test_analytic_gradients_equal_autograd() -> None:
    model = _model()
    users, items, negatives = _tiny_batch()
    pos, neg = sampled_logits(model, users, items, negatives)
    loss = bce_with_sampled_negatives(pos, neg)
    loss.backward()
    with torch.no_grad():
        batch_items = torch.cat([items.unsqueeze(1), negatives], 1)
        logits = mf_logits(
            model.user_table.weight[users], model.item_table.weight[batch_items], model.global_bias
        )
        assert torch.allclose(logits, torch.cat([pos.unsqueeze(1), neg], 1), atol=1e-6)
        loss_sum, grads = bce_logit_grads(logits)
    assert torch.allclose(loss_sum / logits.numel(), loss, atol=1e-6)
    assert model.global_bias.grad is not None
    assert torch.allclose(grads.sum(), model.global_bias.grad, atol=1e-7)


@pytest.mark.parametrize("phase", ["user", "item", "both"])
def test_one_fused_step_equals_dense_adam_on_touched_rows(phase: str) -> None:
    reference, fused_model = _model(), _model()
    users, items, negatives = _tiny_batch()
    optimizers = make_mf_optimizers(reference, lr=0.01, weight_decay=0.0)
    pos, neg = sampled_logits(reference, users, items, negatives)
    bce_with_sampled_negatives(pos, neg).backward()
    for optimizer in optimizers.active(phase):  # type: ignore[arg-type]
        optimizer.step()
    before = _model()
    FusedMFTrainer(fused_model, lr=0.01).step(users, items, negatives, phase)  # type: ignore[arg-type]

    touched_users = torch.zeros(NUM_USERS, dtype=torch.bool)
    touched_users[users] = True
    touched_items = torch.zeros(NUM_ITEMS, dtype=torch.bool)
    touched_items[torch.cat([items, negatives.flatten()])] = True
    for table, touched, side in (
        ("user_table", touched_users, "user"),
        ("item_table", touched_items, "item"),
    ):
        fused = getattr(fused_model, table).weight.detach()
        dense = getattr(reference, table).weight.detach()
        old = getattr(before, table).weight.detach()
        assert torch.allclose(fused, dense, atol=1e-6), table
        assert torch.equal(fused[~touched], old[~touched]), table  # untouched rows: bit-equal
        moved = not torch.equal(fused[touched], old[touched])
        assert moved == (phase in (side, "both")), (table, phase)  # the fixed side stays fixed
    assert torch.allclose(fused_model.global_bias, reference.global_bias, atol=1e-7)
    assert not torch.equal(fused_model.global_bias, before.global_bias)


@pytest.mark.parametrize("rows_per_chunk", [1, 3])
def test_chunked_step_equals_the_whole_batch_at_once(rows_per_chunk: int) -> None:
    whole, chunked = _model(), _model()
    batch = _tiny_batch()
    loss = FusedMFTrainer(whole, lr=0.01).step(*batch, "both")
    chunked_loss = FusedMFTrainer(chunked, lr=0.01, rows_per_chunk=rows_per_chunk).step(
        *batch, "both"
    )
    assert torch.allclose(loss, chunked_loss, atol=1e-6)
    for name, value in whole.state_dict().items():
        assert torch.allclose(chunked.state_dict()[name], value, atol=1e-7), name
    with pytest.raises(ValueError, match="rows_per_chunk must be >= 1, got 0"):
        FusedMFTrainer(whole, lr=0.01, rows_per_chunk=0)


def test_row_adam_matches_sparse_adam_over_steps() -> None:
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(6, 4, generator=generator)
    ours = start.clone()
    sparse = torch.nn.Parameter(start.clone())
    row_adam = RowAdam(ours, lr=0.05)
    sparse_adam = torch.optim.SparseAdam([sparse], lr=0.05)
    for rows in ([0, 2], [2, 5], [1, 2, 4], [0]):
        index = torch.tensor(rows)
        grads = torch.randn(len(rows), 4, generator=generator)
        row_adam.step(index, grads)
        sparse.grad = torch.sparse_coo_tensor(
            index.unsqueeze(0), grads, (6, 4), check_invariants=True
        )
        sparse_adam.step()
    assert torch.allclose(ours, sparse.detach(), atol=1e-6)
    assert torch.equal(ours[3], start[3])  # never touched


def test_row_adam_weight_decay_is_l2_on_touched_rows() -> None:
    table = torch.ones(3, 2)
    RowAdam(table, lr=0.1, weight_decay=0.5).step(torch.tensor([1]), torch.zeros(1, 2))
    # grad = 0 + 0.5 * 1 > 0, first Adam step moves by -lr * sign(grad)
    assert torch.allclose(table[1], torch.full((2,), 0.9), atol=1e-6)
    assert torch.equal(table[[0, 2]], torch.ones(2, 2))


def test_row_adam_rejects_bad_settings_and_state() -> None:
    with pytest.raises(ValueError, match="lr > 0"):
        RowAdam(torch.zeros(2, 2), lr=0.0)
    state = RowAdam(torch.zeros(2, 2), lr=0.1).state_dict()
    with pytest.raises(ValueError, match=r"exp_avg has shape \(2, 2\), the table \(3, 2\)"):
        RowAdam(torch.zeros(3, 2), lr=0.1).load_state_dict(state)


@pytest.mark.parametrize("num_rows", [5, 1000])  # bincount path, then torch.unique path
def test_coalesce_rows_sums_duplicates(num_rows: int) -> None:
    rows, sums = coalesce_rows(
        torch.tensor([4, 1, 4, 4]),
        torch.tensor([[1.0, 0.0], [2.0, 2.0], [3.0, 1.0], [0.5, 0.5]]),
        num_rows,
    )
    assert torch.equal(rows, torch.tensor([1, 4]))
    assert torch.equal(sums, torch.tensor([[2.0, 2.0], [4.5, 1.5]]))
    bias = torch.tensor([[0.25]])
    [(same_rows, same_sums)], same_bias = exchange_row_gradients([((rows, sums), num_rows)], bias)
    assert same_rows is rows and same_sums is sums and same_bias is bias  # no process group


def _clustered_pairs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Users and items in 3 clusters; each user likes 6 items of its own cluster."""
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(0, 3, 60)
    item_cluster = np.arange(30) % 3
    users, items = [], []
    for user in range(60):
        liked = rng.choice(np.flatnonzero(item_cluster == user_cluster[user]), 6, replace=False)
        users += [user] * 6
        items += liked.tolist()
    return torch.tensor(users), torch.tensor(items)


def _train(
    seed: int, epochs: int, alternation: str = "epoch"
) -> tuple[list[float], FusedMFTrainer]:
    users, items = _clustered_pairs()
    torch.manual_seed(seed)
    trainer = FusedMFTrainer(MatrixFactorization(60, 30, 8), lr=0.05)
    sampler = UniformNegativeSampler(30)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(users.numel(), generator=torch.Generator().manual_seed(epoch))
        batches = ((users[rows], items[rows]) for rows in order.split(64))
        generator = torch.Generator().manual_seed(100 + epoch)
        losses.append(
            train_mf_epoch_fused(trainer, batches, sampler, 4, generator, epoch, alternation)  # type: ignore[arg-type]
        )
    return losses, trainer


def test_fused_mf_loss_goes_down_and_ranks_own_cluster_first() -> None:
    losses, trainer = _train(seed=0, epochs=16)
    assert losses[-1] < 0.7 * losses[0], losses
    users, items = _clustered_pairs()
    with torch.no_grad():
        scores = trainer.model.score_users(torch.arange(60))  # (60, 30)
    liked = torch.zeros(60, 30, dtype=torch.bool)
    liked[users, items] = True
    assert scores[liked].mean() > scores[~liked].mean() + 1.0


def test_fused_mf_same_seed_same_tables_and_resume() -> None:
    _, first = _train(seed=1, epochs=3)
    _, again = _train(seed=1, epochs=3)
    assert torch.equal(first.model.user_table.weight, again.model.user_table.weight)
    assert torch.equal(first.model.item_table.weight, again.model.item_table.weight)
    _, other = _train(seed=2, epochs=3)
    assert not torch.equal(first.model.user_table.weight, other.model.user_table.weight)
    state = first.state_dict()
    restored = FusedMFTrainer(MatrixFactorization(60, 30, 8), lr=0.05)
    restored.load_state_dict(state)
    assert restored.user.step_count == first.user.step_count > 0
    assert torch.equal(restored.item.exp_avg_sq, first.item.exp_avg_sq)


def test_epoch_alternation_freezes_the_fixed_table() -> None:
    users, items = _clustered_pairs()
    torch.manual_seed(0)
    trainer = FusedMFTrainer(MatrixFactorization(60, 30, 8), lr=0.05)
    sampler = UniformNegativeSampler(30)
    for epoch, frozen in ((0, "item_table"), (1, "user_table")):
        moving = "user_table" if frozen == "item_table" else "item_table"
        fixed_before = getattr(trainer.model, frozen).weight.clone()
        moving_before = getattr(trainer.model, moving).weight.clone()
        train_mf_epoch_fused(
            trainer, [(users, items)], sampler, 4, torch.Generator().manual_seed(epoch), epoch
        )
        assert torch.equal(getattr(trainer.model, frozen).weight, fixed_before), epoch
        assert not torch.equal(getattr(trainer.model, moving).weight, moving_before), epoch
    assert trainer.user.step_count == 1 and trainer.item.step_count == 1


def test_fused_trainer_needs_plain_mf_and_epoch_needs_negatives() -> None:
    from cadc_ray.models import MLPMatrixFactorization

    with pytest.raises(TypeError, match="needs a MatrixFactorization"):
        FusedMFTrainer(MLPMatrixFactorization(3, 3, 2), lr=0.1)  # type: ignore[arg-type]
    trainer = FusedMFTrainer(MatrixFactorization(3, 3, 2), lr=0.1)
    with pytest.raises(ValueError, match="num_negatives must be >= 1"):
        train_mf_epoch_fused(trainer, [], UniformNegativeSampler(3), 0, torch.Generator(), 0)
    with pytest.raises(ValueError, match="no batches"):
        train_mf_epoch_fused(trainer, [], UniformNegativeSampler(3), 2, torch.Generator(), 0)


def _two_rank_step(rank: int, store_path: str, out_path: str) -> None:
    """One fused step on this rank's half of the tiny batch, under a 2-rank gloo group."""
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.FileStore(store_path, 2), rank=rank, world_size=2
    )
    try:
        model = _model()
        users, items, negatives = _tiny_batch()
        half = slice(2 * rank, 2 * rank + 2)
        FusedMFTrainer(model, lr=0.01).step(users[half], items[half], negatives[half], "both")
        torch.save(model.state_dict(), f"{out_path}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


# An id whose low 32 bits are float32's quiet-NaN pattern and one above 2^32: the ids
# travel as bytes, so neither may change on the way.
NAN_PATTERN_ID, LARGE_ID = 0x7FC00000, 2**33 + 5


def _two_rank_exchange(rank: int, store_path: str, out_path: str) -> None:
    """``exchange_row_gradients`` of two tables and a bias on 2 gloo ranks; rank 1 sends
    more user rows than rank 0 (padding) and no item row."""
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.FileStore(store_path, 2), rank=rank, world_size=2
    )
    try:
        if rank == 0:
            users = (torch.tensor([1, NAN_PATTERN_ID]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
            items = (torch.tensor([7]), torch.tensor([[10.0, 20.0]]))
            bias = torch.tensor([[1.0]])
        else:
            users = (
                torch.tensor([1, 2, LARGE_ID]),
                torch.tensor([[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]),
            )
            items = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, 2))
            bias = torch.tensor([[3.0]])
        # Refused on every rank before any collective, so no rank waits for the others.
        refused = []
        for sides, shared in (
            ([], bias),
            ([((users[0], users[1].double()), 2**34)], bias),
            ([(users, 2**34)], torch.zeros(5)),  # more than C + 2 = 4 elements
            ([(users, 2**34), ((items[0], torch.zeros(len(items[0]), 3)), 9)], bias),
        ):
            with pytest.raises(ValueError) as error:
                exchange_row_gradients(sides, shared)
            refused.append(str(error.value))
        merged, mean_bias = exchange_row_gradients([(users, 2**34), (items, 9)], bias)
        torch.save({"merged": merged, "bias": mean_bias, "refused": refused}, f"{out_path}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_exchange_row_gradients_in_one_buffer(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(
        _two_rank_exchange, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2
    )
    for rank in (0, 1):
        out = torch.load(tmp_path / f"out.{rank}", weights_only=True)
        (user_rows, user_means), (item_rows, item_means) = out["merged"]
        assert torch.equal(user_rows, torch.tensor([1, 2, NAN_PATTERN_ID, LARGE_ID]))
        # Mean over the 2 ranks: row 1 is in both, the others in one.
        expected_users = torch.tensor([[3.0, 4.0], [3.5, 4.0], [1.5, 2.0], [4.5, 5.0]])
        assert torch.equal(user_means, expected_users)
        assert torch.equal(item_rows, torch.tensor([7]))
        assert torch.equal(item_means, torch.tensor([[5.0, 10.0]]))
        assert torch.equal(out["bias"], torch.tensor([[2.0]]))
        assert out["refused"] == [
            "exchange_row_gradients needs at least one table's rows",
            "exchange_row_gradients sends float32 gradients, got ['torch.float32', "
            "'torch.float64']",
            "the shared gradient has 5 elements, at most 4",
            "the tables' gradient rows must have one width, got [2, 3]",
        ]


def test_two_ranks_all_gather_rows_like_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(
        _two_rank_step, args=(str(tmp_path / "store"), str(tmp_path / "state")), nprocs=2
    )
    rank0 = torch.load(tmp_path / "state.0", weights_only=True)
    rank1 = torch.load(tmp_path / "state.1", weights_only=True)
    single = _model()
    FusedMFTrainer(single, lr=0.01).step(*_tiny_batch(), "both")
    for name, value in single.state_dict().items():
        assert torch.equal(rank0[name], rank1[name]), name  # the ranks stay identical
        assert torch.allclose(rank0[name], value, atol=1e-6), name  # mean of rank gradients
