"""The sweep driver: shared setup once, then Ray Tune trials that each run a TorchTrainer.

Shape (docs/ray_notes.md, "Train inside Tune"): a Tune *function* trainable, :func:`run_trial`,
builds and fits the TTNN's ``TorchTrainer`` through :func:`cadc_ray.runtime.ttnn.fit_ttnn`
with ``RunConfig(name=f"train-{trial_id}", callbacks=[SweepReportCallback()])`` — never
``Tuner(trainer)``, which Train V2 does not support.

Before ``Tuner.fit`` the driver, once (through :mod:`cadc_ray.pipeline`, the steps
``cadc_ray.run`` takes too):

1. prepares every dataset in the space and materializes its split and every discrete
   sample (trials reuse them; nothing is recomputed per trial);
2. pretrains once per distinct pretraining config (dataset, pretrainer variant, dim,
   every ``pretrain.*`` field, seed), saves the tables under ``<output>/pretrained/``
   (so ``--resume`` does not pretrain again) and ``ray.put``s each table set ONCE;
3. hands the refs to the trials wrapped in lists inside :class:`TrialContext` through
   ``tune.with_parameters`` (a bare top-level ref would be resolved by value and copied
   into every trial: docs/ray_notes.md, "Object store").

Trials cap their concurrency with a custom resource (``cadc_trial_slot``) when the
cluster has it (a Ray started by the sweep does), so a trial's driver does not hold a
CPU its Train workers or Ray Data need; ``max_concurrent_trials`` also goes to Tune
(custom searchers otherwise run one trial at a time: ray #46965).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cadc_ray.atomic import write_text_atomic
from cadc_ray.config import ConfigError, ExperimentConfig, absolute_paths
from cadc_ray.pipeline import (
    DatasetInputs,
    SavedTeachers,
    Teacher,
    data_key,
    machine_teacher_slots,
    prepare_inputs,
    put_tables,
    stage_task_options,
    train_teachers,
    ttnn_inputs,
)
from cadc_ray.storage import is_uri
from cadc_ray.sweep.outcome import SweepOutcome
from cadc_ray.sweep.space import (
    TRIAL_KEY,
    OptunaSpace,
    distinct_pretrain_configs,
    distinct_trial_count,
    grid_points,
    pretrain_key,
    resolve_trial_config,
    searched_trial_count,
    trial_configs_for_setup,
)
from cadc_ray.sweep.spec import SweepSpec, known_metrics
from cadc_ray.sweep.summary import trial_summary

logger = logging.getLogger(__name__)

TRIAL_SLOT_RESOURCE = "cadc_trial_slot"
"""Custom resource a trial's driver takes: caps concurrent trials without eating CPUs."""

FALLBACK_DRIVER_CPUS = 0.1
"""A trial driver's CPU share on clusters without :data:`TRIAL_SLOT_RESOURCE`."""

TUNE_DIR = "tune"
TRAIN_DIR = "train"
PRETRAINED_DIR = "pretrained"
SPEC_FILE = "spec.json"
STUDY_FILE = "optuna.journal"
"""The Optuna study of an Optuna sweep without ``searcher.storage`` (in the output folder)."""


