"""A finished sweep's outputs: results table (CSV + Markdown), best config, plots, summary.

Every file is written to a temporary sibling and renamed (an interrupted write never
leaves a half file). Quality is reported in percent (the paper's unit) in the tables and
plots; the Tune results keep fractions.

Files in the sweep's output folder:

- ``results.csv`` / ``results.md``: one row per trial (config values, val/test HR@k and
  NDCG@k in %, pretrain/train/total seconds, trainable/frozen parameter counts, status);
- ``best_config.yaml``: the best trial's full experiment config, runnable with
  ``python -m cadc_ray.run``; ``best.json``: that trial's id, overrides and metrics, and
  for several objectives the Pareto front;
- ``plots/quality_vs_ratio.png`` (HR@10 and NDCG@10 vs filter ratio per method, log-x:
  the paper's Figure 1; GS as a horizontal reference) when the sweep has 2+ ratios, and
  ``plots/quality_vs_time.png`` (test HR@10 vs total seconds);
- ``summary.json``: wall time, trial counts, pretraining runs, peak trial concurrency.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cadc_ray.atomic import write_text_atomic
from cadc_ray.config import ExperimentConfig, to_dict
from cadc_ray.methods import METHODS, resolved_integration
from cadc_ray.sweep.space import TRIAL_KEY, resolve_trial_config
from cadc_ray.sweep.spec import Objective, SweepSpec

if TYPE_CHECKING:
    from cadc_ray.sweep.driver import SweepOutcome

STANDARD_KEYS = (
    "method",
    "model.integration",
    "data.filter_ratio",
    "model.embedding_dim",
    "pretrain.embedding_dim",
    "data.dataset",
    "seed",
)
"""Config keys that always get their own column (other searched keys are appended)."""

COST_COLUMNS = (
    "pretrain_seconds",
    "train_seconds",
    "total_seconds",
    "trainable_parameters",
    "frozen_parameters",
    "best_epoch",
    "epochs_run",
    "early_stopped",
    "train_interactions",
)

METHOD_ORDER = {name: index for index, name in enumerate(METHODS)}


# ---------------------------------------------------------------------------------------
# Records


def collect_records(result_grid: Any, base: ExperimentConfig) -> list[dict[str, Any]]:
    """Tune's ResultGrid -> one plain record per trial.

    A record: ``trial_id``, ``status``, ``overrides`` (the trial's dotted keys),
    ``config`` (its resolved ExperimentConfig), ``metrics`` (the last result) and
    ``error`` (message or None). Status: ``finished`` (final result with test metrics),
    ``stopped`` (ended early by the scheduler: Tune marked its last result done),
    ``error``, or ``incomplete`` (cut off by an interruption: resume the sweep).
    """
    records = []
    for result in result_grid:
        metrics = dict(result.metrics or {})
        overrides = dict((result.config or {}).get(TRIAL_KEY, {}))
        records.append(
            make_record(
                trial_id=str(metrics.get("trial_id") or Path(str(result.path)).name),
                overrides=overrides,
                base=base,
                metrics=metrics,
                error=None
                if result.error is None
                else f"{type(result.error).__name__}: {result.error}",
            )
        )
    return records


def make_record(
    *,
    trial_id: str,
    overrides: Mapping[str, Any],
    base: ExperimentConfig,
    metrics: Mapping[str, Any],
    error: str | None,
) -> dict[str, Any]:
    config = resolve_trial_config(base, overrides)
    finished = _finite(metrics.get(f"test_{config.eval.selection_metric}"))
    if error is not None:
        status = "error"
    elif finished:
        status = "finished"
    else:
        status = "stopped" if metrics.get("done") else "incomplete"
    return {
        "trial_id": trial_id,
        "status": status,
        "overrides": dict(overrides),
        "config": config,
        "metrics": dict(metrics),
        "error": error,
    }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------
# Table


def table_columns(records: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> list[str]:
    searched = sorted(
        {key for record in records for key in record["overrides"]} - set(STANDARD_KEYS)
    )
    quality = [
        f"{split}_{name}@{k}_pct"
        for k in ks
        for split in ("val", "test")
        for name in ("hr", "ndcg")
    ]
    return [
        "trial_id",
        "status",
        "method",
        "method_label",
        "integration",
        "filter_ratio",
        "embedding_dim",
        "pretrain_embedding_dim",
        "dataset",
        "seed",
        *searched,
        *quality,
        *COST_COLUMNS,
        "pretrain_key",
    ]


def table_row(record: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    config: ExperimentConfig = record["config"]
    metrics: Mapping[str, Any] = record["metrics"]
    method = METHODS[config.method]
    row: dict[str, Any] = {
        "trial_id": record["trial_id"],
        "status": record["status"],
        "method": config.method,
        "method_label": method.label,
        "integration": resolved_integration(config.method, config.model.integration),
        "filter_ratio": config.data.filter_ratio,
        "embedding_dim": config.model.embedding_dim,
        "pretrain_embedding_dim": config.pretrain.embedding_dim if method.pretrainer else None,
        "dataset": config.data.dataset,
        "seed": config.seed,
        "pretrain_key": metrics.get("pretrain_key") or None,
    }
    for column in columns:
        if column in row:
            continue
        if column.endswith("_pct"):
            value: Any = metrics.get(column[: -len("_pct")])
            row[column] = round(100.0 * float(value), 4) if _finite(value) else None
        elif column in COST_COLUMNS:
            value = metrics.get(column)
            row[column] = value if _finite(value) or isinstance(value, bool) else None
        else:  # another searched dotted key
            node: Any = config
            for part in column.split("."):
                node = getattr(node, part)
            row[column] = list(node) if isinstance(node, tuple) else node
    return {column: row.get(column) for column in columns}


def sort_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    config: ExperimentConfig = record["config"]
    return (
        METHOD_ORDER[config.method],
        resolved_integration(config.method, config.model.integration),
        config.data.filter_ratio,
        config.model.embedding_dim,
        config.seed,
        record["trial_id"],
    )


def results_table(
    records: Sequence[Mapping[str, Any]], ks: Sequence[int]
) -> tuple[list[str], list[dict[str, Any]]]:
    columns = table_columns(records, ks)
    return columns, [table_row(record, columns) for record in sorted(records, key=sort_key)]


def to_csv(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if column.endswith("_pct"):
            return f"{value:.2f}"
        if column.endswith("seconds"):
            return f"{value:.1f}"
        return f"{value:g}"
    return str(value)


def to_markdown(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], title: str) -> str:
    header = [column.replace("_pct", " (%)") for column in columns]
    lines = [
        f"# Sweep {title}",
        "",
        "Quality in percent (validation at the selected epoch; test at that epoch). "
        "total_seconds = pretrain_seconds + train_seconds; pretraining ran once per distinct "
        "pretraining config and is shared by the trials that use it.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Best config and Pareto front


def _objective_value(record: Mapping[str, Any], objective: Objective) -> float | None:
    value = record["metrics"].get(objective.metric)
    return float(value) if _finite(value) else None


def best_record(
    records: Sequence[Mapping[str, Any]], objective: Objective
) -> Mapping[str, Any] | None:
    """The finished trial with the best value of ``objective`` (ties: first trial id)."""
    candidates = [
        (value, record["trial_id"], record)
        for record in records
        if record["status"] == "finished"
        and (value := _objective_value(record, objective)) is not None
    ]
    if not candidates:
        return None
    sign = -1.0 if objective.mode == "max" else 1.0
    return min(candidates, key=lambda item: (sign * item[0], item[1]))[2]


def pareto_front(
    records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]
) -> list[str]:
    """Trial ids of the finished trials no other finished trial dominates."""
    points = []
    for record in records:
        if record["status"] != "finished":
            continue
        values = [_objective_value(record, objective) for objective in objectives]
        if any(value is None for value in values):
            continue
        # Maximize everything: negate minimized objectives.
        signed = [
            v if o.mode == "max" else -v
            for v, o in zip(values, objectives, strict=True)
            if v is not None
        ]
        points.append((record["trial_id"], signed))

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(
            x > y for x, y in zip(a, b, strict=True)
        )

    return sorted(
        trial
        for trial, values in points
        if not any(dominates(other, values) for _, other in points)
    )


# ---------------------------------------------------------------------------------------
# Plots


def _series_label(config: ExperimentConfig, integrations: Collection[str]) -> str:
    label = METHODS[config.method].label
    integration = resolved_integration(config.method, config.model.integration)
    if METHODS[config.method].pretrainer is not None and len(integrations) > 1:
        label += f" ({integration})"
    return label


def plot_quality_vs_ratio(records: Sequence[Mapping[str, Any]], path: Path, k: int = 10) -> bool:
    """HR@k and NDCG@k (test, %) vs filter ratio, one line per method, log-x.

    Full-data methods (GS) are horizontal reference lines. Returns False (and writes
    nothing) when fewer than two filter ratios were trained on a sample.
    """
    finished = [r for r in records if r["status"] == "finished"]
    sampled = [r for r in finished if not METHODS[r["config"].method].uses_full_data]
    ratios = {r["config"].data.filter_ratio for r in sampled}
    if len(ratios) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    integrations = {
        resolved_integration(r["config"].method, r["config"].model.integration)
        for r in finished
        if METHODS[r["config"].method].pretrainer is not None
    }
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric in zip(axes, ("hr", "ndcg"), strict=True):
        name = f"test_{metric}@{k}"
        series: dict[str, list[tuple[float, float]]] = {}
        references: dict[str, float] = {}
        for record in sorted(finished, key=sort_key):
            value = record["metrics"].get(name)
            if not _finite(value):
                continue
            label = _series_label(record["config"], integrations)
            if METHODS[record["config"].method].uses_full_data:
                references[label] = 100.0 * value
            else:
                series.setdefault(label, []).append(
                    (record["config"].data.filter_ratio, 100.0 * value)
                )
        for label, points in series.items():
            # Repeats (e.g. seeds) at one ratio are averaged.
            by_ratio: dict[float, list[float]] = {}
            for ratio, value in points:
                by_ratio.setdefault(ratio, []).append(value)
            xs = sorted(by_ratio)
            axis.plot(
                xs, [sum(by_ratio[x]) / len(by_ratio[x]) for x in xs], marker="o", label=label
            )
        for label, value in references.items():
            axis.axhline(
                value, linestyle="--", color="black", linewidth=1, label=f"{label} (all data)"
            )
        axis.set_xscale("log")
        axis.set_xticks(sorted(ratios))
        axis.set_xticklabels([f"{r:g}" for r in sorted(ratios)])
        axis.set_xlabel("filter ratio (trained on 1/ratio of the interactions)")
        axis.set_ylabel(f"test {'HR' if metric == 'hr' else 'NDCG'}@{k} (%)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"Quality vs filter ratio (test, @{k})")
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)
    return True


def plot_quality_vs_time(records: Sequence[Mapping[str, Any]], path: Path, k: int = 10) -> bool:
    """Test HR@k (%) against total seconds (pretraining + TTNN), one marker per method."""
    finished = [
        r
        for r in records
        if r["status"] == "finished" and _finite(r["metrics"].get(f"test_hr@{k}"))
    ]
    if not finished:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    by_label: dict[str, list[tuple[float, float]]] = {}
    integrations = {
        resolved_integration(r["config"].method, r["config"].model.integration) for r in finished
    }
    for record in sorted(finished, key=sort_key):
        label = _series_label(record["config"], integrations)
        by_label.setdefault(label, []).append(
            (
                float(record["metrics"].get("total_seconds", math.nan)),
                100.0 * record["metrics"][f"test_hr@{k}"],
            )
        )
    for label, points in by_label.items():
        axis.scatter([p[0] for p in points], [p[1] for p in points], label=label)
    axis.set_xlabel("total seconds (pretraining + TTNN)")
    axis.set_ylabel(f"test HR@{k} (%)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("Quality vs time")
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)
    return True


def _save_figure(figure: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    figure.savefig(temporary, dpi=120)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------
# Writing everything


def peak_concurrency(records: Sequence[Mapping[str, Any]]) -> int:
    """Most trials whose recorded [start, finish] intervals overlap at one instant."""
    events = []
    for record in records:
        start, finish = (
            record["metrics"].get("trial_started_at"),
            record["metrics"].get("trial_finished_at"),
        )
        if _finite(start) and _finite(finish):
            events.extend([(float(start), 1), (float(finish), -1)])
    running = peak = 0
    for _, change in sorted(events, key=lambda event: (event[0], event[1])):
        running += change
        peak = max(peak, running)
    return peak


def _plain_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (str, int, float, bool))
        and not (isinstance(v, float) and not math.isfinite(v))
    }


def write_reports(spec: SweepSpec, outcome: SweepOutcome) -> dict[str, str]:
    """Writes every output file; returns {kind: path}."""
    folder = outcome.output_dir
    records = outcome.records
    ks = spec.base_config.eval.ks
    columns, rows = results_table(records, ks)
    files: dict[str, str] = {}
    write_text_atomic(folder / "results.csv", to_csv(columns, rows))
    write_text_atomic(folder / "results.md", to_markdown(columns, rows, spec.name))
    files["results_csv"] = str(folder / "results.csv")
    files["results_md"] = str(folder / "results.md")

    primary = spec.objectives[0]
    best = best_record(records, primary)
    best_payload: dict[str, Any] = {
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in spec.objectives],
        "selected_by": {"metric": primary.metric, "mode": primary.mode},
        "best": None,
    }
    if len(spec.objectives) > 1:
        best_payload["pareto_front"] = pareto_front(records, spec.objectives)
    if best is not None:
        best_payload["best"] = {
            "trial_id": best["trial_id"],
            "overrides": best["overrides"],
            "metrics": _plain_metrics(best["metrics"]),
        }
        best_config = to_dict(best["config"])
        best_config["name"] = f"{spec.name}-best"
        header = (
            f"# Best trial {best['trial_id']} of sweep {spec.name} by {primary.metric} ({primary.mode}).\n"
            "# Run it alone with: python -m cadc_ray.run best_config.yaml\n"
        )
        write_text_atomic(
            folder / "best_config.yaml", header + yaml.safe_dump(best_config, sort_keys=False)
        )
        files["best_config"] = str(folder / "best_config.yaml")
    write_text_atomic(folder / "best.json", json.dumps(best_payload, indent=2, default=str) + "\n")
    files["best_json"] = str(folder / "best.json")

    k = 10 if 10 in ks else ks[0]
    if plot_quality_vs_ratio(records, folder / "plots" / "quality_vs_ratio.png", k):
        files["plot_ratio"] = str(folder / "plots" / "quality_vs_ratio.png")
    if plot_quality_vs_time(records, folder / "plots" / "quality_vs_time.png", k):
        files["plot_time"] = str(folder / "plots" / "quality_vs_time.png")

    statuses = [record["status"] for record in records]
    summary = {
        "sweep": spec.name,
        "spec": spec.source,
        "trials": len(records),
        "finished": statuses.count("finished"),
        "stopped": statuses.count("stopped"),
        "errors": statuses.count("error"),
        "incomplete": statuses.count("incomplete"),
        "interrupted": outcome.interrupted,
        "wall_seconds": round(outcome.wall_seconds, 2),
        "pretrain_runs": outcome.pretrain_runs,
        "pretrain_loaded": outcome.pretrain_loaded,
        "pretrained_ref_ids": outcome.pretrained_ref_ids,
        "peak_concurrent_trials": peak_concurrency(records),
        "files": files,
    }
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    files["summary"] = str(folder / "summary.json")
    return files
