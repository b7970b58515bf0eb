"""One batch of input records -> enriched and dead-letter records, ready to produce.

decode -> infer -> encode, with every failure turned into a dead-letter record (bad records
are data, not exceptions). Plain and synchronous: the Faust agent runs it in a worker thread,
`streams replay` calls it directly."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from .dlq import PREFIX, dlq_headers
from .engine import Inference, LabelSet, NoopEngine
from .engine.thread import inference_thread
from .enrich import SourceRecord, enriched_record
from .kafka import ensure_output_topics
from .errors import FatalError, RetriableError, describe, sanitize
from .produce import AckingProducer, record_size
from .records import InRecord, OutRecord
from .serde import DecodeError, InputEvent, SchemaCatalog, decode_input
from .settings import Settings, TopicRoute
from .telemetry import BatchTrace, Telemetry, default_telemetry, replace_trace_headers

if TYPE_CHECKING:
    from .engine.llm import LLMEngine

log = logging.getLogger("streams.pipeline")


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


@dataclass(frozen=True, slots=True)
class InferenceFailure:
    """One event the engine failed on while the engine itself works (a probe text passes)."""

    exc: BaseException
    reason: str = "inference_error"


class Runtime:
    """What a worker loads once at start-up: topics, schemas, models, a producer. Failing here
    is the point: a missing model or unreachable registry stops it before it takes any event."""

    def __init__(self, settings: Settings, engine, catalog: SchemaCatalog, *,
                 telemetry: Telemetry | None = None):
        self.settings = settings
        # Traces/metrics; by default the process's own, configured by the OTEL_* environment.
        self.telemetry = telemetry if telemetry is not None else \
            default_telemetry(settings.app_id, settings.app_id)
        self.engine = engine
        self.catalog = catalog
        self.labels = {r.input: LabelSet.from_mapping(r.labels) for r in settings.topics}
        # Provenance per topic: the models that produced its records (they differ by topic when
        # some take their label or entities from the LLM).
        models_for = getattr(engine, "models_for", None)
        self.models = {r.input: models_for(r.input) if models_for else engine.models
                       for r in settings.topics}
        self.worker_id = settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.producer = AckingProducer(settings.librdkafka_config() | {
                                           "message.timeout.ms": int(settings.delivery_timeout_s * 1000)},
                                       max_message_bytes=settings.max_message_bytes,
                                       max_backoff_s=settings.retry_max_backoff_s)

    @classmethod
    def load(cls, settings: Settings, *, telemetry: Telemetry | None = None) -> "Runtime":
        ensure_output_topics(settings)
        catalog = SchemaCatalog.from_settings(settings)
        catalog.ensure_registered()
        if telemetry is None:  # made here: the LLM engine counts its dropped spans in it
            telemetry = default_telemetry(settings.app_id, settings.app_id)
        engine = inference_thread.call(_load_engine, settings, telemetry)
        runtime = cls(settings, engine, catalog, telemetry=telemetry)
        runtime.telemetry.record_model_load(engine.load_seconds, engine.models, engine.device)
        runtime.telemetry.record_retry(None)  # healthy: the degraded gauge and retry counter start at 0
        return runtime

    def infer(self, texts: Sequence[str], labels: LabelSet,
              topic: str | None = None) -> list[Inference | InferenceFailure]:
        """Run a batch; if it fails (an exception, out of memory), split it and retry the
        halves, so one bad event fails alone and its neighbours are still enriched. An event
        that fails alone is bad data only if the engine still works: a probe text must pass,
        else the engine is broken (`RetriableError("accelerator")`: the worker reloads it).
        A text the engine failed on its own while working (an LLM output cut off by the token
        cap) fails alone at once, with the engine's reason, and needs no probe."""
        out = self._infer_split(texts, labels, topic)
        failures = sum(isinstance(r, InferenceFailure) and r.reason == "inference_error" for r in out)
        if failures:
            try:
                self._engine_infer([PROBE_TEXT], labels, topic)
            except Exception as exc:  # noqa: BLE001 - not the events' fault
                _free_accelerator_memory()
                raise RetriableError("accelerator", f"the models fail on a probe text too: "
                                                    f"{describe(exc)}") from exc
        return out

    def _engine_infer(self, texts: Sequence[str], labels: LabelSet, topic: str | None):
        """On the one inference thread (streams/engine/thread.py), whichever source calls. The
        no-op engine runs no torch, so it is called in place: the stream ceiling it measures is
        the stream's alone, without a thread hand-off per batch."""
        args = (texts, labels, topic) if topic is not None and getattr(self.engine, "by_topic", False) \
            else (texts, labels)
        if not getattr(self.engine, "runs_models", True):
            return self.engine.infer(*args)
        return inference_thread.call(self.engine.infer, *args)

    def _infer_split(self, texts: Sequence[str], labels: LabelSet,
                     topic: str | None = None) -> list[Inference | InferenceFailure]:
        try:
            results = self._engine_infer(texts, labels, topic)
        except Exception as exc:  # noqa: BLE001 - every failure is contained to its events
            _free_accelerator_memory()
            if len(texts) == 1:
                return [InferenceFailure(exc)]
            mid = len(texts) // 2
            return self._infer_split(texts[:mid], labels, topic) + self._infer_split(texts[mid:], labels, topic)
        return [InferenceFailure(r, getattr(r, "reason", "inference_error")) if isinstance(r, Exception) else r
                for r in results]

    def reload_engine(self) -> None:
        """Load the models again (after the engine failed on a probe text)."""
        self.engine = inference_thread.call(_load_engine, self.settings)
        llm = getattr(self.engine, "llm", None)
        if llm is not None:
            llm.on_dropped_spans = self.telemetry.metrics.record_llm_dropped_spans

    def max_events_for(self, topic: str) -> int | None:
        """The most events of `topic` a source should take into one batch: the LLM's measured
        events/s x `llm_batch_budget_s` (default max_poll_interval_s / 3), at least 1, at most
        `max_batch`; None when the topic does not use the LLM (take up to `max_batch`)."""
        cap = getattr(self.engine, "max_events_for", None)
        if cap is None:
            return None
        s = self.settings
        n = cap(topic, s.llm_batch_budget_s or s.max_poll_interval_s / 3)
        return None if n is None else min(n, s.max_batch)

    def max_events(self) -> int | None:
        """For a source whose batch mixes every input topic: the smallest cap of any topic."""
        caps = [n for n in (self.max_events_for(r.input) for r in self.settings.topics) if n is not None]
        return min(caps) if caps else None


