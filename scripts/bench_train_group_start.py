"""Ray Train's own floor: how long a worker group takes to reach a loop that does nothing (#10, item 5).

    python scripts/bench_train_group_start.py \
        --output benchmarks/results/train_group_start.json
    CADC_DATA_DIR=../shared/data python scripts/bench_train_group_start.py --with-product \
        --output benchmarks/results/train_group_start_and_product.json

Starts the two-node cluster of ``bench_cluster_placement.py`` (a head with no CPUs, a worker
node with ``--node-cpus``), then, alternating, in a new driver process (a new Ray job, as each
``cadc_ray.run`` is) per run:

- ``empty``: a ``TorchTrainer`` built as ``runtime.trainer.run_torch_trainer`` builds it (this
  package's ``torch_config()``, 1 CPU per worker) whose loop imports torch and notes the time:
  the seconds from ``fit()`` to the loop are what Train costs before any of our code runs;
- ``empty_no_process_group`` (diagnostic, ``--variants``): the same through Train's plain
  ``DataParallelTrainer`` and default ``BackendConfig``: Train's controller never imports
  torch (the workers still do, in the loop) and no process group is made;
- with ``--with-product``: ``bench_cluster_placement``'s ``one_group`` run (ML-100K,
  ``python -m cadc_ray.run`` with both stages in one worker group), whose first stage carries
  the group's start. Its fixed cost minus the floor is what is ours.

Each run records the actor processes Ray started for it (their ``worker-*.out`` logs). The JSON
(written atomically) has every run and a median/min/max summary per variant and worker count.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
EMPTY_VARIANTS = ("empty", "empty_no_process_group")
PRODUCT_VARIANT = "product_one_group"


def new_actor_names(logs_dir: Path, known: set[str]) -> list[str]:
    """Actor class names of the worker logs in ``logs_dir`` not in ``known`` (file names).

    Ray writes ``:actor_name:<Class>`` into an actor worker's ``worker-*.out`` when it starts;
    a worker that ran no actor has no such line and is counted as ``"(task or idle worker)"``.
    """
    names = []
    for log in sorted(logs_dir.glob("worker-*.out")):
        if log.name in known:
            continue
        actor = "(task or idle worker)"
        with log.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith(":actor_name:"):
                    actor = line.removeprefix(":actor_name:").strip()
                    break
        names.append(actor)
    return sorted(names)


def summary(runs: Iterable[dict[str, Any]], key: str) -> dict[str, dict[str, float | int]]:
    """Median, min and max of ``run[key]`` per ``"<variant> <workers>"``, in first-seen order."""
    groups: dict[str, list[float]] = {}
    for run in runs:
        if key in run:
            groups.setdefault(f"{run['variant']} {run['workers']}", []).append(float(run[key]))
    return {
        label: {
            "runs": len(values),
            "median": round(statistics.median(values), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
        }
        for label, values in groups.items()
    }


def empty_loop(config: dict[str, Any]) -> None:
    """The measured loop: rank 0 notes when it started, once torch is imported (as every
    loop of ours must import it; the ``empty`` variant's workers imported it already)."""
    import ray.train
    import torch  # noqa: F401

    if ray.train.get_context().get_world_rank() == 0:
        Path(config["marker"]).write_text(repr(time.time()), encoding="utf-8")


def child(address: str, variant: str, workers: int, storage: str) -> dict[str, float]:
    """One empty-loop Train run in this (new) driver process; its seconds."""
    import ray
    from ray.train import RunConfig, ScalingConfig

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    # A local file: every node of the benchmark's cluster runs on this machine.
    marker_dir = Path(tempfile.mkdtemp(prefix="group-start-"))
    marker = marker_dir / "entered"
    scaling = ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1.0})
    run_config = RunConfig(name=f"{variant}-{workers}-{time.time_ns()}", storage_path=storage)
    loop_config = {"marker": str(marker)}
    trainer: Any
    if variant == "empty":
        from ray.train.torch import TorchTrainer

        from cadc_ray.runtime.device import torch_config

        trainer = TorchTrainer(
            empty_loop,
            train_loop_config=loop_config,
            scaling_config=scaling,
            run_config=run_config,
            torch_config=torch_config(),
        )
    else:
        # Train V2's trainer with the default BackendConfig; no public import path in 2.60.
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        trainer = DataParallelTrainer(
            empty_loop,
            train_loop_config=loop_config,
            scaling_config=scaling,
            run_config=run_config,
        )
    started = time.time()
    trainer.fit()
    ended = time.time()
    entered = float(marker.read_text(encoding="utf-8"))
    shutil.rmtree(marker_dir)
    return {
        "to_loop_seconds": entered - started,
        "after_loop_seconds": ended - entered,
        "wall_seconds": ended - started,
    }


