"""MF pretraining step whose cost is proportional to the batch, not to the tables (METHOD 1.2).

A dense ``nn.Embedding`` + ``torch.optim.Adam`` step touches every row of U and V (the
gradient is a dense (num_rows, d+1) tensor and Adam updates all of it, even the rows the
batch never saw), so one epoch costs ``num_batches * table_size``. This step instead:

1. gathers the batch's rows: u (B, d+1) and v (B, 1+K, d+1) for the positive and K negatives;
2. computes the logits and their BCE gradients analytically. With
   ``x = u[:d].v[:d] + u[d] + v[d] + b`` and ``L = mean(softplus(-x_pos), softplus(x_neg))``:
   ``dL/dx = (sigmoid(x) - label) / (B (1+K))``; ``dx/du = [v[:d], 1]``,
   ``dx/dv = [u[:d], 1]``, ``dx/db = 1``;
3. sums the row gradients per distinct row (``RowGradients``: ``index_add_`` into a
   table-sized buffer and a bincount for tables not much taller than the batch, else
   ``torch.unique`` + ``index_add_``) and, in a distributed run, all-gathers those rows
   from every rank, with the global bias's gradient in the same buffer
   (``exchange_row_gradients``; never a dense all-reduce);
4. applies Adam to the touched rows only (``adam.RowAdam``: lazy Adam, as
   ``torch.optim.SparseAdam``), and dense Adam to the global bias.

Only the side that steps in the current alternation phase gets its gradient computed: a
fixed table needs none. The maths is plain torch on any device and has no autograd graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from cadc_ray.adam import RowAdam
from cadc_ray.models.mf import MatrixFactorization
from cadc_ray.training.alternation import Phase


def factors_and_one(user_rows: torch.Tensor) -> torch.Tensor:
    """user_rows (B, d+1) -> [u[:d], 1] (B, d+1): the logit's gradient w.r.t. an item row."""
    d = user_rows.shape[1] - 1
    return torch.cat([user_rows[:, :d], user_rows.new_ones((user_rows.shape[0], 1))], 1)


def mf_logits(
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
    global_bias: torch.Tensor,
    user_with_one: torch.Tensor | None = None,
) -> torch.Tensor:
    """MF logits of each user against its 1+K items.

    user_rows (B, d+1), item_rows (B, 1+K, d+1), global_bias () -> logits (B, 1+K).
    ``user_with_one``: ``factors_and_one(user_rows)`` if the caller has it already.
    """
    if user_with_one is None:
        user_with_one = factors_and_one(user_rows)
    d = user_rows.shape[1] - 1
    # [u[:d], 1] . v = u[:d].v[:d] + v[d]: one product covers factors and item bias. vecdot
    # (multiply + reduce) ran 2.5x faster than bmm's B tiny (1+K, d+1) @ (d+1, 1) products.
    logits = torch.linalg.vecdot(item_rows, user_with_one.unsqueeze(1))  # (B, 1+K)
    return logits + user_rows[:, d : d + 1] + global_bias


