"""The Faust worker: one agent per input topic.

Per micro-batch: decode -> infer (in a worker thread, so heartbeats keep flowing) -> encode ->
produce enriched and dead-letter records -> wait for the broker's acknowledgements -> only then
let `take_events` ack the batch, so Faust commits an offset only after its output is durable
(at-least-once). `faust -A streams.app worker` and `streams worker` both run this app."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import faust

from .engine import Engine, Inference, LabelSet, NoopEngine
from .enrich import SourceRecord, enriched_record
from .serde import DecodeError, InputEvent, SchemaCatalog, decode_input
from .settings import Settings, TopicRoute
from .dlq import dlq_headers
from .health import add_health_pages
from .kafka import ensure_topics
from .produce import AckingProducer, OutRecord

log = logging.getLogger("streams.worker")


@dataclass(frozen=True, slots=True)
class InferenceFailure:
    exc: BaseException


class Runtime:
    """What a worker loads once at start-up: models and schemas. Failing here is the point:
    a missing model or unreachable registry stops the worker before it takes any event."""

    def __init__(self, settings: Settings, engine: Engine, catalog: SchemaCatalog):
        self.settings = settings
        self.engine = engine
        self.catalog = catalog
        self.labels = {r.input: LabelSet.from_mapping(r.labels) for r in settings.topics}
        # One thread: the models are not shared between concurrent forward passes.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.worker_id = settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.producer = AckingProducer(settings.librdkafka_config())

    @classmethod
    def load(cls, settings: Settings) -> "Runtime":
        ensure_topics(settings)
        catalog = SchemaCatalog.from_settings(settings)
        catalog.ensure_registered()
        if settings.engine == "noop":
            engine = NoopEngine()
        else:
            engine = Engine.load(settings.ner_model, settings.classifier_model,
                                 cache_dir=settings.model_cache, device=settings.device,
                                 max_batch=settings.model_batch,
                                 max_tokens=settings.max_tokens_per_pass,
                                 model_version=settings.model_version)
        log.info("models loaded on %s in %.1fs: %s", engine.device, engine.load_seconds,
                 ", ".join(f"{m.task}={m.name}@{m.version}" for m in engine.models))
        return cls(settings, engine, catalog)

    def infer(self, texts: Sequence[str], labels: LabelSet) -> list[Inference | InferenceFailure]:
        """Run a batch; if it fails (an exception, out of memory), split it and retry the
        halves, so one bad event fails alone and its neighbours are still enriched."""
        try:
            return list(self.engine.infer(texts, labels))
        except Exception as exc:  # noqa: BLE001 - every failure is contained to its events
            _free_accelerator_memory()
            if len(texts) == 1:
                return [InferenceFailure(exc)]
            mid = len(texts) // 2
            return self.infer(texts[:mid], labels) + self.infer(texts[mid:], labels)


def _free_accelerator_memory() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def faust_credentials(settings: Settings):
    import ssl
    ssl_context = None
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        ssl_context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
        if settings.kafka_ssl_certfile:
            ssl_context.load_cert_chain(str(settings.kafka_ssl_certfile),
                                        str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
        return faust.SASLCredentials(username=settings.kafka_sasl_username or "", password=password,
                                     mechanism=settings.kafka_sasl_mechanism, ssl_context=ssl_context)
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.kafka_session_timeout_s / 5),
        broker_commit_interval=1.0,
        # Commit after every batch's worth of acks too: a crash then re-delivers at most the
        # events in flight, not a commit interval's worth.
        broker_commit_every=settings.max_batch,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,  # Faust's own producer (internal topics); outputs go through AckingProducer
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        stream_buffer_maxsize=settings.max_in_flight,  # backpressure: fetching pauses beyond it
        broker_max_poll_interval=settings.max_poll_interval_s,
        web_enabled=settings.health_port > 0,
        web_port=settings.health_port or 8080,
        web_bind=settings.health_bind,
        datadir=str(settings.model_cache.parent / "faust-data"),
    )
    app.conf.streams_settings = settings  # for tests and the CLI
    app.runtime = None  # type: ignore[attr-defined]

    @app.on_worker_init.connect
    def _load_runtime(app, **kwargs) -> None:  # noqa: ANN001
        if app.runtime is None:
            app.runtime = Runtime.load(settings)

    for route in settings.topics:
        _add_agent(app, route)
    add_health_pages(app)
    return app


def _add_agent(app: faust.App, route: TopicRoute) -> None:
    settings: Settings = app.conf.streams_settings
    source = app.topic(route.input, key_type=bytes, value_type=bytes)

    async def enrich(stream):
        async for events in stream.take_events(settings.max_batch, within=settings.max_wait_s):
            await _finish_or_exit(process_batch(app.runtime, route, events), settings.shutdown_grace_s)

    # concurrency=1: faust-streaming #606 commits past in-flight events with more.
    app.agent(source, name=f"enrich-{route.input}", concurrency=1)(enrich)


async def _finish_or_exit(batch, grace_s: float) -> None:
    """take_events acks a batch when the agent body returns *or raises*, and Faust then commits
    it. So the body must never leave early: on shutdown (cancellation) it finishes the batch
    within the grace period; if it cannot, or on an unexpected error, the process exits
    without acking, and the batch is re-delivered after restart (at-least-once)."""
    work = asyncio.ensure_future(batch)
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        log.info("shutting down: finishing the batch in flight (grace %.0fs)", grace_s)
        try:
            await asyncio.wait_for(asyncio.shield(work), grace_s)
        except BaseException:  # noqa: BLE001 - timeout, second cancel, or the batch failed
            log.error("batch in flight did not finish within %.0fs; exiting without committing it", grace_s)
            os._exit(70)
        raise
    except Exception:  # noqa: BLE001
        log.exception("unexpected error in a batch; exiting without committing it")
        os._exit(70)


async def process_batch(runtime: Runtime, route: TopicRoute, events) -> None:
    started = time.perf_counter()
    oks: list[tuple[object, InputEvent]] = []
    bad: list[tuple[object, str, str, str, BaseException | None]] = []
    tombstones = 0
    for event in events:
        msg = event.message
        decoded = decode_input(msg.value, msg.topic, runtime.catalog, runtime.settings.max_text_bytes)
        if decoded is None:
            tombstones += 1
        elif isinstance(decoded, DecodeError):
            bad.append((msg, decoded.reason, decoded.message, "DecodeError", None))
        else:
            oks.append((msg, decoded))

    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    results = await loop.run_in_executor(
        runtime.executor, runtime.infer, [e.text for _, e in oks], runtime.labels[route.input]) if oks else []
    inference_ms = (time.perf_counter() - t0) * 1000

    pending = []
    for (msg, event), result in zip(oks, results):
        if isinstance(result, InferenceFailure):
            bad.append((msg, "inference_error", f"{type(result.exc).__name__}: {result.exc}",
                        type(result.exc).__name__, result.exc))
            continue
        source = SourceRecord(msg.topic, msg.partition, msg.offset, _timestamp_ms(msg))
        try:
            value = runtime.catalog.encode_enriched(
                enriched_record(event, result, source, runtime.engine.models, inference_ms), route.output)
        except Exception as exc:  # noqa: BLE001
            bad.append((msg, "encode_error", f"{type(exc).__name__}: {exc}", type(exc).__name__, exc))
            continue
        key = msg.key if msg.key is not None else event.event_id.encode()
        pending.append(OutRecord(route.output, key, value, _passthrough(msg.headers)))
    enriched = len(pending)

    for msg, reason, message, error_class, exc in bad:
        log.warning("dead-lettering %s[%d]@%d: %s (%s)", msg.topic, msg.partition, msg.offset,
                    reason, message[:200])
        headers = dlq_headers(original_headers=_passthrough(msg.headers), reason=reason, message=message,
                              error_class=error_class, topic=msg.topic, partition=msg.partition,
                              offset=msg.offset, timestamp_ms=_timestamp_ms(msg),
                              worker_id=runtime.worker_id, exc=exc)
        pending.append(OutRecord(route.dlq, msg.key, msg.value or b"", headers))

    # The broker's acknowledgements, before take_events acks (and Faust commits) the batch.
    await runtime.producer.send_all(pending)
    log.info("batch %s: %d enriched, %d dead-lettered, %d tombstones, inference %.0f ms, total %.0f ms",
             route.input, enriched, len(bad),
             tombstones, inference_ms, (time.perf_counter() - started) * 1000)


def _timestamp_ms(msg) -> int | None:
    return int(msg.timestamp * 1000) if msg.timestamp else None


def _passthrough(headers) -> list[tuple[str, bytes]]:
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    return [(k, v) for k, v in items if v is not None]


settings = Settings()
app = create_app(settings)
