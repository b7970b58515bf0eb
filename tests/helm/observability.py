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


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


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
