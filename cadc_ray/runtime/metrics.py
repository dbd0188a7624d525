"""Custom metrics for the Ray dashboard / Prometheus (``ray_cadc_*``).

Gauges are created lazily inside the worker (nothing at import time) and tagged with
the stage (``pretrain`` / ``ttnn``) and the run name, so a sweep's trials can be told
apart in Grafana. Only rank 0 sets them: the values are already global.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

TAG_KEYS = ("stage", "run")


@dataclass
class StageGauges:
    """The three per-epoch gauges of one stage of one run."""

    samples_per_second: Any  # ray.util.metrics.Gauge
    epoch: Any
    validation_hr_at_10: Any
    tags: dict[str, str]

    def record_epoch(
        self, epoch: int, samples_per_second: float, validation_hr_at_10: float | None
    ) -> None:
        """Sets the gauges after ``epoch`` (1-based count of finished epochs)."""
        self.epoch.set(float(epoch), tags=self.tags)
        self.samples_per_second.set(float(samples_per_second), tags=self.tags)
        if validation_hr_at_10 is not None:
            self.validation_hr_at_10.set(float(validation_hr_at_10), tags=self.tags)


def stage_gauges(stage: str, run_name: str) -> StageGauges | None:
    """Creates the gauges; None (with a log line) where Ray metrics are unavailable."""
    try:
        from ray.util.metrics import Gauge

        return StageGauges(
            samples_per_second=Gauge(
                "cadc_samples_per_second",
                description="Training positives processed per second (all workers).",
                tag_keys=TAG_KEYS,
            ),
            epoch=Gauge("cadc_epoch", description="Finished training epochs.", tag_keys=TAG_KEYS),
            validation_hr_at_10=Gauge(
                "cadc_validation_hr_at_10",
                description="Current validation HR@10 (fraction).",
                tag_keys=TAG_KEYS,
            ),
            tags={"stage": stage, "run": run_name},
        )
    except Exception as error:  # metrics must never break training
        logger.warning("Ray custom metrics unavailable: %s", error)
        return None
