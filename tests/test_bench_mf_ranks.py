"""``scripts/bench_mf_ranks.py``: its summary on hand-made numbers and its argument checks
(the measurements are timings of new processes and are the script's to run)."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from conftest import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_mf_ranks")


def test_summary_takes_the_median_and_best_per_world_and_phase(bench: ModuleType) -> None:
    def run(user: float, item: float, user_ms: float = 0.0) -> dict[str, float]:
        return {
            "user": user,
            "item": item,
            "user_exchange_ms_per_step": user_ms,
            "item_exchange_ms_per_step": 0.0,
        }

    measurements = {
        "1": [run(3.0, 9.0), run(1.0, 8.0), run(2.0, 7.0)],
        "2": [run(5.0, 4.0, 7.0), run(6.0, 1.0, 9.0)],
    }
    summary = bench.summary(measurements)
    assert summary["1"]["user"] == {
        "median_rows_per_second": 2.0,
        "best_rows_per_second": 3.0,
        "median_exchange_ms_per_step": 0.0,
    }
    assert summary["1"]["item"]["median_rows_per_second"] == 8.0
    assert summary["1"]["item"]["best_rows_per_second"] == 9.0
    assert summary["2"]["user"] == {
        "median_rows_per_second": 5.5,
        "best_rows_per_second": 6.0,
        "median_exchange_ms_per_step": 8.0,
    }
    assert summary["2"]["item"]["median_rows_per_second"] == 2.5


def test_independent_runs_are_added_for_worlds_above_one(bench: ModuleType) -> None:
    assert bench.runs_to_make(bench.parse_args(["--worlds", "1", "2"])) == [
        ("1", 1, False),
        ("2", 2, False),
    ]
    assert bench.runs_to_make(bench.parse_args(["--worlds", "1", "2", "--independent"])) == [
        ("1", 1, False),
        ("2", 2, False),
        ("2 independent", 2, True),
    ]


@pytest.mark.parametrize("independent", [False, True])
def test_the_timed_exchange_counts_its_seconds_and_independent_ranks_keep_their_rows(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, independent: bool
) -> None:
    calls = []
    clock = [100.0]  # a hand-driven perf_counter: only the exchange advances it

    def exchange(sides: list, shared: torch.Tensor) -> tuple[list, torch.Tensor]:
        calls.append(len(sides))
        clock[0] += 0.25
        return [(rows, grads * 2) for (rows, grads), _ in sides], shared * 2

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(bench.fused_mf, "exchange_row_gradients", exchange)
    spent = bench._timed_exchange(independent)
    rows, grads = torch.tensor([3, 5]), torch.ones(2, 4)
    merged, shared = bench.fused_mf.exchange_row_gradients([((rows, grads), 9)], torch.ones(1))
    assert torch.equal(merged[0][0], rows)
    if independent:  # the rank's own rows, no exchange called
        assert calls == [] and torch.equal(merged[0][1], grads) and spent["seconds"] == 0.0
        assert torch.equal(shared, torch.ones(1))
    else:
        assert calls == [1] and torch.equal(merged[0][1], grads * 2) and spent["seconds"] == 0.25


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