PROBE_TEXT = "Hello, my parcel has not arrived yet."


def _load_engine(settings: Settings, telemetry: Telemetry | None = None):
    engine = load_engines(settings, telemetry)
    if hasattr(engine, "warm_up"):  # not the no-op engine
        log.info("models warmed up in %.1fs", engine.warm_up())
    log.info("models loaded on %s in %.1fs: %s", engine.device, engine.load_seconds,
             ", ".join(f"{m.task}={m.name}@{m.version}" for m in engine.models))
    return engine


def load_engines(settings: Settings, telemetry: Telemetry | None = None):
    """The engines the configured topics need: the encoder models when a topic takes its
    entities or label from them, the LLM when one takes anything from it (each topic's grammar
    and prompt prepared here, at start-up). `telemetry` counts the LLM's dropped spans."""
    from .engine import Engine  # torch: imported when the models load, not with the app
    from .engine.llm import LLMTask
    from .engine.topics import TopicEngines, TopicPlan
    from .serde.fields import load_field_record

    plans = {r.input: TopicPlan(r.input, LabelSet.from_mapping(r.labels), r.entities_from, r.label_from,
                                load_field_record(settings.schema_dir, r.fields) if r.fields else None)
             for r in settings.topics}
    encoder = llm = None
    if any(p.uses_encoder for p in plans.values()):
        if settings.engine == "noop":
            encoder = NoopEngine()
        else:
            encoder = Engine.load(settings.ner_model, settings.classifier_model,
                                  cache_dir=settings.model_cache, device=settings.device,
                                  max_batch=settings.model_batch,
                                  max_tokens=settings.max_tokens_per_pass,
                                  model_version=settings.model_version,
                                  overlap_tokenization=settings.overlap_tokenization,
                                  quantize=settings.quantize)
    if any(p.uses_llm for p in plans.values()):
        llm = load_llm(settings, telemetry)
        for plan in plans.values():
            if plan.uses_llm:
                prepared = llm.add_task(LLMTask(
                    plan.topic, plan.labels if plan.label_from == "llm" else None,
                    tuple(settings.llm_entity_types) if plan.entities_from == "llm" else None,
                    plan.fields))
                log.info("LLM task for %s prepared in %.1fs (prompt prefix %d tokens)", plan.topic,
                         prepared.compile_seconds, len(prepared.prefix_ids))
    if llm is None:  # no LLM anywhere: the encoder engine as before
        return encoder if encoder is not None else NoopEngine()
    return TopicEngines(plans, encoder, llm)


