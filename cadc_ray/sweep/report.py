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
  the paper's Figure 1; GS and each teacher alone as horizontal references) when the
  sweep has 2+ ratios, and
  ``plots/quality_vs_time.png`` (test HR@10 vs total seconds);
- with several objectives: ``pareto.md`` (the Pareto set: searched values, objectives)
  and ``plots/pareto_front.png`` (first objective vs second, the front highlighted);
- ``summary.json``: wall time, trial counts, pretraining runs, peak trial concurrency.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cadc_ray.atomic import write_atomic, write_text_atomic
from cadc_ray.config import ExperimentConfig, to_dict
from cadc_ray.methods import METHODS, resolved_integration
from cadc_ray.sweep.outcome import SweepOutcome
from cadc_ray.sweep.space import TRIAL_KEY, resolve_trial_config
from cadc_ray.sweep.spec import Objective, SweepSpec
from cadc_ray.sweep.summary import COST_COLUMNS, TEACHER_TEST_PREFIX

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
    # The teacher alone on the same test users (pretraining methods; empty elsewhere).
    teacher = [f"{TEACHER_TEST_PREFIX}{name}@{k}_pct" for k in ks for name in ("hr", "ndcg")]
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
        *teacher,
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


PRETRAINER_LABELS = {"mf": "MF", "mf_mlp": "MF-MLP", "als": "ALS"}


@dataclass(frozen=True)
class RatioPlotData:
    """What Figure 1 draws for one metric (test, %).

    ``series``: label -> ``[(filter_ratio, mean over repeats)]`` sorted by ratio, one line per
    sampled method (and integration). ``references``: label -> value, horizontal lines for
    the full-data methods (``GS (all data)``) and each teacher alone (``MF teacher alone``,
    the mean of the trials' ``teacher_test_*``, which no filter ratio changes).
    """

    metric: str  # "hr" | "ndcg"
    series: dict[str, list[tuple[float, float]]]
    references: dict[str, float]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def ratio_plot_data(records: Sequence[Mapping[str, Any]], k: int = 10) -> list[RatioPlotData]:
    """Figure 1's data (HR@k, then NDCG@k); [] when fewer than two sampled filter ratios."""
    finished = [r for r in records if r["status"] == "finished"]
    sampled = [r for r in finished if not METHODS[r["config"].method].uses_full_data]
    if len({r["config"].data.filter_ratio for r in sampled}) < 2:
        return []
    integrations = {
        resolved_integration(r["config"].method, r["config"].model.integration)
        for r in finished
        if METHODS[r["config"].method].pretrainer is not None
    }
    panels = []
    for metric in ("hr", "ndcg"):
        name = f"{metric}@{k}"
        points: dict[str, dict[float, list[float]]] = {}
        references: dict[str, list[float]] = {}
        for record in sorted(finished, key=sort_key):
            config, metrics = record["config"], record["metrics"]
            spec = METHODS[config.method]
            teacher = metrics.get(TEACHER_TEST_PREFIX + name)
            if spec.pretrainer is not None and _finite(teacher):
                label = f"{PRETRAINER_LABELS[spec.pretrainer]} teacher alone"
                references.setdefault(label, []).append(100.0 * teacher)
            value = metrics.get(f"test_{name}")
            if not _finite(value):
                continue
            label = _series_label(config, integrations)
            if spec.uses_full_data:
                references.setdefault(f"{label} (all data)", []).append(100.0 * value)
            else:
                by_ratio = points.setdefault(label, {})
                by_ratio.setdefault(config.data.filter_ratio, []).append(100.0 * value)
        panels.append(
            RatioPlotData(
                metric=metric,
                # Repeats (e.g. seeds) at one ratio are averaged.
                series={
                    label: [(ratio, _mean(by_ratio[ratio])) for ratio in sorted(by_ratio)]
                    for label, by_ratio in points.items()
                },
                references={label: _mean(values) for label, values in references.items()},
            )
        )
    return panels


