"""One experiment end to end: ``python -m cadc_ray.run CONFIG.yaml [--set key=value ...]``.

prepare (if needed) -> split (materialized once, reused) -> sample -> pretrain (if the
method pretrains) -> TTNN training with per-epoch validation and early stopping ->
test metrics at the best epoch -> ``<run dir>/results.json`` (written atomically).

The config is loaded and validated before anything starts: a ``ConfigError`` prints
its message and exits with status 2 without touching Ray or the data.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cadc_ray.atomic import write_text_atomic
from cadc_ray.config import (
    ConfigError,
    ExperimentConfig,
    absolute_paths,
    load_config,
    local_path,
    to_dict,
)
from cadc_ray.console import setup_console
from cadc_ray.methods import METHODS, resolved_integration
from cadc_ray.pipeline import (
    InMemoryTeachers,
    Teacher,
    call_stage,
    prepare_data,
    pretrain,
    put_tables,
    split_dataset,
    teacher_metrics,
    ttnn_inputs,
)
from cadc_ray.pretrain_key import pretrain_key

if TYPE_CHECKING:
    from cadc_ray.runtime.pretrain import PretrainResult

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
TRAIN_STORAGE_DIR = "ray_train"
"""Per-run scratch folder for Ray Train's checkpoints; cleared when a run starts."""

EXIT_CONFIG_ERROR = 2


def default_run_dir(config: ExperimentConfig) -> Path:
    """``<output_root>/<name>``: one folder per experiment name (a rerun replaces it)."""
    return Path(config.output_root) / config.name


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Writes ``payload`` to ``path`` through a temporary sibling + rename."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _percent(metrics: dict[str, float]) -> dict[str, float]:
    return {name: round(100.0 * value, 4) for name, value in metrics.items()}


