"""``DenseAdam``: torch.optim.Adam's numbers without torch.optim (and its torch._dynamo import)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from cadc_ray.adam import DenseAdam
from cadc_ray.training.optim import Optimizer


def _parameters() -> list[torch.Tensor]:
    """A matrix, a vector and a scalar, as a tower's weight, bias and a model's scalar."""
    generator = torch.Generator().manual_seed(0)
    shapes: list[tuple[int, ...]] = [(5, 3), (3,), ()]
    return [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]


def _gradients(step: int, parameters: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Seeded gradients; the vector has none at step 1 (torch then skips it, its count too)."""
    generator = torch.Generator().manual_seed(100 + step)
    return [
        None if (index == 1 and step == 1) else torch.randn(p.shape, generator=generator)
        for index, p in enumerate(parameters)
    ]


def _train(optimizer: Optimizer, parameters: list[torch.Tensor], steps: range) -> None:
    for step in steps:
        for parameter, gradient in zip(parameters, _gradients(step, parameters), strict=True):
            parameter.grad = gradient
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "settings",
    [
        {"lr": 1e-3},
        {"lr": 0.05, "weight_decay": 0.1},
        {"lr": 0.02, "betas": (0.5, 0.9), "eps": 1e-6},
        {"lr": 0.0},
    ],
)
def test_dense_adam_equals_torch_adam_bit_for_bit(settings: dict[str, object]) -> None:
    ours, theirs = _parameters(), _parameters()
    dense_adam = DenseAdam(ours, **settings)  # type: ignore[arg-type]
    torch_adam = torch.optim.Adam(theirs, **settings)  # type: ignore[arg-type]
    _train(dense_adam, ours, range(6))
    _train(torch_adam, theirs, range(6))
    for index, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(mine, reference), index
        state = torch_adam.state[reference]
        assert dense_adam.steps[index] == int(state["step"]) == (5 if index == 1 else 6)
        assert torch.equal(dense_adam.exp_avg[index], state["exp_avg"])  # type: ignore[arg-type]
        assert torch.equal(dense_adam.exp_avg_sq[index], state["exp_avg_sq"])  # type: ignore[arg-type]
    if settings["lr"] == 0.0:
        assert all(torch.equal(p, q) for p, q in zip(ours, _parameters(), strict=True))


def test_dense_adam_resumes_from_its_state_dict_as_if_never_stopped() -> None:
    uninterrupted = _parameters()
    optimizer = DenseAdam(uninterrupted, lr=0.01, weight_decay=0.01)
    _train(optimizer, uninterrupted, range(5))

    first = _parameters()
    before = DenseAdam(first, lr=0.01, weight_decay=0.01)
    _train(before, first, range(3))
    saved = before.state_dict()
    _train(before, first, range(3, 4))  # training on must not change what was saved
    assert saved["steps"] == [3, 2, 3]

    resumed = [p.clone().requires_grad_() for p in _replayed(3)]
    after = DenseAdam(resumed, lr=0.01, weight_decay=0.01)
    after.load_state_dict(saved)
    _train(after, resumed, range(3, 5))
    assert all(torch.equal(p, q) for p, q in zip(resumed, uninterrupted, strict=True))
    assert after.steps == optimizer.steps == [5, 4, 5]


def test_dense_adam_resumes_a_torch_adam_checkpoint_bit_for_bit() -> None:
    """A checkpoint written with torch.optim.Adam (before DenseAdam) resumes as if never
    stopped; one that does not match the parameters is refused before anything changes."""
    uninterrupted = _parameters()
    _train(torch.optim.Adam(uninterrupted, lr=0.01), uninterrupted, range(5))
    first = _parameters()
    torch_adam = torch.optim.Adam(first, lr=0.01)
    _train(torch_adam, first, range(3))
    saved = torch_adam.state_dict()
    resumed = DenseAdam(first, lr=0.01)
    resumed.load_state_dict(saved)
    assert resumed.steps == [3, 2, 3]
    _train(resumed, first, range(3, 5))
    assert all(torch.equal(p, q) for p, q in zip(first, uninterrupted, strict=True))
    fewer = DenseAdam(first[:2], lr=0.01)
    with pytest.raises(ValueError, match=r"same 2 parameters, got 1 groups over parameters"):
        fewer.load_state_dict(saved)
    assert fewer.steps == [0, 0]


