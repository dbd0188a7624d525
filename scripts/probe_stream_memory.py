"""What a streaming worker's memory grows with: counting and streaming, each step alone.

The streaming MF worker's peak RSS grew 913 -> 1,319 MiB from 10^6 to 10^7 rows with the
tables held fixed (docs/results.md, "Scale"). This probe runs the two things a streaming
worker does with the rows, each in a fresh process, and records how far its memory rises
above the process's start (sampled every 10 ms from ``/proc/self/status``: anonymous and
shared-memory pages apart):

- ``count``: ``data.count_interactions`` over the training folder (the counts the samplers
  need), against the pyarrow dataset scan it replaced (``count_scanner``);
- ``stream``: ``iter_torch_batches`` with the local shuffle buffer over the dataset a
  streaming stage gets (``runtime.ingest.training_input``), at the block size it uses
  (``STREAM_BLOCK_BYTES``) and at Ray Data's default (``stream_default_blocks``), with the
  seconds to the first batch and the object store's peak bytes in use (polled every 0.2 s).

Data: synthetic, prepared and split by the package, ``--catalogue`` users x items at every
row count (so only the rows grow). Writes ``--output`` (JSON)::

    python scripts/probe_stream_memory.py --rows 1e6 1e7 --output benchmarks/results/probe_stream_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_data import git_commit, synthetic_data_config  # scripts/ is on sys.path

REPO = Path(__file__).resolve().parent.parent
STEPS = ("count", "count_scanner", "stream", "stream_default_blocks")
BATCH_ROWS = 8192  # the MF stage's batch
SHUFFLE_ROWS = 100_000  # resources.shuffle_buffer_rows' default (checked in run_step)


def memory_mib() -> dict[str, int]:
    """This process's resident memory by kind, MiB (Linux)."""
    values = {}
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssShmem"):
            values[key] = int(value.split()[0]) // 1024
    return values


def run_step(step: str, folder: str, num_users: int, num_items: int) -> dict[str, Any]:
    """One step in this process: its peak memory above the start, by kind."""
    import numpy as np
    import pyarrow.dataset as ds
    import torch

    from cadc_ray.config import ExperimentConfig, ResourcesConfig
    from cadc_ray.data import count_interactions
    from cadc_ray.data.layout import parquet_files
    from cadc_ray.runtime import ingest

    assert ResourcesConfig().shuffle_buffer_rows == SHUFFLE_ROWS
    # Everything imported before the start is measured: only the step's own memory counts.
    streaming = step.startswith("stream")
    if streaming:
        import ray
        import ray.data

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    start = memory_mib()
    peaks = dict(start)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for key, value in memory_mib().items():
                peaks[key] = max(peaks[key], value)
            time.sleep(0.01)

    store_peak_bytes = 0

    def sample_object_store() -> None:
        """The object store's bytes in use, polled from the raylet (Ray's internal API, as
        ``ray memory`` does): how much of the epoch the stream holds at once."""
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        nonlocal store_peak_bytes
        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        while not done.is_set():
            used = get_memory_info_reply(state).store_stats.object_store_bytes_used
            store_peak_bytes = max(store_peak_bytes, int(used))
            time.sleep(0.2)

    samplers = [threading.Thread(target=sample)]
    if streaming:
        samplers.append(threading.Thread(target=sample_object_store))
    for sampler in samplers:
        sampler.start()
    started = time.perf_counter()
    first_batch_seconds = None
    rows = 0
    if step == "count":
        rows = count_interactions(folder, num_users, num_items).rows
    elif step == "count_scanner":  # what count_interactions did before
        users = np.zeros(num_users, dtype=np.int64)
        scan = ds.dataset(parquet_files(folder), format="parquet")
        for batch in scan.to_batches(columns=["user_id", "item_id"], batch_size=1 << 20):
            users += np.bincount(batch.column("user_id").to_numpy(), minlength=num_users)
            rows += batch.num_rows
    else:  # the dataset a one-worker streaming stage gets (runtime.ingest.training_input)
        if step == "stream_default_blocks":
            default_block_bytes = ray.data.DataContext.get_current().target_max_block_size
            assert default_block_bytes is not None  # Ray's default: 128 MiB
            ingest.STREAM_BLOCK_BYTES = default_block_bytes
        config = ExperimentConfig(resources=ResourcesConfig(num_workers=1, ingest="stream"))
        datasets = ingest.training_input(config, folder, seed=0).datasets
        assert datasets is not None
        for batch in datasets["train"].iter_torch_batches(
            batch_size=BATCH_ROWS,
            dtypes=torch.int64,
            local_shuffle_buffer_size=SHUFFLE_ROWS,
            local_shuffle_seed=0,
        ):
            if first_batch_seconds is None:  # how long a stage waits before its first step
                first_batch_seconds = round(time.perf_counter() - started, 2)
            rows += int(batch["user_id"].shape[0])
    seconds = time.perf_counter() - started
    done.set()
    for sampler in samplers:
        sampler.join()
    return {
        "step": step,
        "rows": rows,
        "seconds": round(seconds, 2),
        "first_batch_seconds": first_batch_seconds,
        "object_store_peak_mib": round(store_peak_bytes / 2**20) if streaming else None,
        "start_mib": start,
        "peak_above_start_mib": {key: peaks[key] - start[key] for key in start},
    }


def prepare(rows: int, users: int, items: int, work: Path) -> str:
    """The split's training folder of ``rows`` synthetic interactions."""
    import ray

    from cadc_ray.data import materialize_split, prepare_dataset

    prepared = prepare_dataset(synthetic_data_config(rows, users, items, work), work)
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        return str(materialize_split(prepared, engine="ray").train_dir)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--catalogue", type=int, nargs=2, default=[200_000, 20_000])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--steps", choices=STEPS, nargs="+", default=list(STEPS))
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    users, items = args.catalogue
    if args.step:  # one measurement, in its own process
        print(json.dumps(run_step(args.step, args.folder, users, items)))
        return 0
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "benchmark": "probe_stream_memory",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_before": [round(x, 2) for x in load_before],
        "catalogue": {"users": users, "items": items},
        "batch_rows": BATCH_ROWS,
        "shuffle_buffer_rows": SHUFFLE_ROWS,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="probe_stream_memory-") as work:
        for rows in sorted(int(r) for r in args.rows):
            folder = prepare(rows, users, items, Path(work))
            for step in args.steps:
                command = [sys.executable, __file__, "--output", str(args.output)]
                command += ["--step", step, "--folder", folder]
                command += ["--catalogue", str(users), str(items)]
                child = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=REPO,
                )
                # Ray may print after the record: take the record's own line.
                lines = child.stdout.splitlines()
                record = json.loads(next(line for line in lines if line.startswith('{"step"')))
                record["rows_in_folder"] = rows
                results["runs"].append(record)
                print(json.dumps(record), flush=True)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    temp = args.output.with_suffix(".json.tmp")
    temp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    temp.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
