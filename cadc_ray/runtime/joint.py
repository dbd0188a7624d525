"""Both stages of one experiment in one Train worker group: MF pretraining, then the TTNN.

A worker group costs its start once per Train run: a controller and workers that are new
processes, import torch and Ray Train and set up a process group (5.9-7.2 s per stage on a
two-node cluster, docs/results.md "Fixed cost per stage on a cluster"). Stages that need a
worker group (GPUs, 2+ workers, restarts) would pay it twice in a row for one experiment.
Here one ``TorchTrainer`` runs ``_joint_worker``: each worker trains MF on D_full, keeps
the teacher it just trained (every rank holds the same tables), then trains the TTNN on the
sample with it. Nothing goes through the object store between the stages.

The two stages are the same code as when they run apart (``runtime.pretrain.mf_in_worker``,
``runtime.ttnn.ttnn_in_worker``), with the same seeds: the same config gives the same
teacher and the same TTNN metrics either way.

Checkpoints and resume (``FailureConfig`` restarts): the stages' checkpoints are named
``pretrain_epoch_XXXXXX`` and ``ttnn_epoch_XXXXXX``. Every TTNN checkpoint also carries the
teacher (its tables, history and loop time), so a run restarted during the TTNN resumes
it without pretraining again, with the teacher it was training against; one restarted
during MF resumes MF. The price: each TTNN checkpoint holds the teacher's tables too.

Imported lazily by ``cadc_ray.run`` (it imports Ray Train).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cadc_ray.config import ExperimentConfig
from cadc_ray.runtime.checkpoint import CheckpointError
from cadc_ray.runtime.stage import EnvironmentHook, StageEnvironment

if TYPE_CHECKING:
    from cadc_ray.runtime.pretrain import PretrainResult
    from cadc_ray.runtime.ttnn import TTNNInputs, TTNNResult

RUN_NAME = "pretrain_and_ttnn"
"""The Train run's name (its checkpoints' folder under the run's storage)."""

PRETRAIN_PREFIX = "pretrain_"
TTNN_PREFIX = "ttnn_"
TEACHER_KEY = "teacher"
"""The entry of a TTNN checkpoint that holds the teacher trained before it."""

_TABLE_KEYS = ("user", "item")


def teacher_entry(mf_output: dict[str, Any]) -> dict[str, Any]:
    """A TTNN checkpoint's copy of the teacher (``runtime.pretrain.train_mf_stage``'s
    output): tables as tensors, everything else as plain values, so that it loads with
    ``weights_only=True``."""
    entry = {key: value for key, value in mf_output.items() if key not in _TABLE_KEYS}
    for key in _TABLE_KEYS:
        entry[key] = torch.from_numpy(np.ascontiguousarray(mf_output[key]))
    return entry