def _replayed(steps: int) -> list[torch.Tensor]:
    """The parameters after ``steps`` steps, replayed from the start."""
    parameters = _parameters()
    _train(DenseAdam(parameters, lr=0.01, weight_decay=0.01), parameters, range(steps))
    return [p.detach() for p in parameters]


def test_dense_adam_leaves_tensors_without_gradients_and_zeroes_on_request() -> None:
    parameters = _parameters()
    optimizer = DenseAdam(parameters, lr=0.1)
    untouched = parameters[2].detach().clone()
    parameters[0].grad = torch.ones(5, 3)
    optimizer.step()
    assert torch.equal(parameters[2], untouched)
    assert optimizer.steps == [1, 0, 0] and optimizer.exp_avg[1] is None
    # Adam's first step moves every element by lr, whatever the gradient's size.
    assert torch.allclose(parameters[0].detach(), _parameters()[0] - 0.1)
    optimizer.zero_grad(set_to_none=False)
    assert parameters[0].grad is not None and not parameters[0].grad.any()
    optimizer.zero_grad()
    assert parameters[0].grad is None


def test_dense_adam_refuses_what_it_cannot_optimize() -> None:
    with pytest.raises(ValueError, match="no parameters"):
        DenseAdam([], lr=0.1)
    weight = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="more than once"):
        DenseAdam([weight, weight], lr=0.1)
    with pytest.raises(ValueError, match=r"betas in \[0, 1\), got lr=0.1, eps=1e-08, "):
        DenseAdam([weight], lr=0.1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr >= 0"):
        DenseAdam([weight], lr=-1.0)
    table = torch.nn.Embedding(4, 2, sparse=True)
    table(torch.tensor([1])).sum().backward()
    with pytest.raises(ValueError, match=r"sparse gradient for parameter 0 of shape \(4, 2\)"):
        DenseAdam(table.parameters(), lr=0.1).step()
    optimizer = DenseAdam([torch.zeros(3, requires_grad=True)], lr=0.1)
    good = optimizer.state_dict()
    with pytest.raises(KeyError, match="lacks \\['exp_avg_sq'\\]"):
        optimizer.load_state_dict({"steps": [0], "exp_avg": [None]})
    with pytest.raises(ValueError, match="steps has 2 entries, this optimizer 1 parameters"):
        optimizer.load_state_dict({**good, "steps": [0, 0]})
    with pytest.raises(ValueError, match=r"exp_avg\[0\] has shape \(4,\), the parameter \(3,\)"):
        optimizer.load_state_dict({**good, "exp_avg": [torch.zeros(4)]})


def test_a_two_tower_stage_never_imports_torch_dynamo() -> None:
    """Why ``DenseAdam`` exists: ``torch.optim``'s first use in a process imports
    ``torch._dynamo`` (over a second here), which every TTNN worker and trial paid. Also
    not when compressed id tables are fitted to the teacher's rows (``init``)."""
    program = textwrap.dedent(
        """
        import sys
        import numpy as np
        import torch
        from cadc_ray.config import IdTableConfig, IdTablesConfig, ModelConfig
        from cadc_ray.models import build_two_tower
        from cadc_ray.models.pretrained import PretrainedTables
        from cadc_ray.training import UniformNegativeSampler, train_two_tower_epoch
        from cadc_ray.training.optim import two_tower_optimizers

        rng = np.random.default_rng(0)
        teacher = PretrainedTables(
            user=rng.normal(size=(6, 8)).astype(np.float32),
            item=rng.normal(size=(7, 8)).astype(np.float32),
            pretrainer="mf",
        )
        hashed = IdTablesConfig(default=IdTableConfig(kind="hashing", rows=3, init_steps=2))
        config = ModelConfig(embedding_dim=8, id_table=hashed)
        model = build_two_tower(config, 6, 7, None, None, teacher, "init")
        optimizers = two_tower_optimizers(model, 0.01, 0.0, {})
        batches = [(torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]))]
        train_two_tower_epoch(
            model, batches, list(optimizers.values()), UniformNegativeSampler(7), 2,
            torch.Generator().manual_seed(0),
        )
        optimizers["adam"].state_dict()
        print(type(model.user_tower.id_embedding).__name__, sorted(optimizers))
        print("torch._dynamo" in sys.modules)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert completed.stdout.split() == ["HashedIdTable", "['adam']", "False"]
