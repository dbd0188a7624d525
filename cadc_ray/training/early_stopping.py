"""Early stopping on a validation metric (METHOD 1.5: the validation metric picks the epoch)."""

from __future__ import annotations

import math
from typing import Literal


class EarlyStopping:
    """Tracks the best value of a metric and says when ``patience`` epochs passed without gain.

    ``patience=0`` disables stopping (the best epoch is still tracked). ``mode='max'`` for
    HR/NDCG; an improvement must be strictly better (ties keep the earlier epoch).
    """

    def __init__(self, patience: int, mode: Literal["max", "min"] = "max"):
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.patience = patience
        self.mode = mode
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.epochs_without_improvement = 0

    def update(self, epoch: int, value: float) -> bool:
        """Records ``value`` for ``epoch``; returns True when it is the new best."""
        if math.isnan(value):
            raise ValueError(f"epoch {epoch}: validation metric is NaN")
        better = self.best_value is None or (
            value > self.best_value if self.mode == "max" else value < self.best_value
        )
        if better:
            self.best_value = value
            self.best_epoch = epoch
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.epochs_without_improvement >= self.patience
