"""The fused MF step on 1 and on several ranks of one machine: what the exchange costs.

    python scripts/bench_mf_ranks.py --worlds 1 2 --repeats 3 \
        --output benchmarks/results/bench_mf_ranks.json

Each measurement starts ``world`` new processes (``torch.multiprocessing``) in a gloo
process group, as a Train worker group's ranks are, without Ray: this times the step and its
exchange (``fused_mf.exchange_row_gradients``), not a worker group's start. Every rank builds
the same model (seed 0) and trains its ``batch_size / world`` rows of each global batch,
uniform synthetic ids (seeded per rank), ``--steps`` steps of the user phase, then of the
item phase; one torch thread per rank and the tuned host allocator, as the stages run. The
rows/s are global (``batch_size`` per step) from rank 0's clock between barriers. Worlds
alternate, ``--repeats`` times. The JSON (written atomically) names the checkout whose
``cadc_ray`` was imported (``PYTHONPATH`` may point at another one, for an A/B), the load
average before and after, every measurement and the median per world and phase.

Where a rank's step goes: every measurement also records rank 0's milliseconds per step
inside the exchange (wall time: the collectives, the wait for the slower rank, the merge
of the ranks' rows). ``--independent`` adds, for each world above 1, runs whose ranks skip
the exchange and train on their own rows only ("2 independent"): not a training anyone
would run, but it shows what the ranks' compute alone gives on this machine, so the gap
to the exchanging runs is the exchange's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing

# The sibling benchmarks are plain scripts, not a package: their helpers are imported by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import torch_bench_header, write_result

import cadc_ray
from cadc_ray.models import MatrixFactorization
from cadc_ray.runtime.device import tune_cpu_allocator
from cadc_ray.training import FusedMFTrainer, fused_mf
from cadc_ray.training.alternation import Phase
from cadc_ray.training.fused_mf import RowSums

PHASES: tuple[Phase, ...] = ("user", "item")


def imported_checkout() -> dict[str, str | None]:
    """Where the imported ``cadc_ray`` lives and that checkout's HEAD."""
    root = Path(cadc_ray.__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = None
    return {"path": str(root), "commit": head}


def _timed_exchange(independent: bool) -> dict[str, float]:
    """Replaces ``fused_mf.exchange_row_gradients`` in this rank's process (the step looks it
    up in its module) with a wrapper that adds its wall seconds to the returned counter;
    ``independent``: the wrapper returns the rank's own rows, with no collective."""
    spent = {"seconds": 0.0}
    exchange = fused_mf.exchange_row_gradients

    def timed(
        sides: Sequence[tuple[RowSums, int]], shared: torch.Tensor
    ) -> tuple[list[RowSums], torch.Tensor]:
        started = time.perf_counter()
        try:
            if independent:
                return [row_sums for row_sums, _ in sides], shared
            return exchange(sides, shared)
        finally:
            spent["seconds"] += time.perf_counter() - started

    fused_mf.exchange_row_gradients = timed
    return spent


def _rank(
    rank: int, world: int, independent: bool, store_path: str, args: argparse.Namespace, out: str
) -> None:
    """One rank: ``args.steps`` fused steps per phase on its share of each global batch."""
    tune_cpu_allocator()
    torch.set_num_threads(1)
    exchange = _timed_exchange(independent)
    if world > 1:
        store = dist.FileStore(store_path, world)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        rows = args.batch_size // world
        rng = np.random.default_rng(rank)
        users = torch.from_numpy(rng.integers(0, args.users, args.steps * rows))
        items = torch.from_numpy(rng.integers(0, args.items, args.steps * rows))
        torch.manual_seed(0)
        trainer = FusedMFTrainer(MatrixFactorization(args.users, args.items, args.dim), 5e-3)
        negatives = torch.Generator().manual_seed(rank)
        measured: dict[str, float] = {}
        for phase in PHASES:
            if world > 1:
                dist.barrier()
            exchange["seconds"] = 0.0
            started = time.perf_counter()
            for step in range(args.steps):
                batch = slice(step * rows, (step + 1) * rows)
                drawn = torch.randint(0, args.items, (rows, args.negatives), generator=negatives)
                trainer.step(users[batch], items[batch], drawn, phase)
            if world > 1:
                dist.barrier()
            measured[phase] = args.steps * args.batch_size / (time.perf_counter() - started)
            measured[f"{phase}_exchange_ms_per_step"] = 1000 * exchange["seconds"] / args.steps
        if rank == 0:
            Path(out).write_text(json.dumps(measured), encoding="utf-8")
    finally:
        if world > 1:
            dist.destroy_process_group()


def measure(world: int, independent: bool, args: argparse.Namespace) -> dict[str, float]:
    """Rank 0's global rows/s and exchange milliseconds per step, per phase."""
    with tempfile.TemporaryDirectory(prefix="cadc-mf-ranks-") as folder:
        out = str(Path(folder) / "rank0.json")
        torch.multiprocessing.spawn(
            _rank, args=(world, independent, str(Path(folder) / "store"), args, out), nprocs=world
        )
        measured: dict[str, float] = json.loads(Path(out).read_text(encoding="utf-8"))
        return measured


def runs_to_make(args: argparse.Namespace) -> list[tuple[str, int, bool]]:
    """(label, world, independent) of each measurement in one repeat, in order."""
    runs = [(str(world), world, False) for world in args.worlds]
    if args.independent:
        runs += [(f"{world} independent", world, True) for world in args.worlds if world > 1]
    return runs


def summary(measurements: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Per label and phase: the median and best rows/s, and the median exchange ms per step."""
    return {
        label: {
            phase: {
                "median_rows_per_second": statistics.median(m[phase] for m in runs),
                "best_rows_per_second": max(m[phase] for m in runs),
                "median_exchange_ms_per_step": statistics.median(
                    m[f"{phase}_exchange_ms_per_step"] for m in runs
                ),
            }
            for phase in PHASES
        }
        for label, runs in measurements.items()
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="steps per phase")
    parser.add_argument("--users", type=int, default=20_000, help="bench_scale's 10^6 table")
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=95, help="MF d (rows of d+1)")
    parser.add_argument("--batch-size", type=int, default=8192, help="global, split by rank")
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument(
        "--independent",
        action="store_true",
        help="also run each world above 1 with no exchange (the ranks' compute alone)",
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/mf_ranks.json"))
    args = parser.parse_args(argv)
    if min(args.worlds) < 1 or args.repeats < 1 or args.steps < 1:
        parser.error("--worlds, --repeats and --steps must be >= 1")
    if any(args.batch_size % world for world in args.worlds):
        parser.error(f"--batch-size {args.batch_size} must divide by every world {args.worlds}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output.resolve()
    load_before = os.getloadavg()
    runs = runs_to_make(args)
    measurements: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in runs}
    for _ in range(args.repeats):
        for label, world, independent in runs:  # alternating: load changes hit all alike
            measurements[label].append(measure(world, independent, args))
    report = {
        **torch_bench_header("bench_mf_ranks", load_before),
        "measured_cadc_ray": imported_checkout(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "measurements": measurements,
        "summary": summary(measurements),
    }
    write_result(output, report, report["summary"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
