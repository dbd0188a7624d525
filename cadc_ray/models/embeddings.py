"""Id embeddings and the six integration techniques of CADC (METHOD 1.3, paper Table 2).

The contract every id embedding obeys (and embedding-table compression modules will obey
later): an ``nn.Module`` with ``forward(ids: LongTensor (B,)) -> Tensor (B, D)`` and an
``embedding_dim: int`` attribute. Models receive such modules (composition), so a hashed,
QR or ROBE table drops in without touching the towers.

Frozen pretrained tables are *buffers* named ``frozen_weight``, never parameters: they get
no gradient and no optimizer can hold state for them, whichever parameter list it is built
over. They wrap the (read-only, zero-copy) numpy array from the Ray object store; nothing
may write into them in place (``training.data_parallel.DataParallel`` never sends buffers).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cadc_ray.config import IntegrationName

logger = logging.getLogger(__name__)

FROZEN_TABLE_BUFFER = "frozen_weight"
"""Name of the buffer that holds a frozen pretrained table in every module below."""

_INIT_STD = 0.1
"""Std of freshly initialised id rows; MF rows in this range make Init and None comparable."""


@runtime_checkable
class IdEmbedding(Protocol):
    """What a tower needs from an id embedding (plain, pretrained or compressed)."""

    embedding_dim: int

    def __call__(self, ids: torch.Tensor) -> torch.Tensor: ...


def pretrained_tensor(array: np.ndarray) -> torch.Tensor:
    """Wraps a float32 numpy table without copying (it may be a read-only object-store array).

    torch warns that a read-only array gives a tensor it cannot protect; the callers here
    only read it (frozen buffers), or ``.clone()`` it first (trainable copies).
    """
    if array.dtype != np.float32:
        raise ValueError(f"pretrained table must be float32, got {array.dtype}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _check_table(pretrained: torch.Tensor, num_ids: int, technique: str) -> None:
    if pretrained.ndim != 2 or pretrained.shape[0] != num_ids:
        raise ValueError(
            f"integration {technique!r}: pretrained table must have shape ({num_ids}, width), "
            f"got {tuple(pretrained.shape)}"
        )
    if pretrained.dtype != torch.float32:
        raise ValueError(
            f"integration {technique!r}: pretrained table must be float32, got {pretrained.dtype}"
        )


class TrainableIdEmbedding(nn.Module):
    """A plain trainable table (``none``), optionally initialised from MF rows (``init``)."""

    def __init__(self, num_ids: int, embedding_dim: int, initial: torch.Tensor | None = None):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.table = nn.Embedding(num_ids, embedding_dim)
        with torch.no_grad():
            if initial is None:
                self.table.weight.normal_(0.0, _INIT_STD)
            else:
                # A copy: the source may be a read-only object-store array shared by trials.
                self.table.weight.copy_(initial)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) int64 -> (B, D)."""
        return self.table(ids)


