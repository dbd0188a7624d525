"""Speed of the full-ranking evaluation (``evaluation.full_ranking_sums``) on a large catalogue.

    python scripts/bench_ranking.py [--num-users 22164] [--num-items 296277]
        [--eval-users 2048] [--known-per-user 40] [--user-batch-size 1024] [--threads 2]
        [--output benchmarks/results/bench_ranking.json]

The default shape is Epinions' (22,164 users x 296,277 items), where one validation ranking
of the ``residual`` model took 136 s (docs/results.md, "Epinions"). The models are built as
the TTNN stage builds them (``models.build.build_two_tower``, id-only towers, ML-1M's model
config) over random pretrained rows; the scores are random, which does not change what a
ranking costs (every cell is scored, compared and counted whatever its value). For each
scorer (the MF teacher alone, the plain two-tower, ``residual``) it ranks ``--eval-users``
users against every item, with ``--known-per-user`` random known positives masked per user,
and reports seconds per 1,024 users and the extrapolation to every user. The scorer's setup
(the item-tower pass) is timed apart.

The machine's load (``os.getloadavg``) before and after is recorded. Written atomically as
JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch

# The sibling benchmarks are plain scripts, not a package: their helpers are imported by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import torch_bench_header, write_result

from cadc_ray.config import ModelConfig
from cadc_ray.evaluation import ScoreUsers, full_ranking_sums
from cadc_ray.models.build import build_two_tower
from cadc_ray.models.pretrained import PretrainedTables, teacher_scorer

REPO = Path(__file__).resolve().parents[1]
RANKING_CUTOFFS = (10, 10_000)


def _known_positives(
    rng: np.random.Generator, num_users: int, num_items: int, per_user: int
) -> scipy.sparse.csr_matrix:
    rows = np.repeat(np.arange(num_users), per_user)
    columns = rng.integers(0, num_items, size=rows.size)
    data = np.ones(rows.size, dtype=np.float32)
    known = scipy.sparse.csr_matrix((data, (rows, columns)), shape=(num_users, num_items))
    known.data[:] = 1.0  # repeats were summed
    return known


def _time_ranking(
    build_scorer: Any,
    users: np.ndarray,
    heldout: np.ndarray,
    known: scipy.sparse.csr_matrix,
    user_batch_size: int,
) -> dict[str, float]:
    started = time.perf_counter()
    scorer: ScoreUsers = build_scorer()
    setup = time.perf_counter() - started
    started = time.perf_counter()
    sums = full_ranking_sums(scorer, users, heldout, known, RANKING_CUTOFFS, user_batch_size)
    ranking = time.perf_counter() - started
    return {
        "setup_seconds": round(setup, 3),
        "ranking_seconds": round(ranking, 3),
        "seconds_per_1024_users": round(ranking / users.size * 1024, 3),
        # Random scores put HR@10 near 0; HR@10000 (about 10000 / num_items) shows that two
        # versions of the evaluation rank identically.
        **{name: round(value, 6) for name, value in sums.metrics().items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-users", type=int, default=22_164)
    parser.add_argument("--num-items", type=int, default=296_277)
    parser.add_argument("--eval-users", type=int, default=2048)
    parser.add_argument("--known-per-user", type=int, default=40)
    parser.add_argument("--user-batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks/results/bench_ranking.json"
    )
    args = parser.parse_args(argv)
    if not 0 < args.eval_users <= args.num_users:
        parser.error(f"--eval-users must lie in [1, {args.num_users}], got {args.eval_users}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)

    model_config = ModelConfig(use_features=False)
    width = model_config.embedding_dim  # teacher rows: pretrain dim + 1 = the id embedding size
    tables = PretrainedTables(
        user=rng.normal(0, 0.1, (args.num_users, width)).astype(np.float32),
        item=rng.normal(0, 0.1, (args.num_items, width)).astype(np.float32),
        pretrainer="mf",
        global_bias=-1.0,
    )
    known = _known_positives(rng, args.num_users, args.num_items, args.known_per_user)
    users = np.sort(rng.choice(args.num_users, size=args.eval_users, replace=False))
    heldout = rng.integers(0, args.num_items, size=users.size)

    def two_tower(integration: str) -> Any:
        model = build_two_tower(
            model_config,
            args.num_users,
            args.num_items,
            None,
            None,
            None if integration == "none" else tables,
            integration,  # type: ignore[arg-type]
        )
        model.eval()
        return model.ranking_scorer

    scorers = {
        "mf_teacher_alone": lambda: teacher_scorer(tables),
        "two_tower": two_tower("none"),
        "residual": two_tower("residual"),
    }
    results = {
        name: _time_ranking(build, users, heldout, known, args.user_batch_size)
        for name, build in scorers.items()
    }
    for name, result in results.items():
        extrapolated = result["seconds_per_1024_users"] * args.num_users / 1024
        result["extrapolated_all_users_seconds"] = round(extrapolated + result["setup_seconds"], 1)
        print(f"{name}: {result}")

    report = {
        **torch_bench_header("bench_ranking", load_before),
        "threads": args.threads,
        "shape": {
            "num_users": args.num_users,
            "num_items": args.num_items,
            "eval_users": args.eval_users,
            "known_per_user": args.known_per_user,
            "user_batch_size": args.user_batch_size,
            "teacher_width": width,
            "tower_output_dim": model_config.output_dim,
        },
        "results": results,
    }
    write_result(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
