"""The pretrained user/item tables that stage 1 hands to stage 2."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
