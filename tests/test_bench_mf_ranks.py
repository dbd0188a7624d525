"""``scripts/bench_mf_ranks.py``: its summary on hand-made numbers and its argument checks
(the measurements are timings of new processes and are the script's to run)."""

from __future__ import annotations

from types import ModuleType

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_mf_ranks")


def test_summary_takes_the_median_and_best_per_world_and_phase(bench: ModuleType) -> None:
    measurements = {
        1: [{"user": 3.0, "item": 9.0}, {"user": 1.0, "item": 8.0}, {"user": 2.0, "item": 7.0}],
        2: [{"user": 5.0, "item": 4.0}, {"user": 6.0, "item": 1.0}],
    }
    summary = bench.summary(measurements)
    assert summary["1"]["user"] == {"median_rows_per_second": 2.0, "best_rows_per_second": 3.0}
    assert summary["1"]["item"] == {"median_rows_per_second": 8.0, "best_rows_per_second": 9.0}
    assert summary["2"]["user"] == {"median_rows_per_second": 5.5, "best_rows_per_second": 6.0}
    assert summary["2"]["item"] == {"median_rows_per_second": 2.5, "best_rows_per_second": 4.0}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--worlds", "0"], "--worlds, --repeats and --steps must be >= 1"),
        (["--steps", "0"], "--worlds, --repeats and --steps must be >= 1"),
        (["--worlds", "1", "3"], "--batch-size 8192 must divide by every world [1, 3]"),
    ],
)
def test_arguments_are_checked_before_any_work(
    bench: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err
