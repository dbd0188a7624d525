"""Every device decision of the package: GPUs or not, which device a worker computes on,
and which collective backend its process group uses.

Driver side (before any Train run):

- :func:`resolve_use_gpu` turns ``resources.use_gpu`` into "Train workers ask for a GPU".
  A GPU pool that autoscales from 0 nodes has no GPU in ``ray.cluster_resources()`` until
  something asks for one, so the autoscaler's node types count too (:func:`gpu_pools`):
  ``auto`` asks for GPU workers when the cluster has GPUs now *or* a GPU node type its
  autoscaler can start (the workers' placement group is what makes it start them);
  ``yes`` also waits, at most ``resources.gpu_wait_seconds``, for a GPU node to join, and
  fails with a ConfigError that says what to check when none does (Ray Train itself
  would wait for the placement group forever, retrying every minute); ``yes`` on a
  cluster whose autoscaler has no GPU node type fails at once.

Worker side (inside a Train worker):

- :func:`worker_device`: the CUDA device Ray assigned, or the CPU with a warning when the
  worker holds a ``GPU`` resource but its torch sees no CUDA (a CPU build of torch, a
  driver problem, or a test cluster whose ``GPU`` is only a label); :func:`prepare_model`
  puts the model there (and in a ``training.data_parallel.DataParallel`` for several
  workers).
- :func:`sparse_gradients_all_reduce`: whether the group can all-reduce the sparse gradients
  of row-sparse id tables (gloo yes, NCCL no).
- :func:`torch_config` (a ``DeviceAwareTorchConfig``): Train's process group backend chosen
  once the workers exist: NCCL when every worker of a GPU group has CUDA and NCCL, else
  gloo with a warning.
  Ray's own ``TorchConfig`` picks NCCL from the *request* (``use_gpu``), decided on the
  driver, whose torch (the CPU-only head's) cannot tell; a worker without NCCL then fails
  in ``init_process_group``.

Host memory (every stage, in its worker or local-mode process):

- :func:`tune_cpu_allocator`: glibc's malloc keeps freed blocks of up to 32 MiB for reuse
  instead of handing them back to the kernel, so a training step's tensors of a few MiB
  no longer fault in fresh pages at every step.

Not used, on purpose: pinned host memory and non-blocking copies (a stage moves its
training rows to the device once, not per batch), and mixed precision (the models are
embedding tables and small MLPs; the papers' numbers are float32).
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cadc_ray.config import ConfigError, ResourcesConfig

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

GPU_RESOURCE = "GPU"

GPU_POLL_SECONDS = 2.0
"""How often ``use_gpu: yes`` looks for a GPU node while the autoscaler starts one."""

GPU_WAIT_LOG_SECONDS = 30.0
"""How often that wait says it is still waiting."""

MONITOR_SCRIPTS = ("autoscaler/_private/monitor.py", "autoscaler/v2/monitor.py")
"""Ray's autoscaler process on the head node (v1 and v2): started with the cluster's
``--gcs-address`` and, on an autoscaling cluster, its ``--autoscaling-config``."""


# ---------------------------------------------------------------------------------------
# Driver side: does the cluster have, or can it get, GPUs?


@dataclass(frozen=True)
class GpuPools:
    """The GPUs a Ray cluster has now and the most its autoscaler can add.

    ``autoscalable`` is None when this process cannot see the autoscaler's node types
    (a driver that is not on the head node, e.g. through Ray Client); ``source`` names
    where the number came from, for messages.
    """

    running: float
    autoscalable: float | None
    source: str

    @property
    def reachable(self) -> bool:
        """GPUs now, or a GPU node type the autoscaler can start."""
        return self.running > 0 or (self.autoscalable or 0) > 0


def autoscaler_config_gpus(config: Mapping[str, Any]) -> float:
    """The most GPUs the worker node types of an autoscaler config (``ray up`` YAML) add:
    the sum over ``available_node_types`` (the head's type excluded: it runs already) of
    ``resources.GPU * max_workers`` (a type without ``max_workers`` takes the config's)."""
    head_type = config.get("head_node_type")
    default_max_workers = int(config.get("max_workers", 0) or 0)
    total = 0.0
    for name, node_type in (config.get("available_node_types") or {}).items():
        if name == head_type or not isinstance(node_type, Mapping):
            continue
        gpus = float((node_type.get("resources") or {}).get(GPU_RESOURCE, 0) or 0)
        max_workers = int(node_type.get("max_workers", default_max_workers) or 0)
        total += gpus * max_workers
    return total


def monitor_autoscaling_config(
    gcs_address: str, command_lines: Callable[[], list[list[str]]] | None = None
) -> tuple[bool, Path | None]:
    """``(found, path)``: whether this node runs the autoscaler of the cluster at
    ``gcs_address`` (Ray starts it on the head node), and the ``--autoscaling-config`` it
    was given (None: a fixed-size cluster, e.g. ``ray.init`` or ``ray start`` without one).

    ``ray up`` starts it with ``~/ray_bootstrap_config.yaml``, the config you wrote with
    resolved defaults. ``command_lines`` lists the processes' argument vectors (default:
    every process of this machine; tests pass their own).
    """
    for argv in (command_lines or _process_command_lines)():
        if not any(arg.endswith(MONITOR_SCRIPTS) for arg in argv):
            continue
        options = dict(arg.split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)
        if options.get("--gcs-address") != gcs_address:
            continue  # another Ray cluster on this machine
        config = options.get("--autoscaling-config")
        return True, Path(config).expanduser() if config else None
    return False, None


def _process_command_lines() -> list[list[str]]:
    import psutil

    lines: list[list[str]] = []
    for process in psutil.process_iter(["cmdline"]):
        argv = process.info.get("cmdline")
        if argv:
            lines.append(list(argv))
    return lines


def _ray_reported_max_gpus() -> float | None:
    """The most GPUs of the cluster config the autoscaler reported to the GCS (KubeRay
    does; ``ray up`` and ``ray start --autoscaling-config`` clusters report none: None)."""
    try:
        from ray._private.state import state

        maximum = state.get_max_resources_from_cluster_config()
    except Exception:  # a private API: any failure means "not reported"
        logger.debug("no cluster config in the GCS", exc_info=True)
        return None
    if not maximum:
        return None
    return float(maximum.get(GPU_RESOURCE, 0) or 0)


def gpu_pools() -> GpuPools:
    """GPUs of the connected Ray cluster now, and the most its autoscaler can add.

    The autoscaler's node types are read from, in order: what the cluster reported to the
    GCS (KubeRay), then the autoscaling config of the cluster's autoscaler process when
    this process runs on the head node (Ray Jobs' drivers do). Requires an initialized Ray.
    """
    import ray

    running = float(ray.cluster_resources().get(GPU_RESOURCE, 0))
    reported = _ray_reported_max_gpus()
    if reported is not None:
        return GpuPools(running, reported, "the cluster config reported to the GCS")
    try:
        gcs_address = ray.get_runtime_context().gcs_address
    except Exception:  # Ray Client drivers have no GCS address of their own
        gcs_address = None
    found, config_path = monitor_autoscaling_config(gcs_address) if gcs_address else (False, None)
    if not found:
        return GpuPools(running, None, "unknown (the autoscaler is not on this node)")
    if config_path is None:
        return GpuPools(running, 0.0, "no autoscaler (fixed-size cluster)")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        logger.warning("cannot read the autoscaler config %s: %s", config_path, error)
        return GpuPools(running, None, f"unknown (unreadable {config_path})")
    return GpuPools(running, autoscaler_config_gpus(config), f"autoscaler config {config_path}")


def resolve_use_gpu(
    resources: ResourcesConfig,
    *,
    pools: Callable[[], GpuPools] = gpu_pools,
    cluster_gpus: Callable[[], float] | None = None,
    request_gpus: Callable[[int], None] | None = None,
    poll_seconds: float = GPU_POLL_SECONDS,
) -> bool:
    """``resources.use_gpu`` -> whether Train workers ask for a GPU each.

    ``no``: never. ``auto``: when the cluster has GPUs now or its autoscaler has a GPU
    node type (:func:`gpu_pools`). ``yes``: GPUs now, else asks the autoscaler for
    ``num_workers`` GPUs and waits up to ``resources.gpu_wait_seconds`` for the first;
    a ConfigError when the autoscaler has no GPU node type or none joins in time.
    Requires an initialized Ray. The keyword arguments replace the cluster in tests.
    """
    if resources.use_gpu == "no":
        return False
    found = pools()
    if resources.use_gpu == "auto":
        if found.running <= 0 and found.autoscalable is None:
            logger.info(
                "use_gpu auto: no GPU in the cluster and its autoscaler's node types are "
                "not visible from here (%s): CPU workers; 'yes' would wait for GPU nodes",
                found.source,
            )
        elif found.running <= 0 and found.reachable:
            logger.info(
                "use_gpu auto: no GPU node running; GPU workers ask the autoscaler for "
                "them (up to %g GPUs, %s)",
                found.autoscalable,
                found.source,
            )
        return found.reachable
    if found.running > 0:
        return True
    if found.autoscalable is not None and found.autoscalable <= 0:
        import ray

        raise ConfigError(
            "resources.use_gpu: 'yes' but the Ray cluster has no GPUs and no GPU node type "
            f"to start ({found.source}; cluster resources: {sorted(ray.cluster_resources())}); "
            "use 'auto' or 'no', or give the cluster a node type with GPU resources"
        )
    wait_for_gpus(
        resources,
        found,
        cluster_gpus=cluster_gpus or _cluster_gpus,
        request_gpus=request_gpus or _request_gpus,
        poll_seconds=poll_seconds,
    )
    return True


def wait_for_gpus(
    resources: ResourcesConfig,
    found: GpuPools,
    *,
    cluster_gpus: Callable[[], float],
    request_gpus: Callable[[int], None],
    poll_seconds: float,
) -> None:
    """Asks the autoscaler for ``num_workers`` GPUs and returns once the cluster has one;
    raises ConfigError after ``resources.gpu_wait_seconds``.

    The request is withdrawn either way: left in place, it would keep GPU nodes up (and
    billed) after the sweep; the Train workers' placement groups hold them from here on.
    """
    wanted = max(resources.num_workers, 1)
    deadline = time.monotonic() + resources.gpu_wait_seconds
    logger.info(
        "use_gpu yes: no GPU node running; asking the autoscaler for %d GPU(s) and waiting "
        "up to %d s (resources.gpu_wait_seconds; autoscaler: %s)",
        wanted,
        resources.gpu_wait_seconds,
        found.source,
    )
    request_gpus(wanted)
    next_log = time.monotonic() + GPU_WAIT_LOG_SECONDS
    try:
        while True:
            if cluster_gpus() > 0:
                return
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_log:
                logger.info("still waiting for a GPU node (%.0f s left)", max(deadline - now, 0.0))
                next_log = now + GPU_WAIT_LOG_SECONDS
            time.sleep(min(poll_seconds, max(deadline - now, 0.0)))
    finally:
        request_gpus(0)
    raise ConfigError(
        f"resources.use_gpu: 'yes' but no GPU node joined the Ray cluster within "
        f"resources.gpu_wait_seconds={resources.gpu_wait_seconds} (autoscaler: {found.source}). "
        "Check why the autoscaler could not start one (`ray status`, the head's "
        "/tmp/ray/session_latest/logs/monitor.* : quota, capacity, a failing setup command), "
        "raise resources.gpu_wait_seconds for slow-starting nodes, or use 'auto'"
    )


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get(GPU_RESOURCE, 0))


def _request_gpus(count: int) -> None:
    """Asks the autoscaler to fit ``count`` 1-GPU bundles; 0 withdraws the request
    (a request stays until the next one replaces it)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{GPU_RESOURCE: 1}] * count)


# ---------------------------------------------------------------------------------------
# Worker side: the device a Train worker computes on


def worker_device(assigned: torch.device | Sequence[torch.device] | None = None) -> torch.device:
    """The torch device this Train worker (or local-mode stage) computes on.

    ``assigned``: what Ray gave the worker (default ``ray.train.torch.get_device()``: the
    CUDA device of its ``GPU`` resource, else the CPU; several GPUs: the first). A CUDA
    device that torch cannot use falls back to the CPU with a warning; a usable one
    becomes the current CUDA device, before any collective (NCCL's ``all_gather_object``
    uses the current device).
    """
    import torch

    if assigned is None:
        import ray.train.torch

        assigned = ray.train.torch.get_device()
    device = assigned[0] if isinstance(assigned, Sequence) else assigned
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        logger.warning(
            "this worker holds a GPU resource (CUDA_VISIBLE_DEVICES=%s) but torch %s sees no "
            "CUDA device: computing on the CPU",
            os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            torch.__version__,
        )
        return torch.device("cpu")
    torch.cuda.set_device(device)
    return device


def prepare_model(
    model: torch.nn.Module, device: torch.device, distributed: bool
) -> torch.nn.Module:
    """``model`` on the worker's ``device`` (from :func:`worker_device`), in a
    :class:`~cadc_ray.training.data_parallel.DataParallel` when ``distributed`` (the
    worker's ``WorkerInfo.is_distributed``: one of a process group of 2+).

    Not ``ray.train.torch.prepare_model``: its DDP imports ``torch._dynamo`` in every worker
    (1.3 s here), and its default device is the one Ray assigned, CUDA for a ``GPU`` resource
    even where torch has none; this one uses the device the worker computes on.
    """
    from cadc_ray.training.data_parallel import DataParallel

    model = model.to(device)
    return DataParallel(model) if distributed else model


# ---------------------------------------------------------------------------------------
# The process group backend, chosen where the workers run

CHOSEN_ON_WORKERS = "chosen-on-workers"
"""``DeviceAwareTorchConfig.backend`` until the workers exist (any non-empty value keeps
``TorchTrainer`` from setting NCCL for GPU runs itself)."""


def process_group_backend(gpus_per_worker: float, workers_have_nccl: Sequence[bool]) -> str:
    """``nccl`` for a GPU worker group whose every worker has CUDA and NCCL, else ``gloo``
    (a warning when GPUs were asked for: the group then runs its collectives on the CPU)."""
    if gpus_per_worker <= 0:
        return "gloo"
    if workers_have_nccl and all(workers_have_nccl):
        return "nccl"
    lacking = [rank for rank, ready in enumerate(workers_have_nccl) if not ready]
    logger.warning("GPU workers %s have no usable CUDA/NCCL: the process group uses gloo", lacking)
    return "gloo"


def sparse_gradients_all_reduce(world_size: int) -> bool:
    """Can this worker's process group all-reduce sparse gradients (row-sparse id tables)?

    One worker has nothing to reduce; gloo can; NCCL cannot, so a multi-GPU group keeps its
    id tables dense (``training.optim.sparse_id_tables``).
    """
    import torch

    if world_size <= 1 or not torch.distributed.is_initialized():
        return True
    return str(torch.distributed.get_backend()) == "gloo"


def worker_has_nccl() -> bool:
    """Run on each worker: can this process run NCCL collectives on a CUDA device?"""
    import torch

    return bool(torch.cuda.is_available() and torch.distributed.is_nccl_available())


def torch_config() -> Any:
    """The ``torch_config`` of every ``TorchTrainer`` here: :class:`DeviceAwareTorchConfig`."""
    return _device_aware_classes()[0]()


_CLASSES: tuple[type, type] | None = None


def _device_aware_classes() -> tuple[type, type]:
    """``(DeviceAwareTorchConfig, DeviceAwareTorchBackend)``, built at first use so that
    importing this module does not import Ray Train and torch (5 s on a small machine)."""
    global _CLASSES
    if _CLASSES is None:
        from ray.train.backend import Backend
        from ray.train.torch import TorchConfig

        @dataclass
        class DeviceAwareTorchConfig(TorchConfig):
            """Ray's ``TorchConfig`` whose backend is chosen by the workers
            (:func:`process_group_backend`)."""

            backend: str | None = CHOSEN_ON_WORKERS

            @property
            def backend_cls(self) -> type:
                return _device_aware_classes()[1]

        class DeviceAwareTorchBackend(Backend):
            """Ray's torch backend, given the backend the started workers can run."""

            share_cuda_visible_devices = True  # as Ray's: NCCL peers see each other's GPUs

            def __init__(self) -> None:
                self._torch_backend = TorchConfig().backend_cls()
                self._resolved: Any = None

            def _resolve(self, worker_group: Any, backend_config: Any) -> Any:
                if backend_config.backend != CHOSEN_ON_WORKERS:
                    return backend_config
                gpus = float(worker_group.get_resources_per_worker().get(GPU_RESOURCE, 0))
                ready = list(worker_group.execute(worker_has_nccl)) if gpus > 0 else []
                return TorchConfig(
                    backend=process_group_backend(gpus, ready),
                    init_method=backend_config.init_method,
                    timeout_s=backend_config.timeout_s,
                )

            def on_start(self, worker_group: Any, backend_config: Any) -> None:
                self._resolved = self._resolve(worker_group, backend_config)
                self._torch_backend.on_start(worker_group, self._resolved)

            def on_training_start(self, worker_group: Any, backend_config: Any) -> None:
                self._torch_backend.on_training_start(
                    worker_group, self._resolved or backend_config
                )

            def on_shutdown(self, worker_group: Any, backend_config: Any) -> None:
                self._torch_backend.on_shutdown(worker_group, self._resolved or backend_config)

        # Pickled by reference into Train's controller and workers, which find them
        # through the module's __getattr__ below.
        for cls in (DeviceAwareTorchConfig, DeviceAwareTorchBackend):
            cls.__qualname__ = cls.__name__
        _CLASSES = (DeviceAwareTorchConfig, DeviceAwareTorchBackend)
    return _CLASSES


def __getattr__(name: str) -> Any:
    """``DeviceAwareTorchConfig`` / ``DeviceAwareTorchBackend`` on first access (unpickling
    in a Train process looks them up here)."""
    if name in ("DeviceAwareTorchConfig", "DeviceAwareTorchBackend"):
        config_cls, backend_cls = _device_aware_classes()
        return config_cls if name == "DeviceAwareTorchConfig" else backend_cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------
# Host memory

GLIBC_M_TRIM_THRESHOLD = -1  # <malloc.h>: keep this much free memory at the heap's top
GLIBC_M_MMAP_THRESHOLD = -3  # <malloc.h>: blocks at least this large get their own mmap
CPU_MMAP_THRESHOLD_BYTES = 32 << 20
"""glibc's largest mmap threshold on 64-bit (``HEAP_MAX_SIZE / 2``): a row-sparse MF step's
gathered rows, moments and gradient buffers (a few MiB each) come from the heap."""
CPU_TRIM_THRESHOLD_BYTES = 64 << 20
"""Free memory the heap keeps at its top rather than returning it to the kernel."""
GLIBC_ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_cpu_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Sets glibc malloc's mmap and trim thresholds for training (once per process); True
    when they are set.

    Why: with glibc's defaults a tensor of a few MiB gets its own mmap, or a piece of a heap
    top that was handed back when the last one was freed, and its pages fault in again at
    every step. Counted by hand (2026-12-01, 8 new processes each way) for a row-sparse MF
    Adam step over 6,709 of 20,000 rows of 96 floats plus a table-sized gradient buffer:
    with the defaults 470-1,227 page faults a step in 5 processes and none in the other 3
    (glibc's own threshold happened to adapt); tuned, none in 6 and 13 in 2. MF epochs
    with the defaults now and then ran at half speed; tuned, 1.51x faster on average
    (docs/results.md, "Host allocator"). This is PyTorch's usual CPU advice (a caching
    malloc such as jemalloc) without a preloaded library. The cost: up to
    :data:`CPU_TRIM_THRESHOLD_BYTES` of free memory per malloc arena stays with the process.

    Left alone: a process whose environment sets glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` (the user's choice wins), and non-glibc C libraries
    (macOS, musl), where this returns False.
    """
    global _cpu_allocator_tuned
    if _cpu_allocator_tuned:
        return True
    if any(name in os.environ for name in GLIBC_ALLOCATOR_ENV):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- present in glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _cpu_allocator_tuned = (
        mallopt(GLIBC_M_MMAP_THRESHOLD, CPU_MMAP_THRESHOLD_BYTES) == 1
        and mallopt(GLIBC_M_TRIM_THRESHOLD, CPU_TRIM_THRESHOLD_BYTES) == 1
    )
    return _cpu_allocator_tuned
