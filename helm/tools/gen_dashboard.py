"""Writes helm/streams-enricher/dashboards/streams-enricher.json, the Grafana dashboard the chart
ships (metrics.grafanaDashboard). One panel per question an operator asks; every query uses only
metrics the worker exports at /metrics (tests/helm/test_observability_chart.py checks both)."""

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


def dashboard() -> dict:
    panels = []
    for i, (title, unit, kind, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": kind, "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
            "targets": [{"refId": chr(65 + j), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for j, (expr, legend) in enumerate(targets)],
        })
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
