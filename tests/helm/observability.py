"""What the chart's dashboard and alerts query: read from the shipped files, for the chart tests
and for the test that scrapes a running worker's /metrics (tests/integration/test_health.py)."""

from __future__ import annotations

import json
import re

from .chart import CHART

DASHBOARD = CHART / "dashboards" / "streams-enricher.json"
METRIC = re.compile(r"\b(streams_[a-z_]+)")
SUFFIXES = ("_bucket", "_count", "_sum")
GROUPING = re.compile(r"\b(by|without)\s*\([^)]*\)")  # label names, not metrics


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(without_rows: tuple[str, ...] = ()) -> list[str]:
    """Every panel's queries (row panels have none); `without_rows`: leave out the panels under
    the rows of these titles (e.g. CANDIDATE_ROW, for a worker that runs no candidate)."""
    panels = dashboard()["panels"]
    skipped = {p["id"] for title in without_rows for p in row_panels(title, panels)}
    return [t["expr"] for p in panels if p["id"] not in skipped for t in p.get("targets", [])]


CANDIDATE_ROW = "Candidate (shadow traffic)"  # streams_shadow_*: only a route with a candidate has them


def row_panels(title: str, panels: list[dict] | None = None) -> list[dict]:
    """The panels under the row `title`, up to the next row (Grafana's layout of an open row)."""
    panels = dashboard()["panels"] if panels is None else panels
    rows = [i for i, p in enumerate(panels) if p["type"] == "row"]
    start = next((i for i in rows if panels[i]["title"] == title), None)
    if start is None:
        return []
    end = next((i for i in rows if i > start), len(panels))
    return panels[start + 1:end]


def metric_names(exprs) -> set[str]:
    """Metric families an expression reads (`_bucket`/`_count`/`_sum` series of a histogram
    belong to its family)."""
    names = set()
    for expr in exprs:
        for name in METRIC.findall(GROUPING.sub("", expr)):
            for suffix in SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
            names.add(name)
    return names
