"""Adam in plain tensor ops, without ``torch.optim``.

``DenseAdam`` updates whole tensors, as ``torch.optim.Adam`` does, bit for bit; ``RowAdam``
updates the rows of an id table that a step touched (lazy Adam). Neither imports
``torch.optim``, whose first optimizer in a process imports ``torch._dynamo`` (over a second
on a small machine). Here, below ``models``, so that the compressed tables' fitting
(``models.id_tables.fit_to_rows``) uses them too; ``training.optim`` chooses which optimizer
a stage gets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


class DenseAdam:
    """Adam over whole tensors: ``torch.optim.Adam``'s default CPU update, bit for bit.

    Why not ``torch.optim.Adam`` itself: a process's first ``torch.optim`` optimizer imports
    ``torch._dynamo`` (its methods are wrapped in ``torch._disable_dynamo``), 1.1-1.4 s on
    a 2-core machine: most of a MovieLens TTNN stage's fixed cost, paid again by every
    Train worker and Tune trial process (docs/results.md, "The TTNN's optimizer without
    torch.optim"). The update is ``torch.optim.Adam``'s single-tensor one (its default on a
    CPU; on CUDA torch defaults to ``foreach``, the same formula), op for op, so the
    numbers are those of ``torch.optim.Adam(params, lr, betas, eps, weight_decay)``:
    L2 weight decay added to the gradient, a step count per tensor, moments created at a
    tensor's first gradient, tensors without a gradient skipped (tested bit for bit
    against torch). Dense gradients only; no AMSGrad, no closure.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        self.params = list(params)
        if not self.params:
            raise ValueError("DenseAdam got no parameters to optimize")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("DenseAdam got a parameter more than once")
        # torch.optim.Adam's bounds (lr 0 is allowed: a run that must not move its weights).
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                f"DenseAdam needs lr >= 0, eps >= 0, weight_decay >= 0 and betas in [0, 1), "
                f"got lr={lr}, eps={eps}, weight_decay={weight_decay}, betas={betas}"
            )
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.steps = [0] * len(self.params)
        self.exp_avg: list[torch.Tensor | None] = [None] * len(self.params)
        self.exp_avg_sq: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                param.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for index, param in enumerate(self.params):
            grad = param.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise ValueError(
                    f"DenseAdam got a sparse gradient for parameter {index} of shape "
                    f"{tuple(param.shape)}; row-sparse tables belong to SparseAdam or RowAdam"
                )
            exp_avg, exp_avg_sq = self.exp_avg[index], self.exp_avg_sq[index]
            if exp_avg is None or exp_avg_sq is None:
                exp_avg = self.exp_avg[index] = torch.zeros_like(param)
                exp_avg_sq = self.exp_avg_sq[index] = torch.zeros_like(param)
            self.steps[index] += 1
            # torch keeps the count in a float tensor and reads it back as a float.
            step = float(self.steps[index])
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = self.lr / bias_correction1
            denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)

    def state_dict(self) -> dict[str, Any]:
        def copies(moments: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
            return [None if moment is None else moment.clone() for moment in moments]

        return {
            "steps": list(self.steps),
            "exp_avg": copies(self.exp_avg),
            "exp_avg_sq": copies(self.exp_avg_sq),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads ``state_dict()``'s output, or ``torch.optim.Adam``'s over the same parameters
        in the same order (a checkpoint written before ``DenseAdam``), checked first."""
        if set(state_dict) == {"state", "param_groups"}:
            state_dict = _from_torch_adam(state_dict, len(self.params))
        missing = {"steps", "exp_avg", "exp_avg_sq"} - set(state_dict)
        if missing:
            raise KeyError(f"DenseAdam state lacks {sorted(missing)} (has {sorted(state_dict)})")
        for name in ("steps", "exp_avg", "exp_avg_sq"):
            if len(state_dict[name]) != len(self.params):
                raise ValueError(
                    f"DenseAdam state {name} has {len(state_dict[name])} entries, this "
                    f"optimizer {len(self.params)} parameters"
                )
        for index, param in enumerate(self.params):
            for name in ("exp_avg", "exp_avg_sq"):
                moment = state_dict[name][index]
                if moment is not None and tuple(moment.shape) != tuple(param.shape):
                    raise ValueError(
                        f"DenseAdam state {name}[{index}] has shape {tuple(moment.shape)}, "
                        f"the parameter {tuple(param.shape)}"
                    )
        self.steps = [int(step) for step in state_dict["steps"]]
        for name, moments in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            for index, param in enumerate(self.params):
                moment = state_dict[name][index]
                moments[index] = None if moment is None else moment.to(param).clone()


def _from_torch_adam(state_dict: dict[str, Any], num_params: int) -> dict[str, Any]:
    """``torch.optim.Adam``'s state dict (one group, no AMSGrad) as ``DenseAdam``'s."""
    groups = state_dict["param_groups"]
    indices = [index for group in groups for index in group["params"]]
    if len(groups) != 1 or indices != list(range(num_params)):
        raise ValueError(
            f"a torch.optim.Adam state loads into DenseAdam with one group over the same "
            f"{num_params} parameters, got {len(groups)} groups over parameters {indices}"
        )
    if groups[0].get("amsgrad"):
        raise ValueError("a torch.optim.Adam state with amsgrad does not load into DenseAdam")
    per_param = [state_dict["state"].get(index, {}) for index in indices]
    return {
        "steps": [int(state["step"]) if state else 0 for state in per_param],
        "exp_avg": [state.get("exp_avg") for state in per_param],
        "exp_avg_sq": [state.get("exp_avg_sq") for state in per_param],
    }


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
