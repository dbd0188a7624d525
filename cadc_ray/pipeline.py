"""The steps every experiment goes through before its TTNN trains, written once.

prepare the dataset -> materialize its split -> (materialize the samples) -> pretrain the
teacher, or reuse a finished one -> put its tables in the object store once -> build the
TTNN's inputs. Two callers arrange them:

- :func:`cadc_ray.run.run_experiment` (one experiment; ``scripts/reproduce_tables.py``
  shares teachers between its runs through ``run_experiment(pretrain_cache=...)``, an
  :class:`InMemoryTeachers`);
- :mod:`cadc_ray.sweep.driver` (every dataset, sample and teacher of a sweep once, before
  the trials; teachers saved under the sweep's folder, a :class:`SavedTeachers`).

Nothing here imports Ray, torch or the data layer at import time: the sweep package is
imported by commands that never start Ray (``--check``, spec validation).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np

from cadc_ray.atomic import write_atomic, write_text_atomic
from cadc_ray.config import EvalConfig, ExperimentConfig, to_dict
from cadc_ray.methods import METHODS
from cadc_ray.pretrain_key import pretrain_key

if TYPE_CHECKING:
    from ray import ObjectRef

    from cadc_ray.data import HeldOutSets, Manifest, SplitPaths
    from cadc_ray.models import PretrainedTables
    from cadc_ray.runtime.pretrain import PretrainResult
    from cadc_ray.runtime.session import StagePlacement
    from cadc_ray.runtime.ttnn import TTNNInputs

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Data: prepared folder, split, samples


@dataclass(frozen=True)
class DatasetInputs:
    """One prepared dataset with its split (paths only: Train workers and trials read them
    themselves, so this is cheap to pickle)."""

    prepared: str
    split: SplitPaths
    num_users: int
    num_items: int


def data_key(config: ExperimentConfig) -> str:
    """Identity of a config's dataset (everything in ``data`` but the sample)."""
    data = {
        k: v for k, v in to_dict(config.data).items() if k not in ("filter_ratio", "sample_seed")
    }
    return json.dumps(data, sort_keys=True)


def distinct_samples(configs: Sequence[ExperimentConfig]) -> list[tuple[float, int]]:
    """(filter_ratio, sample_seed) of every config that trains on a sample, sorted."""
    return sorted(
        {
            (config.data.filter_ratio, config.data.sample_seed)
            for config in configs
            if not METHODS[config.method].uses_full_data
        }
    )


def prepare_data(config: ExperimentConfig) -> tuple[Path, Manifest]:
    """The prepared dataset folder (written once, reused after) and its manifest.

    Plain files, no Ray: bad input fails here, before any cluster resource is taken.
    """
    from cadc_ray.data import Manifest, prepare_dataset

    prepared = prepare_dataset(config.data, Path(config.output_root))
    return prepared, Manifest.load(prepared)


def split_dataset(prepared: Path, manifest: Manifest) -> DatasetInputs:
    """The prepared dataset with its leave-last-two-out split, materialized once and
    reused after (above 2 M interactions a Ray Data job: needs a running Ray)."""
    from cadc_ray.data import materialize_split

    return DatasetInputs(
        prepared=str(prepared),
        split=materialize_split(prepared),
        num_users=int(manifest.num_users),
        num_items=int(manifest.num_items),
    )


def prepare_inputs(configs: Sequence[ExperimentConfig]) -> dict[str, DatasetInputs]:
    """:func:`data_key` -> its dataset: each distinct dataset prepared and split once, and
    each distinct sample of its configs materialized once (later steps reuse them)."""
    from cadc_ray.data import materialize_sample

    result: dict[str, DatasetInputs] = {}
    by_dataset: dict[str, list[ExperimentConfig]] = {}
    for config in configs:
        by_dataset.setdefault(data_key(config), []).append(config)
    for key, group in by_dataset.items():
        first = group[0]
        dataset = split_dataset(*prepare_data(first))
        samples = distinct_samples(group)
        for filter_ratio, sample_seed in samples:
            materialize_sample(dataset.split, filter_ratio, sample_seed)
        result[key] = dataset
        logger.info(
            "dataset %s ready: %s (%d samples materialized)",
            first.data.dataset,
            dataset.prepared,
            len(samples),
        )
    return result


