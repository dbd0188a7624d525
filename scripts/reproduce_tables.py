"""Reproduces the shape of the CADC paper's Table 1 (methods) and Table 2 (integration
techniques) on one dataset, one experiment after another in one Ray session.

    CADC_DATA_DIR=../shared/data python scripts/reproduce_tables.py configs/ml-1m.yaml \
        --tables 1 2 --output benchmarks/results/tables_ml-1m.json

Writes a JSON file (every run's results.json payload, minus the per-epoch history) and
a Markdown table next to it (same name, ``.md``), both atomically. Numbers are
percentages, as in the paper.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from cadc_ray.atomic import write_text_atomic
from cadc_ray.config import MethodName, load_config, replace_dotted
from cadc_ray.methods import METHODS

TABLE1_METHODS: tuple[MethodName, ...] = (
    "gs",
    "random",
    "over_sampling",
    "under_sampling",
    "logq",
    "cadc_mlp",
    "cadc",
    "cadc_als",
)
TABLE2_TECHNIQUES = ("hybrid", "init", "init_frz", "linear", "mlp")
DROPPED_KEYS = ("history", "pretrain_history", "config")


def _row(label: str, result: dict[str, Any]) -> str:
    test = result["test_percent"]
    pretrain = result["pretrain_seconds"]
    seconds = (
        f"{pretrain:.0f}+{result['train_seconds']:.0f}"
        if pretrain
        else f"{result['train_seconds']:.0f}"
    )
    return (
        f"| {label} | {test['hr@10']:.2f} | {test['ndcg@10']:.2f} | {seconds} | "
        f"{result['best_epoch']}/{result['epochs_run']} | {result['train_interactions']:,} | "
        f"{result['trainable_parameters']:,} / {result['frozen_parameters']:,} |"
    )


HEADER = (
    "| {first} | HR@10 % | NDCG@10 % | seconds (pretrain+TTNN) | best/run epochs "
    "| train interactions | trainable / frozen params |\n|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="base experiment YAML (dataset, hyperparameters)")
    parser.add_argument("--tables", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--methods", nargs="+", default=list(TABLE1_METHODS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--output", type=Path, required=True, help="JSON results file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    # Every config is built and validated before the first run starts.
    base = load_config(args.config, args.overrides)
    planned: list[tuple[int, str, Any]] = []
    if 1 in args.tables:
        for method in args.methods:
            if method not in METHODS:
                parser.error(f"--methods: unknown method {method!r} (known: {list(METHODS)})")
            values = {"method": method, "model.integration": "auto", "name": f"t1-{method}"}
            planned.append((1, METHODS[method].label, replace_dotted(base, values)))
    if 2 in args.tables:
        for technique in TABLE2_TECHNIQUES:
            values = {"method": "cadc", "model.integration": technique, "name": f"t2-{technique}"}
            planned.append((2, technique, replace_dotted(base, values)))

    import ray

    from cadc_ray.run import run_experiment
    from cadc_ray.runtime.session import init_ray

    init_ray(None, resources=base.resources)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        for table, label, config in planned:
            print(f"[table {table}] {label} ...", flush=True)
            result = run_experiment(config)
            slim = {key: value for key, value in result.items() if key not in DROPPED_KEYS}
            runs.append({"table": table, "label": label, "result": slim})
            print(f"  test {result['test_percent']}  ({result['total_seconds']:.0f}s)", flush=True)
    finally:
        ray.shutdown()

    payload = {
        "config_file": args.config,
        "overrides": args.overrides,
        "dataset": base.data.dataset,
        "filter_ratio": base.data.filter_ratio,
        "seed": base.seed,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
        "runs": runs,
    }
    write_text_atomic(args.output, json.dumps(payload, indent=2) + "\n")
    lines = [
        f"Dataset `{base.data.dataset}`, filter ratio {base.data.filter_ratio:g}, seed {base.seed}.",
        "",
    ]
    for table, first in ((1, "method"), (2, "integration")):
        rows = [_row(run["label"], run["result"]) for run in runs if run["table"] == table]
        if rows:
            lines += [f"Table {table}", "", HEADER.format(first=first), *rows, ""]
    write_text_atomic(args.output.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
