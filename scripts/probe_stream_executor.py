"""Where a streamed epoch's CPU goes when the consumer is slower than the read.

    python scripts/probe_stream_executor.py --rows 1e7 --work 0 20 40 \
        --output benchmarks/results/probe_stream_executor.json

A synthetic dataset of ``--rows`` interactions is prepared and split by the package (Ray's
split above 2 M rows: one training file per user range), then read as a streaming stage
reads it (``runtime.ingest.training_input``'s reader: the file order seeded per execution,
8 MiB blocks, ``preserve_order``), in this process, as Train's local mode does. Each batch of
8,192 rows then costs ``--work`` single-thread 256 x 256 matrix products, standing in for a
training step (20 of them: about the fused MF step's cost per batch on this machine).
One new process per ``--work`` value (a new Ray each), one epoch each.

Recorded per run: the epoch's wall seconds, the seconds the consumer waited for batches,
the CPU seconds of the consumer thread, of Ray Data's executor thread and of its batch
iterator's threads (sampled from ``/proc/self/task`` every 0.2 s), the number of scheduling
loop steps, and how many of the executor's ``ray.wait`` calls returned at once (under 5
ms), next to what its backpressure policies answered for the read operator. The counters
wrap Ray Data internals of Ray 2.60 (``StreamingExecutor._scheduling_loop_step``,
``ray.wait`` with the executor's 0.1 s timeout, the two policies'
``max_task_output_bytes_to_read``): a diagnostic, not an API.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The sibling benchmarks are plain scripts, not a package: their helpers are imported by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import git_commit, synthetic_catalogue, synthetic_data_config, write_result

BATCH_ROWS = 8192
SHUFFLE_BUFFER_ROWS = 65_536
EXECUTOR_WAIT_TIMEOUT_S = 0.1  # ray.data's WAIT_FOR_TASK_COMPLETION_TIMEOUT_S in Ray 2.60
INSTANT_WAIT_S = 0.005


class ExecutorCounters:
    """Counts the executor's loop steps, its ``ray.wait`` calls and its policies' answers."""

    def __init__(self) -> None:
        self.loop_steps = 0
        self.waits = 0
        self.instant_waits = 0
        self.policy_answers: dict[str, int] = {}

    def install(self) -> None:
        import ray
        from ray.data._internal.execution import streaming_executor
        from ray.data._internal.execution.backpressure_policy import (
            downstream_capacity_backpressure_policy,
            resource_budget_backpressure_policy,
        )

        step = streaming_executor.StreamingExecutor._scheduling_loop_step

        def counted_step(executor: Any, topology: Any) -> bool:
            self.loop_steps += 1
            return bool(step(executor, topology))

        streaming_executor.StreamingExecutor._scheduling_loop_step = counted_step  # type: ignore[method-assign,assignment]
        wait = ray.wait

        def counted_wait(refs: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = wait(refs, *args, **kwargs)
            if kwargs.get("timeout") == EXECUTOR_WAIT_TIMEOUT_S:
                self.waits += 1
                self.instant_waits += time.perf_counter() - started < INSTANT_WAIT_S
            return result

        ray.wait = counted_wait  # type: ignore[assignment]
        for policy in (
            downstream_capacity_backpressure_policy.DownstreamCapacityBackpressurePolicy,
            resource_budget_backpressure_policy.ResourceBudgetBackpressurePolicy,
        ):
            policy.max_task_output_bytes_to_read = self._counting(  # type: ignore[method-assign]
                policy.max_task_output_bytes_to_read, policy.__name__
            )

    def _counting(self, answer: Callable[..., int | None], name: str) -> Callable[..., int | None]:
        def counted(policy: Any, op: Any) -> int | None:
            limit = answer(policy, op)
            if op.name.startswith("ReadParquet"):
                verdict = "none" if limit is None else ("zero" if limit == 0 else "positive")
                key = f"{name}: {verdict}"
                self.policy_answers[key] = self.policy_answers.get(key, 0) + 1
            return limit

        return counted


def thread_cpu_sampler() -> dict[tuple[int, str], float]:
    """Starts a daemon thread that keeps each live thread's CPU seconds, by (tid, name)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seen: dict[tuple[int, str], float] = {}

    def sample() -> None:
        while True:
            names = {thread.native_id: thread.name for thread in threading.enumerate()}
            for path in glob.glob("/proc/self/task/*"):
                try:
                    tid = int(path.rsplit("/", 1)[1])
                    fields = Path(path, "stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, ValueError):
                    continue
                seen[(tid, names.get(tid, "other"))] = (int(fields[11]) + int(fields[12])) / ticks
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True, name="cpu-sampler").start()
    return seen


