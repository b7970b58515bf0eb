"""Spans of enrich_records, and the W3C context it writes into output and dead-letter headers."""

from __future__ import annotations

import time

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streams.dlq import PREFIX
from streams.pipeline import enrich_records
from streams.telemetry import Telemetry, extract_context, inject_headers, replace_trace_headers

from .conftest import GROUP, POISON, TOPIC, event, record, traceparent

T1, T2, T3, T4 = (0x0AF7651916CD43DD8448EB211C80319C, 0x1B2C3D4E5F60718293A4B5C6D7E8F901,
                  0x22222222222222222222222222222222, 0x44444444444444444444444444444444)
S1, S2, S3, S4 = 0xB7AD6B7169203331, 0x00F067AA0BA902B7, 0x3333333333333333, 0x4444444444444444


def batch():
    return [
        record(10, event("e-10"), [("traceparent", traceparent(T1, S1)), ("tracestate", b"vendor=abc"),
                                   ("app", b"x")]),
        record(11, event("e-11"), [("traceparent", traceparent(T2, S2))]),
        record(12, b"{not json", [("traceparent", traceparent(T3, S3)), ("tracestate", b"k=v")], partition=1),
        record(13, event("e-13", f"{POISON} text"), [("traceparent", traceparent(T4, S4))], partition=1),
        record(14, None, partition=1),  # tombstone
        record(15, event("e-15")),  # no trace context
    ]


def by_offset(spans, name=f"enrich {TOPIC}"):
    return {s.attributes["messaging.kafka.offset"]: s for s in spans if s.name == name}


def children(spans, parent):
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def consumer_extract(headers):
    """What a subscriber does: the W3C propagator over the record's (string) headers."""
    carrier = {k: v.decode() for k, v in headers}
    return trace.get_current_span(TraceContextTextMapPropagator().extract(carrier)).get_span_context()


@pytest.fixture
def enriched(runtime, settings, captured):
    result = enrich_records(runtime, settings.route(TOPIC), batch())
    return result, captured.spans.get_finished_spans()


def test_one_batch_span_linked_to_every_producer_context(enriched):
    result, spans = enriched
    (batch_span,) = [s for s in spans if s.name == f"process {TOPIC}"]
    assert batch_span.kind == SpanKind.CONSUMER
    assert batch_span.parent is None
    attrs = batch_span.attributes
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == TOPIC
    assert attrs["messaging.consumer.group.name"] == GROUP
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.batch.message_count"] == 6
    assert "messaging.destination.partition.id" not in attrs  # two partitions in the batch
    assert (attrs["streams.enriched"], attrs["streams.dead_lettered"], attrs["streams.tombstones"]) == (3, 2, 1)
    assert {(link.context.trace_id, link.context.span_id) for link in batch_span.links} == \
        {(T1, S1), (T2, S2), (T3, S3), (T4, S4)}


def test_a_span_per_event_continues_the_producers_trace(enriched):
    result, spans = enriched
    (batch_span,) = [s for s in spans if s.name == f"process {TOPIC}"]
    events = by_offset(spans)
    assert sorted(events) == [10, 11, 12, 13, 14, 15]
    for offset, (trace_id, span_id) in {10: (T1, S1), 11: (T2, S2), 12: (T3, S3), 13: (T4, S4)}.items():
        span = events[offset]
        assert span.kind == SpanKind.CONSUMER
        assert span.context.trace_id == trace_id
        assert span.parent.span_id == span_id and span.parent.is_remote
        assert [link.context.span_id for link in span.links] == [batch_span.context.span_id]
    assert events[10].context.trace_state.get("vendor") == "abc"  # tracestate carried on
    # No producer context: the event hangs under the batch span.
    for offset in (14, 15):
        assert events[offset].parent.span_id == batch_span.context.span_id
        assert events[offset].context.trace_id == batch_span.context.trace_id
    attrs = events[12].attributes
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == TOPIC
    assert attrs["messaging.destination.partition.id"] == "1"
    assert attrs["messaging.kafka.offset"] == 12
    assert attrs["messaging.consumer.group.name"] == GROUP
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.operation.name"] == "enrich"
    assert [events[o].attributes["streams.outcome"] for o in sorted(events)] == \
        ["enriched", "enriched", "dead_lettered", "dead_lettered", "tombstone", "enriched"]
    assert events[12].attributes["streams.dlq.reason"] == "invalid_json"
    assert events[13].attributes["error.type"] == "inference_error"
    assert events[12].status.status_code == StatusCode.ERROR
    assert events[10].status.status_code == StatusCode.UNSET
    assert events[14].attributes["messaging.kafka.message.tombstone"] is True


