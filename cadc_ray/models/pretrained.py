"""The pretrained user/item tables that stage 1 hands to stage 2."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PretrainedTables:
    """Rows of ``d + 1`` float32 elements; for MF the last element is the row's bias.

    This object is what the sweep driver ``ray.put``s once and every trial reads
    (zero-copy, read-only numpy arrays: frozen tables wrap them, trainable ones copy).
    """

    user: np.ndarray  # (num_users, d + 1) float32
    item: np.ndarray  # (num_items, d + 1) float32
    pretrainer: str  # "mf" | "mf_mlp" | "als"
    # The teacher's global logit offset: MF's ``b``; ALS's calibrated offset (pretrain.als).
    # It ranks nothing, but the ``residual`` integration trains on the teacher's logit as the
    # teacher was trained, so it is part of the score there.
    global_bias: float = 0.0

    def __post_init__(self) -> None:
        if self.user.ndim != 2 or self.item.ndim != 2 or self.user.shape[1] != self.item.shape[1]:
            raise ValueError(
                f"pretrained tables must be 2-D with equal widths, got {self.user.shape} "
                f"and {self.item.shape}"
            )

    @property
    def width(self) -> int:
        return int(self.user.shape[1])


def teacher_pair_logits(
    user_rows: torch.Tensor, item_rows: torch.Tensor, pretrainer: str
) -> torch.Tensor:
    """The teacher's score of aligned pairs: rows (B, d+1), (B, d+1) -> (B,), no global bias.

    ``mf``: ``u[:d].v[:d] + u[d] + v[d]``; ``als``: ``u.v`` over all columns (the exporter
    leaves its bias column at zero, so this is also the MF formula). ``mf_mlp`` cannot score:
    its interaction MLP is not part of the tables.
    """
    if pretrainer == "als":
        return (user_rows * item_rows).sum(dim=1)
    _check_scorable(pretrainer)
    return (user_rows[:, :-1] * item_rows[:, :-1]).sum(dim=1) + user_rows[:, -1] + item_rows[:, -1]


def teacher_user_factors(user_rows: torch.Tensor, pretrainer: str) -> torch.Tensor:
    """Rows (B, d+1) -> (B, w) such that ``teacher_user_factors(u) @ teacher_item_factors(v).T``
    is ``teacher_all_logits(u, v)``: ALS the rows as they are; MF ``[u[:d], u[d], 1]``.

    The biases become two more columns of one matrix product: scoring every item then needs
    no broadcast additions over (B, I) and no strided slice of the item table per call.
    """
    if pretrainer == "als":
        return user_rows
    _check_scorable(pretrainer)
    return torch.cat([user_rows, torch.ones_like(user_rows[:, :1])], dim=1)


def teacher_item_factors(item_rows: torch.Tensor, pretrainer: str) -> torch.Tensor:
    """Rows (I, d+1) -> (I, w): ALS the rows; MF ``[v[:d], 1, v[d]]`` (see ``teacher_user_factors``)."""
    if pretrainer == "als":
        return item_rows
    _check_scorable(pretrainer)
    return torch.cat(
        [item_rows[:, :-1], torch.ones_like(item_rows[:, :1]), item_rows[:, -1:]], dim=1
    )


def teacher_all_logits(
    user_rows: torch.Tensor, item_table: torch.Tensor, pretrainer: str
) -> torch.Tensor:
    """The teacher's score of every item: rows (B, d+1), table (I, d+1) -> (B, I), no global bias."""
    return (
        teacher_user_factors(user_rows, pretrainer) @ teacher_item_factors(item_table, pretrainer).T
    )


def _check_scorable(pretrainer: str) -> None:
    if pretrainer == "mf_mlp":
        raise ValueError(
            "the mf_mlp teacher cannot score from its tables: its interaction MLP is not exported"
        )
    if pretrainer != "mf":
        raise ValueError(f"unknown pretrainer {pretrainer!r}")


def teacher_scorer(tables: PretrainedTables) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The teacher's own ranking score, ``users (B,) -> (B, num_items)``, from its tables.

    ``mf``: ``u[:d].v[:d] + u[d] + v[d]`` (METHOD 1.2 without the global bias, which moves
    every item's score equally and so no rank); ``als``: ``u.v``. ``mf_mlp``: None, its
    interaction MLP is not part of the tables. Measures how much the TTNN has to recover.
    """
    if tables.pretrainer == "mf_mlp":
        return None
    if tables.pretrainer != "als":
        _check_scorable(tables.pretrainer)
    user = torch.from_numpy(np.array(tables.user, dtype=np.float32))  # a writable copy
    # Once per scorer, contiguous: every user chunk is then one matrix product.
    item_factors = teacher_item_factors(
        torch.from_numpy(np.array(tables.item, dtype=np.float32)), tables.pretrainer
    ).contiguous()

    def score(users: torch.Tensor) -> torch.Tensor:
        return teacher_user_factors(user[users.cpu()], tables.pretrainer) @ item_factors.T

    return score
