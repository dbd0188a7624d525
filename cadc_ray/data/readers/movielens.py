"""MovieLens 100K / 1M / 10M: one reader driven by a table of each release's file layout.

The releases differ only in file names, delimiters, field order and how an item's year and
genres are written; :class:`MovieLensLayout` records exactly those differences and
:class:`MovieLensSource` reads any of them:

============  ===========================  ======================  =========================
release       ratings                      users                   items
============  ===========================  ======================  =========================
ml-100k       ``u.data`` (tab)             ``u.user`` (``|``)      ``u.item`` (``|``, 19 genre
                                                                   flags, release date)
ml-1m, 10m    ``ratings*.dat[.gz]`` (::)   ``users.dat`` (::)      ``movies.dat`` (::, genre
                                           (absent in 10M)         names, year in the title)
============  ===========================  ======================  =========================

A missing users/items file is not an error: those entities get ids only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cadc_ray.config import DataConfig
from cadc_ray.data.errors import DataError
from cadc_ray.data.features import (
    ZIP_PREFIX_CARDINALITY,
    EntityFeatures,
    age_bucket_codes,
    align_features,
    vocabulary_codes,
    zip_prefix_codes,
)
from cadc_ray.data.readers.common import (
    NormalizedData,
    normalize,
    parse_non_negative_int,
    read_integer_columns,
    read_lines,
)

logger = logging.getLogger(__name__)

AGE_BUCKET_CARDINALITY = 8  # age_bucket_codes: 0 unknown + ML-1M's 7 age groups


# --------------------------------------------------------------------------- field parsers


def release_year(text: str) -> int | None:
    """``"01-Jan-1995"`` -> 1995; empty -> None."""
    tail = text.strip()[-4:]
    return int(tail) if tail.isdigit() else None


def title_year(title: str) -> int | None:
    """``"Toy Story (1995)"`` -> 1995 (the last parenthesised 4-digit year)."""
    text = title.strip()
    if text.endswith(")") and len(text) >= 6 and text[-5:-1].isdigit():
        return int(text[-5:-1])
    return None


@dataclass(frozen=True)
class Field:
    """A column of a feature file: its position, and the name an error message gives it when
    the column must be a non-negative integer (None: kept as text, empty -> None)."""

    index: int
    integer_name: str | None = None

    def parse(self, path: Path, line: int, fields: list[str]) -> int | str | None:
        text = fields[self.index]
        if self.integer_name is None:
            return text or None
        return parse_non_negative_int(path, line, self.integer_name, text)


@dataclass(frozen=True)
class GenreFlags:
    """Genres as 0/1 flag columns ``fields[first:]`` (ML-100K): multi-hot ``(N, count)``."""

    first: int
    count: int

    def parse(self, path: Path, line: int, fields: list[str]) -> list[int]:
        return [parse_non_negative_int(path, line, "genre flag", f) for f in fields[self.first :]]

    def matrix(self, rows: Sequence[Sequence[int | str]]) -> np.ndarray:
        return np.asarray(rows, dtype=np.float32).reshape(-1, self.count)


@dataclass(frozen=True)
class GenreNames:
    """Genres as a ``|``-joined name list in one column (ML-1M/10M): multi-hot over the sorted
    vocabulary of names seen, ``(N, num_genres)``."""

    index: int

    def parse(self, path: Path, line: int, fields: list[str]) -> list[str]:
        names = fields[self.index].strip().split("|")
        return [g for g in names if g and g != "(no genres listed)"]

    def matrix(self, rows: Sequence[Sequence[int | str]]) -> np.ndarray:
        vocabulary = sorted({str(g) for genres in rows for g in genres})
        column = {g: j for j, g in enumerate(vocabulary)}
        genres = np.zeros((len(rows), len(vocabulary)), dtype=np.float32)
        for i, names in enumerate(rows):
            genres[i, [column[str(g)] for g in names]] = 1.0
        return genres


@dataclass(frozen=True)
class UserFile:
    """``<id> <gender> <age> <occupation> <zip>`` in some order (``description`` names them
    as the error message shows them)."""

    name: str
    delimiter: str
    description: str
    width: int
    id: Field
    age: Field
    gender: Field
    occupation: Field
    zip: int

    def parse(self, path: Path) -> tuple[np.ndarray, EntityFeatures]:
        """Raw user ids ``(U,)`` and their features (gender, age bucket, occupation, zip)."""
        columns: dict[str, list[int | str | None]] = {
            "id": [],
            "age": [],
            "gender": [],
            "occupation": [],
        }
        # Parsed in column order, so a line with several bad fields reports the first.
        roles = (
            ("id", self.id),
            ("age", self.age),
            ("gender", self.gender),
            ("occupation", self.occupation),
        )
        in_order = sorted(roles, key=_position)
        zips: list[str] = []
        for number, line in enumerate(read_lines(path), start=1):
            if not line.strip():
                continue
            fields = line.split(self.delimiter)
            if len(fields) != self.width:
                raise DataError(
                    f"{path}: line {number}: expected {self.width} {_quoted(self.delimiter)}-separated fields ({self.description}), found {len(fields)}"
                )
            for role, column in in_order:
                columns[role].append(column.parse(path, number, fields))
            zips.append(fields[self.zip])
        gender_codes, gender_card = vocabulary_codes(columns["gender"])
        occupation_codes, occupation_card = vocabulary_codes(columns["occupation"])
        categorical = np.stack(
            [
                gender_codes,
                age_bucket_codes(np.asarray(columns["age"])),
                occupation_codes,
                zip_prefix_codes(zips),
            ],
            axis=1,
        )
        features = EntityFeatures(
            categorical=categorical,
            categorical_names=("gender", "age_bucket", "occupation", "zip_prefix"),
            categorical_cardinalities=(
                gender_card,
                AGE_BUCKET_CARDINALITY,
                occupation_card,
                ZIP_PREFIX_CARDINALITY,
            ),
            multi_hot=np.zeros((len(columns["id"]), 0), dtype=np.float32),
        )
        return np.asarray(columns["id"], dtype=np.int64), features


@dataclass(frozen=True)
class ItemFile:
    """``<id> ... <year source> ... <genres>``: the release year (one categorical feature)
    and the genres (multi-hot)."""

    name: str
    delimiter: str
    description: str
    width: int
    id: Field
    year: int
    year_of: Callable[[str], int | None]
    genres: GenreFlags | GenreNames

    def parse(self, path: Path) -> tuple[np.ndarray, EntityFeatures]:
        """Raw item ids ``(I,)`` and their features (release year; genres multi-hot)."""
        ids: list[int | str | None] = []
        years: list[int | None] = []
        genre_rows: list[Sequence[int | str]] = []  # flags or names, one entry per item
        for number, line in enumerate(read_lines(path), start=1):
            if not line.strip():
                continue
            fields = line.split(self.delimiter)
            if len(fields) != self.width:
                raise DataError(
                    f"{path}: line {number}: expected {self.width} {_quoted(self.delimiter)}-separated fields ({self.description}), found {len(fields)}"
                )
            ids.append(self.id.parse(path, number, fields))
            years.append(self.year_of(fields[self.year]))
            genre_rows.append(self.genres.parse(path, number, fields))
        genres = self.genres.matrix(genre_rows)
        year_codes, year_card = vocabulary_codes(list(years))
        features = EntityFeatures(
            categorical=year_codes.reshape(-1, 1),
            categorical_names=("release_year",),
            categorical_cardinalities=(year_card,),
            multi_hot=genres.astype(np.float32),
            multi_hot_name="genres",
        )
        return np.asarray(ids, dtype=np.int64), features


def _position(entry: tuple[str, Field]) -> int:
    return entry[1].index


def _quoted(delimiter: str) -> str:
    return f"'{delimiter}'"


# --------------------------------------------------------------------------- ratings files


def ml100k_ratings_file(path: Path) -> Path:
    """``path`` itself when it is a file, else ``<path>/u.data``."""
    folder = path if path.is_dir() else path.parent
    return path if path.is_file() else folder / "u.data"


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


# --------------------------------------------------------------------------- the layouts


@dataclass(frozen=True)
class MovieLensLayout:
    """One MovieLens release's files; the users and items files sit beside the ratings."""

    ratings_file: Callable[[Path], Path]
    ratings_delimiter: str
    # user, item, rating, timestamp: the names error messages give the ratings columns
    ratings_columns: tuple[str, str, str, str]
    users: UserFile
    items: ItemFile


