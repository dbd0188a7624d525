"""Connecting to (or starting) Ray, and deciding CPU or GPU workers (the decision itself
lives with every other device choice in :mod:`cadc_ray.runtime.device`).

The command-line entry points call :func:`init_ray` once; library functions such
as :func:`cadc_ray.runtime.pretrain.fit_pretrain` expect Ray to be initialized
already (tests share one session fixture).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from cadc_ray.config import ExperimentConfig, ResourcesConfig

# The CLIs and the sweep driver call it from here; it decides with every other device
# choice in the device module.
from cadc_ray.runtime.device import resolve_use_gpu as resolve_use_gpu

logger = logging.getLogger(__name__)

DATA_RESERVED_CPUS = 1
"""Logical CPUs a locally started Ray keeps for Ray Data on top of the Train workers.

Ray Data leaves the CPUs reserved by Train's workers out of its budget; if the workers
reserve every CPU, Ray Data gets none and the run hangs without an error
(docs/ray_notes.md, "Ray Data").
"""


TRAIN_POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_INTERVAL_S = "0.1"
"""How often Train's controller polls its workers (Ray's default: 2 s).

A worker's ``ray.train.report`` waits in a queue of one until the controller's next poll
collects it, so with Ray's default every epoch of a worker group lasted at least 2 s: ML-100K
MF pretraining, 0.1 s of training per epoch, took 2.0 s per epoch (60 s of 30 epochs). A
poll that does not answer in time is awaited at the next one, not counted as a failure
(``ray.train.v2`` worker group), so a short interval is safe. An explicit
``$RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` wins.
"""


def ray_job_env() -> dict[str, dict[str, str]]:
    """The ``runtime_env`` of every ``ray.init`` here: the console settings
    (``console.ray_runtime_env``) and the Train poll interval, in every Ray process of the job."""
    from cadc_ray.console import ray_runtime_env

    runtime_env = ray_runtime_env()
    poll = os.environ.get(TRAIN_POLL_INTERVAL_ENV, TRAIN_POLL_INTERVAL_S)
    runtime_env["env_vars"] = {TRAIN_POLL_INTERVAL_ENV: poll, **runtime_env["env_vars"]}
    return runtime_env


def train_cpus(resources: ResourcesConfig) -> int:
    """Logical CPUs one Train stage reserves (local mode runs in the driver: 1)."""
    return max(resources.num_workers, 1) * resources.cpus_per_worker


def local_ray_cpus(resources: ResourcesConfig, concurrent_stages: int = 1) -> int:
    """Logical CPUs for a locally started Ray: ``concurrent_stages`` Train stages (one per
    concurrent sweep trial) plus :data:`DATA_RESERVED_CPUS`, and at least ``os.cpu_count()``.

    Logical CPUs may exceed physical ones; what matters is that the Train workers'
    reservation always leaves some for Ray Data.
    """
    needed = train_cpus(resources) * concurrent_stages + DATA_RESERVED_CPUS
    return max(os.cpu_count() or 1, needed)


def ray_target(address: str | None) -> str | None:
    """The cluster :func:`init_ray` connects to (``address``, else ``$RAY_ADDRESS``), or
    None: it starts a local Ray of its own."""
    return address or os.environ.get("RAY_ADDRESS") or None


def stage_resources(
    resources: ResourcesConfig, *, use_gpu: bool, own_local_ray: bool, streams: bool
) -> ResourcesConfig:
    """The resources a stage runs with: ``resources`` as configured, except that with
    ``in_process: auto`` a one-worker CPU stage without Train restarts
    (``max_failures: 0``) runs in Train's local mode (``num_workers: 0``), where
    :func:`stage_placement` says: in this process on a local Ray the command started itself
    (``own_local_ray``), in one Ray task on any other Ray (a cluster). On a cluster a stage
    whose rows stream (``streams``, ``runtime.ingest``) keeps its worker group.

    Why: a worker group is a controller and a worker that are new processes, import torch
    and Ray Train and set up a process group. That made the fixed cost of an ML-100K stage
    7.8-8.7 s on 2 cores, against 0.25-1.4 s in-process; on a two-node cluster 5.9-7.2 s,
    against 2.2-2.4 s in a task for a command's first stage (a new worker process that
    imports torch) and 0.8-0.9 s for its second (the same process again) (docs/results.md,
    "Fixed cost"). The numbers are the same: the loop, the rows and the seeds do not
    change. GPU and multi-worker stages keep their worker groups, which is where capacity
    comes from; so does a streamed stage on a cluster, whose epochs dwarf the start and
    whose Ray Data job needs CPUs a task would hold while it waits.
    """
    if (
        resources.in_process == "auto"
        and resources.num_workers == 1
        and not use_gpu
        and resources.max_failures == 0
        and (own_local_ray or not streams)
    ):
        logger.info(
            "one CPU worker: the stage runs in Train's local mode %s",
            "in this process" if own_local_ray else "in a Ray task",
        )
        return replace(resources, num_workers=0)
    return resources


StagePlacement = Literal["worker_group", "this_process", "ray_task"]
"""Where a stage runs: a Train worker group, or Train's local mode in the command's process
or in one Ray task sized to the stage (``pipeline.call_stage``)."""


def stage_placement(resources: ResourcesConfig, *, own_local_ray: bool) -> StagePlacement:
    """Where a stage with these (effective, :func:`stage_resources`) resources runs.

    Local mode runs in this process only on the command's own local Ray. On any other Ray
    the command's process is no place to train: on a cluster it is the head node, or a
    laptop connected over ``ray://``; there a Ray task takes the stage's CPUs (or GPU)
    wherever the cluster has them.
    """
    if resources.num_workers > 0:
        return "worker_group"
    return "this_process" if own_local_ray else "ray_task"


def plan_stage(
    config: ExperimentConfig, train_path: str | Path, *, use_gpu: bool, own_local_ray: bool
) -> tuple[ExperimentConfig, StagePlacement]:
    """A stage of ``config`` that trains on the Parquet folder ``train_path``: the config
    with the resources it runs with (:func:`stage_resources`, given whether its rows stream,
    ``runtime.ingest.resolve_ingest``) and where it runs (:func:`stage_placement`).
    Callers keep the config as asked for in what they record."""
    from cadc_ray.runtime.ingest import resolve_ingest

    resources = stage_resources(
        config.resources,
        use_gpu=use_gpu,
        own_local_ray=own_local_ray,
        streams=resolve_ingest(config, train_path, announce=False) == "stream",
    )
    placement = stage_placement(resources, own_local_ray=own_local_ray)
    return replace(config, resources=resources), placement


def share_worker_group(
    config: ExperimentConfig,
    pretrain: tuple[ExperimentConfig, StagePlacement],
    ttnn: tuple[ExperimentConfig, StagePlacement],
) -> bool:
    """Whether the teacher and the TTNN of one run train in one worker group
    (``runtime.joint``): with ``resources.share_worker_group: auto``, an MF / MF-MLP
    teacher (ALS is a Ray task), and both stages planned (:func:`plan_stage`) as worker
    groups of the same resources. The caller checks that the teacher is not reused."""
    from cadc_ray.methods import METHODS

    (pretrain_config, pretrain_placement), (ttnn_config, ttnn_placement) = pretrain, ttnn
    return (
        config.resources.share_worker_group == "auto"
        and METHODS[config.method].pretrainer in ("mf", "mf_mlp")
        and pretrain_placement == ttnn_placement == "worker_group"
        and pretrain_config.resources == ttnn_config.resources
    )


def init_ray(
    address: str | None = None,
    *,
    resources: ResourcesConfig | None = None,
    include_dashboard: bool | None = None,
    log_to_driver: bool = True,
    object_store_bytes: int | None = None,
) -> bool:
    """Connects to a Ray cluster, or starts a local one sized so Ray Data is never starved.

    ``address`` (or ``$RAY_ADDRESS`` when it is None): an existing cluster, e.g.
    ``"auto"`` for one started with ``ray start`` on this machine, or
    ``"ray://head:10001"``. Without either, a new local Ray starts with
    :func:`local_ray_cpus` logical CPUs. A session that is already initialized is kept as
    it is.

    ``object_store_bytes``: the local Ray's object store (default: Ray's, 30% of memory);
    refused for an existing cluster, whose store was sized when it started.

    Returns True when this call started or connected Ray (the caller should
    ``ray.shutdown()`` at the end), False when Ray was already initialized.
    """
    import ray

    if ray.is_initialized():
        return False
    target = ray_target(address)
    # Every Ray process gets the console settings (Ray Data's progress to its log files).
    options: dict[str, Any] = {"log_to_driver": log_to_driver, "runtime_env": ray_job_env()}
    if include_dashboard is not None:
        options["include_dashboard"] = include_dashboard
    if target is not None:
        if object_store_bytes is not None:
            raise ValueError(
                f"object_store_bytes={object_store_bytes}: the Ray cluster at {target} sized "
                "its object store when it started"
            )
        logger.info("connecting to the Ray cluster at %s", target)
        ray.init(address=target, **options)
        return True
    if object_store_bytes is not None:
        options["object_store_memory"] = object_store_bytes
    num_cpus = local_ray_cpus(resources or ResourcesConfig())
    logger.info("starting a local Ray with %d logical CPUs", num_cpus)
    # address="local": never attach silently to some other local cluster on a shared machine.
    ray.init(address="local", num_cpus=num_cpus, **options)
    return True