def load_llm(settings: Settings, telemetry: Telemetry | None = None, **overrides) -> LLMEngine:
    """The LLM engine with the configured model and options (`overrides` for the bench)."""
    from .engine.llm import LLMEngine

    options = dict(device=settings.device, dtype=settings.llm_dtype,
                   max_new_tokens=settings.llm_max_new_tokens,
                   retry_max_new_tokens=settings.llm_retry_max_new_tokens,
                   max_batch=settings.llm_batch, max_tokens=settings.llm_max_tokens_per_pass,
                   few_shot=settings.llm_few_shot, prefix_cache=settings.llm_prefix_cache,
                   max_string_chars=settings.llm_max_string_chars or None,
                   max_input_tokens=settings.llm_max_input_tokens)
    if settings.llm_examples_dir is not None:
        options["examples_dir"] = settings.llm_examples_dir
    if telemetry is not None:
        options["on_dropped_spans"] = telemetry.metrics.record_llm_dropped_spans
    options.update(overrides)
    return LLMEngine.load(settings.llm_model, cache_dir=settings.model_cache, **options)


def _free_accelerator_memory() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


Emit = Callable[[list[OutRecord]], None]


def enrich_records(runtime: Runtime, route: TopicRoute, records: Sequence[InRecord],
                   extra_headers: Callable[[InRecord], list[tuple[str, bytes]]] | None = None, *,
                   received_ns: int | None = None, defer_trace_end: bool = False,
                   emit: Emit | None = None) -> BatchResult:
    """`extra_headers(record)` adds headers to that record's output (replay markers).

    `emit`: called with each group of outputs as soon as it is ready, so the caller can send
    them while the next forward passes run: the texts go through the engine in groups of
    `settings.output_chunk` (by length, so each group pads little), the dead letters come
    last. Without it the batch runs through the engine whole. Either way `result.out` holds
    every output and dead letter of the batch.

    Telemetry (`runtime.telemetry`): metrics for the batch always; spans only when tracing is
    on (checked once per batch). `received_ns` (time.time_ns()) starts the event spans when
    the batch was taken from the consumer, default now. `defer_trace_end=True` leaves the
    spans open in `result.trace`: the caller ends them with `result.end_trace()` once the
    produce is acknowledged, so the send spans cover it. Otherwise they end here."""
    telemetry = runtime.telemetry
    more = extra_headers or _no_headers
    if not telemetry.tracing_enabled:  # the one check: nothing per event for tracing below
        return _enrich(runtime, route, records, more, None, emit)
    trace = telemetry.start_batch(route.input, records, received_ns)
    try:
        with trace.current():  # log lines of the batch carry its trace id
            result = _enrich(runtime, route, records, more, trace, emit)
    except BaseException as exc:
        trace.end(exc)
        raise
    trace.summarize(result.enriched, result.dead, result.tombstones, result.inference_ms)
    if defer_trace_end:
        result.trace = trace
    else:
        trace.end()
    return result


def _no_headers(rec: InRecord) -> list[tuple[str, bytes]]:
    return []


def _chunks(oks: list, size: int | None) -> list[list]:
    """The decoded events in groups for the engine: all at once (`size` None), or sorted by
    text length and cut into groups of `size`, so each group's forward passes pad little and
    its outputs can leave before the longer texts are done (`InOrder` holds back whatever
    would overtake an earlier record of its partition)."""
    if size is None or len(oks) <= size:
        return [oks] if oks else []
    ordered = sorted(oks, key=lambda ok: len(ok[2].text))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


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

    def settle(self, i: int, outcome: OutRecord | None) -> None:
        self._outcomes[i] = outcome

    def release(self) -> list[OutRecord]:
        """What can leave now: each partition's settled records up to its first unsettled one."""
        out = []
        for partition, queue in self._queues.items():
            n = self._next[partition]
            while n < len(queue) and self._outcomes[queue[n]] is not _PENDING:
                outcome = self._outcomes[queue[n]]
                if outcome is not None:
                    out.append(outcome)
                n += 1
            self._next[partition] = n
        return out