# ---------------------------------------------------------------------------------------
# Stage 1: the teacher, trained once per pretrain_key


@dataclass(frozen=True)
class Teacher:
    """A finished stage 1, as the steps after it use it."""

    key: str  # pretrain_key.pretrain_key of the configs that share it
    tables: PretrainedTables
    seconds: float  # how long it took when it was trained (also when it is reused)
    reused: bool  # found in a TeacherStore rather than trained by this call
    result: PretrainResult | None
    """The Train run's whole record (epochs, history, ...); None for tables loaded from a
    sweep's folder, which keeps only the tables and the seconds."""


class TeacherStore(Protocol):
    """Where finished teachers are kept for later experiments with the same key."""

    def load(self, key: str) -> Teacher | None: ...
    def save(self, key: str, result: PretrainResult) -> None: ...


class InMemoryTeachers:
    """Teachers kept in a mapping the caller owns (``run_experiment(pretrain_cache=...)``):
    shared by the experiments of one process."""

    def __init__(self, results: MutableMapping[str, PretrainResult]) -> None:
        self.results = results

    def load(self, key: str) -> Teacher | None:
        result = self.results.get(key)
        if result is None:
            return None
        return Teacher(key, result.tables, float(result.seconds), reused=True, result=result)

    def save(self, key: str, result: PretrainResult) -> None:
        self.results[key] = result


class SavedTeachers:
    """Teachers saved as files in ``folder`` (:func:`save_pretrained`): a resumed sweep
    reloads them instead of pretraining again.

    ``reuse``: False for a fresh sweep, which trains (and saves) every teacher even when
    the folder holds older tables.
    """

    def __init__(self, folder: Path, *, reuse: bool) -> None:
        self.folder = folder
        self.reuse = reuse

    def load(self, key: str) -> Teacher | None:
        saved = load_pretrained(self.folder, key) if self.reuse else None
        if saved is None:
            return None
        logger.info("pretraining %s: reusing %s", key, self.folder / f"{key}.npz")
        tables, seconds = saved
        return Teacher(key, tables, seconds, reused=True, result=None)

    def save(self, key: str, result: PretrainResult) -> None:
        save_pretrained(self.folder, key, result.tables, float(result.seconds))


def save_pretrained(folder: Path, key: str, tables: PretrainedTables, seconds: float) -> None:
    """``<key>.npz`` (user, item) + ``<key>.json`` (pretrainer, seconds), each atomic."""
    # keep_suffix: np.savez appends ".npz" to a name that lacks it
    write_atomic(
        folder / f"{key}.npz",
        lambda temporary: np.savez(temporary, user=tables.user, item=tables.item),
        keep_suffix=True,
    )
    meta = {
        "key": key,
        "pretrainer": tables.pretrainer,
        "global_bias": float(tables.global_bias),
        "seconds": seconds,
        "width": int(tables.user.shape[1]),
    }
    write_text_atomic(folder / f"{key}.json", json.dumps(meta, indent=2) + "\n")


def load_pretrained(folder: Path, key: str) -> tuple[PretrainedTables, float] | None:
    """The tables and seconds saved by :func:`save_pretrained`, or None."""
    from cadc_ray.models.pretrained import PretrainedTables

    meta_file, table_file = folder / f"{key}.json", folder / f"{key}.npz"
    if not (meta_file.is_file() and table_file.is_file()):
        return None
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if "global_bias" not in meta:
        # Saved before the tables carried the teacher's global bias (and before the ALS
        # export was calibrated, docs/method_notes.md): pretrain again rather than guess.
        return None
    with np.load(table_file) as arrays:
        tables = PretrainedTables(
            user=arrays["user"],
            item=arrays["item"],
            pretrainer=meta["pretrainer"],
            global_bias=float(meta["global_bias"]),
        )
    return tables, float(meta["seconds"])