def run_experiment(
    config: ExperimentConfig,
    *,
    run_dir: Path | None = None,
    address: str | None = None,
    pretrain_cache: MutableMapping[str, PretrainResult] | None = None,
) -> dict[str, Any]:
    """Runs one experiment and returns the dict written to ``<run_dir>/results.json``.

    Starts (or connects to) Ray when it is not initialized and shuts down what it
    started. Metrics in ``test`` / ``val`` are fractions in [0, 1]; ``test_percent`` /
    ``val_percent`` repeat them as percentages (the paper's unit).

    ``pretrain_cache`` (optional, owned by the caller) maps ``pretrain_key.pretrain_key``
    to a finished stage 1: runs with the same dataset, pretrainer, ``pretrain.*`` and
    seed then share one teacher, as the sweep does (e.g. the five Table 2 techniques).
    A reused teacher's ``pretrain_seconds`` is the time it took when it was trained, and
    ``pretrain_reused`` says so.
    """
    from cadc_ray.data import read_held_out
    from cadc_ray.runtime.checkpoint import software_versions
    from cadc_ray.runtime.session import (
        StagePlacement,
        init_ray,
        plan_stage,
        ray_target,
        resolve_use_gpu,
        share_worker_group,
    )
    from cadc_ray.runtime.ttnn import TTNNResult, fit_ttnn

    # Callers that built the config without load_config may hold relative paths: Train
    # workers do not run in this working directory.
    config = absolute_paths(config)
    spec = METHODS[config.method]
    started = time.perf_counter()
    # Plain files, no Ray: bad input fails here, before any cluster resource is taken.
    prepared, manifest = prepare_data(config)
    prepare_seconds = time.perf_counter() - started

    folder = Path(local_path(str(run_dir))) if run_dir is not None else default_run_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    storage = (folder / TRAIN_STORAGE_DIR).resolve()
    # A run folder holds one run: stale Train checkpoints would otherwise be resumed.
    shutil.rmtree(storage, ignore_errors=True)

    started_ray = init_ray(address, resources=config.resources)
    import ray

    try:
        use_gpu = resolve_use_gpu(config.resources)
        own_local_ray = started_ray and ray_target(address) is None
        placements: dict[str, StagePlacement] = {}

        split_started = time.perf_counter()
        dataset = split_dataset(prepared, manifest)
        split_seconds = time.perf_counter() - split_started
        # The TTNN's training data first: it does not depend on the teacher, and where the
        # TTNN trains decides whether the teacher trains in the same worker group.
        sample_started = time.perf_counter()
        inputs = ttnn_inputs(config, dataset, None)
        sample_seconds = time.perf_counter() - sample_started
        ttnn_config, placements["ttnn"] = plan_stage(
            config, inputs.train_path, use_gpu=use_gpu, own_local_ray=own_local_ray
        )
        teacher: Teacher | None = None
        ttnn: TTNNResult | None = None
        one_group = False
        if spec.pretrainer is not None:
            # Each stage's config runs with its own resources; results.json keeps the
            # config as asked for.
            pretrain_config, placements["pretrain"] = plan_stage(
                config, dataset.split.train_dir, use_gpu=use_gpu, own_local_ray=own_local_ray
            )
            teachers = InMemoryTeachers(pretrain_cache) if pretrain_cache is not None else None
            key = pretrain_key(config) or ""
            one_group = (teachers is None or teachers.load(key) is None) and share_worker_group(
                config, (pretrain_config, placements["pretrain"]), (ttnn_config, placements["ttnn"])
            )
            if one_group:
                from cadc_ray.runtime.joint import fit_stages_in_one_group

                logger.info("pretraining and TTNN: one worker group for both stages")
                pretrained, ttnn = fit_stages_in_one_group(
                    ttnn_config, dataset.split, inputs, use_gpu=use_gpu, storage_path=str(storage)
                )
                if teachers is not None:
                    teachers.save(key, pretrained)
                teacher = Teacher(key, pretrained.tables, pretrained.seconds, False, pretrained)
            else:
                teacher = pretrain(
                    pretrain_config,
                    dataset,
                    teachers=teachers,
                    use_gpu=use_gpu,
                    run_name="pretrain",
                    storage_path=str(storage),
                    placement=placements["pretrain"],
                )
                if teacher.reused:  # trained by an earlier run: nothing ran here
                    del placements["pretrain"]
                inputs = replace(inputs, pretrained=put_tables(teacher.tables))
        if ttnn is None:
            ttnn = call_stage(
                fit_ttnn,
                (ttnn_config, inputs),
                {"use_gpu": use_gpu, "run_name": "ttnn", "storage_path": str(storage)},
                config=ttnn_config,
                stage="ttnn",
                run_name="ttnn",
                use_gpu=use_gpu,
                placement=placements["ttnn"],
            )
        teacher_quality: dict[str, dict[str, float]] | None = None
        if teacher is not None:
            teacher_quality = teacher_metrics(
                teacher.tables,
                read_held_out(
                    dataset.split,
                    manifest.num_users,
                    manifest.num_items,
                    config.eval.validation_users,
                    config.eval.validation_seed,
                ),
                config.eval,
            )
    finally:
        if started_ray:
            ray.shutdown()

    # The Train run's record of stage 1 (a reused teacher's is the run that trained it).
    pretrain_result = teacher.result if teacher is not None else None
    results: dict[str, Any] = {
        "method": config.method,
        "method_label": spec.label,
        "dataset": config.data.dataset,
        "filter_ratio": config.data.filter_ratio,
        "integration": resolved_integration(config.method, config.model.integration),
        "embedding_dim": config.model.embedding_dim,
        "pretrain_embedding_dim": config.pretrain.embedding_dim if spec.pretrainer else None,
        "pretrainer": spec.pretrainer,
        "seed": config.seed,
        "test": ttnn.test_metrics,
        "val": ttnn.best_val_metrics,
        "test_percent": _percent(ttnn.test_metrics),
        "val_percent": _percent(ttnn.best_val_metrics),
        "metrics_unit": "fraction in [0, 1] (test/val); percent (test_percent/val_percent)",
        "selection_metric": config.eval.selection_metric,
        "best_epoch": ttnn.best_epoch,
        "epochs_run": ttnn.epochs_run,
        "early_stopped": ttnn.early_stopped,
        "pretrain_seconds": teacher.seconds if teacher else 0.0,
        "pretrain_loop_seconds": pretrain_result.loop_seconds if pretrain_result else 0.0,
        "pretrain_epochs": pretrain_result.epochs if pretrain_result else 0,
        # pretrain.eval_every > 0: the teacher's epoch, chosen on validation (0: unvalidated,
        # the last epoch's tables), whether patience ended it, and validation's seconds.
        "pretrain_best_epoch": pretrain_result.best_epoch if pretrain_result else 0,
        "pretrain_early_stopped": pretrain_result.early_stopped if pretrain_result else False,
        "pretrain_eval_seconds": pretrain_result.eval_seconds if pretrain_result else 0.0,
        "pretrain_reused": teacher.reused if teacher else False,
        # The teacher's own HR/NDCG (None: no teacher, or CADC-MLP's unexported MLP).
        "teacher_test_percent": _percent(teacher_quality["test"]) if teacher_quality else None,
        "teacher_val_percent": _percent(teacher_quality["val"]) if teacher_quality else None,
        "train_seconds": ttnn.seconds,
        "train_loop_seconds": ttnn.loop_seconds,
        "train_eval_seconds": ttnn.eval_seconds,  # full-ranking evaluation in the stage
        "prepare_seconds": round(prepare_seconds, 3),  # 0-ish when the prepared dir is reused
        "split_seconds": round(split_seconds, 3),  # 0-ish when the split is reused
        "sample_seconds": round(sample_seconds, 3),  # 0-ish when the sample is reused
        "total_seconds": round(time.perf_counter() - started, 3),
        "train_interactions": ttnn.train_interactions,
        "trainable_parameters": ttnn.trainable_parameters,
        "frozen_parameters": ttnn.frozen_parameters,
        "model_bytes": ttnn.model_bytes,  # trainable + frozen + lookup tables, and total
        "id_table_compression": ttnn.id_table_compression,
        "sparse_id_tables": ttnn.sparse_id_tables,  # updated row-sparsely (SparseAdam)
        "num_users": manifest.num_users,
        "num_items": manifest.num_items,
        "num_workers": config.resources.num_workers,
        # Where each stage ran (resources.in_process, runtime.session.stage_placement): a
        # Train worker group, or Train's local mode in this process or in a Ray task.
        "stage_placement": placements,
        # Both stages in one Train worker group (resources.share_worker_group, runtime.joint).
        "one_worker_group": one_group,
        "in_process": all(where == "this_process" for where in placements.values()),
        "use_gpu": use_gpu,
        "history": ttnn.history,
        "pretrain_history": pretrain_result.history if pretrain_result else [],
        "prepared_dir": str(prepared),
        "train_data": str(inputs.train_path),
        "checkpoint_path": ttnn.checkpoint_path,
        "config": to_dict(config),
        "versions": software_versions(),
    }
    if not manifest.has_timestamp:
        results["time_order"] = manifest.time_order  # how "last" was decided for the split
    write_json_atomic(folder / RESULTS_FILE, results)
    return results


