"""One event followed through a running worker: its producer's W3C trace context goes in, the
worker's spans reach an OTLP gRPC receiver, the enriched and dead-letter records carry the
continued context, /metrics counts what happened, and the JSON log lines carry trace ids."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from confluent_kafka import Producer
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from streams.kafka import consumer, ensure_topics
from tests.fixtures.kafka_io import Scenario, WorkerProcess, json_events

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = []

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                self.spans.extend(ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def _attrs(span) -> dict:
    return {kv.key: (kv.value.string_value or kv.value.int_value) for kv in span.attributes}


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_trace_metrics_and_logs_through_a_running_worker(broker, tiny_models, model_cache, tmp_path):
    receiver = TraceReceiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path, extra_env={
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_SERVICE_NAME": "enricher-under-test", "STREAMS_LOG_FORMAT": "json"})
    settings = scenario.settings
    ensure_topics(settings)
    worker = WorkerProcess(scenario).start()
    try:
        prod = Producer(settings.librdkafka_config() | {"acks": "all"})
        headers = [("traceparent", PARENT.encode()), ("tracestate", b"vendor=1")]
        for key, value in json_events(3, prefix="traced"):
            prod.produce(scenario.input, key=key, value=value, headers=headers)
        prod.produce(scenario.input, key=b"poison", value=b"{not json", headers=headers)
        assert prod.flush(30) == 0

        reader = consumer(settings, f"obs-reader-{scenario.name}")
        reader.subscribe([scenario.output, scenario.dlq])
        out: dict[str, list[dict]] = {scenario.output: [], scenario.dlq: []}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (len(out[scenario.output]) < 3 or not out[scenario.dlq]):
            for msg in reader.consume(100, 0.5):
                if not msg.error():
                    out[msg.topic()].append(dict(msg.headers() or []))
        reader.close()
        assert len(out[scenario.output]) == 3 and len(out[scenario.dlq]) == 1, worker.log()[-3000:]

        # The subscriber's trace continues: same trace id, a new parent span (the worker's).
        for record_headers in out[scenario.output] + out[scenario.dlq]:
            version, trace_id, span_id, flags = record_headers["traceparent"].decode().split("-")
            assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
            assert span_id != "00f067aa0ba902b7"
            assert record_headers["tracestate"] == b"vendor=1"

        # The worker's spans arrive over OTLP gRPC, per event parented on the producer's span.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(s.name.startswith("send") for s in receiver.spans):
            time.sleep(0.2)
        ours = [s for s in receiver.spans if s.trace_id.hex() == TRACE_ID]
        events = [s for s in ours if s.name == f"enrich {scenario.input}"]
        assert len(events) == 4, [s.name for s in receiver.spans]
        assert all(s.parent_span_id.hex() == "00f067aa0ba902b7" for s in events)
        attrs = _attrs(events[0])
        assert attrs["messaging.system"] == "kafka"
        assert attrs["messaging.destination.name"] == scenario.input
        assert attrs["messaging.consumer.group.name"] == settings.app_id
        assert "messaging.kafka.offset" in attrs and "messaging.destination.partition.id" in attrs
        batches = [s for s in receiver.spans if s.name == f"process {scenario.input}"]
        assert batches and any(link.trace_id.hex() == TRACE_ID for b in batches for link in b.links)
        sends = {s.name for s in ours if s.name.startswith("send")}
        assert sends == {f"send {scenario.output}", f"send {scenario.dlq}"}

        # Metrics on the worker's HTTP port, Prometheus text format.
        with urllib.request.urlopen(f"http://127.0.0.1:{scenario.health_port}/metrics", timeout=5) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
        assert _metric(text, "streams_events_consumed_total", messaging_destination_name=scenario.input) == 4
        assert _metric(text, "streams_events_enriched_total", messaging_destination_name=scenario.input) == 3
        assert _metric(text, "streams_events_dead_lettered_total", reason="invalid_json") == 1
        assert _metric(text, "streams_event_latency_seconds_count", messaging_destination_name=scenario.input) == 4
        assert re.search(r"^streams_model_load_duration_seconds\{", text, re.M)
        assert _metric(text, "streams_events_in_flight", messaging_destination_name=scenario.input) == 0
    finally:
        worker.stop()
        server.stop(grace=None)

    # JSON lines; the dead-letter warning carries the producer's trace id; no event text.
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert lines, worker.log()[-2000:]
    dead = [entry for entry in lines if "dead-lettering" in entry.get("message", "")]
    assert dead and dead[0]["trace_id"] == TRACE_ID and dead[0]["level"] == "WARNING"
    assert not any("charged twice" in json.dumps(entry) for entry in lines)
