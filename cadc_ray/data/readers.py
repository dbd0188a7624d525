"""Readers of the raw datasets into one normalized in-memory form.

Every reader returns a :class:`NormalizedData`: contiguous int64 ids ``0..n-1`` over the
users/items that appear in the interactions (assigned in sorted order of the raw ids, so
MovieLens user 1 becomes 0), a timestamp per row (the row index when the dataset has none),
an optional rating, and per-entity feature tables (stored once per user/item, RecD).

Row order is kept: ``row_index`` is the position in the input after duplicate removal, the
tie-break of the time split and the time order itself for datasets without timestamps
(Epinions). Repeated (user, item) pairs follow ``DataConfig.duplicates``: ``keep_last``
(the later row wins), ``keep_first`` or ``error``.

Every problem raises :class:`DataError` naming the file, the line (or row / column) and the
offending value, before anything is written. The synthetic dataset is not read here: it is
generated shard by shard (``cadc_ray.data.synthetic``).
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cadc_ray.config import DATA_DIR_ENV, DataConfig, DuplicateRule
from cadc_ray.data.errors import DataError
from cadc_ray.data.features import (
    ZIP_PREFIX_CARDINALITY,
    EntityFeatures,
    age_bucket_codes,
    align_features,
    vocabulary_codes,
    zip_prefix_codes,
)

logger = logging.getLogger(__name__)

LATIN1 = "ISO-8859-1"

# Folder of each named dataset under $CADC_DATA_DIR.
DATASET_FOLDERS: dict[str, str] = {
    "ml-100k": "ml-100k",
    "ml-1m": "ml-1m",
    "ml-10m": "ml-10m",
    "epinions": "epinions",
}


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


# --------------------------------------------------------------------------- helpers


def resolve_input_path(config: DataConfig) -> Path:
    """``DataConfig.path``, else ``$CADC_DATA_DIR/<dataset folder>`` for named datasets."""
    if config.path:
        path = Path(config.path).expanduser()
    elif config.dataset in DATASET_FOLDERS:
        root = os.environ.get(DATA_DIR_ENV)
        if not root:
            raise DataError(
                f"data.path: not set for dataset {config.dataset!r} and ${DATA_DIR_ENV} is "
                f"not set either (point one of them at the raw files)"
            )
        path = Path(root) / DATASET_FOLDERS[config.dataset]
    else:
        raise DataError(f"data.path: required for dataset {config.dataset!r}")
    if not path.exists():
        raise DataError(f"{path}: not found (data.path for dataset {config.dataset!r})")
    return path


def _describe_delimiter(delimiter: str) -> str:
    return {"\t": "tab", ",": "comma", "|": "'|'", "::": "'::'", ";": "';'"}.get(
        delimiter, repr(delimiter)
    )


def _first_line(path: Path, encoding: str) -> str:
    try:
        frame = pd.read_csv(path, sep="\x01", header=None, nrows=1, dtype=str, encoding=encoding)
        return str(frame.iloc[0, 0])[:80]
    except Exception:  # only used to decorate an error message
        return "?"


def _read_failure(path: Path, error: BaseException) -> DataError:
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
    expected = f"{len(names)} {_describe_delimiter(delimiter)}-separated fields ({'|'.join(names)})"
    try:
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
        raise _read_failure(path, error) from None
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


def _lines(path: Path, encoding: str = LATIN1) -> list[str]:
    try:
        return path.read_text(encoding=encoding).splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read: {error}") from None


def _parse_int(path: Path, line: int, field: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DataError(
            f"{path}: line {line}: field {field!r} is not an integer: {text!r}"
        ) from None
    if value < 0:
        raise DataError(f"{path}: line {line}: field {field!r} is negative: {value}")
    return value


# --------------------------------------------------------------------------- MovieLens


def _release_year(text: str) -> int | None:
    """``"01-Jan-1995"`` -> 1995; empty -> None."""
    tail = text.strip()[-4:]
    return int(tail) if tail.isdigit() else None


def _title_year(title: str) -> int | None:
    """``"Toy Story (1995)"`` -> 1995 (the last parenthesised 4-digit year)."""
    text = title.strip()
    if text.endswith(")") and len(text) >= 6 and text[-5:-1].isdigit():
        return int(text[-5:-1])
    return None


def _ml100k_users(path: Path) -> tuple[np.ndarray, EntityFeatures]:
    ids: list[int] = []
    ages: list[int] = []
    genders: list[str | int | None] = []
    occupations: list[str | int | None] = []
    zips: list[str] = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 5:
            raise DataError(
                f"{path}: line {number}: expected 5 '|'-separated fields (id|age|gender|occupation|zip), found {len(fields)}"
            )
        ids.append(_parse_int(path, number, "user id", fields[0]))
        ages.append(_parse_int(path, number, "age", fields[1]))
        genders.append(fields[2] or None)
        occupations.append(fields[3] or None)
        zips.append(fields[4])
    return _user_table(ids, ages, genders, occupations, zips)


def _user_table(
    ids: list[int],
    ages: list[int],
    genders: list[str | int | None],
    occupations: list[str | int | None],
    zips: list[str],
) -> tuple[np.ndarray, EntityFeatures]:
    gender_codes, gender_card = vocabulary_codes(genders)
    occupation_codes, occupation_card = vocabulary_codes(occupations)
    categorical = np.stack(
        [
            gender_codes,
            age_bucket_codes(np.asarray(ages)),
            occupation_codes,
            zip_prefix_codes(zips),
        ],
        axis=1,
    )
    features = EntityFeatures(
        categorical=categorical,
        categorical_names=("gender", "age_bucket", "occupation", "zip_prefix"),
        categorical_cardinalities=(gender_card, 8, occupation_card, ZIP_PREFIX_CARDINALITY),
        multi_hot=np.zeros((len(ids), 0), dtype=np.float32),
    )
    return np.asarray(ids, dtype=np.int64), features


def _item_table(
    ids: list[int], years: list[int | None], genres: np.ndarray
) -> tuple[np.ndarray, EntityFeatures]:
    year_codes, year_card = vocabulary_codes(list(years))
    features = EntityFeatures(
        categorical=year_codes.reshape(-1, 1),
        categorical_names=("release_year",),
        categorical_cardinalities=(year_card,),
        multi_hot=genres.astype(np.float32),
        multi_hot_name="genres",
    )
    return np.asarray(ids, dtype=np.int64), features


def _ml100k_items(path: Path) -> tuple[np.ndarray, EntityFeatures]:
    ids: list[int] = []
    years: list[int | None] = []
    genre_rows: list[list[int]] = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 24:
            raise DataError(
                f"{path}: line {number}: expected 24 '|'-separated fields (id|title|release date|video date|url|19 genre flags), found {len(fields)}"
            )
        ids.append(_parse_int(path, number, "movie id", fields[0]))
        years.append(_release_year(fields[2]))
        genre_rows.append([_parse_int(path, number, "genre flag", f) for f in fields[5:]])
    return _item_table(ids, years, np.asarray(genre_rows, dtype=np.float32).reshape(-1, 19))


def read_ml100k(config: DataConfig, path: Path) -> NormalizedData:
    """MovieLens-100K folder: ``u.data`` (tab), ``u.user`` and ``u.item`` (``|``)."""
    folder = path if path.is_dir() else path.parent
    data_file = path if path.is_file() else folder / "u.data"
    names = ("user", "item", "rating", "timestamp")
    columns = read_integer_columns(data_file, "\t", names, non_negative=("user", "item"))
    return _movielens_data(
        config,
        data_file,
        [columns[name] for name in names],
        (folder / "u.user", _ml100k_users),
        (folder / "u.item", _ml100k_items),
    )


FeatureFile = tuple[Path, Callable[[Path], tuple[np.ndarray, EntityFeatures]]]
"""A feature file and its parser (``raw ids (N,), features``)."""


def _movielens_data(
    config: DataConfig,
    ratings_file: Path,
    user_item_rating_time: list[np.ndarray],
    user_feature_file: FeatureFile,
    item_feature_file: FeatureFile,
) -> NormalizedData:
    """The MovieLens readers' shared tail: normalize ids, then align the optional features."""
    users, items, raw_ratings, raw_times = user_item_rating_time
    user_id, item_id, times, ratings, user_raw, item_raw, dropped = normalize(
        users,
        items,
        raw_times,
        raw_ratings.astype(np.float32),
        duplicates=config.duplicates,
        source=str(ratings_file),
    )
    inputs = [ratings_file]
    user_features = _optional_features(*user_feature_file, user_raw, inputs)
    item_features = _optional_features(*item_feature_file, item_raw, inputs)
    return NormalizedData(
        user_id,
        item_id,
        times,
        ratings,
        True,
        user_raw,
        item_raw,
        user_features,
        item_features,
        tuple(inputs),
        dropped,
    )