# ---------------------------------------------------------------------------------------
# What the trials share


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its overrides; put in the object store once.

    ``pretrained_refs`` maps a pretraining key to ``[ObjectRef]`` — wrapped in a list so
    that Ray hands trials the reference (shared, zero-copy) and not a resolved copy.
    """

    base_config: ExperimentConfig
    datasets: dict[str, DatasetInputs]
    pretrained_refs: dict[str, list[Any]]
    pretrain_seconds: dict[str, float]
    train_storage_path: str
    use_gpu: bool
    metric_names: tuple[str, ...]
    own_local_ray: bool = False  # the sweep started its own local Ray (plan_stage)


# ---------------------------------------------------------------------------------------
# The trial


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Tune function trainable: one TTNN training run, reported to Tune.

    Per-epoch validation metrics reach Tune through ``SweepReportCallback`` (Train
    worker groups) or, in local mode (``num_workers: 0``, which skips RunConfig
    callbacks), from the Ray task that trains (see :data:`_local_mode_fit`): it streams
    each epoch's report back and this function passes it on, so ASHA works in both
    modes. The final report carries every metric of
    :func:`cadc_ray.sweep.spec.known_metrics` plus bookkeeping (pretraining key and the
    id of the ObjectRef the trial read).
    """
    import ray
    from ray import tune

    from cadc_ray.runtime.session import plan_stage
    from cadc_ray.runtime.ttnn import fit_ttnn
    from cadc_ray.sweep.callbacks import SweepReportCallback, epoch_result

    overrides: dict[str, Any] = dict(config[TRIAL_KEY])
    trial_config = resolve_trial_config(context.base_config, overrides)
    trial_id = tune.get_context().get_trial_id()
    dataset = context.datasets[data_key(trial_config)]
    key = pretrain_key(trial_config)
    refs: list[Any] | None = None
    pretrain_seconds = 0.0
    if key is not None:
        if key not in context.pretrained_refs:
            raise RuntimeError(
                f"trial {trial_id}: no pretrained tables for {key} (known: {sorted(context.pretrained_refs)})"
            )
        refs = context.pretrained_refs[key]
        pretrain_seconds = context.pretrain_seconds[key]
    started_at = time.time()
    inputs = ttnn_inputs(trial_config, dataset, refs)
    trial_config, _ = plan_stage(
        trial_config,
        inputs.train_path,
        use_gpu=context.use_gpu,
        own_local_ray=context.own_local_ray,
    )
    run_name = f"train-{trial_id}"
    if trial_config.resources.num_workers > 0:
        result = fit_ttnn(
            trial_config,
            inputs,
            use_gpu=context.use_gpu,
            run_name=run_name,
            storage_path=context.train_storage_path,
            callbacks=[SweepReportCallback(context.metric_names, pretrain_seconds)],
        )
    else:
        stream = _local_mode_fit.options(
            **local_mode_task_options(trial_config, context.use_gpu),
            name=f"{trial_config.name}/{run_name}",  # as pipeline.call_stage names its tasks
        ).remote(trial_config, inputs, context.use_gpu, run_name, context.train_storage_path)
        result = None
        try:
            for ref in stream:
                kind, payload = ray.get(ref)
                if kind == EPOCH_EVENT:
                    tune.report(epoch_result(payload, context.metric_names, pretrain_seconds))
                else:
                    result = payload
        finally:
            # After an ASHA stop the next tune.report raises SystemExit in this thread
            # (or Tune ends the actor first, and Ray the tasks it owns): the training
            # task must not go on using the trial's CPUs.
            if result is None:
                ray.cancel(stream, force=True)
        if result is None:
            raise RuntimeError(f"trial {trial_id}: the local-mode fit ended without a result")
        # The fit's own seconds, timed in the task: not the task's start, which only the
        # first trials on a new worker process pay (about 3 s: it imports torch). Counted,
        # it would make the time objective (total_seconds) rank worker-process starts.
    finished_at = time.time()
    summary = trial_summary(result, pretrain_seconds)
    summary.update(
        {
            "pretrain_key": key or "",
            "pretrained_ref": refs[0].hex() if refs else "",
            "trial_started_at": started_at,
            "trial_finished_at": finished_at,
            "node_id": ray.get_runtime_context().get_node_id(),
        }
    )
    tune.report(summary)


def local_mode_task_options(config: ExperimentConfig, use_gpu: bool) -> dict[str, Any]:
    """Resources of the task that runs a local-mode (``num_workers: 0``) TTNN fit."""
    return {
        **stage_task_options(config, use_gpu, "ttnn"),
        # Outside the trial's placement group (Tune captures child tasks into it).
        "scheduling_strategy": "DEFAULT",
        # A generator task: each epoch's report is an object the trial reads as it comes.
        "num_returns": "streaming",
    }


EPOCH_EVENT = "epoch"
RESULT_EVENT = "result"


