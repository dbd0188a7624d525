"""Per-entity feature tables, stored once per user/item (not per interaction; RecD)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EntityFeatures:
    """Dense features of every user (or item), row ``i`` for contiguous id ``i``.

    ``categorical`` holds codes in ``[0, cardinality)`` per column, 0 meaning unknown.
    ``multi_hot`` holds 0/1 flags (e.g. genres); it may have zero columns.
    """

    categorical: np.ndarray  # (N, F) int64
    categorical_names: tuple[str, ...]
    categorical_cardinalities: tuple[int, ...]
    multi_hot: np.ndarray  # (N, M) float32
    multi_hot_name: str | None = None

    @property
    def num_entities(self) -> int:
        return int(self.categorical.shape[0])

    @classmethod
    def empty(cls, num_entities: int) -> EntityFeatures:
        """No features: ids only (e.g. Epinions users, generic files)."""
        return cls(
            categorical=np.zeros((num_entities, 0), dtype=np.int64),
            categorical_names=(),
            categorical_cardinalities=(),
            multi_hot=np.zeros((num_entities, 0), dtype=np.float32),
        )
