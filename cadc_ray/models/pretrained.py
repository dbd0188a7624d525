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

    def __post_init__(self) -> None:
        if self.user.ndim != 2 or self.item.ndim != 2 or self.user.shape[1] != self.item.shape[1]:
            raise ValueError(
                f"pretrained tables must be 2-D with equal widths, got {self.user.shape} "
                f"and {self.item.shape}"
            )

    @property
    def width(self) -> int:
        return int(self.user.shape[1])


def teacher_scorer(tables: PretrainedTables) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The teacher's own ranking score, ``users (B,) -> (B, num_items)``, from its tables.

    ``mf``: ``u[:d].v[:d] + u[d] + v[d]`` (METHOD 1.2 without the global bias, which moves
    every item's score equally and so no rank); ``als``: ``u.v``. ``mf_mlp``: None, its
    interaction MLP is not part of the tables. Measures how much the TTNN has to recover.
    """
    if tables.pretrainer == "mf_mlp":
        return None
    user = torch.from_numpy(np.array(tables.user, dtype=np.float32))  # a writable copy
    item = torch.from_numpy(np.array(tables.item, dtype=np.float32))
    if tables.pretrainer == "als":

        def score_als(users: torch.Tensor) -> torch.Tensor:
            return user[users.cpu()] @ item.T

        return score_als
    if tables.pretrainer != "mf":
        raise ValueError(f"unknown pretrainer {tables.pretrainer!r}")

    def score_mf(users: torch.Tensor) -> torch.Tensor:
        rows = user[users.cpu()]  # (B, d+1)
        return rows[:, :-1] @ item[:, :-1].T + rows[:, -1:] + item[:, -1]

    return score_mf
