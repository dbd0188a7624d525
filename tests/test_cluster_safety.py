"""Safety before anything reaches a cluster.

- A bad sweep spec, experiment config or data path fails with exit status 2 and a
  message naming the file/field, before ``ray.init`` is ever called (no cluster
  resources requested). ``ray.init`` is replaced by a tripwire in these tests.
- Nothing in the package binds the dashboard to a public interface: the code never
  passes ``dashboard_host``, and Ray's own default stays 127.0.0.1.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_grid_spec, tiny_sweep_base

REPO_ROOT = Path(__file__).resolve().parents[1]


class RayInitCalled(AssertionError):
    """Raised by the tripwire: the code under test tried to start or join Ray."""


@pytest.fixture
def ray_init_tripwire(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Replaces ``ray.init``; records each call's kwargs and raises RayInitCalled."""
    import ray

    calls: list[dict[str, Any]] = []

    def tripwire(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs)
        raise RayInitCalled(f"ray.init called with {kwargs}")

    monkeypatch.setattr(ray, "init", tripwire)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield calls


def _write_yaml(path: Path, payload: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(payload, sort_keys=False), encoding="utf-8")
    return path


def _small_spec(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    base = {**tiny_sweep_base(), "output_root": str(tmp_path / "runs")}
    return tiny_grid_spec("safety", base, **{"output_dir": str(tmp_path / "sweep"), **changes})


# ---------------------------------------------------------------------------------------
# Sweep CLI


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"space": {"method": {"type": "gird", "values": ["cadc"]}}}, "space.method.type"),
        ({"space": {"train.epochz": {"type": "grid", "values": [1]}}}, "train.epochz"),
        ({"num_samples": 0}, "num_samples"),
        ({"searcher": {"type": "bayes"}}, "'bayes' is not one of"),
        ({"unexpected": 1}, "unexpected: unknown key"),
    ],
)
def test_sweep_cli_rejects_bad_spec_without_ray(
    tmp_path: Path,
    ray_init_tripwire: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    message: str,
) -> None:
    from cadc_ray.sweep.cli import main

    spec_file = _write_yaml(tmp_path / "bad.yaml", _small_spec(tmp_path, **changes))
    assert main([str(spec_file)]) == 2
    error = capsys.readouterr().err
    assert str(spec_file) in error and message in error
    assert ray_init_tripwire == []
    assert not (tmp_path / "sweep").exists()


def test_sweep_cli_rejects_missing_spec_file_without_ray(
    tmp_path: Path, ray_init_tripwire: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    from cadc_ray.sweep.cli import main

    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err
    assert ray_init_tripwire == []


def test_sweep_cli_rejects_missing_data_path_without_ray(
    tmp_path: Path, ray_init_tripwire: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    from cadc_ray.sweep.cli import main

    spec = _small_spec(tmp_path)
    spec["base_config"]["data"] = {"dataset": "ml-100k", "path": str(tmp_path / "no-ml-100k")}
    spec_file = _write_yaml(tmp_path / "spec.yaml", spec)
    assert main([str(spec_file)]) == 2
    assert "no-ml-100k: not found" in capsys.readouterr().err
    assert ray_init_tripwire == []


# ---------------------------------------------------------------------------------------
# Run CLI


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epochz=3"], "train.epochz: unknown key"),
        (["data.filter_ratio=0.5"], "data.filter_ratio"),
        (["method=cadc", "model.integration=none"], "model.integration"),
        (["resources.use_gpu=maybe"], "resources.use_gpu"),
    ],
)
def test_run_cli_rejects_bad_config_without_ray(
    tmp_path: Path,
    ray_init_tripwire: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    overrides: list[str],
    message: str,
) -> None:
    from cadc_ray.run import main

    config = _write_yaml(tmp_path / "config.yaml", {"output_root": str(tmp_path / "runs")})
    argv = [str(config)]
    for override in overrides:
        argv += ["--set", override]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert str(config) in error and message in error
    assert ray_init_tripwire == []


def test_run_cli_rejects_missing_data_path_without_ray(
    tmp_path: Path, ray_init_tripwire: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    from cadc_ray.run import main

    config = _write_yaml(
        tmp_path / "config.yaml",
        {
            "output_root": str(tmp_path / "runs"),
            "data": {"dataset": "ml-100k", "path": str(tmp_path / "no-ml-100k")},
        },
    )
    assert main([str(config)]) == 2
    assert "no-ml-100k: not found" in capsys.readouterr().err
    assert ray_init_tripwire == []


# ---------------------------------------------------------------------------------------
# Dashboard exposure


def test_ray_default_dashboard_host_is_loopback() -> None:
    """``ray.init`` (and ``ray start``) default to the loopback address in ray 2.60."""
    import inspect

    import ray

    default = inspect.signature(ray.init).parameters["dashboard_host"].default
    assert default in ("127.0.0.1", "::1", "localhost")


def test_package_never_sets_a_dashboard_host() -> None:
    """Every ray.init in the package keeps Ray's loopback default for the dashboard."""
    offenders = []
    for source in sorted((REPO_ROOT / "cadc_ray").rglob("*.py")):
        text = source.read_text(encoding="utf-8")
        for pattern in (r"dashboard_host", r"0\.0\.0\.0", r"--dashboard-host"):
            if re.search(pattern, text):
                offenders.append(f"{source.relative_to(REPO_ROOT)}: {pattern}")
    assert offenders == []


def test_sweep_and_runtime_ray_init_keep_the_dashboard_local(
    tmp_path: Path, ray_init_tripwire: list[dict[str, Any]]
) -> None:
    """The options the package's two ray.init sites pass: no public dashboard host."""
    from cadc_ray.config import ResourcesConfig
    from cadc_ray.runtime.session import TRAIN_POLL_INTERVAL_ENV, init_ray
    from cadc_ray.sweep.driver import start_ray
    from cadc_ray.sweep.spec import parse_spec

    with pytest.raises(RayInitCalled):
        init_ray(None, resources=ResourcesConfig())
    with pytest.raises(RayInitCalled):
        start_ray(parse_spec(_small_spec(tmp_path), "<test>"), None)
    assert len(ray_init_tripwire) == 2
    for options in ray_init_tripwire:
        assert options.get("address") == "local"
        assert options.get("dashboard_host", "127.0.0.1") == "127.0.0.1"
        # Train's controller polls often in every job (2 s made each worker-group epoch >= 2 s).
        assert float(options["runtime_env"]["env_vars"][TRAIN_POLL_INTERVAL_ENV]) < 2.0
