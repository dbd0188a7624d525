"""Stage-1 pretraining models (METHOD 1.2): MF and its NCF-style MLP variant (CADC-MLP).

Both keep two tables ``U`` (users) and ``V`` (items) with rows of ``d + 1`` elements, the
last element being the row's bias, and a global bias ``b``. Their parameters are split
into three sides for the alternating optimisation (``training.mf``): ``user`` (U), ``item``
(V) and ``shared`` (b and, for CADC-MLP, the interaction network).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from cadc_ray.models.pretrained import PretrainedTables

MFSide = Literal["user", "item", "shared"]

_INIT_STD = 0.1
"""Std of the initial MF rows: large enough to leave the symmetric saddle at 0 quickly."""


class FactorTables(nn.Module):
    """U (num_users, d+1), V (num_items, d+1) and the global bias b, shared by both models."""

    def __init__(self, num_users: int, num_items: int, dim: int, pretrainer: str):
        super().__init__()
        if num_users < 1 or num_items < 1 or dim < 1:
            raise ValueError(
                f"num_users, num_items and dim must be >= 1, got {num_users}, {num_items}, {dim}"
            )
        self.dim = dim
        self.pretrainer = pretrainer
        self.user_table = nn.Embedding(num_users, dim + 1)
        self.item_table = nn.Embedding(num_items, dim + 1)
        self.global_bias = nn.Parameter(torch.zeros(()))
        with torch.no_grad():
            self.user_table.weight.normal_(0.0, _INIT_STD)
            self.item_table.weight.normal_(0.0, _INIT_STD)
            # Biases start at 0: the factors carry the signal, the biases learn popularity.
            self.user_table.weight[:, dim] = 0.0
            self.item_table.weight[:, dim] = 0.0

    def export_tables(self) -> PretrainedTables:
        """Copies of U and V as float32 numpy arrays (num_*, d+1), last column = bias; and b."""
        return PretrainedTables(
            user=np.ascontiguousarray(
                self.user_table.weight.detach().cpu().numpy(), dtype=np.float32
            ).copy(),
            item=np.ascontiguousarray(
                self.item_table.weight.detach().cpu().numpy(), dtype=np.float32
            ).copy(),
            pretrainer=self.pretrainer,
            global_bias=float(self.global_bias.detach().cpu()),
        )

    def side_parameters(self) -> dict[MFSide, list[torch.Tensor]]:
        """Parameters per alternation side: U, V, and everything else (b, MLP)."""
        sides: dict[MFSide, list[torch.Tensor]] = {
            "user": [self.user_table.weight],
            "item": [self.item_table.weight],
        }
        owned = {id(p) for group in sides.values() for p in group}
        sides["shared"] = [p for p in self.parameters() if id(p) not in owned]
        return sides


class MatrixFactorization(FactorTables):
    """logit(u, i) = u[:d] . v[:d] + u[d] + v[d] + b   (sigmoid of it is the score)."""

    def __init__(self, num_users: int, num_items: int, dim: int):
        super().__init__(num_users, num_items, dim, pretrainer="mf")

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B,), items (B,) int64 -> logits (B,)."""
        u = self.user_table(users)  # (B, d+1)
        v = self.item_table(items)  # (B, d+1)
        d = self.dim
        return (u[:, :d] * v[:, :d]).sum(dim=1) + u[:, d] + v[:, d] + self.global_bias

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """users (B,) -> logits (B, num_items) for full-ranking evaluation."""
        u = self.user_table(users)  # (B, d+1)
        v = self.item_table.weight  # (I, d+1)
        d = self.dim
        return u[:, :d] @ v[:, :d].T + u[:, d : d + 1] + v[:, d].unsqueeze(0) + self.global_bias


class MLPMatrixFactorization(FactorTables):
    """CADC-MLP: logit(u, i) = MLP([u[:d]; v[:d]]) + u[d] + v[d] + b (NCF-style interaction).

    The bias elements stay additive biases so the exported rows mean the same as MF's.
    """

    def __init__(self, num_users: int, num_items: int, dim: int, hidden: Sequence[int] = (128, 64)):
        super().__init__(num_users, num_items, dim, pretrainer="mf_mlp")
        layers: list[nn.Module] = []
        width = 2 * dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.interaction = nn.Sequential(*layers)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B,), items (B,) int64 -> logits (B,)."""
        u = self.user_table(users)  # (B, d+1)
        v = self.item_table(items)  # (B, d+1)
        d = self.dim
        pair = torch.cat([u[:, :d], v[:, :d]], dim=1)  # (B, 2d)
        return self.interaction(pair).squeeze(1) + u[:, d] + v[:, d] + self.global_bias

    def score_users(self, users: torch.Tensor, users_per_chunk: int = 16) -> torch.Tensor:
        """users (B,) -> logits (B, num_items) for full-ranking evaluation.

        The first layer is linear in [u; v], so it is split into a user part (B, h) and an
        item part (I, h) computed once; the rest of the MLP runs on chunks of
        ``users_per_chunk * num_items`` pairs to bound memory.
        """
        first = self.interaction[0]
        assert isinstance(first, nn.Linear)
        d = self.dim
        u = self.user_table(users)  # (B, d+1)
        v = self.item_table.weight  # (I, d+1)
        user_part = u[:, :d] @ first.weight[:, :d].T + first.bias  # (B, h)
        item_part = v[:, :d] @ first.weight[:, d:].T  # (I, h)
        rest = self.interaction[1:]
        chunks = []
        for start in range(0, users.shape[0], users_per_chunk):
            hidden = user_part[start : start + users_per_chunk, None, :] + item_part[None, :, :]
            chunks.append(rest(hidden).squeeze(-1))  # (chunk, I)
        if not chunks:
            return v.new_zeros((0, v.shape[0]))
        interaction = torch.cat(chunks)  # (B, I)
        return interaction + u[:, d : d + 1] + v[:, d].unsqueeze(0) + self.global_bias
