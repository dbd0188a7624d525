"""How Ray Train hands the training dataset to its workers.

Train's default ``DataConfig`` splits with ``streaming_split(n, equal=True)``, which
drops up to ``n - 1`` rows so that every worker gets the same count. The workers here
all-gather their shards into one identical array (``runtime.worker.pull_shard``), so
equal shard sizes buy nothing and a dropped row would make a 2-worker run train on
different data than a 1-worker run. ``WholeRowsDataConfig`` splits with ``equal=False``:
every row reaches exactly one worker.

Imported lazily (it imports Ray Train): ``runtime.trainer`` builds it per run.
"""

from __future__ import annotations

from typing import Any

from ray.train import DataConfig


class WholeRowsDataConfig(DataConfig):
    """``DataConfig`` whose split keeps every row (``streaming_split(equal=False)``)."""

    def configure(
        self,
        datasets: dict[str, Any],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        locality_hints = worker_node_ids if self._enable_shard_locality else None
        for name, dataset in datasets.items():
            if dataset.name is None:
                dataset.set_name(name)
            shard_source = dataset.copy(dataset)
            shard_source.context.execution_options = self._resolve_execution_options(name)
            splits = shard_source.streaming_split(
                world_size, equal=False, locality_hints=locality_hints
            )
            for rank, split in enumerate(splits):
                output[rank][name] = split
        return output
