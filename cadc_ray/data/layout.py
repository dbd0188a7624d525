"""The prepared-dataset layout on disk: paths, the manifest, feature tables.

A prepared dataset (docs/ARCHITECTURE.md section 1) is a folder::

    manifest.json
    interactions/part-00000.parquet ...   row_index, user_id, item_id, timestamp, rating
    user_features.parquet                 user_id + one int64 column per categorical feature
    item_features.parquet                 item_id + ...; multi-hot features as list<int64>
    user_ids.parquet, item_ids.parquet    contiguous id -> raw id (string)

Everything here is plain pyarrow/numpy: Ray workers read it without Ray Data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cadc_ray.data.errors import DataError
from cadc_ray.data.features import EntityFeatures

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
INTERACTIONS_DIR = "interactions"
SUCCESS_MARKER = "_SUCCESS"

Entity = Literal["user", "item"]
FeatureKind = Literal["categorical", "multi_hot"]

INTERACTION_SCHEMA = pa.schema(
    [
        ("row_index", pa.int64()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("timestamp", pa.int64()),
        ("rating", pa.float32()),
    ]
)


@dataclass(frozen=True)
class FeatureSpec:
    """One feature column of a user/item table. Code 0 means unknown for categoricals;
    for multi-hot features ``cardinality`` is the number of flags."""

    name: str
    kind: FeatureKind
    cardinality: int


@dataclass(frozen=True)
class Manifest:
    """What a prepared folder holds; written last, read by every later stage."""

    schema_version: int
    dataset: str
    num_interactions: int
    num_users: int
    num_items: int
    has_timestamp: bool  # False: timestamp == row_index, row order is the time order
    has_rating: bool
    time_order: str  # human-readable: how "latest" is decided for the split
    user_features: tuple[FeatureSpec, ...]
    item_features: tuple[FeatureSpec, ...]
    inputs: dict[str, str]  # input file name -> sha256
    duplicates_rule: str
    duplicates_dropped: int
    num_shards: int
    data_config: dict[str, Any]  # the parts of DataConfig that determine the content
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{source}: not valid JSON: {error}") from None
        if not isinstance(raw, dict):
            raise DataError(f"{source}: expected a JSON object")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(
                f"{source}: schema_version {version!r} is not supported (expected "
                f"{SCHEMA_VERSION}); prepare the dataset again with --force"
            )
        try:
            raw["user_features"] = tuple(FeatureSpec(**spec) for spec in raw["user_features"])
            raw["item_features"] = tuple(FeatureSpec(**spec) for spec in raw["item_features"])
            return cls(**raw)
        except (KeyError, TypeError) as error:
            raise DataError(f"{source}: malformed manifest: {error}") from None

    @classmethod
    def load(cls, prepared: Path | str) -> Manifest:
        """Reads ``<prepared>/manifest.json``."""
        path = Path(prepared) / MANIFEST_FILE
        if not path.is_file():
            raise DataError(f"{path}: no manifest: {prepared} is not a prepared dataset")
        return cls.from_json(path.read_text(encoding="utf-8"), str(path))

    def features(self, entity: Entity) -> tuple[FeatureSpec, ...]:
        return self.user_features if entity == "user" else self.item_features


def interactions_dir(prepared: Path) -> Path:
    return Path(prepared) / INTERACTIONS_DIR


def parquet_files(path: str | Path) -> list[str]:
    """The data files of a Parquet file or folder of shards, sorted; files named ``_*`` or
    ``.*`` (``_SUCCESS``, temp files) are not data."""
    import pyarrow.dataset as ds

    return sorted(ds.dataset(str(path), format="parquet", ignore_prefixes=["_", "."]).files)


def parquet_rows(path: str | Path) -> int:
    """Rows of a Parquet file or folder of shards, from the files' metadata (no data read)."""
    return sum(pq.ParquetFile(file).metadata.num_rows for file in parquet_files(path))


