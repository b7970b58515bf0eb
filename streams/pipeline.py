"""One batch of input records -> enriched and dead-letter records, ready to produce.

decode -> infer -> encode, with every failure turned into a dead-letter record (bad records
are data, not exceptions), outputs in input order per partition. Plain and synchronous: a
source runs it in a worker thread, `streams replay` calls it directly. What it runs with
(engine, schemas, the producer's size limit, telemetry) comes in a `Runtime` (streams/runtime.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .agreement import agreement
from .dlq import dead_letter, no_headers
from .enrich import SourceRecord, enriched_record, redacted_copy
from .errors import FatalError, RetriableError, describe, sanitize
from .produce import OUTPUTS, record_size
from .records import InRecord, OutRecord
from .runtime import InferenceFailure, Runtime, Shadow
from .serde import DecodeError, InputEvent, decode_input
from .settings import TopicRoute
from .telemetry import BatchTrace, replace_trace_headers

log = logging.getLogger("streams.pipeline")

Headers = Callable[[InRecord], list[tuple[str, bytes]]]
Emit = Callable[[list[OutRecord]], None]
Decoded = tuple[int, InRecord, InputEvent]  # (index in the batch, record, its event)


@dataclass(slots=True)
class BatchResult:
    out: list[OutRecord]
    enriched: int = 0
    dead: int = 0
    tombstones: int = 0
    inference_ms: float = 0.0
    # The batch's spans, still open, when enrich_records was called with defer_trace_end=True.
    trace: BatchTrace | None = None

    def end_trace(self, error: BaseException | None = None) -> None:
        """Ends the batch's spans (after the produce was acknowledged, or failed: `error`).
        A no-op when tracing is off or the spans have already ended."""
        if self.trace is not None:
            self.trace.end(error)


def enrich_records(runtime: Runtime, route: TopicRoute, records: Sequence[InRecord],
                   extra_headers: Headers | None = None, *,
                   received_ns: int | None = None, defer_trace_end: bool = False,
                   emit: Emit | None = None, queued: bool = False) -> BatchResult:
    """`extra_headers(record)` adds headers to that record's output (replay markers).

    `emit`: called with each group of outputs as soon as it is ready, so the caller can send
    them while the next forward passes run: the earliest events of each partition first,
    then the rest whole, or in groups of `settings.output_chunk` (`_groups`); the dead
    letters come last. Without it the batch runs through the engine whole. Either way `result.out` holds
    every output and dead letter of the batch.

    Telemetry (`runtime.telemetry`): metrics for the batch always; spans only when tracing is
    on (checked once per batch). `received_ns` (time.time_ns()) starts the event spans when
    the batch was taken from the consumer, default now. `defer_trace_end=True` leaves the
    spans open in `result.trace`: the caller ends them with `result.end_trace()` once the
    produce is acknowledged, so the send spans cover it. Otherwise they end here.

    The queue depth ahead of the engine (`Telemetry.add_queued`) holds the batch's decoded
    events until their group goes to the engine; `queued=True`: the caller added all of
    `records` when it took them (`BatchProcessor`), and this call removes them all by its end."""
    telemetry = runtime.telemetry
    more = extra_headers or no_headers
    if not telemetry.tracing_enabled:  # the one check: nothing per event for tracing below
        return _Batch(runtime, route, records, more, None, emit, queued).run()
    trace = telemetry.start_batch(route.input, records, received_ns)
    try:
        with trace.current():  # log lines of the batch carry its trace id
            result = _Batch(runtime, route, records, more, trace, emit, queued).run()
    except BaseException as exc:
        trace.end(exc)
        raise
    trace.summarize(result.enriched, result.dead, result.tombstones, result.inference_ms)
    if defer_trace_end:
        result.trace = trace
    else:
        trace.end()
    return result


@dataclass(slots=True)
class _Lane:
    """Where one configuration's records of a batch go: the route's own (`kind` "output"), or
    its candidate's (`Shadow`, kind "shadow"): the route (output and DLQ topics), the models and
    stamp its records carry, their release in input order, the dead letters for the metrics."""

    route: TopicRoute
    models: list
    stamp: dict
    order: InOrder
    kind: str = "output"
    bad: list[tuple[InRecord, str]] = field(default_factory=list)  # (record, reason)
    made: dict[int, dict] = field(default_factory=dict)  # record index -> its enriched record


class _Batch:
    """One call of `enrich_records`, step by step: `decode` every record, then `infer` and
    `encode` the decoded events group by group, each record's outcome (an output, a dead
    letter, or nothing for a tombstone) settled in `order` and `release`d as soon as its
    partition's earlier records are; then the route's candidate, if it has one, on its share
    of the events (`run_shadow`); last, the batch's metrics."""

    def __init__(self, runtime: Runtime, route: TopicRoute, records: Sequence[InRecord],
                 more: Headers, trace: BatchTrace | None, emit: Emit | None, queued: bool = False):
        self.runtime, self.route, self.records = runtime, route, records
        self.more, self.trace, self.emit = more, trace, emit
        self.waiting = len(records) if queued else 0  # this batch's share of the queue depth
        self.live = _Lane(route, runtime.models[route.input], runtime.stamps[route.input], InOrder(records))
        # A replay's route has no candidate (`Settings.without_candidates`): none runs there.
        self.shadow: Shadow | None = runtime.shadows.get(route.input) if route.candidate is not None else None
        self.shadow_lane = None if self.shadow is None else _Lane(
            self.shadow.route, self.shadow.models, self.shadow.stamp, InOrder(records), "shadow")
        self.result = BatchResult(out=[])
        self.tombstone_partitions: list[int] = []

    def run(self) -> BatchResult:
        settings = self.runtime.settings
        try:
            decoded = self.decode()
            self.queue(len(decoded))  # tombstones and undecodable records wait no more
            self.release()  # what precedes the first decoded event of each partition leaves at once
            head = None if self.emit is None else settings.model_batch
            for group in _groups(decoded, head, settings.output_chunk or None):
                self.queue(self.waiting - len(group))  # in the engine now, no longer ahead of it
                inferred, ms = self.infer(group)
                self.encode(self.live, group, inferred, ms)
                self.release()
            if self.shadow is not None:
                self.run_shadow(decoded)
        finally:
            self.queue(0)  # a batch that failed is retried whole: its events wait no more
        self.result.dead = len(self.live.bad)
        self.runtime.telemetry.metrics.record_batch(
            self.route.input, self.records, tombstone_partitions=self.tombstone_partitions,
            dead=[(rec.partition, reason) for rec, reason in self.live.bad],
            inference_s=self.result.inference_ms / 1000 if decoded else None)
        return self.result

    def queue(self, waiting: int) -> None:
        """This batch's events waiting for the engine are now `waiting` (one add per call)."""
        self.runtime.telemetry.add_queued(waiting - self.waiting, self.route.input)
        self.waiting = waiting

    def decode(self) -> list[Decoded]:
        """Each record's event; a tombstone settles as nothing, a record that cannot be decoded
        as a dead letter."""
        decoded: list[Decoded] = []
        catalog, max_text_bytes = self.runtime.catalog, self.runtime.settings.max_text_bytes
        for i, rec in enumerate(self.records):
            if rec.client_error is not None:
                self.dead(i, rec, "undecodable_record", rec.client_error, "KafkaError")
                continue
            event = decode_input(rec.value, rec.topic, catalog, max_text_bytes)
            if event is None:
                self.tombstone_partitions.append(rec.partition)
                self.live.order.settle(i, None)
                if self.trace is not None:
                    self.trace.tombstone(i)
            elif isinstance(event, DecodeError):
                self.dead(i, rec, event.reason, event.message, "DecodeError")
            else:
                decoded.append((i, rec, event))
        self.result.tombstones = len(self.tombstone_partitions)
        return decoded

    def infer(self, group: list[Decoded]) -> tuple[list, float]:
        """The engine's results for a group's texts (`Runtime.infer`), and its milliseconds."""
        t0 = time.perf_counter()
        start_ns = time.time_ns()
        inferred = self.runtime.infer([e.text for _, _, e in group], self.runtime.labels[self.route.input],
                                      self.route.input)
        ms = (time.perf_counter() - t0) * 1000
        self.result.inference_ms += ms
        if self.trace is not None:
            self.trace.inference([i for i, _, _ in group], start_ns, time.time_ns())
        return inferred, ms

    def run_shadow(self, decoded: list[Decoded]) -> None:
        """The route's candidate on its share of the decoded events, after the live records
        have all been made (and emitted): one engine call, each record to the candidate's
        output or, failing, to its DLQ (`encode` and `dead` on the shadow lane); none of it
        touches a live record. An engine that fails even on a probe text dead-letters the
        candidate's events of this batch ("candidate_failed"), it does not stop the live path;
        the registry or the broker failing retries the whole batch, as for live records."""
        shadow, lane, runtime = self.shadow, self.shadow_lane, self.runtime
        chosen = [d for d in decoded if shadow.candidate.takes(d[2].event_id)]
        taken = {i for i, _, _ in chosen}
        for i in range(len(self.records)):
            if i not in taken:
                lane.order.settle(i, None)
        if not chosen:  # share 0, or none of this batch's ids: the live path pays nothing more
            return
        t0 = time.perf_counter()
        try:
            inferred = runtime.infer([e.text for _, _, e in chosen], shadow.labels, self.route.input,
                                     engine=shadow.engine)
        except RetriableError as exc:
            log.warning("candidate %s of %s failed on a probe text too: its %d events of this batch are "
                        "dead-lettered (%s)", shadow.candidate.name, self.route.input, len(chosen), exc)
            inferred = [InferenceFailure(exc, "candidate_failed")] * len(chosen)
        self.encode(lane, chosen, inferred, (time.perf_counter() - t0) * 1000)
        self.release()
        live = self.live.made
        runtime.telemetry.metrics.record_shadow(
            self.route.input, shadow.candidate.name, len(lane.made), [reason for _, reason in lane.bad],
            [agreement(live[i], made) for i, made in lane.made.items() if i in live])

    def encode(self, lane: _Lane, group: list[Decoded], inferred: list, inference_ms: float) -> None:
        """Each event's enriched record, Avro-encoded, sized for the producer, settled; an event
        the engine failed on, or whose record cannot be encoded or sent, as a dead letter. A
        redacting route's record carries the redacted text, and with a copy topic the event
        settles as two records (enriched, redacted copy), committed only once both are acked.
        `lane`: the live route's, or its candidate's (its records untraced, with no copy)."""
        runtime, route, more = self.runtime, lane.route, self.more
        trace = self.trace if lane.kind == "output" else None
        producer, models, stamp = runtime.producer, lane.models, lane.stamp
        redactor = runtime.redactors.get(route.input)
        order, result = lane.order, self.result
        keep = self.shadow is not None  # the live records are compared with the candidate's
        for (i, rec, event), inference in zip(group, inferred):
            if isinstance(inference, InferenceFailure):
                self.dead(i, rec, inference.reason, describe(inference.exc), type(inference.exc).__name__,
                          inference.exc, lane)
                continue
            source = SourceRecord(rec.topic, rec.partition, rec.offset, rec.timestamp_ms)
            copy = None
            try:
                redacted = None if redactor is None else redactor.redact(event.text, inference.entities)
                made = enriched_record(event, inference, source, models, inference_ms, redacted, stamp)
                value = runtime.catalog.encode_enriched(made, route.output)
                if redacted is not None and route.copy_topic:
                    copy = redacted_copy(event, redacted, rec.value, route.copy_topic, runtime.catalog)
            except (RetriableError, FatalError):
                raise  # the registry, not the record: waited for or fatal (serde.registry_failure)
            except Exception as exc:  # noqa: BLE001
                self.dead(i, rec, "encode_error", describe(exc), type(exc).__name__, exc, lane)
                continue
            key = rec.key if rec.key is not None else event.event_id.encode()
            if trace is None:
                headers = [*rec.headers, *more(rec)]
            else:  # this worker's context replaces the producer's: subscribers continue the trace
                headers = [*replace_trace_headers(rec.headers, trace.send(i, route.output)), *more(rec)]
            outs = [OutRecord(route.output, key, value, headers, lane.kind, rec)]
            if copy is not None:
                outs.append(OutRecord(route.copy_topic, key, copy, headers, "copy", rec))
            large = next((o for o in outs if not producer.fits(o)), None)
            if large is not None:  # sized before producing: librdkafka would refuse it
                what = OUTPUTS[large.kind][0]
                self.dead(i, rec, "output_too_large", f"the {what} would be {record_size(large)} "
                          f"bytes; the producer's limit is {producer.max_message_bytes}", "RecordTooLarge",
                          lane=lane)
                continue
            order.settle(i, outs if copy is not None else outs[0])
            if keep:
                lane.made[i] = made
            if lane.kind == "output":
                result.enriched += 1

    def dead(self, i: int, rec: InRecord, reason: str, message: str, error_class: str,
             exc: BaseException | None = None, lane: _Lane | None = None) -> None:
        """Record `i` settles as a dead letter (logged, counted, traced) in `lane` (default the
        live route's; a candidate's to its own DLQ, untraced)."""
        lane = lane or self.live
        trace = self.trace if lane.kind == "output" else None
        if trace is None:
            _log_dead_letter(rec, reason, message, lane.route.dlq)
        else:
            with trace.current(i):  # the line carries the event's (the producer's) trace id
                _log_dead_letter(rec, reason, message, lane.route.dlq)
        lane.bad.append((rec, reason))
        lane.order.settle(i, dead_letter(
            rec, lane.route.dlq, reason, message, error_class, worker_id=self.runtime.worker_id,
            fits=self.runtime.producer.fits, exc=exc, more=self.more,
            trace_context=None if trace is None else trace.send(i, self.route.dlq, reason)))

    def release(self) -> None:
        """What can leave now (`InOrder.release`): emitted, and kept in the result."""
        ready = self.live.order.release()
        if self.shadow_lane is not None:
            ready += self.shadow_lane.order.release()
        if self.emit is not None and ready:
            self.emit(ready)
        self.result.out.extend(ready)


