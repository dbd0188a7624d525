"""Shared fixtures: one Ray session for the whole test run, the real-data folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    return Path(os.environ.get("CADC_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread() -> None:
    """One intra-op thread in the test process: on 2 cores, torch's default thread
    pool fights the Ray workers and turns 3-second learning tests into minutes."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $CADC_DATA_DIR). Missing data fails in CI, skips elsewhere."""
    folder = _shared_data_dir()
    if not (folder / "ml-100k" / "u.data").is_file():
        message = f"real datasets not found at {folder} (set CADC_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the session (RAY_NOTES: logical CPUs may exceed physical ones).

    4 logical CPUs lets a 2-worker Train run keep CPUs free for Ray Data.
    """
    # A loaded 2-core machine can take longer than Ray's defaults to bring up the
    # raylet and the dashboard agent; give it room rather than failing the session.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")
    # State tracking makes Train V2 runs visible in the dashboard's state API.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    import ray

    if not ray.is_initialized():
        ray.init(
            # Never attach to another Ray running on this (shared) machine.
            address="local",
            num_cpus=4,
            # The dashboard's state API is what lets Train V2 release placement groups
            # cleanly when ASHA stops a trial (RAY_NOTES); the monitoring test reads it.
            # It binds to 127.0.0.1 with token auth on (tests/test_monitoring.py checks).
            include_dashboard=True,
            object_store_memory=300 * 1024 * 1024,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
            # Custom Gauges reach the Prometheus endpoint (a free port Ray picks; see
            # ray.nodes()[0]["MetricsExportPort"]) every report interval and vanish ~2
            # intervals after their worker exits: 1 s instead of Ray's 10 s lets a
            # short test stage be seen while it runs.
            _system_config={"metrics_report_interval_ms": 1000},
        )
    yield
    ray.shutdown()
