"""The closed name sets of the configuration, one ``Literal`` per plug-in axis.

Each is mirrored by exactly one registry dict (``readers.DATASETS``, ``methods.METHODS``,
``models.embeddings.INTEGRATION_TECHNIQUES``...), and a test checks that the two agree.
They live here, below ``config`` and ``methods``, so both can use them without importing
each other; ``cadc_ray.config`` re-exports every name.
"""

from __future__ import annotations

from typing import Literal

DatasetName = Literal["synthetic", "ml-100k", "ml-1m", "ml-10m", "epinions", "generic"]
MethodName = Literal[
    "cadc", "cadc_mlp", "cadc_als", "random", "over_sampling", "under_sampling", "logq", "gs"
]
IntegrationName = Literal["auto", "init_frz", "init", "hybrid", "linear", "mlp", "residual", "none"]
PretrainerName = Literal["mf", "mf_mlp", "als"]
NegativeSamplerName = Literal["uniform", "popularity"]
AlternationName = Literal["epoch", "batch", "none"]
DuplicateRule = Literal["keep_last", "keep_first", "error"]
IdTableKind = Literal["full", "hashing", "qr", "double_hash", "robe", "learned_hash"]
QROperation = Literal["mult", "add", "concat"]
TableCombine = Literal["sum", "concat"]