def _optional_features(
    path: Path,
    parse: Callable[[Path], tuple[np.ndarray, EntityFeatures]],
    raw_ids: np.ndarray,
    inputs: list[Path],
) -> EntityFeatures:
    if not path.is_file():
        logger.warning("%s not found: ids only for these entities", path)
        return EntityFeatures.empty(len(raw_ids))
    inputs.append(path)
    feature_ids, features = parse(path)
    return align_features(feature_ids, features, raw_ids)


def _ml1m_users(path: Path) -> tuple[np.ndarray, EntityFeatures]:
    ids: list[int] = []
    ages: list[int] = []
    genders: list[str | int | None] = []
    occupations: list[str | int | None] = []
    zips: list[str] = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 5:
            raise DataError(
                f"{path}: line {number}: expected 5 '::'-separated fields (UserID::Gender::Age::Occupation::Zip-code), found {len(fields)}"
            )
        ids.append(_parse_int(path, number, "UserID", fields[0]))
        genders.append(fields[1] or None)
        ages.append(_parse_int(path, number, "Age", fields[2]))
        occupations.append(_parse_int(path, number, "Occupation", fields[3]))
        zips.append(fields[4])
    return _user_table(ids, ages, genders, occupations, zips)


def _ml1m_items(path: Path) -> tuple[np.ndarray, EntityFeatures]:
    ids: list[int] = []
    years: list[int | None] = []
    genre_lists: list[list[str]] = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3:
            raise DataError(
                f"{path}: line {number}: expected 3 '::'-separated fields (MovieID::Title::Genres), found {len(fields)}"
            )
        ids.append(_parse_int(path, number, "MovieID", fields[0]))
        years.append(_title_year(fields[1]))
        genre_lists.append(
            [g for g in fields[2].strip().split("|") if g and g != "(no genres listed)"]
        )
    vocabulary = sorted({g for genres in genre_lists for g in genres})
    column = {g: j for j, g in enumerate(vocabulary)}
    genres = np.zeros((len(ids), len(vocabulary)), dtype=np.float32)
    for i, names in enumerate(genre_lists):
        genres[i, [column[g] for g in names]] = 1.0
    return _item_table(ids, years, genres)


