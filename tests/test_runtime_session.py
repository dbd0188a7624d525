"""The job environment every ``ray.init`` of the package passes (no Ray started here)."""

from __future__ import annotations

import pytest

from cadc_ray.runtime.session import TRAIN_POLL_INTERVAL_ENV, TRAIN_POLL_INTERVAL_S, ray_job_env


def test_train_polls_its_workers_often_in_every_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray's default (2 s) made every epoch of a worker group last >= 2 s (docs/results.md).
    monkeypatch.delenv(TRAIN_POLL_INTERVAL_ENV, raising=False)
    env_vars = ray_job_env()["env_vars"]
    assert env_vars[TRAIN_POLL_INTERVAL_ENV] == TRAIN_POLL_INTERVAL_S
    assert float(TRAIN_POLL_INTERVAL_S) < 2.0


def test_an_explicit_poll_interval_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRAIN_POLL_INTERVAL_ENV, "1.5")
    assert ray_job_env()["env_vars"][TRAIN_POLL_INTERVAL_ENV] == "1.5"


def test_the_console_settings_travel_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from cadc_ray.console import ray_runtime_env

    monkeypatch.delenv(TRAIN_POLL_INTERVAL_ENV, raising=False)
    console_vars = ray_runtime_env()["env_vars"]
    assert console_vars.items() <= ray_job_env()["env_vars"].items()


def test_an_object_store_size_is_for_a_local_ray_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from cadc_ray.runtime.session import init_ray

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: calls.append(options))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="sized its object store when it started"):
        init_ray("auto", object_store_bytes=100 << 20)
    assert calls == []  # refused before connecting
    assert init_ray(object_store_bytes=100 << 20)
    assert calls[-1]["address"] == "local"
    assert calls[-1]["object_store_memory"] == 100 << 20
    assert init_ray()
    assert "object_store_memory" not in calls[-1]  # Ray's own default