def cpu_by_role(
    now: dict[tuple[int, str], float], before: dict[tuple[int, str], float]
) -> dict[str, float]:
    """CPU seconds since ``before``: the consumer, the executor, the batch iterator, the rest."""
    roles: dict[str, float] = {}
    for (tid, name), seconds in now.items():
        if name == "MainThread":
            role = "consumer"
        elif name.startswith("StreamingExecutor"):
            role = "executor"
        elif name.startswith(("iter_threaded", "ThreadPoolExecutor", "Prefetcher")):
            role = "batch_iterator"
        else:
            role = "other"
        roles[role] = roles.get(role, 0.0) + seconds - before.get((tid, name), 0.0)
    return {role: round(seconds, 2) for role, seconds in sorted(roles.items())}


def one_epoch(train_dir: str, work: int) -> dict[str, Any]:
    """One streamed epoch in this process (run with ``--child``)."""
    import ray
    import torch

    from cadc_ray.data.ray_read import read_parquet
    from cadc_ray.runtime.ingest import STREAM_BLOCK_BYTES, STREAMED_COLUMNS

    counters = ExecutorCounters()
    counters.install()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    dataset = read_parquet(
        train_dir,
        columns=STREAMED_COLUMNS,
        target_block_bytes=STREAM_BLOCK_BYTES,
        file_order_seed=7,
    )
    dataset.context.execution_options.preserve_order = True
    left, right = torch.randn(256, 256), torch.randn(256, 256)
    seen = thread_cpu_sampler()
    time.sleep(0.5)
    before = dict(seen)
    started, rows, waited = time.perf_counter(), 0, 0.0
    batches = iter(
        dataset.iter_torch_batches(
            batch_size=BATCH_ROWS,
            dtypes=torch.int64,
            local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS,
            local_shuffle_seed=0,
        )
    )
    while True:
        asked = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - asked
        if batch is None:
            break
        rows += int(batch["user_id"].numel())
        for _ in range(work):
            torch.mm(left, right)
    wall = time.perf_counter() - started
    time.sleep(0.5)  # one more sample of every thread
    ray.shutdown()
    return {
        "work_products_per_batch": work,
        "rows": rows,
        "wall_seconds": round(wall, 3),
        "waited_for_batches_seconds": round(waited, 3),
        "cpu_seconds": cpu_by_role(seen, before),
        "scheduling_loop_steps": counters.loop_steps,
        "executor_waits": counters.waits,
        "executor_waits_returning_at_once": counters.instant_waits,
        "read_operator_output_limits": counters.policy_answers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=float, default=1e7)
    parser.add_argument("--work", type=int, nargs="+", default=[0, 20, 40])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--child", nargs=2, metavar=("TRAIN_DIR", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one_epoch(args.child[0], int(args.child[1]))))
        return 0
    if args.output is None:
        parser.error("--output is required")
    if args.rows < 3e6 or any(work < 0 for work in args.work):
        parser.error("--rows: at least 3e6 (a split by Ray, several files); --work: >= 0")

    import ray

    from cadc_ray.data import materialize_split, prepare_dataset

    rows = int(args.rows)
    load_before = os.getloadavg()
    started_utc = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    records = []
    with tempfile.TemporaryDirectory(prefix="cadc-probe-executor-") as folder:
        work_dir = Path(folder)
        users, items = synthetic_catalogue(rows)
        prepared = prepare_dataset(synthetic_data_config(rows, users, items, work_dir), work_dir)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        split = materialize_split(prepared)
        ray.shutdown()
        for work in args.work:
            child = subprocess.run(
                [sys.executable, __file__, "--child", str(split.train_dir), str(work)],
                check=True,
                capture_output=True,
                text=True,
            )
            record = json.loads(child.stdout.strip().splitlines()[-1])
            print(json.dumps(record), flush=True)
            records.append(record)
    results = {
        "benchmark": "probe_stream_executor",
        "command": " ".join(["python", *sys.argv]),
        "commit": git_commit(),
        "started_utc": started_utc,
        "load_average_before": [round(x, 2) for x in load_before],
        "rows": rows,
        "runs": records,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    write_result(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
