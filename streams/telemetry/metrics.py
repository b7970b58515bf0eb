"""Metrics of the enrichment stream, through the OpenTelemetry metrics API (meter "streams").

Every instrument carries the input topic (`messaging.destination.name`); the event counters,
in-flight and lag also carry `messaging.destination.partition.id` (histograms do not: one
bucket series per partition costs cardinality, and per-event recording time). Counts are added
once per batch and partition, not once per event. The end-to-end latency histogram takes one
value per event for batches of up to `LATENCY_SAMPLES_PER_BATCH` (32) events; from a larger
batch it takes 32 evenly spaced quantiles of the batch's latencies (its fastest and slowest
included). The OpenTelemetry SDK costs ~9 µs per recorded value, 15 % of the no-op stream's
CPU per event at 256-event batches; the quantiles keep the distribution, so its buckets, mean
and percentiles hold, while its `_count` counts samples (count events with the counters).
Prometheus names (through `Telemetry.prometheus_text()`): dots become underscores,
counters end in `_total`, seconds in `_seconds`:

| instrument (OTel)                | Prometheus                                   | kind           |
|----------------------------------|----------------------------------------------|----------------|
| streams.events.consumed          | streams_events_consumed_total                | counter        |
| streams.events.enriched          | streams_events_enriched_total                | counter        |
| streams.events.dead_lettered     | streams_events_dead_lettered_total{reason}   | counter        |
| streams.events.tombstones        | streams_events_tombstones_total              | counter        |
| streams.events.in_flight         | streams_events_in_flight                     | up-down counter|
| streams.batch.size               | streams_batch_size_bucket/_sum/_count        | histogram      |
| streams.inference.duration       | streams_inference_duration_seconds_*         | histogram      |
| streams.event.latency            | streams_event_latency_seconds_*              | histogram      |
| streams.produce.duration         | streams_produce_duration_seconds_*           | histogram      |
| streams.consumer.lag             | streams_consumer_lag                         | gauge          |
| streams.model.load.duration      | streams_model_load_duration_seconds          | gauge          |
| streams.engine.busy              | streams_engine_busy_seconds_total            | counter        |
| streams.engine.duty_cycle        | streams_engine_duty_cycle                    | gauge          |
| streams.engine.batch_fill        | streams_engine_batch_fill_bucket/_sum/_count | histogram      |
| streams.engine.queue_depth       | streams_engine_queue_depth                   | up-down counter|
| streams.llm.dropped_spans        | streams_llm_dropped_spans_total              | counter        |
| streams.llm.ungrounded_values    | streams_llm_ungrounded_values_total{field}   | counter        |
| streams.shadow.events            | streams_shadow_events_total{candidate,outcome,reason} | counter |
| streams.shadow.compared          | streams_shadow_compared_total{candidate}     | counter        |
| streams.shadow.labels_agreed     | streams_shadow_labels_agreed_total{candidate}| counter        |
| streams.shadow.entity_spans      | streams_shadow_entity_spans_total{candidate,side} | counter   |
| streams.shadow.fields            | streams_shadow_fields_total{candidate,result}| counter        |

The engine's duty cycle, from the one inference thread (streams/engine/thread.py), so for the
whole process, without the topic: `streams.engine.busy` is the seconds its inference calls ran
(not loading or warm-up; the no-op engine runs none), so `rate()` of it is the duty cycle, and
`streams.engine.duty_cycle` the same ratio since the previous collection (by any reader), both
read at collection, nothing per batch. `streams.engine.batch_fill{streams.engine}`: per forward
pass, its rows over the rows the engine allows at that length (`max_batch`, fewer where the
token cap allows fewer), `encoder` one value per pass, `llm` one per generation pass (the mean
over its decoding steps). `streams.engine.queue_depth` (per topic): events of the batches in
hand not yet given to the engine, added and removed once per batch and group (Telemetry.add_queued).

A route's candidate (`streams.shadow.*`, per topic and `candidate` name): its records by
`outcome` (enriched, or dead_lettered with the `reason`), and how they agree with the live
records of the same events (streams/agreement.py), so a dashboard shows the agreement while the
candidate runs: label agreement = rate(labels_agreed) / rate(compared); entity span F1 =
2 x matched / (live + candidate) of `entity_spans{side}`; typed fields equal =
fields{result="equal"} / all fields compared.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from operator import attrgetter
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from .tracing import DESTINATION_NAME, PARTITION_ID

if TYPE_CHECKING:  # pragma: no cover
    from ..agreement import Agreement
    from ..records import InRecord

METER_NAME = "streams"
REASON = "reason"
FIELD = "field"  # a typed field of the LLM (streams.llm.ungrounded_values)
ENGINE = "streams.engine"  # which engine made a forward pass: encoder, llm
CANDIDATE, OUTCOME, SIDE, RESULT = "candidate", "outcome", "side", "result"  # streams.shadow.*

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0, 60.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0, 1800.0)
FILL_BUCKETS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 0.99, 1.0)

LATENCY_SAMPLES_PER_BATCH = 32

_partition_of = attrgetter("partition")


class BusyMeter(Protocol):
    """What the engine metrics read: the inference thread (streams.engine.thread)."""

    on_batch_fill: object

    def busy_seconds(self) -> float: ...


def latency_samples(latencies: list[float], k: int = LATENCY_SAMPLES_PER_BATCH) -> list[float]:
    """All values when there are at most `k`, else `k` evenly spaced quantiles (min and max
    included): what a batch's latencies look like, at a bounded cost per batch."""
    if len(latencies) <= k:
        return latencies
    ordered = sorted(latencies)
    last = len(ordered) - 1
    return [ordered[round(i * last / (k - 1))] for i in range(k)]