def _groups(decoded: list[Decoded], head: int | None, rest: int | None) -> list[list[Decoded]]:
    """The decoded events in groups for the engine: all at once (`head` None, the forward
    pass's size), or a small first group whose outputs leave while the rest runs: a quarter
    of `head`, or one event per partition where there are more. That first group is the
    earliest events of every partition (round robin by their rank in it): nothing earlier in
    their partition is pending, so `InOrder` releases them as soon as it is done, and the
    batch's first outputs leave after one short forward pass. The rest goes whole (`rest` None), so
    the engine sorts all of it by token length and pads least, or in groups of `rest` sorted
    by text length; `InOrder` holds back whatever would overtake an earlier record of its
    partition (docs/benchmarks.md: what the groups cost)."""
    if head is None or len(decoded) <= head:
        return [decoded] if decoded else []
    rank: dict[int, int] = {}
    ranked = []
    for position, d in enumerate(decoded):  # input order: offset order per partition
        partition = d[1].partition
        ranked.append((rank.get(partition, 0), position))
        rank[partition] = rank.get(partition, 0) + 1
    # A quarter of a forward pass, or one event per partition if there are more: a pass of
    # texts in input order pads to its longest, so the fewer the cheaper.
    head = min(head, max(1, head // 4, len(rank)))
    first = {position for _, position in sorted(ranked)[:head]}
    others = sorted((d for position, d in enumerate(decoded) if position not in first),
                    key=lambda d: len(d[2].text))
    size = rest or len(others)
    return [[decoded[position] for position in sorted(first)]] + \
        [others[i : i + size] for i in range(0, len(others), size)]


_PENDING = object()  # an outcome not known yet


class InOrder:
    """Outcomes of a batch's records (an output, a dead letter, or nothing for a tombstone)
    released per partition in input offset order, whatever order inference finished them in:
    Kafka keeps per-key order only if the producer sends a partition's records in order, and a
    Java subscriber (a Kafka Streams join, a state machine per order id) relies on it."""

    def __init__(self, records: Sequence[InRecord]):
        self._outcomes: list = [_PENDING] * len(records)
        self._queues: dict[int, list[int]] = {}
        for i, rec in enumerate(records):
            self._queues.setdefault(rec.partition, []).append(i)
        self._next = dict.fromkeys(self._queues, 0)

    def settle(self, i: int, outcome: OutRecord | list[OutRecord] | None) -> None:
        """A record's outcome: one record, several (the enriched record and its redacted copy,
        released together), or None."""
        self._outcomes[i] = outcome

    def release(self) -> list[OutRecord]:
        """What can leave now: each partition's settled records up to its first unsettled one."""
        out = []
        for partition, queue in self._queues.items():
            n = self._next[partition]
            while n < len(queue) and self._outcomes[queue[n]] is not _PENDING:
                outcome = self._outcomes[queue[n]]
                if isinstance(outcome, list):
                    out.extend(outcome)
                elif outcome is not None:
                    out.append(outcome)
                n += 1
            self._next[partition] = n
        return out


def _log_dead_letter(rec: InRecord, reason: str, message: str, dlq: str) -> None:
    log.warning("dead-lettering %s[%d]@%d to %s: %s (%s)", rec.topic, rec.partition, rec.offset, dlq, reason,
                sanitize(message, 200))
