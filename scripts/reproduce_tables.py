"""Reproduces the shape of the CADC paper's Table 1 (methods) and Table 2 (integration
techniques) on one dataset, one experiment after another in one Ray session.

    CADC_DATA_DIR=../shared/data python scripts/reproduce_tables.py configs/ml-1m.yaml \
        --tables 1 2 --seeds 0 1 2 --output benchmarks/results/tables_ml-1m.json

``--teachers cadc cadc_als --techniques init_frz residual`` runs Table 2 with both the MF
and the ALS teacher (rows labelled ``residual (CADC-ALS)``), and each teacher alone gets its
own row. ``--seeds`` repeats every row with each experiment seed (MF initialisation, negatives,
batch order, TTNN initialisation; the data sample stays ``data.sample_seed``) and the
table reports mean and standard deviation: on ~1,000-3,000 evaluated users one seed's
HR@10 moves by about a point, as much as some of the differences being measured.
Runs that share a teacher (same dataset, pretrainer, ``pretrain.*`` and seed: CADC and
all of Table 2) train it once (``run_experiment(pretrain_cache=...)``). ``--resume``
after an interruption loads the runs that finished (their ``results.json`` holds the
same config) and runs the rest.

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
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cadc_ray.atomic import write_text_atomic
from cadc_ray.config import ExperimentConfig, MethodName, load_config, replace_dotted, to_dict
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
TABLE2_TECHNIQUES = ("hybrid", "init", "init_frz", "linear", "mlp", "residual")
"""The paper's Table 2 plus ``residual`` (ours, METHOD 1.7)."""
PRETRAINER_LABELS = {"mf": "MF", "mf_mlp": "MF-MLP", "als": "ALS"}
DROPPED_KEYS = ("history", "pretrain_history", "config")


def _mean_sd(values: Sequence[float]) -> str:
    """``mean`` for one value, ``mean ± sample sd`` for several."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table_row(label: str, results: Sequence[dict[str, Any]]) -> str:
    """One Markdown row over the seeds' results of one method / technique."""
    hr = [result["test_percent"]["hr@10"] for result in results]
    ndcg = [result["test_percent"]["ndcg@10"] for result in results]
    pretrain = statistics.mean(result["pretrain_seconds"] for result in results)
    train = statistics.mean(result["train_seconds"] for result in results)
    seconds = f"{pretrain:.0f}+{train:.0f}" if pretrain else f"{train:.0f}"
    best = "/".join(str(result["best_epoch"]) for result in results)
    run = "/".join(str(result["epochs_run"]) for result in results)
    first = results[0]
    per_seed = ", ".join(f"{value:.2f}" for value in hr)
    return (
        f"| {label} | {_mean_sd(hr)} | {_mean_sd(ndcg)} | {seconds} | {best} of {run} | "
        f"{first['train_interactions']:,} | "
        f"{first['trainable_parameters']:,} / {first['frozen_parameters']:,} | {per_seed} |"
    )


HEADER = (
    "| {first} | HR@10 % | NDCG@10 % | seconds (pretrain+TTNN, mean) | best epoch of epochs run "
    "| train interactions | trainable / frozen params | HR@10 per seed |\n"
    "|---|---|---|---|---|---|---|---|"
)