def _local_mode_fit_impl(
    config: ExperimentConfig, inputs: Any, use_gpu: bool, run_name: str, storage_path: str
) -> Iterator[tuple[str, Any]]:
    """Yields ``(EPOCH_EVENT, metrics)`` per epoch, then ``(RESULT_EVENT, TTNNResult)``.

    The fit runs on a thread of this task's process, where the epoch loop's reports
    reach :func:`cadc_ray.runtime.worker.epoch_listener`; this generator hands them on
    as they come (a Ray streaming generator), so the trial can report each epoch to
    Tune while the fit goes on. The fit's exception is raised here.
    """
    import queue

    from cadc_ray.runtime.ttnn import fit_ttnn
    from cadc_ray.runtime.worker import epoch_listener

    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            with epoch_listener(lambda metrics: events.put((EPOCH_EVENT, metrics))):
                result = fit_ttnn(
                    config, inputs, use_gpu=use_gpu, run_name=run_name, storage_path=storage_path
                )
            events.put((RESULT_EVENT, result))
        except BaseException as error:  # re-raised in the task, which Ray reports
            failure.append(error)
            events.put(("error", None))

    thread = threading.Thread(target=fit, name=f"{run_name}-fit", daemon=True)
    thread.start()
    while True:
        kind, payload = events.get()
        if failure:
            raise failure[0]
        yield kind, payload
        if kind == RESULT_EVENT:
            thread.join()
            return