def test_inference_and_send_children_inside_the_event_span(enriched):
    result, spans = enriched
    events = by_offset(spans)
    inference = [s for s in spans if s.name == "inference"]
    # Every event that reached the models (13 failed there), one window for all.
    assert sorted(s.parent.span_id for s in inference) == \
        sorted(events[o].context.span_id for o in (10, 11, 13, 15))
    assert len({(s.start_time, s.end_time) for s in inference}) == 1
    window = inference[0]
    assert window.end_time >= window.start_time
    for offset, dest in {10: "orders.notes.enriched", 11: "orders.notes.enriched",
                         15: "orders.notes.enriched", 12: "orders.notes.dlq", 13: "orders.notes.dlq"}.items():
        parent = events[offset]
        (send,) = [s for s in children(spans, parent) if s.name.startswith("send ")]
        assert send.name == f"send {dest}"
        assert send.kind == SpanKind.PRODUCER
        assert send.attributes["messaging.destination.name"] == dest
        assert send.attributes["messaging.operation.type"] == "send"
        assert parent.start_time <= send.start_time <= send.end_time <= parent.end_time
    for offset in (10, 11, 13, 15):
        assert events[offset].start_time <= window.start_time and window.end_time <= events[offset].end_time
    assert not [s for s in children(spans, events[14])]  # a tombstone produces nothing


def test_output_and_dlq_headers_carry_this_workers_context(enriched):
    result, spans = enriched
    sends = {s.context.span_id: s for s in spans if s.name.startswith("send ")}
    out = {r.topic: [] for r in result.out}
    for r in result.out:
        out[r.topic].append(r)
    assert len(out["orders.notes.enriched"]) == 3 and len(out["orders.notes.dlq"]) == 2
    expected_trace = {b"e-10": T1, b"e-11": T2}
    for r in result.out:
        names = [k for k, _ in r.headers]
        assert names.count("traceparent") == 1, names  # replaced, not duplicated
        ctx = consumer_extract(r.headers)
        assert ctx.is_valid and ctx.is_remote
        send = sends[ctx.span_id]  # the subscriber's parent is our send span
        assert send.name == f"send {r.topic}"
        assert ctx.trace_id == send.context.trace_id
    enriched_by_id = {}
    for r in out["orders.notes.enriched"]:
        ctx = consumer_extract(r.headers)
        enriched_by_id[ctx.trace_id] = r
    assert set(expected_trace.values()) <= set(enriched_by_id)  # the producers' trace ids
    first = enriched_by_id[T1]
    assert ("app", b"x") in first.headers  # other headers pass through
    assert dict(first.headers)["tracestate"] == b"vendor=abc"
    assert dict(first.headers)["traceparent"] != traceparent(T1, S1)
    dlq_trace_ids = {consumer_extract(r.headers).trace_id for r in out["orders.notes.dlq"]}
    assert dlq_trace_ids == {T3, T4}
    for r in out["orders.notes.dlq"]:
        headers = dict(r.headers)
        assert headers[PREFIX + "reason"] in (b"invalid_json", b"inference_error")
        assert [k for k, _ in r.headers].count("tracestate") <= 1
    bad_json = next(r for r in out["orders.notes.dlq"] if dict(r.headers)[PREFIX + "reason"] == b"invalid_json")
    assert dict(bad_json.headers)["tracestate"] == b"k=v"


def test_replay_headers_still_added(runtime, settings):
    result = enrich_records(runtime, settings.route(TOPIC), batch(),
                            extra_headers=lambda rec: [("streams.replay.id", b"r1")])
    for r in result.out:
        assert r.headers[-1] == ("streams.replay.id", b"r1")
        assert [k for k, _ in r.headers].count("traceparent") == 1


def test_deferred_end_keeps_spans_open_until_the_produce(runtime, settings, captured):
    received = time.time_ns() - 5_000_000
    result = enrich_records(runtime, settings.route(TOPIC), batch()[:2], received_ns=received,
                            defer_trace_end=True)
    finished = captured.spans.get_finished_spans()
    assert {s.name for s in finished} == {"inference"}  # only the fixed-window children
    assert result.trace is not None
    result.end_trace()
    result.end_trace()  # idempotent
    spans = captured.spans.get_finished_spans()
    events = by_offset(spans)
    assert sorted(events) == [10, 11]
    assert all(s.start_time == received for s in events.values())
    assert len([s for s in spans if s.name == f"process {TOPIC}"]) == 1
    assert len(spans) == 1 + 2 * 3


