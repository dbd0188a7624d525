"""MF epochs with glibc's default malloc settings against ``runtime.device.tune_cpu_allocator``.

    python scripts/bench_allocator.py --output benchmarks/results/bench_allocator.json

Each measurement is a new process (the allocator's state is per process, and glibc's own
thresholds adapt to what a process did before), alternating default and tuned. Each trains
the row-sparse fused MF step (``training.fused_mf``) for ``--epochs`` epochs over the same
synthetic rows in memory (``runtime.stage.InMemoryRows``: 960,000 positives, 20,000 users x
2,000 items, d = 95, batch 8192, 4 uniform negatives, sides alternating by epoch, 1 torch
thread) and reports each epoch's rows/s. The JSON (written atomically) has every epoch,
the means and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = ("default", "tuned")


def child(mode: str, epochs: int) -> list[float]:
    """One process's epochs (rows/s), the allocator tuned first when ``mode`` says so."""
    import numpy as np
    import torch

    from cadc_ray.models.mf import MatrixFactorization
    from cadc_ray.runtime.device import tune_cpu_allocator
    from cadc_ray.runtime.stage import InMemoryRows
    from cadc_ray.runtime.worker import WorkerInfo, seeded_generator
    from cadc_ray.training.fused_mf import FusedMFTrainer
    from cadc_ray.training.loops import train_mf_epoch_fused
    from cadc_ray.training.samplers import build_negative_sampler

    torch.set_num_threads(1)
    if mode == "tuned" and not tune_cpu_allocator():
        raise SystemExit("tune_cpu_allocator() did not apply (not glibc, or MALLOC_* set)")
    rng = np.random.default_rng(0)
    rows, users, items = 960_000, 20_000, 2_000
    user_ids = torch.from_numpy(rng.integers(0, users, rows))
    item_ids = torch.from_numpy(rng.integers(0, items, rows))
    torch.manual_seed(0)
    model = MatrixFactorization(users, items, 95)
    trainer = FusedMFTrainer(model, 5e-3)
    sampler = build_negative_sampler(
        "uniform", items, item_counts=np.bincount(item_ids.numpy(), minlength=items)
    )
    data = InMemoryRows(user_ids, item_ids)
    worker = WorkerInfo(0, 1, torch.device("cpu"))
    rates = []
    for epoch in range(epochs):
        started = time.perf_counter()
        train_mf_epoch_fused(
            trainer,
            data.epoch_batches(1, epoch, 8192, worker),
            sampler,
            4,
            seeded_generator(1, "negatives", 0, epoch),
            epoch,
            "epoch",
        )
        rates.append(rows / (time.perf_counter() - started))
    return rates


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=6, help="new processes per mode")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/bench_allocator.json")
    )
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.processes < 1 or args.epochs < 1:
        parser.error("--processes and --epochs must be >= 1")
    sys.path.insert(0, str(REPO_ROOT))
    if args.child:
        print(json.dumps(child(args.child, args.epochs)))
        return 0
    from cadc_ray.atomic import write_text_atomic

    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    record: dict[str, Any] = {
        "benchmark": "MF epochs, glibc malloc defaults vs tune_cpu_allocator",
        "command": " ".join(["python", "scripts/bench_allocator.py", *(argv or sys.argv[1:])]),
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "epoch_rows_per_second": {mode: [] for mode in MODES},
    }
    for _ in range(args.processes):
        for mode in MODES:
            done = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--epochs", str(args.epochs)],
                cwd=REPO_ROOT,
                env=environment,
                capture_output=True,
                text=True,
                check=True,
            )
            rates = json.loads(done.stdout.strip().splitlines()[-1])
            record["epoch_rows_per_second"][mode].append(rates)
            print(mode, [round(rate / 1e3) for rate in rates], flush=True)
    record["load_average_after"] = os.getloadavg()
    record["summary"] = {
        mode: {
            "mean_epoch_rows_per_second": statistics.fmean(
                rate for process in record["epoch_rows_per_second"][mode] for rate in process
            ),
            "slowest_epoch_rows_per_second": min(
                rate for process in record["epoch_rows_per_second"][mode] for rate in process
            ),
        }
        for mode in MODES
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["summary"], indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