ML_100K = MovieLensLayout(
    ratings_file=ml100k_ratings_file,
    ratings_delimiter="\t",
    ratings_columns=("user", "item", "rating", "timestamp"),
    users=UserFile(
        name="u.user",
        delimiter="|",
        description="id|age|gender|occupation|zip",
        width=5,
        id=Field(0, "user id"),
        age=Field(1, "age"),
        gender=Field(2),
        occupation=Field(3),
        zip=4,
    ),
    items=ItemFile(
        name="u.item",
        delimiter="|",
        description="id|title|release date|video date|url|19 genre flags",
        width=24,
        id=Field(0, "movie id"),
        year=2,
        year_of=release_year,
        genres=GenreFlags(first=5, count=19),
    ),
)

ML_1M = MovieLensLayout(
    ratings_file=find_ratings_file,
    ratings_delimiter="::",
    ratings_columns=("UserID", "MovieID", "Rating", "Timestamp"),
    users=UserFile(
        name="users.dat",
        delimiter="::",
        description="UserID::Gender::Age::Occupation::Zip-code",
        width=5,
        id=Field(0, "UserID"),
        gender=Field(1),
        age=Field(2, "Age"),
        occupation=Field(3, "Occupation"),
        zip=4,
    ),
    items=ItemFile(
        name="movies.dat",
        delimiter="::",
        description="MovieID::Title::Genres",
        width=3,
        id=Field(0, "MovieID"),
        year=1,
        year_of=title_year,
        genres=GenreNames(index=2),
    ),
)


