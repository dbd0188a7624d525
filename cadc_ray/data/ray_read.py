"""Ray Data reads of the project's Parquet folders: the one place for the reader's settings.

The split, the sample and the training stream all read through :func:`read_parquet`.

Ray Data 2.60 routes ``read_parquet`` through its DataSourceV2 reader by default. That
reader lists the folder anew at every execution, reading the footers on 32 new
``FooterReader`` actors: on the 2-core machine, 1.5 to 2.9 s before the first row, for a
one-file folder, once per execution. A stream executes once per epoch, so every epoch paid
it: an epoch of 700,000 rows took 1.5 s to its first batch and 0.05 s after it. The V1
reader (``DataContext.use_datasource_v2 = False``) reads the footers once, when the dataset
is created, and then starts an epoch in 0.1 s (docs/ray_notes.md, "Parquet reader").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ray.data

USE_DATASOURCE_V2 = False
"""Which Ray Data Parquet reader our reads use (``DataContext.use_datasource_v2``)."""


@contextmanager
def data_context(**settings: Any) -> Iterator[None]:
    """Sets fields of the current ``DataContext`` for the block, then restores them.

    A dataset keeps a copy of the context it was created under, so settings made here
    for a read stay with that dataset: the driver's other Ray Data work keeps its own.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    for name in settings:
        if not hasattr(context, name):
            raise AttributeError(f"ray.data.DataContext has no setting {name!r}")
    saved = {name: getattr(context, name) for name in settings}
    for name, value in settings.items():
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)


def read_parquet(
    path: str | Path,
    *,
    columns: Sequence[str] | None = None,
    override_num_blocks: int | None = None,
    target_block_bytes: int | None = None,
    file_order_seed: int | None = None,
) -> ray.data.Dataset:
    """The lazy Ray Dataset of the Parquet file or folder ``path``, read by the V1 reader.

    ``target_block_bytes`` sets Ray Data's block size target (``target_max_block_size``)
    for this dataset only; ``None`` keeps the current one. ``file_order_seed``: the files
    are read in a seeded random order, a new one at every execution (the same sequence of
    orders for the same seed); ``None`` reads them in the folder's order.
    """
    import ray.data

    settings: dict[str, Any] = {"use_datasource_v2": USE_DATASOURCE_V2}
    if target_block_bytes is not None:
        settings["target_max_block_size"] = target_block_bytes
    shuffle = (
        None
        if file_order_seed is None
        else ray.data.FileShuffleConfig(seed=file_order_seed, reseed_after_execution=True)
    )
    with data_context(**settings):
        return ray.data.read_parquet(
            str(path),
            columns=list(columns) if columns is not None else None,
            override_num_blocks=override_num_blocks,
            shuffle=shuffle,
        )
