"""Stage-2 two-tower network (METHOD 1.3) with RecD batch deduplication (METHOD 3).

A tower is an MLP over ``[id embedding; feature embeddings]``. Features are stored once per
entity (buffers of ``EntityFeatures``) and gathered at batch time. With ``dedup=True`` a
tower runs once per *unique* id of the batch and expands the result with the inverse index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from cadc_ray.data.features import EntityFeatures


class FeatureEncoder(nn.Module):
    """Per-entity features -> (B, F * E + E') embeddings, E = feature_embedding_dim.

    Categorical column f: its own ``nn.Embedding(cardinality_f, E)``. Multi-hot block (M flags):
    the mean of the active flags' embeddings, i.e. a bias-free ``Linear(M, E)`` applied to the
    flags divided by their count (an entity with no active flag gets zeros).
    """

    categorical: torch.Tensor
    multi_hot_mean: torch.Tensor

    def __init__(self, features: EntityFeatures, feature_embedding_dim: int):
        super().__init__()
        categorical = np.asarray(features.categorical, dtype=np.int64)
        multi_hot = np.asarray(features.multi_hot, dtype=np.float32)
        if (
            categorical.ndim != 2
            or multi_hot.ndim != 2
            or multi_hot.shape[0] != categorical.shape[0]
        ):
            raise ValueError(
                f"entity features: categorical {categorical.shape} and multi_hot {multi_hot.shape} "
                "must be 2-D with one row per entity"
            )
        if categorical.shape[1] != len(features.categorical_cardinalities):
            raise ValueError(
                f"entity features: {categorical.shape[1]} categorical columns but "
                f"{len(features.categorical_cardinalities)} cardinalities"
            )
        for column, (name, cardinality) in enumerate(
            zip(features.categorical_names, features.categorical_cardinalities, strict=False)
        ):
            values = categorical[:, column]
            if values.size and (values.min() < 0 or values.max() >= cardinality):
                raise ValueError(
                    f"entity feature {name!r}: codes must lie in [0, {cardinality}), "
                    f"got [{values.min()}, {values.max()}]"
                )
        counts = multi_hot.sum(axis=1, keepdims=True)
        mean_weights = multi_hot / np.maximum(counts, 1.0)
        # Non-persistent buffers: data, not state; rebuilt from the prepared dataset.
        self.register_buffer("categorical", torch.from_numpy(categorical.copy()), persistent=False)
        self.register_buffer(
            "multi_hot_mean", torch.from_numpy(mean_weights.astype(np.float32)), persistent=False
        )
        self.categorical_embeddings = nn.ModuleList(
            nn.Embedding(cardinality, feature_embedding_dim)
            for cardinality in features.categorical_cardinalities
        )
        num_flags = multi_hot.shape[1]
        self.multi_hot_embedding = (
            nn.Linear(num_flags, feature_embedding_dim, bias=False) if num_flags > 0 else None
        )
        self.output_dim = feature_embedding_dim * (
            len(self.categorical_embeddings) + (1 if num_flags > 0 else 0)
        )
        self.num_entities = int(categorical.shape[0])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> (B, output_dim); (B, 0) for an entity type without features."""
        parts = [
            embedding(self.categorical[ids, column])
            for column, embedding in enumerate(self.categorical_embeddings)
        ]
        if self.multi_hot_embedding is not None:
            parts.append(self.multi_hot_embedding(self.multi_hot_mean[ids]))
        if not parts:
            return self.multi_hot_mean.new_zeros((ids.shape[0], 0))
        return torch.cat(parts, dim=1)


def _mlp(input_dim: int, hidden: Sequence[int], output_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = input_dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


class Tower(nn.Module):
    """MLP over [id embedding (D); feature embeddings] -> (B, output_dim)."""

    def __init__(
        self,
        id_embedding: nn.Module,
        features: FeatureEncoder,
        hidden: Sequence[int],
        output_dim: int,
        dedup: bool = True,
    ):
        super().__init__()
        embedding_dim = getattr(id_embedding, "embedding_dim", None)
        if not isinstance(embedding_dim, int):
            raise TypeError(
                f"id embedding {type(id_embedding).__name__} must have an int embedding_dim attribute"
            )
        self.id_embedding = id_embedding
        self.features = features
        self.mlp = _mlp(embedding_dim + features.output_dim, hidden, output_dim)
        self.output_dim = output_dim
        self.dedup = dedup
        self.num_entities = features.num_entities

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """The tower on every row of ``ids`` (B,) -> (B, output_dim), no deduplication."""
        inputs = torch.cat([self.id_embedding(ids), self.features(ids)], dim=1)
        output: torch.Tensor = self.mlp(inputs)
        return output

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> (B, output_dim); with ``dedup`` the MLP runs once per unique id (RecD)."""
        if not self.dedup:
            return self.encode(ids)
        unique_ids, inverse = torch.unique(ids, return_inverse=True)  # (U,), (B,)
        return self.encode(unique_ids).index_select(0, inverse)  # (U, o) -> (B, o)

    def encode_all(self, chunk_size: int = 65536) -> torch.Tensor:
        """Every entity once -> (num_entities, output_dim), in chunks to bound memory."""
        device = self.features.categorical.device
        chunks = [
            self.encode(
                torch.arange(start, min(start + chunk_size, self.num_entities), device=device)
            )
            for start in range(0, self.num_entities, chunk_size)
        ]
        return torch.cat(chunks)


class TwoTower(nn.Module):
    """logit(u, i) = dot(user_tower(u), item_tower(i)); sigmoid(logit) is the score."""

    def __init__(self, user_tower: Tower, item_tower: Tower):
        super().__init__()
        if user_tower.output_dim != item_tower.output_dim:
            raise ValueError(
                f"tower output dims differ: user {user_tower.output_dim} != item {item_tower.output_dim}"
            )
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.num_items = item_tower.num_entities
        # ``forward`` takes (B, M) candidate lists (``training.loops.sampled_logits``); a
        # subclass that overrides ``forward`` has to opt in again.
        self.candidate_list_forward = type(self).forward is TwoTower.forward

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B,), items (B,) int64 -> logits (B,); or items (B, M) -> logits (B, M).

        With (B, M) candidate lists (a positive and its negatives) the user tower runs on
        the B users once instead of on B * M repeated ones.
        """
        if items.ndim == 2:
            user_out = self.user_tower(users)  # (B, o)
            item_out = self.item_tower(items.reshape(-1)).view(*items.shape, -1)  # (B, M, o)
            return torch.bmm(item_out, user_out.unsqueeze(2)).squeeze(2)
        return (self.user_tower(users) * self.item_tower(items)).sum(dim=1)

    def item_outputs(self) -> torch.Tensor:
        """One item-tower pass over all items -> (num_items, output_dim), without gradient."""
        with torch.no_grad():
            return self.item_tower.encode_all()

    def score_users(
        self, users: torch.Tensor, item_outputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """users (B,) -> logits (B, num_items). Pass ``item_outputs`` to reuse one item pass."""
        items = self.item_outputs() if item_outputs is None else item_outputs
        with torch.no_grad():
            return self.user_tower(users) @ items.T

    def ranking_scorer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A ``score_users`` for one evaluation call: the item tower runs once, here.

        Build a new scorer for every evaluation: the cached item outputs go stale as soon
        as the model trains again.
        """
        items = self.item_outputs()
        return lambda users: self.score_users(users, items)
