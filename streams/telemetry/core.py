"""`Telemetry`: the tracer, the instruments and the Prometheus registry of one process.

Built from the standard OpenTelemetry environment (`Telemetry.from_environment`), or from
explicit span processors and metric readers (`Telemetry.create`: tests pass an in-memory
exporter and reader; nothing global is touched, so any number can live in one process).

Environment (read once, at start-up):

| variable | values | default |
|---|---|---|
| OTEL_SDK_DISABLED | true: no traces, no metrics (/metrics answers an empty page) | false |
| OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES | the resource | the app id |
| OTEL_TRACES_EXPORTER | otlp, console, none (comma-separated) | none: tracing off |
| OTEL_METRICS_EXPORTER | otlp, console, prometheus, none | none: /metrics only |
| OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL | grpc, http/protobuf | grpc |
| OTEL_EXPORTER_OTLP_*ENDPOINT, _HEADERS, _INSECURE, _TIMEOUT... | read by the exporters | |
| OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*, OTEL_METRIC_EXPORT_INTERVAL | read by the SDK | |
| OTEL_EXPORTER_PROMETHEUS_HOST / _PORT | with `prometheus`: a second scrape server | localhost / 9464 |

The Prometheus registry behind `prometheus_text()` (the worker's `/metrics`) is always there
unless the SDK is disabled: scraping needs no configuration."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Iterable, Sequence

from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import METER_NAME, StreamMetrics
from .tracing import BatchTrace

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client import CollectorRegistry

    from ..records import InRecord

log = logging.getLogger("streams.telemetry")

PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST
OTLP_PROTOCOLS = ("grpc", "http/protobuf")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("streams")
    except Exception:  # noqa: BLE001
        return "0"


class Telemetry:
    """What `Runtime` holds as `runtime.telemetry`.

    - `tracing_enabled`: checked once per batch; when False no tracing object is made per event.
    - `metrics`: the instruments (`StreamMetrics`).
    - `start_batch(...)`: the spans of one batch (used by `enrich_records`).
    - for the worker loop: `add_in_flight`, `add_queued`, `record_produce`, `record_lag`,
      `prometheus_text`, `force_flush`, `shutdown`.
    """

    def __init__(self, *, tracer_provider: trace_api.TracerProvider | None = None,
                 meter_provider: metrics_api.MeterProvider | None = None,
                 prometheus_registry: "CollectorRegistry | None" = None, group: str = ""):
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider or metrics_api.NoOpMeterProvider()
        self.tracing_enabled = tracer_provider is not None
        self.tracer = tracer_provider.get_tracer("streams", _version()) if tracer_provider else None
        self.meter = self.meter_provider.get_meter(METER_NAME, _version())
        self.metrics = StreamMetrics(self.meter)
        self.prometheus_registry = prometheus_registry
        self.group = group
        self._servers: list = []
        self._shut_down = False

    # --- construction -------------------------------------------------------------------

    @classmethod
    def disabled(cls, group: str = "") -> "Telemetry":
        """No traces, no metrics: every call is a no-op."""
        return cls(group=group)

    @classmethod
    def create(cls, *, service_name: str = "streams", group: str = "",
               span_processors: Sequence[SpanProcessor] = (),
               metric_readers: Sequence[MetricReader] = (), prometheus: bool = True,
               resource: Resource | None = None, sampler=None) -> "Telemetry":
        """SDK providers of its own (never the global ones). Tracing is on when there is a span
        processor; `prometheus`: a registry of its own for `prometheus_text()`."""
        resource = resource or service_resource(service_name)
        tracer_provider = None
        if span_processors:
            tracer_provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
            for processor in span_processors:
                tracer_provider.add_span_processor(processor)
        readers = list(metric_readers)
        registry = None
        if prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=True)
            readers.append(PrometheusMetricReader(registry=registry))
        meter_provider = MeterProvider(metric_readers=readers, resource=resource,
                                       shutdown_on_exit=False) if readers else None
        return cls(tracer_provider=tracer_provider, meter_provider=meter_provider,
                   prometheus_registry=registry, group=group)

    @classmethod
    def from_environment(cls, service_name: str = "streams", group: str = "") -> "Telemetry":
        """Configured by the standard OTEL_* variables (module docstring). Raises ValueError
        on an exporter or protocol it does not know, so a typo stops the worker at start-up."""
        env = os.environ
        if _true(env.get("OTEL_SDK_DISABLED")):
            return cls.disabled(group)
        processors = [BatchSpanProcessor(exporter)
                      for exporter in span_exporters(_names(env.get("OTEL_TRACES_EXPORTER")))]
        metric_names = _names(env.get("OTEL_METRICS_EXPORTER"))
        readers = [PeriodicExportingMetricReader(exporter)
                   for exporter in metric_exporters([n for n in metric_names if n != "prometheus"])]
        telemetry = cls.create(service_name=service_name, group=group, span_processors=processors,
                               metric_readers=readers, prometheus=True)
        if "prometheus" in metric_names:
            telemetry.serve_prometheus(env.get("OTEL_EXPORTER_PROMETHEUS_HOST") or "localhost",
                                       int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT") or 9464))
        log.info("telemetry: traces %s, metrics %s + /metrics",
                 ",".join(_names(env.get("OTEL_TRACES_EXPORTER"))) or "none",
                 ",".join(metric_names) or "none")
        return telemetry

    # --- the batch path (enrich_records) --------------------------------------------------

    def start_batch(self, topic: str, records: Sequence["InRecord"],
                    start_ns: int | None = None, group: str | None = None) -> BatchTrace:
        """Only when `tracing_enabled`."""
        return BatchTrace(self.tracer, topic, records, self.group if group is None else group, start_ns)

    # --- for the worker loop ----------------------------------------------------------------

    def add_in_flight(self, n: int, topic: str, partition: int | None = None) -> None:
        """+n when events are taken from the consumer, -n once their output is acknowledged
        (or they are dropped, e.g. on a rebalance)."""
        if n:
            self.metrics.in_flight.add(n, self.metrics.attributes(topic, partition))

    def add_queued(self, n: int, topic: str) -> None:
        """The queue depth ahead of the engine: +n when events are taken from the consumer,
        -n as they are handed to the engine or settle without it (tombstones, undecodable)."""
        if n:
            self.metrics.queue_depth.add(n, self.metrics.attributes(topic))

    def record_produce(self, topic: str, seconds: float) -> None:
        """A batch's produce, from send until every record is acknowledged."""
        self.metrics.produce_duration.record(seconds, self.metrics.attributes(topic))

    def record_lag(self, topic: str, partition: int, lag: int) -> None:
        """Consumer lag of one assigned partition (high watermark - position)."""
        self.metrics.lag.set(lag, self.metrics.attributes(topic, partition))

    def record_retry(self, dependency: str | None) -> None:
        """A batch is being retried because `dependency` failed; None: the worker is healthy again."""
        attrs = {"streams.dependency": dependency or "none"}
        self.metrics.retries.add(0 if dependency is None else 1, attrs)  # 0: the series exists from the start
        self.metrics.degraded.set(0 if dependency is None else 1)

    def record_model_load(self, seconds: float, models: Iterable = (), device=None) -> None:
        attrs = {"streams.models": ",".join(f"{m.task}={m.name}@{m.version}" for m in models)}
        if device is not None:
            attrs["streams.device"] = str(device)
        self.metrics.model_load.set(seconds, attrs)

    def prometheus_text(self) -> tuple[bytes, str]:
        """(body, content type) for a Prometheus scrape of this process's metrics."""
        if self.prometheus_registry is None:
            return b"", PROMETHEUS_CONTENT_TYPE
        from prometheus_client import generate_latest
        return generate_latest(self.prometheus_registry), PROMETHEUS_CONTENT_TYPE

    def serve_prometheus(self, host: str, port: int) -> None:
        """A scrape server of its own (OTEL_METRICS_EXPORTER=prometheus); the worker's
        /metrics needs none."""
        if self.prometheus_registry is None:
            return
        from prometheus_client import start_http_server
        self._servers.append(start_http_server(port, addr=host, registry=self.prometheus_registry))

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        ok = True
        for provider in (self.tracer_provider, self.meter_provider):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                ok = bool(flush(timeout_millis)) and ok
        return ok

    def shutdown(self) -> None:
        """Flush and stop exporters (at process exit; later calls do nothing)."""
        if self._shut_down:
            return
        self._shut_down = True
        for provider in (self.tracer_provider, self.meter_provider):
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                try:
                    stop()
                except Exception:  # noqa: BLE001 - shutting down anyway
                    log.warning("telemetry shutdown failed", exc_info=True)
        for server in self._servers:
            try:
                server[0].shutdown()
            except Exception:  # noqa: BLE001
                pass
        self._servers.clear()


