"""Data layer: readers, synthetic generator, prepared layout, split and sampling.

Ray is imported only inside the functions that need it (``materialize_split``,
``sample_dataset``, ``materialize_sample``), so workers can use the plain readers cheaply.
"""

from cadc_ray.data.errors import DataError
from cadc_ray.data.features import EntityFeatures
from cadc_ray.data.known import KnownPositives
from cadc_ray.data.layout import FeatureSpec, Manifest, load_entity_features, load_id_map
from cadc_ray.data.pairs import (
    HeldOutSets,
    InteractionCounts,
    count_interactions,
    known_positives,
    open_known_positives,
    read_held_out,
    read_pairs,
)
from cadc_ray.data.prepare import prepare_dataset
from cadc_ray.data.sampling import materialize_sample, sample_dataset, sample_mask
from cadc_ray.data.split import SplitPaths, leave_last_two_out_roles, materialize_split

__all__ = [
    "DataError",
    "EntityFeatures",
    "FeatureSpec",
    "HeldOutSets",
    "InteractionCounts",
    "KnownPositives",
    "Manifest",
    "SplitPaths",
    "count_interactions",
    "known_positives",
    "leave_last_two_out_roles",
    "load_entity_features",
    "load_id_map",
    "materialize_sample",
    "materialize_split",
    "open_known_positives",
    "prepare_dataset",
    "read_held_out",
    "read_pairs",
    "sample_dataset",
    "sample_mask",
]
