"""What a stage's process prints: the package's epoch lines, not Ray Train's local-mode
chatter (Train's ``LoggingConfig`` does not reach the process that runs a local-mode stage)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from cadc_ray import console


@pytest.fixture
def restored_loggers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Leaves the package's and Train's loggers as the test found them."""
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    names = ("cadc_ray", *console.TRAIN_LOCAL_MODE_LOGGERS)
    saved = {
        name: (
            logging.getLogger(name).level,
            list(logging.getLogger(name).handlers),
            logging.getLogger(name).propagate,
        )
        for name in names
    }
    for name in names:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger("cadc_ray").handlers[:] = []
    yield
    for name, (level, handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate


def test_a_stage_task_prints_the_epoch_lines_once_and_no_train_chatter(
    restored_loggers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    console.task_console()
    console.task_console()  # a worker process that runs a second stage task
    logging.getLogger("cadc_ray.runtime.stage").info("ttnn epoch 1/2: loss 0.6952")
    logging.getLogger("cadc_ray.runtime.stage").warning("something to look at")
    for name in console.TRAIN_LOCAL_MODE_LOGGERS:
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        logging.getLogger(name).info("Reported metrics: {'epoch': 1}")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "ttnn epoch 1/2: loss 0.6952",
        "WARNING cadc_ray.runtime.stage: something to look at",
    ]


def test_verbose_keeps_train_s_local_mode_lines(
    restored_loggers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    console.quiet_train_logs()
    assert all(
        logging.getLogger(name).getEffectiveLevel() >= logging.WARNING
        for name in console.TRAIN_LOCAL_MODE_LOGGERS
    )
    for name in console.TRAIN_LOCAL_MODE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    console.quiet_train_logs()
    assert all(
        logging.getLogger(name).level == logging.NOTSET for name in console.TRAIN_LOCAL_MODE_LOGGERS
    )
