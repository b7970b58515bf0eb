"""The Faust worker: one agent per input topic.

Per micro-batch: decode -> infer (in a worker thread, so heartbeats keep flowing) -> encode ->
produce enriched and dead-letter records -> wait for the broker's acknowledgements -> only then
let `take_events` ack the batch, so Faust commits an offset only after its output is durable
(at-least-once). `faust -A streams.app worker` and `streams worker` both run this app."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import faust

from .health import add_health_pages
from .pipeline import InferenceFailure, InRecord, Runtime, enrich_records  # noqa: F401 - re-exported
from .settings import Settings, TopicRoute

log = logging.getLogger("streams.worker")


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
    records = [InRecord(m.topic, m.partition, m.offset, _timestamp_ms(m), m.key, m.value,
                        _passthrough(m.headers)) for m in (e.message for e in events)]
    loop = asyncio.get_running_loop()
    # Decode, inference and encode in the worker thread: the loop keeps heartbeats going.
    result = await loop.run_in_executor(runtime.executor, enrich_records, runtime, route, records)
    # The broker's acknowledgements, before take_events acks (and Faust commits) the batch.
    await runtime.producer.send_all(result.out)
    log.info("batch %s: %d enriched, %d dead-lettered, %d tombstones, inference %.0f ms, total %.0f ms",
             route.input, result.enriched, result.dead, result.tombstones, result.inference_ms,
             (time.perf_counter() - started) * 1000)


def _timestamp_ms(msg) -> int | None:
    return int(msg.timestamp * 1000) if msg.timestamp else None


def _passthrough(headers) -> list[tuple[str, bytes]]:
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    return [(k, v) for k, v in items if v is not None]


settings = Settings()
app = create_app(settings)
