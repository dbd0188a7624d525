"""Training epochs with glibc's default malloc settings against ``runtime.device.tune_cpu_allocator``.

    python scripts/bench_allocator.py --output benchmarks/results/bench_allocator.json

Each measurement is a new process (the allocator's state is per process, and glibc's own
thresholds adapt to what a process did before), alternating default and tuned, and reports
each epoch's rows/s (1 torch thread). The stages (``--stages``):

- ``mf``: the row-sparse fused MF step (``training.fused_mf``) over the same synthetic rows
  in memory (``runtime.stage.InMemoryRows``: 960,000 positives, 20,000 users x 2,000
  items, d = 95, batch 8192, 4 uniform negatives, sides alternating by epoch);
- ``ttnn``: the two-tower epoch (``training.loops.train_two_tower_epoch``, candidate lists,
  RecD dedup on) over 102,400 Zipf-distributed pairs of 6,000 users x 3,700 items with
  three categorical features and an 18-wide multi-hot per side, batch 1024, 4 negatives
  (the shape of ``scripts/bench_mf.py``'s TTNN measurement).

The JSON (written atomically) has every epoch, the means and the load average before and
after.
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
STAGES = ("mf", "ttnn")


def child(mode: str, stage: str, epochs: int) -> list[float]:
    """One process's epochs of ``stage`` (rows/s), the allocator tuned first when ``mode``
    says so."""
    import torch
    from bench_data import require_tuned_allocator  # scripts/ is on sys.path

    torch.set_num_threads(1)
    if mode == "tuned":
        require_tuned_allocator()
    return mf_epochs(epochs) if stage == "mf" else ttnn_epochs(epochs)


def ttnn_epochs(epochs: int) -> list[float]:
    import torch
    from bench_mf import TTNN_ITEMS, TTNN_USERS, zipf_two_tower_data  # scripts/ is on sys.path

    from cadc_ray.config import ModelConfig
    from cadc_ray.models import build_two_tower
    from cadc_ray.training.loops import train_two_tower_epoch
    from cadc_ray.training.optim import make_optimizer
    from cadc_ray.training.samplers import UniformNegativeSampler

    batch, batches = 1024, 100
    rows = batch * batches
    users, items, user_features, item_features = zipf_two_tower_data(rows)
    torch.manual_seed(0)
    model = build_two_tower(
        ModelConfig(dedup=True),
        TTNN_USERS,
        TTNN_ITEMS,
        user_features,
        item_features,
        None,
        "none",
    )
    optimizer = make_optimizer(model, 1e-3, 0.0)
    rates = []
    for epoch in range(epochs):
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(epoch))
        epoch_batches = (
            (users[order[k : k + batch]], items[order[k : k + batch]])
            for k in range(0, rows, batch)
        )
        started = time.perf_counter()
        train_two_tower_epoch(
            model,
            epoch_batches,
            optimizer,
            UniformNegativeSampler(TTNN_ITEMS),
            4,
            torch.Generator().manual_seed(epoch),
        )
        rates.append(rows / (time.perf_counter() - started))
    return rates


def mf_epochs(epochs: int) -> list[float]:
    import numpy as np
    import torch

    from cadc_ray.models.mf import MatrixFactorization
    from cadc_ray.runtime.stage import InMemoryRows
    from cadc_ray.runtime.worker import WorkerInfo, seeded_generator
    from cadc_ray.training.fused_mf import FusedMFTrainer
    from cadc_ray.training.loops import train_mf_epoch_fused
    from cadc_ray.training.samplers import build_negative_sampler

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
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/bench_allocator.json")
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "STAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.processes < 1 or args.epochs < 1:
        parser.error("--processes and --epochs must be >= 1")
    sys.path.insert(0, str(REPO_ROOT))
    if args.child:
        mode, stage = args.child
        print(json.dumps(child(mode, stage, args.epochs)))
        return 0
    from bench_data import write_result  # scripts/ is on sys.path

    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    record: dict[str, Any] = {
        "benchmark": "training epochs, glibc malloc defaults vs tune_cpu_allocator",
        "command": " ".join(["python", "scripts/bench_allocator.py", *(argv or sys.argv[1:])]),
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "epoch_rows_per_second": {stage: {mode: [] for mode in MODES} for stage in args.stages},
    }
    for stage in args.stages:
        for _ in range(args.processes):
            for mode in MODES:
                command = [sys.executable, __file__, "--child", mode, stage]
                done = subprocess.run(
                    [*command, "--epochs", str(args.epochs)],
                    cwd=REPO_ROOT,
                    env=environment,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rates = json.loads(done.stdout.strip().splitlines()[-1])
                record["epoch_rows_per_second"][stage][mode].append(rates)
                print(stage, mode, [round(rate / 1e3) for rate in rates], flush=True)
    record["load_average_after"] = os.getloadavg()
    record["summary"] = {
        stage: {
            mode: {
                "mean_epoch_rows_per_second": statistics.fmean(
                    rate for process in by_mode[mode] for rate in process
                ),
                "slowest_epoch_rows_per_second": min(
                    rate for process in by_mode[mode] for rate in process
                ),
            }
            for mode in MODES
        }
        for stage, by_mode in record["epoch_rows_per_second"].items()
    }
    write_result(args.output, record, record["summary"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
