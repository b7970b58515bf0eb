"""Writes helm/streams-enricher/dashboards/streams-enricher.json, the Grafana dashboard the chart
ships (metrics.grafanaDashboard). One panel per question an operator asks; every query uses only
metrics the worker exports at /metrics (tests/helm/test_observability_chart.py checks both).
The live stream's panels come first, then a row per concern (ROWS): the candidates' shadow traffic."""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "streams-enricher" / "dashboards" / "streams-enricher.json"
SEL = 'job=~"$job"'

PANELS = [
    # (title, unit, type, [(expr, legend)])
    ("Throughput: events consumed / enriched / dead-lettered per second", "ops", "timeseries", [
        (f"sum(rate(streams_events_consumed_total{{{SEL}}}[5m]))", "consumed"),
        (f"sum(rate(streams_events_enriched_total{{{SEL}}}[5m]))", "enriched"),
        (f"sum(rate(streams_events_dead_lettered_total{{{SEL}}}[5m]))", "dead-lettered")]),
    ("Consumer lag per partition", "short", "timeseries", [
        (f"max by (messaging_destination_name, messaging_destination_partition_id) "
         f"(streams_consumer_lag{{{SEL}}})", "{{messaging_destination_name}}[{{messaging_destination_partition_id}}]")]),
    ("Dead letters per second by reason", "ops", "timeseries", [
        (f"sum by (reason) (rate(streams_events_dead_lettered_total{{{SEL}}}[5m]))", "{{reason}}")]),
    ("Micro-batch size (p50, p95)", "short", "timeseries", [
        (f"histogram_quantile(0.5, sum by (le) (rate(streams_batch_size_bucket{{{SEL}}}[5m])))", "p50"),
        (f"histogram_quantile(0.95, sum by (le) (rate(streams_batch_size_bucket{{{SEL}}}[5m])))", "p95")]),
    ("Inference time per micro-batch (p50, p99)", "s", "timeseries", [
        (f"histogram_quantile(0.5, sum by (le) (rate(streams_inference_duration_seconds_bucket{{{SEL}}}[5m])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(streams_inference_duration_seconds_bucket{{{SEL}}}[5m])))", "p99")]),
    ("End-to-end latency (p50, p99)", "s", "timeseries", [
        (f"histogram_quantile(0.5, sum by (le) (rate(streams_event_latency_seconds_bucket{{{SEL}}}[5m])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(streams_event_latency_seconds_bucket{{{SEL}}}[5m])))", "p99")]),
    ("Produce until acknowledged (p99)", "s", "timeseries", [
        (f"histogram_quantile(0.99, sum by (le) (rate(streams_produce_duration_seconds_bucket{{{SEL}}}[5m])))", "p99")]),
    ("Workers ready / waiting for a dependency / stalled partitions", "short", "timeseries", [
        (f"sum(streams_worker_ready{{{SEL}}})", "ready"),
        (f"sum(streams_worker_degraded{{{SEL}}})", "waiting for a dependency"),
        (f"sum(streams_partitions_stalled{{{SEL}}})", "stalled partitions")]),
    ("Batch retries by dependency", "short", "timeseries", [
        (f"sum by (streams_dependency) (increase(streams_batch_retries_total{{{SEL}}}[5m]))", "{{streams_dependency}}")]),
    ("Events in flight", "short", "timeseries", [
        (f"sum(streams_events_in_flight{{{SEL}}})", "in flight")]),
    ("Model load time", "s", "stat", [
        (f"max(streams_model_load_duration_seconds{{{SEL}}})", "load")]),
    # Starved or saturated: a duty cycle near 1 is an engine at capacity (more GPUs, more
    # partitions and workers); a low one with an empty queue is an engine the stream starves.
    ("Engine duty cycle (inference busy time / wall time)", "percentunit", "timeseries", [
        (f"avg(rate(streams_engine_busy_seconds_total{{{SEL}}}[5m]))", "mean of workers"),
        (f"max(rate(streams_engine_busy_seconds_total{{{SEL}}}[5m]))", "busiest worker")]),
    ("Batch fill per forward pass (rows / the engine's max batch)", "percentunit", "timeseries", [
        (f"sum by (streams_engine) (rate(streams_engine_batch_fill_sum{{{SEL}}}[5m])) / "
         f"sum by (streams_engine) (rate(streams_engine_batch_fill_count{{{SEL}}}[5m]))", "mean {{streams_engine}}"),
        (f"histogram_quantile(0.5, sum by (le, streams_engine) (rate(streams_engine_batch_fill_bucket{{{SEL}}}[5m])))",
         "p50 {{streams_engine}}")]),
    ("Queue depth ahead of the engine (events waiting for inference)", "short", "timeseries", [
        (f"sum by (messaging_destination_name) (streams_engine_queue_depth{{{SEL}}})",
         "{{messaging_destination_name}}")]),
]