def bce_logit_grads(
    logits: torch.Tensor, mean_over: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss sum and dL/dlogits of the mean BCE with column 0 positive, the rest negative.

    logits (B, 1+K) -> (loss sum over all B(1+K) logits (), gradient (B, 1+K)) where the
    gradient is that of the *mean* loss, as ``losses.bce_with_sampled_negatives``, over
    ``mean_over`` logits (default: these; a chunk of a batch passes the batch's count).
    """
    # softplus(-x) = softplus(x) - x: one softplus over the contiguous block (10x faster
    # than two over column slices).
    loss_sum = F.softplus(logits).sum() - logits[:, 0].sum()
    grads = torch.sigmoid(logits)
    grads[:, 0] -= 1.0
    grads /= logits.numel() if mean_over is None else mean_over
    return loss_sum, grads


class RowGradients:
    """Accumulates gradient rows (ids (n,), grads (n, C)) chunk by chunk; ``coalesced()``
    returns the distinct ids in increasing order (R,) and their sums (R, C).

    When the table is not much taller than the batch (``num_rows <= 8 n``, ``n`` the ids
    expected in all) the rows are summed into a table-sized buffer as they come and the
    distinct ids come from one bincount, O(num_rows + n): about 3x faster on a CPU than
    ``torch.unique``'s sort. On taller tables the chunks are kept and sorted once,
    O(n log n), so the step stays independent of the table. Both paths give the same rows,
    sums and summation order (each row's gradients added in arrival order).
    """

    def __init__(self, num_rows: int, expected_ids: int, like: torch.Tensor):
        self.num_rows = num_rows
        self.dense = num_rows <= 8 * expected_ids
        self.table = like.new_zeros((num_rows, like.shape[-1])) if self.dense else None
        self.ids: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []

    def add(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        self.ids.append(ids)
        if self.table is not None:
            self.table.index_add_(0, ids, grads)
        else:
            self.grads.append(grads)

    def coalesced(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.cat(self.ids)
        if self.table is not None:
            rows = torch.nonzero(torch.bincount(ids, minlength=self.num_rows)).squeeze(1)
            return rows, self.table.index_select(0, rows)
        grads = torch.cat(self.grads)
        rows, inverse = torch.unique(ids, return_inverse=True)
        sums = grads.new_zeros((rows.numel(), grads.shape[1])).index_add_(0, inverse, grads)
        return rows, sums


def coalesce_rows(
    ids: torch.Tensor, grads: torch.Tensor, num_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum gradient rows that share an id: ids (n,) in [0, num_rows), grads (n, C)
    -> distinct ids in increasing order (R,), their sums (R, C) (see ``RowGradients``)."""
    accumulator = RowGradients(num_rows, ids.numel(), grads)
    accumulator.add(ids, grads)
    return accumulator.coalesced()


RowSums = tuple[torch.Tensor, torch.Tensor]
"""Distinct row ids (R,) int64 and their gradient sums (R, C), as ``coalesced()`` gives."""


def _as_int32_columns(values: torch.Tensor) -> torch.Tensor:
    """The bytes of a contiguous (n, k) int64 or float32 tensor as (n, 2k) or (n, k) int32."""
    columns = values.shape[1] * values.element_size() // 4  # explicit: n may be 0
    return values.contiguous().view(torch.int32).view(values.shape[0], columns)


def exchange_row_gradients(
    sides: Sequence[tuple[RowSums, int]], shared: torch.Tensor
) -> tuple[list[RowSums], torch.Tensor]:
    """Means over ranks of row-sparse gradients and of a small dense one, in two collectives.

    ``sides``: per table that steps, ``((rows (R_r,), grads (R_r, C)), num_rows)``, the same
    tables in the same order on every rank; ``shared``: a dense gradient of at most C + 2
    elements (the global bias). Returns each table's merged rows and mean gradients, and
    the mean of ``shared``. Every rank gets every rank's rows, sums them per row (ranks in
    order) and divides by the world size, as ``DataParallel`` averages dense gradients, so
    the ranks then apply the same update.

    Two collectives a step whatever the number of tables: the row counts (one host sync:
    the buffers need a size), then one int32 buffer per rank holding each table's ids
    (int64, two columns) and gradients (float32) byte for byte, and ``shared`` in its last
    row, padded to the largest rank's rows. Four collectives a step before (the counts, ids
    and gradients of the one table, then the bias): each is a point where the ranks wait
    for each other. On the 2-core machine the 2-rank step ran 34-35% faster (median of 9
    alternating measurements per phase), bit for bit the same (docs/results.md, "Fewer
    collectives"). Int32 because the bytes travel unchanged (a float buffer could hold NaN
    bit patterns of ids). A no-op without an initialized process group of more than one
    rank; what cannot be sent is refused before any collective, on every rank alike.
    """
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [row_sums for row_sums, _ in sides], shared
    world = torch.distributed.get_world_size()
    if world == 1:
        return [row_sums for row_sums, _ in sides], shared
    if not sides:
        raise ValueError("exchange_row_gradients needs at least one table's rows")
    (first_rows, first_grads), _ = sides[0]
    width = 2 + first_grads.shape[1]  # two int32 columns of id, then the gradient
    if shared.numel() > width:
        raise ValueError(f"the shared gradient has {shared.numel()} elements, at most {width}")
    dtypes = {grads.dtype for (_, grads), _ in sides} | {shared.dtype}
    if dtypes != {torch.float32}:
        raise ValueError(
            f"exchange_row_gradients sends float32 gradients, got {sorted(map(str, dtypes))}"
        )
    widths = sorted({grads.shape[1] for (_, grads), _ in sides})
    if len(widths) > 1:
        raise ValueError(f"the tables' gradient rows must have one width, got {widths}")
    device = first_rows.device
    counts = torch.tensor([rows.numel() for (rows, _), _ in sides], device=device)
    gathered_counts = [torch.empty_like(counts) for _ in range(world)]
    torch.distributed.all_gather(gathered_counts, counts)
    counts_by_rank = [[int(c) for c in rank_counts.tolist()] for rank_counts in gathered_counts]
    largest = max(sum(rank_counts) for rank_counts in counts_by_rank)
    buffer = torch.zeros((largest + 1, width), dtype=torch.int32, device=device)
    at = 0
    for rows, grads in (row_sums for row_sums, _ in sides):
        buffer[at : at + rows.numel(), :2] = _as_int32_columns(rows.unsqueeze(1))
        buffer[at : at + rows.numel(), 2:] = _as_int32_columns(grads)
        at += rows.numel()
    buffer[largest, : shared.numel()] = _as_int32_columns(shared.reshape(1, -1)).reshape(-1)
    buffers = [torch.empty_like(buffer) for _ in range(world)]
    torch.distributed.all_gather(buffers, buffer)
    merged: list[RowSums] = []
    for side, (_, num_rows) in enumerate(sides):
        blocks = [
            rank_buffer[sum(rank_counts[:side]) : sum(rank_counts[: side + 1])]
            for rank_buffer, rank_counts in zip(buffers, counts_by_rank, strict=True)
        ]
        rows, sums = coalesce_rows(
            torch.cat(
                [block[:, :2].contiguous().view(torch.int64).reshape(-1) for block in blocks]
            ),
            torch.cat([block[:, 2:].contiguous().view(torch.float32) for block in blocks]),
            num_rows,
        )
        merged.append((rows, sums / world))
    shared_sum = torch.stack(
        [b[largest, : shared.numel()].view(torch.float32) for b in buffers]
    ).sum(0)
    return merged, (shared_sum / world).reshape(shared.shape)


class FusedMFTrainer:
    """The MF step of METHOD 1.2 with one ``RowAdam`` per table and Adam on the global bias.

    Owns the optimizer state; the tables are the model's own parameters, updated in place
    (so ``model.export_tables()`` and ``model.state_dict()`` see the training).
    """

    def __init__(
        self,
        model: MatrixFactorization,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        rows_per_chunk: int = 1024,
    ):
        if rows_per_chunk < 1:
            raise ValueError(f"rows_per_chunk must be >= 1, got {rows_per_chunk}")
        if not isinstance(model, MatrixFactorization):
            raise TypeError(
                f"the fused MF step needs a MatrixFactorization, got {type(model).__name__}"
            )
        self.model = model
        self.rows_per_chunk = rows_per_chunk
        self.user = RowAdam(model.user_table.weight, lr, betas, eps, weight_decay)
        self.item = RowAdam(model.item_table.weight, lr, betas, eps, weight_decay)
        # The global bias as a one-row table: its only row is touched by every step.
        self.shared = RowAdam(model.global_bias, lr, betas, eps, weight_decay)
        self._bias_row = torch.zeros(1, dtype=torch.int64, device=model.global_bias.device)

    @torch.no_grad()
    def step(
        self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, phase: Phase
    ) -> torch.Tensor:
        """One update. users (B,), items (B,), negatives (B, K) int64 -> loss sum () on device.

        ``phase`` says which table steps (``alternation_phase``); the global bias always does.
        The returned sum over the B(1+K) logits stays on the device: no host sync here.
        The batch is processed in chunks of ``rows_per_chunk`` rows so that the gathered
        (chunk, 1+K, d+1) item rows stay in cache between the logits and the gradients
        (2.4x faster than the whole batch at once on a CPU, 8192 x 5 x 96); gradients are
        those of the whole batch's mean loss, and the update happens once, after the chunks.
        """
        user_table = self.model.user_table.weight
        item_table = self.model.item_table.weight
        d = self.model.dim
        batch_items = torch.cat([items.unsqueeze(1), negatives], 1)  # (B, 1+K)
        num_logits = batch_items.numel()
        # Accumulators for the stepping tables only: a fixed table needs no gradient (and the
        # dense path's table-sized buffer would be zeroed every step for nothing).
        user_grads = (
            RowGradients(user_table.shape[0], users.numel(), user_table)
            if phase in ("user", "both")
            else None
        )
        item_grads = (
            RowGradients(item_table.shape[0], num_logits, item_table)
            if phase in ("item", "both")
            else None
        )
        loss_sum = user_table.new_zeros(())
        bias_grad = user_table.new_zeros((1, 1))
        for start in range(0, users.numel(), self.rows_per_chunk):
            chunk_users = users[start : start + self.rows_per_chunk]  # (b,)
            chunk_items = batch_items[start : start + self.rows_per_chunk]  # (b, 1+K)
            # Rows as they were before this step: both sides' gradients use the same tables.
            # index_select: 3-4x faster on a CPU than advanced indexing (``table[ids]``).
            user_rows = user_table.index_select(0, chunk_users)  # (b, d+1)
            item_rows = item_table.index_select(0, chunk_items.reshape(-1)).view(
                *chunk_items.shape, d + 1
            )  # (b, 1+K, d+1)
            user_with_one = factors_and_one(user_rows)  # (b, d+1) = dx/dv
            logits = mf_logits(user_rows, item_rows, self.model.global_bias, user_with_one)
            chunk_loss, grads = bce_logit_grads(logits, num_logits)  # (), (b, 1+K)
            loss_sum += chunk_loss
            bias_grad += grads.sum()
            if user_grads is not None:
                chunk_user_grads = torch.bmm(grads.unsqueeze(1), item_rows).squeeze(1)
                chunk_user_grads[:, d] = grads.sum(1)  # dx/du = [v[:d], 1]
                user_grads.add(chunk_users, chunk_user_grads)
            if item_grads is not None:
                chunk_item_grads = grads.unsqueeze(2) * user_with_one.unsqueeze(1)
                item_grads.add(chunk_items.reshape(-1), chunk_item_grads.reshape(-1, d + 1))
        stepping = [
            (optimizer, gradients)
            for optimizer, gradients in ((self.user, user_grads), (self.item, item_grads))
            if gradients is not None
        ]
        merged, bias_grad = exchange_row_gradients(
            [(gradients.coalesced(), gradients.num_rows) for _, gradients in stepping], bias_grad
        )
        for (optimizer, _), (rows, grads) in zip(stepping, merged, strict=True):
            optimizer.step(rows, grads)
        self.shared.step(self._bias_row, bias_grad)
        return loss_sum

    def state_dict(self) -> dict[str, Any]:
        return {
            "user": self.user.state_dict(),
            "item": self.item.state_dict(),
            "shared": self.shared.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("user", "item", "shared"):
            if name not in state:
                raise KeyError(f"fused MF optimizer state lacks {name!r} (has {sorted(state)})")
        self.user.load_state_dict(state["user"])
        self.item.load_state_dict(state["item"])
        self.shared.load_state_dict(state["shared"])
