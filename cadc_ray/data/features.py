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


# ML-1M's age codes (README): every raw age maps to the largest code not above it.
AGE_BUCKETS: tuple[int, ...] = (1, 18, 25, 35, 45, 50, 56)

# Zip prefix codes: 1..10 for a leading digit 0..9, NON_DIGIT_ZIP_CODE for anything else
# (e.g. Canadian postal codes such as "T8H1N"), 0 for missing.
NON_DIGIT_ZIP_CODE = 11
ZIP_PREFIX_CARDINALITY = 12


def age_bucket_codes(ages: np.ndarray) -> np.ndarray:
    """Raw ages ``(N,)`` (or ML-1M codes) -> codes ``(N,)`` in 1..7 (ML-1M's buckets
    1,18,25,35,45,50,56 in order); ages below 1 or missing (negative) -> 0."""
    ages = np.asarray(ages, dtype=np.int64)
    codes = np.searchsorted(np.asarray(AGE_BUCKETS), ages, side="right").astype(np.int64)
    codes[ages < 1] = 0
    return codes


def zip_prefix_codes(zips: list[str]) -> np.ndarray:
    """First character of each zip code -> ``(N,)`` int64 codes (see NON_DIGIT_ZIP_CODE)."""
    codes = np.zeros(len(zips), dtype=np.int64)
    for i, value in enumerate(zips):
        text = value.strip()
        if not text:
            continue
        codes[i] = int(text[0]) + 1 if text[0].isdigit() else NON_DIGIT_ZIP_CODE
    return codes


def vocabulary_codes(values: list[str | int | None]) -> tuple[np.ndarray, int]:
    """Categorical values -> codes ``(N,)`` 1..K in sorted order of the distinct values
    (None -> 0, unknown); returns the codes and the cardinality K + 1."""
    vocabulary = sorted({v for v in values if v is not None}, key=lambda v: (str(type(v)), v))
    index = {v: i + 1 for i, v in enumerate(vocabulary)}
    codes = np.array([0 if v is None else index[v] for v in values], dtype=np.int64)
    return codes, len(vocabulary) + 1


def align_features(
    feature_raw_ids: np.ndarray, features: EntityFeatures, entity_raw_ids: np.ndarray
) -> EntityFeatures:
    """Reorders a feature table keyed by ``feature_raw_ids`` (F,) onto ``entity_raw_ids`` (N,)
    (the contiguous id order); entities without a feature row get all-zero (unknown) rows."""
    position = {raw: i for i, raw in enumerate(feature_raw_ids.tolist())}
    n = len(entity_raw_ids)
    source = np.array([position.get(raw, -1) for raw in entity_raw_ids.tolist()], dtype=np.int64)
    found = source >= 0
    categorical = np.zeros((n, features.categorical.shape[1]), dtype=np.int64)
    categorical[found] = features.categorical[source[found]]
    multi_hot = np.zeros((n, features.multi_hot.shape[1]), dtype=np.float32)
    multi_hot[found] = features.multi_hot[source[found]]
    return EntityFeatures(
        categorical=categorical,
        categorical_names=features.categorical_names,
        categorical_cardinalities=features.categorical_cardinalities,
        multi_hot=multi_hot,
        multi_hot_name=features.multi_hot_name,
    )
