"""Id embeddings and the integration techniques: contract, counts by hand, zero-copy, errors."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch

from cadc_ray.config import IntegrationName
from cadc_ray.models import (
    INTEGRATION_TECHNIQUES,
    build_id_embedding,
    count_parameters,
    frozen_table_names,
    pretrained_tensor,
)
from cadc_ray.models.embeddings import hybrid_frozen_columns

NUM_IDS = 7
WIDTH = 6  # d + 1 with d = 5
HIDDEN = 4


def _table(writeable: bool = True) -> np.ndarray:
    table = np.arange(NUM_IDS * WIDTH, dtype=np.float32).reshape(NUM_IDS, WIDTH) / 10
    table.flags.writeable = writeable
    return table


def test_techniques_mirror_the_config_literal() -> None:
    assert set(INTEGRATION_TECHNIQUES) == set(get_args(IntegrationName)) - {"auto"}


# (trainable, frozen) counted by hand for NUM_IDS=7, WIDTH=D=6, adapter_hidden=4.
EXPECTED_COUNTS = {
    "none": (7 * 6, 0),
    "init": (7 * 6, 0),
    "init_frz": (0, 7 * 6),
    "hybrid": (7 * 2, 7 * 6),  # frozen part round(2*6/3)=4 columns gathered from the full table
    "linear": (6 * 6 + 6, 7 * 6),
    "mlp": ((6 * 4 + 4) + (4 * 6 + 6), 7 * 6),
    "residual": (0, 7 * 6),  # the towers' id rows; the teacher is added by the model
}


@pytest.mark.parametrize("technique", sorted(INTEGRATION_TECHNIQUES))
def test_contract_and_parameter_counts(technique: IntegrationName) -> None:
    pretrained = None if technique == "none" else pretrained_tensor(_table())
    module = build_id_embedding(technique, NUM_IDS, WIDTH, pretrained, HIDDEN)
    ids = torch.tensor([0, 3, 3, 6])
    output = module(ids)
    assert output.shape == (4, WIDTH)
    assert module.embedding_dim == WIDTH
    # Same id, same row. Adapters (linear, mlp) run a matmul whose kernel may tile rows
    # differently by position (seen on an AMD EPYC host): equal up to the last bits only.
    torch.testing.assert_close(output[1], output[2], rtol=1e-6, atol=1e-6)
    assert count_parameters(module) == EXPECTED_COUNTS[technique]


def test_init_frz_is_the_table_itself_zero_copy_and_read_only_safe() -> None:
    table = _table(writeable=False)  # as ray.get returns it from the object store
    module = build_id_embedding("init_frz", NUM_IDS, WIDTH, pretrained_tensor(table), HIDDEN)
    assert list(module.parameters()) == []
    assert frozen_table_names(module) == ["frozen_weight"]
    assert dict(module.named_buffers())["frozen_weight"].data_ptr() == table.ctypes.data
    assert torch.equal(module(torch.tensor([2])), torch.from_numpy(table[2:3].copy()))


def test_init_copies_the_table() -> None:
    table = _table(writeable=False)
    module = build_id_embedding("init", NUM_IDS, WIDTH, pretrained_tensor(table), HIDDEN)
    weight = next(module.parameters())
    assert weight.requires_grad
    assert weight.data_ptr() != table.ctypes.data
    assert torch.equal(weight.detach(), torch.from_numpy(table.copy()))


def test_hybrid_takes_leading_factors_and_the_bias_column() -> None:
    assert hybrid_frozen_columns(6, 6).tolist() == [0, 1, 2, 5]
    assert hybrid_frozen_columns(96, 96).tolist() == [*range(63), 95]
    table = _table()
    module = build_id_embedding("hybrid", NUM_IDS, WIDTH, pretrained_tensor(table), HIDDEN)
    output = module(torch.tensor([4]))
    assert torch.equal(output[0, :4], torch.from_numpy(table[4, [0, 1, 2, 5]]))
    output.sum().backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0].shape == (NUM_IDS, 2)


def test_adapters_leave_the_table_frozen_and_train_the_adapter() -> None:
    for technique in ("linear", "mlp"):
        module = build_id_embedding(technique, NUM_IDS, 3, pretrained_tensor(_table()), HIDDEN)
        assert module(torch.tensor([0, 1])).shape == (2, 3)
        assert all(p.requires_grad for p in module.parameters())
        assert not dict(module.named_buffers())["frozen_weight"].requires_grad


@pytest.mark.parametrize(
    ("technique", "pretrained", "width", "message"),
    [
        ("init_frz", None, WIDTH, "needs pretrained tables"),
        ("init", np.zeros((NUM_IDS, 4), np.float32), WIDTH, "must equal the pretrained width 4"),
        ("linear", np.zeros((NUM_IDS + 1, 4), np.float32), WIDTH, r"must have shape \(7, width\)"),
        ("none", np.zeros((NUM_IDS, WIDTH), np.float32), WIDTH, "must not receive pretrained"),
        ("hybrid", np.zeros((NUM_IDS, 2), np.float32), 6, "must fit the pretrained width 2"),
        ("auto", None, WIDTH, "resolve 'auto'"),
    ],
)
def test_bad_inputs_fail_clearly(
    technique: str, pretrained: np.ndarray | None, width: int, message: str
) -> None:
    tensor = None if pretrained is None else torch.from_numpy(pretrained)
    with pytest.raises(ValueError, match=message):
        build_id_embedding(technique, NUM_IDS, width, tensor, HIDDEN)  # type: ignore[arg-type]


def test_pretrained_tensor_rejects_float64() -> None:
    with pytest.raises(ValueError, match="float32"):
        pretrained_tensor(np.zeros((2, 2)))