def summary(results: dict[str, Any]) -> str:
    """A few human-readable lines about a finished run."""
    test = ", ".join(f"{k} {v:.2f}%" for k, v in sorted(results["test_percent"].items()))
    val = ", ".join(f"{k} {v:.2f}%" for k, v in sorted(results["val_percent"].items()))
    stopped = " (early stopped)" if results["early_stopped"] else ""
    lines = [
        f"{results['method_label']} on {results['dataset']} "
        f"(filter ratio {results['filter_ratio']:g}, integration {results['integration']}, "
        f"seed {results['seed']})",
        f"  test: {test}   val: {val}",
        f"  best epoch {results['best_epoch']} of {results['epochs_run']}{stopped}; "
        f"{results['train_interactions']} training interactions; "
        f"{results['trainable_parameters']} trainable / {results['frozen_parameters']} frozen parameters",
        f"  time: pretrain {results['pretrain_seconds']:.1f}s + TTNN {results['train_seconds']:.1f}s "
        f"(total {results['total_seconds']:.1f}s)",
    ]
    if results.get("teacher_test_percent"):
        teacher = ", ".join(
            f"{k} {v:.2f}%" for k, v in sorted(results["teacher_test_percent"].items())
        )
        lines.append(f"  teacher ({results['pretrainer']}) on its own, test: {teacher}")
    if "time_order" in results:
        lines.append(f"  note: {results['time_order']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cadc_ray.run",
        description="Run one CADC / baseline experiment and write results.json.",
    )
    parser.add_argument("config", help="experiment YAML (e.g. configs/synthetic.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=5 (repeatable)",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="run folder (default: <output_root>/<name>)"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to use ('auto' = the one `ray start` launched here; default: "
        "$RAY_ADDRESS, else a new local Ray)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray's own progress (Ray Data operators, Train reports) on the console",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit status (2 on a config/data error)."""
    args = build_parser().parse_args(argv)
    setup_console(verbose=args.verbose)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from cadc_ray.data.errors import DataError

    try:
        results = run_experiment(config, run_dir=args.output, address=args.address)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(summary(results))
    run_dir = args.output if args.output is not None else default_run_dir(config)
    print(f"  results: {run_dir / RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