def pretrain(
    config: ExperimentConfig,
    dataset: DatasetInputs,
    *,
    teachers: TeacherStore | None,
    use_gpu: bool,
    run_name: str,
    storage_path: str,
    placement: StagePlacement = "this_process",
    announce: bool = False,
) -> Teacher:
    """The teacher of ``config`` (a pretraining method): from ``teachers`` when it holds
    this config's :func:`~cadc_ray.pretrain_key.pretrain_key`, else trained on D_full
    (``runtime.pretrain.fit_pretrain``, placed by :func:`call_stage`) and saved there.

    ``announce``: log a line naming the key before training (the sweep trains several
    teachers in a row; a single run's console has its stage lines only).
    """
    key = pretrain_key(config)
    if key is None:
        raise ValueError(f"method {config.method!r} does not pretrain")
    found = teachers.load(key) if teachers is not None else None
    if found is not None:
        return found
    if announce:
        logger.info("pretraining %s (%s, d=%d)", key, config.method, config.pretrain.embedding_dim)
    result = call_stage(
        fit_teacher,
        (config, dataset, use_gpu, run_name, storage_path),
        config=config,
        stage="pretrain",
        run_name=run_name,
        use_gpu=use_gpu,
        placement=placement,
    )
    if teachers is not None:
        teachers.save(key, result)
    return Teacher(key, result.tables, float(result.seconds), reused=False, result=result)


def fit_teacher(
    config: ExperimentConfig,
    dataset: DatasetInputs,
    use_gpu: bool,
    run_name: str,
    storage_path: str,
) -> PretrainResult:
    """Stage 1 of ``config`` on ``dataset``'s D_full (``runtime.pretrain.fit_pretrain``): in
    the driver (:func:`pretrain`) or as the body of a Ray task (:func:`train_teachers`)."""
    from cadc_ray.runtime.pretrain import fit_pretrain

    return fit_pretrain(
        config,
        dataset.split,
        num_users=dataset.num_users,
        num_items=dataset.num_items,
        use_gpu=use_gpu,
        run_name=run_name,
        storage_path=storage_path,
    )


StageName = Literal["pretrain", "ttnn"]


def stage_task_options(config: ExperimentConfig, use_gpu: bool, stage: StageName) -> dict[str, Any]:
    """Ray resources of a task that runs ``stage`` of ``config``: the stage's own when it
    trains in the task's process (Train's local mode, ``num_workers: 0``), none when the
    task only drives a Train worker group or, for an ALS teacher, the ALS task, which
    reserve their own."""
    drives_only = config.resources.num_workers > 0 or (
        stage == "pretrain" and METHODS[config.method].pretrainer == "als"
    )
    if drives_only:
        return {"num_cpus": 0}
    return {"num_cpus": config.resources.cpus_per_worker, "num_gpus": 1 if use_gpu else 0}


class TimedStageResult(Protocol):
    """A stage's result (``PretrainResult``, ``TTNNResult``: frozen dataclasses)."""

    @property
    def seconds(self) -> float: ...  # wall time of the stage, its start included


StageResult = TypeVar("StageResult", bound=TimedStageResult)


