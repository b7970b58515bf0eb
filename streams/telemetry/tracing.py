"""Traces for a batch of Kafka records, following the OpenTelemetry messaging conventions.

Per batch (`BatchTrace`, built by `Telemetry.start_batch` only when tracing is on):

    process <topic>           CONSUMER, one per batch, a Link to every event's producer context
    enrich <topic>            CONSUMER, one per event; its parent is the context extracted from
    |                         the record's W3C `traceparent`/`tracestate` headers, so the Java
    |                         producer's trace continues (the batch span when there is none)
    +-- inference             INTERNAL, the batch's inference window (explicit start/end)
    +-- send <output|dlq>     PRODUCER, from encoding until the hand-off (or the broker's ack when
                              the worker ends the trace itself); its context is injected into
                              the output or dead-letter record's headers, replacing the incoming
                              traceparent/tracestate, so a subscriber's trace continues

Kafka headers are `list[tuple[str, bytes]]`; the getter/setter below adapt them to the W3C
propagator. Nothing here reads or records event text."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterable, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:  # pragma: no cover
    from ..records import InRecord

# Messaging semantic conventions (semconv 1.3x, messaging.* attributes).
MESSAGING_SYSTEM = "messaging.system"
DESTINATION_NAME = "messaging.destination.name"
PARTITION_ID = "messaging.destination.partition.id"
KAFKA_OFFSET = "messaging.kafka.offset"
KAFKA_TOMBSTONE = "messaging.kafka.message.tombstone"
CONSUMER_GROUP = "messaging.consumer.group.name"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
BATCH_COUNT = "messaging.batch.message_count"
BODY_SIZE = "messaging.message.body.size"
ERROR_TYPE = "error.type"
# This service's own attributes.
OUTCOME = "streams.outcome"  # enriched | dead_lettered | tombstone
DLQ_REASON = "streams.dlq.reason"

TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
PROPAGATOR = TraceContextTextMapPropagator()


class KafkaHeadersGetter(Getter[Sequence[tuple[str, bytes]]]):
    """Reads W3C fields from Kafka headers (names compared case-insensitively)."""

    def get(self, carrier, key: str) -> list[str] | None:
        key = key.lower()
        values = [_text(v) for k, v in carrier or () if k.lower() == key and v is not None]
        return values or None

    def keys(self, carrier) -> list[str]:
        return [k for k, _ in carrier or ()]


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


GETTER = KafkaHeadersGetter()


def extract_context(headers: Sequence[tuple[str, bytes]] | None) -> Context:
    """The producer's context from a record's headers (an empty context when there is none)."""
    return PROPAGATOR.extract(headers or (), getter=GETTER)


def inject_headers(context: Context) -> list[tuple[str, bytes]]:
    """W3C `traceparent` (and `tracestate` when there is one) for `context`, as Kafka headers."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=context)
    return [(k, v.encode()) for k, v in carrier.items()]


