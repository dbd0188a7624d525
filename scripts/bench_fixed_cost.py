"""Where a stage's time outside its training loop goes (issue #10, item 5).

    CADC_DATA_DIR=../shared/data python scripts/bench_fixed_cost.py --workers 0 1 \
        --output benchmarks/results/fixed_cost_ml-100k.json

Runs `configs/ml-100k.yaml` (MF pretraining, then the TTNN) once per worker count on a local
Ray this script starts, and splits each stage's wall time into: the driver's work before
the TorchTrainer, the start of the worker group up to the loop function (0 workers: Train's
local mode, in this process), the loop function's time outside the training epochs
(reports, checkpoints, reading the rows; for the TTNN also full-ranking evaluation, given
separately), and the end of the run. Writes the JSON atomically with the load average
before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def stamped(loop: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    """The Train loop function, with wall-clock stamps of its entry and exit in rank 0's output."""

    def stamped_loop(loop_config: dict[str, Any]) -> Any:
        entered = time.time()
        output = loop(loop_config)
        if output is not None:
            output["t_enter"], output["t_exit"] = entered, time.time()
        return output

    return stamped_loop


def measure(workers: int, data_path: str, root: Path) -> dict[str, Any]:
    import ray

    import cadc_ray.runtime.pretrain as pretrain_module
    import cadc_ray.runtime.trainer as trainer_module
    import cadc_ray.runtime.ttnn as ttnn_module
    from cadc_ray import pipeline
    from cadc_ray.config import load_config
    from cadc_ray.runtime.session import init_ray

    config = load_config(
        REPO_ROOT / "configs" / "ml-100k.yaml",
        [
            f"data.path={data_path}",
            f"output_root={root}",
            f"resources.num_workers={workers}",
        ],
    )
    init_ray(resources=config.resources, include_dashboard=False)
    # A fresh Train storage folder: a run name found there would be resumed, not measured.
    storage = root / f"train-{workers}-workers"
    shutil.rmtree(storage, ignore_errors=True)
    try:
        dataset = pipeline.prepare_inputs([config])[pipeline.data_key(config)]
        pretrain_module._mf_worker = stamped(pretrain_module._mf_worker)  # type: ignore[assignment]
        ttnn_module._ttnn_worker = stamped(ttnn_module._ttnn_worker)  # type: ignore[assignment]
        run_trainer = trainer_module.run_torch_trainer
        calls: dict[str, Any] = {}

        def run_and_stamp(*args: Any, **kwargs: Any) -> Any:
            calls["t_call"] = time.time()
            result = run_trainer(*args, **kwargs)
            calls["t_return"], calls["output"] = time.time(), result.return_value
            return result

        trainer_module.run_torch_trainer = run_and_stamp
        stages: dict[str, Any] = {}
        started = time.time()
        teacher = pretrain_module.fit_pretrain(
            config,
            dataset.split,
            num_users=dataset.num_users,
            num_items=dataset.num_items,
            run_name="fixed-cost-pretrain",
            storage_path=str(storage),
        )
        stages["pretrain"] = breakdown(started, calls, teacher.seconds, teacher.loop_seconds, 0.0)
        stages["pretrain"]["epochs"] = teacher.epochs
        inputs = pipeline.ttnn_inputs(config, dataset, pipeline.put_tables(teacher.tables))
        started = time.time()
        ttnn = ttnn_module.fit_ttnn(
            config, inputs, run_name="fixed-cost-ttnn", storage_path=str(storage)
        )
        stages["ttnn"] = breakdown(
            started, calls, ttnn.seconds, ttnn.loop_seconds, ttnn.eval_seconds
        )
        stages["ttnn"]["epochs"] = ttnn.epochs_run
        stages["ttnn"]["test_hr@10"] = ttnn.test_metrics["hr@10"]
        trainer_module.run_torch_trainer = run_trainer
        return stages
    finally:
        ray.shutdown()


def breakdown(
    started: float, calls: dict[str, Any], seconds: float, loop_seconds: float, eval_seconds: float
) -> dict[str, Any]:
    output = calls["output"]
    in_loop_function = output["t_exit"] - output["t_enter"]
    return {
        "seconds": seconds,
        "loop_seconds": loop_seconds,
        "eval_seconds": eval_seconds,
        "fixed_seconds": seconds - loop_seconds - eval_seconds,
        "driver_before_trainer": calls["t_call"] - started,
        "trainer_to_loop_function": output["t_enter"] - calls["t_call"],
        "loop_function_outside_epochs_and_eval": in_loop_function - loop_seconds - eval_seconds,
        "loop_function_to_trainer_return": calls["t_return"] - output["t_exit"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--data", default=None, help="ML-100K folder (default $CADC_DATA_DIR/ml-100k)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/fixed_cost_ml-100k.json")
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-fixed-cost"))
    args = parser.parse_args(argv)
    data = args.data or os.path.join(os.environ.get("CADC_DATA_DIR", ""), "ml-100k")
    if not Path(data, "u.data").is_file():
        parser.error(f"--data: {data} has no u.data (MovieLens-100K); set CADC_DATA_DIR or --data")
    if any(workers < 0 for workers in args.workers):
        parser.error(f"--workers: counts must be >= 0, got {args.workers}")
    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_data import write_result

    record: dict[str, Any] = {
        "command": " ".join(["python", "scripts/bench_fixed_cost.py", *(argv or sys.argv[1:])]),
        "cpu_count": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "runs": {},
    }
    for workers in args.workers:
        record["runs"][str(workers)] = measure(
            workers, str(Path(data).resolve()), args.work_dir.resolve()
        )
        print(workers, json.dumps(record["runs"][str(workers)], indent=1))
    record["loadavg_after"] = os.getloadavg()
    write_result(args.output, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
