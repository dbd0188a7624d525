"""``bench_data``'s shared helpers: ``speed_reference`` (the machine's speed at a gather and a
GEMM, recorded by the benchmarks next to the load average as a coarse sign of the state the
machine was in), ``require_tuned_allocator`` and ``write_result``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import load_script

import cadc_ray.runtime.device as device


def test_both_probes_measured_on_one_thread_and_the_thread_count_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench_data = load_script("bench_data")
    before = torch.get_num_threads()
    threads_seen: list[int] = []
    real_mm = torch.mm

    def counting_mm(left: torch.Tensor, right: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        threads_seen.append(torch.get_num_threads())
        return real_mm(left, right, **kwargs)

    monkeypatch.setattr(torch, "mm", counting_mm)
    torch.set_num_threads(2)
    try:
        reference = bench_data.speed_reference(repeats=3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert threads_seen == [1, 1, 1]
    assert set(reference) == {"gather_gb_per_s", "gemm_gflop_per_s"}
    assert all(math.isfinite(value) and value > 0 for value in reference.values())


def test_a_failing_probe_still_restores_the_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    bench_data = load_script("bench_data")
    before = torch.get_num_threads()

    def failing_mm(left: torch.Tensor, right: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError("probe failed")

    monkeypatch.setattr(torch, "mm", failing_mm)
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="probe failed"):
            bench_data.speed_reference(repeats=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_no_repeats_is_refused_before_any_work() -> None:
    bench_data = load_script("bench_data")
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        bench_data.speed_reference(repeats=0)


@pytest.mark.parametrize("applied", [True, False])
def test_a_tuned_allocator_run_exits_when_the_setting_does_not_apply(
    monkeypatch: pytest.MonkeyPatch, applied: bool
) -> None:
    bench_data = load_script("bench_data")
    calls: list[bool] = []

    def tune() -> bool:
        calls.append(applied)
        return applied

    monkeypatch.setattr(device, "tune_cpu_allocator", tune)
    if applied:
        bench_data.require_tuned_allocator()
    else:
        with pytest.raises(SystemExit, match=r"tune_cpu_allocator\(\) did not apply"):
            bench_data.require_tuned_allocator()
    assert calls == [applied]


def test_a_result_is_written_whole_into_a_new_folder_then_announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench_data = load_script("bench_data")
    output = tmp_path / "new" / "folder" / "bench.json"
    record = {"runs": [1.5, 2.5], "summary": {"median": 2.0}}

    bench_data.write_result(output, record, record["summary"])
    assert output.read_text(encoding="utf-8") == json.dumps(record, indent=2) + "\n"
    assert sorted(path.name for path in output.parent.iterdir()) == ["bench.json"]  # no temp
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.index("wrote")]) == {"median": 2.0}
    assert printed.endswith(f"wrote {output}\n")

    bench_data.write_result(output, {"runs": []})  # replaced; no summary, only the path
    assert json.loads(output.read_text(encoding="utf-8")) == {"runs": []}
    assert capsys.readouterr().out == f"wrote {output}\n"
