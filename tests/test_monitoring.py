"""Monitoring through the session's Ray dashboard, read back over HTTP.

- The dashboard listens on 127.0.0.1 only and refuses requests without the token
  (docs/ray_notes.md, "Dashboard"; ray 2.60 keeps the token in ~/.ray/auth_token
  unless RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH say otherwise).
- A tiny Train stage run through the runtime (``fit_ttnn``) shows up in the Train V2
  state API (``/api/train/v2/runs/v1``, needs RAY_TRAIN_ENABLE_STATE_TRACKING=1 before
  ``ray.init``: the ``ray_session`` fixture sets it), and its custom Gauges
  (``cadc_ray.runtime.metrics``) appear on the Prometheus endpoint as ``ray_cadc_*``.

Gauges are exported every ``metrics_report_interval_ms`` (the fixture sets 1 s; Ray's
default is 10 s) and dropped ~2 intervals after the worker that set them exits, so the
endpoint is polled while the stage runs, in a bounded loop.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    auth_headers,
    dashboard_base_url,
    finished_tasks_named,
    http_get,
    start_in_background,
    train_run_named,
    train_runs,
)

from cadc_ray.config import ExperimentConfig, from_dict

pytestmark = pytest.mark.ray

POLL_SECONDS = 0.25
RUN_TIMEOUT_SECONDS = 240.0
ACTIVE_RUN_STATUSES = ("INITIALIZING", "SCHEDULING", "RUNNING")
CUSTOM_GAUGES = ("ray_cadc_epoch", "ray_cadc_samples_per_second", "ray_cadc_validation_hr_at_10")


# ---------------------------------------------------------------------------------------
# Prometheus helpers (the dashboard's HTTP helpers are in conftest)


def metrics_endpoint() -> str:
    import ray

    port = int(ray.nodes()[0]["MetricsExportPort"])
    return f"http://127.0.0.1:{port}/metrics"


def custom_metric_samples(body: str, run_name: str) -> dict[str, float]:
    """``{metric name: value}`` of the ``ray_cadc_*`` samples tagged with ``run_name``."""
    found: dict[str, float] = {}
    for line in body.splitlines():
        if not line.startswith("ray_cadc_") or f'run="{run_name}"' not in line:
            continue
        name = line.split("{", 1)[0]
        found[name] = float(line.rsplit(" ", 1)[1])
    return found


# ---------------------------------------------------------------------------------------
# Dashboard exposure and auth


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a socket LISTENing on ``port`` (Linux /proc/net)."""
    addresses: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        with open(table, encoding="ascii") as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                local, state = fields[1], fields[3]
                hex_ip, hex_port = local.split(":")
                if state != "0A" or int(hex_port, 16) != port:  # 0A = LISTEN
                    continue
                raw = bytes.fromhex(hex_ip)
                if width == 8:
                    addresses.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    addresses.add(socket.inet_ntop(socket.AF_INET6, words))
    return addresses


def test_dashboard_listens_on_loopback_only(ray_session: None) -> None:
    import ray

    base = dashboard_base_url()
    host, port = base.removeprefix("http://").rsplit(":", 1)
    assert host == "127.0.0.1"
    if os.path.exists("/proc/net/tcp"):
        assert listening_addresses(int(port)) == {"127.0.0.1"}
    node_ip = ray.util.get_node_ip_address()
    if node_ip not in ("127.0.0.1", "localhost"):
        # What another machine would reach: nothing listens there.
        with pytest.raises(OSError), socket.create_connection((node_ip, int(port)), timeout=3):
            pass


def test_dashboard_refuses_requests_without_a_valid_token(ray_session: None) -> None:
    base = dashboard_base_url()
    status, body = http_get(f"{base}/api/version")
    assert status == 401, body
    status, body = http_get(f"{base}/api/version", {"Authorization": "Bearer not-the-token"})
    assert status == 403, body
    status, body = http_get(f"{base}/api/train/v2/runs/v1")
    assert status == 401, body
    status, body = http_get(f"{base}/api/version", auth_headers())
    assert status == 200 and json.loads(body)["ray_version"], body


def test_token_is_the_one_in_the_default_file(ray_session: None) -> None:
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        pytest.skip("token comes from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH in this environment")
    token_file = Path.home() / ".ray" / "auth_token"
    assert token_file.is_file()
    header = {key.lower(): value for key, value in auth_headers().items()}["authorization"]
    assert header == "Bearer " + token_file.read_text(encoding="utf-8").strip()


# ---------------------------------------------------------------------------------------
# A tiny stage seen through the state API and the metrics endpoint


def _tiny_ttnn_stage(tmp_path: Path, epochs: int, num_workers: int) -> tuple[Any, Any]:
    """A TTNN stage of method Random (no pretraining) on tiny synthetic data: (config, inputs)."""
    from cadc_ray.data import Manifest, materialize_split, prepare_dataset
    from cadc_ray.runtime.ttnn import build_ttnn_inputs

    config = from_dict(
        ExperimentConfig,
        {
            "name": "monitored",
            "method": "random",
            "output_root": str(tmp_path / "runs"),
            "data": {
                "dataset": "synthetic",
                "filter_ratio": 2,
                "synthetic": {
                    "num_users": 200,
                    "num_items": 100,
                    "num_interactions": 8000,
                    "latent_dim": 4,
                },
            },
            "model": {
                "embedding_dim": 8,
                "feature_embedding_dim": 4,
                "tower_hidden": [16],
                "output_dim": 8,
            },
            "train": {"epochs": epochs, "batch_size": 128, "early_stopping_patience": 0},
            "resources": {"num_workers": num_workers, "use_gpu": "no", "torch_threads": 1},
        },
        "tests/test_monitoring.py",
    )
    prepared = prepare_dataset(config.data, tmp_path / "runs")
    inputs = build_ttnn_inputs(config, prepared, materialize_split(prepared), None)
    assert inputs.num_users == Manifest.load(prepared).num_users
    return config, inputs


