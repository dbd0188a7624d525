"""Ray-facing glue of the sweep: the Train->Tune report callback, the searcher, progress lines.

Imported only inside the driver and the trials (importing it imports Ray Tune).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


def epoch_result(
    metrics: Mapping[str, Any], metric_names: Sequence[str], pretrain_seconds: float
) -> dict[str, Any]:
    """One epoch's Train metrics (rank 0) as a Tune result that holds every sweep metric.

    Tune rejects a result that lacks a metric its searcher or scheduler names, and an
    epoch report has validation metrics only: final-only metrics (test quality, totals)
    are NaN placeholders here; the trial's final report carries the real values.
    """
    result = dict(metrics)
    result.setdefault("pretrain_seconds", float(pretrain_seconds))
    for name in metric_names:
        result.setdefault(name, math.nan)
    return result


class SweepReportCallback(TuneReportCallback):
    """``TuneReportCallback`` whose per-epoch results hold every sweep metric (see above)."""

    def __init__(self, metric_names: Sequence[str], pretrain_seconds: float) -> None:
        super().__init__()
        self.metric_names = tuple(metric_names)
        self.pretrain_seconds = float(pretrain_seconds)

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        filled = [epoch_result(metrics[0], self.metric_names, self.pretrain_seconds), *metrics[1:]]
        super().after_report(run_context, filled, checkpoint)


class FinalResultOptunaSearch(OptunaSearch):
    """OptunaSearch that learns from each trial's final result only.

    Intermediate (per-epoch) results carry NaN placeholders for final-only metrics and
    no Optuna pruner runs (ASHA stops trials), so they are not told to Optuna.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        return None


class SweepProgressCallback(Callback):
    """One log line per finished or failed trial, next to Tune's live progress table."""

    def __init__(self) -> None:
        self.finished = 0
        self.failed = 0

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.finished += 1
        result = trial.last_result or {}
        overrides = (trial.config or {}).get("trial", {})
        quality = ", ".join(
            f"{name} {100 * float(result[name]):.2f}%"
            for name in sorted(result)
            if name.startswith("test_") and isinstance(result[name], (int, float))
        )
        logger.info(
            "trial %s finished (%d done, %d failed of %d): %s -> %s, %.1fs",
            trial.trial_id,
            self.finished,
            self.failed,
            len(trials),
            overrides,
            quality or "no test metrics",
            float(result.get("total_seconds", math.nan)),
        )

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.failed += 1
        logger.warning("trial %s failed: %s", trial.trial_id, (trial.config or {}).get("trial", {}))