# A route's candidate (config.topics[].candidate) runs on a share of the route's events; its
# records go to a shadow topic and `streams.shadow.*` counts them and how they agree with the live
# records of the same events (streams/telemetry/metrics.py). Per candidate and input topic:
# label agreement = labels_agreed / compared, entity span F1 = 2 x matched / (live + candidate),
# typed fields equal = equal / (equal + differs). No data until a route names a candidate.
BY = "candidate, messaging_destination_name"
ON = "{{candidate}} on {{messaging_destination_name}}"
RATIO = {"min": 0, "max": 1}


def _rate(metric: str, match: str = "") -> str:
    return f"sum by ({BY}) (rate({metric}{{{SEL}{',' + match if match else ''}}}[5m]))"


MATCHED = _rate("streams_shadow_entity_spans_total", 'side="matched"')
SPANS = _rate("streams_shadow_entity_spans_total", 'side=~"live|candidate"')
FIELDS_EQUAL = _rate("streams_shadow_fields_total", 'result="equal"')
FIELDS = _rate("streams_shadow_fields_total", 'result=~"equal|differs"')
DEAD = (f"sum by ({BY}, reason) "
        f'(rate(streams_shadow_events_total{{{SEL},outcome="dead_lettered"}}[5m]))')

CANDIDATE_PANELS = [
    # (title, unit, type, [(expr, legend)], fieldConfig defaults, description)
    ("Label agreement with the live records, by candidate and topic", "percentunit", "timeseries", [
        (f"{_rate('streams_shadow_labels_agreed_total')} / {_rate('streams_shadow_compared_total')}", ON)],
     RATIO, "Share of the events both configurations enriched where the candidate's label is the "
            "live label: rate(streams_shadow_labels_agreed_total) / rate(streams_shadow_compared_total)."),
    ("Entity span F1 against the live records", "percentunit", "timeseries", [
        (f"2 * {MATCHED} / {SPANS}", ON)],
     RATIO, "2 x matched spans / (live spans + candidate spans), from streams_shadow_entity_spans_total{side}; "
            "1 when both find the same entities."),
    ("Typed fields equal to the live record's", "percentunit", "timeseries", [
        (f"{FIELDS_EQUAL} / {FIELDS}", ON)],
     RATIO, 'Share of the typed fields compared that are equal: streams_shadow_fields_total{result="equal"} '
            "/ (equal + differs). No data for routes without fields."),
    ("Shadow records per second by outcome (dead-lettered by reason)", "ops", "timeseries", [
        (_rate("streams_shadow_events_total", 'outcome="enriched"'), f"{ON}: enriched"),
        (DEAD, f"{ON}: dead-lettered ({{{{reason}}}})")],
     {}, "The candidate's records: enriched (to its shadow output) and dead-lettered (to its shadow "
         "DLQ), by reason, from streams_shadow_events_total."),
]

# (row title, panels) after the live stream's panels.
ROWS = [("Candidate (shadow traffic)", CANDIDATE_PANELS)]


def _panel(pid: int, title: str, unit: str, kind: str, targets, x: int, y: int,
           defaults: dict | None = None, description: str | None = None) -> dict:
    panel = {
        "id": pid, "type": kind, "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": []},
        "options": {},
        "targets": [{"refId": chr(65 + j), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for j, (expr, legend) in enumerate(targets)],
    }
    if description:
        panel["description"] = description
    return panel


def dashboard() -> dict:
    panels = []
    for i, (title, unit, kind, targets) in enumerate(PANELS):
        panels.append(_panel(len(panels) + 1, title, unit, kind, targets, 12 * (i % 2), 8 * (i // 2)))
    y = 8 * ((len(PANELS) + 1) // 2)
    for row_title, row_panels in ROWS:
        panels.append({"id": len(panels) + 1, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        y += 1
        for i, (title, unit, kind, targets, defaults, description) in enumerate(row_panels):
            panels.append(_panel(len(panels) + 1, title, unit, kind, targets, 12 * (i % 2), y + 8 * (i // 2),
                                 defaults, description))
        y += 8 * ((len(row_panels) + 1) // 2)
    return {
        "uid": "streams-enricher", "title": "Streams enricher", "tags": ["kafka", "streams-enricher"],
        "schemaVersion": 39, "version": 1, "editable": True, "timezone": "browser",
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "job", "type": "query", "label": "Job", "includeAll": True, "multi": True,
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(streams_events_consumed_total, job)", "refresh": 2},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")
