"""Self-describing training checkpoints: one ``state.pt`` per checkpoint directory.

The file is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(..., weights_only=True)`` (no pickled objects, no code execution).
It carries everything a resume needs (model, optimizers, early stopping, history, RNG)
and everything a reader needs to know what it is (config, versions, seed, epoch).

Written to a temporary name and renamed: an interrupted save never leaves a half file.
"""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cadc_ray.atomic import write_atomic

CHECKPOINT_FILE = "state.pt"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format_version",
    "stage",
    "config",
    "versions",
    "seed",
    "epoch",
    "model",
    "optimizers",
    "history",
)


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, unreadable or of another format."""


def software_versions() -> dict[str, str]:
    """Versions that decide whether a checkpoint or result can be reproduced."""
    import ray

    import cadc_ray

    # str(): torch.__version__ is a str subclass that weights_only loading refuses.
    return {
        "cadc_ray": str(cadc_ray.__version__),
        "torch": str(torch.__version__),
        "ray": str(ray.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def capture_rng_state() -> dict[str, Any]:
    """The process-global RNG states (torch, numpy, random) as weights_only-safe values."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    python_version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_position": int(position),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached_gaussian),
        "python_version": int(python_version),
        "python_state": list(python_state),
        "python_gauss": python_gauss,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_position"],
            state["numpy_has_gauss"],
            state["numpy_cached_gaussian"],
        )
    )
    random.setstate((state["python_version"], tuple(state["python_state"]), state["python_gauss"]))


def save_checkpoint(directory: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Writes ``state`` to ``directory/state.pt`` atomically; returns the file's path.

    ``state`` must hold :data:`REQUIRED_KEYS` (see :func:`cadc_ray.runtime.worker`'s
    builders) and only weights_only-loadable values.
    """
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint state lacks {missing}")
    return write_atomic(
        Path(directory) / CHECKPOINT_FILE, lambda temporary: torch.save(state, temporary)
    )


def load_checkpoint(
    directory: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Reads ``directory/state.pt`` with ``weights_only=True``; checks format and keys."""
    file = Path(directory) / CHECKPOINT_FILE
    if not file.is_file():
        raise CheckpointError(f"{file}: checkpoint file not found")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt/unsafe files
        reason = [line for line in str(error).splitlines() if "WeightsUnpickler" in line]
        raise CheckpointError(
            f"{file}: cannot be loaded with weights_only=True: {(reason or [str(error)])[0]}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a dict, got {type(state).__name__}")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: format_version {state.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{file}: lacks {missing}")
    return state


def check_resumable(state: dict[str, Any], stage: str, config_dict: dict[str, Any]) -> None:
    """A checkpoint resumes only the stage and the config that wrote it."""
    if state["stage"] != stage:
        raise CheckpointError(f"checkpoint of stage {state['stage']!r} cannot resume {stage!r}")
    if state["config"] != config_dict:
        changed = sorted(
            key
            for key in set(state["config"]) | set(config_dict)
            if state["config"].get(key) != config_dict.get(key)
        )
        raise CheckpointError(
            f"the checkpoint to resume was written with another config (sections {changed} "
            "differ); use a new run name or storage path"
        )