@dataclass(frozen=True)
class MovieLensSource:
    """A MovieLens release as a ``readers.DATASETS`` entry (see ``common.DatasetSource``)."""

    folder: str
    layout: MovieLensLayout
    generated: bool = False

    def input_files(self, config: DataConfig, path: Path) -> list[Path]:
        ratings = self.layout.ratings_file(path)
        extras = (ratings.parent / self.layout.users.name, ratings.parent / self.layout.items.name)
        return [ratings, *[p for p in extras if p.is_file()]]

    def read(self, config: DataConfig, path: Path) -> NormalizedData:
        layout = self.layout
        ratings_file = layout.ratings_file(path)
        names = layout.ratings_columns
        columns = read_integer_columns(
            ratings_file, layout.ratings_delimiter, names, non_negative=names[:2]
        )
        users, items, raw_ratings, raw_times = (columns[name] for name in names)
        user_id, item_id, times, ratings, user_raw, item_raw, dropped = normalize(
            users,
            items,
            raw_times,
            raw_ratings.astype(np.float32),
            duplicates=config.duplicates,
            source=str(ratings_file),
        )
        inputs = [ratings_file]
        folder = ratings_file.parent
        user_features = _optional_features(
            folder / layout.users.name, layout.users, user_raw, inputs
        )
        item_features = _optional_features(
            folder / layout.items.name, layout.items, item_raw, inputs
        )
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
    path: Path, file: UserFile | ItemFile, raw_ids: np.ndarray, inputs: list[Path]
) -> EntityFeatures:
    """``file``'s features aligned to ``raw_ids`` (ids only when the file is absent); appends
    the path to ``inputs`` when it is read."""
    if not path.is_file():
        logger.warning("%s not found: ids only for these entities", path)
        return EntityFeatures.empty(len(raw_ids))
    inputs.append(path)
    feature_ids, features = file.parse(path)
    return align_features(feature_ids, features, raw_ids)


ML_100K_SOURCE = MovieLensSource(folder="ml-100k", layout=ML_100K)
ML_1M_SOURCE = MovieLensSource(folder="ml-1m", layout=ML_1M)
# 10M has the 1M layout without users.dat (its users get ids only).
ML_10M_SOURCE = MovieLensSource(folder="ml-10m", layout=ML_1M)
