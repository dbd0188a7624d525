"""The paper's alternating scheme for MF pretraining (METHOD 1.2).

Item embeddings stay fixed while user embeddings update, then the reverse. Each side has
its own Adam, so a fixed side is not stepped: its rows do not move and its Adam moments and
step count stay as they were. The ``shared`` parameters (global bias, CADC-MLP's interaction
network) are small and belong to neither side: they update on every step, in both phases,
with their own Adam (freezing them half the time would only slow them down).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from cadc_ray.adam import DenseAdam
from cadc_ray.config import AlternationName
from cadc_ray.models.mf import FactorTables, MFSide
from cadc_ray.training.optim import Optimizer

Phase = Literal["user", "item", "both"]


def alternation_phase(schedule: AlternationName, epoch: int, batch_index: int) -> Phase:
    """Which table updates now. Pure function of the schedule and the position.

    ``epoch``: users on even epochs (0, 2, ...), items on odd ones. ``batch``: users on even
    batches of each epoch, items on odd ones (restarting at user every epoch). ``none``: both.
    """
    if epoch < 0 or batch_index < 0:
        raise ValueError(f"epoch and batch_index must be >= 0, got {epoch}, {batch_index}")
    if schedule == "none":
        return "both"
    if schedule == "epoch":
        return "user" if epoch % 2 == 0 else "item"
    if schedule == "batch":
        return "user" if batch_index % 2 == 0 else "item"
    raise ValueError(f"unknown alternation schedule {schedule!r} (known: epoch, batch, none)")


@dataclass
class MFOptimizers:
    """One Adam per side (``user``, ``item``, ``shared``): ``DenseAdam`` (``make_mf_optimizers``)
    or any ``Optimizer``."""

    user: Optimizer
    item: Optimizer
    shared: Optimizer | None  # None when the model has no shared parameters

    def all(self) -> list[Optimizer]:
        return [opt for opt in (self.user, self.item, self.shared) if opt is not None]

    def active(self, phase: Phase) -> list[Optimizer]:
        """The optimizers that step in ``phase`` (shared always does)."""
        sides = {"user": [self.user], "item": [self.item], "both": [self.user, self.item]}[phase]
        return sides + ([self.shared] if self.shared is not None else [])

    def state_dict(self) -> dict[str, object]:
        return {name: opt.state_dict() for name, opt in self._named().items()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        for name, opt in self._named().items():
            opt.load_state_dict(state[name])  # type: ignore[arg-type]

    def _named(self) -> dict[MFSide, Optimizer]:
        named: dict[MFSide, Optimizer] = {"user": self.user, "item": self.item}
        if self.shared is not None:
            named["shared"] = self.shared
        return named


def make_mf_optimizers(
    model: FactorTables,
    lr: float,
    weight_decay: float,
    adam_class: Callable[..., Optimizer] = DenseAdam,
) -> MFOptimizers:
    """Adam per side of an (unwrapped) MF / CADC-MLP model: ``adam_class(parameters, lr=,
    weight_decay=)``, ``DenseAdam`` (the benchmarks pass ``torch.optim.Adam`` for the plain
    torch loop)."""
    sides = model.side_parameters()

    def adam(parameters: list[torch.Tensor]) -> Optimizer:
        return adam_class(parameters, lr=lr, weight_decay=weight_decay)

    return MFOptimizers(
        user=adam(sides["user"]),
        item=adam(sides["item"]),
        shared=adam(sides["shared"]) if sides["shared"] else None,
    )
