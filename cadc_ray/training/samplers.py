"""Negative samplers: ``.sample(num_positives, num_negatives, generator) -> (B, K) int64``.

Negatives are drawn with replacement and are not filtered against the user's positives:
with thousands of items an accidental hit has probability ~ q(i) per draw, and filtering
would need the user's history on every worker. This is the usual choice for sampled BCE.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from cadc_ray.config import NegativeSamplerName

POPULARITY_EXPONENT = 0.75
"""word2vec's unigram^0.75: flattens the popularity distribution while keeping its order."""


class NegativeSampler(Protocol):
    num_items: int

    def sample(
        self, num_positives: int, num_negatives: int, generator: torch.Generator
    ) -> torch.Tensor: ...


class UniformNegativeSampler:
    """Every item with probability 1 / num_items."""

    def __init__(self, num_items: int):
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = num_items

    def sample(
        self, num_positives: int, num_negatives: int, generator: torch.Generator
    ) -> torch.Tensor:
        """-> (num_positives, num_negatives) int64 item ids, on the generator's device."""
        return torch.randint(
            0,
            self.num_items,
            (num_positives, num_negatives),
            generator=generator,
            dtype=torch.int64,
            device=generator.device,
        )


class PopularityNegativeSampler:
    """Item i with probability proportional to count(i) ** exponent (+1 smoothing).

    ``count`` is the item's frequency in the training stream; items never seen get count 1
    so every item can be drawn.
    """

    def __init__(self, item_counts: np.ndarray, exponent: float = POPULARITY_EXPONENT):
        counts = np.asarray(item_counts, dtype=np.float64)
        if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
            raise ValueError("item_counts must be a non-empty 1-D array of non-negative counts")
        self.num_items = int(counts.size)
        weights = np.maximum(counts, 1.0) ** exponent
        self.probabilities = torch.from_numpy(weights / weights.sum())  # (I,) float64
        # One copy per device, made once: a per-step host-to-device copy would sync a GPU.
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def sample(
        self, num_positives: int, num_negatives: int, generator: torch.Generator
    ) -> torch.Tensor:
        """-> (num_positives, num_negatives) int64 item ids, on the generator's device."""
        total = num_positives * num_negatives
        if total == 0:
            return torch.zeros(
                (num_positives, num_negatives), dtype=torch.int64, device=generator.device
            )
        probabilities = self._on_device.get(generator.device)
        if probabilities is None:
            probabilities = self._on_device.setdefault(
                generator.device, self.probabilities.to(generator.device)
            )
        draws = torch.multinomial(probabilities, total, replacement=True, generator=generator)
        return draws.view(num_positives, num_negatives)


def build_negative_sampler(
    name: NegativeSamplerName, num_items: int, item_counts: np.ndarray | None = None
) -> NegativeSampler:
    """``uniform`` or ``popularity`` (the latter needs the training stream's item counts,
    ``(num_items,)``: ``data.InteractionCounts.items``)."""
    if name == "uniform":
        return UniformNegativeSampler(num_items)
    if name == "popularity":
        if item_counts is None:
            raise ValueError("negative_sampler 'popularity' needs the training item counts")
        if np.asarray(item_counts).shape != (num_items,):
            raise ValueError(
                f"item_counts must have shape ({num_items},), got {np.asarray(item_counts).shape}"
            )
        return PopularityNegativeSampler(item_counts)
    raise ValueError(f"unknown negative_sampler {name!r} (known: uniform, popularity)")
