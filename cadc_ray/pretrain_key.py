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


def pretrain_key(config: ExperimentConfig) -> str | None:
    """A stable id of what determines the pretrained tables; None for non-pretraining methods.

    (dataset and its preparation, pretrainer variant, every ``pretrain.*`` field, seed.)
    """
    pretrainer = METHODS[config.method].pretrainer
    if pretrainer is None:
        return None
    data = {k: v for k, v in to_dict(config.data).items() if k not in NOT_PRETRAINING_DATA_KEYS}
    identity = {
        "pretrainer": pretrainer,
        "pretrain": to_dict(config.pretrain),
        "data": data,
        "seed": config.seed,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"{pretrainer}-d{config.pretrain.embedding_dim}-{digest}"
