"""Shared fixtures and factories: one Ray session for the whole test run, the real-data
folder, tiny generic interaction logs, the tiny sweep specs, the tiny Train stage, a stage
run in a background thread and the dashboard's HTTP helpers.

Test modules import the plain factories from here (``from conftest import tiny_grid_spec``):
each returns a fresh object, so a test may change what it gets.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cadc_ray.config import DataConfig, ExperimentConfig, GenericColumnsConfig, from_dict

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


def _session_runtime_env() -> dict[str, dict[str, str]]:
    from cadc_ray.runtime.session import ray_job_env

    runtime_env = ray_job_env()
    runtime_env["env_vars"]["OMP_NUM_THREADS"] = "1"
    return runtime_env


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the session (logical CPUs may exceed physical ones: docs/ray_notes.md).

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
            # cleanly when ASHA stops a trial (docs/ray_notes.md, "Dashboard"); the
            # monitoring test reads it.
            # It binds to 127.0.0.1 with token auth on (tests/test_monitoring.py checks).
            include_dashboard=True,
            object_store_memory=300 * 1024 * 1024,
            log_to_driver=False,
            # The package's own job environment (console settings, Train's poll
            # interval), one BLAS thread per process on the 2-core machine.
            runtime_env=_session_runtime_env(),
            # Custom Gauges reach the Prometheus endpoint (a free port Ray picks; see
            # ray.nodes()[0]["MetricsExportPort"]) every report interval and vanish ~2
            # intervals after their worker exits: 1 s instead of Ray's 10 s lets a
            # short test stage be seen while it runs.
            _system_config={"metrics_report_interval_ms": 1000},
        )
    yield
    ray.shutdown()


# ---------------------------------------------------------------------------------------
# Tiny generic interaction logs (the ``generic`` reader's input)


def run_bash_script(
    script: Path, args: list[str], env: dict[str, str], *, cwd: Path = REPO_ROOT, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``bash script args...`` as a user runs it, output captured as text."""
    return subprocess.run(
        ["bash", str(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def usage_error(
    command: Callable[[list[str]], Any], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> str:
    """What ``command(argv)`` (a script's ``main`` or ``parse_args``) wrote to stderr when it
    refused ``argv`` as argparse does: exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        command(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (``scripts/`` is not a package)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import would: dataclasses look their module up there.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def generic_log_config(
    path: Path, text: str, columns: GenericColumnsConfig | None = None, **options: Any
) -> DataConfig:
    """Writes the log ``text`` to ``path`` and returns a ``generic`` DataConfig reading it.

    ``columns`` defaults to user ``u``, item ``i`` and no timestamp; ``options`` are further
    DataConfig fields (``duplicates``, ...).
    """
    path.write_text(text)
    return DataConfig(
        dataset="generic",
        path=str(path),
        generic=columns or GenericColumnsConfig(user="u", item="i", timestamp=None),
        **options,
    )


# ---------------------------------------------------------------------------------------
# Tiny sweep specs (plain mappings, as a spec file holds them)

_TINY_SWEEP_BASE: dict[str, Any] = {
    "method": "cadc",
    "pretrain": {"embedding_dim": 7, "epochs": 1},  # pretrained rows: 7 + 1 bias element
    "model": {"embedding_dim": 8},
    "train": {"epochs": 1},
}

_RUNNABLE_SWEEP_BASE: dict[str, Any] = {
    "method": "cadc",
    "data": {
        "dataset": "synthetic",
        "synthetic": {"num_users": 120, "num_items": 60, "num_interactions": 3000, "latent_dim": 4},
    },
    "pretrain": {"embedding_dim": 7, "epochs": 1, "batch_size": 512},
    "model": {"embedding_dim": 8, "feature_embedding_dim": 4, "tower_hidden": [8], "output_dim": 8},
    "train": {"epochs": 2, "batch_size": 256, "early_stopping_patience": 0},
}


def tiny_sweep_base(*, train_epochs: int = 1) -> dict[str, Any]:
    """The smallest valid CADC base config of a sweep (validated, never trained)."""
    base = copy.deepcopy(_TINY_SWEEP_BASE)
    base["train"]["epochs"] = train_epochs
    return base


def runnable_sweep_base(*, train_epochs: int = 2) -> dict[str, Any]:
    """A CADC base config on 3,000 synthetic interactions that trains in seconds."""
    base = copy.deepcopy(_RUNNABLE_SWEEP_BASE)
    base["train"]["epochs"] = train_epochs
    return base


def tiny_grid_spec(
    name: str = "tiny", base: dict[str, Any] | None = None, **changes: Any
) -> dict[str, Any]:
    """A grid over ``method`` in (cadc, random) on ``base`` (default :func:`tiny_sweep_base`);
    ``changes`` replace top-level spec keys."""
    spec: dict[str, Any] = {
        "name": name,
        "base_config": tiny_sweep_base() if base is None else base,
        "space": {"method": {"type": "grid", "values": ["cadc", "random"]}},
        "searcher": {"type": "grid"},
    }
    spec.update(changes)
    return spec


# ---------------------------------------------------------------------------------------
# A tiny Train stage (stage 1 on one synthetic shard)


@dataclass(frozen=True)
class TinySplit:
    """The one field of the data layer's SplitPaths that ``fit_pretrain`` reads."""

    train_dir: Path


def write_tiny_interactions(folder: Path, num_rows: int, num_users: int, num_items: int) -> Path:
    """Synthetic D_full shard (row_index, user_id, item_id; int64), seeded."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "row_index": np.arange(num_rows, dtype=np.int64),
            "user_id": rng.integers(0, num_users, num_rows, dtype=np.int64),
            "item_id": rng.integers(0, num_items, num_rows, dtype=np.int64),
        }
    )
    pq.write_table(table, folder / "part-00000.parquet")
    return folder


def tiny_pretrain_config(
    *, epochs: int, num_workers: int, max_failures: int = 0
) -> ExperimentConfig:
    return from_dict(
        ExperimentConfig,
        {
            "method": "cadc",
            "pretrain": {"embedding_dim": 7, "epochs": epochs, "batch_size": 128},
            "model": {"embedding_dim": 8},
            "resources": {
                "num_workers": num_workers,
                "cpus_per_worker": 1,
                "torch_threads": 1,
                "use_gpu": "no",
                "max_failures": max_failures,
            },
        },
        "tests/test_monitoring.py",
    )


# ---------------------------------------------------------------------------------------
# A stage run in a background thread


def start_in_background(
    name: str, call: Callable[[], Any]
) -> tuple[threading.Thread, dict[str, Any]]:
    """Starts ``call`` in a daemon thread, so that the test can watch (or kill) what it runs.

    Returns the thread and its outcome: ``"result"`` (what ``call`` returned) or ``"error"``
    (what it raised, for the test thread to re-raise after ``join``).
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as error:  # re-raised in the test thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, outcome


def registered_checkpoint(run_folder: Path, name_prefix: str = "") -> Path | None:
    """The newest checkpoint Train has registered for the run in ``run_folder`` when its
    folder name starts with ``name_prefix``, else None.

    Train copies a reported checkpoint into storage file by file, so its folder (and a
    growing ``state.pt``) shows up before the copy ends; a kill then leaves a truncated
    file (CI, 2026-12-02). Only after the copy does the controller name the checkpoint in
    its ``checkpoint_manager_snapshot.json``, and that snapshot is what a restart resumes
    from. The snapshot itself is rewritten in place: a partly written one reads as None.
    """
    snapshot = run_folder / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text(encoding="utf-8")).get("latest_checkpoint_result")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not latest or not str(latest["checkpoint_dir_name"]).startswith(name_prefix):
        return None
    return run_folder / str(latest["checkpoint_dir_name"])


def kill_train_worker_when(
    stage: threading.Thread,
    is_the_run: Callable[[dict[str, Any]], bool],
    ready: Callable[[], Any],
    deadline: float,
) -> tuple[int, Any] | None:
    """SIGKILLs rank 0's worker of the newest Train run that ``is_the_run`` accepts, as soon
    as ``ready()`` returns something other than None; returns ``(killed pid, what ready
    returned)``, or None when ``stage`` ended or ``time.monotonic()`` passed ``deadline``
    first.

    The pid comes from the state API first (polled every 0.2 s: it lists a run's workers
    seconds after they start); then only ``ready`` is polled, every 0.02 s, so the kill
    lands right after what it waits for (e.g. a checkpoint on disk).
    """
    import signal

    worker_pid = None
    while worker_pid is None and stage.is_alive() and time.monotonic() < deadline:
        runs = [run for run in train_runs(before_first_run_ok=True) if is_the_run(run)]
        workers = runs[0]["attempts"][-1]["workers"] if runs and runs[0]["attempts"] else []
        worker_pid = int(workers[0]["pid"]) if workers else None
        time.sleep(0.2)
    while worker_pid is not None and stage.is_alive() and time.monotonic() < deadline:
        found = ready()
        if found is not None:
            os.kill(worker_pid, signal.SIGKILL)
            return worker_pid, found
        time.sleep(0.02)
    return None


# ---------------------------------------------------------------------------------------
# The session dashboard's HTTP API (needs the ray_session fixture)


def dashboard_base_url() -> str:
    import ray._private.worker

    address = ray._private.worker.get_dashboard_url()
    assert address, "the session's Ray has no dashboard (include_dashboard=True expected)"
    return f"http://{address}"


def auth_headers() -> dict[str, str]:
    """The bearer header for this session's token, as Ray's own HTTP clients send it."""
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )

    headers = get_auth_headers_if_auth_enabled({})
    assert headers, "token auth is not enabled in the session (RAY_AUTH_MODE=disabled?)"
    return headers


def http_get(url: str, headers: dict[str, str] | None = None, attempts: int = 3) -> tuple[int, str]:
    """(status, body); a timeout or refused connection is retried, then raised."""
    request = urllib.request.Request(url, headers=headers or {})
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return int(response.status), response.read().decode("utf-8")
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode("utf-8", errors="replace")
        except (TimeoutError, urllib.error.URLError):
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")  # pragma: no cover


def train_runs(*, before_first_run_ok: bool = False) -> list[dict[str, Any]]:
    """Train V2 runs from the state API, newest first.

    The state actor behind the API starts with the session's first Train run; until
    then the API answers 500 ("Train state data is not available"), which
    ``before_first_run_ok`` reads as "no runs yet".
    """
    status, body = http_get(f"{dashboard_base_url()}/api/train/v2/runs/v1", auth_headers())
    if before_first_run_ok and status == 500 and "not available" in body:
        return []
    assert status == 200, f"Train state API answered {status}: {body[:300]}"
    runs = json.loads(body)["train_runs"]
    assert isinstance(runs, list)
    return runs


def train_run_named(name: str) -> dict[str, Any]:
    """The newest Train V2 run called ``name`` (the API lists newest first)."""
    matching = [run for run in train_runs() if run["name"] == name]
    assert matching, f"no Train run named {name!r} in the state API"
    return matching[0]


def teacher_dims(keys: list[str]) -> list[int]:
    """The MF widths in pretrain keys (``mf-d7-<hash>`` -> 7), e.g. of the teachers a sweep
    trained (``SweepOutcome.pretrain_runs``, which lists the results that came back)."""
    return [int(re.search(r"-d(\d+)-", key).group(1)) for key in keys]  # type: ignore[union-attr]


def finished_tasks_named(names: tuple[str, ...], expected: list[int]) -> list[int]:
    """How many FINISHED Ray tasks carry each of ``names``, read until the counts equal
    ``expected`` or 60 s have passed (task events reach the state API within about a
    second). Filtered by name, which the GCS applies itself: no row limit cuts the suite's
    thousands of other tasks short."""
    import ray
    from ray.util.state import list_tasks

    def count(name: str) -> int:
        tasks = list_tasks(
            address=ray.get_runtime_context().gcs_address,
            filters=[("name", "=", name), ("state", "=", "FINISHED")],
            raise_on_missing_output=False,
        )
        return len(tasks)

    deadline = time.monotonic() + 60
    while True:
        finished = [count(name) for name in names]
        if finished == expected or time.monotonic() > deadline:
            return finished
        time.sleep(0.5)
