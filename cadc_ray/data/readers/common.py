"""What every dataset reader shares: the normalized form, the registry contract, the parsers.

:class:`NormalizedData` is the one in-memory form every reader returns: contiguous int64 ids
``0..n-1`` over the users/items that appear in the interactions (assigned in sorted order of
the raw ids, so MovieLens user 1 becomes 0), a timestamp per row (the row index when the
dataset has none), an optional rating, and per-entity feature tables (stored once per
user/item, RecD).

Row order is kept: ``row_index`` is the position in the input after duplicate removal, the
tie-break of the time split and the time order itself for datasets without timestamps
(Epinions). Repeated (user, item) pairs follow ``DataConfig.duplicates``: ``keep_last``
(the later row wins), ``keep_first`` or ``error``.

Every problem raises :class:`DataError` naming the file, the line (or row / column) and the
offending value, before anything is written.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from cadc_ray.config import DataConfig, DuplicateRule
from cadc_ray.data.errors import DataError
from cadc_ray.data.features import EntityFeatures

logger = logging.getLogger(__name__)

LATIN1 = "ISO-8859-1"


@dataclass(frozen=True)
class NormalizedData:
    """A dataset in normalized form; every interaction array is ``(N,)``."""

    user_id: np.ndarray  # int64, contiguous 0..num_users-1
    item_id: np.ndarray  # int64, contiguous 0..num_items-1
    timestamp: np.ndarray  # int64; == row index when has_timestamp is False
    rating: np.ndarray | None  # float32
    has_timestamp: bool
    user_raw_ids: np.ndarray  # (num_users,) raw id of each contiguous id
    item_raw_ids: np.ndarray  # (num_items,)
    user_features: EntityFeatures
    item_features: EntityFeatures
    inputs: tuple[Path, ...]  # files read (their sha256 goes to the manifest)
    duplicates_dropped: int

    @property
    def num_interactions(self) -> int:
        return len(self.user_id)

    @property
    def num_users(self) -> int:
        return len(self.user_raw_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_raw_ids)


class DatasetSource(Protocol):
    """One entry of ``readers.DATASETS``: where a dataset's raw files are and how to read them.

    ``path`` is what :func:`cadc_ray.data.readers.resolve_input_path` returns (the configured
    file or folder, which exists).
    """

    @property
    def folder(self) -> str | None:
        """Folder under ``$CADC_DATA_DIR`` used when ``data.path`` is unset (None: required)."""
        ...

    @property
    def generated(self) -> bool:
        """True when the dataset is generated, not read (it has no raw files)."""
        ...

    def input_files(self, config: DataConfig, path: Path) -> list[Path]:
        """The raw files :meth:`read` will read, without reading them (their checksums decide
        whether a prepared folder can be reused)."""
        ...

    def read(self, config: DataConfig, path: Path) -> NormalizedData:
        """Reads the raw files; DataError (file, line, value) on bad input."""
        ...


# --------------------------------------------------------------------------- parsers


def describe_delimiter(delimiter: str) -> str:
    return {"\t": "tab", ",": "comma", "|": "'|'", "::": "'::'", ";": "';'"}.get(
        delimiter, repr(delimiter)
    )


def _first_line(path: Path, encoding: str) -> str:
    try:
        frame = pd.read_csv(path, sep="\x01", header=None, nrows=1, dtype=str, encoding=encoding)
        return str(frame.iloc[0, 0])[:80]
    except Exception:  # only used to decorate an error message
        return "?"


def read_failure(path: Path, error: BaseException) -> DataError:
    """The DataError for a file pandas could not read at all (empty, bad gzip, I/O)."""
    if isinstance(error, pd.errors.EmptyDataError):
        return DataError(f"{path}: empty file (no interactions)")
    if isinstance(error, (EOFError, zlib.error)) or "gzip" in str(error).lower():
        return DataError(f"{path}: unreadable gzip file: {error}")
    return DataError(f"{path}: cannot be read: {error}")


def read_integer_columns(
    path: Path,
    delimiter: str,
    names: tuple[str, ...],
    *,
    non_negative: tuple[str, ...] = (),
    encoding: str = LATIN1,
) -> dict[str, np.ndarray]:
    """Reads a headerless delimited file whose every field is an integer.

    ``delimiter`` may be ``"::"`` (MovieLens 1M/10M). Returns one int64 ``(N,)`` array per
    name. Wrong field counts, non-integers and negative values (in ``non_negative``) raise
    DataError with the file, the line number (1-based) and the value.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    double = delimiter == "::"
    width = 2 * len(names) - 1 if double else len(names)
    expected = f"{len(names)} {describe_delimiter(delimiter)}-separated fields ({'|'.join(names)})"
    try:
        # pandas' C parser takes one-character separators only: "::" is read as ":" and the
        # empty columns between the pairs are checked and dropped below.
        frame = pd.read_csv(
            path,
            sep=":" if double else delimiter,
            header=None,
            encoding=encoding,
            compression="infer",
            skip_blank_lines=True,
        )
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: expected {expected}: {error}") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise read_failure(path, error) from None
    if frame.shape[1] != width:
        raise DataError(
            f"{path}: line 1: expected {expected}, found {frame.shape[1] if not double else (frame.shape[1] + 1) // 2} "
            f"(wrong delimiter?): {_first_line(path, encoding)!r}"
        )
    if double:
        separators = frame.iloc[:, 1::2]
        bad_rows = np.flatnonzero(separators.notna().to_numpy().any(axis=1))
        if len(bad_rows):
            raise DataError(
                f"{path}: line {bad_rows[0] + 1}: expected {expected} (wrong delimiter?)"
            )
        frame = frame.iloc[:, 0::2]
    frame.columns = list(names)
    columns: dict[str, np.ndarray] = {}
    for name in names:
        column = frame[name]
        if not pd.api.types.is_integer_dtype(column.dtype):
            numeric = pd.to_numeric(column, errors="coerce")
            invalid = numeric.isna().to_numpy() | (numeric.to_numpy() % 1 != 0)
            row = int(np.flatnonzero(invalid)[0]) if invalid.any() else 0
            value = column.iloc[row]
            if pd.isna(value):
                raise DataError(
                    f"{path}: line {row + 1}: field {name!r} is missing (expected {expected})"
                )
            raise DataError(f"{path}: line {row + 1}: field {name!r} is not an integer: {value!r}")
        values = column.to_numpy(dtype=np.int64)
        if name in non_negative and (values < 0).any():
            row = int(np.flatnonzero(values < 0)[0])
            raise DataError(f"{path}: line {row + 1}: field {name!r} is negative: {values[row]}")
        columns[name] = values
    if len(frame) == 0:
        raise DataError(f"{path}: empty file (no interactions)")
    return columns


