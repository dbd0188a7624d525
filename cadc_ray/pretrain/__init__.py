"""Pretrainers that run outside torch (ALS through ``implicit``)."""

from cadc_ray.pretrain.als import fit_als, interaction_matrix

__all__ = ["fit_als", "interaction_matrix"]
