"""The ``residual`` integration (METHOD 1.7): the teacher's own logit plus a two-tower correction.

    logit(u, i) = exp(log_scale) * teacher(u, i) + offset + user_tower(u) . item_tower(i)

``teacher(u, i)`` is the pretrained teacher's score from its frozen rows
(``models.pretrained.teacher_pair_logits``: MF ``u[:d].v[:d] + u[d] + v[d]``, ALS ``u.v``).
``offset`` starts at the teacher's global bias and ``log_scale`` at 0, so at initialisation the
teacher term is the logit the teacher was trained to output (MF's ``b`` included; ALS rows are
calibrated to a BCE logit by ``pretrain.als``). Both scalars train: a positive affine map of
the teacher's score never changes its ranking, it only lets the loss weigh the teacher against
the correction. The scale is ``exp`` of a parameter so that it stays > 0.

The correction starts at exactly zero: the *user* tower's last ``Linear`` is zeroed, the item
tower keeps its random initialisation. Zeroing both would leave the dot product with a zero
gradient on both sides forever; with one side zero, the zeroed layer's gradient is
``item_output * dLoss/dlogit`` and the correction leaves zero at the first step.

The towers read the same frozen rows as ``init_frz``; the teacher reads the very same
id-embedding modules (one buffer per table, moved once by ``model.to``). ``mf_mlp`` is refused: its interaction MLP is not exported with its rows, so
its tables are not a scorer (``config.validate`` rejects the combination earlier).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from cadc_ray.models.embeddings import FrozenIdEmbedding
from cadc_ray.models.pretrained import (
    PretrainedTables,
    teacher_item_factors,
    teacher_pair_logits,
    teacher_user_factors,
)
from cadc_ray.models.two_tower import Tower, TwoTower

SCORABLE_PRETRAINERS = ("mf", "als")
"""Teachers whose exported rows are a full scorer (``mf_mlp``'s are not)."""


def _teacher_rows(rows: FrozenIdEmbedding, ids: torch.Tensor) -> torch.Tensor:
    """The teacher's own rows of ``ids``: the table itself, whatever map the towers read it
    through (``model.frozen_rows``, ``embeddings.MappedFrozenIdEmbedding``)."""
    return F.embedding(ids, rows.frozen_weight)


class TeacherLogits(nn.Module):
    """The frozen teacher as a logit: ``exp(log_scale) * teacher(u, i) + offset``.

    The tables are the ``frozen_weight`` buffers of the towers' ``init_frz``-style id
    embeddings (no gradient, no optimizer state, counted as frozen, once); ``log_scale`` and
    ``offset`` are the only parameters (2 elements).
    """

    def __init__(
        self,
        user_rows: FrozenIdEmbedding,
        item_rows: FrozenIdEmbedding,
        pretrainer: str,
        global_bias: float,
    ):
        super().__init__()
        if pretrainer not in SCORABLE_PRETRAINERS:
            raise ValueError(
                f"integration 'residual' needs a teacher that scores from its rows "
                f"({', '.join(SCORABLE_PRETRAINERS)}), got {pretrainer!r}: the mf_mlp "
                "teacher's interaction MLP is not exported"
            )
        if user_rows.embedding_dim != item_rows.embedding_dim:
            raise ValueError(
                f"teacher tables differ in width: {user_rows.embedding_dim} vs "
                f"{item_rows.embedding_dim}"
            )
        self.pretrainer = pretrainer
        # The towers' own id-embedding modules, registered here a second time: one buffer
        # per table, and a device move (``model.to``) moves it once, never into two copies.
        self.user_rows = user_rows
        self.item_rows = item_rows
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.offset = nn.Parameter(torch.tensor(float(global_bias)))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B,), items (B,) int64 -> logits (B,); or items (B, M) -> logits (B, M)."""
        if items.ndim == 2:
            user_rows = (
                _teacher_rows(self.user_rows, users).unsqueeze(1).expand(-1, items.shape[1], -1)
            )
            raw = teacher_pair_logits(
                user_rows.reshape(items.numel(), -1),  # (B*M, d+1)
                _teacher_rows(self.item_rows, items.reshape(-1)),  # (B*M, d+1)
                self.pretrainer,
            ).view(items.shape)
        else:
            raw = teacher_pair_logits(
                _teacher_rows(self.user_rows, users),
                _teacher_rows(self.item_rows, items),
                self.pretrainer,
            )
        return self.log_scale.exp() * raw + self.offset

    def user_factors(self, users: torch.Tensor) -> torch.Tensor:
        """users (B,) -> (B, w + 1): ``user_factors(u) @ item_factors().T`` is the logit."""
        scaled = self.log_scale.exp() * teacher_user_factors(
            _teacher_rows(self.user_rows, users), self.pretrainer
        )
        return torch.cat([scaled, self.offset.expand(users.shape[0], 1)], dim=1)

    def item_factors(self) -> torch.Tensor:
        """(num_items, w + 1): the teacher's item factors and a column of ones for the offset."""
        factors = teacher_item_factors(self.item_rows.frozen_weight, self.pretrainer)
        return torch.cat([factors, torch.ones_like(factors[:, :1])], dim=1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """users (B,) -> logits (B, num_items) over every item."""
        return self.user_factors(users) @ self.item_factors().T


class ResidualTwoTower(TwoTower):
    """``teacher(u, i) + dot(user_tower(u), item_tower(i))``; the correction starts at 0.

    Same interface as :class:`TwoTower` (``forward`` for training, ``score_users`` /
    ``ranking_scorer`` for full ranking), so the loops and the evaluation need no change.
    """

    def __init__(self, user_tower: Tower, item_tower: Tower, teacher: TeacherLogits):
        super().__init__(user_tower, item_tower)
        self.teacher = teacher
        zero_last_layer(user_tower)
        self.candidate_list_forward = True  # forward takes (B, M) candidates as TwoTower's

    def correction(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The towers' part alone: users (B,), items (B,) or (B, M) -> (B,) or (B, M)."""
        return super().forward(users, items)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B,), items (B,) int64 -> logits (B,); or items (B, M) -> logits (B, M)."""
        return self.teacher(users, items) + super().forward(users, items)

    def score_users(
        self, users: torch.Tensor, item_outputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """users (B,) -> logits (B, num_items): the teacher's scores plus the correction."""
        correction = super().score_users(users, item_outputs)
        with torch.no_grad():
            return self.teacher.score_all(users) + correction

    def ranking_scorer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``score_users`` as one matrix product per user chunk, item side built once here.

        ``[teacher user factors, user tower] . [teacher item factors, item tower]`` is the
        teacher's logit plus the correction. Two (B, I) products, then the scale, the offset
        and the sum over (B, I), took 2.88 s per 1,024 users on Epinions' 296k items against
        1.71 s for this (``scripts/bench_ranking.py``, docs/scale.md). Build a new scorer for
        every evaluation, as ``TwoTower.ranking_scorer``.
        """
        with torch.no_grad():
            items = torch.cat([self.teacher.item_factors(), self.item_outputs()], dim=1)

        def score(users: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                user_side = [self.teacher.user_factors(users), self.user_tower(users)]
                return torch.cat(user_side, dim=1) @ items.T

        return score


def zero_last_layer(tower: Tower) -> None:
    """Zeroes the tower's output ``Linear`` (weight and bias): its output is 0 for any input."""
    last = tower.mlp[-1]
    if not isinstance(last, nn.Linear):
        raise TypeError(f"the tower's last layer must be nn.Linear, got {type(last).__name__}")
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()


def residual_two_tower(
    user_tower: Tower, item_tower: Tower, pretrained: PretrainedTables
) -> ResidualTwoTower:
    """The ``residual`` model over towers whose id embeddings are the frozen (n, d+1) rows
    (``INTEGRATION_TECHNIQUES["residual"]``); the teacher reads those same modules."""
    user_rows, item_rows = user_tower.id_embedding, item_tower.id_embedding
    if not isinstance(user_rows, FrozenIdEmbedding) or not isinstance(item_rows, FrozenIdEmbedding):
        raise TypeError(
            "integration 'residual' needs towers over the frozen pretrained rows, got "
            f"{type(user_rows).__name__} / {type(item_rows).__name__}"
        )
    teacher = TeacherLogits(user_rows, item_rows, pretrained.pretrainer, pretrained.global_bias)
    return ResidualTwoTower(user_tower, item_tower, teacher)
