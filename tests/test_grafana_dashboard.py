"""The shipped Grafana dashboard queries exactly the metrics the Train workers export.

No Ray: the gauges' names come from ``stage_gauges`` with a stand-in ``Gauge``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from conftest import load_script

from cadc_ray.runtime import metrics

DASHBOARD = (
    Path(__file__).resolve().parents[1] / "monitoring" / "grafana" / "cadc_ray_dashboard.json"
)


def _exported_metric_names(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """``ray_<name>`` of every gauge ``stage_gauges`` creates (Ray's Prometheus prefix)."""
    import ray.util.metrics

    created: list[tuple[str, tuple[str, ...]]] = []

    class RecordingGauge:
        def __init__(self, name: str, description: str = "", tag_keys: Any = ()) -> None:
            created.append((name, tuple(tag_keys)))

    monkeypatch.setattr(ray.util.metrics, "Gauge", RecordingGauge)
    assert metrics.stage_gauges("ttnn", "train-x") is not None
    assert all(tags == metrics.TAG_KEYS for _, tags in created)
    return {f"ray_{name}" for name, _ in created}


def test_every_panel_queries_an_exported_metric_with_known_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported = _exported_metric_names(monkeypatch)
    assert exported == {
        "ray_cadc_samples_per_second",
        "ray_cadc_epoch",
        "ray_cadc_validation_hr_at_10",
    }
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "stage", "run"}
    queried: set[str] = set()
    panel_ids = []
    for panel in dashboard["panels"]:
        panel_ids.append(panel["id"])
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(re.findall(r"\bray_[a-z0-9_]+", expr))
            assert names and names <= exported, expr
            queried |= names
            # Only the gauges' own tags are filtered or grouped on.
            labels = set(re.findall(r"([a-zA-Z_]+)=~", expr))
            labels |= {
                label.strip()
                for group in re.findall(r"by \(([^)]*)\)", expr)
                for label in group.split(",")
            }
            assert labels <= set(metrics.TAG_KEYS), expr
            assert set(re.findall(r"\$(\w+)", expr)) <= variables, expr
    assert queried == exported  # every exported metric has a panel
    assert len(panel_ids) == len(set(panel_ids))
    for variable in dashboard["templating"]["list"][1:]:
        assert set(re.findall(r"\bray_[a-z0-9_]+", variable["definition"])) <= exported


def test_the_screenshot_script_draws_each_panel_query_with_every_stage_and_run() -> None:
    """``scripts/dashboard_screenshots.py`` stands in for Grafana with Prometheus' graph page:
    one query per panel target, the dashboard's own, its variables matching everything."""
    script = load_script("dashboard_screenshots")
    panel_queries, prometheus_graph_url = script.panel_queries, script.prometheus_graph_url
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = panel_queries(dashboard)
    targets = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) == len(targets) == 4
    for (title, expr), original in zip(queries, targets, strict=True):
        assert "$" not in expr and title
        assert expr == original.replace("$stage", ".*").replace("$run", ".*")
    url = prometheus_graph_url("http://127.0.0.1:9090", 'max(x{run=~".*"})', 30)
    address, _, query = url.partition("?")
    assert address == "http://127.0.0.1:9090/graph"
    assert urllib.parse.parse_qs(query) == {
        "g0.expr": ['max(x{run=~".*"})'],
        "g0.tab": ["0"],
        "g0.range_input": ["30m"],
    }
