"""JSON log lines: parseable, one per record, with the trace and span ids of the current span."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from streams.pipeline import enrich_records
from streams.settings import Settings
from streams.telemetry import (JsonFormatter, TraceContextFilter, configure_logging, log_format,
                               logging_config)

from .conftest import TOPIC, event, record, traceparent


@pytest.fixture
def tracer():
    return TracerProvider(shutdown_on_exit=False).get_tracer("test")


@pytest.fixture
def json_lines():
    """A logger whose records land, JSON-formatted, in a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceContextFilter())
    logger = logging.getLogger("streams.test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    logger.removeHandler(handler)


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_inside_a_span_the_line_carries_its_ids(tracer, json_lines):
    logger, lines = json_lines
    logger.info("before")
    with tracer.start_as_current_span("work") as span:
        logger.info("inside %s", "the span", extra={"batch_size": 3})
    logger.warning("after")
    before, inside, after = lines()
    ctx = span.get_span_context()
    assert inside["trace_id"] == format(ctx.trace_id, "032x") and len(inside["trace_id"]) == 32
    assert inside["span_id"] == format(ctx.span_id, "016x") and len(inside["span_id"]) == 16
    assert inside["message"] == "inside the span"
    assert inside["level"] == "INFO" and inside["logger"] == "streams.test.json"
    assert inside["batch_size"] == 3
    assert inside["timestamp"].endswith("Z")
    for line in (before, after):
        assert "trace_id" not in line and "span_id" not in line
    assert after["level"] == "WARNING"


def test_exceptions_and_odd_values_stay_on_one_line(json_lines):
    logger, lines = json_lines
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logger.exception("failed", extra={"path": object()})
    (line,) = lines()
    assert "ValueError: bad" in line["exception"] and line["message"] == "failed"
    assert line["path"].startswith("<object")


def test_formatter_without_the_filter_reads_the_current_span(tracer):
    formatter = JsonFormatter()
    with tracer.start_as_current_span("work") as span:
        rec = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
        line = json.loads(formatter.format(rec))
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")


def test_dead_letter_warning_carries_the_producers_trace(runtime, settings, json_lines, captured):
    logger, lines = json_lines
    pipeline_logger = logging.getLogger("streams.pipeline")
    for handler in logger.handlers:
        pipeline_logger.addHandler(handler)
    try:
        trace_id, span_id = 0xABCDEF0123456789ABCDEF0123456789, 0x1234567812345678
        enrich_records(runtime, settings.route(TOPIC), [
            record(3, b"{not json", [("traceparent", traceparent(trace_id, span_id))]),
            record(4, event("fine"))])
    finally:
        for handler in logger.handlers:
            pipeline_logger.removeHandler(handler)
    (line,) = [ln for ln in lines() if ln["logger"] == "streams.pipeline"]
    assert line["level"] == "WARNING" and "invalid_json" in line["message"]
    assert line["trace_id"] == format(trace_id, "032x")
    event_span = next(s for s in captured.spans.get_finished_spans()
                      if s.attributes.get("messaging.kafka.offset") == 3 and s.name.startswith("enrich"))
    assert line["span_id"] == format(event_span.context.span_id, "016x")
    assert "not json" not in json.dumps(line)  # no raw event text in the log line


def test_configure_logging_json_by_default(restore_logging, tracer, capsys, monkeypatch):
    monkeypatch.delenv("STREAMS_LOG_FORMAT", raising=False)
    configure_logging("INFO", stream="ext://sys.stdout")
    logging.getLogger("streams.test").debug("hidden")
    with tracer.start_as_current_span("work"):
        logging.getLogger("streams.test").info("shown")
    (line,) = capsys.readouterr().out.splitlines()
    parsed = json.loads(line)
    assert parsed["message"] == "shown" and len(parsed["trace_id"]) == 32


def test_text_format_switch(restore_logging, capsys, monkeypatch):
    """STREAMS_LOG_FORMAT reaches the logs through the settings, which the worker passes in."""
    monkeypatch.setenv("STREAMS_LOG_FORMAT", "text")
    fmt = Settings().log_format
    assert log_format(fmt) == "text"
    assert log_format("json") == "json"
    assert log_format() == "json"  # the environment is read by the settings alone
    configure_logging(logging.INFO, fmt, stream="ext://sys.stdout")
    logging.getLogger("streams.test").info("plain")
    (line,) = capsys.readouterr().out.splitlines()
    assert line.endswith("INFO    streams.test: plain")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    with pytest.raises(ValueError):
        log_format("xml")


def test_logging_config_is_a_fresh_dict_config():
    first, second = logging_config("DEBUG"), logging_config("DEBUG")
    assert first == second and first is not second
    assert first["version"] == 1 and first["root"]["level"] == "DEBUG"
    assert first["handlers"]["default"]["formatter"] == "json"
    assert logging_config(fmt="text")["handlers"]["default"]["formatter"] == "text"
    assert logging_config(logging.WARNING)["root"]["level"] == "WARNING"