def plot_quality_vs_ratio(records: Sequence[Mapping[str, Any]], path: Path, k: int = 10) -> bool:
    """HR@k and NDCG@k (test, %) vs filter ratio, one line per method, log-x (Figure 1).

    Full-data methods (GS) and each teacher alone are horizontal reference lines
    (:func:`ratio_plot_data`). Returns False (and writes nothing) when fewer than two
    filter ratios were trained on a sample.
    """
    panels = ratio_plot_data(records, k)
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted(
        {ratio for panel in panels for line in panel.series.values() for ratio, _ in line}
    )
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, panel in zip(axes, panels, strict=True):
        for label, line in panel.series.items():
            axis.plot([x for x, _ in line], [y for _, y in line], marker="o", label=label)
        for index, (label, value) in enumerate(panel.references.items()):
            # GS black dashed; the teachers dotted, in greys, so they never read as methods.
            full_data = label.endswith("(all data)")
            axis.axhline(
                value,
                linestyle="--" if full_data else ":",
                color="black" if full_data else str(0.25 + 0.2 * (index % 3)),
                linewidth=1.2,
                label=label,
            )
        axis.set_xscale("log")
        axis.set_xticks(ratios)
        axis.set_xticklabels([f"{r:g}" for r in ratios])
        axis.set_xlabel("filter ratio (trained on 1/ratio of the interactions)")
        axis.set_ylabel(f"test {'HR' if panel.metric == 'hr' else 'NDCG'}@{k} (%)")
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


def quality_size_front(records: Sequence[Mapping[str, Any]], k: int = 10) -> list[str]:
    """Trial ids on the Pareto front of (max validation HR@k, min ``model_bytes``).

    Validation, as every choice a sweep makes: the front is what a user picks a size from."""
    objectives = [Objective(f"val_hr@{k}", "max"), Objective("model_bytes", "min")]
    return pareto_front(records, objectives)


def plot_quality_vs_model_bytes(
    records: Sequence[Mapping[str, Any]], path: Path, k: int = 10
) -> bool:
    """Validation HR@k (%) of the selected epoch against ``model_bytes`` (log scale), one
    series per id-table kind, the Pareto front of (max quality, min bytes) drawn as a step
    line (METHOD 2). Test metrics stay in results.md."""
    finished = [
        r
        for r in records
        if r["status"] == "finished"
        and _finite(r["metrics"].get(f"val_hr@{k}"))
        and _finite(r["metrics"].get("model_bytes"))
        and r["metrics"]["model_bytes"] > 0
    ]
    if not finished:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def kinds(config: ExperimentConfig) -> str:
        user = config.model.id_table.for_entity("user").kind
        item = config.model.id_table.for_entity("item").kind
        return user if user == item else f"{user}/{item}"

    front_ids = set(quality_size_front(finished, k))
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    by_kind: dict[str, list[tuple[float, float]]] = {}
    front: list[tuple[float, float]] = []
    for record in finished:
        point = (
            float(record["metrics"]["model_bytes"]),
            100.0 * float(record["metrics"][f"val_hr@{k}"]),
        )
        by_kind.setdefault(kinds(record["config"]), []).append(point)
        if record["trial_id"] in front_ids:
            front.append(point)
    for label, points in sorted(by_kind.items()):
        axis.scatter([p[0] for p in points], [p[1] for p in points], label=label)
    front.sort()
    axis.step(
        [p[0] for p in front],
        [p[1] for p in front],
        where="post",
        color="black",
        linewidth=1,
        label="Pareto front",
    )
    axis.scatter(
        [p[0] for p in front], [p[1] for p in front], facecolors="none", edgecolors="black", s=90
    )
    axis.set_xscale("log")
    axis.set_xlabel("model bytes (trainable + frozen + lookup)")
    axis.set_ylabel(f"validation HR@{k} (%)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("Quality vs model size")
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)
    return True


