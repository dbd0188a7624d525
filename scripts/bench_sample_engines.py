"""The 1-in-10 sample of D_full through Ray Data against the same sample in this process.

    python scripts/bench_sample_engines.py --rows 1e5 1e6 --repeats 3 \
        --output benchmarks/results/bench_sample_engines.json

For each size N: a synthetic dataset of N interactions is prepared and split (in-process,
as every dataset up to ``LOCAL_SPLIT_MAX_ROWS`` is), then ``materialize_sample`` writes the
1-in-10 sample with ``engine="ray"`` and with ``engine="local"``, alternating, ``--repeats``
times each. Every measurement starts a new local Ray (``ray.init(num_cpus=--num-cpus)``) and
times the sample alone, as the first Ray Data job of a command that splits in-process meets
it: the Ray engine pays Ray Data's start there. Both engines run with Ray up. The JSON
(written atomically) has every measurement, the fastest and the median per engine, the
commit and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The sibling benchmarks are plain scripts, not a package: their helpers are imported by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import (
    git_commit,
    machine_info,
    synthetic_catalogue,
    synthetic_data_config,
    write_result,
)

from cadc_ray.data.sampling import SampleEngine
from cadc_ray.data.split import SplitPaths

ENGINES: tuple[SampleEngine, ...] = ("ray", "local")
FILTER_RATIO = 10.0
SAMPLE_SEED = 0


def summarize(measurements: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per size: each engine's fastest and median seconds, and ray / local of each."""
    by_size: dict[int, dict[str, list[float]]] = {}
    for record in measurements:
        engines = by_size.setdefault(int(record["rows"]), {})
        engines.setdefault(str(record["engine"]), []).append(float(record["seconds"]))
    summary: dict[str, Any] = {}
    for rows, engines in sorted(by_size.items()):
        figures: dict[str, Any] = {
            engine: {"fastest": min(seconds), "median": statistics.median(seconds)}
            for engine, seconds in engines.items()
        }
        if "ray" in figures and "local" in figures:
            for statistic in ("fastest", "median"):
                local = figures["local"][statistic]
                figures[f"ray_over_local_{statistic}"] = (
                    figures["ray"][statistic] / local if local > 0 else None
                )
        summary[str(rows)] = figures
    return summary


def measure(split: SplitPaths, engine: SampleEngine, num_cpus: int) -> float:
    """Seconds of one ``materialize_sample`` on a new local Ray; the sample is removed after."""
    import ray

    from cadc_ray.data import materialize_sample

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        started = time.perf_counter()
        path = materialize_sample(split, FILTER_RATIO, SAMPLE_SEED, engine=engine)
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    shutil.rmtree(path)
    return seconds


def parse_rows(text: str) -> int:
    rows = int(float(text))
    if rows < 1_000:
        raise argparse.ArgumentTypeError(f"--rows: at least 1000, got {text!r}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", type=parse_rows, default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: at least 1, got {args.repeats}")

    from cadc_ray.data import materialize_split, prepare_dataset
    from cadc_ray.data.layout import parquet_rows

    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "benchmark": "bench_sample_engines",
        "command": " ".join(["python", *sys.argv]),
        "commit": git_commit(),
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "load_average_before": [round(x, 2) for x in load_before],
        "machine": machine_info(args.num_cpus),
        "filter_ratio": FILTER_RATIO,
        "measurements": [],
    }
    with tempfile.TemporaryDirectory(prefix="cadc-bench-sample-") as folder:
        work = Path(folder)
        for rows in args.rows:
            users, items = synthetic_catalogue(rows)
            prepared = prepare_dataset(synthetic_data_config(rows, users, items, work), work)
            split = materialize_split(prepared, engine="local")
            train_rows = parquet_rows(split.train_dir)
            for repeat in range(args.repeats):
                for engine in ENGINES:
                    seconds = measure(split, engine, args.num_cpus)
                    print(f"rows {rows}: {engine} {seconds:.2f} s", flush=True)
                    results["measurements"].append(
                        {
                            "rows": rows,
                            "train_rows": train_rows,
                            "engine": engine,
                            "repeat": repeat,
                            "seconds": round(seconds, 3),
                        }
                    )
    results["summary"] = summarize(results["measurements"])
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.output, results, results["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
