"""MF and CADC-MLP: hand-computed logits, exported tables, sides for alternation."""

from __future__ import annotations

import numpy as np
import torch

from cadc_ray.models import MatrixFactorization, MLPMatrixFactorization, PretrainedTables
from cadc_ray.models.pretrained import teacher_scorer


def _hand_built_mf() -> MatrixFactorization:
    """2 users x 3 items, d = 2, rows ``[factors; bias]``, global bias 0.1."""
    model = MatrixFactorization(num_users=2, num_items=3, dim=2)
    with torch.no_grad():
        model.user_table.weight.copy_(torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 0.0]]))
        model.item_table.weight.copy_(
            torch.tensor([[3.0, 1.0, 0.25], [1.0, 1.0, -1.0], [0.0, 0.0, 0.0]])
        )
        model.global_bias.fill_(0.1)
    return model


def test_mf_logit_is_dot_plus_biases() -> None:
    model = _hand_built_mf()
    logits = model(torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2]))
    # user0.item0: 1*3 + 2*1 + 0.5 + 0.25 + 0.1 ; user1.item1: -1 + 0 - 1 + 0.1 ; user0.item2: 0.5 + 0.1
    assert torch.allclose(logits, torch.tensor([5.85, -1.9, 0.6]))
    assert torch.allclose(
        model.score_users(torch.tensor([0, 1])),
        torch.tensor([[5.85, 2.6, 0.6], [-0.65, -1.9, 0.1]]),
    )


def test_export_tables_are_copies_with_bias_column() -> None:
    model = MatrixFactorization(num_users=4, num_items=5, dim=3)
    tables = model.export_tables()
    assert tables.user.shape == (4, 4) and tables.item.shape == (5, 4)
    assert tables.user.dtype == np.float32 and tables.pretrainer == "mf"
    assert (tables.user[:, 3] == 0).all()  # biases start at zero
    with torch.no_grad():
        model.user_table.weight.add_(1.0)
    assert (tables.user[:, 3] == 0).all()  # a copy, not a view of the live weights


def test_sides_partition_the_parameters() -> None:
    for model in (MatrixFactorization(3, 4, 2), MLPMatrixFactorization(3, 4, 2, hidden=(5,))):
        sides = model.side_parameters()
        assert sides["user"][0] is model.user_table.weight
        assert sides["item"][0] is model.item_table.weight
        ids = [id(p) for group in sides.values() for p in group]
        assert sorted(ids) == sorted(id(p) for p in model.parameters())
        assert len(ids) == len(set(ids))


def test_mlp_variant_scores_agree_and_export() -> None:
    torch.manual_seed(0)
    model = MLPMatrixFactorization(num_users=3, num_items=4, dim=2, hidden=(8, 4))
    users = torch.tensor([0, 0, 0, 0, 2, 2, 2, 2])
    items = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    pairwise = model(users, items).view(2, 4)
    assert torch.allclose(model.score_users(torch.tensor([0, 2])), pairwise, atol=1e-6)
    tables = model.export_tables()
    assert tables.pretrainer == "mf_mlp" and tables.width == 3


def test_teacher_scorer_ranks_as_the_mf_it_was_exported_from() -> None:
    model = _hand_built_mf()
    scorer = teacher_scorer(model.export_tables())
    assert scorer is not None
    # The test above's hand values minus the global bias 0.1 (a shift: same ranks).
    assert torch.allclose(
        scorer(torch.tensor([0, 1])), torch.tensor([[5.75, 2.5, 0.5], [-0.75, -2.0, 0.0]])
    )


def test_teacher_scorer_als_is_a_plain_dot_and_mlp_cannot_score() -> None:
    user = np.array([[1.0, 2.0], [0.0, 1.0]], dtype=np.float32)
    item = np.array([[1.0, 1.0], [2.0, -1.0], [0.0, 3.0]], dtype=np.float32)
    scorer = teacher_scorer(PretrainedTables(user, item, "als"))
    assert scorer is not None
    assert torch.equal(
        scorer(torch.tensor([1, 0])), torch.tensor([[1.0, -1.0, 3.0], [3.0, 0.0, 6.0]])
    )
    assert teacher_scorer(PretrainedTables(user, item, "mf_mlp")) is None
