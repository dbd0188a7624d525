"""``scripts/reproduce_tables.py``: rows aggregated over seeds, checked against hand values."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def tables() -> ModuleType:
    return load_script("reproduce_tables")


def _result(hr: float, ndcg: float, pretrain: float, train: float, best: int) -> dict[str, Any]:
    return {
        "test_percent": {"hr@10": hr, "ndcg@10": ndcg},
        "pretrain_seconds": pretrain,
        "train_seconds": train,
        "best_epoch": best,
        "epochs_run": best + 5,
        "train_interactions": 9898,
        "trainable_parameters": 158720,
        "frozen_parameters": 252000,
    }


def test_row_reports_mean_and_sample_sd_over_seeds(tables: ModuleType) -> None:
    # HR 8, 9, 10: mean 9, sample sd 1. NDCG 4, 4, 5: mean 4.333, sd sqrt(1/3) = 0.577.
    row = tables.table_row(
        "CADC",
        [
            _result(8.0, 4.0, 10.0, 20.0, 3),
            _result(9.0, 4.0, 20.0, 30.0, 4),
            _result(10.0, 5.0, 30.0, 40.0, 5),
        ],
    )
    assert row == (
        "| CADC | 9.00 ± 1.00 | 4.33 ± 0.58 | 20+30 | 3/4/5 of 8/9/10 | 9,898 | "
        "158,720 / 252,000 | 8.00, 9.00, 10.00 |"
    )


def test_single_seed_row_has_no_sd_and_no_pretrain_seconds(tables: ModuleType) -> None:
    row = tables.table_row("Random", [_result(7.11, 3.55, 0.0, 114.2, 6)])
    assert row.startswith("| Random | 7.11 | 3.55 | 114 | 6 of 11 |")


def test_tables_group_runs_by_label_across_seeds(tables: ModuleType) -> None:
    runs = [
        {"table": 1, "label": "GS", "seed": 0, "result": _result(12.0, 6.0, 0.0, 1.0, 1)},
        {"table": 2, "label": "linear", "seed": 0, "result": _result(8.0, 4.0, 1.0, 1.0, 1)},
        {"table": 1, "label": "GS", "seed": 1, "result": _result(10.0, 5.0, 0.0, 1.0, 1)},
        {"table": 2, "label": "linear", "seed": 1, "result": _result(9.0, 4.0, 1.0, 1.0, 1)},
    ]
    lines = tables.markdown_tables(runs)
    gs = [line for line in lines if line.startswith("| GS |")]
    linear = [line for line in lines if line.startswith("| linear |")]
    assert len(gs) == 1 and gs[0].startswith("| GS | 11.00 ± 1.41 |")
    assert len(linear) == 1 and linear[0].startswith("| linear | 8.50 ± 0.71 |")
    assert lines.index("Table 1") < lines.index(gs[0]) < lines.index("Table 2")


def test_resume_loads_only_a_finished_run_of_the_same_config(
    tables: ModuleType, tmp_path: Path
) -> None:
    from cadc_ray.config import load_config, to_dict
    from cadc_ray.run import write_json_atomic

    config = load_config(None, [f"output_root={tmp_path}", "name=t1-cadc-seed0"])
    assert tables.finished_result(config) is None  # nothing ran yet
    stored = {"config": to_dict(config), "test_percent": {"hr@10": 9.26}}
    write_json_atomic(tmp_path / "t1-cadc-seed0" / "results.json", stored)
    loaded = tables.finished_result(config)
    assert loaded is not None and loaded["test_percent"] == {"hr@10": 9.26}
    other_seed = load_config(None, [f"output_root={tmp_path}", "name=t1-cadc-seed0", "seed=1"])
    assert tables.finished_result(other_seed) is None  # same folder, another config: rerun