class FrozenIdEmbedding(nn.Module):
    """``init_frz``: the MF rows themselves (bias element included), no gradient, no state."""

    frozen_weight: torch.Tensor

    def __init__(self, pretrained: torch.Tensor):
        super().__init__()
        self.embedding_dim = int(pretrained.shape[1])
        # Non-persistent: checkpoints stay small; the tables come back from the pretrainer.
        self.register_buffer(FROZEN_TABLE_BUFFER, pretrained, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) int64 -> (B, d+1)."""
        return F.embedding(ids, self.frozen_weight)


FROZEN_ROW_MAPS = ("raw", "standardized", "whitened")
"""``model.frozen_rows``: what the towers of ``init_frz`` / ``residual`` read of the rows."""


def frozen_row_map(
    table: torch.Tensor, kind: str, max_rows: int = 200_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed affine map ``x -> (x - mean) @ transform`` fitted on a frozen table's rows.

    ``standardized``: every column to mean 0 and variance 1 (``transform`` diagonal).
    ``whitened``: ZCA, ``transform = Cov^(-1/2)``: mean 0, identity covariance, the
    columns as close to the originals as whitening allows. A column that is constant (the
    ALS rows' zero bias column) stays 0. At most ``max_rows`` evenly spaced rows are used.
    Returns (mean (w,), transform (w, w)) float32.
    """
    if kind not in ("standardized", "whitened"):
        raise ValueError(f"frozen row map must be standardized or whitened, got {kind!r}")
    step = max(1, table.shape[0] // max_rows)
    rows = table[::step].to(torch.float64)
    mean = rows.mean(dim=0)
    centered = rows - mean
    if kind == "standardized":
        std = centered.pow(2).mean(dim=0).sqrt()
        scale = torch.where(std > 1e-12, 1.0 / std.clamp(min=1e-12), torch.zeros_like(std))
        transform = torch.diag(scale)
    else:
        covariance = centered.T @ centered / max(rows.shape[0] - 1, 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        floor = 1e-9 * float(eigenvalues.max().clamp(min=1e-30))
        # Directions without variance (a constant column) map to 0 instead of blowing up.
        inverse_root = torch.where(
            eigenvalues > floor, eigenvalues.clamp(min=floor).rsqrt(), torch.zeros_like(eigenvalues)
        )
        transform = eigenvectors @ torch.diag(inverse_root) @ eigenvectors.T
    return mean.to(torch.float32), transform.to(torch.float32)


class MappedFrozenIdEmbedding(FrozenIdEmbedding):
    """Frozen rows read through a fixed affine map (``model.frozen_rows``).

    The map is fitted once on the table (``frozen_row_map``) and never trains: an affine
    map the towers' first ``Linear`` could learn, given to it so that every input column
    starts on the same scale. ``frozen_weight`` stays the teacher's own rows (``residual``'s
    teacher reads them, not this module's output).
    """

    row_mean: torch.Tensor
    row_transform: torch.Tensor

    def __init__(self, pretrained: torch.Tensor, kind: str):
        super().__init__(pretrained)
        mean, transform = frozen_row_map(pretrained, kind)
        self.kind = kind
        # Recomputed from the table on every build: not stored in checkpoints.
        self.register_buffer("row_mean", mean, persistent=False)
        self.register_buffer("row_transform", transform, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) int64 -> (B, d+1) mapped rows."""
        return (super().forward(ids) - self.row_mean) @ self.row_transform


def hybrid_frozen_columns(pretrained_width: int, embedding_dim: int) -> torch.Tensor:
    """Which MF columns feed the frozen 2/3 of a ``hybrid`` vector.

    The frozen part has ``round(2 * D / 3)`` elements: the leading factor columns plus the
    bias column (the last one), so the popularity signal of the MF bias is always kept.
    Returns a LongTensor of column indices, shape (frozen_dim,).
    """
    frozen_dim = round(2 * embedding_dim / 3)
    if not 1 <= frozen_dim <= pretrained_width:
        raise ValueError(
            f"hybrid integration: frozen part of {frozen_dim} elements (2/3 of {embedding_dim}) "
            f"must fit the pretrained width {pretrained_width}"
        )
    leading = torch.arange(frozen_dim - 1, dtype=torch.long)
    return torch.cat([leading, torch.tensor([pretrained_width - 1], dtype=torch.long)])


class HybridIdEmbedding(nn.Module):
    """``hybrid``: [frozen MF columns (2/3 of D); fresh trainable elements (1/3 of D)]."""

    frozen_weight: torch.Tensor
    frozen_columns: torch.Tensor

    def __init__(self, pretrained: torch.Tensor, embedding_dim: int):
        super().__init__()
        self.embedding_dim = embedding_dim
        # The whole table is kept zero-copy; the 2/3 columns are gathered per batch.
        self.register_buffer(FROZEN_TABLE_BUFFER, pretrained, persistent=False)
        columns = hybrid_frozen_columns(int(pretrained.shape[1]), embedding_dim)
        self.register_buffer("frozen_columns", columns, persistent=False)
        self.trainable = TrainableIdEmbedding(
            int(pretrained.shape[0]), embedding_dim - len(columns)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) int64 -> (B, D): frozen (B, round(2D/3)) then trainable (B, D - that)."""
        frozen = F.embedding(ids, self.frozen_weight).index_select(1, self.frozen_columns)
        return torch.cat([frozen, self.trainable(ids)], dim=1)


class AdapterIdEmbedding(nn.Module):
    """``linear`` / ``mlp``: frozen MF rows through a small trainable network -> (B, D)."""

    frozen_weight: torch.Tensor

    def __init__(self, pretrained: torch.Tensor, adapter: nn.Module, embedding_dim: int):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.register_buffer(FROZEN_TABLE_BUFFER, pretrained, persistent=False)
        self.adapter = adapter

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) int64 -> (B, D)."""
        output: torch.Tensor = self.adapter(F.embedding(ids, self.frozen_weight))
        return output


def _build_none(
    num_ids: int, embedding_dim: int, pretrained: torch.Tensor | None, adapter_hidden: int
) -> nn.Module:
    if pretrained is not None:
        raise ValueError(
            "integration 'none' trains plain ids: it must not receive pretrained tables"
        )
    return TrainableIdEmbedding(num_ids, embedding_dim)


def _require(pretrained: torch.Tensor | None, technique: str, num_ids: int) -> torch.Tensor:
    if pretrained is None:
        raise ValueError(f"integration {technique!r} needs pretrained tables, got None")
    _check_table(pretrained, num_ids, technique)
    return pretrained


def _require_same_width(pretrained: torch.Tensor, embedding_dim: int, technique: str) -> None:
    if pretrained.shape[1] != embedding_dim:
        raise ValueError(
            f"integration {technique!r}: embedding_dim {embedding_dim} must equal the "
            f"pretrained width {pretrained.shape[1]} (d + 1)"
        )


def _build_init_frz(
    num_ids: int, embedding_dim: int, pretrained: torch.Tensor | None, adapter_hidden: int
) -> nn.Module:
    table = _require(pretrained, "init_frz", num_ids)
    _require_same_width(table, embedding_dim, "init_frz")
    return FrozenIdEmbedding(table)


def _build_residual(
    num_ids: int, embedding_dim: int, pretrained: torch.Tensor | None, adapter_hidden: int
) -> nn.Module:
    """``residual``'s towers read the frozen rows as ``init_frz`` does; the teacher's own score
    is added by ``models.residual.ResidualTwoTower`` (``build_two_tower`` wraps the model)."""
    table = _require(pretrained, "residual", num_ids)
    _require_same_width(table, embedding_dim, "residual")
    return FrozenIdEmbedding(table)


def _build_init(
    num_ids: int, embedding_dim: int, pretrained: torch.Tensor | None, adapter_hidden: int
) -> nn.Module:
    table = _require(pretrained, "init", num_ids)
    _require_same_width(table, embedding_dim, "init")
    return TrainableIdEmbedding(num_ids, embedding_dim, initial=table)


def _build_hybrid(
    num_ids: int, embedding_dim: int, pretrained: torch.Tensor | None, adapter_hidden: int
) -> nn.Module:
    table = _require(pretrained, "hybrid", num_ids)
    if embedding_dim < 3:
        raise ValueError(f"integration 'hybrid' needs embedding_dim >= 3, got {embedding_dim}")
    return HybridIdEmbedding(table, embedding_dim)


def _build_linear(
    num_ids: int, embedding_dim: int, pretrained: torch.Tensor | None, adapter_hidden: int
) -> nn.Module:
    table = _require(pretrained, "linear", num_ids)
    return AdapterIdEmbedding(table, nn.Linear(int(table.shape[1]), embedding_dim), embedding_dim)


def _build_mlp(
    num_ids: int, embedding_dim: int, pretrained: torch.Tensor | None, adapter_hidden: int
) -> nn.Module:
    table = _require(pretrained, "mlp", num_ids)
    if adapter_hidden < 1:
        raise ValueError(f"integration 'mlp': adapter_hidden must be >= 1, got {adapter_hidden}")
    adapter = nn.Sequential(
        nn.Linear(int(table.shape[1]), adapter_hidden),
        nn.ReLU(),
        nn.Linear(adapter_hidden, embedding_dim),
    )
    return AdapterIdEmbedding(table, adapter, embedding_dim)


IdEmbeddingBuilder = Callable[[int, int, "torch.Tensor | None", int], nn.Module]

INTEGRATION_TECHNIQUES: dict[IntegrationName, IdEmbeddingBuilder] = {
    "init_frz": _build_init_frz,
    "init": _build_init,
    "hybrid": _build_hybrid,
    "linear": _build_linear,
    "mlp": _build_mlp,
    "residual": _build_residual,
    "none": _build_none,
}
"""Every technique of ``config.IntegrationName`` except ``auto`` (resolved by the method)."""


def build_id_embedding(
    technique: IntegrationName,
    num_ids: int,
    embedding_dim: int,
    pretrained: torch.Tensor | None,
    adapter_hidden: int,
) -> nn.Module:
    """The id embedding for one entity type; ``pretrained`` is (num_ids, d+1) float32 or None.

    Frozen techniques keep ``pretrained`` itself (zero-copy); ``init`` copies it.
    """
    if technique not in INTEGRATION_TECHNIQUES:
        raise ValueError(
            f"unknown integration technique {technique!r} (known: {sorted(INTEGRATION_TECHNIQUES)};"
            " resolve 'auto' with methods.resolved_integration first)"
        )
    if num_ids < 1 or embedding_dim < 1:
        raise ValueError(f"num_ids and embedding_dim must be >= 1, got {num_ids}, {embedding_dim}")
    return INTEGRATION_TECHNIQUES[technique](num_ids, embedding_dim, pretrained, adapter_hidden)


def frozen_table_names(module: nn.Module) -> list[str]:
    """Dotted names of every frozen pretrained table buffer inside ``module``."""
    return [
        name
        for name, _ in module.named_buffers()
        if name == FROZEN_TABLE_BUFFER or name.endswith("." + FROZEN_TABLE_BUFFER)
    ]


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) element counts.

    Trainable: parameters with ``requires_grad``. Frozen: parameters without it plus the
    frozen pretrained table buffers (feature tables and index buffers are data, not counted).
    """
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    buffers = dict(module.named_buffers())
    frozen += sum(buffers[name].numel() for name in frozen_table_names(module))
    return trainable, frozen
