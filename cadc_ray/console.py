"""What the command-line tools print: a console for people, the detail in log files.

By default ``cadc_ray.run``, ``cadc_ray.sweep`` and ``cadc_ray.prepare`` print one line
per stage and per epoch, Tune's trial table for sweeps, warnings, errors and the final
summary. Ray's own chatter is routed away from the console, never discarded:

- Ray Data prints per-operator progress (hundreds of lines per run) from every process
  that executes a dataset. ``RAY_DATA_DISABLE_PROGRESS_BARS=1`` turns the bars off, and
  ``RAY_DATA_LOGGING_CONFIG`` points at ``ray_data_logging.yaml`` (beside this module),
  which keeps Ray Data's full DEBUG log in ``ray-data.log`` of the Ray session's log
  folder and shows only warnings on the console.
- Ray Train logs every checkpoint and report at INFO: :func:`train_log_level` gives
  ``WARNING`` to Train's ``RunConfig(logging_config=...)``; Train still writes everything
  to its ``ray-train-sys-*.log`` files.

``--verbose`` (or ``CADC_VERBOSE=1``) restores Ray's defaults. The environment variables
must reach every Ray process, not only the driver: :func:`ray_runtime_env` is passed to
``ray.init`` by the entry points that start or join Ray.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

VERBOSE_ENV = "CADC_VERBOSE"
"""``1``: Ray's own progress and INFO logs on the console (what ``--verbose`` sets)."""

RAY_DATA_LOGGING_CONFIG = Path(__file__).with_name("ray_data_logging.yaml")


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") == "1"


def quiet_ray_env() -> dict[str, str]:
    """Environment variables that keep Ray Data's progress off the console (empty when
    verbose). Set before Ray Data is imported: it reads them when it configures logging."""
    if is_verbose():
        return {}
    return {
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING_CONFIG),
        # Ray's own deprecation notices about arguments Ray Train passes internally.
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    }


def ray_runtime_env() -> dict[str, dict[str, str]]:
    """The ``runtime_env`` for ``ray.init``: the console settings in every Ray process."""
    return {"env_vars": {VERBOSE_ENV: "1"} if is_verbose() else quiet_ray_env()}


def train_log_level() -> str:
    """Ray Train's console log level (its files keep every level)."""
    return "INFO" if is_verbose() else "WARNING"


class _ConsoleFormatter(logging.Formatter):
    """``message`` for INFO (a line for people), ``LEVEL name: message`` otherwise."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno == logging.INFO:
            return message
        return f"{record.levelname} {record.name}: {message}"


def setup_console(verbose: bool = False) -> None:
    """Configures the driver's console for a command-line run.

    Called first by every entry point, before Ray (and so Ray Data) is imported.
    """
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    for name, value in quiet_ray_env().items():
        os.environ.setdefault(name, value)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_ConsoleFormatter())
    package_logger = logging.getLogger("cadc_ray")
    package_logger.handlers[:] = [handler]
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StageProgress:
    """One console line per epoch of a stage, with the time left.

    The estimate extrapolates the wall time of the epochs this process has run (training
    and evaluation) to the configured epoch count; early stopping can only end sooner.
    """

    def __init__(self, stage: str, total_epochs: int, first_epoch: int = 0) -> None:
        import time

        self._clock = time.perf_counter
        self.stage = stage
        self.total_epochs = total_epochs
        self.first_epoch = first_epoch
        self.started = self._clock()

    def line(self, epoch: int, loss: float, samples_per_second: float, validation: str = "") -> str:
        """``epoch`` is 1-based; ``validation`` e.g. ``"val hr@10 0.0733 (best ... )"``."""
        done = epoch - self.first_epoch
        elapsed = self._clock() - self.started
        left = elapsed / max(done, 1) * (self.total_epochs - epoch)
        parts = [
            f"{self.stage} epoch {epoch}/{self.total_epochs}: loss {loss:.4f}",
            f"{samples_per_second:,.0f} samples/s",
        ]
        if validation:
            parts.append(validation)
        parts.append(f"elapsed {_clock(elapsed)}, left <= {_clock(left)}")
        return ", ".join(parts)


TRAIN_LOCAL_MODE_LOGGERS = (
    "ray.train.v2.api.config",  # "Running in local mode ..." at every local-mode fit
    "ray.train.v2._internal.execution.train_fn_utils",  # "Reported metrics: {...}" per epoch
    "ray.train.v2.torch.train_loop_utils",  # "Moving model to device: cpu"
)
"""Ray Train's INFO lines in local mode (``num_workers: 0``). They are logged in the process
that runs the stage, where Train's ``LoggingConfig`` does not apply; the package's own
epoch line says the same for people."""


def quiet_train_logs() -> None:
    """Raises Train's local-mode loggers (:data:`TRAIN_LOCAL_MODE_LOGGERS`) to WARNING,
    unless verbose. Called before a stage's ``TorchTrainer`` is built and in its loop."""
    if is_verbose():
        return
    for name in TRAIN_LOCAL_MODE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_train_worker() -> None:
    """Called first in every Train worker loop: Ray Train's per-report INFO line
    ("Reporting training result ...") is logged under a logger named after its *file*
    (``ray/train/v2/_internal/execution/context.py``), outside ``ray.train``, so Train's
    ``LoggingConfig`` does not reach it. Raise that one logger to WARNING unless verbose,
    and the local-mode ones (:func:`quiet_train_logs`)."""
    if is_verbose():
        return
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    quiet_train_logs()


TASK_CONSOLE_MARK = "cadc_ray_task_console"
"""Set on :func:`task_console`'s handler, so that a second call finds it."""


def task_console() -> None:
    """The console of a Ray task that runs a stage in Train's local mode
    (``pipeline.call_stage``): the package's lines (one per epoch) go to the task's stdout,
    which Ray shows on the driver's console after the task's name, as the lines of a Train
    worker group's workers; Train's local-mode chatter is quieted. A worker process that
    runs such tasks again keeps the one handler."""
    package_logger = logging.getLogger("cadc_ray")
    if not any(getattr(handler, TASK_CONSOLE_MARK, False) for handler in package_logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(_ConsoleFormatter())
        setattr(handler, TASK_CONSOLE_MARK, True)
        package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False
    quiet_train_logs()