class StreamMetrics:
    """The instruments, and the per-batch recording `enrich_records` does."""

    def __init__(self, meter: Meter):
        self.consumed = meter.create_counter(
            "streams.events.consumed", unit="{event}", description="input records taken from Kafka")
        self.enriched = meter.create_counter(
            "streams.events.enriched", unit="{event}", description="enriched records produced")
        self.dead_lettered = meter.create_counter(
            "streams.events.dead_lettered", unit="{event}",
            description="records sent to the dead-letter topic, by reason")
        self.tombstones = meter.create_counter(
            "streams.events.tombstones", unit="{event}", description="tombstones (null values) skipped")
        self.in_flight = meter.create_up_down_counter(
            "streams.events.in_flight", unit="{event}",
            description="events consumed whose output is not yet acknowledged")
        self.batch_size = meter.create_histogram(
            "streams.batch.size", unit="{event}", description="records per micro-batch",
            explicit_bucket_boundaries_advisory=BATCH_SIZE_BUCKETS)
        self.inference_duration = meter.create_histogram(
            "streams.inference.duration", unit="s", description="model time per micro-batch",
            explicit_bucket_boundaries_advisory=INFERENCE_BUCKETS)
        self.latency = meter.create_histogram(
            "streams.event.latency", unit="s",
            description="end to end: output ready minus the input record's timestamp",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
        self.produce_duration = meter.create_histogram(
            "streams.produce.duration", unit="s",
            description="a batch's produce until every record is acknowledged",
            explicit_bucket_boundaries_advisory=INFERENCE_BUCKETS)
        self.lag = meter.create_gauge(
            "streams.consumer.lag", unit="{message}", description="high watermark minus position")
        self.model_load = meter.create_gauge(
            "streams.model.load.duration", unit="s", description="time to load the models at start-up")
        self.retries = meter.create_counter(
            "streams.batch.retries", unit="{retry}",
            description="batches retried because a dependency failed, by dependency")
        self.degraded = meter.create_gauge(
            "streams.worker.degraded", unit="1",
            description="1 while the worker waits for a dependency (broker, registry, accelerator)")
        # Set when /metrics or /readyz is read (streams.health), so they are current at scrape.
        self.ready = meter.create_gauge(
            "streams.worker.ready", unit="1", description="1 when /readyz answers 200")
        self.stalled = meter.create_gauge(
            "streams.partitions.stalled", unit="{partition}",
            description="assigned partitions with work that have not advanced for stall_after_s")
        self.models_loaded = meter.create_gauge(
            "streams.models.loaded", unit="1", description="1 once the models are loaded")
        self.llm_dropped_spans = meter.create_counter(
            "streams.llm.dropped_spans", unit="{entity}",
            description="entities the LLM wrote that do not occur verbatim in the input text: dropped")
        self.llm_ungrounded_values = meter.create_counter(
            "streams.llm.ungrounded_values", unit="{value}",
            description="grounded typed-field values the LLM wrote that the input text does not "
                        "contain: published as null, by field")
        self.engine_busy = meter.create_observable_counter(
            "streams.engine.busy", callbacks=[self._observe_busy], unit="s",
            description="seconds the inference thread ran inference calls; rate(): the duty cycle")
        self.engine_duty_cycle = meter.create_observable_gauge(
            "streams.engine.duty_cycle", callbacks=[self._observe_duty_cycle], unit="1",
            description="busy seconds / wall seconds of the inference thread since the last collection")
        self.batch_fill = meter.create_histogram(
            "streams.engine.batch_fill", unit="1",
            description="rows per forward pass / the rows the engine allows at that length",
            explicit_bucket_boundaries_advisory=FILL_BUCKETS)
        self.queue_depth = meter.create_up_down_counter(
            "streams.engine.queue_depth", unit="{event}",
            description="events taken from Kafka that wait for the engine")
        self.shadow_events = meter.create_counter(
            "streams.shadow.events", unit="{event}",
            description="a candidate's records of a route's events, by outcome (enriched, dead_lettered)")
        self.shadow_compared = meter.create_counter(
            "streams.shadow.compared", unit="{event}",
            description="events with both a live and a candidate's enriched record, compared")
        self.shadow_labels_agreed = meter.create_counter(
            "streams.shadow.labels_agreed", unit="{event}",
            description="compared events whose live and candidate labels are equal")
        self.shadow_entity_spans = meter.create_counter(
            "streams.shadow.entity_spans", unit="{span}",
            description="entity spans of compared events: the live record's, the candidate's, matched")
        self.shadow_fields = meter.create_counter(
            "streams.shadow.fields", unit="{field}",
            description="typed fields of compared events, equal or differing")
        self._attrs: dict[tuple, dict] = {}
        self._engine: BusyMeter | None = None
        self._duty_from = (0.0, 0.0)  # (perf_counter, busy seconds) at the last collection
        self._duty_lock = threading.Lock()  # collections may come from two readers' threads
        self._engine_attrs = {name: {ENGINE: name} for name in ("encoder", "llm")}

    def watch_engine(self, engine: BusyMeter) -> None:
        """Meter `engine` (the process's inference thread): its busy seconds and duty cycle
        at each collection, its forward passes' batch fill. One inference thread per process,
        so the last metrics to watch it get its fills (the process's: `default_telemetry`)."""
        with self._duty_lock:
            if self._engine is not engine:
                self._engine = engine
                self._duty_from = (time.perf_counter(), engine.busy_seconds())
        engine.on_batch_fill = self.record_batch_fill

    def record_batch_fill(self, fill: float, engine: str) -> None:
        self.batch_fill.record(fill, self._engine_attrs.get(engine) or {ENGINE: engine})

    def _observe_busy(self, options: CallbackOptions) -> list[Observation]:
        engine = self._engine
        return [] if engine is None else [Observation(engine.busy_seconds())]

    def _observe_duty_cycle(self, options: CallbackOptions) -> list[Observation]:
        with self._duty_lock:
            if self._engine is None:
                return []
            now, busy = time.perf_counter(), self._engine.busy_seconds()
            (then, busy_then), self._duty_from = self._duty_from, (now, busy)
        if now <= then:
            return []
        return [Observation(min(1.0, (busy - busy_then) / (now - then)))]

    def record_llm_dropped_spans(self, topic: str, n: int) -> None:
        self.llm_dropped_spans.add(n, self.attributes(topic))

    def record_llm_ungrounded_value(self, topic: str, field: str) -> None:
        self.llm_ungrounded_values.add(1, {DESTINATION_NAME: topic, FIELD: field})

    def attributes(self, topic: str, partition: int | None = None, reason: str | None = None) -> dict:
        """Cached attribute dicts (the SDK keys its streams by them; do not mutate)."""
        key = (topic, partition, reason)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = {DESTINATION_NAME: topic}
            if partition is not None:
                attrs[PARTITION_ID] = str(partition)
            if reason is not None:
                attrs[REASON] = reason
            if len(self._attrs) < 10_000:  # bounded: topics x partitions x reasons
                self._attrs[key] = attrs
        return attrs

    def record_batch(self, topic: str, records: Sequence["InRecord"], *,
                     tombstone_partitions: Iterable[int] = (),
                     dead: Iterable[tuple[int, str]] = (),
                     inference_s: float | None = None, now_ms: float | None = None) -> None:
        """One batch of `topic`: consumed, enriched, dead-lettered (by reason) and tombstone
        counts per partition, its size, its inference time, and its outputs' end-to-end
        latencies (`latency_samples`). Every record is exactly one of enriched, dead-lettered
        or a tombstone."""
        if not records:
            return
        attrs = self.attributes
        consumed = Counter(map(_partition_of, records))
        enriched = dict(consumed)
        for partition, n in Counter(tombstone_partitions).items():
            self.tombstones.add(n, attrs(topic, partition))
            enriched[partition] -= n
        for (partition, reason), n in Counter(dead).items():
            self.dead_lettered.add(n, attrs(topic, partition, reason))
            enriched[partition] -= n
        for partition, n in consumed.items():
            self.consumed.add(n, attrs(topic, partition))
            if enriched[partition] > 0:
                self.enriched.add(enriched[partition], attrs(topic, partition))
        self.batch_size.record(len(records), attrs(topic))
        if inference_s is not None:
            self.inference_duration.record(inference_s, attrs(topic))
        # The SDK costs ~9 µs per call, and more per attribute, so latency carries the topic
        # only (no per-partition bucket series) and large batches are sampled.
        now_ms = time.time() * 1000 if now_ms is None else now_ms
        latencies = [(now_ms - rec.timestamp_ms) / 1000 for rec in records
                     if rec.timestamp_ms is not None and rec.value is not None]  # not tombstones
        record, topic_attrs = self.latency.record, attrs(topic)
        for seconds in latency_samples(latencies):
            record(seconds if seconds > 0.0 else 0.0, topic_attrs)

    def record_shadow(self, topic: str, candidate: str, enriched: int, dead: Iterable[str] = (),
                      agreements: Sequence[Agreement] = ()) -> None:
        """One batch of a route's candidate: its enriched and dead-lettered (by reason) records,
        and the agreement of each event it enriched with the event's live record."""
        base = {DESTINATION_NAME: topic, CANDIDATE: candidate}
        if enriched:
            self.shadow_events.add(enriched, base | {OUTCOME: "enriched"})
        for reason, n in Counter(dead).items():
            self.shadow_events.add(n, base | {OUTCOME: "dead_lettered", REASON: reason})
        if not agreements:
            return
        self.shadow_compared.add(len(agreements), base)
        self.shadow_labels_agreed.add(sum(a.label_equal for a in agreements), base)
        for side, n in (("live", sum(a.spans_a for a in agreements)),
                        ("candidate", sum(a.spans_b for a in agreements)),
                        ("matched", sum(a.spans_matched for a in agreements))):
            self.shadow_entity_spans.add(n, base | {SIDE: side})
        fields, equal = sum(a.fields for a in agreements), sum(a.fields_equal for a in agreements)
        self.shadow_fields.add(equal, base | {RESULT: "equal"})  # 0 and 0 without typed fields:
        self.shadow_fields.add(fields - equal, base | {RESULT: "differs"})  # the series exist
