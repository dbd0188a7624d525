"""The trial summary, defined once: the scalar metrics a finished trial reports to Tune.

:data:`SUMMARY_TABLE` names each metric, its type and where it comes from. Everything
else derives from it: :func:`trial_summary` (the driver's final report of a trial),
:data:`SUMMARY_METRICS` (what an objective or a scheduler may name, ``sweep.spec``) and
:data:`COST_COLUMNS` (the results table's cost columns, ``sweep.report``).

Quality comes beside the table: ``val_<m>@k`` / ``test_<m>@k`` for every metric of the
TTNN's evaluation, and ``teacher_test_<m>@k`` for the pretrained teacher alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

VAL_PREFIX = "val_"
TEST_PREFIX = "test_"
TEACHER_TEST_PREFIX = "teacher_test_"
"""Prefix of the teacher-alone test metrics a pretraining trial reports (``teacher_test_hr@10``;
absent for ``mf_mlp``, whose tables cannot score); Figure 1 draws them as reference lines."""


@dataclass(frozen=True)
class SummaryMetric:
    """One scalar of the trial summary."""

    name: str
    kind: type  # float, int or bool: the value is converted to it
    # (TTNNResult, pretrain_seconds) -> the raw value
    read: Callable[[Any, float], Any]
    description: str
    # Whether an objective or ASHA may name it (a quantity worth optimizing); the others
    # are bookkeeping, in the results table only.
    objective: bool = True


SUMMARY_TABLE: tuple[SummaryMetric, ...] = (
    SummaryMetric(
        "pretrain_seconds",
        float,
        lambda result, pretrain_seconds: pretrain_seconds,
        "wall time of the trial's pretraining run (shared by every trial with its key; 0: none)",
    ),
    SummaryMetric(
        "train_seconds",
        float,
        lambda result, _: result.seconds,
        "wall time of the TTNN fit, worker start-up included",
    ),
    SummaryMetric(
        "total_seconds",
        float,
        lambda result, pretrain_seconds: float(pretrain_seconds) + float(result.seconds),
        "pretrain_seconds + train_seconds",
    ),
    SummaryMetric(
        "trainable_parameters",
        int,
        lambda result, _: result.trainable_parameters,
        "parameters the TTNN trains",
    ),
    SummaryMetric(
        "frozen_parameters",
        int,
        lambda result, _: result.frozen_parameters,
        "parameters held frozen",
    ),
    SummaryMetric(
        "best_epoch",
        int,
        lambda result, _: result.best_epoch,
        "the epoch selected on validation (1-based)",
    ),
    SummaryMetric("epochs_run", int, lambda result, _: result.epochs_run, "epochs trained"),
    SummaryMetric(
        "early_stopped",
        bool,
        lambda result, _: result.early_stopped,
        "whether train.early_stopping_patience ended the fit",
        objective=False,
    ),
    SummaryMetric(
        "train_interactions",
        int,
        lambda result, _: result.train_interactions,
        "training interactions after rebalancing",
        objective=False,
    ),
    SummaryMetric(
        "model_bytes",
        int,
        lambda result, _: getattr(result, "model_bytes", {}).get("total", 0),
        "the model's size: all bytes (METHOD 2)",
    ),
    SummaryMetric(
        "id_table_compression",
        float,
        lambda result, _: getattr(result, "id_table_compression", 1.0),
        "full id-table bytes / actual id-table bytes (1: full tables)",
    ),
)
"""Every scalar of the trial summary, in report order."""

SUMMARY_METRICS: tuple[str, ...] = tuple(m.name for m in SUMMARY_TABLE if m.objective)
"""Scalar metrics an objective may name (besides ``val_`` and ``test_`` quality)."""

COST_COLUMNS: tuple[str, ...] = tuple(m.name for m in SUMMARY_TABLE)
"""The results table's cost columns: the whole summary table."""


def trial_summary(result: Any, pretrain_seconds: float) -> dict[str, Any]:
    """A TTNNResult -> flat Tune metrics (quality as fractions; then :data:`SUMMARY_TABLE`)."""
    metrics: dict[str, Any] = {}
    for name, value in result.best_val_metrics.items():
        metrics[f"{VAL_PREFIX}{name}"] = float(value)
    for name, value in result.test_metrics.items():
        metrics[f"{TEST_PREFIX}{name}"] = float(value)
    # The teacher alone (Figure 1's reference line); absent for mf_mlp and non-CADC methods.
    for name, value in getattr(result, "teacher_test_metrics", {}).items():
        metrics[f"{TEACHER_TEST_PREFIX}{name}"] = float(value)
    for metric in SUMMARY_TABLE:
        metrics[metric.name] = metric.kind(metric.read(result, float(pretrain_seconds)))
    return metrics
