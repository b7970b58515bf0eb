"""Telemetry.from_environment: the OTEL_* variables, and real export over OTLP (gRPC and
HTTP/protobuf) to in-process receivers, and the standalone Prometheus scrape server."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from streams.broker import free_port
from streams.pipeline import enrich_records
from streams.telemetry import Telemetry, service_resource
from streams.telemetry.core import metric_exporters, span_exporters

from .conftest import GROUP, TOPIC, event, record, traceparent

OTEL_VARS = ("OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_EXPORTER",
             "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
             "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_ENDPOINT",
             "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
             "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG")
TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
SPAN_ID = 0xEEE19B7EC3C1B174


@pytest.fixture
def clean_env(monkeypatch):
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def attrs_of(proto_span) -> dict:
    out = {}
    for kv in proto_span.attributes:
        value = kv.value
        out[kv.key] = value.string_value if value.HasField("string_value") else \
            value.int_value if value.HasField("int_value") else value.bool_value
    return out


def resource_attr(resource, key):
    return next(kv.value.string_value for kv in resource.attributes if kv.key == key)


def test_nothing_configured(clean_env):
    telemetry = Telemetry.from_environment("streams-enricher", GROUP)
    assert not telemetry.tracing_enabled
    assert telemetry.prometheus_registry is not None  # scraping needs no configuration
    assert telemetry.group == GROUP


@pytest.mark.parametrize("value", ["none", "", " none "])
def test_none_means_off(clean_env, value):
    clean_env.setenv("OTEL_TRACES_EXPORTER", value)
    assert not Telemetry.from_environment().tracing_enabled


def test_exporter_choice(clean_env):
    assert [type(e) for e in span_exporters(["console"])] == [ConsoleSpanExporter]
    assert [type(e) for e in span_exporters(["otlp"])] == [GrpcSpans]  # grpc by default
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert [type(e) for e in span_exporters(["otlp"])] == [HttpSpans]
    assert [type(e) for e in metric_exporters(["otlp", "console"])] == [HttpMetrics, ConsoleMetricExporter]
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")  # the signal's own wins
    assert [type(e) for e in span_exporters(["otlp"])] == [GrpcSpans]
    assert [type(e) for e in metric_exporters(["otlp"])] == [HttpMetrics]
    clean_env.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")
    assert [type(e) for e in metric_exporters(["otlp"])] == [GrpcMetrics]


def test_configuration_errors_stop_start_up(clean_env):
    clean_env.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER.*jaeger"):
        Telemetry.from_environment()
    clean_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="http/json"):
        Telemetry.from_environment()
    clean_env.setenv("OTEL_SDK_DISABLED", "true")  # disabled: nothing is even parsed
    assert not Telemetry.from_environment().tracing_enabled


def test_console_tracing(clean_env, runtime, settings, capsys):
    clean_env.setenv("OTEL_TRACES_EXPORTER", "console")
    telemetry = Telemetry.from_environment("streams-console", GROUP)
    assert telemetry.tracing_enabled
    runtime.telemetry = telemetry
    enrich_records(runtime, settings.route(TOPIC), [record(1, event("a"))])
    telemetry.shutdown()
    out = capsys.readouterr().out
    assert '"name": "enrich orders.notes"' in out and '"service.name": "streams-console"' in out


def test_service_name(clean_env):
    assert service_resource("streams-enricher").attributes["service.name"] == "streams-enricher"
    clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,deployment.environment=test")
    resource = service_resource("streams-enricher")
    assert resource.attributes["service.name"] == "from-attrs"
    assert resource.attributes["deployment.environment"] == "test"
    clean_env.setenv("OTEL_SERVICE_NAME", "from-env")
    assert service_resource("streams-enricher").attributes["service.name"] == "from-env"


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.requests: list = []

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self):
        self.requests: list = []

    def Export(self, request, context):  # noqa: N802
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def grpc_receiver():
    traces, metrics = TraceReceiver(), MetricsReceiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(traces, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(metrics, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", traces, metrics
    server.stop(grace=None)


def spans_of(requests) -> tuple[list, list]:
    spans, resources = [], []
    for request in requests:
        for rs in request.resource_spans:
            resources.append(rs.resource)
            for ss in rs.scope_spans:
                spans.extend(ss.spans)
    return spans, resources


def run_one_batch(runtime, settings, telemetry):
    runtime.telemetry = telemetry
    records = [record(7, event("otlp-1"), [("traceparent", traceparent(TRACE_ID, SPAN_ID))], partition=2),
               record(8, b"broken", partition=2)]
    result = enrich_records(runtime, settings.route(TOPIC), records)
    assert telemetry.force_flush(10_000)
    telemetry.shutdown()
    return result


def test_otlp_grpc_export(clean_env, grpc_receiver, runtime, settings):
    endpoint, traces, metrics = grpc_receiver
    clean_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    clean_env.setenv("OTEL_METRICS_EXPORTER", "otlp")
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    clean_env.setenv("OTEL_SERVICE_NAME", "enricher-otlp-test")
    clean_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")  # only the flush exports
    telemetry = Telemetry.from_environment("streams-enricher", GROUP)
    assert telemetry.tracing_enabled
    run_one_batch(runtime, settings, telemetry)

    spans, resources = spans_of(traces.requests)
    assert {resource_attr(r, "service.name") for r in resources} == {"enricher-otlp-test"}
    names = sorted(s.name for s in spans)
    assert names == sorted([f"process {TOPIC}", f"enrich {TOPIC}", f"enrich {TOPIC}", "inference",
                            "send orders.notes.enriched", "send orders.notes.dlq"])
    continued = next(s for s in spans if s.name == f"enrich {TOPIC}" and s.trace_id == TRACE_ID.to_bytes(16, "big"))
    assert continued.parent_span_id == SPAN_ID.to_bytes(8, "big")
    assert continued.kind == continued.SPAN_KIND_CONSUMER
    attrs = attrs_of(continued)
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == TOPIC
    assert attrs["messaging.destination.partition.id"] == "2"
    assert attrs["messaging.kafka.offset"] == 7
    assert attrs["messaging.consumer.group.name"] == GROUP
    assert attrs["messaging.operation.type"] == "process"
    batch = next(s for s in spans if s.name == f"process {TOPIC}")
    assert [link.span_id for link in batch.links] == [SPAN_ID.to_bytes(8, "big")]
    dlq = next(s for s in spans if s.name == "send orders.notes.dlq")
    assert attrs_of(dlq)["streams.dlq.reason"] == "invalid_json"

    exported = {m.name: m for req in metrics.requests for rm in req.resource_metrics
                for sm in rm.scope_metrics for m in sm.metrics}
    consumed = exported["streams.events.consumed"].sum.data_points
    assert sum(p.as_int for p in consumed) == 2
    assert exported["streams.event.latency"].histogram.data_points[0].count == 2


class _HttpCollector(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            type(self).received.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(b"")

    def log_message(self, *args):
        pass


def test_otlp_http_protobuf_export(clean_env, runtime, settings):
    _HttpCollector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HttpCollector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        clean_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
        clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
        clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{server.server_port}/v1/traces")
        run_one_batch(runtime, settings, Telemetry.from_environment("streams-http", GROUP))
    finally:
        server.shutdown()
    spans, resources = spans_of(_HttpCollector.received)
    assert {resource_attr(r, "service.name") for r in resources} == {"streams-http"}
    assert len([s for s in spans if s.name == f"enrich {TOPIC}"]) == 2
    assert any(s.trace_id == TRACE_ID.to_bytes(16, "big") for s in spans)


def test_prometheus_exporter_serves_its_own_port(clean_env):
    port = free_port()
    clean_env.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    clean_env.setenv("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
    clean_env.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", str(port))
    telemetry = Telemetry.from_environment("streams-prom", GROUP)
    try:
        telemetry.add_in_flight(2, TOPIC, 0)
        deadline = time.monotonic() + 10
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert 'streams_events_in_flight{messaging_destination_name="orders.notes",' \
               'messaging_destination_partition_id="0"' in body
        assert body == telemetry.prometheus_text()[0].decode()
    finally:
        telemetry.shutdown()


def test_runtime_defaults_to_the_process_telemetry(clean_env, settings, monkeypatch):
    from streams.engine import NoopEngine
    from streams.runtime import Runtime
    from streams.serde import SchemaCatalog
    from streams.telemetry import core

    from .conftest import NoProducer

    monkeypatch.setattr(core, "_default", None)  # as in a fresh process
    catalog = SchemaCatalog.from_settings(settings)
    first = Runtime(settings, NoopEngine(), catalog, NoProducer())  # no telemetry passed
    second = Runtime(settings, NoopEngine(), catalog, NoProducer())
    assert first.telemetry is second.telemetry is core.default_telemetry()
    assert not first.telemetry.tracing_enabled and first.telemetry.group == settings.app_id
    result = enrich_records(first, settings.route(TOPIC), [record(1, event("a"))])
    assert result.enriched == 1 and result.trace is None
    assert b"streams_events_enriched_total{" in first.telemetry.prometheus_text()[0]
    first.telemetry.shutdown()
    first.telemetry.shutdown()  # idempotent (atexit calls it again)
