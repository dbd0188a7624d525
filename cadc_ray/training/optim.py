"""Optimizers over trainable parameters only (frozen tables never get Adam state)."""

from __future__ import annotations

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
