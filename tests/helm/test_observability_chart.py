"""The Grafana dashboard and the PrometheusRule alerts the chart ships: off by default, rendered
with the sidecar label / operator CRD shape, their schemas validated offline, every query
reading metrics the worker exports (the names are checked against a running worker's
/metrics in tests/integration/test_health.py)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from .chart import render
from .observability import CANDIDATE_ROW, dashboard, dashboard_exprs, metric_names, row_panels

# The parts of Grafana's dashboard model (schemaVersion 39) and of the Prometheus Operator's
# PrometheusRule CRD that a loader rejects when wrong; neither schema ships offline.
DASHBOARD_SCHEMA = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["id", "type", "title", "gridPos"],
            "properties": {
                "type": {"enum": ["timeseries", "stat", "gauge", "table", "bargauge", "row"]},
                "gridPos": {"type": "object", "required": ["h", "w", "x", "y"],
                            "properties": {"w": {"type": "integer", "maximum": 24}}},
                "targets": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["refId", "expr"],
                    "properties": {"expr": {"type": "string", "minLength": 1}}}}},
            # A row (a collapsible header, open: its panels follow it) spans the width and
            # queries nothing; every other panel has queries.
            "if": {"properties": {"type": {"const": "row"}}},
            "then": {"required": ["collapsed", "panels"], "not": {"required": ["targets"]},
                     "properties": {"collapsed": {"const": False}, "panels": {"maxItems": 0},
                                    "gridPos": {"properties": {"w": {"const": 24}, "x": {"const": 0}}}}},
            "else": {"required": ["targets"]}}},
    },
}
RULE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "properties": {
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["alert", "expr"], "additionalProperties": False,
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h|d|w|y)$"},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        }}}}}}}},
    },
}
ALERTS = {"StreamsConsumerLagGrowing", "StreamsDeadLetterRateHigh", "StreamsPartitionStalled",
          "StreamsWorkerNotReady", "StreamsWaitingForDependency", "StreamsModelsNotLoaded"}


def _one(docs, kind):
    found = [d for d in docs if d and d.get("kind") == kind]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def rule_exprs(docs) -> list[str]:
    rule = _one(docs, "PrometheusRule")
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def test_off_by_default():
    docs = render("minimal")
    assert not [d for d in docs if d and d.get("kind") == "PrometheusRule"]
    assert not [d for d in docs if d and d.get("kind") == "ConfigMap" and "dashboard" in d["metadata"]["name"]]


def test_the_dashboard_is_a_labelled_configmap_of_the_shipped_json():
    docs = render("observability")
    cm = [d for d in docs if d and d.get("kind") == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert len(cm) == 1
    assert cm[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm[0]["metadata"]["annotations"]["grafana_folder"] == "Streams"
    assert json.loads(cm[0]["data"]["streams-enricher.json"]) == dashboard()
    jsonschema.validate(dashboard(), DASHBOARD_SCHEMA)


def test_the_dashboard_answers_the_operators_questions():
    titles = " ".join(p["title"].lower() for p in dashboard()["panels"])
    for topic in ("throughput", "lag per partition", "batch size", "inference", "dead letters", "ready",
                  "label agreement", "entity span f1", "typed fields equal", "shadow records"):
        assert topic in titles, topic


def test_the_dashboard_tells_a_starved_engine_from_a_saturated_one():
    """Duty cycle (rate of busy seconds), batch fill and the queue ahead of the engine, each in
    a panel of its own, generated by helm/tools/gen_dashboard.py (the shipped JSON is its output)."""
    import importlib.util

    from .chart import CHART

    panels = {p["title"].split(" (")[0]: p for p in dashboard()["panels"]}
    duty, fill, queue = (panels[t] for t in ("Engine duty cycle", "Batch fill per forward pass",
                                            "Queue depth ahead of the engine"))
    assert all("rate(streams_engine_busy_seconds_total{" in t["expr"] for t in duty["targets"])
    assert duty["fieldConfig"]["defaults"]["unit"] == fill["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert metric_names(t["expr"] for t in fill["targets"]) == {"streams_engine_batch_fill"}
    assert metric_names(t["expr"] for t in queue["targets"]) == {"streams_engine_queue_depth"}
    spec = importlib.util.spec_from_file_location("gen_dashboard", CHART.parent / "tools" / "gen_dashboard.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.dashboard() == dashboard()


def test_the_alerts_validate_and_use_the_configured_thresholds():
    docs = render("observability", "metrics.prometheusRule.lagThreshold=777",
                  "metrics.prometheusRule.notReadyMinutes=3")
    rule = _one(docs, "PrometheusRule")
    jsonschema.validate(rule, RULE_SCHEMA)
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == ALERTS
    assert "> 777" in rules["StreamsConsumerLagGrowing"]["expr"]
    assert rules["StreamsWorkerNotReady"]["for"] == "3m"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert "{{ $labels.pod }}" in rules["StreamsWorkerNotReady"]["annotations"]["summary"]


def known_metric_names() -> set[str]:
    """The Prometheus names of the instruments streams/telemetry/metrics.py defines."""
    from streams.telemetry.metrics import StreamMetrics
    import inspect
    defined = {n.replace(".", "_") for n in re.findall(r'"(streams\.[a-z_.]+)"', inspect.getsource(StreamMetrics))}
    # Prometheus adds the unit and _total: streams.inference.duration (s) -> ..._seconds,
    # the counter streams.engine.busy (s) -> ..._seconds_total.
    return {d for d in defined} | {d + "_total" for d in defined} | {d + "_seconds" for d in defined} \
        | {d + "_seconds_total" for d in defined}


@pytest.mark.parametrize("source", ["dashboard", "candidate row", "alerts"])
def test_queries_name_only_streams_metrics_that_the_code_defines(source):
    exprs = {"dashboard": dashboard_exprs,
             "candidate row": lambda: [t["expr"] for p in row_panels(CANDIDATE_ROW) for t in p["targets"]],
             "alerts": lambda: rule_exprs(render("observability"))}[source]()
    used = metric_names(exprs)
    known = known_metric_names()
    assert used and used <= known, used - known


# ---- the candidate's shadow traffic ---------------------------------------------------------

CANDIDATE_PANELS = {  # title (up to " (" or ","): the metric families it reads
    "Label agreement with the live records": {"streams_shadow_labels_agreed_total", "streams_shadow_compared_total"},
    "Entity span F1 against the live records": {"streams_shadow_entity_spans_total"},
    "Typed fields equal to the live record's": {"streams_shadow_fields_total"},
    "Shadow records per second by outcome": {"streams_shadow_events_total"},
}


def _short(title: str) -> str:
    return re.split(r" \(|,", title)[0]


def test_the_candidate_row_compares_the_candidate_with_the_live_records():
    """A row "Candidate (shadow traffic)" after the live panels, and under it, per candidate and
    input topic: label agreement, entity span F1, typed fields equal (ratios, 0 to 1) and the
    shadow records by outcome, dead letters by reason."""
    panels = dashboard()["panels"]
    rows = [p for p in panels if p["type"] == "row"]
    assert [r["title"] for r in rows] == [CANDIDATE_ROW]
    under = row_panels(CANDIDATE_ROW)
    assert {_short(p["title"]): metric_names(t["expr"] for t in p["targets"]) for p in under} == CANDIDATE_PANELS
    # Only this row reads streams_shadow_*, and it sits below every live panel.
    assert not {n for n in metric_names(dashboard_exprs(without_rows=(CANDIDATE_ROW,))) if "shadow" in n}
    row_y = rows[0]["gridPos"]["y"]
    above = [p for p in panels if p not in under and p["type"] != "row"]
    assert all(p["gridPos"]["y"] + p["gridPos"]["h"] <= row_y for p in above)
    assert all(p["gridPos"]["y"] > row_y for p in under)
    assert len({p["id"] for p in panels}) == len(panels)
    by_title = {_short(p["title"]): p for p in under}
    for title in ("Label agreement with the live records", "Entity span F1 against the live records",
                  "Typed fields equal to the live record's"):
        panel = by_title[title]
        assert panel["fieldConfig"]["defaults"] == {"unit": "percentunit", "min": 0, "max": 1}, title
        [target] = panel["targets"]
        assert target["legendFormat"] == "{{candidate}} on {{messaging_destination_name}}"
    for panel in under:
        for target in panel["targets"]:
            for grouping in re.findall(r"\bby\s*\(([^)]*)\)", target["expr"]):
                assert {"candidate", "messaging_destination_name"} <= {g.strip() for g in grouping.split(",")}, target
            assert 'job=~"$job"' in target["expr"]
    f1 = by_title["Entity span F1 against the live records"]["targets"][0]["expr"]
    assert f1.startswith("2 * ") and 'side="matched"' in f1 and 'side=~"live|candidate"' in f1
    fields = by_title["Typed fields equal to the live record's"]["targets"][0]["expr"]
    assert 'result="equal"' in fields and 'result=~"equal|differs"' in fields
    agreement = by_title["Label agreement with the live records"]["targets"][0]["expr"]
    assert agreement.index("streams_shadow_labels_agreed_total") < agreement.index(" / ") \
        < agreement.index("streams_shadow_compared_total")
    records = by_title["Shadow records per second by outcome"]["targets"]
    assert ['outcome="enriched"' in t["expr"] for t in records] == [True, False]
    assert 'outcome="dead_lettered"' in records[1]["expr"] and "reason" in records[1]["expr"]
    assert "{{reason}}" in records[1]["legendFormat"]


def test_the_candidate_queries_match_the_series_the_worker_exports(monkeypatch):
    """What the candidate row selects and groups by is what a worker's /metrics carries once a
    candidate ran: the families, the label values matched (side, result, outcome) and the
    labels grouped by, from StreamMetrics.record_shadow through the Prometheus exposition."""
    from streams.agreement import Agreement
    from streams.telemetry import Telemetry

    for name in [k for k in __import__("os").environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    telemetry = Telemetry.from_environment("streams-test", "g")
    try:
        telemetry.metrics.record_shadow("support.tickets", "llm-labels", 3, ["decode"],
                                        [Agreement(True, 2, 3, 2, 4, 3), Agreement(False, 1, 0, 0, 4, 4)])
        body = telemetry.prometheus_text()[0].decode()
    finally:
        telemetry.shutdown()
    series: dict[str, list[dict[str, str]]] = {}
    for line in body.splitlines():
        if line.startswith("streams_shadow_"):
            name, _, labels = line.partition("{")
            series.setdefault(name, []).append(dict(re.findall(r'(\w+)="([^"]*)"', labels.rpartition("}")[0])))
    for panel in row_panels(CANDIDATE_ROW):
        for target in panel["targets"]:
            expr = target["expr"]
            assert metric_names([expr]) <= set(series), (panel["title"], set(series))
            for name, selector in re.findall(r"\b(streams_[a-z_]+)\{([^}]*)\}", expr):
                for label, op, value in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', selector):
                    if label == "job":
                        continue  # Prometheus adds it at scrape time
                    wanted = value.split("|") if op == "=~" else [value]
                    have = {s.get(label) for s in series[name]}
                    assert set(wanted) <= have, (name, label, wanted, have)
            for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
                for label in (g.strip() for g in grouping.split(",")):
                    for name in metric_names([expr]):
                        assert all(label in s for s in series[name]), (name, label)
