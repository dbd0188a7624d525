"""Optimizers over trainable parameters only (frozen tables never get Adam state).

``two_tower_optimizers`` gives the TTNN ``adam.DenseAdam`` (``torch.optim.Adam``'s CPU update
in plain tensor ops, without ``torch.optim``'s import), plus ``torch.optim.SparseAdam``
(lazy Adam) for the large trainable id tables chosen by ``sparse_id_tables``: dense Adam
reads and writes every row of every table at every step, whatever the batch touched.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch
from torch import nn

from cadc_ray.adam import DenseAdam


class Optimizer(Protocol):
    """What the training loops and checkpoints use of an optimizer: ``DenseAdam`` and
    ``torch.optim`` optimizers alike."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> DenseAdam:
    """Adam over the parameters with ``requires_grad`` (frozen buffers are not parameters):
    ``two_tower_optimizers`` with no row-sparse table, whose ``adam`` is a ``DenseAdam``."""
    return cast(DenseAdam, two_tower_optimizers(model, lr, weight_decay, {})["adam"])


SPARSE_UPDATE_ROWS = 10_000
"""``train.id_table_updates: auto`` updates a trainable id table row-sparsely from this many
rows on. On Epinions' 296,277-item table a GS epoch ran at 6,000 rows/s with dense Adam
(docs/scale.md, "Row-sparse id tables in the TTNN"); MovieLens' tables (at most 6,040
rows) stay dense, so their numbers do not move."""


def sparse_id_tables(
    model: nn.Module,
    mode: str,
    weight_decay: float,
    sparse_allreduce: bool,
) -> dict[str, nn.Embedding]:
    """The trainable ``nn.Embedding`` tables of ``model`` to update row-sparsely, by name.

    ``mode`` is ``train.id_table_updates``: ``dense`` none; ``sparse`` every trainable id
    table (feature tables included: they are ``nn.Embedding`` too); ``auto`` those of at
    least ``SPARSE_UPDATE_ROWS`` rows, and none when ``weight_decay`` > 0 (``SparseAdam`` has
    no weight decay) or when the process group cannot all-reduce sparse gradients
    (``sparse_allreduce`` False: NCCL). ``sparse`` in those two cases raises a ValueError.
    """
    if mode not in ("auto", "sparse", "dense"):
        raise ValueError(f"train.id_table_updates must be auto, sparse or dense, got {mode!r}")
    if mode == "dense":
        return {}
    if mode == "sparse" and weight_decay > 0:
        raise ValueError(
            f"train.id_table_updates: sparse has no weight decay (torch.optim.SparseAdam), "
            f"got train.weight_decay={weight_decay}; use auto or dense"
        )
    if mode == "sparse" and not sparse_allreduce:
        raise ValueError(
            "train.id_table_updates: sparse needs a process group that all-reduces sparse "
            "gradients (gloo); this multi-GPU group uses NCCL; use auto or dense"
        )
    if mode == "auto" and (weight_decay > 0 or not sparse_allreduce):
        return {}
    minimum_rows = 1 if mode == "sparse" else SPARSE_UPDATE_ROWS
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding)
        and module.weight.requires_grad
        and module.num_embeddings >= minimum_rows
    }


def two_tower_optimizers(
    model: nn.Module, lr: float, weight_decay: float, sparse_tables: dict[str, nn.Embedding]
) -> dict[str, Optimizer]:
    """``adam`` (a ``DenseAdam``) over every other trainable parameter and, when
    ``sparse_tables`` is not empty, ``sparse_adam`` (``torch.optim.SparseAdam``, same lr and
    betas) over those tables.

    The tables are switched to sparse gradients (``nn.Embedding.sparse``): a step then
    reads and writes the rows its batch looked up, and their Adam moments, and no other.
    That is lazy Adam: an untouched row keeps its value and its moments, where dense Adam
    would still move it along its decaying momentum.
    """
    sparse_weights = set()
    for table in sparse_tables.values():
        table.sparse = True
        sparse_weights.add(id(table.weight))
    dense = [p for p in trainable_parameters(model) if id(p) not in sparse_weights]
    if not dense and not sparse_tables:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimize")
    optimizers: dict[str, Optimizer] = {}
    if dense:
        optimizers["adam"] = DenseAdam(dense, lr=lr, weight_decay=weight_decay)
    if sparse_tables:
        weights = [table.weight for table in sparse_tables.values()]
        optimizers["sparse_adam"] = torch.optim.SparseAdam(weights, lr=lr)
    return optimizers