def normalize(
    user_raw: np.ndarray,
    item_raw: np.ndarray,
    timestamp: np.ndarray | None,
    rating: np.ndarray | None,
    *,
    duplicates: DuplicateRule,
    source: str,
    row_label: Callable[[int], str] = lambda row: f"line {row + 1}",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, int]:
    """Applies the duplicate rule and assigns contiguous ids (sorted raw-id order).

    Returns ``(user_id, item_id, timestamp, rating, user_raw_ids, item_raw_ids, dropped)``;
    ``timestamp`` is the row index (after de-duplication) when None is given.
    """
    n = len(user_raw)
    if n == 0:
        raise DataError(f"{source}: empty dataset (no interactions)")
    user_codes = pd.factorize(user_raw)[0].astype(np.int64)
    item_codes = pd.factorize(item_raw)[0].astype(np.int64)
    pair = pd.Series(user_codes * (int(item_codes.max()) + 1) + item_codes)
    keep = np.ones(n, dtype=bool)
    dropped = 0
    if pair.duplicated().any():
        if duplicates == "error":
            repeated = pair.duplicated(keep=False).to_numpy()
            first = int(np.flatnonzero(repeated)[0])
            rows = np.flatnonzero(pair.to_numpy() == pair.iloc[first])
            raise DataError(
                f"{source}: duplicate (user, item) pair (user={user_raw[first]!r}, "
                f"item={item_raw[first]!r}) at {', '.join(row_label(int(r)) for r in rows[:5])} "
                f"(data.duplicates: error; use keep_last or keep_first)"
            )
        keep = ~pair.duplicated(keep="last" if duplicates == "keep_last" else "first").to_numpy()
        dropped = int(n - keep.sum())
        logger.info("%s: dropped %d repeated (user, item) rows (%s)", source, dropped, duplicates)
    user_raw, item_raw = user_raw[keep], item_raw[keep]
    user_raw_ids, user_id = np.unique(user_raw, return_inverse=True)
    item_raw_ids, item_id = np.unique(item_raw, return_inverse=True)
    kept = int(keep.sum())
    times = (
        np.arange(kept, dtype=np.int64) if timestamp is None else timestamp[keep].astype(np.int64)
    )
    ratings = None if rating is None else rating[keep].astype(np.float32)
    return (
        user_id.astype(np.int64).reshape(-1),
        item_id.astype(np.int64).reshape(-1),
        times,
        ratings,
        user_raw_ids,
        item_raw_ids,
        dropped,
    )


def read_lines(path: Path, encoding: str = LATIN1) -> list[str]:
    """The file's lines; DataError naming the file when it cannot be read or decoded."""
    try:
        return path.read_text(encoding=encoding).splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read: {error}") from None


def parse_non_negative_int(path: Path, line: int, field: str, text: str) -> int:
    """``int(text)``; DataError with the file, line and field when not a non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        raise DataError(
            f"{path}: line {line}: field {field!r} is not an integer: {text!r}"
        ) from None
    if value < 0:
        raise DataError(f"{path}: line {line}: field {field!r} is negative: {value}")
    return value