def markdown_tables(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Table 1 and Table 2 rows (labels in first-run order), aggregated over seeds."""
    lines: list[str] = []
    for table, first in ((1, "method"), (2, "integration")):
        labels = list(dict.fromkeys(run["label"] for run in runs if run["table"] == table))
        rows = [
            table_row(
                label,
                [run["result"] for run in runs if run["table"] == table and run["label"] == label],
            )
            for label in labels
        ]
        if table == 2:
            rows += teacher_rows([run for run in runs if run["table"] == table])
        if rows:
            lines += [f"Table {table}", "", HEADER.format(first=first), *rows, ""]
    return lines


def teacher_rows(runs: Sequence[dict[str, Any]]) -> list[str]:
    """One "<pretrainer> teacher alone" row per teacher: its own test HR/NDCG over the seeds.

    Every technique of one seed shares its teacher, so each (pretrainer, seed) counts once.
    """
    values: dict[str, dict[int, dict[str, float]]] = {}
    for run in runs:
        teacher = run["result"].get("teacher_test_percent")
        if teacher:
            label = PRETRAINER_LABELS.get(run["result"].get("pretrainer", ""), "teacher")
            values.setdefault(label, {})[run["seed"]] = teacher
    rows = []
    for label, by_seed in values.items():
        hr = [by_seed[seed]["hr@10"] for seed in sorted(by_seed)]
        ndcg = [by_seed[seed]["ndcg@10"] for seed in sorted(by_seed)]
        per_seed = ", ".join(f"{value:.2f}" for value in hr)
        rows.append(
            f"| {label} teacher alone | {_mean_sd(hr)} | {_mean_sd(ndcg)} | - | - | - | - | "
            f"{per_seed} |"
        )
    return rows


def finished_result(config: ExperimentConfig) -> dict[str, Any] | None:
    """The run's ``results.json`` if an earlier invocation finished this exact config."""
    from cadc_ray.run import RESULTS_FILE, default_run_dir

    path = default_run_dir(config) / RESULTS_FILE
    if not path.is_file():
        return None
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    same_config = json.loads(json.dumps(to_dict(config)))  # tuples -> lists, as stored
    return result if result.get("config") == same_config else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="base experiment YAML (dataset, hyperparameters)")
    parser.add_argument("--tables", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--methods", nargs="+", default=list(TABLE1_METHODS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--techniques",
        nargs="+",
        default=list(TABLE2_TECHNIQUES),
        help="Table 2's integration techniques (default: all of them)",
    )
    parser.add_argument(
        "--teachers",
        nargs="+",
        default=["cadc"],
        help="Table 2's pretraining methods, e.g. cadc cadc_als (default: cadc, as the paper)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="experiment seeds to repeat every row with (default: the config's seed)",
    )
    parser.add_argument("--output", type=Path, required=True, help="JSON results file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="load every run whose <output_root>/<name>/results.json holds the same config "
        "(e.g. after an interruption) and run only the others",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    # Every config is built and validated before the first run starts.
    base = load_config(args.config, args.overrides)
    seeds: list[int] = args.seeds if args.seeds is not None else [base.seed]
    if len(set(seeds)) != len(seeds):
        parser.error(f"--seeds: repeated seed in {seeds}")
    rows: list[tuple[int, str, dict[str, Any]]] = []
    if 1 in args.tables:
        for method in args.methods:
            if method not in METHODS:
                parser.error(f"--methods: unknown method {method!r} (known: {list(METHODS)})")
            values = {"method": method, "model.integration": "auto", "name": f"t1-{method}"}
            rows.append((1, METHODS[method].label, values))
    if 2 in args.tables:
        for method in args.teachers:
            if method not in METHODS or METHODS[method].pretrainer is None:
                parser.error(f"--teachers: {method!r} is not a pretraining method")
            for technique in args.techniques:
                if technique not in TABLE2_TECHNIQUES:
                    parser.error(f"--techniques: {technique!r} is not one of {TABLE2_TECHNIQUES}")
                # CADC keeps the paper's labels and run names (and so --resume's folders).
                suffix = "" if method == "cadc" else f" ({METHODS[method].label})"
                name = f"t2-{technique}" if method == "cadc" else f"t2-{method}-{technique}"
                values = {"method": method, "model.integration": technique, "name": name}
                rows.append((2, technique + suffix, values))
    planned: list[tuple[int, str, Any]] = [
        (
            table,
            label,
            replace_dotted(base, {**values, "seed": seed, "name": f"{values['name']}-seed{seed}"}),
        )
        for seed in seeds
        for table, label, values in rows
    ]

    import ray

    from cadc_ray.run import run_experiment
    from cadc_ray.runtime.session import init_ray

    init_ray(None, resources=base.resources)
    runs: list[dict[str, Any]] = []
    pretrain_cache: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        for table, label, config in planned:
            print(f"[table {table}] {label} seed {config.seed} ...", flush=True)
            result = finished_result(config) if args.resume else None
            if result is None:
                result = run_experiment(config, pretrain_cache=pretrain_cache)
            else:
                print("  loaded from its results.json (--resume)", flush=True)
            slim = {key: value for key, value in result.items() if key not in DROPPED_KEYS}
            runs.append({"table": table, "label": label, "seed": config.seed, "result": slim})
            print(f"  test {result['test_percent']}  ({result['total_seconds']:.0f}s)", flush=True)
    finally:
        ray.shutdown()

    payload = {
        "config_file": args.config,
        "overrides": args.overrides,
        "dataset": base.data.dataset,
        "filter_ratio": base.data.filter_ratio,
        "seeds": seeds,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "wall_seconds": round(time.perf_counter() - started, 1),  # this invocation only
        "resumed": bool(args.resume),
        "runs": runs,
    }
    write_text_atomic(args.output, json.dumps(payload, indent=2) + "\n")
    lines = [
        f"Dataset `{base.data.dataset}`, filter ratio {base.data.filter_ratio:g}, "
        f"sample seed {base.data.sample_seed}, experiment seeds {seeds} "
        "(HR@10 / NDCG@10: mean ± sample standard deviation over the seeds).",
        "",
        *markdown_tables(runs),
    ]
    write_text_atomic(args.output.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
