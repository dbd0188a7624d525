"""Sweep CLI and driver plumbing that needs no Ray cluster: exit statuses, SIGTERM ->
Tune's graceful SIGINT stop, data paths checked before Ray, ``storage_path`` layout.

No ``ray.init`` here (``ray.tune`` is imported for its signal handler and Tuner checks).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_grid_spec

from cadc_ray.config import ConfigError
from cadc_ray.sweep import cli
from cadc_ray.sweep import driver as sweep_driver
from cadc_ray.sweep.driver import (
    SweepOutcome,
    check_data_inputs,
    check_output_dir,
    sigterm_as_sigint,
    storage_root,
)
from cadc_ray.sweep.space import trial_configs_for_setup
from cadc_ray.sweep.spec import load_spec

TINY_SPEC: dict[str, Any] = tiny_grid_spec()


def _spec_file(tmp_path: Path, **changes: Any) -> Path:
    raw = {**TINY_SPEC, "output_dir": str(tmp_path / "out"), **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    """Tests here install handlers; the test process gets its own back."""
    saved = {
        number: signal.getsignal(number)
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    }
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


# --- exit statuses ----------------------------------------------------------------------


def _outcome(tmp_path: Path, *, interrupted: bool, statuses: list[str]) -> SweepOutcome:
    return SweepOutcome(
        output_dir=tmp_path,
        records=[{"status": status} for status in statuses],
        interrupted=interrupted,
    )


@pytest.mark.parametrize(
    ("interrupted", "statuses", "expected"),
    [
        (False, ["finished", "error"], 0),
        (True, ["finished", "incomplete"], 130),
        (False, ["error", "error"], 1),
    ],
)
def test_exit_status_finished_interrupted_all_failed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    interrupted: bool,
    statuses: list[str],
    expected: int,
) -> None:
    outcome = _outcome(tmp_path, interrupted=interrupted, statuses=statuses)
    monkeypatch.setattr(sweep_driver, "run_sweep", lambda spec, **_: outcome)
    assert cli.main([str(_spec_file(tmp_path))]) == expected
    assert ("--resume" in capsys.readouterr().out) == interrupted


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(0)])
def test_interrupt_before_tune_exits_130(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stop: BaseException,
) -> None:
    # SystemExit(0): what Train's SIGINT handler raises after aborting a pretraining run.
    def interrupted(spec: Any, **_: Any) -> SweepOutcome:
        raise stop

    monkeypatch.setattr(sweep_driver, "run_sweep", interrupted)
    assert cli.main([str(_spec_file(tmp_path))]) == cli.EXIT_INTERRUPTED == 130
    assert "interrupted: finish it with" in capsys.readouterr().err


# --- SIGTERM behaves like SIGINT -------------------------------------------------------


def test_sigterm_calls_the_current_sigint_handler_and_is_restored(
    restore_signal_handlers: None,
) -> None:
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_sigint():
        signal.raise_signal(signal.SIGTERM)
    assert received == [signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_sets_tunes_stop_event(restore_signal_handlers: None) -> None:
    # The handler Tune installs for SIGINT during Tuner.fit (ray/tune/tune.py): its event
    # ends the tuning loop, after which Tune checkpoints the experiment state.
    from ray.tune.tune import _setup_signal_catching

    with sigterm_as_sigint():
        stop_event = _setup_signal_catching()
        signal.raise_signal(signal.SIGTERM)
        assert stop_event.is_set()
        # Tune put the previous SIGINT handler back; Python's default -> KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)


# --- data paths checked before Ray -----------------------------------------------------


def test_missing_raw_files_are_named_with_the_spec(tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    folder.mkdir()  # exists, but holds no u.data
    spec = load_spec(_spec_file(tmp_path), ["data.dataset=ml-100k", f"data.path={folder}"])
    with pytest.raises(ConfigError, match=r"spec.yaml .*: data.path: .*u.data: file not found"):
        check_data_inputs(spec, trial_configs_for_setup(spec))
    # Synthetic data has no input file to check.
    synthetic = load_spec(_spec_file(tmp_path))
    check_data_inputs(synthetic, trial_configs_for_setup(synthetic))


# --- storage_path ----------------------------------------------------------------------


def test_storage_root_layout(tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    spec_file = _spec_file(tmp_path)
    assert storage_root(load_spec(spec_file), output_dir) == str(output_dir)
    uri = load_spec(spec_file, ["storage_path=s3://bucket/prefix/"])
    assert storage_root(uri, output_dir) == "s3://bucket/prefix/tiny"
    local = load_spec(spec_file, [f"storage_path={tmp_path / 'nfs'}"])
    assert storage_root(local, output_dir) == str(tmp_path / "nfs" / "tiny")


def test_fresh_sweep_is_refused_when_storage_path_holds_one(tmp_path: Path) -> None:
    spec = load_spec(_spec_file(tmp_path), [f"storage_path={tmp_path / 'nfs'}"])
    output_dir = tmp_path / "out"
    check_output_dir(spec, output_dir, resume=False)  # nothing there yet
    with pytest.raises(ConfigError, match=r"--resume: no sweep to resume in .*nfs/tiny/tune"):
        check_output_dir(spec, output_dir, resume=True)
    (tmp_path / "nfs" / "tiny" / "tune").mkdir(parents=True)
    (tmp_path / "nfs" / "tiny" / "tune" / "tuner.pkl").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"nfs/tiny/tune already holds a sweep"):
        check_output_dir(spec, output_dir, resume=False)
