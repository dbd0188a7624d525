"""Building and running a Ray Train ``TorchTrainer`` for one stage (shared by both stages)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cadc_ray.config import ExperimentConfig
from cadc_ray.storage import is_uri

if TYPE_CHECKING:
    from cadc_ray.runtime.ingest import TrainingInput

logger = logging.getLogger(__name__)

CHECKPOINTS_TO_KEEP = 2
"""Train keeps the two latest checkpoints: the latest is enough to resume, the one
before covers a crash while the latest is being persisted."""

LOCAL_CHECKPOINT_DIR = "local_checkpoints"


def train_storage_path(storage_path: str | None) -> str | None:
    """Ray Train's ``RunConfig.storage_path``: URIs unchanged, local paths absolute."""
    if storage_path is None or is_uri(storage_path):
        return storage_path
    return str(Path(storage_path).resolve())


def local_checkpoint_root(storage_path: str | None, run_name: str) -> str | None:
    """Where local mode (``num_workers=0``, which persists nothing itself) keeps checkpoints.

    Local mode writes with plain file I/O, so with a URI storage it has no checkpoint
    folder (a killed local-mode run restarts from scratch; worker groups still persist).
    """
    if storage_path is None or is_uri(storage_path):
        return None
    return str(Path(storage_path) / run_name / LOCAL_CHECKPOINT_DIR)


def stage_loop_config(
    config: ExperimentConfig, *, run_name: str, storage_path: str | None
) -> dict[str, Any]:
    """The ``train_loop_config`` entries every stage reads (``runtime.stage.start_worker_stage``
    and ``train_environment``): the config as a plain dict, the run's name (gauges) and
    where local mode writes its checkpoints (None for a worker group, which Train persists)."""
    from cadc_ray.config import to_dict

    return {
        "config": to_dict(config),
        "run_name": run_name,
        "local_checkpoint_root": (
            local_checkpoint_root(storage_path, run_name)
            if config.resources.num_workers == 0
            else None
        ),
    }


def run_torch_trainer(
    train_loop: Callable[[dict[str, Any]], Any],
    loop_config: dict[str, Any],
    *,
    config: ExperimentConfig,
    training: TrainingInput,
    use_gpu: bool,
    run_name: str,
    storage_path: str | None,
    callbacks: Sequence[Any] | None,
) -> Any:
    """Runs ``train_loop`` on ``resources.num_workers`` Train workers; returns the Result.

    ``num_workers=0`` runs in-process (Train V2 local mode: ~3 s instead of a worker
    group's ~15-20 s start, but RunConfig callbacks are skipped). Raises the Train error
    when the run fails after ``resources.max_failures`` restarts.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cadc_ray.console import quiet_train_logs, train_log_level
    from cadc_ray.runtime.device import torch_config

    quiet_train_logs()  # local mode logs in this process, outside Train's LoggingConfig
    resources = config.resources
    per_worker: dict[str, float] = {"CPU": float(resources.cpus_per_worker)}
    if use_gpu:
        per_worker["GPU"] = 1.0
    scaling = ScalingConfig(
        num_workers=resources.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker
    )
    if resources.num_workers == 0 and callbacks:
        logger.warning(
            "run %s: local mode (num_workers=0) skips RunConfig callbacks %s",
            run_name,
            [type(callback).__name__ for callback in callbacks],
        )
    run_config = RunConfig(
        name=run_name,
        storage_path=train_storage_path(storage_path),
        failure_config=FailureConfig(max_failures=resources.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
        callbacks=list(callbacks) if callbacks else None,
        # Train's INFO lines (every checkpoint and report) go to its log files only.
        # Train V2's RunConfig (the runtime one) has logging_config; the stubs are V1's.
        logging_config=LoggingConfig(log_level=train_log_level()),  # type: ignore[call-arg]
    )
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**loop_config, **training.loop_entries},
        scaling_config=scaling,
        run_config=run_config,
        datasets=training.datasets,
        dataset_config=training.dataset_config,
        torch_config=torch_config(),  # the process-group backend the workers can use
    )
    return trainer.fit()
