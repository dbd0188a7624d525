"""TTNN training rows/s with dense Adam against row-sparse id tables, on a large catalogue.

    python scripts/bench_id_updates.py [--num-users 22164] [--num-items 296277]
        [--batches 60] [--batch-size 1024] [--negatives 4] [--repeats 2] [--threads 2]
        [--output benchmarks/results/bench_id_updates.json]

The default shape is Epinions' (22,164 users x 296,277 items), where a GS epoch ran at
about 6,000 rows/s. The model is GS's (integration ``none``: trainable id tables, id-only
towers of ML-1M's model config), trained with ``train_two_tower_epoch`` on Zipf-like ids
(the popularity skew of interaction logs) and 4 uniform negatives, in three ways:
``dense`` (``train.id_table_updates: dense``: Adam over whole tables), ``auto`` (tables of
at least ``SPARSE_UPDATE_ROWS`` rows row-sparse: here the item table) and ``sparse`` (every
trainable table). Each measurement is one pass over the same ``--batches`` batches from the
same initial weights; the variants are interleaved ``--repeats`` times and the best time is
kept. The mean loss of the first pass is recorded too: lazy Adam must learn as dense Adam
does, not only faster.

The machine's load before and after is recorded. Written atomically as JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

# The sibling benchmarks are plain scripts, not a package: their helpers are imported by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import torch_bench_header, write_result

from cadc_ray.config import ModelConfig
from cadc_ray.models import build_two_tower
from cadc_ray.training.loops import train_two_tower_epoch
from cadc_ray.training.optim import Optimizer, sparse_id_tables, two_tower_optimizers
from cadc_ray.training.samplers import UniformNegativeSampler

REPO = Path(__file__).resolve().parents[1]
MODES = ("dense", "auto", "sparse")


def _zipf_ids(rng: np.random.Generator, count: int, size: int) -> torch.Tensor:
    """Ids with a power-law popularity, popular ids spread over the id range."""
    ranks = np.minimum(rng.zipf(1.2, size), count) - 1
    return torch.from_numpy(rng.permutation(count)[ranks])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-users", type=int, default=22_164)
    parser.add_argument("--num-items", type=int, default=296_277)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks/results/bench_id_updates.json"
    )
    args = parser.parse_args(argv)
    for name in ("num_users", "num_items", "batches", "batch_size", "negatives", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    rows = args.batches * args.batch_size
    users = _zipf_ids(rng, args.num_users, rows)
    items = _zipf_ids(rng, args.num_items, rows)
    batches = [
        (users[start : start + args.batch_size], items[start : start + args.batch_size])
        for start in range(0, rows, args.batch_size)
    ]
    model_config = ModelConfig(use_features=False)

    def fresh(mode: str) -> tuple[torch.nn.Module, list[Optimizer], list[str]]:
        torch.manual_seed(0)
        model = build_two_tower(
            model_config, args.num_users, args.num_items, None, None, None, "none"
        )
        tables = sparse_id_tables(model, mode, 0.0, sparse_allreduce=True)
        optimizers = two_tower_optimizers(model, 1e-3, 0.0, tables)
        return model, list(optimizers.values()), sorted(tables)

    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    first_loss: dict[str, float] = {}
    sparse_tables: dict[str, list[str]] = {}
    for _repeat in range(args.repeats):
        for mode in MODES:  # interleaved: a load change hits every mode alike
            model, optimizers, sparse_tables[mode] = fresh(mode)
            started = time.perf_counter()
            loss = train_two_tower_epoch(
                model,
                batches,
                optimizers,
                UniformNegativeSampler(args.num_items),
                args.negatives,
                torch.Generator().manual_seed(0),
            )
            seconds[mode].append(time.perf_counter() - started)
            first_loss.setdefault(mode, loss)
    results = {
        mode: {
            "rows_per_second": round(rows / min(seconds[mode])),
            "seconds": [round(value, 3) for value in seconds[mode]],
            "mean_loss": round(first_loss[mode], 5),
            "sparse_tables": sparse_tables[mode],
        }
        for mode in MODES
    }
    for mode in ("auto", "sparse"):
        results[mode]["speedup_vs_dense"] = round(min(seconds["dense"]) / min(seconds[mode]), 2)
    for mode, result in results.items():
        print(f"{mode}: {result}")
    report = {
        **torch_bench_header("bench_id_updates", load_before),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows_per_pass": rows,
        "results": results,
    }
    write_result(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