def find_ratings_file(path: Path) -> Path:
    """A ratings file, or a folder holding ``ratings.dat``, ``ratings.dat.gz`` or a single
    ``ratings*.dat[.gz]`` (e.g. ``ratings_subset_users1-2999.dat.gz``)."""
    if path.is_file():
        return path
    for name in ("ratings.dat", "ratings.dat.gz"):
        if (path / name).is_file():
            return path / name
    candidates = sorted(
        p for p in path.glob("ratings*.dat*") if p.name.endswith((".dat", ".dat.gz"))
    )
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(f"{path}: no ratings.dat, ratings.dat.gz or ratings*.dat[.gz] file found")
    raise DataError(
        f"{path}: several ratings files, name one in data.path: {[p.name for p in candidates]}"
    )


def read_ml1m(config: DataConfig, path: Path) -> NormalizedData:
    """MovieLens-1M / 10M: ``ratings.dat[.gz]`` (``::``), ``users.dat`` (absent in 10M:
    ids only), ``movies.dat`` (ISO-8859-1)."""
    ratings_file = find_ratings_file(path)
    folder = ratings_file.parent
    names = ("UserID", "MovieID", "Rating", "Timestamp")
    columns = read_integer_columns(ratings_file, "::", names, non_negative=("UserID", "MovieID"))
    return _movielens_data(
        config,
        ratings_file,
        [columns[name] for name in names],
        (folder / "users.dat", _ml1m_users),
        (folder / "movies.dat", _ml1m_items),
    )


# --------------------------------------------------------------------------- Epinions


def _load_epinions_matrix(path: Path) -> np.ndarray:
    import scipy.io  # local: only this reader needs it

    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if m.endswith("rating.mat")]
                if not members:
                    raise DataError(
                        f"{path}: no rating.mat inside (members: {archive.namelist()[:10]})"
                    )
                payload = io.BytesIO(archive.read(members[0]))
        else:
            payload = io.BytesIO(path.read_bytes())
        content = scipy.io.loadmat(payload)
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, zlib.error) as error:
        raise DataError(f"{path}: cannot be read as Epinions rating.mat: {error}") from None
    if "rating" not in content:
        raise DataError(
            f"{path}: rating.mat has no 'rating' variable (found {sorted(k for k in content if not k.startswith('__'))})"
        )
    matrix = np.asarray(content["rating"])
    if matrix.ndim != 2 or matrix.shape[1] < 4:
        raise DataError(
            f"{path}: 'rating' must be (N, 4+) userid, productid, categoryid, rating; got shape {matrix.shape}"
        )
    return matrix.astype(np.int64)


