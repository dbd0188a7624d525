"""A stage's fixed cost on a cluster: worker groups against local mode in a Ray task (#10, item 5).

    CADC_DATA_DIR=../shared/data python scripts/bench_cluster_placement.py \
        --output benchmarks/results/cluster_placement_ml-100k.json

Starts a two-node cluster on this machine (``ray.cluster_utils.Cluster``: a head node with
no CPUs, as ``cluster.yaml``'s head, and one worker node), then runs
``python -m cadc_ray.run configs/ml-100k.yaml --address <cluster>`` as a user would, a new
process and Ray job per run, alternating the placements of :data:`PLACEMENTS`: a one-worker
Train worker group per stage, one worker group for both stages (``runtime.joint``), and
Train's local mode in a Ray task per stage (``runtime.session.stage_placement``). A stage's
fixed cost is its wall time minus its training epochs minus its full-ranking evaluation,
from each run's ``results.json`` (in one group, the group's start is the first stage's).
The JSON (written atomically) also has the test metrics, which must be the same for all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster

REPO_ROOT = Path(__file__).resolve().parents[1]
PLACEMENTS: dict[str, dict[str, str]] = {
    "group_per_stage": {"in_process": "never", "share_worker_group": "never"},
    "one_group": {"in_process": "never", "share_worker_group": "auto"},
    "ray_task": {"in_process": "auto", "share_worker_group": "auto"},
}
"""What each placement sets (``resources.*``) on a one-worker CPU run."""


def stage_costs(results: dict[str, Any]) -> dict[str, Any]:
    """Per stage: seconds, training-loop and evaluation seconds, and the rest (fixed)."""
    pretrain = {
        "seconds": results["pretrain_seconds"],
        "loop_seconds": results["pretrain_loop_seconds"],
        "eval_seconds": 0.0,
    }
    ttnn = {
        "seconds": results["train_seconds"],
        "loop_seconds": results["train_loop_seconds"],
        "eval_seconds": results["train_eval_seconds"],
    }
    for stage in (pretrain, ttnn):
        stage["fixed_seconds"] = stage["seconds"] - stage["loop_seconds"] - stage["eval_seconds"]
    return {"pretrain": pretrain, "ttnn": ttnn}


def run_once(
    address: str, data: str, work: Path, placement: str, sets: Sequence[str]
) -> dict[str, Any]:
    run_dir = work / f"run-{placement}"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "cadc_ray.run",
        "configs/ml-100k.yaml",
        "--address",
        address,
        "--output",
        str(run_dir),
        "--set",
        f"data.path={data}",
        "--set",
        f"output_root={work / 'runs'}",
    ]
    for key, value in PLACEMENTS[placement].items():
        command += ["--set", f"resources.{key}={value}"]
    for value in sets:
        command += ["--set", value]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    stages = stage_costs(results)
    return {
        "placement": placement,
        "stage_placement": results["stage_placement"],
        "one_worker_group": results["one_worker_group"],
        "command_wall_seconds": wall,
        "total_seconds": results["total_seconds"],
        "stages": stages,
        "fixed_seconds_both_stages": sum(stage["fixed_seconds"] for stage in stages.values()),
        "pretrain_epochs": results["pretrain_epochs"],
        "ttnn_epochs": results["epochs_run"],
        "test": results["test"],
        "teacher_test_percent": results["teacher_test_percent"],
    }


def cluster_bench_record(
    benchmark: str, script: str, argv: Sequence[str] | None, node_cpus: int
) -> dict[str, Any]:
    """What a cluster benchmark's JSON opens with (``runs`` to fill): what and how it was run,
    the commit, when, the machine's CPUs, the cluster and the load average before."""
    from bench_data import git_commit

    return {
        "benchmark": benchmark,
        "command": " ".join(["python", f"scripts/{script}", *(argv or sys.argv[1:])]),
        "commit": git_commit(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "cluster": {"head_cpus": 0, "worker_node_cpus": node_cpus},
        "load_average_before": os.getloadavg(),
        "runs": [],
    }


@contextlib.contextmanager
def two_node_cluster(node_cpus: int) -> Iterator[Cluster]:
    """The cluster of the cluster benchmarks, on this machine: a head with no CPUs, as
    ``cluster.yaml``'s head, and one worker node with ``node_cpus``; shut down on exit."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        cluster.add_node(num_cpus=node_cpus)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=None, help="ML-100K folder (default $CADC_DATA_DIR/ml-100k)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/cluster_placement_ml-100k.json")
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-cluster-placement"))
    parser.add_argument("--repeats", type=int, default=3, help="runs per placement")
    parser.add_argument(
        "--placements",
        nargs="+",
        choices=sorted(PLACEMENTS),
        default=list(PLACEMENTS),
        help="which placements to run (default: all)",
    )
    parser.add_argument("--node-cpus", type=int, default=2, help="CPUs of the worker node")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=["pretrain.epochs=10", "train.epochs=10", "resources.torch_threads=1"],
        metavar="KEY=VALUE",
        help="config overrides of every run (default: 10 + 10 epochs, 1 torch thread)",
    )
    args = parser.parse_args(argv)
    data = args.data or os.path.join(os.environ.get("CADC_DATA_DIR", ""), "ml-100k")
    if not Path(data, "u.data").is_file():
        parser.error(f"--data: {data} has no u.data (MovieLens-100K); set CADC_DATA_DIR or --data")
    if args.repeats < 1 or args.node_cpus < 1:
        parser.error("--repeats and --node-cpus must be >= 1")
    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_data import write_result

    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    record = cluster_bench_record(
        "stage fixed cost on a two-node cluster: worker groups vs Ray tasks",
        "bench_cluster_placement.py",
        argv,
        args.node_cpus,
    )
    record["sets"] = args.sets
    with two_node_cluster(args.node_cpus) as cluster:
        for repeat in range(args.repeats):
            for placement in args.placements:
                run = run_once(
                    cluster.address, str(Path(data).resolve()), work, placement, args.sets
                )
                run["repeat"] = repeat
                record["runs"].append(run)
                fixed = {stage: round(v["fixed_seconds"], 2) for stage, v in run["stages"].items()}
                print(placement, run["stage_placement"], "fixed", fixed, flush=True)
    record["load_average_after"] = os.getloadavg()
    summary: dict[str, Any] = {}
    for placement in args.placements:
        runs = [run for run in record["runs"] if run["placement"] == placement]
        summary[placement] = {
            stage: [round(run["stages"][stage]["fixed_seconds"], 2) for run in runs]
            for stage in ("pretrain", "ttnn")
        }
        summary[placement]["fixed_seconds_per_stage"] = [
            round(run["fixed_seconds_both_stages"] / 2, 2) for run in runs
        ]
        summary[placement]["command_wall_seconds"] = [
            round(run["command_wall_seconds"], 1) for run in runs
        ]
    tests = {json.dumps(run["test"], sort_keys=True) for run in record["runs"]}
    summary["same_test_metrics_everywhere"] = len(tests) == 1
    record["summary"] = summary
    write_result(args.output, record, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
