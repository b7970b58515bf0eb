"""Structured logs: one JSON object per line, with the current trace and span ids.

    {"timestamp": "2025-01-01T10:00:00.123Z", "level": "INFO", "logger": "streams.worker",
     "message": "batch ...", "thread": "MainThread", "trace_id": "4bf9...", "span_id": "00f0..."}

`trace_id`/`span_id` appear when a span is current where the record was logged (they match
the ids the OTLP exporter sends). Extra fields given with `log.info(..., extra={...})` are
added as keys. `fmt="text"` switches to plain lines (the worker passes its settings'
`log_format`, STREAMS_LOG_FORMAT; nothing here reads the environment).

Wiring: `configure_logging(level)` for a plain process, or `logging_config(level)` as Faust's
`logging_config` app setting (mode passes it to `logging.config.dictConfig`)."""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import datetime, timezone

from opentelemetry import trace

FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName",
    "taskName"}


def log_format(fmt: str | None = None) -> str:
    """`fmt` (the settings' `log_format`), else json."""
    chosen = (fmt or "json").strip().lower()
    if chosen not in FORMATS:
        raise ValueError(f"log format {chosen!r}: use json or text")
    return chosen


def _ids(record: logging.LogRecord) -> tuple[str, str] | None:
    """Ids stamped on the record when it was logged (TraceContextFilter), else the span
    current now (formatting runs in the logging thread for ordinary handlers)."""
    trace_id = getattr(record, "otelTraceID", None)
    if trace_id is not None:
        return (trace_id, record.otelSpanID) if trace_id != "0" else None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class TraceContextFilter(logging.Filter):
    """Stamps `otelTraceID`/`otelSpanID` ("0" when no span is current) on each record at the
    moment it is logged, for handlers that format later or in another thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "otelTraceID"):
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                record.otelTraceID = format(ctx.trace_id, "032x")
                record.otelSpanID = format(ctx.span_id, "016x")
            else:
                record.otelTraceID = record.otelSpanID = "0"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        ids = _ids(record)
        if ids is not None:
            payload["trace_id"], payload["span_id"] = ids
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in payload and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def logging_config(level: str | int = "INFO", fmt: str | None = None,
                   stream: str = "ext://sys.stderr") -> dict:
    """A `logging.config.dictConfig` dict: one stream handler on the root logger, JSON (or
    text) lines. A new dict each call (mode pops keys from the one it is given)."""
    chosen = log_format(fmt)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"trace_context": {"()": TraceContextFilter}},
        "formatters": {"json": {"()": JsonFormatter}, "text": {"format": TEXT_FORMAT}},
        "handlers": {"default": {"class": "logging.StreamHandler", "stream": stream,
                                 "formatter": chosen, "filters": ["trace_context"]}},
        "root": {"level": logging.getLevelName(level) if isinstance(level, int) else level.upper(),
                 "handlers": ["default"]},
    }


def configure_logging(level: str | int = "INFO", fmt: str | None = None,
                      stream: str = "ext://sys.stderr") -> None:
    """Replace the root logger's handlers with one JSON (or text) stream handler."""
    logging.config.dictConfig(logging_config(level, fmt, stream))