def _enrich(runtime: Runtime, route: TopicRoute, records: Sequence[InRecord],
            more: Callable[[InRecord], list[tuple[str, bytes]]], trace: BatchTrace | None,
            emit: Emit | None = None) -> BatchResult:
    oks: list[tuple[int, InRecord, InputEvent]] = []
    bad: list[tuple[InRecord, str]] = []  # (record, reason), for the metrics
    tombstone_partitions: list[int] = []
    result = BatchResult(out=[])
    order = InOrder(records)

    def dead(i: int, rec: InRecord, reason: str, message: str, error_class: str,
             exc: BaseException | None = None) -> None:
        if trace is None:
            _log_dead_letter(rec, reason, message)
        else:
            with trace.current(i):  # the line carries the event's (the producer's) trace id
                _log_dead_letter(rec, reason, message)
        bad.append((rec, reason))
        order.settle(i, dead_letter(runtime, route, rec, reason, message, error_class, exc, more,
                                    None if trace is None else trace.send(i, route.dlq, reason)))

    def release() -> None:
        ready = order.release()
        if emit is not None and ready:
            emit(ready)
        result.out.extend(ready)

    for i, rec in enumerate(records):
        if rec.client_error is not None:
            dead(i, rec, "undecodable_record", rec.client_error, "KafkaError")
            continue
        decoded = decode_input(rec.value, rec.topic, runtime.catalog, runtime.settings.max_text_bytes)
        if decoded is None:
            tombstone_partitions.append(rec.partition)
            order.settle(i, None)
            if trace is not None:
                trace.tombstone(i)
        elif isinstance(decoded, DecodeError):
            dead(i, rec, decoded.reason, decoded.message, "DecodeError")
        else:
            oks.append((i, rec, decoded))
    result.tombstones = len(tombstone_partitions)
    release()  # what precedes the first decoded event of each partition leaves at once

    producer = runtime.producer
    labels = runtime.labels[route.input]
    for chunk in _chunks(oks, None if emit is None else runtime.settings.output_chunk or
                         runtime.settings.model_batch):
        t0 = time.perf_counter()
        start_ns = time.time_ns()
        inferred = runtime.infer([e.text for _, _, e in chunk], labels, route.input)
        chunk_ms = (time.perf_counter() - t0) * 1000
        result.inference_ms += chunk_ms
        if trace is not None:
            trace.inference([i for i, _, _ in chunk], start_ns, time.time_ns())
        for (i, rec, event), inference in zip(chunk, inferred):
            if isinstance(inference, InferenceFailure):
                dead(i, rec, inference.reason, describe(inference.exc), type(inference.exc).__name__,
                     inference.exc)
                continue
            source = SourceRecord(rec.topic, rec.partition, rec.offset, rec.timestamp_ms)
            try:
                value = runtime.catalog.encode_enriched(
                    enriched_record(event, inference, source, runtime.models[route.input], chunk_ms),
                    route.output)
            except (RetriableError, FatalError):
                raise  # the registry, not the record: waited for or fatal (serde.registry_failure)
            except Exception as exc:  # noqa: BLE001
                dead(i, rec, "encode_error", describe(exc), type(exc).__name__, exc)
                continue
            key = rec.key if rec.key is not None else event.event_id.encode()
            if trace is None:
                headers = [*rec.headers, *more(rec)]
            else:  # this worker's context replaces the producer's: subscribers continue the trace
                headers = [*replace_trace_headers(rec.headers, trace.send(i, route.output)), *more(rec)]
            out = OutRecord(route.output, key, value, headers, "output", rec)
            if not producer.fits(out):  # sized before producing: librdkafka would refuse it
                dead(i, rec, "output_too_large", f"the enriched record would be {record_size(out)} "
                     f"bytes; the producer's limit is {producer.max_message_bytes}", "RecordTooLarge")
                continue
            order.settle(i, out)
            result.enriched += 1
        release()
    result.dead = len(bad)

    runtime.telemetry.metrics.record_batch(
        route.input, records, tombstone_partitions=tombstone_partitions,
        dead=[(rec.partition, reason) for rec, reason in bad],
        inference_s=result.inference_ms / 1000 if oks else None)
    return result