def teacher_output(entry: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`teacher_entry`: the MF stage's output with numpy tables."""
    output = {key: value for key, value in entry.items() if key not in _TABLE_KEYS}
    for key in _TABLE_KEYS:
        output[key] = entry[key].numpy()
    return output


def resume_points(
    resumed: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(MF's checkpoint to resume from, the TTNN's) for a joint run's latest checkpoint.

    None: a fresh run. A ``pretrain`` checkpoint resumes MF (and the TTNN starts fresh
    after it); a ``ttnn`` one resumes the TTNN with the teacher it carries (MF is done).
    """
    if resumed is None:
        return None, None
    stage = resumed.get("stage")
    if stage == "pretrain":
        return resumed, None
    if stage == "ttnn":
        if TEACHER_KEY not in resumed:
            raise CheckpointError(
                "a TTNN checkpoint of a joint run lacks its teacher: it was written by a "
                "TTNN-only run; use a new run name or storage path"
            )
        return None, resumed
    raise CheckpointError(f"a joint run cannot resume a checkpoint of stage {stage!r}")


def _restoring(state: dict[str, Any] | None) -> EnvironmentHook:
    """An environment hook: the stage resumes from ``state`` (None: it starts fresh)."""

    def adapt(environment: StageEnvironment) -> StageEnvironment:
        return replace(environment, restore=lambda: state)

    return adapt


def _ttnn_environment(state: dict[str, Any] | None, teacher: dict[str, Any]) -> EnvironmentHook:
    """The TTNN's environment hook: resumes from ``state``; its checkpoints carry ``teacher``."""

    def adapt(environment: StageEnvironment) -> StageEnvironment:
        report = environment.report

        def report_with_teacher(
            metrics: dict[str, Any], checkpoint: dict[str, Any] | None, epoch: int
        ) -> None:
            if checkpoint is not None:  # rank 0's
                checkpoint = {**checkpoint, TEACHER_KEY: teacher}
            report(metrics, checkpoint, epoch)

        return replace(environment, restore=lambda: state, report=report_with_teacher)

    return adapt


def _joint_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """``train_loop_per_worker``: MF, then the TTNN with the teacher this worker holds."""
    from cadc_ray.runtime.pretrain import exported_tables, mf_in_worker
    from cadc_ray.runtime.ttnn import ttnn_in_worker
    from cadc_ray.runtime.worker import restore_from_train_checkpoint

    pretrain_state, ttnn_state = resume_points(restore_from_train_checkpoint())
    if ttnn_state is None:
        _, mf_output = mf_in_worker(
            loop_config["pretrain"], PRETRAIN_PREFIX, _restoring(pretrain_state)
        )
        teacher = teacher_entry(mf_output)
    else:
        teacher = ttnn_state[TEACHER_KEY]
        mf_output = teacher_output(teacher)
    ttnn_started = time.perf_counter()
    rank, ttnn_output = ttnn_in_worker(
        loop_config["ttnn"],
        TTNN_PREFIX,
        _ttnn_environment(ttnn_state, teacher),
        pretrained=exported_tables(mf_output),
    )
    if rank != 0:
        return None
    return {
        "pretrain": mf_output,
        "ttnn": ttnn_output,
        "ttnn_seconds": time.perf_counter() - ttnn_started,
    }


def fit_stages_in_one_group(
    config: ExperimentConfig,
    split: Any,
    inputs: TTNNInputs,
    *,
    use_gpu: bool,
    storage_path: str | None,
    run_name: str = RUN_NAME,
) -> tuple[PretrainResult, TTNNResult]:
    """MF pretraining on D_full (``split.train_dir``) and the TTNN on ``inputs`` (without a
    teacher ref: the teacher is trained here) in one ``TorchTrainer`` run.

    Seconds: the TTNN's are its part of the workers' time (from the teacher's end to the
    test metrics); the pretraining's are the rest of the run's wall time, the worker
    group's start included (paid once, by the first stage).
    """
    from cadc_ray.methods import METHODS
    from cadc_ray.runtime.ingest import combined_training_inputs, training_input
    from cadc_ray.runtime.pretrain import mf_loop_config, pretrain_result
    from cadc_ray.runtime.trainer import run_torch_trainer
    from cadc_ray.runtime.ttnn import ttnn_loop_config, ttnn_result
    from cadc_ray.runtime.worker import stage_seed

    pretrainer = METHODS[config.method].pretrainer
    if pretrainer not in ("mf", "mf_mlp"):
        raise ValueError(
            f"method {config.method!r}: only MF / MF-MLP teachers train in a worker group, "
            f"got pretrainer {pretrainer!r}"
        )
    if inputs.pretrained is not None:
        raise ValueError("the TTNN's teacher is trained in the same worker group: no ref")
    started = time.perf_counter()
    mf_training = training_input(
        config, split.train_dir, stage_seed(config.seed, config.pretrain.seed), "pretrain"
    )
    ttnn_training = training_input(
        config, inputs.train_path, stage_seed(config.seed, config.train.seed), "ttnn"
    )
    loop_config = {
        "pretrain": {
            **mf_loop_config(
                config,
                pretrainer,
                split=split,
                num_users=inputs.num_users,
                num_items=inputs.num_items,
                run_name=run_name,
                storage_path=storage_path,
            ),
            **mf_training.loop_entries,
        },
        "ttnn": {
            **ttnn_loop_config(config, inputs, run_name=run_name, storage_path=storage_path),
            **ttnn_training.loop_entries,
        },
    }
    result = run_torch_trainer(
        _joint_worker,
        loop_config,
        config=config,
        training=combined_training_inputs({"pretrain": mf_training, "ttnn": ttnn_training}),
        use_gpu=use_gpu,
        run_name=run_name,
        storage_path=storage_path,
        callbacks=None,
    )
    output = result.return_value
    if output is None:
        raise RuntimeError(f"run {run_name!r} returned nothing from rank 0")
    seconds = time.perf_counter() - started
    ttnn_seconds = float(output["ttnn_seconds"])
    checkpoint = getattr(result, "checkpoint", None)
    return (
        pretrain_result(
            output["pretrain"],
            seconds=seconds - ttnn_seconds,
            checkpoint_path=None,
            run_name=run_name,
        ),
        ttnn_result(
            output["ttnn"],
            seconds=ttnn_seconds,
            checkpoint_path=checkpoint.path if checkpoint is not None else None,
            run_name=run_name,
        ),
    )
