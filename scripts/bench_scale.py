"""How the pipeline scales in rows and workers, against single-process baselines (#10, item 7).

    python scripts/bench_scale.py --rows 1e6 1e7 --workers 1 2 --ingest memory stream \
        [--output benchmarks/results/bench_scale.json] [--work-dir /tmp]

For each row count N, on synthetic data shaped as in ``scripts/bench_data.py`` (N/50 users,
N/500 items within [2,000, 50,000]) and in one local Ray sized for the largest worker count
(``runtime.session.init_ray``: Train's workers plus a CPU for Ray Data):

1. data: ``pipeline.prepare_data``, ``pipeline.split_dataset`` and the 1/10 sample, each
   timed with ``bench_data``'s poller (peak RSS of the driver and of the Ray processes);
2. training, for every (workers, ingest): the MF teacher (``pipeline.pretrain``: 2 epochs, one
   per alternation phase) and the CADC TTNN on the sample (``runtime.ttnn.fit_ttnn``: 1 epoch,
   small towers) -> loop rows/s from the epochs' ``samples_per_second``, fixed cost (stage
   wall time minus time in the training epochs) and the workers' peak RSS (the epoch
   reports' ``peak_rss_mib``: the largest rank's ``ru_maxrss``);
3. evaluation: the teacher's full ranking of the validation and test users in the driver
   (``pipeline.teacher_metrics``), rankings/s (one ranking of all items per user and set);
4. baselines, after the Ray stages: the same split as one numpy/pyarrow pass in the driver
   (roles, Parquet files and the known-positives index, the work ``materialize_split``
   does), and ``bench_mf``'s plain dense torch MF loop on the same pairs and tables, in new
   processes (:func:`dense_mf_baseline`: glibc's allocator as it comes, and tuned as the
   stages tune it);
5. ratios: Ray split / baseline split (goal >= 0.5) and MF stage loop rows/s / dense loop
   rows/s (goal >= 4; also against the dense loop with the tuned allocator), per-worker
   memory growth against rows (goal: flat), and per data stage the fixed cost and marginal
   rows/s of a line fitted over the row counts.

Evaluation is bounded: above ``--eval-users`` evaluated users, the split's validation and
test files (in the benchmark's own work folder) keep an evenly spaced subset of users, so
evaluation costs the same at every N and the TTNN's stage time stays about training.

Results go to ``--output`` (atomically, after every training run: an interrupted run keeps
what finished) with the load average before and after, the machine, the commit and the
command. The work folder (data, Train storage) is a fresh temporary folder inside
``--work-dir``, removed at the end. ``--rows 2e4 --workers 1 --ingest memory`` is a smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# The sibling benchmarks are plain scripts, not a package: their helpers are imported by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import (
    SHARD_ROWS,
    _stage,
    git_commit,
    machine_info,
    speed_reference,
    synthetic_catalogue,
)
from bench_mf import bench_mf

from cadc_ray.atomic import write_atomic, write_text_atomic
from cadc_ray.config import ExperimentConfig, ResourcesConfig, replace_dotted
from cadc_ray.data.synthetic import MIN_INTERACTIONS_PER_USER

if TYPE_CHECKING:
    from cadc_ray.data import SplitPaths
    from cadc_ray.pipeline import DatasetInputs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "bench_scale.json"
INGEST_MODES = ("memory", "stream")
MIN_ROWS = 10_000  # fewer: the synthetic floor of 1,000 users x 3 interactions dominates
FILTER_RATIO = 10.0  # the sample the TTNN trains on (CADC), as in the paper's tables
SPLIT_GOAL = 0.5  # Ray split rows/s >= this x the single-process baseline (issue #10)
MF_GOAL = 4.0  # MF stage loop rows/s >= this x the plain dense torch loop (issue #10)
MAX_FLAT_ELASTICITY = 0.1
"""Per-worker memory counts as flat in rows when d log(memory) / d log(rows) is at most this:
10x the rows then cost at most 1.26x the memory."""
BASELINE_BYTES_PER_ROW = 160
"""An upper estimate (not measured) of the in-memory baseline split's peak per row: the 36 B
of columns read, the sort order and roles, the filtered copies, the known index's sort. The
baseline is skipped when this times N exceeds the available memory."""
DENSE_MF_MAX_PAIRS = 4_000_000
"""Pairs handed to the dense MF loop: its step costs depend on the batch and the tables
(users x d, items x d), not on how many pairs it draws batches from."""
DENSE_MF_PROCESSES = 2
"""New processes the dense baseline runs in, per allocator setting; the fastest counts. A
process with glibc's default allocator now and then runs every epoch at half speed
(docs/results.md, "Host allocator"): the best of several gives the baseline its best case."""
DENSE_MF_REPEATS = 2  # interleaved repeats inside each process (bench_mf); the best counts
ALLOCATOR_SETTINGS = ("glibc_defaults", "tuned")
"""The dense loop as a user's own process runs it (glibc's malloc as it comes: the goal's
"plain" loop), and with the allocator settings every cadc_ray stage uses
(``runtime.device.tune_cpu_allocator``), so the ratio is also shown without that gain."""
EVAL_SECONDS_KEY = "eval_seconds"
"""Seconds the TTNN stage spent evaluating, when it reports them: as a ``TTNNResult``
attribute (validation, test and the teacher's test) or, failing that, in each epoch report
(validation only). The TTNN's fixed cost is its time outside the loop minus these."""

logger = logging.getLogger("bench_scale")


# ---------------------------------------------------------------------------------------
# Arguments


def parse_rows(text: str) -> int:
    """``"1e6"`` -> 1000000; a whole number of at least :data:`MIN_ROWS`, else an error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rows") from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of rows")
    if value < MIN_ROWS:
        raise argparse.ArgumentTypeError(f"{text!r}: at least {MIN_ROWS:,} rows")
    return int(value)


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 1")
    return value


def worker_count(text: str) -> int:
    """Train workers: 0 is the stage in the benchmark's own process (Train's local mode)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0 (0: in-process)")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", type=parse_rows, default=[10**6, 10**7])
    parser.add_argument(
        "--workers",
        nargs="+",
        type=worker_count,
        default=[0, 1, 2],
        help="Train workers (0: in-process, what one CPU worker on a laptop's own Ray runs as)",
    )
    parser.add_argument(
        "--ingest",
        nargs="+",
        choices=INGEST_MODES,
        default=list(INGEST_MODES),
        help="resources.ingest of the training runs",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the temporary work folder is made (default: the system's temp folder)",
    )
    parser.add_argument(
        "--catalogue",
        nargs=2,
        type=positive_int,
        metavar=("USERS", "ITEMS"),
        default=None,
        help="the same users x items at every row count (default: both grow with the rows), "
        "so that the model's tables stay the same size and memory growth is the data's",
    )
    parser.add_argument("--mf-epochs", type=positive_int, default=2)
    parser.add_argument("--mf-dim", type=positive_int, default=95, help="MF d (rows of d+1)")
    parser.add_argument("--mf-batch-size", type=positive_int, default=8192)
    parser.add_argument("--ttnn-epochs", type=positive_int, default=1)
    parser.add_argument(
        "--eval-users",
        type=int,
        default=10_000,
        help="evaluated users kept in the split's validation/test files (0: all)",
    )
    parser.add_argument(
        "--torch-threads", type=positive_int, default=1, help="per Train worker and baseline"
    )
    parser.add_argument("--dense-batches", type=positive_int, default=40)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--object-store-mib",
        type=positive_int,
        default=None,
        help="the local Ray's object store (default: Ray's, 30%% of memory); below the "
        "streamed rows' size, a stream has to run past the store",
    )
    # One dense-baseline measurement in a new process (run by the benchmark itself):
    # FOLDER USERS ITEMS, and the allocator setting.
    parser.add_argument("--dense-baseline-of", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--allocator", choices=ALLOCATOR_SETTINGS, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked before any work: exits with a message on a bad one."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("rows", "workers", "ingest"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            parser.error(f"--{name}: {values} repeats a value")
    if args.eval_users < 0:
        parser.error(f"--eval-users: must be >= 0, got {args.eval_users}")
    if args.output.is_dir():
        parser.error(f"--output: {args.output} is a folder; name the JSON file")
    if args.catalogue is not None:
        users, items = args.catalogue
        smallest = min(args.rows)
        if smallest < MIN_INTERACTIONS_PER_USER * users:
            parser.error(
                f"--catalogue: {users:,} users need at least "
                f"{MIN_INTERACTIONS_PER_USER * users:,} rows; --rows has {smallest:,}"
            )
        if items < 2 * MIN_INTERACTIONS_PER_USER:
            parser.error(f"--catalogue: {items} items; at least {2 * MIN_INTERACTIONS_PER_USER}")
    if args.work_dir is not None and not args.work_dir.is_dir():
        parser.error(f"--work-dir: {args.work_dir} is not an existing folder")
    args.rows, args.workers = sorted(args.rows), sorted(args.workers)
    return args


# ---------------------------------------------------------------------------------------
# Pure summaries (tested on hand-made numbers)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def loop_rows_per_second(history: Sequence[Mapping[str, Any]]) -> float | None:
    """Rows/s over all of a stage's epochs: rows trained / seconds in the epochs (each
    report's ``samples_per_second`` times its ``epoch_seconds`` is the epoch's rows)."""
    seconds = sum(float(epoch["epoch_seconds"]) for epoch in history)
    rows = sum(
        float(epoch["samples_per_second"]) * float(epoch["epoch_seconds"]) for epoch in history
    )
    return rows / seconds if seconds > 0 else None


def peak_worker_rss_mib(history: Sequence[Mapping[str, Any]]) -> float | None:
    """The largest worker's peak RSS over a stage's epochs (None without the reports)."""
    peaks = [float(epoch["peak_rss_mib"]) for epoch in history if "peak_rss_mib" in epoch]
    return max(peaks) if peaks else None


def fit_line(points: Iterable[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares ``y = intercept + slope * x`` -> (intercept, slope); None for fewer
    than two distinct x."""
    pairs = np.asarray(list(points), dtype=np.float64).reshape(-1, 2)
    if np.unique(pairs[:, 0]).size < 2:
        return None
    slope, intercept = np.polyfit(pairs[:, 0], pairs[:, 1], 1)
    return float(intercept), float(slope)


def fixed_cost_fit(points: Iterable[tuple[int, float]]) -> dict[str, float | None] | None:
    """``(rows, seconds)`` of one stage at several N -> its fixed cost (seconds at 0 rows)
    and marginal rows/s (1 / slope; None when the slope is not positive)."""
    fitted = fit_line(points)
    if fitted is None:
        return None
    intercept, slope = fitted
    return {
        "fixed_seconds": intercept,
        "marginal_rows_per_second": 1 / slope if slope > 0 else None,
    }


def memory_elasticity(points: Sequence[tuple[int, float]]) -> float | None:
    """d log(memory) / d log(rows) between the smallest and the largest N (0: flat, 1:
    proportional); None for fewer than two N or a missing peak."""
    known = sorted((rows, mib) for rows, mib in points if mib)
    if len(known) < 2 or known[0][0] == known[-1][0]:
        return None
    (rows_low, mib_low), (rows_high, mib_high) = known[0], known[-1]
    return math.log(mib_high / mib_low) / math.log(rows_high / rows_low)


def reported_eval_seconds(result: Any) -> float | None:
    """The TTNN stage's own evaluation seconds (see :data:`EVAL_SECONDS_KEY`), or None."""
    total = getattr(result, EVAL_SECONDS_KEY, None)
    if total is not None:
        return float(total)
    per_epoch = [epoch[EVAL_SECONDS_KEY] for epoch in result.history if EVAL_SECONDS_KEY in epoch]
    return float(sum(per_epoch)) if per_epoch else None


def training_key(record: Mapping[str, Any]) -> str:
    return f"workers={record['workers']},ingest={record['ingest']}"


def data_stage_key(record: Mapping[str, Any]) -> str:
    """A data stage's name in the fixed-cost fit: with its engine when the record has one
    ("split (local)", "split (ray)"), so that one line is never fitted through an
    in-process point and a Ray Data point."""
    engine = record.get("engine")
    return str(record["stage"]) if engine is None else f"{record['stage']} ({engine})"


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The issue's figures over every finished N: ratios, fitted fixed costs, the goals."""
    stages: dict[str, list[tuple[int, float]]] = {}
    split_ratios: dict[str, float | None] = {}
    for run in runs:
        for record in run["data_stages"]:
            stages.setdefault(data_stage_key(record), []).append(
                (record["rows"], record["seconds"])
            )
        split_ratios[str(run["rows"])] = run["ratios"]["split_vs_baseline"]
    by_training: dict[str, dict[str, Any]] = {}
    for run in runs:
        for record in run["training"]:
            if "error" in record or "skipped" in record:
                continue
            entry = by_training.setdefault(
                training_key(record),
                {"rows": [], "mf_vs_dense": [], "mf_vs_dense_tuned_allocator": [], "memory": {}},
            )
            entry["rows"].append(run["rows"])
            entry["mf_vs_dense"].append(record["mf_vs_dense"])
            # Absent from runs made before the baseline had its own processes.
            entry["mf_vs_dense_tuned_allocator"].append(record.get("mf_vs_dense_tuned_allocator"))
            for stage in ("mf", "ttnn"):
                entry["memory"].setdefault(stage, []).append(
                    (run["rows"], record[stage]["peak_worker_rss_mib"])
                )
    training: dict[str, Any] = {}
    for key, entry in by_training.items():
        elasticity = {stage: memory_elasticity(points) for stage, points in entry["memory"].items()}
        training[key] = {
            "rows": entry["rows"],
            "mf_vs_dense": entry["mf_vs_dense"],
            "mf_vs_dense_tuned_allocator": entry["mf_vs_dense_tuned_allocator"],
            "peak_worker_rss_mib": {
                stage: [mib for _, mib in points] for stage, points in entry["memory"].items()
            },
            "memory_elasticity": elasticity,
        }
    known_split = [value for value in split_ratios.values() if value is not None]

    def known(key: str) -> list[float]:
        return [value for entry in training.values() for value in entry[key] if value is not None]

    known_mf, known_mf_tuned = known("mf_vs_dense"), known("mf_vs_dense_tuned_allocator")
    elasticities = [
        value
        for entry in training.values()
        for value in entry["memory_elasticity"].values()
        if value is not None
    ]
    goals = {
        "split_at_least_half_of_baseline": min(known_split) >= SPLIT_GOAL if known_split else None,
        "mf_at_least_4x_dense": min(known_mf) >= MF_GOAL if known_mf else None,
        "mf_at_least_4x_dense_tuned_allocator": (
            min(known_mf_tuned) >= MF_GOAL if known_mf_tuned else None
        ),
        "worker_memory_flat_in_rows": (
            max(elasticities) <= MAX_FLAT_ELASTICITY if elasticities else None
        ),
    }
    return {
        "data_stage_fixed_cost": {
            stage: fixed_cost_fit(points) for stage, points in stages.items()
        },
        "split_vs_baseline": split_ratios,
        "training": training,
        "goals": goals,
        "goal_thresholds": {
            "split_vs_baseline": SPLIT_GOAL,
            "mf_vs_dense": MF_GOAL,
            "max_memory_elasticity": MAX_FLAT_ELASTICITY,
        },
    }


# ---------------------------------------------------------------------------------------
# Configuration and data


def synthetic_shape(rows: int, catalogue: Sequence[int] | None = None) -> dict[str, int]:
    """``data.synthetic`` sizes for N rows, as ``scripts/bench_data.py`` draws them (its
    numbers stay comparable): N/50 users, N/500 items within [2,000, 50,000]; or the fixed
    ``catalogue`` (users, items)."""
    users, items = catalogue or synthetic_catalogue(rows)
    return {
        "num_users": users,
        "num_items": items,
        "num_interactions": rows,
        "shard_rows": min(rows, SHARD_ROWS),
    }


def ingest_supported() -> bool:
    """Whether this checkout's config has ``resources.ingest`` (the stream path)."""
    return "ingest" in {item.name for item in dataclasses.fields(ResourcesConfig)}


def experiment_config(
    rows: int, workers: int, ingest: str, work: Path, args: argparse.Namespace
) -> ExperimentConfig:
    """CADC on N synthetic rows: an MF teacher of ``--mf-dim`` and a small-towered TTNN."""
    values: dict[str, Any] = {
        "name": f"bench-scale-{rows}-w{workers}-{ingest}",
        "method": "cadc",
        "output_root": str(work),
        "data.prepared_dir": str(work / f"synthetic-{rows}"),
        "data.filter_ratio": FILTER_RATIO,
        **{
            f"data.synthetic.{key}": value
            for key, value in synthetic_shape(rows, args.catalogue).items()
        },
        "pretrain.embedding_dim": args.mf_dim,
        "pretrain.epochs": args.mf_epochs,
        "pretrain.batch_size": args.mf_batch_size,
        "pretrain.learning_rate": 5e-3,  # configs/ml-1m.yaml's
        "model.embedding_dim": args.mf_dim + 1,
        "model.tower_hidden": [64],
        "model.output_dim": 32,
        "model.feature_embedding_dim": 8,
        "train.epochs": args.ttnn_epochs,
        "train.early_stopping_patience": 0,
        "resources.num_workers": workers,
        "resources.cpus_per_worker": 1,
        "resources.torch_threads": args.torch_threads,
    }
    if ingest_supported():
        values["resources.ingest"] = ingest
    return replace_dotted(ExperimentConfig(), values)


def limit_evaluated_users(split: SplitPaths, max_users: int) -> int:
    """Keeps an evenly spaced subset of ``max_users`` users in the split's validation and
    test files (the same users in both); returns the evaluated users left. 0: keep all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    validation = pq.read_table(split.val_path)
    users = validation.column("user_id").to_numpy()
    if max_users == 0 or users.size <= max_users:
        return int(users.size)
    kept = users[np.linspace(0, users.size - 1, max_users).round().astype(np.int64)]
    for path in (split.val_path, split.test_path):
        table = pq.read_table(path)
        mask = np.isin(table.column("user_id").to_numpy(), kept)
        subset = table.filter(pa.array(mask))
        write_atomic(path, functools.partial(pq.write_table, subset))
    return int(kept.size)


def baseline_split(prepared: Path, target: Path) -> dict[str, int]:
    """The split as one numpy/pyarrow pass in this process: roles by
    ``leave_last_two_out_roles``, D_full / validation / test as Parquet, and the
    known-positives index, as ``materialize_split`` writes them. -> row counts.

    pyarrow allocates from the system allocator here as in ``materialize_split``
    (``arrow_pool.system_arrow_pool``), so that the ratio compares the two passes and not
    two allocators: with pyarrow's default (mimalloc) a process's first pass of 10^6 rows
    costs up to 0.6 s more, and the split used to be that first pass."""
    from cadc_ray.arrow_pool import system_arrow_pool

    with system_arrow_pool():
        return _baseline_split(prepared, target)


def _baseline_split(prepared: Path, target: Path) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cadc_ray.data import Manifest, leave_last_two_out_roles
    from cadc_ray.data.known import sorted_pair_batches, write_known_index
    from cadc_ray.data.layout import interactions_dir
    from cadc_ray.data.split import ROLE_TEST, ROLE_TRAIN, ROLE_VALIDATION

    manifest = Manifest.load(prepared)
    table = pq.read_table(interactions_dir(prepared))
    roles = leave_last_two_out_roles(
        table.column("user_id").to_numpy(),
        table.column("timestamp").to_numpy(),
        table.column("row_index").to_numpy(),
    )
    target.mkdir(parents=True, exist_ok=True)
    train = table.filter(pa.array(roles == ROLE_TRAIN))
    pq.write_table(train, target / "train.parquet")
    for role, name in ((ROLE_VALIDATION, "val"), (ROLE_TEST, "test")):
        held_out = table.filter(pa.array(roles == role)).sort_by("user_id")
        pq.write_table(held_out, target / f"{name}.parquet")
    known = target / "known"
    known.mkdir()
    users, items = train.column("user_id").to_numpy(), train.column("item_id").to_numpy()
    write_known_index(
        known, sorted_pair_batches(users, items), manifest.num_users, manifest.num_items
    )
    return {"rows": table.num_rows, "train_rows": train.num_rows}


def available_memory_bytes() -> int:
    with open("/proc/meminfo") as stream:
        for line in stream:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def dense_mf_measurement(
    train_dir: str, num_users: int, num_items: int, args: argparse.Namespace
) -> dict[str, Any]:
    """``bench_mf``'s dense autograd MF loop (and the fused step, for reference) in this
    process, on up to :data:`DENSE_MF_MAX_PAIRS` D_full pairs, at the stage's d, batch and
    threads. Run by :func:`dense_mf_baseline` in a new process per measurement."""
    import torch

    from cadc_ray.data import read_pairs

    # "tuned" means as the stages run: whatever tune_cpu_allocator achieves here (nothing on
    # a libc other than glibc, or where MALLOC_* is set). The JSON says which it was.
    allocator_tuned = False
    if args.allocator == "tuned":
        from cadc_ray.runtime.device import tune_cpu_allocator

        allocator_tuned = tune_cpu_allocator()
    users, items = read_pairs(Path(train_dir))
    if users.size > DENSE_MF_MAX_PAIRS:
        chosen = np.random.default_rng(0).choice(users.size, DENSE_MF_MAX_PAIRS, replace=False)
        users, items = users[chosen], items[chosen]
    else:  # pyarrow's arrays are read-only; torch wants writable ones
        users, items = users.copy(), items.copy()
    torch.set_num_threads(args.torch_threads)
    settings = argparse.Namespace(
        dim=args.mf_dim,
        lr=5e-3,
        batches=args.dense_batches,
        batch_size=args.mf_batch_size,
        negatives=ExperimentConfig().pretrain.num_negatives,
        repeats=DENSE_MF_REPEATS,
    )
    measured = bench_mf(users, items, num_users, num_items, settings)
    phases = [measured[phase] for phase in ("user", "item")]
    # Equal positives per phase: the rows/s of both phases together is the harmonic mean.
    measured["dense_rows_per_second"] = len(phases) / sum(
        1 / phase["dense_positives_per_s"] for phase in phases
    )
    measured["fused_rows_per_second"] = len(phases) / sum(
        1 / phase["fused_positives_per_s"] for phase in phases
    )
    measured["torch_threads"] = args.torch_threads
    measured["allocator"] = args.allocator
    measured["allocator_tuned"] = allocator_tuned
    return measured


def dense_mf_baseline(
    split: SplitPaths, num_users: int, num_items: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The dense loop measured in :data:`DENSE_MF_PROCESSES` new processes per allocator
    setting (:data:`ALLOCATOR_SETTINGS`), the fastest of each kept.

    Why new processes: measured in the benchmark's own process, the loop's speed depended
    on what ran there before it (the in-process stages tune the allocator: 411k rows/s at
    10^6 rows in one run, 283k in another without them; docs/results.md, "Scale")."""
    command = [sys.executable, str(Path(__file__).resolve()), "--output", os.devnull]
    command += ["--torch-threads", str(args.torch_threads), "--mf-dim", str(args.mf_dim)]
    command += ["--mf-batch-size", str(args.mf_batch_size)]
    command += ["--dense-batches", str(args.dense_batches)]
    command += ["--dense-baseline-of", str(split.train_dir), str(num_users), str(num_items)]
    baseline: dict[str, Any] = {"processes_per_setting": DENSE_MF_PROCESSES}
    for setting in ALLOCATOR_SETTINGS:
        measurements = []
        for _ in range(DENSE_MF_PROCESSES):
            child = subprocess.run(
                [*command, "--allocator", setting],
                capture_output=True,
                text=True,
                check=True,
            )
            lines = child.stdout.splitlines()
            measurements.append(json.loads(next(line for line in lines if line.startswith("{"))))
        best = max(measurements, key=lambda measured: measured["dense_rows_per_second"])
        baseline[setting] = {
            "dense_rows_per_second": best["dense_rows_per_second"],
            "fused_rows_per_second": best["fused_rows_per_second"],
            "dense_rows_per_second_per_process": [
                measured["dense_rows_per_second"] for measured in measurements
            ],
            "best_process": best,
        }
        logger.info(
            "dense MF baseline, %s allocator: %s rows/s per process",
            setting,
            [round(measured["dense_rows_per_second"]) for measured in measurements],
        )
    # The goal's "plain" loop: a user's own process, glibc's malloc as it comes.
    baseline["dense_rows_per_second"] = baseline["glibc_defaults"]["dense_rows_per_second"]
    return baseline


# ---------------------------------------------------------------------------------------
# The Ray stages


def stage_figures(
    seconds: float,
    loop_seconds: float,
    history: Sequence[Mapping[str, Any]],
    polled: Mapping[str, Any],
) -> dict[str, Any]:
    """One training stage's record from its result and ``bench_data``'s poller record."""
    return {
        "seconds": seconds,
        "loop_seconds": loop_seconds,
        "outside_loop_seconds": seconds - loop_seconds,
        "epochs": len(history),
        "rows_per_second": loop_rows_per_second(history),
        "epoch_rows_per_second": [float(epoch["samples_per_second"]) for epoch in history],
        "peak_worker_rss_mib": peak_worker_rss_mib(history),
        "peak_driver_rss_mib": polled["peak_driver_rss_mib"],
        "peak_ray_processes_rss_mib": polled["peak_ray_processes_rss_mib"],
    }


def streamed_bytes(folder: str | Path) -> int:
    """The bytes a stream moves each epoch: the rows of ``folder``'s Parquet files times the
    Arrow width of the columns it reads (``ingest.STREAMED_COLUMNS``, fixed-width ints)."""
    import pyarrow.parquet as pq

    from cadc_ray.runtime.ingest import STREAMED_COLUMNS

    total = 0
    for path in sorted(Path(folder).rglob("*.parquet")):
        file = pq.ParquetFile(path)
        schema = file.schema_arrow
        row_bytes = sum(schema.field(name).type.bit_width // 8 for name in STREAMED_COLUMNS)
        total += file.metadata.num_rows * row_bytes
    return total


def object_store_counters() -> dict[str, int] | None:
    """The running Ray's cumulative object-store counters (what ``ray memory --stats-only``
    prints): bytes spilled to disk and restored, and the store's current disk fallback.
    None where Ray's internal API does not answer (it is not a public one)."""
    import ray

    try:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        address = ray.get_runtime_context().gcs_address
        stats = get_memory_info_reply(get_state_from_address(address)).store_stats
        return {
            "spilled_bytes": int(stats.spilled_bytes_total),
            "restored_bytes": int(stats.restored_bytes_total),
            "fallback_bytes": int(stats.object_store_bytes_fallback),
        }
    except Exception:  # a measurement extra: never lose the run over it
        logger.warning("no object-store counters from this Ray", exc_info=True)
        return None


def counters_delta(
    before: Mapping[str, int] | None, after: Mapping[str, int] | None
) -> dict[str, int] | None:
    """What the cumulative counters grew by (the fallback is a level: its value after)."""
    if before is None or after is None:
        return None
    delta = {key: after[key] - before[key] for key in ("spilled_bytes", "restored_bytes")}
    return {**delta, "fallback_bytes_after": after["fallback_bytes"]}


def train_once(
    config: ExperimentConfig,
    dataset: DatasetInputs,
    train_rows: int,
    sample_rows: int,
    storage: Path,
) -> dict[str, Any]:
    """The MF teacher, then the TTNN on the sample, on ``resources.num_workers`` workers."""
    from cadc_ray.pipeline import pretrain, put_tables, ttnn_inputs
    from cadc_ray.runtime.session import resolve_use_gpu
    from cadc_ray.runtime.ttnn import fit_ttnn

    use_gpu = resolve_use_gpu(config.resources)
    teacher, mf_polled = _stage(
        "mf_pretrain",
        train_rows,
        lambda: pretrain(
            config,
            dataset,
            teachers=None,
            use_gpu=use_gpu,
            run_name="pretrain",
            storage_path=str(storage),
        ),
    )
    assert teacher.result is not None  # trained here, not loaded from a store
    mf = stage_figures(
        teacher.result.seconds, teacher.result.loop_seconds, teacher.result.history, mf_polled
    )
    mf["fixed_seconds"] = mf["outside_loop_seconds"]
    inputs = ttnn_inputs(config, dataset, put_tables(teacher.tables))
    ttnn_result, ttnn_polled = _stage(
        "ttnn",
        sample_rows,
        lambda: fit_ttnn(
            config, inputs, use_gpu=use_gpu, run_name="ttnn", storage_path=str(storage)
        ),
    )
    ttnn = stage_figures(
        ttnn_result.seconds, ttnn_result.loop_seconds, ttnn_result.history, ttnn_polled
    )
    ttnn["eval_seconds_reported"] = eval_seconds = reported_eval_seconds(ttnn_result)
    # Without them the time outside the loop also holds the validation, the test and the
    # teacher's test: the fixed cost is then not separable (None).
    ttnn["fixed_seconds"] = (
        ttnn["outside_loop_seconds"] - eval_seconds if eval_seconds is not None else None
    )
    ttnn["test_hr@10"] = ttnn_result.test_metrics.get("hr@10")
    return {"use_gpu": use_gpu, "mf": mf, "ttnn": ttnn, "teacher": teacher}


def evaluation_throughput(
    config: ExperimentConfig, dataset: DatasetInputs, tables: Any
) -> dict[str, Any]:
    """The teacher's full ranking of the validation and test users, in the driver."""
    import torch

    from cadc_ray.data import read_held_out
    from cadc_ray.pipeline import teacher_metrics

    torch.set_num_threads(config.resources.torch_threads)
    held_out = read_held_out(dataset.split, dataset.num_users, dataset.num_items)
    # One full ranking per validation user and per test user (the same users twice).
    rankings = int(held_out.val_users.size + held_out.test_users.size)
    started = time.perf_counter()
    teacher_metrics(tables, held_out, config.eval)
    seconds = time.perf_counter() - started
    return {
        "rankings": rankings,
        "num_items": dataset.num_items,
        "seconds": seconds,
        "rankings_per_second": rankings / seconds,
        "scored_pairs_per_second": rankings * dataset.num_items / seconds,
        "torch_threads": config.resources.torch_threads,
    }


def bench_rows(
    rows: int,
    work: Path,
    args: argparse.Namespace,
    save: Callable[[], None],
    results: dict[str, Any],
) -> dict[str, Any]:
    """Every measurement at N = ``rows``; ``results["runs"]`` gets the record as it grows."""
    from cadc_ray.data import materialize_sample
    from cadc_ray.data.layout import parquet_rows
    from cadc_ray.data.sampling import auto_sample_engine
    from cadc_ray.pipeline import prepare_data, split_dataset

    first = experiment_config(rows, args.workers[0], args.ingest[0], work, args)
    (prepared, manifest), prepare_record = _stage("prepare", rows, lambda: prepare_data(first))
    dataset, split_record = _stage(
        "split", int(manifest.num_interactions), lambda: split_dataset(prepared, manifest)
    )
    train_rows = int(dataset.split.summary()["num_train"])
    # Pass 1 (Ray Data: read, tag, write by user range) inside the split's seconds.
    split_record["by_range_seconds"] = dataset.split.summary().get("by_range_seconds")
    split_record["engine"] = dataset.split.summary().get("engine")
    sample_path, sample_record = _stage(
        "sample_1_in_10",
        train_rows,
        lambda: materialize_sample(dataset.split, FILTER_RATIO, first.data.sample_seed),
    )
    sample_record["engine"] = auto_sample_engine(dataset.split)  # materialize_sample's choice
    run: dict[str, Any] = {
        "rows": rows,
        "num_interactions": int(manifest.num_interactions),
        "num_users": int(manifest.num_users),
        "num_items": int(manifest.num_items),
        "train_rows": train_rows,
        "sample_rows": parquet_rows(sample_path),
        # What a stream moves each epoch: the streamed columns, uncompressed (Arrow's size).
        "train_streamed_bytes": streamed_bytes(dataset.split.train_dir),
        "evaluated_users_in_split": int(dataset.split.summary()["num_evaluated_users"]),
        "evaluated_users": limit_evaluated_users(dataset.split, args.eval_users),
        "data_stages": [prepare_record, split_record, sample_record],
        "training": [],
        "ratios": {"split_vs_baseline": None},
    }
    results["runs"].append(run)
    teacher_tables = None
    for workers in args.workers:
        for ingest in args.ingest:
            record: dict[str, Any] = {"workers": workers, "ingest": ingest}
            run["training"].append(record)
            if ingest == "stream" and not ingest_supported():
                logger.warning("skipping ingest=stream: this checkout has no resources.ingest")
                record["skipped"] = "no resources.ingest in this checkout's config"
                continue
            config = experiment_config(rows, workers, ingest, work, args)
            storage = work / f"train-{rows}-w{workers}-{ingest}"
            logger.info("rows %d: training on %d workers, ingest %s", rows, workers, ingest)
            store_before = object_store_counters()
            try:
                trained = train_once(config, dataset, train_rows, run["sample_rows"], storage)
            except Exception as error:  # one failed configuration must not lose the others
                logger.exception("rows %d, %d workers, %s failed", rows, workers, ingest)
                record["error"] = f"{type(error).__name__}: {error}"
            else:
                teacher_tables = trained.pop("teacher").tables
                record.update(trained)
            # Both stages: what the object store spilled to disk while they ran.
            record["object_store"] = counters_delta(store_before, object_store_counters())
            shutil.rmtree(storage, ignore_errors=True)
            save()
    run["driver_maxrss_mib_before_baselines"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    if teacher_tables is not None:
        run["evaluation"] = evaluation_throughput(first, dataset, teacher_tables)
    run["baselines"] = {"split": None, "dense_mf": None}
    needed = BASELINE_BYTES_PER_ROW * rows
    if needed > available_memory_bytes():
        run["baselines"]["split"] = {
            "skipped": f"needs about {needed / 2**30:.1f} GiB, more than is available"
        }
    else:
        _, baseline_record = _stage(
            "baseline_split_single_process",
            int(manifest.num_interactions),
            lambda: baseline_split(prepared, work / f"baseline-split-{rows}"),
        )
        shutil.rmtree(work / f"baseline-split-{rows}", ignore_errors=True)
        run["baselines"]["split"] = baseline_record
        run["ratios"]["split_vs_baseline"] = ratio(
            split_record["rows_per_second"], baseline_record["rows_per_second"]
        )
    dense = dense_mf_baseline(dataset.split, dataset.num_users, dataset.num_items, args)
    run["baselines"]["dense_mf"] = dense
    for record in run["training"]:
        if "mf" in record:
            record["mf_vs_dense"] = ratio(
                record["mf"]["rows_per_second"], dense["dense_rows_per_second"]
            )
            record["mf_vs_dense_tuned_allocator"] = ratio(
                record["mf"]["rows_per_second"], dense["tuned"]["dense_rows_per_second"]
            )
    return run


def plain_number(value: Any) -> Any:
    """``json.dumps``' fallback: numpy scalars as Python numbers, anything else as text."""
    return value.item() if isinstance(value, np.generic) else str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dense_baseline_of:  # one baseline measurement, in this new process
        folder, users, items = args.dense_baseline_of
        measured = dense_mf_measurement(folder, int(users), int(items), args)
        print(json.dumps(measured, default=plain_number))
        return 0
    from cadc_ray.console import setup_console

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    setup_console()  # before Ray is imported: Ray Data's progress goes to its log files
    for name in ("bench_scale", "bench_data"):  # the measurements, as they come
        logging.getLogger(name).setLevel(logging.INFO)
    if "stream" in args.ingest and not ingest_supported():
        logger.warning("this checkout has no resources.ingest: ingest=stream runs are skipped")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # A loaded machine can take longer than Ray's default 30 s to register the raylet.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")
    import ray

    from cadc_ray.runtime.session import init_ray

    load_before = os.getloadavg()
    reference_before = speed_reference()  # before Ray's processes start
    started_ray = init_ray(
        resources=ResourcesConfig(num_workers=max(args.workers), cpus_per_worker=1),
        include_dashboard=False,
        object_store_bytes=None if args.object_store_mib is None else args.object_store_mib << 20,
    )
    work = Path(tempfile.mkdtemp(prefix="bench_scale-", dir=args.work_dir))
    results: dict[str, Any] = {
        "benchmark": "bench_scale",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "commit": git_commit(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_before": load_before,
        "speed_reference_before": reference_before,
        "machine": machine_info(int(ray.cluster_resources().get("CPU", 0))),
        "object_store_bytes": int(ray.cluster_resources().get("object_store_memory", 0)),
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        },
        "runs": [],
    }

    def save() -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        # numpy scalars become plain numbers: a late write must not fail after hours of work.
        text = json.dumps(results, indent=2, default=plain_number)
        write_text_atomic(args.output, text + "\n")

    failed = False
    try:
        for rows in args.rows:
            logger.info("rows %d", rows)
            run = bench_rows(rows, work, args, save, results)
            failed = failed or any("error" in record for record in run["training"])
            shutil.rmtree(work / f"synthetic-{rows}", ignore_errors=True)
            results["summary"] = summarize(results["runs"])
            save()
    finally:
        if started_ray:
            ray.shutdown()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["driver_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["load_average_after"] = os.getloadavg()
    results["speed_reference_after"] = speed_reference()
    save()
    print(json.dumps(results["summary"], indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
