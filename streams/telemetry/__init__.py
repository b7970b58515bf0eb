"""Observability: OpenTelemetry traces and metrics, Prometheus scraping, JSON logs.

    from streams.telemetry import Telemetry, default_telemetry, configure_logging

`Runtime` holds a `Telemetry` (`runtime.telemetry`, by default `default_telemetry(...)`, built
from the OTEL_* environment); `enrich_records` records the batch's spans and metrics through
it. See core.py (configuration), tracing.py (spans), metrics.py (instruments), logs.py."""

from .core import PROMETHEUS_CONTENT_TYPE, Telemetry, default_telemetry, service_resource
from .logs import JsonFormatter, TraceContextFilter, configure_logging, log_format, logging_config
from .metrics import METER_NAME, StreamMetrics
from .tracing import (BatchTrace, extract_context, inject_headers, replace_trace_headers)

__all__ = ["Telemetry", "default_telemetry", "service_resource", "PROMETHEUS_CONTENT_TYPE",
           "JsonFormatter", "TraceContextFilter", "configure_logging", "log_format",
           "logging_config", "METER_NAME", "StreamMetrics", "BatchTrace", "extract_context",
           "inject_headers", "replace_trace_headers"]