def _watch_gauges(fit: Callable[[], Any], run_name: str) -> tuple[Any, dict[str, float], bool]:
    """Runs ``fit`` in the background and polls the metrics endpoint (and the Train state
    API) while it runs -> (its result, the largest value of each gauge seen for
    ``run_name``, whether the Train run showed as active)."""
    stage, outcome = start_in_background("tiny-stage", fit)
    endpoint = metrics_endpoint()
    seen: dict[str, float] = {}
    seen_active = False
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    # Poll until the stage is over and a short grace period (one export) has passed.
    finished_at: float | None = None
    while time.monotonic() < deadline:
        status, body = http_get(endpoint)
        if status == 200:
            for name, value in custom_metric_samples(body, run_name).items():
                seen[name] = max(value, seen.get(name, value))
        if not seen_active:
            runs = train_runs(before_first_run_ok=True)
            current = [run for run in runs if run["name"] == run_name]
            seen_active = bool(current) and current[0]["status"] in ACTIVE_RUN_STATUSES
        if not stage.is_alive():
            finished_at = finished_at or time.monotonic()
            if set(CUSTOM_GAUGES) <= set(seen) or time.monotonic() - finished_at > 3:
                break
        time.sleep(POLL_SECONDS)
    stage.join(timeout=5)
    assert not stage.is_alive(), f"stage still running after {RUN_TIMEOUT_SECONDS} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], seen, seen_active


def _check_gauges(seen: dict[str, float], run_name: str, epochs: int, result: Any) -> None:
    """Custom gauges, as Prometheus exposes them (tagged with stage and run name)."""
    assert set(CUSTOM_GAUGES) <= set(seen), f"gauges seen for {run_name}: {seen}"
    assert 1 <= seen["ray_cadc_epoch"] <= epochs
    assert seen["ray_cadc_samples_per_second"] > 0
    assert 0 <= seen["ray_cadc_validation_hr_at_10"] <= 1
    assert seen["ray_cadc_validation_hr_at_10"] <= result.best_val_metrics["hr@10"] + 1e-9


def test_train_run_and_custom_gauges_visible_over_http(ray_session: None, tmp_path: Path) -> None:
    """A TTNN stage on a worker group seen live through the dashboard."""
    from cadc_ray.runtime.ttnn import fit_ttnn

    run_name = f"monitor-{os.getpid()}-{time.monotonic_ns()}"
    epochs = 3
    config, inputs = _tiny_ttnn_stage(tmp_path, epochs, num_workers=1)
    result, seen, seen_active = _watch_gauges(
        lambda: fit_ttnn(config, inputs, run_name=run_name, storage_path=str(tmp_path / "storage")),
        run_name,
    )
    assert result.epochs_run == epochs
    _check_gauges(seen, run_name, epochs, result)

    # The Train V2 state API: the run, its settings and its (single) attempt.
    run = train_run_named(run_name)
    assert run["status"] == "FINISHED", run.get("status_detail")
    assert run["run_settings"]["scaling_config"]["num_workers"] == 1
    attempts = run["attempts"]
    assert len(attempts) == 1 and attempts[0]["status"] == "FINISHED"
    assert [worker["world_rank"] for worker in attempts[0]["workers"]] == [0]
    assert seen_active, "the run never showed as active in the state API while it ran"


def test_a_local_mode_stage_in_a_ray_task_exports_the_same_gauges(
    ray_session: None, tmp_path: Path
) -> None:
    """On a cluster a one-CPU-worker stage runs in Train's local mode inside a Ray task
    (``pipeline.call_stage``; docs/scale.md): its gauges reach the node's metrics endpoint
    from that task's process as a worker's do."""
    from cadc_ray.pipeline import call_stage
    from cadc_ray.runtime.ttnn import fit_ttnn

    run_name = f"monitor-task-{os.getpid()}-{time.monotonic_ns()}"
    epochs = 3
    config, inputs = _tiny_ttnn_stage(tmp_path, epochs, num_workers=0)
    result, seen, _ = _watch_gauges(
        lambda: call_stage(
            fit_ttnn,
            (config, inputs),
            {"run_name": run_name, "storage_path": str(tmp_path / "storage")},
            config=config,
            stage="ttnn",
            run_name=run_name,
            use_gpu=False,
            placement="ray_task",
        ),
        run_name,
    )
    assert result.epochs_run == epochs
    _check_gauges(seen, run_name, epochs, result)
    # ... and it did run as one Ray task (call_stage names it <config name>/<run name>).
    assert finished_tasks_named((f"monitored/{run_name}",), [1]) == [1]
