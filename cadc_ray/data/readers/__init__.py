"""Readers of the raw datasets into one normalized in-memory form (:class:`NormalizedData`).

One module per dataset family (``movielens``, ``epinions``, ``generic``; ``synthetic`` is
generated, not read) and one registry entry per dataset in :data:`DATASETS`, which mirrors
``config.DatasetName`` (a test checks they agree). Each entry knows its folder under
``$CADC_DATA_DIR``, the raw files it reads (``input_files``) and how to read them
(``read``); see ``common.DatasetSource``. What the normalized form guarantees (contiguous
ids, kept row order, the duplicate rule, DataError naming file/line/value) is in
``common``'s docstring.
"""

from __future__ import annotations

import os
from pathlib import Path

from cadc_ray.config import DATA_DIR_ENV, DataConfig
from cadc_ray.data.errors import DataError
from cadc_ray.data.readers.common import DatasetSource, NormalizedData
from cadc_ray.data.readers.epinions import EPINIONS_SOURCE
from cadc_ray.data.readers.generic import GENERIC_SOURCE
from cadc_ray.data.readers.movielens import ML_1M_SOURCE, ML_10M_SOURCE, ML_100K_SOURCE
from cadc_ray.data.readers.synthetic import SYNTHETIC_SOURCE

# Mirrors config.DatasetName.
DATASETS: dict[str, DatasetSource] = {
    "synthetic": SYNTHETIC_SOURCE,
    "ml-100k": ML_100K_SOURCE,
    "ml-1m": ML_1M_SOURCE,
    "ml-10m": ML_10M_SOURCE,
    "epinions": EPINIONS_SOURCE,
    "generic": GENERIC_SOURCE,
}

__all__ = [
    "DATASETS",
    "DatasetSource",
    "NormalizedData",
    "list_input_files",
    "read_dataset",
    "resolve_input_path",
]


def _source(config: DataConfig) -> DatasetSource:
    source = DATASETS.get(config.dataset)
    if source is None:
        raise DataError(
            f"data.dataset: unknown dataset {config.dataset!r} (known: {sorted(DATASETS)})"
        )
    return source


def resolve_input_path(config: DataConfig) -> Path:
    """``DataConfig.path``, else ``$CADC_DATA_DIR/<dataset folder>`` for named datasets."""
    known = DATASETS.get(config.dataset)
    folder = None if known is None else known.folder
    if config.path:
        path = Path(config.path).expanduser()
    elif folder is not None:
        root = os.environ.get(DATA_DIR_ENV)
        if not root:
            raise DataError(
                f"data.path: not set for dataset {config.dataset!r} and ${DATA_DIR_ENV} is "
                f"not set either (point one of them at the raw files)"
            )
        path = Path(root) / folder
    else:
        raise DataError(f"data.path: required for dataset {config.dataset!r}")
    if not path.exists():
        raise DataError(f"{path}: not found (data.path for dataset {config.dataset!r})")
    return path


def read_dataset(config: DataConfig) -> NormalizedData:
    """Reads a named or generic dataset; DataError on an unknown name or bad input."""
    source = _source(config)
    if source.generated:
        return source.read(config, Path())  # raises: generated datasets have no reader
    return source.read(config, resolve_input_path(config))


def list_input_files(config: DataConfig, path: Path) -> list[Path]:
    """The raw files :func:`read_dataset` will read from ``path`` (see
    :func:`resolve_input_path`), without reading them: their checksums decide whether a
    prepared folder can be reused."""
    return _source(config).input_files(config, path)
