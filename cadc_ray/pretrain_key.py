"""The identity of a stage-1 result: which configs can share one pretrained teacher.

Used by ``cadc_ray.run`` (its optional pretrain cache) and by the sweep (one pretraining
per distinct key, before the trials), so it sits below both.
"""

from __future__ import annotations

import hashlib
import json

from cadc_ray.config import ExperimentConfig, to_dict
from cadc_ray.methods import METHODS

# DataConfig fields that pick the stage-2 sample: stage 1 trains on all of D_full.
NOT_PRETRAINING_DATA_KEYS = frozenset({"filter_ratio", "sample_seed"})
VALIDATION_FIELDS = ("eval_every", "early_stopping_patience")
"""``pretrain.*`` fields that choose the teacher's epoch by validation (0: off)."""
EPOCH_PRETRAINERS = ("mf", "mf_mlp")
"""The pretrainers that train by epoch and so can be validated (ALS ignores the fields)."""


def pretrain_key(config: ExperimentConfig) -> str | None:
    """A stable id of what determines the pretrained tables; None for non-pretraining methods.

    (dataset and its preparation, pretrainer variant, every ``pretrain.*`` field, seed; with
    ``pretrain.eval_every`` > 0 for an MF / MF-MLP teacher also what picks the validation
    epoch: the selection metric and the validation users.) The validation fields are left
    out when they are off or ignored (ALS), so a key stays what it was before they existed.
    """
    pretrainer = METHODS[config.method].pretrainer
    if pretrainer is None:
        return None
    data = {k: v for k, v in to_dict(config.data).items() if k not in NOT_PRETRAINING_DATA_KEYS}
    pretrain = to_dict(config.pretrain)
    identity: dict[str, object] = {
        "pretrainer": pretrainer,
        "pretrain": pretrain,
        "data": data,
        "seed": config.seed,
    }
    if config.pretrain.eval_every == 0 or pretrainer not in EPOCH_PRETRAINERS:
        for name in VALIDATION_FIELDS:
            del pretrain[name]
    else:
        identity["selection"] = {
            "metric": config.eval.selection_metric,
            "validation_users": config.eval.validation_users,
            "validation_seed": config.eval.validation_seed,
        }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"{pretrainer}-d{config.pretrain.embedding_dim}-{digest}"