def test_deferred_end_with_a_produce_failure_marks_the_spans(runtime, settings, captured):
    result = enrich_records(runtime, settings.route(TOPIC), batch()[:1], defer_trace_end=True)
    result.end_trace(TimeoutError("not acknowledged"))
    spans = captured.spans.get_finished_spans()
    for span in spans:
        if span.name != "inference":
            assert span.status.status_code == StatusCode.ERROR, span.name
            assert span.attributes["error.type"] == "TimeoutError"


def test_a_failing_batch_still_ends_its_spans(runtime, settings, captured, monkeypatch):
    def broken(texts, labels, topic=None):
        raise KeyboardInterrupt  # not contained by Runtime.infer
    monkeypatch.setattr(runtime, "infer", broken)
    with pytest.raises(KeyboardInterrupt):
        enrich_records(runtime, settings.route(TOPIC), batch()[:2])
    spans = captured.spans.get_finished_spans()
    assert len(by_offset(spans)) == 2
    (batch_span,) = [s for s in spans if s.name == f"process {TOPIC}"]
    assert batch_span.status.status_code == StatusCode.ERROR


def test_unsampled_producer_context_records_nothing_for_that_event(runtime, settings, captured):
    records = [record(20, event("e-20"), [("traceparent", traceparent(T1, S1, sampled=False))])]
    result = enrich_records(runtime, settings.route(TOPIC), records)
    spans = captured.spans.get_finished_spans()
    assert [s.name for s in spans] == [f"process {TOPIC}"]  # parent-based sampling
    ctx = consumer_extract(result.out[0].headers)
    assert ctx.trace_id == T1 and not ctx.trace_flags.sampled  # the decision travels on


def test_nothing_configured_means_no_spans_and_headers_untouched(base_runtime, settings, monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    telemetry = Telemetry.from_environment("streams-test", GROUP)
    assert not telemetry.tracing_enabled and telemetry.tracer is None

    def no_tracing(*args, **kwargs):
        raise AssertionError("a trace was started with tracing off")
    monkeypatch.setattr(telemetry, "start_batch", no_tracing)
    monkeypatch.setattr(base_runtime, "telemetry", telemetry)
    records = batch()
    result = enrich_records(base_runtime, settings.route(TOPIC), records, defer_trace_end=True)
    assert result.trace is None
    result.end_trace()  # a no-op
    inputs = {r.offset: r for r in records}
    enriched = [r for r in result.out if r.topic.endswith(".enriched")]
    dead = [r for r in result.out if r.topic.endswith(".dlq")]
    outputs = list(zip((10, 11, 15), enriched)) + [(int(dict(r.headers)[PREFIX + "offset"]), r) for r in dead]
    assert sorted(o for o, _ in outputs) == [10, 11, 12, 13, 15]
    for offset, out in outputs:  # incoming trace headers pass through unchanged, none added
        assert [h for h in out.headers if h[0] in ("traceparent", "tracestate")] == \
            [h for h in inputs[offset].headers if h[0] in ("traceparent", "tracestate")]
    assert enriched[2].headers == []  # record 15 had no headers and got none


def test_header_helpers_round_trip():
    ctx = extract_context([("TraceParent", traceparent(T1, S1)), ("tracestate", b"a=1")])
    span_ctx = trace.get_current_span(ctx).get_span_context()
    assert (span_ctx.trace_id, span_ctx.span_id, span_ctx.trace_state.get("a")) == (T1, S1, "1")
    assert not trace.get_current_span(extract_context([])).get_span_context().is_valid
    assert not trace.get_current_span(extract_context([("traceparent", b"garbage")])).get_span_context().is_valid
    injected = inject_headers(ctx)
    assert dict(injected)["traceparent"] == traceparent(T1, S1)
    assert replace_trace_headers([("a", b"1"), ("traceparent", b"old"), ("TRACESTATE", b"x")], injected) == \
        [("a", b"1"), *injected]


def test_dlq_headers_replace_the_trace_context_only_when_given():
    from streams.dlq import dlq_headers

    original = [("TraceParent", traceparent(T1, S1)), ("tracestate", b"a=1"), ("app", b"x"),
                (PREFIX + "reason", b"older")]
    common = dict(reason="invalid_json", message="m", error_class="DecodeError", topic=TOPIC,
                  partition=0, offset=1, timestamp_ms=None, worker_id="w")
    ours = [("traceparent", traceparent(T1, S2))]
    replaced = dlq_headers(original_headers=original, trace_context=ours, **common)
    assert replaced[:2] == [("app", b"x"), ("traceparent", traceparent(T1, S2))]
    assert [k for k, _ in replaced].count(PREFIX + "reason") == 1
    untouched = dlq_headers(original_headers=original, **common)
    assert untouched[:3] == original[:3]
