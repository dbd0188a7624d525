"""``scripts/bench_sample_engines.py``: its summary on hand-made numbers and its argument
checks (the measurements themselves need a new Ray each and are the script's to run)."""

from __future__ import annotations

from types import ModuleType

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_sample_engines")


def test_summary_takes_the_fastest_and_median_per_engine_and_their_ratios(
    bench: ModuleType,
) -> None:
    measurements = [
        {"rows": 1000, "engine": "ray", "seconds": 2.0},
        {"rows": 1000, "engine": "local", "seconds": 0.1},
        {"rows": 1000, "engine": "ray", "seconds": 1.0},
        {"rows": 1000, "engine": "local", "seconds": 0.4},
        {"rows": 1000, "engine": "ray", "seconds": 4.0},
        {"rows": 1000, "engine": "local", "seconds": 0.2},
        {"rows": 5000, "engine": "local", "seconds": 0.5},
    ]
    summary = bench.summarize(measurements)
    small = summary["1000"]
    assert small["ray"] == {"fastest": 1.0, "median": 2.0}
    assert small["local"] == {"fastest": 0.1, "median": 0.2}
    assert small["ray_over_local_fastest"] == pytest.approx(10.0)
    assert small["ray_over_local_median"] == pytest.approx(10.0)
    # One engine only: no ratio.
    assert summary["5000"] == {"local": {"fastest": 0.5, "median": 0.5}}


def test_arguments_are_checked_before_any_work(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--rows", "10", "--output", "unused.json"])
    assert "--rows: at least 1000, got '10'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0", "--output", "unused.json"])
    assert "--repeats: at least 1, got 0" in capsys.readouterr().err