def parquet_batches(
    path: str | Path, columns: list[str] | None = None, batch_rows: int = 1 << 16
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """``(file, batch)`` over a Parquet file or folder of shards, file after file, without
    pyarrow's read-ahead or threads: memory holds one batch, not the files."""
    for file in parquet_files(path):
        batches = pq.ParquetFile(file, pre_buffer=False).iter_batches(
            batch_size=batch_rows, columns=columns, use_threads=False
        )
        for batch in batches:
            yield file, batch


def shard_name(index: int) -> str:
    """Stable shard names (Ray's row hashes and our sampling never depend on them, but
    humans and checksums do)."""
    return f"part-{index:05d}.parquet"


def interactions_table(
    row_index: np.ndarray,
    user_id: np.ndarray,
    item_id: np.ndarray,
    timestamp: np.ndarray,
    rating: np.ndarray | None,
) -> pa.Table:
    """The interaction schema from column arrays, each ``(N,)``; ``rating=None`` -> nulls."""
    n = len(row_index)
    rating_array = (
        pa.nulls(n, type=pa.float32())
        if rating is None
        else pa.array(np.asarray(rating, dtype=np.float32))
    )
    return pa.Table.from_arrays(
        [
            pa.array(np.asarray(row_index, dtype=np.int64)),
            pa.array(np.asarray(user_id, dtype=np.int64)),
            pa.array(np.asarray(item_id, dtype=np.int64)),
            pa.array(np.asarray(timestamp, dtype=np.int64)),
            rating_array,
        ],
        schema=INTERACTION_SCHEMA,
    )


def feature_specs(features: EntityFeatures) -> tuple[FeatureSpec, ...]:
    specs = [
        FeatureSpec(name, "categorical", int(card))
        for name, card in zip(
            features.categorical_names, features.categorical_cardinalities, strict=True
        )
    ]
    if features.multi_hot.shape[1] > 0:
        specs.append(
            FeatureSpec(
                features.multi_hot_name or "multi_hot", "multi_hot", features.multi_hot.shape[1]
            )
        )
    return tuple(specs)


def write_entity_features(path: Path, entity: Entity, features: EntityFeatures) -> None:
    """One row per entity: ``<entity>_id`` + categorical columns + one list<int64> column
    holding the indices of the multi-hot flags that are set."""
    n = features.num_entities
    columns: dict[str, pa.Array] = {f"{entity}_id": pa.array(np.arange(n, dtype=np.int64))}
    for j, name in enumerate(features.categorical_names):
        columns[name] = pa.array(features.categorical[:, j].astype(np.int64))
    if features.multi_hot.shape[1] > 0:
        rows, cols = np.nonzero(features.multi_hot)  # row-major: grouped by entity
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
        name = features.multi_hot_name or "multi_hot"
        columns[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(cols.astype(np.int64)))
    pq.write_table(pa.table(columns), path)


def load_entity_features(prepared: Path | str, entity: Entity) -> EntityFeatures:
    """The feature table of every user (or item), row ``i`` = contiguous id ``i``.

    Returns ``categorical (N, F) int64``, ``multi_hot (N, M) float32`` (M may be 0).
    """
    if entity not in ("user", "item"):
        raise DataError(f"entity must be 'user' or 'item', got {entity!r}")
    manifest = Manifest.load(prepared)
    path = Path(prepared) / f"{entity}_features.parquet"
    table = pq.read_table(path)
    n = manifest.num_users if entity == "user" else manifest.num_items
    if table.num_rows != n:
        raise DataError(f"{path}: {table.num_rows} rows, manifest says {n} {entity}s")
    ids = table.column(f"{entity}_id").to_numpy()
    if not np.array_equal(ids, np.arange(n)):
        raise DataError(f"{path}: {entity}_id is not 0..{n - 1} in order")
    specs = manifest.features(entity)
    categorical_specs = [s for s in specs if s.kind == "categorical"]
    multi_hot_specs = [s for s in specs if s.kind == "multi_hot"]
    categorical = np.zeros((n, len(categorical_specs)), dtype=np.int64)
    for j, spec in enumerate(categorical_specs):
        categorical[:, j] = table.column(spec.name).to_numpy()
    multi_hot = np.zeros((n, 0), dtype=np.float32)
    multi_hot_name: str | None = None
    if multi_hot_specs:
        spec = multi_hot_specs[0]
        multi_hot_name = spec.name
        column = table.column(spec.name).combine_chunks()
        offsets = column.offsets.to_numpy()
        flags = column.values.to_numpy()
        multi_hot = np.zeros((n, spec.cardinality), dtype=np.float32)
        multi_hot[np.repeat(np.arange(n), np.diff(offsets)), flags] = 1.0
    return EntityFeatures(
        categorical=categorical,
        categorical_names=tuple(s.name for s in categorical_specs),
        categorical_cardinalities=tuple(s.cardinality for s in categorical_specs),
        multi_hot=multi_hot,
        multi_hot_name=multi_hot_name,
    )


def write_id_map(path: Path, entity: Entity, raw_ids: np.ndarray) -> None:
    """Contiguous id -> raw id, as strings (raw ids may be strings in generic files)."""
    table = pa.table(
        {
            f"{entity}_id": pa.array(np.arange(len(raw_ids), dtype=np.int64)),
            "raw_id": pa.array([str(v) for v in raw_ids.tolist()], type=pa.string()),
        }
    )
    pq.write_table(table, path)


def load_id_map(prepared: Path | str, entity: Entity) -> np.ndarray:
    """``(N,)`` raw ids (strings) indexed by contiguous id."""
    table = pq.read_table(Path(prepared) / f"{entity}_ids.parquet")
    return np.asarray(table.column("raw_id").to_pylist(), dtype=object)
