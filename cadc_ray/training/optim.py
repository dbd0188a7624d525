"""Optimizers over trainable parameters only (frozen tables never get Adam state).

``RowAdam`` is Adam for id tables updated row-sparsely (the fused MF step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam over the parameters with ``requires_grad`` (frozen buffers are not parameters)."""
    parameters = trainable_parameters(model)
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimize")
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


class RowAdam:
    """Adam over the rows of one table that a step touches (lazy Adam, as ``SparseAdam``).

    ``table`` is viewed as (num_rows, row_size) (a 0-dim parameter is one row of one
    element). ``step(rows, grads)`` with distinct ``rows`` (R,) and their summed gradients
    (R, row_size) updates the moments of those rows and those rows only; the step count is
    per table, as in ``torch.optim.SparseAdam``, so the first step equals dense Adam's on the
    touched rows and leaves the others as they are. ``weight_decay`` is Adam's L2 term
    (``grad += wd * row``), applied to the touched rows. Cost: O(R * row_size) per step.
    """

    def __init__(
        self,
        table: torch.Tensor,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                f"RowAdam needs lr > 0, eps > 0, weight_decay >= 0 and betas in [0, 1), got "
                f"lr={lr}, eps={eps}, weight_decay={weight_decay}, betas={betas}"
            )
        rows = table.shape[0] if table.ndim > 0 else 1
        self.table = table.data.view(rows, -1)  # shares storage with the parameter
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.exp_avg = torch.zeros_like(self.table)
        self.exp_avg_sq = torch.zeros_like(self.table)
        self.step_count = 0

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grads: torch.Tensor) -> None:
        """rows (R,) distinct int64, grads (R, row_size): one Adam step on those rows."""
        beta1, beta2 = self.betas
        self.step_count += 1
        # index_select / index_copy_: 3-4x faster on a CPU than ``t[rows]`` / ``t[rows] = x``.
        current = self.table.index_select(0, rows)  # (R, C)
        if self.weight_decay:
            grads = grads + self.weight_decay * current
        exp_avg = self.exp_avg.index_select(0, rows).mul_(beta1).add_(grads, alpha=1 - beta1)
        exp_avg_sq = self.exp_avg_sq.index_select(0, rows).mul_(beta2)
        exp_avg_sq.addcmul_(grads, grads, value=1 - beta2)
        self.exp_avg.index_copy_(0, rows, exp_avg)
        self.exp_avg_sq.index_copy_(0, rows, exp_avg_sq)
        bias_correction1 = 1 - beta1**self.step_count
        bias_correction2 = 1 - beta2**self.step_count
        denom = exp_avg_sq.sqrt_().div_(math.sqrt(bias_correction2)).add_(self.eps)
        update = exp_avg.div_(denom).mul_(-self.lr / bias_correction1)  # reuses the buffers
        self.table.index_copy_(0, rows, current.add_(update))  # rows are distinct

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("exp_avg", "exp_avg_sq"):
            if tuple(state[name].shape) != tuple(self.table.shape):
                raise ValueError(
                    f"RowAdam state {name} has shape {tuple(state[name].shape)}, "
                    f"the table {tuple(self.table.shape)}"
                )
        self.step_count = int(state["step"])
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
