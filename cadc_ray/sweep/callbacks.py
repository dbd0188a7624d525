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


BEST_SO_FAR_PREFIX = "best_"
"""A per-epoch report holds ``best_val_<m>``: the best validation value up to that epoch."""

ELAPSED_KEY = "time_total_s"
"""Seconds since the trial started, which Tune adds to every result."""


def objective_values(
    result: Mapping[str, Any] | None, metrics: Sequence[str]
) -> list[float] | None:
    """The values Optuna is told for a trial's last result, or None (no usable value).

    A finished trial's last result is its summary: the metrics as they are (``val_<m>``
    is the validation value of the selected epoch). A trial that ASHA stopped ended on a
    per-epoch report, where ``val_<m>`` is that epoch's value and final-only metrics are
    NaN placeholders: a validation objective then takes ``best_val_<m>`` (the best
    validation value so far: what the summary would have reported had the trial ended
    there) and ``total_seconds`` pretraining + the trial's seconds so far. Anything else
    missing gives None (the trial is told as pruned, never NaN).
    """
    if not result:
        return None
    values = []
    for metric in metrics:
        value = None
        if metric.startswith("val_"):  # only per-epoch reports hold best_val_<m>
            value = _finite_or_none(result.get(BEST_SO_FAR_PREFIX + metric))
        if value is None:
            value = _finite_or_none(result.get(metric))
        if value is None and metric == "total_seconds":
            elapsed = _finite_or_none(result.get(ELAPSED_KEY))
            pretrain = _finite_or_none(result.get("pretrain_seconds")) or 0.0
            value = None if elapsed is None else pretrain + elapsed
        if value is None:
            return None
        values.append(value)
    return values


def _params_key(trial: Any) -> str:
    """Which point of the space an Optuna trial (live or frozen) holds: each parameter as
    its distribution's internal value (a categorical's index), so 2 and 2.0 are one."""
    distributions = trial.distributions
    return repr(
        sorted(
            (name, distributions[name].to_internal_repr(value))
            for name, value in trial.params.items()
        )
    )


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


MAX_REPEATED_PROPOSALS = 100
"""Proposals of already-tried points :class:`SweepOptunaSearch` answers in a row before it
ends the search (the sampler has converged on points it has tried)."""

REPEAT_OF_ATTR = "cadc_ray_repeat_of"
"""User attribute of an Optuna trial answered from the study: the trial number it repeats."""

REPEAT_OF_RUNNING_ATTR = "cadc_ray_repeat_of_running"
"""User attribute of an Optuna trial told FAIL because a running trial holds its point: that
trial's Tune id."""

SEARCH_ENDED_ATTR = "cadc_ray_search_ended"
"""User attribute of the study once :class:`SweepOptunaSearch` has ended the search: why.
The driver reads it after Tune returns: fewer trials than ``num_samples`` then is not an
interruption."""


class SweepOptunaSearch(OptunaSearch):
    """OptunaSearch that learns from each trial's last result only, never from a NaN, and
    never runs a point twice.

    Intermediate (per-epoch) results carry NaN placeholders for final-only metrics and
    no Optuna pruner runs (ASHA stops trials), so they are not told to Optuna. A trial
    stopped early is told the values of :func:`objective_values` (state COMPLETE), an
    errored trial FAIL, and one without any usable value PRUNED. Ray's own
    ``on_trial_complete`` would tell Optuna the NaN placeholders, which Optuna records
    as a failed trial.

    TPE proposes points it has tried again when the space is small and categorical (the
    ML-1M joint search ran 23 distinct points in 40 trials, its best one six times).
    A trial is seeded, so a repeat would give the same metrics. Here a proposal of a
    finished point is told that point's values at once (attribute
    :data:`REPEAT_OF_ATTR`) and the sampler is asked again. A proposal of a point that a
    running trial holds is told FAIL (TPE ignores failed trials) and asked again. Once
    ``distinct_trials`` points (``space.distinct_trial_count``: None when unknown) are
    finished or running, or after :data:`MAX_REPEATED_PROPOSALS` repeats in a row, the
    search ends (``Searcher.FINISHED``): fewer trials than ``num_samples``, none wasted.
    """

    def __init__(self, *args: Any, distinct_trials: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.distinct_trials = distinct_trials

    def _running_points(self) -> dict[str, str]:
        """``{point key: trial id}`` of the trials Tune is running (asked, not completed)."""
        return {
            _params_key(trial): trial_id
            for trial_id, trial in self._ot_trials.items()
            if trial_id not in self._completed_trials and trial.params
        }

    def _finished_points(self) -> dict[str, Any]:
        """``{point key: FrozenTrial}`` of the study's COMPLETE trials (first of each point)."""
        import optuna

        study: Any = self._ot_study
        finished: dict[str, Any] = {}
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            finished.setdefault(_params_key(trial), trial)
        return finished

    # Ray's signature says dict or None; Searcher.FINISHED (a str) is its documented signal
    # that the search has ended.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        import optuna

        study: Any = self._ot_study
        for _ in range(MAX_REPEATED_PROPOSALS):
            finished, running = self._finished_points(), self._running_points()
            # getattr: a searcher pickled before this attribute existed (--resume) has none.
            distinct_trials = getattr(self, "distinct_trials", None)
            if distinct_trials is not None and (
                len(finished.keys() | running.keys()) >= distinct_trials
            ):
                return self._end_search(
                    f"all {distinct_trials} distinct points of the space are tried"
                )
            config = super().suggest(trial_id)
            trial = self._ot_trials[trial_id]
            key = _params_key(trial)
            if key in finished:
                earlier = finished[key]
                trial.set_user_attr(REPEAT_OF_ATTR, earlier.number)
                study.tell(trial, earlier.values if len(earlier.values) > 1 else earlier.value)
                logger.info(
                    "trial %s: the searcher proposed Optuna trial %d's point again; told its "
                    "values, not run",
                    trial_id,
                    earlier.number,
                )
            elif key in running:
                trial.set_user_attr(REPEAT_OF_RUNNING_ATTR, running[key])
                study.tell(trial, None, state=optuna.trial.TrialState.FAIL)
                logger.info(
                    "trial %s: the searcher proposed running trial %s's point; asked again",
                    trial_id,
                    running[key],
                )
            else:
                return config
            del self._ot_trials[trial_id]
        return self._end_search(
            f"the sampler proposed only tried points, {MAX_REPEATED_PROPOSALS} times in a row"
        )

    def _end_search(self, reason: str) -> str:
        from ray.tune.search import Searcher

        study: Any = self._ot_study
        if study.user_attrs.get(SEARCH_ENDED_ATTR) != reason:
            study.set_user_attr(SEARCH_ENDED_ATTR, reason)
            logger.info("search ended: %s", reason)
        return str(Searcher.FINISHED)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        return None

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return None
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = None if error else objective_values(result, metrics)
        trial = self._ot_trials[trial_id]
        study: Any = self._ot_study  # set up by OptunaSearch (a space was given)
        try:
            if values is None:
                state = optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED
                study.tell(trial, None, state=state, skip_if_finished=True)
            else:
                study.tell(trial, values if len(values) > 1 else values[0], skip_if_finished=True)
        except (ValueError, RuntimeError) as exc:
            # e.g. a resumed sweep re-running a trial its stored study already holds.
            logger.warning("Optuna trial of %s not updated: %s", trial_id, exc)
        self._completed_trials.add(trial_id)
        return None


FinalResultOptunaSearch = SweepOptunaSearch
"""The class's earlier name: Tune pickles the searcher by name, and ``--resume`` of a sweep
started before the rename unpickles it."""


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