class _RemoteFunction:
    """``ray.remote(fn)`` created at first use (nothing Ray-related at import time)."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn
        self._remote: Any = None

    def options(self, **options: Any) -> Any:
        import ray

        if self._remote is None:
            self._remote = ray.remote(self._fn)
        return self._remote.options(**options)


_local_mode_fit = _RemoteFunction(_local_mode_fit_impl)
"""Train V2 local mode refuses to run inside a Tune trial's process (``ray.train.*``
raises a DeprecationWarning there, ray #49454), so a ``num_workers: 0`` trial runs its
in-process TorchTrainer in a Ray (generator) task instead: no worker-group start
(~15-20 s), a pooled worker process. The task takes the trial's CPUs; the trial's actor
reports the epochs the task streams back."""


# ---------------------------------------------------------------------------------------
# Searcher and scheduler


def study_storage(spec: SweepSpec, output_dir: Path) -> Any:
    """The Optuna study's storage: ``searcher.storage`` (an RDB URL), else a journal file.

    The journal file (:data:`STUDY_FILE` in the output folder) holds every trial told to
    Optuna as it happens; ``--resume`` continues the same study (Tune's searcher state
    points at it) and ``optuna-dashboard <output_dir>/optuna.journal`` opens it.
    """
    import optuna

    if spec.searcher.storage is not None:
        return optuna.storages.RDBStorage(spec.searcher.storage)
    from optuna.storages.journal import JournalFileBackend

    output_dir.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(output_dir / STUDY_FILE)))


def build_search(spec: SweepSpec, output_dir: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """(search_alg or None, param_space) for the spec's searcher.

    Optuna's study is stored (:func:`study_storage`) when ``output_dir`` is given,
    in memory otherwise.
    """
    from ray import tune

    if spec.searcher.kind == "grid":
        points = grid_points(spec)
        return None, {TRIAL_KEY: tune.grid_search(points)}
    import optuna

    sampler: Any
    if spec.searcher.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=spec.searcher.seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.searcher.seed)
    metrics = [objective.metric for objective in spec.objectives]
    modes: list[str] = [objective.mode for objective in spec.objectives]
    from cadc_ray.sweep.callbacks import SweepOptunaSearch

    searcher = SweepOptunaSearch(
        space=OptunaSpace(spec.base_config.method, spec.space),
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=sampler,
        study_name=spec.name,
        storage=None if output_dir is None else study_storage(spec, output_dir),
        distinct_trials=distinct_trial_count(spec),
    )
    return searcher, {}


def build_scheduler(spec: SweepSpec) -> Any:
    if spec.early_stopping.kind != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    stopping = spec.early_stopping
    # One Tune iteration per epoch, plus the final summary report: max_t past the last
    # epoch, so ASHA never stops a trial between its last epoch and its test metrics.
    max_t = stopping.max_t if stopping.max_t is not None else spec.base_config.train.epochs + 1
    return ASHAScheduler(
        metric=stopping.metric,
        mode=stopping.mode,
        grace_period=stopping.grace_period,
        reduction_factor=stopping.reduction_factor,
        max_t=max(max_t, stopping.grace_period),
    )


def trial_resources(
    config: ExperimentConfig, use_gpu: bool, has_slot_resource: bool
) -> dict[str, float]:
    """What a trial's driver actor holds.

    The trial's actor only drives: worker groups (``num_workers >= 1``) get their own
    CPUs/GPUs from Train, and local mode runs in a task that takes them.
    """
    # Local mode trains in a Ray task that takes the CPUs itself (see _local_mode_fit).
    resources: dict[str, float] = {"CPU": 0.0 if has_slot_resource else FALLBACK_DRIVER_CPUS}
    if has_slot_resource:
        resources[TRIAL_SLOT_RESOURCE] = 1.0
    return resources


# ---------------------------------------------------------------------------------------
# Ray, setup and pretraining


def sweep_ray_target(spec: SweepSpec, address: str | None) -> str | None:
    """The cluster the sweep connects to, or None: it starts a local Ray of its own."""
    from cadc_ray.runtime.session import ray_target

    return ray_target(address or spec.ray.address)


def start_ray(spec: SweepSpec, address: str | None) -> bool:
    """Starts a local Ray (with the trial-slot resource) or connects; True if this call did."""
    import ray

    if ray.is_initialized():
        return False
    target = sweep_ray_target(spec, address)
    if target is not None:
        from cadc_ray.runtime.session import init_ray

        return init_ray(target, include_dashboard=spec.ray.include_dashboard)
    # Train V2 runs appear in the dashboard only when this is set before ray.init
    # (docs/ray_notes.md, "Dashboard").
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    from cadc_ray.runtime.session import local_ray_cpus, ray_job_env

    num_cpus = spec.ray.num_cpus or local_ray_cpus(
        spec.base_config.resources, spec.max_concurrent_trials
    )
    options: dict[str, Any] = {
        "address": "local",
        "num_cpus": num_cpus,
        "resources": {TRIAL_SLOT_RESOURCE: float(spec.max_concurrent_trials)},
        "include_dashboard": spec.ray.include_dashboard,
        "runtime_env": ray_job_env(),
    }
    if spec.ray.object_store_memory_mb is not None:
        options["object_store_memory"] = spec.ray.object_store_memory_mb * 1024 * 1024
    logger.info(
        "starting a local Ray: %d logical CPUs, %d trial slots",
        num_cpus,
        spec.max_concurrent_trials,
    )
    ray.init(**options)
    return True


def pretrain_all(
    configs: Mapping[str, ExperimentConfig],
    datasets: Mapping[str, DatasetInputs],
    *,
    output_dir: Path,
    train_storage_path: str,
    use_gpu: bool,
    reuse_saved: bool,
    outcome: SweepOutcome,
    own_local_ray: bool = False,
) -> tuple[dict[str, list[Any]], dict[str, float]]:
    """Pretrains once per key (or loads the saved tables) and ``ray.put``s each ONCE.

    The tables are saved under the local ``output_dir`` (:data:`PRETRAINED_DIR`); the
    Train run (checkpoints) goes to ``train_storage_path`` (local path or URI).
    """
    from cadc_ray.runtime.session import plan_stage

    saved = SavedTeachers(output_dir / PRETRAINED_DIR, reuse=reuse_saved)
    found: dict[str, Teacher] = {}
    jobs = []
    for key, config in configs.items():
        teacher = saved.load(key)
        if teacher is not None:
            found[key] = teacher
            continue
        dataset = datasets[data_key(config)]
        stage_config, _ = plan_stage(
            config, dataset.split.train_dir, use_gpu=use_gpu, own_local_ray=own_local_ray
        )
        jobs.append((key, stage_config, dataset))
    # Teachers to train run at once, each in a Ray task (pipeline.train_teachers); on
    # this machine's own Ray, no more than its cores hold.
    at_once = machine_teacher_slots([job[1] for job in jobs]) if own_local_ray else None
    found.update(
        train_teachers(
            jobs,
            teachers=saved,
            use_gpu=use_gpu,
            storage_path=train_storage_path,
            own_local_ray=own_local_ray,
            max_at_once=at_once,
        )
    )
    refs: dict[str, list[Any]] = {}
    seconds: dict[str, float] = {}
    for key in configs:  # in the configs' order, whatever order they finished in
        teacher = found[key]
        (outcome.pretrain_loaded if teacher.reused else outcome.pretrain_runs).append(key)
        refs[key] = put_tables(teacher.tables)
        seconds[key] = teacher.seconds
        outcome.pretrained_ref_ids[key] = refs[key][0].hex()
    return refs, seconds


def check_data_inputs(spec: SweepSpec, configs: Sequence[ExperimentConfig]) -> None:
    """Every distinct dataset's raw input exists (what prepare_dataset reads): no Ray needed.

    Raises ConfigError naming the spec file and the missing path, so a typo in
    ``data.path`` fails before ``ray.init`` asks a cluster for anything.
    """
    from cadc_ray.data import DataError
    from cadc_ray.data.readers import list_input_files, resolve_input_path

    checked: set[str] = set()
    for config in configs:
        key = data_key(config)
        if key in checked or config.data.dataset == "synthetic":
            continue
        checked.add(key)
        try:
            path = resolve_input_path(config.data)
            for file in list_input_files(config.data, path):
                if not file.is_file():
                    what = "is a folder, expected a file" if file.is_dir() else "file not found"
                    raise DataError(
                        f"{file}: {what} (data.path for dataset {config.data.dataset!r})"
                    )
        except DataError as error:
            raise ConfigError(f"{spec.source}: data.path: {error}") from None


# ---------------------------------------------------------------------------------------
# Storage (local, NFS or a pyarrow URI such as s3://) and signals


def storage_root(spec: SweepSpec, output_dir: Path) -> str:
    """Where Tune's experiment (``tune/``) and the Train runs (``train/``) live.

    ``output_dir`` when ``spec.storage_path`` is None, else ``<storage_path>/<name>``:
    a URI is kept as text (``Path`` would turn ``s3://b`` into ``s3:/b``), a local
    path is made absolute (trials run in other working directories).
    """
    if spec.storage_path is None:
        return str(output_dir)
    if is_uri(spec.storage_path):
        return f"{spec.storage_path.rstrip('/')}/{spec.name}"
    return str(Path(spec.storage_path).expanduser().resolve() / spec.name)


def join_storage(root: str, name: str) -> str:
    """``root/name`` for a URI or a local path."""
    return f"{root.rstrip('/')}/{name}"


def _forward_sigterm_to_sigint(signum: int, frame: Any) -> None:
    """SIGTERM -> whatever SIGINT does right now (Tune's graceful stop during ``fit``).

    ``ray.init`` installs a SIGTERM handler that just exits, so Tune never saves its
    experiment state and a trial that had finished stays RUNNING there (``--resume``
    then runs it again). Tune's SIGINT handler (``ray.tune.tune._setup_signal_catching``)
    sets its stop event, Tune checkpoints the experiment and returns; outside ``fit``
    Python's default SIGINT handler raises KeyboardInterrupt (cleanup via ``finally``).
    """
    logger.warning("SIGTERM received: stopping the sweep as for Ctrl-C (SIGINT)")
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIG_DFL / SIG_IGN / not set from Python
        raise KeyboardInterrupt


@contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """Installs :func:`_forward_sigterm_to_sigint` (main thread only); restores on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _forward_sigterm_to_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def restored_sigint() -> Iterator[None]:
    """Puts the SIGINT handler back afterwards: a Train run on the main thread (the
    pretraining) installs its own (abort that run) and never removes it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------------
# The sweep


def check_output_dir(spec: SweepSpec, output_dir: Path, resume: bool) -> None:
    """Fresh sweeps need a fresh folder; ``--resume`` needs the same spec's Tune state.

    Tune's state is looked up at ``<storage root>/tune`` (a URI works: ``Tuner.can_restore``
    reads it through pyarrow).
    """
    from ray.tune import Tuner

    tune_dir = join_storage(storage_root(spec, output_dir), TUNE_DIR)
    saved_spec = output_dir / SPEC_FILE
    if resume:
        if not Tuner.can_restore(tune_dir):
            raise ConfigError(f"{spec.source}: --resume: no sweep to resume in {tune_dir}")
        if saved_spec.is_file():
            before = json.loads(saved_spec.read_text(encoding="utf-8"))
            now = comparable_spec(spec)
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            if changed:
                raise ConfigError(
                    f"{spec.source}: --resume: the spec differs from the one {output_dir} was started "
                    f"with (in {changed}); resume with the same spec or use a new output_dir"
                )
        return
    if is_uri(tune_dir):
        holds_sweep = Tuner.can_restore(tune_dir)
    else:
        holds_sweep = Path(tune_dir).exists() and any(Path(tune_dir).iterdir())
    if holds_sweep:
        raise ConfigError(
            f"{spec.source}: {tune_dir} already holds a sweep: pass --resume to "
            "finish it, or --set output_dir=... (or storage_path=...) for a new one"
        )
    if (output_dir / STUDY_FILE).exists():
        # A fresh sweep would continue that study and mix its trials into this one.
        raise ConfigError(
            f"{spec.source}: {output_dir / STUDY_FILE} holds an Optuna study: pass --resume, "
            "or use a new output_dir"
        )


def comparable_spec(spec: SweepSpec) -> dict[str, Any]:
    """The spec as saved for --resume checks (JSON round trip; the source's name is left out)."""
    plain = spec.to_plain()
    plain.pop("source")
    result: dict[str, Any] = json.loads(json.dumps(plain, sort_keys=True, default=str))
    return result


def run_sweep(
    spec: SweepSpec,
    *,
    resume: bool = False,
    address: str | None = None,
    callbacks: Sequence[Any] = (),
) -> SweepOutcome:
    """Runs (or resumes) the sweep and writes the results table, best config and plots.

    ``callbacks``: extra ``ray.tune.Callback``s (loggers, ...) for a fresh sweep; a resumed
    sweep keeps the callbacks it was started with (Tune restores its RunConfig).
    Starts Ray when it is not initialized (and shuts down what it started). Every
    dataset's raw input is checked before that. While it runs, SIGTERM stops the sweep
    like SIGINT (Tune saves its state; ``outcome.interrupted``; ``--resume`` finishes it).

    One sweep only: a ``study_per`` spec is several (``sweep.tuned``, which calls this
    per stage); :func:`cadc_ray.sweep.cli.run_spec` runs either kind.
    """
    if spec.study_per is not None:
        raise ValueError(
            f"{spec.source}: study_per specs run several sweeps: use cadc_ray.sweep.cli.run_spec"
        )
    output_dir = spec.output_dir.resolve()
    base = absolute_paths(spec.base_config)
    spec_abs = _with_base(spec, base)
    setup_configs = trial_configs_for_setup(spec_abs)
    check_data_inputs(spec, setup_configs)
    check_output_dir(spec, output_dir, resume)
    root = storage_root(spec, output_dir)
    tune_path, train_path = join_storage(root, TUNE_DIR), join_storage(root, TRAIN_DIR)
    started = time.perf_counter()
    started_ray = start_ray(spec, address)
    import ray

    # Installed after ray.init, which sets its own exit-at-once SIGTERM handler.
    with sigterm_as_sigint():
        try:
            return _run_started_sweep(
                spec,
                spec_abs,
                setup_configs,
                output_dir=output_dir,
                storage=(root, tune_path, train_path),
                resume=resume,
                callbacks=callbacks,
                started=started,
                own_local_ray=started_ray and sweep_ray_target(spec, address) is None,
            )
        finally:
            if started_ray:
                ray.shutdown()


def _run_started_sweep(
    spec: SweepSpec,
    spec_abs: SweepSpec,
    setup_configs: list[ExperimentConfig],
    *,
    output_dir: Path,
    storage: tuple[str, str, str],
    resume: bool,
    callbacks: Sequence[Any],
    started: float,
    own_local_ray: bool = False,
) -> SweepOutcome:
    """:func:`run_sweep` once Ray is up: setup, pretraining, ``Tuner.fit``, reports."""
    import ray
    from ray import tune

    from cadc_ray.runtime.session import resolve_use_gpu
    from cadc_ray.sweep.callbacks import SweepProgressCallback
    from cadc_ray.sweep.report import collect_records, write_reports

    root, tune_path, train_path = storage
    base = spec_abs.base_config
    output_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_text_atomic(
            output_dir / SPEC_FILE,
            json.dumps(comparable_spec(spec), indent=2, sort_keys=True) + "\n",
        )
        write_text_atomic(
            output_dir / "spec.yaml", yaml.safe_dump(spec.to_plain(), sort_keys=False)
        )
    use_gpu = resolve_use_gpu(base.resources)
    outcome = SweepOutcome(output_dir=output_dir, records=[], storage_root=root)
    datasets = prepare_inputs(setup_configs)
    with restored_sigint():
        refs, seconds = pretrain_all(
            distinct_pretrain_configs(setup_configs),
            datasets,
            output_dir=output_dir,
            train_storage_path=train_path,
            use_gpu=use_gpu,
            reuse_saved=resume,
            outcome=outcome,
            own_local_ray=own_local_ray,
        )
    context = TrialContext(
        base_config=base,
        datasets=datasets,
        pretrained_refs=refs,
        pretrain_seconds=seconds,
        train_storage_path=train_path,
        use_gpu=use_gpu,
        metric_names=known_metrics(base),
        own_local_ray=own_local_ray,
    )
    has_slot = float(ray.cluster_resources().get(TRIAL_SLOT_RESOURCE, 0)) >= 1
    resources = trial_resources(base, use_gpu, has_slot)
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), resources)
    searcher, param_space = build_search(spec_abs, output_dir)
    if resume:
        tuner = tune.Tuner.restore(
            tune_path, trainable=trainable, param_space=param_space, resume_errored=True
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=build_scheduler(spec_abs),
                num_samples=spec.num_samples,
                max_concurrent_trials=spec.max_concurrent_trials,
                # Trial dirs named by id: stable across resumes and short.
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=root,
                callbacks=[SweepProgressCallback(), *callbacks],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    logger.info(
        "sweep %s: trial resources %s, output %s, Tune/Train storage %s",
        spec.name,
        resources,
        output_dir,
        root,
    )
    result_grid = tuner.fit()
    outcome.records = collect_records(result_grid, base)
    # Tune ends a Ctrl-C'd (or SIGTERM'd) sweep "successfully": trials it never created
    # are missing and the ones it cut off have no result marked done (ASHA-stopped ones do).
    outcome.search_ended = search_ended(spec, output_dir)
    if outcome.search_ended:
        logger.info(
            "sweep %s: the searcher ended the search after %d trials: %s",
            spec.name,
            len(outcome.records),
            outcome.search_ended,
        )
    outcome.interrupted = (
        len(outcome.records) < expected_trials(spec) and outcome.search_ended is None
    ) or any(record["status"] == "incomplete" for record in outcome.records)
    if outcome.interrupted:
        logger.warning("sweep %s interrupted: finish it with --resume", spec.name)
    outcome.wall_seconds = time.perf_counter() - started
    outcome.files = write_reports(spec_abs, outcome)
    return outcome


def expected_trials(spec: SweepSpec) -> int:
    """How many trials the sweep has when it is complete (an Optuna search may end sooner:
    :func:`search_ended`)."""
    if spec.searcher.kind == "grid":
        return len(grid_points(spec))
    return searched_trial_count(spec, spec.num_samples)


def search_ended(spec: SweepSpec, output_dir: Path) -> str | None:
    """Why the Optuna searcher ended the search before ``num_samples`` trials (read from
    the stored study, which a resumed searcher writes too), or None."""
    if spec.searcher.kind != "optuna":
        return None
    import optuna

    from cadc_ray.sweep.callbacks import SEARCH_ENDED_ATTR

    try:
        study = optuna.load_study(study_name=spec.name, storage=study_storage(spec, output_dir))
    except KeyError:  # no trial was ever asked (e.g. interrupted during pretraining)
        return None
    reason = study.user_attrs.get(SEARCH_ENDED_ATTR)
    return None if reason is None else str(reason)


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


def _with_base(spec: SweepSpec, base: ExperimentConfig) -> SweepSpec:
    import dataclasses

    return dataclasses.replace(spec, base_config=base)
