"""Compressed id tables (METHOD 2): drop-in ``forward(ids (B,)) -> (B, D)`` modules.

Kinds (``config.IdTableKind``, registry :data:`ID_TABLE_KINDS`):

- ``full``: the plain trainable table (``embeddings.TrainableIdEmbedding``).
- ``hashing``: row ``h(id)`` of an ``m``-row table, ``h`` universal hashing mod ``m``.
- ``qr``: quotient-remainder (Shi et al. 2020): rows ``id // c`` and ``id % c`` of two small
  tables, combined by element-wise product, sum, or concatenation (half width each).
- ``double_hash``: frequency-based double hashing: the most frequent ids keep private rows,
  every other id sums two rows of a shared pool picked by two hash functions.
- ``robe``: ROBE-Z: every ROBE table of the model reads one flat learnable array of ``M``
  floats (:class:`RobeArray`, built once and injected); element ``j`` of row ``x`` is
  ``array[h(x, j // Z) + j % Z]``, ``h`` universal hashing mod ``M - Z + 1``.
- ``learned_hash``: "Learning to Collide": ids clustered by a low-dimensional teacher
  (leading principal components of the MF rows) and access counts; one internal table per
  teacher dimension, combined by sum or concat (``learned_hash.py`` clusters).

Integrations (``build_compressed_id_embedding``): ``none`` trains fresh compressed rows;
``init`` first fits them to the MF rows (``fit_to_rows``, all tables of a model together);
``init_frz`` + ``learned_hash`` serves the frozen MF rows as per-cluster means
(:class:`FrozenClusterIdTable`, optionally plus a trainable residual). Other combinations
are refused at config load (``config._validate_id_tables``).

Sizes: a table's budget is ``fraction * num_ids * D`` floats (or ``rows * D``); each kind
turns it into its own shapes (``budget_rows``, ``qr_collisions``); ``model_bytes`` measures
what was built.
Hashes are ``((a * x + b) mod p) mod m`` with ``p = 2^31 - 1`` and seeded ``a, b < p``:
``a * (x mod p) < 2^62`` fits int64, so nothing overflows.
"""

from __future__ import annotations

import logging
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cadc_ray.adam import DenseAdam
from cadc_ray.config import IdTableConfig, IdTableKind, IdTablesConfig, IntegrationName
from cadc_ray.models.embeddings import (
    FROZEN_TABLE_BUFFER,
    TrainableIdEmbedding,
    frozen_table_names,
)
from cadc_ray.models.learned_hash import cluster_1d, teacher_projection

logger = logging.getLogger(__name__)

HASH_PRIME = 2**31 - 1
"""Mersenne prime of the universal hashes: products with ids below it fit in int64."""

_INIT_STD = 0.1
"""Std of a fresh row, as in ``embeddings`` (a sum of k rows uses ``0.1 / sqrt(k)``)."""

LOOKUP_BUFFER_SUFFIX = "_lookup"
"""Buffers whose name ends with this are id -> row maps: counted as lookup bytes."""


