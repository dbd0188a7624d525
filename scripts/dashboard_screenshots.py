"""Screenshots of a running sweep: Ray dashboard pages and the Grafana dashboard's queries.

Takes PNGs of the Ray dashboard (token auth: the bearer token from ``~/.ray/auth_token``)
and, for each panel of ``monitoring/grafana/cadc_ray_dashboard.json``, of Prometheus' own
graph page running that panel's PromQL (the ``$stage`` / ``$run`` variables set to match
everything). Prometheus' graph page stands in for Grafana where Grafana is not installed;
the queries are the dashboard's, read from its JSON.

Needs a headless Chromium and Playwright's Python package (not project dependencies)::

    apt-get install chromium prometheus && pip install playwright
    prometheus --config.file=/tmp/ray/session_latest/metrics/prometheus/prometheus.yml \\
        --storage.tsdb.path=/tmp/prometheus --web.listen-address=127.0.0.1:9090 &
    python scripts/dashboard_screenshots.py --output docs/img --pages overview jobs

The sweep must be running (its Ray started with the dashboard) while this runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DASHBOARD_JSON = REPO / "monitoring" / "grafana" / "cadc_ray_dashboard.json"


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(title, PromQL)`` of every panel target, with the template variables matching all."""
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$stage", ".*").replace("$run", ".*")
            queries.append((panel["title"], expr))
    return queries


def prometheus_graph_url(prometheus: str, expr: str, range_minutes: int) -> str:
    """Prometheus' classic graph page with one query drawn over the last minutes."""
    params = {
        "g0.expr": expr,
        "g0.tab": "0",  # the graph tab
        "g0.range_input": f"{range_minutes}m",
    }
    return f"{prometheus}/graph?{urllib.parse.urlencode(params)}"


def slug(title: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--dashboard", default="http://127.0.0.1:8265")
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--pages", nargs="*", default=["overview", "jobs"])
    parser.add_argument("--range-minutes", type=int, default=30)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--token-file", type=Path, default=Path.home() / ".ray" / "auth_token")
    args = parser.parse_args(argv)
    try:
        playwright = importlib.import_module("playwright.sync_api")
    except ImportError:
        print("needs Playwright: pip install playwright (and a Chromium)", file=sys.stderr)
        return 2
    token = args.token_file.read_text(encoding="utf-8").strip()
    queries = panel_queries(json.loads(DASHBOARD_JSON.read_text(encoding="utf-8")))
    args.output.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as session:
        browser = session.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        ray_pages = browser.new_context(
            viewport={"width": 1600, "height": 1000},
            extra_http_headers={"Authorization": f"Bearer {token}"},
        ).new_page()
        for name in args.pages:
            ray_pages.goto(f"{args.dashboard}/#/{name}")
            ray_pages.wait_for_timeout(5000)  # the dashboard polls its APIs after load
            path = args.output / f"ray_dashboard_{name}.png"
            ray_pages.screenshot(path=str(path))
            print(path)
        graphs = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
        for title, expr in queries:
            graphs.goto(prometheus_graph_url(args.prometheus, expr, args.range_minutes))
            graphs.wait_for_timeout(3000)
            path = args.output / f"prometheus_{slug(title)}.png"
            graphs.screenshot(path=str(path))
            print(path)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
