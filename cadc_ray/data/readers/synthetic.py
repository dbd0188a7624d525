"""The synthetic dataset's registry entry: it is generated, not read.

``cadc_ray.data.prepare`` writes it shard by shard with
:func:`cadc_ray.data.synthetic.generate_synthetic` (it never fits in one normalized frame at
10^8 rows); this entry exists so that ``readers.DATASETS`` names every ``DatasetName``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cadc_ray.config import DataConfig
from cadc_ray.data.errors import DataError
from cadc_ray.data.readers.common import NormalizedData


@dataclass(frozen=True)
class SyntheticSource:
    """No raw files, no folder; :meth:`read` is an error (prepare generates the shards)."""

    folder: str | None = None
    generated: bool = True

    def input_files(self, config: DataConfig, path: Path) -> list[Path]:
        return []

    def read(self, config: DataConfig, path: Path) -> NormalizedData:
        raise DataError(
            "data.dataset: 'synthetic' is generated (cadc_ray.data.synthetic.generate_synthetic), "
            "not read from files"
        )


SYNTHETIC_SOURCE = SyntheticSource()