def _objective_label(objective: Objective) -> str:
    percent = objective.metric.startswith(("val_", "test_"))
    return f"{objective.metric}{' (%)' if percent else ''} ({objective.mode})"


def _objective_scale(objective: Objective) -> float:
    """Quality objectives are plotted and tabulated in percent, the others as they are."""
    return 100.0 if objective.metric.startswith(("val_", "test_")) else 1.0


def pareto_markdown(
    records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective], front: Sequence[str]
) -> str:
    """The Pareto set as a Markdown table: trial, its searched values, every objective."""
    by_id = {record["trial_id"]: record for record in records}
    keys = sorted({key for trial in front for key in by_id[trial]["overrides"]})
    header = ["trial_id", *keys, *(_objective_label(o) for o in objectives)]
    lines = [
        "# Pareto set",
        "",
        f"Finished trials no other finished trial beats on every objective ({len(front)} of "
        f"{sum(r['status'] == 'finished' for r in records)} finished). Objectives are "
        "validation or cost metrics; test metrics are in results.md.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    ordered = sorted(front, key=lambda t: _objective_value(by_id[t], objectives[0]) or 0.0)
    for trial in ordered:
        record = by_id[trial]
        cells = [trial, *(str(record["overrides"].get(key, "–")) for key in keys)]
        for objective in objectives:
            value = _objective_value(record, objective)
            cells.append("–" if value is None else f"{_objective_scale(objective) * value:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_pareto_front(
    records: Sequence[Mapping[str, Any]],
    objectives: Sequence[Objective],
    front: Sequence[str],
    path: Path,
) -> bool:
    """Every finished trial on the first two objectives, the Pareto front as a step line.

    Returns False (nothing written) with fewer than two objectives or no finished trial.
    """
    if len(objectives) < 2:
        return False
    x_objective, y_objective = objectives[1], objectives[0]  # cost on x, quality on y

    def point(record: Mapping[str, Any]) -> tuple[float, float] | None:
        x, y = _objective_value(record, x_objective), _objective_value(record, y_objective)
        if x is None or y is None:
            return None
        return _objective_scale(x_objective) * x, _objective_scale(y_objective) * y

    points = {
        record["trial_id"]: xy
        for record in records
        if record["status"] == "finished" and (xy := point(record)) is not None
    }
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    others = [xy for trial, xy in points.items() if trial not in front]
    on_front = sorted(xy for trial, xy in points.items() if trial in front)
    if others:
        axis.scatter(*zip(*others, strict=True), color="grey", alpha=0.6, label="other trials")
    if on_front:
        axis.step(*zip(*on_front, strict=True), where="post", color="tab:red", alpha=0.5)
        axis.scatter(*zip(*on_front, strict=True), color="tab:red", label="Pareto front")
    axis.set_xlabel(_objective_label(x_objective))
    axis.set_ylabel(_objective_label(y_objective))
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(f"Pareto front ({len(on_front)} of {len(points)} finished trials)")
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)
    return True


def _save_figure(figure: Any, path: Path) -> None:
    # keep_suffix: savefig picks the image format from the file's suffix
    write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=120), keep_suffix=True)


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
    front: list[str] = []
    if len(spec.objectives) > 1:
        front = pareto_front(records, spec.objectives)
        best_payload["pareto_front"] = front
        write_text_atomic(folder / "pareto.md", pareto_markdown(records, spec.objectives, front))
        files["pareto_md"] = str(folder / "pareto.md")
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
    if plot_quality_vs_model_bytes(records, folder / "plots" / "quality_vs_model_bytes.png", k):
        files["plot_model_bytes"] = str(folder / "plots" / "quality_vs_model_bytes.png")
    if plot_pareto_front(records, spec.objectives, front, folder / "plots" / "pareto_front.png"):
        files["plot_pareto"] = str(folder / "plots" / "pareto_front.png")

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
        "search_ended": outcome.search_ended,
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
