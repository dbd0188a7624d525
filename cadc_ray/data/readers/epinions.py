"""Epinions (Tang et al.): ``epinions.zip`` holding ``epinions/rating.mat`` (or the .mat).

No timestamps: row order is the time order. The item feature is its category (of the
item's first row); users get ids only.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cadc_ray.config import DataConfig
from cadc_ray.data.errors import DataError
from cadc_ray.data.features import EntityFeatures, align_features, vocabulary_codes
from cadc_ray.data.readers.common import NormalizedData, normalize

# Looked for, in this order, when data.path is a folder.
CANDIDATE_FILES = ("epinions.zip", "rating.mat", "epinions/rating.mat")


def find_source(path: Path) -> Path:
    """``path`` when it is a file, else the first of CANDIDATE_FILES inside it."""
    if not path.is_dir():
        return path
    for name in CANDIDATE_FILES:
        if (path / name).is_file():
            return path / name
    raise DataError(f"{path}: no epinions.zip or rating.mat found")


def load_rating_matrix(path: Path) -> np.ndarray:
    """The ``rating`` variable of rating.mat: int64 ``(N, 4+)`` rows of userid, productid,
    categoryid, rating (``path`` is the .mat or a zip holding it)."""
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


@dataclass(frozen=True)
class EpinionsSource:
    """Epinions as a ``readers.DATASETS`` entry (see ``common.DatasetSource``)."""

    folder: str = "epinions"
    generated: bool = False

    def input_files(self, config: DataConfig, path: Path) -> list[Path]:
        return [find_source(path)]

    def read(self, config: DataConfig, path: Path) -> NormalizedData:
        source = find_source(path)
        matrix = load_rating_matrix(source)
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


EPINIONS_SOURCE = EpinionsSource()
