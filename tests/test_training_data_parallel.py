"""``training.data_parallel.DataParallel`` on two gloo ranks: the ranks start from rank 0's
parameters, keep their own buffers, and after each backward hold the mean of their
gradients, dense and row-sparse: DistributedDataParallel's numbers, bit for bit, without
importing ``torch._dynamo``."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from cadc_ray.training.data_parallel import DataParallel


class _Towers(nn.Module):
    """A dense layer, a row-sparse id table, a frozen data buffer; ``extra`` layers and a
    second sparse table are used only when a step asks for them."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(6, 3, sparse=True)
        self.other_table = nn.Embedding(5, 3, sparse=True)
        self.dense = nn.Linear(3, 2)
        self.extra = nn.Linear(3, 2)
        self.frozen: torch.Tensor
        self.register_buffer("frozen", torch.arange(3.0))

    def forward(self, ids: torch.Tensor, use_extra: bool = False) -> torch.Tensor:
        rows = self.table(ids) + self.frozen
        out = self.dense(rows)
        if use_extra:
            out = out + self.extra(self.other_table(ids % 5))
        return out.sum(1)


def _model(perturbed: bool) -> _Towers:
    torch.manual_seed(0)
    model = _Towers()
    if perturbed:  # a rank whose initialisation differs: rank 0's must win
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(1.0)
            model.frozen.fill_(-7.0)
    return model


IDS = torch.tensor([0, 1, 1, 4, 2, 5, 1, 3])
TARGET = torch.linspace(-1.0, 1.0, 8)


def _loss(model: nn.Module, ids: torch.Tensor, target: torch.Tensor, **kw: bool) -> torch.Tensor:
    return ((model(ids, **kw) - target) ** 2).mean()


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
        for name, p in model.named_parameters()
        if p.grad is not None
    }


def _two_ranks(rank: int, store_path: str, out_path: str) -> None:
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.FileStore(store_path, 2), rank=rank, world_size=2
    )
    try:
        half = slice(4 * rank, 4 * rank + 4)
        ids, target = IDS[half], TARGET[half]
        out: dict[str, object] = {}
        # 1. Every parameter used by both ranks (as DDP needs).
        towers = _model(perturbed=rank == 1)
        model = DataParallel(towers)
        out["parameters"] = {n: p.detach().clone() for n, p in towers.named_parameters()}
        out["frozen"] = towers.frozen.clone()
        towers.frozen.copy_(torch.arange(3.0))  # the data every rank builds alike
        _loss(model, ids, target, use_extra=True).backward()
        model.average_gradients()
        out["grads"] = _grads(towers)
        out["sparse"] = towers.table.weight.grad is not None and towers.table.weight.grad.is_sparse
        # 2. Only rank 0 uses ``extra`` and ``other_table``: rank 1 sends zeros / no rows.
        towers.zero_grad(set_to_none=True)
        _loss(model, ids, target, use_extra=rank == 0).backward()
        model.average_gradients()
        out["grads_unused"] = _grads(towers)
        # 2b. Neither rank uses them: they keep no gradient, as in one process.
        towers.zero_grad(set_to_none=True)
        _loss(model, ids, target).backward()
        model.average_gradients()
        out["grads_used_by_neither"] = sorted(_grads(towers))
        out["dynamo_imported"] = "torch._dynamo" in sys.modules
        # 3. DDP on the same model and step (case 1), for its numbers.
        towers = _model(perturbed=False)
        # As build_two_tower had it: DDP must not broadcast the data buffers.
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            towers, ["frozen"]
        )
        ddp = nn.parallel.DistributedDataParallel(towers)
        _loss(ddp, ids, target, use_extra=True).backward()
        out["ddp_grads"] = _grads(ddp.module)
        torch.save(out, f"{out_path}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("data_parallel")
    torch.multiprocessing.spawn(
        _two_ranks, args=(str(folder / "store"), str(folder / "out")), nprocs=2
    )
    return [torch.load(folder / f"out.{rank}", weights_only=True) for rank in (0, 1)]


def test_ranks_start_from_rank_0s_parameters_and_keep_their_own_buffers(
    ranks: list[dict],
) -> None:
    rank0, rank1 = ranks
    for name, value in _model(perturbed=False).named_parameters():
        assert torch.equal(rank0["parameters"][name], value.detach()), name
        assert torch.equal(rank1["parameters"][name], value.detach()), name
    assert torch.equal(rank0["frozen"], torch.arange(3.0))
    assert torch.equal(rank1["frozen"], torch.full((3,), -7.0))  # never sent


def test_gradients_are_the_mean_over_the_ranks_halves_of_the_batch(ranks: list[dict]) -> None:
    # One process on the whole batch: the mean of the two halves' mean losses.
    single = _model(perturbed=False)
    halves = [(IDS[:4], TARGET[:4]), (IDS[4:], TARGET[4:])]
    losses = [_loss(single, *half, use_extra=True) for half in halves]
    ((losses[0] + losses[1]) / 2).backward()
    expected = _grads(single)
    assert len(expected) == 6  # every parameter
    for rank in ranks:
        assert rank["sparse"]  # the sparse table's gradient stays row-sparse
        assert set(rank["grads"]) == set(expected)
        for name, value in expected.items():
            assert torch.equal(rank["grads"][name], ranks[0]["grads"][name]), name
            assert torch.allclose(rank["grads"][name], value, atol=1e-6), name


def test_a_parameter_one_rank_did_not_use_gets_half_the_others_gradient(
    ranks: list[dict],
) -> None:
    rank0_only = _model(perturbed=False)
    _loss(rank0_only, IDS[:4], TARGET[:4], use_extra=True).backward()
    for rank in ranks:
        for name in ("extra.weight", "extra.bias", "other_table.weight"):
            expected = _grads(rank0_only)[name] / 2
            assert torch.allclose(rank["grads_unused"][name], expected, atol=1e-7), name
    assert torch.equal(
        ranks[0]["grads_unused"]["other_table.weight"][2], torch.zeros(3)
    )  # no row 2


def test_a_parameter_no_rank_used_keeps_no_gradient(ranks: list[dict]) -> None:
    for rank in ranks:
        assert rank["grads_used_by_neither"] == ["dense.bias", "dense.weight", "table.weight"]


def test_two_ranks_give_ddps_gradients_bit_for_bit_without_importing_dynamo(
    ranks: list[dict],
) -> None:
    for rank in ranks:
        assert set(rank["grads"]) == set(rank["ddp_grads"])
        for name, value in rank["ddp_grads"].items():
            assert torch.equal(rank["grads"][name], value), name
        # Until DDP was built in step 3, nothing had imported it (1.3 s a process).
        assert rank["dynamo_imported"] is False


def test_data_parallel_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match=r"needs an initialised torch\.distributed"):
        DataParallel(nn.Linear(2, 2))
