"""Throughput and memory of the data layer on synthetic data: prepare, split, sample.

    python scripts/bench_data.py --sizes 1e6 1e7 [1e8] [--workdir /tmp/bench_data]

For each size N: the synthetic generator writes N interactions (N/50 users), Ray Data
computes the leave-last-two-out split, then the 1/10 sample is materialized. Reported per
stage: seconds, rows/s, peak RSS of the driver and peak summed RSS of the Ray processes
(raylet, GCS, workers; read from /proc every 0.2 s; shared object-store pages are counted
once per process that maps them, so the Ray figure is an upper bound). Results go to
``benchmarks/results/bench_data.json`` (written atomically), with machine info.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadc_ray.atomic import write_text_atomic
from cadc_ray.config import DataConfig, SyntheticConfig

REPO = Path(__file__).resolve().parents[1]
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

logger = logging.getLogger("bench_data")


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as stream:
            return int(stream.read().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stream:
                parent = int(stream.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@dataclass
class MemoryPoller:
    """Polls the driver's RSS and the summed RSS of its descendant (Ray) processes."""

    interval_s: float = 0.2
    peak_driver_kb: int = 0
    peak_ray_kb: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemoryPoller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self.peak_driver_kb = max(self.peak_driver_kb, _rss_kb(me))
            self.peak_ray_kb = max(self.peak_ray_kb, sum(_rss_kb(p) for p in _descendants(me)))
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _stage(name: str, rows: int, fn: Any) -> tuple[Any, dict[str, Any]]:
    with MemoryPoller() as poller:
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
    record = {
        "stage": name,
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_second": round(rows / seconds),
        "peak_driver_rss_mib": round(poller.peak_driver_kb / 1024, 1),
        "peak_ray_processes_rss_mib": round(poller.peak_ray_kb / 1024, 1),
    }
    logger.info("%s", record)
    return result, record


SHARD_ROWS = 2_000_000  # the synthetic benchmarks' prepared shards: at most this many rows


