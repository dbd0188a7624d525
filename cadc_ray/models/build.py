"""Builds the stage-2 network: a ``TwoTower`` or, for ``residual``, a ``ResidualTwoTower``.

It sits above ``two_tower`` and ``residual``: the residual model subclasses ``TwoTower``, so a
builder inside ``two_tower`` would have to import ``residual`` back (an import cycle).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from cadc_ray.config import IntegrationName, ModelConfig
from cadc_ray.data.features import EntityFeatures
from cadc_ray.models.embeddings import (
    FrozenIdEmbedding,
    MappedFrozenIdEmbedding,
    build_id_embedding,
    pretrained_tensor,
)
from cadc_ray.models.id_tables import (
    RobeArray,
    TableContext,
    build_compressed_id_embedding,
    fit_to_rows,
    is_compressed,
    robe_array_size,
)
from cadc_ray.models.pretrained import PretrainedTables
from cadc_ray.models.residual import residual_two_tower
from cadc_ray.models.two_tower import FeatureEncoder, Tower, TwoTower

logger = logging.getLogger(__name__)


def _entity_table(
    tables: PretrainedTables | None, entity: str, num_ids: int
) -> torch.Tensor | None:
    if tables is None:
        return None
    array = tables.user if entity == "user" else tables.item
    if array.shape[0] != num_ids:
        raise ValueError(
            f"pretrained {tables.pretrainer} {entity} table has {array.shape[0]} rows, "
            f"the dataset has {num_ids} {entity}s"
        )
    return pretrained_tensor(np.asarray(array, dtype=np.float32))


def build_two_tower(
    model_config: ModelConfig,
    num_users: int,
    num_items: int,
    user_features: EntityFeatures | None,
    item_features: EntityFeatures | None,
    pretrained: PretrainedTables | None,
    integration: IntegrationName,
    id_counts: Mapping[str, np.ndarray] | None = None,
) -> TwoTower:
    """The TTNN of METHOD 1.3. ``integration`` is already resolved from ``auto``.

    ``use_features=False`` (or ``None`` features) gives id-only towers. Frozen pretrained
    tables are wrapped zero-copy; ``init`` copies them. ``model_config.id_table`` may
    compress each entity's table (``models.id_tables``); ``id_counts`` ("user" / "item" ->
    (num_ids,) training-data counts) feeds the frequency-aware kinds.
    """
    if integration == "auto":
        raise ValueError("integration 'auto' must be resolved (methods.resolved_integration) first")
    if integration == "none" and pretrained is not None:
        raise ValueError("integration 'none' must not receive pretrained tables")
    if integration != "none" and pretrained is None:
        raise ValueError(f"integration {integration!r} needs pretrained tables, got None")

    # One tensor per table, wrapped once (zero-copy) whichever module reads it.
    tables = {
        "user": _entity_table(pretrained, "user", num_users),
        "item": _entity_table(pretrained, "item", num_items),
    }
    entity_sizes = {"user": num_users, "item": num_items}
    # ROBE: one flat array for every ROBE table of the model, built once and injected.
    robe_size = robe_array_size(model_config.id_table, entity_sizes, model_config.embedding_dim)
    robe_array = RobeArray(robe_size) if robe_size > 0 else None
    to_fit: list[tuple[nn.Module, torch.Tensor]] = []  # `init` compressed tables, fitted below
    init_steps = 0

    def id_embedding_of(entity: str) -> nn.Module:
        table_config = model_config.id_table.for_entity(entity)
        if not is_compressed(table_config, entity_sizes[entity]):
            module = build_id_embedding(
                integration,
                entity_sizes[entity],
                model_config.embedding_dim,
                tables[entity],
                model_config.adapter_hidden,
            )
            if model_config.frozen_rows == "raw":
                return module
            if not isinstance(module, FrozenIdEmbedding):
                raise ValueError(
                    f"model.frozen_rows {model_config.frozen_rows!r} needs frozen full rows "
                    f"(init_frz, residual), got integration {integration!r}"
                )
            return MappedFrozenIdEmbedding(module.frozen_weight, model_config.frozen_rows)
        pretrained_rows = tables[entity]
        context = TableContext(
            config=table_config,
            num_ids=entity_sizes[entity],
            embedding_dim=model_config.embedding_dim,
            seed=table_config.seed * 2 + (0 if entity == "user" else 1),
            counts=None if id_counts is None else id_counts.get(entity),
            teacher=None if pretrained_rows is None else pretrained_rows.numpy(),
            robe_array=robe_array,
        )
        module = build_compressed_id_embedding(integration, context, pretrained_rows, fit=False)
        if integration == "init" and pretrained_rows is not None:
            nonlocal init_steps
            to_fit.append((module, pretrained_rows))
            init_steps = max(init_steps, table_config.init_steps)
        return module

    def tower(entity: str, num_ids: int, features: EntityFeatures | None) -> Tower:
        if features is None or not model_config.use_features:
            features = EntityFeatures.empty(num_ids)
        if features.num_entities != num_ids:
            raise ValueError(
                f"{entity} features have {features.num_entities} rows, the dataset has {num_ids} {entity}s"
            )
        id_embedding = id_embedding_of(entity)
        return Tower(
            id_embedding,
            FeatureEncoder(features, model_config.feature_embedding_dim),
            model_config.tower_hidden,
            model_config.output_dim,
            dedup=model_config.dedup,
        )

    user_tower = tower("user", num_users, user_features)
    item_tower = tower("item", num_items, item_features)
    if to_fit:  # together: ROBE tables share one array (models.id_tables.fit_to_rows)
        errors = fit_to_rows(to_fit, init_steps)
        logger.info("compressed id tables fitted to the pretrained rows: mse %s", errors)
    model: TwoTower
    if integration == "residual":
        assert pretrained is not None  # checked above
        model = residual_two_tower(user_tower, item_tower, pretrained)
    else:
        model = TwoTower(user_tower, item_tower)
    return model