def call_stage(
    fit: Callable[..., StageResult],
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    *,
    config: ExperimentConfig,
    stage: StageName,
    run_name: str,
    use_gpu: bool,
    placement: StagePlacement,
) -> StageResult:
    """``fit(*args, **kwargs)``, a fit of ``stage`` (``fit_teacher``,
    ``runtime.ttnn.fit_ttnn``), where ``placement`` (``runtime.session.stage_placement``)
    says: in one Ray task (:func:`stage_task`), else in this process. A fit that only
    drives (a worker group, the ALS task) is driven from here in any case.

    A task's result has the stage's ``seconds`` as seen from here: the task's start (a
    worker process, which may import torch first) counts, as a worker group's start does.
    """
    options = stage_task_options(config, use_gpu, stage) if placement == "ray_task" else {}
    if not options.get("num_cpus"):
        return fit(*args, **(kwargs or {}))
    import dataclasses
    import time

    import ray

    started = time.perf_counter()
    task = stage_task(config, use_gpu, stage, run_name)
    result: StageResult = ray.get(task.remote(fit, args, kwargs or {}))
    return dataclasses.replace(result, seconds=time.perf_counter() - started)  # type: ignore[type-var]


def stage_task(config: ExperimentConfig, use_gpu: bool, stage: StageName, run_name: str) -> Any:
    """The Ray remote function whose ``.remote(fit, args, kwargs)`` runs a fit of ``stage``
    as a task: the stage's resources (:func:`stage_task_options`), retried on a lost node
    as often as Train would restart it (``resources.max_failures``), named
    ``<config name>/<run_name>`` in the dashboard, its epoch lines on the console."""
    import ray

    return ray.remote(_stage_in_task).options(
        **stage_task_options(config, use_gpu, stage),
        max_retries=config.resources.max_failures,
        name=f"{config.name}/{run_name}",
    )


