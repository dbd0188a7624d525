"""Speed of the compressed id tables and of the learned-hash clustering, on this CPU.

    python scripts/bench_id_tables.py [--num-ids 1000000] [--dim 96] [--batch 4096]
        [--fraction 0.1] [--steps 30] [--cluster-ids 1000000] [--cluster-target 100000]
        [--threads 1] [--output benchmarks/results/bench_id_tables.json]

1. Forward + backward rows/s of every id-table kind (``models.id_tables``) against a full
   ``nn.Embedding`` of ``num_ids x dim``: each step draws a batch of ids (Zipf-like, as
   interaction logs are) and runs ``table(ids).sum().backward()``, then again with an Adam
   step; the median of ``--steps`` timed steps (after warm-up) gives rows/s. Forward +
   backward alone measures the index arithmetic and scatter-add each kind adds (ROBE's
   per-element gather/scatter is its CPU cost); with Adam, a full table's dense update of
   every row usually dominates.
2. The learned-hash clustering (``learned_hash.cluster_1d``) of ``--cluster-ids`` ids down
   to ``--cluster-target`` clusters: seconds, with a Zipf count distribution.

The machine's load (``os.getloadavg``) before and after is recorded: on a shared machine
the numbers are only comparable within one file. Written atomically as JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# The sibling benchmarks are plain scripts, not a package: their helpers are imported by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import write_result

from cadc_ray.config import IdTableConfig, IdTableKind
from cadc_ray.models.id_tables import ID_TABLE_KINDS, RobeArray, TableContext, budget_rows
from cadc_ray.models.learned_hash import cluster_1d

REPO = Path(__file__).resolve().parents[1]
KINDS: tuple[IdTableKind, ...] = ("full", "hashing", "qr", "double_hash", "robe", "learned_hash")


def _zipf_ids(rng: np.random.Generator, num_ids: int, size: int) -> np.ndarray:
    """Ids with a power-law popularity (rank r drawn with weight ~ 1 / r^0.8), shuffled."""
    ranks = np.arange(1, num_ids + 1, dtype=np.float64)
    weights = ranks**-0.8
    permutation = rng.permutation(num_ids)
    result: np.ndarray = permutation[rng.choice(num_ids, size=size, p=weights / weights.sum())]
    return result


def build_table(
    kind: IdTableKind, num_ids: int, dim: int, fraction: float, counts: np.ndarray
) -> nn.Module:
    """One table of ``kind`` at ``fraction`` of the full size (the teacher: random rows)."""
    config = IdTableConfig(kind=kind, fraction=fraction, teacher_dim=2)
    rng = np.random.default_rng(0)
    robe = RobeArray(budget_rows(config, num_ids) * dim) if kind == "robe" else None
    teacher = rng.normal(size=(num_ids, 4)).astype(np.float32) if kind == "learned_hash" else None
    context = TableContext(
        config=config,
        num_ids=num_ids,
        embedding_dim=dim,
        seed=0,
        counts=counts,
        teacher=teacher,
        robe_array=robe,
    )
    return ID_TABLE_KINDS[kind](context)


def time_table(table: nn.Module, batches: list[torch.Tensor], warmup: int = 3) -> dict[str, Any]:
    """Median seconds per batch of forward + backward, and of forward + backward + Adam.

    The first isolates the lookup and its gradient (the scatter-add): what a kind's index
    arithmetic costs. The second adds a dense Adam step, whose cost grows with the table's
    size: a full table pays it for every row, a compressed one only for its few rows.
    """
    optimizer = torch.optim.Adam(table.parameters(), lr=1e-3)
    results: dict[str, Any] = {"parameters": sum(p.numel() for p in table.parameters())}
    for label, with_step in (("fwd_bwd", False), ("fwd_bwd_adam", True)):
        seconds = []
        for index, ids in enumerate(batches):
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            table(ids).sum().backward()
            if with_step:
                optimizer.step()
            if index >= warmup:
                seconds.append(time.perf_counter() - started)
        median = statistics.median(seconds)
        results[f"{label}_median_step_seconds"] = median
        results[f"{label}_rows_per_second"] = batches[0].numel() / median
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-ids", type=float, default=1e6)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cluster-ids", type=float, default=1e6)
    parser.add_argument("--cluster-target", type=float, default=1e5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "bench_id_tables.json"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    num_ids = int(args.num_ids)
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    ids = _zipf_ids(rng, num_ids, args.batch * (args.steps + 3))
    counts = np.bincount(ids, minlength=num_ids)
    batches = [torch.from_numpy(chunk) for chunk in np.split(ids, args.steps + 3) if chunk.size]
    tables: dict[str, Any] = {}
    for kind in KINDS:
        started = time.perf_counter()
        table = build_table(kind, num_ids, args.dim, args.fraction, counts)
        build_seconds = time.perf_counter() - started
        tables[kind] = {"build_seconds": build_seconds, **time_table(table, batches)}
        print(
            f"{kind:>13}: {tables[kind]['fwd_bwd_rows_per_second']:>12,.0f} rows/s fwd+bwd, "
            f"{tables[kind]['fwd_bwd_adam_rows_per_second']:>12,.0f} with Adam"
        )
    for label in ("fwd_bwd", "fwd_bwd_adam"):
        full_speed = tables["full"][f"{label}_rows_per_second"]
        for result in tables.values():
            result[f"{label}_speed_vs_full"] = result[f"{label}_rows_per_second"] / full_speed

    cluster_ids, cluster_target = int(args.cluster_ids), int(args.cluster_target)
    values = rng.normal(size=cluster_ids)
    cluster_counts = rng.zipf(1.5, size=cluster_ids).astype(np.float64)
    started = time.perf_counter()
    assignment = cluster_1d(values, cluster_counts, cluster_target)
    cluster_seconds = time.perf_counter() - started
    sizes = np.bincount(assignment)
    print(f"clustering {cluster_ids:,} -> {cluster_target:,}: {cluster_seconds:.2f} s")

    payload = {
        "benchmark": "id_tables",
        "settings": {
            "num_ids": num_ids,
            "dim": args.dim,
            "batch": args.batch,
            "fraction": args.fraction,
            "timed_steps": args.steps,
            "torch_threads": args.threads,
            "id_distribution": "zipf-like, weight ~ rank^-0.8",
        },
        "tables": tables,
        "clustering": {
            "num_ids": cluster_ids,
            "target": cluster_target,
            "seconds": cluster_seconds,
            "clusters": int(sizes.size),
            "largest_cluster": int(sizes.max()),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
        },
    }
    write_result(args.output, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