def synthetic_catalogue(rows: int) -> tuple[int, int]:
    """(users, items) of the benchmarks' synthetic data for ``rows`` interactions: N/50
    users (at least 1,000) and N/500 items within [2,000, 50,000]."""
    return max(1_000, rows // 50), min(50_000, max(2_000, rows // 500))


def synthetic_data_config(rows: int, users: int, items: int, workdir: Path) -> DataConfig:
    """``rows`` synthetic interactions of ``users`` x ``items``, in shards of at most
    ``SHARD_ROWS`` rows, prepared under ``workdir/synthetic-<rows>``."""
    return DataConfig(
        synthetic=SyntheticConfig(
            num_users=users,
            num_items=items,
            num_interactions=rows,
            shard_rows=min(rows, SHARD_ROWS),
        ),
        prepared_dir=str(workdir / f"synthetic-{rows}"),
    )


def bench_size(
    size: int, workdir: Path, num_cpus: int, reuse_prepared: bool = False
) -> dict[str, Any]:
    import ray

    from cadc_ray.data import (
        Manifest,
        known_positives,
        materialize_sample,
        materialize_split,
        prepare_dataset,
    )

    num_users, num_items = synthetic_catalogue(size)
    config = synthetic_data_config(size, num_users, num_items, workdir)
    if reuse_prepared:
        # Only the split and sample stages are measured; any old split/sample is redone.
        shutil.rmtree(workdir / f"synthetic-{size}" / "split", ignore_errors=True)
    else:
        shutil.rmtree(workdir / f"synthetic-{size}", ignore_errors=True)
    prepared, prepare_record = _stage("prepare", size, lambda: prepare_dataset(config, workdir))
    prepare_record["reused_existing_prepared_folder"] = reuse_prepared
    manifest = Manifest.load(prepared)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        split, split_record = _stage(
            "split", manifest.num_interactions, lambda: materialize_split(prepared)
        )
        train_rows = int(split.summary()["num_train"])
        _, sample_record = _stage(
            "sample_1_in_10", train_rows, lambda: materialize_sample(split, 10.0, 0)
        )
    finally:
        ray.shutdown()
    _, positives_record = _stage(
        "known_positives",
        train_rows,
        lambda: known_positives(split, manifest.num_users, manifest.num_items),
    )
    disk = sum(p.stat().st_size for p in prepared.rglob("*") if p.is_file())
    return {
        "num_interactions": manifest.num_interactions,
        "num_users": manifest.num_users,
        "num_items": manifest.num_items,
        "num_shards": manifest.num_shards,
        "split_partitions": split.summary()["num_partitions"],
        "disk_bytes_prepared_split_sample": disk,
        "stages": [prepare_record, split_record, sample_record, positives_record],
    }


def git_commit() -> str | None:
    """HEAD of the checkout the script runs from, marked when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head} (uncommitted changes)" if dirty else head


REFERENCE_TABLE_ROWS, REFERENCE_ROW_WIDTH, REFERENCE_GATHERED_ROWS = 20_000, 96, 40_960
"""The gather probe: the 10^6-row MF benchmark's user table, and one MF batch's item rows
(8192 positives x (1 + 4 negatives))."""

REFERENCE_GEMM_SIZE = 512
"""The GEMM probe: a 512 x 512 by 512 x 512 float32 product."""


def speed_reference(repeats: int = 15) -> dict[str, float]:
    """How fast this machine is now at the two kinds of work our benchmarks time.

    The probes run on one torch thread and keep the best of ``repeats`` (0.1 s in all on
    the 2-core machine, torch already imported):

    - ``gather_gb_per_s``: ``index_select`` of 40,960 random rows of 96 float32 from a
      20,000-row table. This is memory bound, like the fused MF step, which is mostly
      gathers and scatters.
    - ``gemm_gflop_per_s``: a 512^3 float32 matrix product. This is compute bound, like
      the TTNN's towers.

    Why: on the shared 2-core machine the same code measured 1.9-4.0x slower on one day
    than on another, with nothing else running (docs/results.md, "The same benchmark, the
    same code, another day"), and the load average does not show it. A benchmark records
    this probe before and after its work, a coarse sign of the state the machine was in:
    its speed also moves within minutes, so one probe does not predict the next seconds
    of work. The torch thread count is restored.
    """
    import torch

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    table = torch.rand((REFERENCE_TABLE_ROWS, REFERENCE_ROW_WIDTH), generator=generator)
    rows = torch.randint(0, REFERENCE_TABLE_ROWS, (REFERENCE_GATHERED_ROWS,), generator=generator)
    left, right = (
        torch.rand((REFERENCE_GEMM_SIZE, REFERENCE_GEMM_SIZE), generator=generator)
        for _ in range(2)
    )
    # Written into buffers allocated once: a fresh 15.7 MB result per call would time how
    # glibc's malloc serves it (fresh pages at first, reused ones once its threshold adapts).
    gathered = table.new_empty((REFERENCE_GATHERED_ROWS, REFERENCE_ROW_WIDTH))
    product = left.new_empty((REFERENCE_GEMM_SIZE, REFERENCE_GEMM_SIZE))
    gather_seconds, gemm_seconds = [], []
    torch.set_num_threads(1)
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            torch.index_select(table, 0, rows, out=gathered)
            gather_seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
            torch.mm(left, right, out=product)
            gemm_seconds.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    gathered_bytes = REFERENCE_GATHERED_ROWS * REFERENCE_ROW_WIDTH * table.element_size()
    return {
        "gather_gb_per_s": round(gathered_bytes / min(gather_seconds) / 1e9, 3),
        "gemm_gflop_per_s": round(2 * REFERENCE_GEMM_SIZE**3 / min(gemm_seconds) / 1e9, 2),
    }


def require_tuned_allocator() -> None:
    """Sets glibc malloc as every cadc_ray stage does (``runtime.device.tune_cpu_allocator``),
    or exits: a run meant to measure the tuned setting must not measure glibc's defaults
    unnoticed (not glibc, or the environment sets ``MALLOC_*`` itself)."""
    from cadc_ray.runtime.device import tune_cpu_allocator

    if not tune_cpu_allocator():
        raise SystemExit("tune_cpu_allocator() did not apply (not glibc, or MALLOC_* set)")


def write_result(output: Path, record: Any, summary: Any = None) -> None:
    """A benchmark's JSON, written as every script here writes it: replaced atomically, its
    folder made if need be (``write_text_atomic``; an interrupted run leaves the previous
    result, never half of one), then ``summary`` (if any) and the path printed."""
    write_text_atomic(output, json.dumps(record, indent=2) + "\n")
    if summary is not None:
        print(json.dumps(summary, indent=1))
    print(f"wrote {output}")


def torch_bench_header(benchmark: str, load_before: tuple[float, ...]) -> dict[str, Any]:
    """What a single-process torch benchmark's JSON opens with: name, commit, date, machine,
    torch, the load average before (given, taken before the work) and now, and the machine's
    ``speed_reference`` now (the header is written after the work)."""
    import torch

    return {
        "benchmark": benchmark,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "speed_reference_after": speed_reference(),
        "torch": torch.__version__,
    }


def machine_info(num_cpus: int) -> dict[str, Any]:
    import numpy
    import pyarrow
    import ray

    memory_kb = 0
    with open("/proc/meminfo") as stream:
        for line in stream:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "ray_num_cpus": num_cpus,
        "memory_gib": round(memory_kb / 2**20, 1),
        "load_average_at_start": os.getloadavg(),
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": numpy.__version__,
        "disk_shuffle": os.environ.get("RAY_DATA_ENABLE_DISK_SHUFFLE", "0"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cadc_bench_data"))
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "bench_data.json"
    )
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep", action="store_true", help="keep the prepared data")
    parser.add_argument(
        "--reuse-prepared",
        action="store_true",
        help="reuse a kept prepared folder (the prepare stage is then not measured)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # A loaded machine can take longer than Ray's default 30 s to register the raylet.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "benchmark": "bench_data",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(args.num_cpus),
        "runs": [],
    }
    for size in (int(s) for s in args.sizes):
        logger.info("size %d", size)
        results["runs"].append(bench_size(size, args.workdir, args.num_cpus, args.reuse_prepared))
        if not args.keep:
            shutil.rmtree(args.workdir / f"synthetic-{size}", ignore_errors=True)
        # Written after every size: an interrupted run keeps what finished.
        write_text_atomic(args.output, json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
