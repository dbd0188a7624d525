"""Data-parallel training of an autograd model (the TTNN, MF-MLP) over a process group.

:class:`DataParallel` does what ``DistributedDataParallel`` did here, in plain
``torch.distributed`` collectives:

- at the start, every trainable parameter is rank 0's (one broadcast per dtype), so the
  ranks start equal even if their initialisation were not; buffers are never sent: they
  hold data every rank builds itself (frozen tables, features), possibly in read-only
  object-store memory, which DDP would have written into unless told to ignore them;
- after each backward (:meth:`DataParallel.average_gradients`, called by the training
  loop), every gradient is the mean of the ranks' gradients: each rank's dense gradients
  are multiplied by ``1 / world_size`` and summed in one flat all-reduce per dtype, as DDP
  pre-divides its buckets; row-sparse gradients (``nn.Embedding(sparse=True)``) are
  all-reduced as sparse tensors (gloo; NCCL cannot, which ``training.optim.sparse_id_tables``
  accounts for).

Why not DDP: its constructor imports ``torch._dynamo``, 1.3 s of every worker's start on the
2-core machine, and a two-worker group's fixed cost per stage was 5.2-5.7 s against the 5 s
goal (docs/scale.md, "Fixed cost per stage"). What DDP has and this has not: buckets whose
all-reduce overlaps the rest of the backward. Here it made no difference that we could
measure: the 2-worker TTNN's 10 epochs on ML-100K took 3.4-4.7 s with either (docs/results.md,
"Data parallelism without DDP").

Every rank must call :meth:`~DataParallel.average_gradients` equally often (one call per
step), as it had to step DDP equally often.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class DataParallel(nn.Module):
    """``module`` trained by the ranks of the default process group; ``module`` is the
    model itself (``training.loops.unwrap``), on the device it computes on."""

    def __init__(self, module: nn.Module) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DataParallel needs an initialised torch.distributed process group")
        super().__init__()
        self.module = module
        self.world_size = dist.get_world_size()
        trainable = [p for p in module.parameters() if p.requires_grad]
        # Known from the module, not from a step's gradient, so that a table no row of
        # this rank's batch touched still joins its sparse all-reduce. Fixed here, as DDP
        # fixes its parameters at construction.
        sparse = {
            id(layer.weight)
            for layer in module.modules()
            if isinstance(layer, nn.Embedding) and layer.sparse
        }
        self._sparse_tables = [p for p in trainable if id(p) in sparse]
        self._dense_groups = _by_dtype_and_device([p for p in trainable if id(p) not in sparse])
        with torch.no_grad():
            for parameters in _by_dtype_and_device(trainable):
                flat = torch.cat([p.reshape(-1) for p in parameters])
                dist.broadcast(flat, src=0)
                for parameter, value in zip(parameters, _unflatten(flat, parameters), strict=True):
                    parameter.copy_(value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def average_gradients(self) -> None:
        """Every trainable parameter's gradient := the mean over the ranks.

        A parameter that got no gradient on this rank sends zeros (every rank sends the same
        layout) and receives the mean if any rank had a gradient; on no rank, it keeps
        none, as in one process (an optimizer then skips it). Only a rank that lacks a
        gradient reads the counts back to the host, so a step of a model whose every
        parameter gets a gradient has no host synchronisation.
        """
        scale = 1.0 / self.world_size
        for table in self._sparse_tables:
            grad = table.grad
            averaged = (grad if grad is not None else _no_rows(table)).mul(scale)
            dist.all_reduce(averaged)
            if grad is not None or averaged._nnz() > 0:  # nnz is host metadata: no sync
                table.grad = averaged
        for members in self._dense_groups:
            present = [p.grad is not None for p in members]
            flat = torch.cat(
                [
                    p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
                    for p in members
                ]
                + [torch.tensor(present, dtype=members[0].dtype).to(members[0].device)]
            )
            values = flat[: -len(members)]
            values.mul_(scale)  # as DDP: each rank's share, then the sum
            dist.all_reduce(flat)
            ranks_with_grad = flat[-len(members) :].tolist() if not all(present) else None
            for index, (member, value) in enumerate(
                zip(members, _unflatten(values, members), strict=True)
            ):
                if member.grad is not None:
                    member.grad.copy_(value)
                elif ranks_with_grad is not None and ranks_with_grad[index] > 0:
                    member.grad = value.clone()


def _no_rows(table: torch.Tensor) -> torch.Tensor:
    """A sparse gradient of ``table`` (rows, width) with no row in it."""
    return torch.sparse_coo_tensor(
        torch.zeros(1, 0, dtype=torch.int64, device=table.device),
        torch.zeros(0, *table.shape[1:], dtype=table.dtype, device=table.device),
        table.shape,
    )


def _by_dtype_and_device(tensors: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``tensors`` grouped by (dtype, device), each group in their order: one flat buffer each."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    return list(groups.values())


def _unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    sizes = [t.numel() for t in like]
    return [piece.view_as(t) for piece, t in zip(flat.split(sizes), like, strict=True)]