def replace_trace_headers(headers: Iterable[tuple[str, bytes]] | None,
                          injected: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """`headers` without any incoming traceparent/tracestate, then `injected`."""
    kept = [(k, v) for k, v in headers or () if k.lower() not in TRACE_HEADERS]
    return kept + list(injected)


class BatchTrace:
    """The spans of one `enrich_records` call. Not thread-safe: one batch, one thread (ending
    it from another thread afterwards is fine). `end()` is idempotent."""

    __slots__ = ("tracer", "batch_span", "events", "_sends", "_ended")

    def __init__(self, tracer: trace.Tracer, topic: str, records: Sequence["InRecord"], group: str,
                 start_ns: int | None = None):
        self.tracer = tracer
        start = start_ns or time.time_ns()
        contexts = [extract_context(rec.headers) for rec in records]
        parents = [trace.get_current_span(c).get_span_context() for c in contexts]
        partitions = {rec.partition for rec in records}
        batch_attrs = {MESSAGING_SYSTEM: "kafka", DESTINATION_NAME: topic,
                       OPERATION_TYPE: "process", OPERATION_NAME: "process",
                       BATCH_COUNT: len(records)}
        if group:
            batch_attrs[CONSUMER_GROUP] = group
        if len(partitions) == 1:
            batch_attrs[PARTITION_ID] = str(next(iter(partitions)))
        self.batch_span = tracer.start_span(
            f"process {topic}", kind=SpanKind.CONSUMER, attributes=batch_attrs,
            links=[Link(p) for p in parents if p.is_valid], start_time=start)
        batch_context = trace.set_span_in_context(self.batch_span)
        to_batch = [Link(self.batch_span.get_span_context())]
        events = []
        for rec, context, parent in zip(records, contexts, parents):
            attrs = {MESSAGING_SYSTEM: "kafka", DESTINATION_NAME: rec.topic,
                     PARTITION_ID: str(rec.partition), KAFKA_OFFSET: rec.offset,
                     OPERATION_TYPE: "process", OPERATION_NAME: "enrich"}
            if group:
                attrs[CONSUMER_GROUP] = group
            if rec.value is not None:
                attrs[BODY_SIZE] = len(rec.value)
            if parent.is_valid:  # the producer's trace continues; the batch is a link
                events.append(tracer.start_span(
                    f"enrich {rec.topic}", context=context, kind=SpanKind.CONSUMER,
                    attributes=attrs, links=to_batch, start_time=start))
            else:
                events.append(tracer.start_span(f"enrich {rec.topic}", context=batch_context,
                                                kind=SpanKind.CONSUMER, attributes=attrs, start_time=start))
        self.events = events
        self._sends: list[trace.Span] = []
        self._ended = False

    def current(self, i: int | None = None):
        """A context manager making event `i`'s span (the batch span when None) the current
        span, so log lines inside carry its trace id. It does not end the span."""
        span = self.batch_span if i is None else self.events[i]
        return trace.use_span(span, end_on_exit=False, record_exception=False,
                              set_status_on_exception=False)

    def tombstone(self, i: int) -> None:
        span = self.events[i]
        span.set_attribute(KAFKA_TOMBSTONE, True)
        span.set_attribute(OUTCOME, "tombstone")

    def inference(self, indices: Sequence[int], start_ns: int, end_ns: int) -> None:
        """An `inference` child under each event that went through the models, spanning the
        batch's inference window (all of them ran in the same forward passes)."""
        attrs = {"streams.inference.batch_size": len(indices)}
        for i in indices:
            event = self.events[i]
            if event.is_recording():  # an unsampled event's children would be dropped too
                self.tracer.start_span("inference", context=trace.set_span_in_context(event),
                                       kind=SpanKind.INTERNAL, attributes=attrs,
                                       start_time=start_ns).end(end_time=end_ns)

    def send(self, i: int, destination: str, reason: str | None = None) -> list[tuple[str, bytes]]:
        """Start the `send <destination>` child of event `i` and return its context as Kafka
        headers to put on the outgoing record. `reason`: it goes to the dead-letter topic."""
        event = self.events[i]
        if not event.is_recording():  # not sampled: pass its context (and decision) on, cheaply
            return inject_headers(trace.set_span_in_context(event))
        attrs = {MESSAGING_SYSTEM: "kafka", DESTINATION_NAME: destination,
                 OPERATION_TYPE: "send", OPERATION_NAME: "send"}
        if reason is None:
            event.set_attribute(OUTCOME, "enriched")
        else:
            attrs[DLQ_REASON] = reason
            attrs[ERROR_TYPE] = reason
            event.set_attribute(OUTCOME, "dead_lettered")
            event.set_attribute(DLQ_REASON, reason)
            event.set_attribute(ERROR_TYPE, reason)
            event.set_status(Status(StatusCode.ERROR, reason))
        span = self.tracer.start_span(f"send {destination}", context=trace.set_span_in_context(event),
                                      kind=SpanKind.PRODUCER, attributes=attrs)
        self._sends.append(span)
        return inject_headers(trace.set_span_in_context(span))

    def summarize(self, enriched: int, dead: int, tombstones: int, inference_ms: float) -> None:
        self.batch_span.set_attributes({"streams.enriched": enriched, "streams.dead_lettered": dead,
                                        "streams.tombstones": tombstones,
                                        "streams.inference.duration_ms": inference_ms})

    def end(self, error: BaseException | None = None) -> None:
        """End every span of the batch (send spans, event spans, then the batch span) at one
        instant. `error`: the batch failed after enrichment (e.g. produce); marked on all."""
        if self._ended:
            return
        self._ended = True
        end = time.time_ns()
        if error is not None:
            status = Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200])
            for span in (*self._sends, *self.events, self.batch_span):
                span.set_status(status)
                span.set_attribute(ERROR_TYPE, type(error).__qualname__)
            self.batch_span.record_exception(error)
        for span in self._sends:
            span.end(end_time=end)
        for span in self.events:
            span.end(end_time=end)
        self.batch_span.end(end_time=end)