def read_epinions(config: DataConfig, path: Path) -> NormalizedData:
    """Epinions (Tang et al.): ``epinions.zip`` holding ``epinions/rating.mat`` (or the .mat).

    No timestamps: row order is the time order. The item feature is its category (of the
    item's first row).
    """
    source = path
    if path.is_dir():
        for name in ("epinions.zip", "rating.mat", "epinions/rating.mat"):
            if (path / name).is_file():
                source = path / name
                break
        else:
            raise DataError(f"{path}: no epinions.zip or rating.mat found")
    matrix = _load_epinions_matrix(source)
    if len(matrix) == 0:
        raise DataError(f"{source}: empty dataset (no interactions)")
    for column, name in ((0, "userid"), (1, "productid"), (2, "categoryid")):
        negative = np.flatnonzero(matrix[:, column] < 0)
        if len(negative):
            raise DataError(
                f"{source}: rating row {negative[0] + 1}: {name} is negative: {matrix[negative[0], column]}"
            )
    user_id, item_id, times, ratings, user_raw, item_raw, dropped = normalize(
        matrix[:, 0],
        matrix[:, 1],
        None,
        matrix[:, 3].astype(np.float32),
        duplicates=config.duplicates,
        source=str(source),
        row_label=lambda row: f"rating row {row + 1}",
    )
    # Category per item: the first row's (an item practically never changes category).
    products, first_rows = np.unique(matrix[:, 1], return_index=True)
    category_codes, category_card = vocabulary_codes(matrix[first_rows, 2].tolist())
    item_table = EntityFeatures(
        categorical=category_codes.reshape(-1, 1),
        categorical_names=("category",),
        categorical_cardinalities=(category_card,),
        multi_hot=np.zeros((len(products), 0), dtype=np.float32),
    )
    item_features = align_features(products, item_table, item_raw)
    return NormalizedData(
        user_id,
        item_id,
        times,
        ratings,
        False,
        user_raw,
        item_raw,
        EntityFeatures.empty(len(user_raw)),
        item_features,
        (source,),
        dropped,
    )


# --------------------------------------------------------------------------- generic


def _generic_frame(config: DataConfig, path: Path) -> pd.DataFrame:
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
            f"{path}: not a {_describe_delimiter(delimiter)}-delimited file: {error}"
        ) from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise _read_failure(path, error) from None
    if not columns.has_header:
        frame.columns = [str(c) for c in frame.columns]
    return frame


def read_generic(config: DataConfig, path: Path) -> NormalizedData:
    """Any CSV/TSV/Parquet interaction file mapped by ``data.generic`` (raw ids may be strings;
    with ``has_header: false`` columns are named "0", "1", ...). No features: ids only."""
    mapping = config.generic
    frame = _generic_frame(config, path)
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
        return f"line {row + 1 + header_lines}" if path.suffix != ".parquet" else f"row {row + 1}"

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
        timestamp = _generic_numbers(
            path, frame[mapping.timestamp], mapping.timestamp, label, times=True
        )
    rating = None
    if mapping.rating is not None:
        rating = _generic_numbers(path, frame[mapping.rating], mapping.rating, label, times=False)
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


def _generic_numbers(
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


# --------------------------------------------------------------------------- dispatch

Reader = Callable[[DataConfig, Path], NormalizedData]

# Mirrors config.DatasetName (minus "synthetic", which is generated, not read).
READERS: dict[str, Reader] = {
    "ml-100k": read_ml100k,
    "ml-1m": read_ml1m,
    "ml-10m": read_ml1m,
    "epinions": read_epinions,
    "generic": read_generic,
}


def read_dataset(config: DataConfig) -> NormalizedData:
    """Reads a named or generic dataset; DataError on an unknown name or bad input."""
    reader = READERS.get(config.dataset)
    if reader is None:
        raise DataError(
            f"data.dataset: unknown dataset {config.dataset!r} (known: {sorted([*READERS, 'synthetic'])})"
        )
    return reader(config, resolve_input_path(config))


def list_input_files(config: DataConfig, path: Path) -> list[Path]:
    """The raw files a reader will read (their checksums decide whether a prepared folder
    can be reused), without reading them."""
    if config.dataset == "ml-100k":
        folder = path if path.is_dir() else path.parent
        main = path if path.is_file() else folder / "u.data"
        return [main, *[p for p in (folder / "u.user", folder / "u.item") if p.is_file()]]
    if config.dataset in ("ml-1m", "ml-10m"):
        ratings = find_ratings_file(path)
        extras = (ratings.parent / "users.dat", ratings.parent / "movies.dat")
        return [ratings, *[p for p in extras if p.is_file()]]
    if config.dataset == "epinions" and path.is_dir():
        for name in ("epinions.zip", "rating.mat", "epinions/rating.mat"):
            if (path / name).is_file():
                return [path / name]
        raise DataError(f"{path}: no epinions.zip or rating.mat found")
    return [path]