def _log_dead_letter(rec: InRecord, reason: str, message: str) -> None:
    log.warning("dead-lettering %s[%d]@%d: %s (%s)", rec.topic, rec.partition, rec.offset, reason,
                sanitize(message, 200))


OMITTED = "__streams.errors.omitted"


def dead_letter(runtime: Runtime, route: TopicRoute, rec: InRecord, reason: str, message: str,
                error_class: str, exc: BaseException | None = None,
                more: Callable[[InRecord], list[tuple[str, bytes]]] = _no_headers,
                trace_context: list[tuple[str, bytes]] | None = None, *, bare: bool = False) -> OutRecord:
    """The dead letter of one input record: its key, bytes and headers plus provenance, or,
    when that would be over the producer's limit (or `bare`), provenance alone with
    `__streams.errors.omitted` naming what was left out: the original stays in the input topic
    at the coordinates the headers give."""
    headers = dlq_headers(original_headers=rec.headers, reason=reason, message=message,
                          error_class=error_class, topic=rec.topic, partition=rec.partition,
                          offset=rec.offset, timestamp_ms=rec.timestamp_ms,
                          worker_id=runtime.worker_id, exc=exc, trace_context=trace_context)
    if rec.client_error is not None:
        return OutRecord(route.dlq, None, b"", [*headers, (OMITTED, b"key,value,headers"), *more(rec)],
                         "dlq_bare", rec)
    out = OutRecord(route.dlq, rec.key, rec.value or b"", [*headers, *more(rec)], "dlq", rec)
    if not bare and runtime.producer.fits(out):
        return out
    provenance = dlq_headers(original_headers=[], reason=reason, message=message,
                             error_class=error_class, topic=rec.topic, partition=rec.partition,
                             offset=rec.offset, timestamp_ms=rec.timestamp_ms,
                             worker_id=runtime.worker_id, exc=exc, trace_context=trace_context)
    key = rec.key if rec.key is not None and len(rec.key) <= 1024 else None
    omitted = "value,headers" if key is not None or rec.key is None else "key,value,headers"
    return OutRecord(route.dlq, key, b"", [*provenance, (OMITTED, omitted.encode()), *more(rec)],
                     "dlq_bare", rec)


def deliver(runtime: Runtime, out: list[OutRecord], timeout: float | None = None, *,
            sent: bool = False) -> None:
    """Produce a batch's records and wait for the broker's acknowledgements. An output the
    broker refuses for good is dead-lettered in its place; a refused dead letter goes again
    without the original bytes and headers; a refused bare dead letter is fatal (the DLQ
    topic itself does not take records). `sent`: `out` was already handed to
    `runtime.producer.send` (as `enrich_records` emitted it); only the acknowledgements are
    awaited."""
    rejected = runtime.producer.deliver(out, timeout, sent=sent)
    while rejected:
        again = []
        for record, why in rejected:
            rec = record.source
            route = runtime.settings.route(rec.topic)
            if record.kind == "output":
                log.warning("the broker refused the enriched record of %s[%d]@%d (%s); dead-lettering it",
                            rec.topic, rec.partition, rec.offset, why)
                again.append(dead_letter(runtime, route, rec, "output_rejected", why, "KafkaError"))
            elif record.kind == "dlq":
                log.warning("the broker refused the dead letter of %s[%d]@%d (%s); sending it without "
                            "the original bytes", rec.topic, rec.partition, rec.offset, why)
                reason = dict(record.headers or []).get(PREFIX + "reason", b"unknown").decode()
                again.append(dead_letter(runtime, route, rec, reason, why, "KafkaError", bare=True))
            else:
                raise FatalError(f"the DLQ topic {record.topic!r} refuses even a bare dead letter ({why}): "
                                 "check its configuration (max.message.bytes, ACLs)")
        rejected = runtime.producer.deliver(again, timeout)
