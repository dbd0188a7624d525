"""Any CSV/TSV/Parquet interaction file mapped by ``data.generic`` (raw ids may be strings;
with ``has_header: false`` columns are named "0", "1", ...). No features: ids only."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cadc_ray.config import DataConfig
from cadc_ray.data.errors import DataError
from cadc_ray.data.features import EntityFeatures
from cadc_ray.data.readers.common import (
    NormalizedData,
    describe_delimiter,
    normalize,
    read_failure,
)


def read_frame(config: DataConfig, path: Path) -> pd.DataFrame:
    """The file as a frame of strings (Parquet keeps its types); DataError on a folder or an
    unreadable file."""
    columns = config.generic
    if path.is_dir():
        raise DataError(f"{path}: dataset 'generic' needs a file (CSV/TSV/Parquet), got a folder")
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path).to_pandas()
        except Exception as error:
            raise DataError(f"{path}: cannot be read as Parquet: {error}") from None
    delimiter = columns.delimiter
    if delimiter is None:
        suffixes = [s.lower() for s in path.suffixes]
        delimiter = "\t" if ".tsv" in suffixes else ","
    try:
        frame = pd.read_csv(
            path,
            sep=delimiter,
            header=0 if columns.has_header else None,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            compression="infer",
        )
    except pd.errors.ParserError as error:
        raise DataError(
            f"{path}: not a {describe_delimiter(delimiter)}-delimited file: {error}"
        ) from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise read_failure(path, error) from None
    if not columns.has_header:
        frame.columns = [str(c) for c in frame.columns]
    return frame


def _numbers(
    path: Path, values: pd.Series, column: str, label: Callable[[int], str], *, times: bool
) -> np.ndarray:
    """Numbers (or, for timestamps, ISO dates -> epoch seconds) ``(N,)``."""
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna().to_numpy() & values.notna().to_numpy()
    if times and bad.all():
        try:
            parsed = pd.to_datetime(values, errors="raise", utc=True)
        except (ValueError, TypeError) as error:
            raise DataError(f"{path}: column {column!r}: not numbers or dates: {error}") from None
        return (parsed.astype("int64") // 1_000_000_000).to_numpy()
    missing = numeric.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(
            f"{path}: {label(row)}: column {column!r} is not a number: {values.iloc[row]!r}"
        )
    return numeric.to_numpy()


@dataclass(frozen=True)
class GenericSource:
    """The generic reader as a ``readers.DATASETS`` entry (see ``common.DatasetSource``);
    ``data.path`` is required (no folder under $CADC_DATA_DIR)."""

    folder: str | None = None
    generated: bool = False

    def input_files(self, config: DataConfig, path: Path) -> list[Path]:
        return [path]

    def read(self, config: DataConfig, path: Path) -> NormalizedData:
        mapping = config.generic
        frame = read_frame(config, path)
        header_lines = 1 if mapping.has_header and path.suffix != ".parquet" else 0
        available = [str(c) for c in frame.columns]
        for field_name, column in (
            ("user", mapping.user),
            ("item", mapping.item),
            ("timestamp", mapping.timestamp),
            ("rating", mapping.rating),
        ):
            if column is not None and column not in available:
                raise DataError(
                    f"{path}: data.generic.{field_name}: column {column!r} not found "
                    f"(columns: {available}; wrong delimiter?)"
                )
        if len(frame) == 0:
            raise DataError(f"{path}: empty dataset (no interactions)")

        def label(row: int) -> str:
            if path.suffix == ".parquet":
                return f"row {row + 1}"
            return f"line {row + 1 + header_lines}"

        ids = {}
        for field_name, column in (("user", mapping.user), ("item", mapping.item)):
            values = frame[column]
            missing = np.flatnonzero(values.isna().to_numpy())
            if len(missing):
                raise DataError(
                    f"{path}: {label(int(missing[0]))}: column {column!r} ({field_name}) is empty"
                )
            ids[field_name] = values.astype(str).to_numpy(dtype=object)
        timestamp = None
        if mapping.timestamp is not None:
            timestamp = _numbers(
                path, frame[mapping.timestamp], mapping.timestamp, label, times=True
            )
        rating = None
        if mapping.rating is not None:
            rating = _numbers(path, frame[mapping.rating], mapping.rating, label, times=False)
        user_id, item_id, times, ratings, user_raw, item_raw, dropped = normalize(
            ids["user"],
            ids["item"],
            None if timestamp is None else timestamp.astype(np.int64),
            None if rating is None else rating.astype(np.float32),
            duplicates=config.duplicates,
            source=str(path),
            row_label=label,
        )
        return NormalizedData(
            user_id,
            item_id,
            times,
            ratings,
            timestamp is not None,
            user_raw,
            item_raw,
            EntityFeatures.empty(len(user_raw)),
            EntityFeatures.empty(len(item_raw)),
            (path,),
            dropped,
        )


GENERIC_SOURCE = GenericSource()
