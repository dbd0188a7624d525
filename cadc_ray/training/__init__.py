"""Training maths: losses, negative samplers, plain-torch epoch loops, early stopping."""

from cadc_ray.adam import DenseAdam, RowAdam
from cadc_ray.training.alternation import (
    MFOptimizers,
    Phase,
    alternation_phase,
    make_mf_optimizers,
)
from cadc_ray.training.early_stopping import EarlyStopping
from cadc_ray.training.fused_mf import FusedMFTrainer
from cadc_ray.training.loops import (
    sampled_logits,
    train_mf_epoch,
    train_mf_epoch_fused,
    train_two_tower_epoch,
)
from cadc_ray.training.losses import bce_with_sampled_negatives, logq_correct
from cadc_ray.training.optim import Optimizer, make_optimizer, trainable_parameters
from cadc_ray.training.samplers import (
    NegativeSampler,
    PopularityNegativeSampler,
    UniformNegativeSampler,
    build_negative_sampler,
)

__all__ = [
    "DenseAdam",
    "EarlyStopping",
    "FusedMFTrainer",
    "MFOptimizers",
    "NegativeSampler",
    "Optimizer",
    "Phase",
    "PopularityNegativeSampler",
    "RowAdam",
    "UniformNegativeSampler",
    "alternation_phase",
    "bce_with_sampled_negatives",
    "build_negative_sampler",
    "logq_correct",
    "make_mf_optimizers",
    "make_optimizer",
    "sampled_logits",
    "train_mf_epoch",
    "train_mf_epoch_fused",
    "train_two_tower_epoch",
    "trainable_parameters",
]