def _stage_in_task(
    fit: Callable[..., StageResult], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> StageResult:
    """The body of :func:`call_stage`'s task: the stage's console lines on, then the fit."""
    from cadc_ray.console import task_console

    task_console()
    return fit(*args, **kwargs)


def machine_teacher_slots(configs: Sequence[ExperimentConfig]) -> int:
    """How many teachers this machine trains at once: its cores but one (the driver's and
    Ray's own processes) over the largest ``resources.torch_threads``, at least 1.

    Why not Ray's logical CPUs: a locally started Ray has more of them than cores
    (``runtime.session.local_ray_cpus``). On the 2-core machine, 4 teachers at once took
    15-28 s each against 6-12 s one after the other, and 2 at once 7-23 s; the sweep did
    not get faster (53 and 58 s against 55 s, docs/sweeps.md). Their seconds are part of
    a trial's ``total_seconds`` objective, so contention would distort it too.
    """
    import os

    threads = max((config.resources.torch_threads for config in configs), default=1)
    return max(1, ((os.cpu_count() or 1) - 1) // max(1, threads))


def train_teachers(
    jobs: Sequence[tuple[str, ExperimentConfig, DatasetInputs]],
    *,
    teachers: TeacherStore,
    use_gpu: bool,
    storage_path: str,
    own_local_ray: bool,
    max_at_once: int | None = None,
) -> dict[str, Teacher]:
    """Trains the teachers of ``jobs`` (``(key, config, dataset)``, none of them in
    ``teachers``; configs with the resources their stage runs with,
    ``runtime.session.plan_stage``), saving each in ``teachers`` as it finishes;
    ``{key: Teacher}``.

    Up to ``max_at_once`` (None: all) run at once, each in a Ray task
    (:func:`stage_task`): Ray schedules them on the CPUs (or GPUs, or worker
    groups) there are, instead of one after the other in the driver. With one at a time,
    or one teacher, on the command's own local Ray (``own_local_ray``) they train in the
    driver. The Train run of ``key`` is named ``pretrain-<key>``. A local-mode stage that
    streams its rows trains alone, one after the other: its Ray Data job needs CPUs that
    concurrent in-process teachers would hold (docs/ray_notes.md, "CPU budget"); in the
    driver on the command's own Ray, else in a Ray task (:func:`pretrain`'s placement).
    Requires an initialized Ray.
    """
    from cadc_ray.runtime.ingest import resolve_ingest
    from cadc_ray.runtime.session import stage_placement

    def streams_in_process(config: ExperimentConfig, dataset: DatasetInputs) -> bool:
        return config.resources.num_workers == 0 and (
            resolve_ingest(config, dataset.split.train_dir, announce=False) == "stream"
        )

    trained: dict[str, Teacher] = {}
    in_tasks = [job for job in jobs if not streams_in_process(job[1], job[2])]
    at_once = len(in_tasks) if max_at_once is None else min(max_at_once, len(in_tasks))
    if at_once < 2 and own_local_ray:
        in_tasks = []
    for key, config, dataset in jobs:
        if any(job[0] == key for job in in_tasks):
            continue
        trained[key] = pretrain(
            config,
            dataset,
            teachers=teachers,
            use_gpu=use_gpu,
            run_name=f"pretrain-{key}",
            storage_path=storage_path,
            placement=stage_placement(config.resources, own_local_ray=own_local_ray),
            announce=True,
        )
    if not in_tasks:
        return trained
    import ray

    waiting = list(in_tasks)
    pending: dict[Any, str] = {}
    while waiting or pending:
        while waiting and len(pending) < at_once:
            key, config, dataset = waiting.pop(0)
            logger.info(
                "pretraining %s (%s, d=%d) in a Ray task",
                key,
                config.method,
                config.pretrain.embedding_dim,
            )
            run_name = f"pretrain-{key}"
            task = stage_task(config, use_gpu, "pretrain", run_name)
            ref = task.remote(fit_teacher, (config, dataset, use_gpu, run_name, storage_path), {})
            pending[ref] = key
        (done,), _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(done)
        result: PretrainResult = ray.get(done)
        teachers.save(key, result)  # as it finishes: an interrupted sweep keeps it
        logger.info("pretraining %s done in %.1f s", key, result.seconds)
        trained[key] = Teacher(
            key, result.tables, float(result.seconds), reused=False, result=result
        )
    return trained


def teacher_metrics(
    tables: PretrainedTables, held_out: HeldOutSets, eval_config: EvalConfig
) -> dict[str, dict[str, float]] | None:
    """The pretrained teacher's own val / test metrics (fractions), ranked exactly as the
    TTNN is (same masks, same ks); None when the tables cannot score (CADC-MLP)."""
    from cadc_ray.evaluation import evaluate_full_ranking
    from cadc_ray.models.pretrained import teacher_scorer

    scorer = teacher_scorer(tables)
    if scorer is None:
        return None
    ks, batch = eval_config.ks, eval_config.user_batch_size
    return {
        "val": evaluate_full_ranking(
            scorer, held_out.val_users, held_out.val_items, held_out.known, ks, batch
        ),
        "test": evaluate_full_ranking(
            scorer,
            held_out.test_users,
            held_out.test_items,
            held_out.known,
            ks,
            batch,
            extra_mask_items=held_out.test_extra_mask,
        ),
    }


# ---------------------------------------------------------------------------------------
# Stage 2's inputs


def put_tables(tables: PretrainedTables) -> list[ObjectRef[PretrainedTables]]:
    """``ray.put``s the tables once and returns ``[ref]``.

    Wrapped in a list: a bare top-level ref passed to a Train worker, task or trial would
    be resolved by value and copied into each (docs/ray_notes.md, "Object store"); inside
    a list every reader gets the reference to the one shared, zero-copy object.
    """
    import ray

    return [ray.put(tables)]


def ttnn_inputs(
    config: ExperimentConfig, dataset: DatasetInputs, pretrained: list[Any] | None
) -> TTNNInputs:
    """The TTNN's training data for ``config`` (its sample, materialized once and reused
    after, or D_full for GS) with the teacher's ``[ref]`` when the method pretrains."""
    from cadc_ray.runtime.ttnn import build_ttnn_inputs

    return build_ttnn_inputs(config, Path(dataset.prepared), dataset.split, pretrained=pretrained)
