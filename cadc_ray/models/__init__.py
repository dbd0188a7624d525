"""nn.Modules only: id embeddings (+ integration techniques), MF, two-tower."""

from cadc_ray.models.build import build_two_tower
from cadc_ray.models.embeddings import (
    FROZEN_TABLE_BUFFER,
    INTEGRATION_TECHNIQUES,
    IdEmbedding,
    build_id_embedding,
    count_parameters,
    frozen_table_names,
    pretrained_tensor,
)
from cadc_ray.models.id_tables import ID_TABLE_KINDS, id_table_compression, model_bytes
from cadc_ray.models.mf import FactorTables, MatrixFactorization, MFSide, MLPMatrixFactorization
from cadc_ray.models.pretrained import PretrainedTables
from cadc_ray.models.two_tower import (
    FeatureEncoder,
    Tower,
    TwoTower,
)

__all__ = [
    "FROZEN_TABLE_BUFFER",
    "ID_TABLE_KINDS",
    "INTEGRATION_TECHNIQUES",
    "FactorTables",
    "FeatureEncoder",
    "IdEmbedding",
    "MFSide",
    "MLPMatrixFactorization",
    "MatrixFactorization",
    "PretrainedTables",
    "Tower",
    "TwoTower",
    "build_id_embedding",
    "build_two_tower",
    "count_parameters",
    "frozen_table_names",
    "id_table_compression",
    "model_bytes",
    "pretrained_tensor",
]
