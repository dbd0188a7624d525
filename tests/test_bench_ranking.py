"""The large-catalogue benchmarks on tiny shapes: ``scripts/bench_ranking.py`` ranks with the
models the TTNN stage builds (``residual`` at initialisation exactly as its teacher);
``scripts/bench_id_updates.py`` picks the tables each ``train.id_table_updates`` mode makes
row-sparse; bad input fails before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script


def test_tiny_run_writes_every_scorer_and_residual_starts_as_the_teacher(tmp_path: Path) -> None:
    bench = load_script("bench_ranking")
    output = tmp_path / "ranking.json"
    argv = ["--num-users", "60", "--num-items", "700", "--eval-users", "50", "--threads", "1"]
    assert bench.main([*argv, "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    results = report["results"]
    assert set(results) == {"mf_teacher_alone", "two_tower", "residual"}
    # The correction starts at exactly zero: the same ranks, so the same metrics.
    for metric in ("hr@10", "ndcg@10", "hr@10000", "ndcg@10000"):
        assert results["residual"][metric] == results["mf_teacher_alone"][metric]
    assert results["residual"]["hr@10000"] == 1.0  # 700 items: every rank is below 10,000
    assert report["shape"]["eval_users"] == 50
    # The machine's speed after the work (bench_data.speed_reference).
    assert set(report["speed_reference_after"]) == {"gather_gb_per_s", "gemm_gflop_per_s"}
    assert list(tmp_path.iterdir()) == [output]  # written atomically, no temp file left


def test_more_evaluated_users_than_users_fails_before_any_work(tmp_path: Path) -> None:
    bench = load_script("bench_ranking")
    output = tmp_path / "ranking.json"
    with pytest.raises(SystemExit):
        bench.main(["--num-users", "10", "--eval-users", "11", "--output", str(output)])
    assert not output.exists()


def test_id_updates_bench_compares_the_three_modes_on_one_model(tmp_path: Path) -> None:
    bench = load_script("bench_id_updates")
    output = tmp_path / "updates.json"
    argv = ["--num-users", "30", "--num-items", "10000", "--batches", "3", "--batch-size", "64"]
    assert bench.main([*argv, "--repeats", "1", "--threads", "1", "--output", str(output)]) == 0
    results = json.loads(output.read_text())["results"]
    assert results["dense"]["sparse_tables"] == []
    assert results["auto"]["sparse_tables"] == ["item_tower.id_embedding.table"]
    assert len(results["sparse"]["sparse_tables"]) == 2
    # Same initial weights and batches: the first pass's losses differ only by lazy Adam.
    losses = [results[mode]["mean_loss"] for mode in ("dense", "auto", "sparse")]
    assert max(losses) - min(losses) < 0.01
    with pytest.raises(SystemExit):
        bench.main(["--batches", "0", "--output", str(tmp_path / "never.json")])
    assert not (tmp_path / "never.json").exists()