def hash_coefficients(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` seeded universal-hash pairs: a in [1, p), b in [0, p); int64 (count,)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, HASH_PRIME, size=count, dtype=np.int64)
    b = rng.integers(0, HASH_PRIME, size=count, dtype=np.int64)
    return torch.from_numpy(a), torch.from_numpy(b)


def universal_hash(
    keys: torch.Tensor, a: torch.Tensor, b: torch.Tensor, buckets: int
) -> torch.Tensor:
    """``((a * (keys mod p) + b) mod p) mod buckets``, int64, broadcasting keys against a, b."""
    return ((a * torch.remainder(keys, HASH_PRIME) + b) % HASH_PRIME) % buckets


def _normal_embedding(rows: int, width: int, std: float) -> nn.Embedding:
    table = nn.Embedding(rows, width)
    with torch.no_grad():
        table.weight.normal_(0.0, std)
    return table


class HashedIdTable(nn.Module):
    """Hashing trick: id -> row ``h(id) mod rows`` of one (rows, D) table."""

    hash_a: torch.Tensor
    hash_b: torch.Tensor

    def __init__(self, embedding_dim: int, rows: int, seed: int):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.rows = rows
        a, b = hash_coefficients(seed, 1)
        self.register_buffer("hash_a", a)
        self.register_buffer("hash_b", b)
        self.table = _normal_embedding(rows, embedding_dim, _INIT_STD)

    def row_of(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> rows (B,) int64 in [0, rows)."""
        return universal_hash(ids, self.hash_a, self.hash_b, self.rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) int64 -> (B, D)."""
        return self.table(self.row_of(ids))


class QRIdTable(nn.Module):
    """Quotient-remainder: rows ``id // c`` (quotient) and ``id % c`` (remainder).

    mult / add: both tables (·, D); concat: quotient (·, D // 2), remainder (·, D - D // 2).
    """

    def __init__(self, num_ids: int, embedding_dim: int, collisions: int, operation: str):
        super().__init__()
        if operation not in ("mult", "add", "concat"):
            raise ValueError(f"qr: unknown operation {operation!r}")
        self.embedding_dim = embedding_dim
        self.collisions = collisions
        self.operation = operation
        quotient_rows = -(-num_ids // collisions)  # ceil
        if operation == "concat":
            widths = (embedding_dim // 2, embedding_dim - embedding_dim // 2)
        else:
            widths = (embedding_dim, embedding_dim)
        # A product of two N(0, s) rows has std s^2: sqrt keeps the output at _INIT_STD.
        std = (
            math.sqrt(_INIT_STD)
            if operation == "mult"
            else _INIT_STD / (math.sqrt(2) if operation == "add" else 1.0)
        )
        self.quotient = _normal_embedding(quotient_rows, widths[0], std)
        self.remainder = _normal_embedding(collisions, widths[1], std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) int64 -> (B, D)."""
        quotient = self.quotient(torch.div(ids, self.collisions, rounding_mode="floor"))
        remainder = self.remainder(torch.remainder(ids, self.collisions))
        if self.operation == "mult":
            return quotient * remainder
        if self.operation == "add":
            return quotient + remainder
        return torch.cat([quotient, remainder], dim=1)


class DoubleHashIdTable(nn.Module):
    """Frequency-based double hashing: the ``private_rows`` most frequent ids own a row;
    every other id is ``W[private_rows + h1(id)] + W[private_rows + h2(id)]``."""

    private_row_lookup: torch.Tensor
    hash_a: torch.Tensor
    hash_b: torch.Tensor

    def __init__(
        self, embedding_dim: int, rows: int, private_rows: int, counts: np.ndarray, seed: int
    ):
        super().__init__()
        num_ids = int(counts.shape[0])
        private_rows = min(private_rows, num_ids, rows - 1)
        self.embedding_dim = embedding_dim
        self.private_rows = private_rows
        self.shared_rows = rows - private_rows
        # Most frequent first, ties to the lower id (stable sort of -count).
        top = np.argsort(-np.asarray(counts, dtype=np.float64), kind="stable")[:private_rows]
        lookup = np.full(num_ids, -1, dtype=np.int32)  # int32: half the bytes of int64
        lookup[top] = np.arange(private_rows, dtype=np.int32)
        self.register_buffer("private_row_lookup", torch.from_numpy(lookup))
        a, b = hash_coefficients(seed, 2)
        self.register_buffer("hash_a", a)
        self.register_buffer("hash_b", b)
        self.table = nn.Embedding(rows, embedding_dim)
        with torch.no_grad():
            self.table.weight[:private_rows].normal_(0.0, _INIT_STD)
            self.table.weight[private_rows:].normal_(0.0, _INIT_STD / math.sqrt(2))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) int64 -> (B, D)."""
        private = self.private_row_lookup[ids].long()  # (B,), -1 for shared ids
        hashed = self.private_rows + universal_hash(
            ids[:, None], self.hash_a, self.hash_b, self.shared_rows
        )  # (B, 2)
        shared = self.table(hashed).sum(dim=1)  # (B, D)
        own = self.table(private.clamp(min=0))
        return torch.where((private >= 0)[:, None], own, shared)


class RobeArray(nn.Module):
    """ROBE-Z's one flat learnable array of ``size`` floats, shared by every ROBE table."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size).normal_(0.0, _INIT_STD))

    @property
    def size(self) -> int:
        return int(self.weight.shape[0])


class RobeIdTable(nn.Module):
    """ROBE-Z: element ``j`` of row ``x`` is ``array[h(x, j // Z) + j % Z]``.

    ``h(x, c) = universal_hash(x * C + c) mod (M - Z + 1)``, ``C = ceil(D / Z)`` chunks per
    row, so a chunk of ``Z`` contiguous elements never runs off the array.
    """

    hash_a: torch.Tensor
    hash_b: torch.Tensor
    chunk_of_element: torch.Tensor
    offset_in_chunk: torch.Tensor

    def __init__(self, embedding_dim: int, array: RobeArray, chunk: int, seed: int):
        super().__init__()
        if not 1 <= chunk <= array.size:
            raise ValueError(f"robe: chunk {chunk} must lie in [1, array size {array.size}]")
        self.embedding_dim = embedding_dim
        self.chunk = chunk
        self.chunks_per_row = -(-embedding_dim // chunk)
        self.array = array  # shared: the same module (and parameter) in every ROBE table
        a, b = hash_coefficients(seed, 1)
        self.register_buffer("hash_a", a)
        self.register_buffer("hash_b", b)
        elements = torch.arange(embedding_dim)
        self.register_buffer("chunk_of_element", elements // chunk, persistent=False)
        self.register_buffer("offset_in_chunk", elements % chunk, persistent=False)

    def element_index(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> positions in the array (B, D), int64."""
        chunks = torch.arange(self.chunks_per_row, device=ids.device)
        keys = ids[:, None] * self.chunks_per_row + chunks[None, :]  # (B, C)
        starts = universal_hash(keys, self.hash_a, self.hash_b, self.array.size - self.chunk + 1)
        return starts[:, self.chunk_of_element] + self.offset_in_chunk  # (B, D)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) int64 -> (B, D); the backward is a scatter-add into the array."""
        return self.array.weight[self.element_index(ids)]


class LearnedHashIdTable(nn.Module):
    """One internal table per teacher dimension, indexed by that dimension's clustering.

    sum: T tables (rows_t, D), rows added; concat: T tables (rows_t, D_t), widths adding to D.
    """

    cluster_lookup: torch.Tensor

    def __init__(self, embedding_dim: int, assignments: np.ndarray, combine: str):
        super().__init__()
        if combine not in ("sum", "concat"):
            raise ValueError(f"learned_hash: unknown combine {combine!r}")
        num_tables = int(assignments.shape[0])
        self.embedding_dim = embedding_dim
        self.combine = combine
        if combine == "concat":
            base, extra = divmod(embedding_dim, num_tables)
            widths = [base + (1 if t < extra else 0) for t in range(num_tables)]
            std = _INIT_STD
        else:
            widths = [embedding_dim] * num_tables
            std = _INIT_STD / math.sqrt(num_tables)
        self.register_buffer(
            "cluster_lookup", torch.from_numpy(assignments.astype(np.int32)), persistent=True
        )
        self.tables = nn.ModuleList(
            _normal_embedding(int(assignments[t].max()) + 1, widths[t], std)
            for t in range(num_tables)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) int64 -> (B, D)."""
        rows = self.cluster_lookup[:, ids].long()  # (T, B)
        parts = [table(rows[t]) for t, table in enumerate(self.tables)]
        if self.combine == "concat":
            return torch.cat(parts, dim=1)
        return torch.stack(parts).sum(dim=0)


class _FrozenRows(nn.Module):
    """A frozen (rows, width) table held as a ``frozen_weight`` buffer: no gradient, counted
    as frozen by ``count_parameters`` / ``model_bytes``."""

    frozen_weight: torch.Tensor

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        # Non-persistent, as FrozenIdEmbedding's: rebuilt from the teacher, not checkpointed.
        self.register_buffer(FROZEN_TABLE_BUFFER, rows, persistent=False)


class FrozenClusterIdTable(nn.Module):
    """``init_frz`` compressed: the MF rows served as per-cluster means (issue #11, part 5).

    The learned-hash clustering (teacher: the same MF rows) maps each id to one cluster per
    teacher dimension; internal table t holds the mean MF row of each of its clusters
    (sum: divided by T, so the output is the mean over the T clusterings; concat: table t
    holds column block t). ``residual``: an optional small trainable table added on top,
    zero at the start so training begins from the compressed teacher.
    """

    cluster_lookup: torch.Tensor

    def __init__(
        self,
        pretrained: torch.Tensor,
        assignments: np.ndarray,
        combine: str,
        residual: nn.Module | None = None,
    ):
        super().__init__()
        num_tables = int(assignments.shape[0])
        width = int(pretrained.shape[1])
        self.embedding_dim = width
        self.combine = combine
        # Column block of each internal table: all columns (sum), or a slice of them (concat).
        base, extra = divmod(width, num_tables)
        edges = np.cumsum([0] + [base + (1 if t < extra else 0) for t in range(num_tables)])
        tables = []
        rows = pretrained.detach().to(torch.float32)
        for t in range(num_tables):
            start, stop = (int(edges[t]), int(edges[t + 1])) if combine == "concat" else (0, width)
            clusters = torch.from_numpy(assignments[t].astype(np.int64))
            size = int(clusters.max()) + 1
            sums = torch.zeros(size, stop - start).index_add_(0, clusters, rows[:, start:stop])
            members = torch.bincount(clusters, minlength=size).clamp(min=1).to(torch.float32)
            means = sums / members[:, None]
            tables.append(_FrozenRows(means / num_tables if combine == "sum" else means))
        self.tables = nn.ModuleList(tables)
        self.register_buffer(
            "cluster_lookup", torch.from_numpy(assignments.astype(np.int32)), persistent=True
        )
        self.residual = residual

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) int64 -> (B, d+1)."""
        rows = self.cluster_lookup[:, ids].long()  # (T, B)
        parts = [
            typing.cast(_FrozenRows, table).frozen_weight[rows[t]]
            for t, table in enumerate(self.tables)
        ]
        output = torch.cat(parts, dim=1) if self.combine == "concat" else torch.stack(parts).sum(0)
        if self.residual is not None:
            output = output + self.residual(ids)
        return output


@dataclass(frozen=True)
class TableContext:
    """Everything a kind's builder may need; a builder reads what its kind uses."""

    config: IdTableConfig
    num_ids: int
    embedding_dim: int
    seed: int
    counts: np.ndarray | None = None  # (num_ids,) access counts in the training data
    teacher: np.ndarray | None = None  # (num_ids, W) pretrained rows
    robe_array: RobeArray | None = None


def budget_rows(config: IdTableConfig, num_ids: int) -> int:
    """The budget in rows of D floats: ``rows``, else ``round(fraction * num_ids)`` (>= 1)."""
    if config.rows is not None:
        return config.rows
    return max(1, round(config.fraction * num_ids))


def qr_collisions(num_ids: int, budget: int) -> int:
    """``c`` with ``c + ceil(num_ids / c)`` rows close to ``budget`` (the larger root of
    ``c^2 - budget c + num_ids = 0``); ``ceil(sqrt(num_ids))`` when the budget is below
    QR's minimum of ``2 sqrt(num_ids)`` rows (the table is then larger than asked)."""
    discriminant = budget * budget - 4 * num_ids
    if discriminant < 0:
        return max(1, math.isqrt(num_ids - 1) + 1)
    return max(1, min(num_ids, math.floor((budget + math.sqrt(discriminant)) / 2)))


def _need(value: np.ndarray | None, what: str, kind: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"id table {kind!r} needs {what}, got None")
    return value


def _build_full(context: TableContext) -> nn.Module:
    return TrainableIdEmbedding(context.num_ids, context.embedding_dim)


def _build_hashing(context: TableContext) -> nn.Module:
    rows = budget_rows(context.config, context.num_ids)
    return HashedIdTable(context.embedding_dim, rows, context.seed)


def _build_qr(context: TableContext) -> nn.Module:
    budget = budget_rows(context.config, context.num_ids)
    if context.config.qr_op == "concat":
        budget *= 2  # half-width rows: twice as many fit the same floats
    collisions = qr_collisions(context.num_ids, budget)
    return QRIdTable(context.num_ids, context.embedding_dim, collisions, context.config.qr_op)


def _build_double_hash(context: TableContext) -> nn.Module:
    counts = _need(context.counts, "access counts", "double_hash")
    rows = max(2, budget_rows(context.config, context.num_ids))
    private = round(context.config.private_share * rows)
    return DoubleHashIdTable(context.embedding_dim, rows, private, counts, context.seed)


def _build_robe(context: TableContext) -> nn.Module:
    if context.robe_array is None:
        raise ValueError("id table 'robe' needs the model's shared RobeArray, got None")
    return RobeIdTable(
        context.embedding_dim, context.robe_array, context.config.robe_chunk, context.seed
    )


def learned_hash_assignments(
    teacher: np.ndarray, counts: np.ndarray, config: IdTableConfig, num_ids: int
) -> np.ndarray:
    """(T, num_ids) cluster of each id per teacher dimension, T = ``config.teacher_dim``.

    sum: each internal table gets ``budget / T`` rows of D; concat: ``budget`` rows of D / T.
    """
    budget = budget_rows(config, num_ids)
    tables = config.teacher_dim
    rows = budget if config.combine == "concat" else max(1, budget // tables)
    rows = min(rows, num_ids)
    projected = teacher_projection(teacher, tables)  # (num_ids, T)
    cap = config.size_cap * num_ids / rows
    return np.stack(
        [cluster_1d(projected[:, t], counts, rows, size_cap=cap) for t in range(tables)]
    )


def _build_learned_hash(context: TableContext) -> nn.Module:
    teacher = _need(context.teacher, "the pretrained rows (teacher)", "learned_hash")
    counts = _need(context.counts, "access counts", "learned_hash")
    assignments = learned_hash_assignments(teacher, counts, context.config, context.num_ids)
    return LearnedHashIdTable(context.embedding_dim, assignments, context.config.combine)


ID_TABLE_KINDS: dict[IdTableKind, Callable[[TableContext], nn.Module]] = {
    "full": _build_full,
    "hashing": _build_hashing,
    "qr": _build_qr,
    "double_hash": _build_double_hash,
    "robe": _build_robe,
    "learned_hash": _build_learned_hash,
}
"""Every ``config.IdTableKind``: kind -> builder of its ``forward(ids) -> (B, D)`` module."""


def is_compressed(config: IdTableConfig, num_ids: int) -> bool:
    """Whether this entity's table is compressed (not ``full``, and not below ``min_rows``)."""
    return config.kind != "full" and num_ids >= config.min_rows


def robe_array_size(tables: IdTablesConfig, num_ids: Mapping[str, int], embedding_dim: int) -> int:
    """M: the sum of every ROBE table's budget in floats (0 when no table is ROBE)."""
    total = 0
    for entity, count in num_ids.items():
        config = tables.for_entity(entity)
        if config.kind == "robe" and is_compressed(config, count):
            total += budget_rows(config, count) * embedding_dim
    return total


def fit_to_rows(
    fits: Sequence[tuple[nn.Module, torch.Tensor]], steps: int, learning_rate: float = 0.01
) -> list[float]:
    """``init`` for compressed tables: Adam (``adam.DenseAdam``) on the sum over
    ``(module, target)`` pairs of ``mean ||module(ids) - target[ids]||^2`` over all ids,
    ``steps`` full passes; returns each pair's final mean squared error.

    target: (num_ids, D) pretrained rows. The pairs are fitted together because ROBE tables
    share one array: fitted one after the other, the second would undo the first. Tables
    with their own parameters are unaffected by the others (Adam is per element).
    """
    pairs = [(module, target.detach().clone()) for module, target in fits]

    def errors() -> list[torch.Tensor]:
        return [(module(torch.arange(t.shape[0])) - t).pow(2).mean() for module, t in pairs]

    parameters = list({id(p): p for module, _ in pairs for p in module.parameters()}.values())
    if parameters and steps > 0:
        optimizer = DenseAdam(parameters, lr=learning_rate)
        for _ in range(steps):
            optimizer.zero_grad()
            torch.stack(errors()).sum().backward()
            optimizer.step()
    with torch.no_grad():
        return [float(error) for error in errors()]


def build_frozen_cluster_table(
    context: TableContext, pretrained: torch.Tensor | None
) -> FrozenClusterIdTable:
    """``init_frz`` + ``learned_hash``: the frozen MF rows as per-cluster means, plus an
    optional zero-initialised hashed residual of ``config.residual_fraction``."""
    if pretrained is None:
        raise ValueError("integration 'init_frz' needs pretrained tables, got None")
    if pretrained.shape[0] != context.num_ids:
        raise ValueError(
            f"init_frz: pretrained table has {pretrained.shape[0]} rows, not {context.num_ids}"
        )
    counts = _need(context.counts, "access counts", "learned_hash")
    assignments = learned_hash_assignments(
        pretrained.numpy(), counts, context.config, context.num_ids
    )
    residual = None
    if context.config.residual_fraction > 0:
        rows = max(1, round(context.config.residual_fraction * context.num_ids))
        residual = HashedIdTable(int(pretrained.shape[1]), rows, context.seed)
        with torch.no_grad():
            residual.table.weight.zero_()
    return FrozenClusterIdTable(pretrained, assignments, context.config.combine, residual)


def build_compressed_id_embedding(
    integration: IntegrationName,
    context: TableContext,
    pretrained: torch.Tensor | None,
    fit: bool = True,
) -> nn.Module:
    """A compressed id table for one entity under ``integration``.

    ``none``: fresh. ``init``: the table is fitted to the pretrained rows (``fit_to_rows``)
    before training, the compressed counterpart of copying the MF rows into a full table.
    ``init_frz`` (``learned_hash`` only): frozen per-cluster mean rows
    (:class:`FrozenClusterIdTable`). ``fit=False``: the caller fits (``fit_to_rows``) the
    model's tables together, as ``build_two_tower`` does.
    """
    kind = context.config.kind
    if kind not in ID_TABLE_KINDS:
        raise ValueError(f"unknown id table kind {kind!r} (known: {sorted(ID_TABLE_KINDS)})")
    if integration == "init_frz" and kind == "learned_hash":
        return build_frozen_cluster_table(context, pretrained)
    if integration not in ("none", "init"):
        raise ValueError(
            f"id table {kind!r} replaces a trainable table: integration must be 'none' or "
            f"'init', got {integration!r}"
        )
    module = ID_TABLE_KINDS[kind](context)
    if integration == "init":
        if pretrained is None:
            raise ValueError("integration 'init' needs pretrained tables, got None")
        if pretrained.shape != (context.num_ids, context.embedding_dim):
            raise ValueError(
                f"integration 'init': pretrained table {tuple(pretrained.shape)} must be "
                f"({context.num_ids}, {context.embedding_dim})"
            )
        if fit:
            (error,) = fit_to_rows([(module, pretrained)], context.config.init_steps)
            logger.info("id table %s fitted to the pretrained rows: mse %.5f", kind, error)
    return module


def model_bytes(module: nn.Module) -> dict[str, int]:
    """Bytes of the model: trainable parameters, frozen parameters and tables, id -> row
    lookup maps (buffers ending in ``_lookup``), and their ``total``.

    Shared parameters (the ROBE array) count once. Hash coefficients and feature data are
    not model memory and are not counted.
    """
    trainable = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in module.parameters() if not p.requires_grad)
    buffers = dict(module.named_buffers())
    frozen += sum(
        buffers[n].numel() * buffers[n].element_size() for n in frozen_table_names(module)
    )
    lookup = sum(
        b.numel() * b.element_size()
        for name, b in buffers.items()
        if name.endswith(LOOKUP_BUFFER_SUFFIX)
    )
    return {
        "trainable": trainable,
        "frozen": frozen,
        "lookup": lookup,
        "total": trainable + frozen + lookup,
    }


def id_table_bytes(module: nn.Module) -> int:
    """Bytes of one id embedding module: its parameters, frozen tables and lookup maps."""
    return model_bytes(module)["total"]


__all__ = [
    "ID_TABLE_KINDS",
    "DoubleHashIdTable",
    "FrozenClusterIdTable",
    "HashedIdTable",
    "LearnedHashIdTable",
    "QRIdTable",
    "RobeArray",
    "RobeIdTable",
    "TableContext",
    "build_compressed_id_embedding",
    "id_table_bytes",
    "model_bytes",
]


def id_table_compression(model: nn.Module) -> float:
    """Full id-table bytes / actual id-table bytes of a two-tower model (1.0: uncompressed).

    Full: ``num_ids * D`` float32 per entity. Actual: ``model_bytes`` of both id embedding
    modules together (a shared ROBE array counts once).
    """
    towers = [getattr(model, "user_tower"), getattr(model, "item_tower")]  # noqa: B009
    full = sum(t.num_entities * t.id_embedding.embedding_dim * 4 for t in towers)
    actual = model_bytes(nn.ModuleList(t.id_embedding for t in towers))["total"]
    return full / actual if actual else float("inf")