def run_empty(address: str, variant: str, workers: int, storage: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        address,
        "--variants",
        variant,
        "--workers",
        str(workers),
        "--work-dir",
        str(storage),
    ]
    done = subprocess.run(
        command, cwd=REPO_ROOT, check=True, capture_output=True, text=True, env=child_env()
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def child_env() -> dict[str, str]:
    """The environment of a child driver: this checkout importable, as ``cadc_ray.run`` has it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/train_group_start.json")
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-train-group-start"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant and worker count")
    parser.add_argument(
        "--variants", nargs="+", choices=EMPTY_VARIANTS, default=["empty"], help="empty-loop runs"
    )
    parser.add_argument(
        "--with-product",
        action="store_true",
        help="also run cadc_ray.run on ML-100K with both stages in one group (needs the data)",
    )
    parser.add_argument("--data", default=None, help="ML-100K (default $CADC_DATA_DIR/ml-100k)")
    parser.add_argument("--node-cpus", type=int, default=2, help="CPUs of the worker node")
    parser.add_argument("--child", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.node_cpus < 1 or min(args.workers) < 1:
        parser.error("--repeats, --node-cpus and --workers must be >= 1")
    if max(args.workers) > args.node_cpus:
        parser.error(f"--workers {max(args.workers)} needs more than --node-cpus {args.node_cpus}")
    if args.with_product:
        args.data = args.data or os.path.join(os.environ.get("CADC_DATA_DIR", ""), "ml-100k")
        if not Path(args.data, "u.data").is_file():
            parser.error(
                f"--data: {args.data} has no u.data (MovieLens-100K); set CADC_DATA_DIR or --data"
            )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    if args.child:
        print(json.dumps(child(args.child, args.variants[0], args.workers[0], str(args.work_dir))))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_cluster_placement import cluster_bench_record, run_once, two_node_cluster
    from bench_data import write_result

    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    record = cluster_bench_record(
        "Train worker group start to an empty loop, on a two-node cluster",
        "bench_train_group_start.py",
        argv,
        args.node_cpus,
    )
    variants = list(args.variants) + ([PRODUCT_VARIANT] if args.with_product else [])
    with two_node_cluster(args.node_cpus) as cluster:
        assert cluster.head_node is not None  # initialize_head=True
        logs_dir = Path(cluster.head_node.get_logs_dir_path())
        for repeat in range(args.repeats):
            for workers in args.workers:
                for variant in variants:
                    known = {log.name for log in logs_dir.glob("worker-*.out")}
                    if variant == PRODUCT_VARIANT:
                        product = run_once(
                            cluster.address,
                            str(Path(args.data).resolve()),
                            work,
                            "one_group",
                            [
                                "pretrain.epochs=10",
                                "train.epochs=10",
                                "resources.torch_threads=1",
                                f"resources.num_workers={workers}",
                            ],
                        )
                        run: dict[str, Any] = {
                            "first_stage_fixed_seconds": product["stages"]["pretrain"][
                                "fixed_seconds"
                            ],
                            "fixed_seconds_per_stage": product["fixed_seconds_both_stages"] / 2,
                            "product": product,
                        }
                    else:
                        run = run_empty(cluster.address, variant, workers, work / "storage")
                    run.update(
                        variant=variant,
                        workers=workers,
                        repeat=repeat,
                        actors_started=new_actor_names(logs_dir, known),
                    )
                    record["runs"].append(run)
                    print(variant, workers, {k: v for k, v in run.items() if "seconds" in k})
    record["load_average_after"] = os.getloadavg()
    record["summary"] = {
        "to_loop_seconds": summary(record["runs"], "to_loop_seconds"),
        "first_stage_fixed_seconds": summary(record["runs"], "first_stage_fixed_seconds"),
        "fixed_seconds_per_stage": summary(record["runs"], "fixed_seconds_per_stage"),
    }
    write_result(args.output, record, record["summary"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
