"""The Grafana dashboard and the PrometheusRule alerts the chart ships: off by default, rendered
with the sidecar label / operator CRD shape, their schemas validated offline, every query
reading metrics the worker exports (the names are checked against a running worker's
/metrics in tests/integration/test_health.py)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from .chart import render
from .observability import dashboard, dashboard_exprs, metric_names

# The parts of Grafana's dashboard model (schemaVersion 39) and of the Prometheus Operator's
# PrometheusRule CRD that a loader rejects when wrong; neither schema ships offline.
DASHBOARD_SCHEMA = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["id", "type", "title", "gridPos", "targets"],
            "properties": {
                "type": {"enum": ["timeseries", "stat", "gauge", "table", "bargauge"]},
                "gridPos": {"type": "object", "required": ["h", "w", "x", "y"],
                            "properties": {"w": {"type": "integer", "maximum": 24}}},
                "targets": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["refId", "expr"],
                    "properties": {"expr": {"type": "string", "minLength": 1}}}}}}},
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
    for topic in ("throughput", "lag per partition", "batch size", "inference", "dead letters", "ready"):
        assert topic in titles, topic


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


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_queries_name_only_streams_metrics_that_the_code_defines(source):
    exprs = dashboard_exprs() if source == "dashboard" else rule_exprs(render("observability"))
    from streams.telemetry.metrics import StreamMetrics
    import inspect
    defined = {n.replace(".", "_") for n in __import__("re").findall(r'"(streams\.[a-z_.]+)"',
                                                                    inspect.getsource(StreamMetrics))}
    used = metric_names(exprs)
    # Prometheus adds the unit and _total: streams.inference.duration (s) -> ..._seconds.
    known = {d for d in defined} | {d + "_total" for d in defined} | {d + "_seconds" for d in defined}
    assert used and used <= known, used - known