def service_resource(service_name: str) -> Resource:
    """OTEL_SERVICE_NAME, else service.name in OTEL_RESOURCE_ATTRIBUTES, else `service_name`."""
    detected = Resource.create()
    explicit = os.environ.get("OTEL_SERVICE_NAME") or \
        "service.name=" in (os.environ.get("OTEL_RESOURCE_ATTRIBUTES") or "")
    if explicit:
        return detected
    return detected.merge(Resource({SERVICE_NAME: service_name}))


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _names(value: str | None) -> list[str]:
    names = [n.strip().lower() for n in (value or "").split(",") if n.strip()]
    return [n for n in names if n != "none"]


def _protocol(signal: str) -> str:
    protocol = (os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
    if protocol not in OTLP_PROTOCOLS:
        raise ValueError(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL="
                         f"{protocol!r}: use one of {', '.join(OTLP_PROTOCOLS)}")
    return protocol


def span_exporters(names: Iterable[str]) -> list:
    exporters = []
    for name in names:
        if name == "otlp":
            if _protocol("TRACES") == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter
            exporters.append(ConsoleSpanExporter(out=sys.stdout))  # stdout now, not at import
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console, none)")
    return exporters


def metric_exporters(names: Iterable[str]) -> list:
    exporters = []
    for name in names:
        if name == "otlp":
            if _protocol("METRICS") == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            else:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            exporters.append(OTLPMetricExporter())
        elif name == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
            exporters.append(ConsoleMetricExporter(out=sys.stdout))
        else:
            raise ValueError(f"OTEL_METRICS_EXPORTER: unknown exporter {name!r} "
                             "(otlp, console, prometheus, none)")
    return exporters


_default: Telemetry | None = None
_default_lock = threading.Lock()


def default_telemetry(service_name: str = "streams", group: str = "") -> Telemetry:
    """The process's telemetry, built from the environment on the first call (later calls
    return the same object, whatever their arguments). Also installed as the global
    OpenTelemetry tracer/meter provider, for any library instrumentation, and flushed at exit
    (`streams replay` and other short commands lose no spans)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Telemetry.from_environment(service_name, group)
            atexit.register(_default.shutdown)
            if _default.tracer_provider is not None:
                trace_api.set_tracer_provider(_default.tracer_provider)
            if isinstance(_default.meter_provider, MeterProvider):
                metrics_api.set_meter_provider(_default.meter_provider)
        return _default
