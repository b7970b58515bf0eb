"""The Faust application: lifecycle (start-up, SIGTERM/SIGINT, logging), the HTTP server for
health and metrics, and the source that consumes the input topics (`STREAMS_SOURCE`):

- `faust` (streams.source.faust): an `@app.agent` over the input topics, Faust's consumer, acks
  after delivery. `faust -A streams.app agents` lists it; users add their own agents beside it.
- `librdkafka` (streams.source.librdkafka.EnrichmentLoop): a librdkafka batch consumer in a
  thread, with Faust's Kafka clients off (`_HostOnly`); ~10x the events/s of the agent
  (docs/sources.md).

This module only hosts: the sources live in streams/source/, and every patch of Faust's or
aiokafka's internals in streams/source/faust_patches.py.

Both run every batch through the same `BatchProcessor`; the consumer group is
`STREAMS_APP_ID`. `faust -A streams.app worker` and `streams worker` both run this."""

from __future__ import annotations

import asyncio
import logging
import ssl

import faust
from faust.app.base import BootStrategy
from mode import Service

from .engine import ModelLoadError
from .health import add_health_pages
from .runtime import Runtime
from .serde.registry import SchemaError
from .settings import Settings
from .source.base import EXIT_FATAL, EXIT_UNFINISHED_BATCH, exit_now
from .source.faust import AgentSource
from .source.faust_patches import (AgentHostApp, HostApp, check_installed_versions, environment_without,
                                   install_patches, missing_codecs)
from .source.librdkafka import EnrichmentLoop
from .telemetry import logging_config

log = logging.getLogger("streams.app")

EXIT_STARTUP = 2  # the runtime could not load (a model, a schema, the broker): `streams worker`'s status


class _HostOnly(BootStrategy):
    """Sensors and the web server; no Faust Kafka clients (the loop has its own)."""

    enable_kafka = False


class _AgentOnly(BootStrategy):
    """Faust's Kafka clients for the agent; no sensors (5-10 % of the agent's CPU here)."""

    enable_sensors = False


class _App(HostApp):
    BootStrategy = _HostOnly


class _AgentApp(AgentHostApp):
    BootStrategy = _AgentOnly

    async def on_stop(self) -> None:
        """Faust waits here until every event handed to the agent is acked (the batch in
        flight finishes and is committed); past the grace period, exit 70 without it."""
        settings = self.conf.streams_settings
        log.info("shutting down: finishing the batch in flight (grace %.0fs)", settings.shutdown_grace_s)
        guard = self.source.shutdown_guard(settings.shutdown_grace_s)
        try:
            await super().on_stop()
        finally:
            guard.cancel()
        log.info("agent stopped after %d batches; acked offsets committed", self.source.batches)


def faust_credentials(settings: Settings):
    """The same security settings as the librdkafka clients (`Settings.librdkafka_config`), for
    Faust's aiokafka clients: protocol, SASL mechanism (PLAIN unless set, decided in
    `Settings._security`), username, password, and an ssl context with the same CA file (a
    directory works too, as for librdkafka), client certificate and key."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if settings.kafka_uses_tls:
        ca = settings.kafka_ssl_cafile
        context = ssl.create_default_context(cafile=str(ca) if ca and not ca.is_dir() else None,
                                             capath=str(ca) if ca and ca.is_dir() else None)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(str(settings.kafka_ssl_certfile),
                                    str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=settings.kafka_sasl_username,
                                 password=settings.kafka_sasl_password.get_secret_value(),
                                 mechanism=settings.kafka_sasl_mechanism, ssl_context=context)


def _faust_settings(settings: Settings) -> dict:
    """A batch may take as long as max_poll_interval_s (the models, a dependency waited out):
    Faust must neither leave the group nor log livelock errors before that."""
    slow = settings.max_poll_interval_s
    return dict(
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.kafka_session_timeout_s / 5),
        broker_request_timeout=max(90.0, settings.kafka_session_timeout_s + 10),
        broker_max_poll_interval=slow,
        broker_rebalance_timeout=slow,
        broker_commit_livelock_soft_timeout=slow,
        stream_processing_timeout=slow,
        broker_commit_interval=1.0,
        broker_commit_every=4 * settings.max_batch,
        stream_buffer_maxsize=max(2 * settings.max_batch, settings.max_in_flight),
        consumer_auto_offset_reset="earliest",
        # Faust creates only its internal topics (the changelogs and repartition topics of
        # the tables users add), and only where the worker creates topics at all.
        topic_allow_declare=settings.creates_topics,
        topic_partitions=settings.topic_partitions,
        topic_disable_leader=True,
        broker_credentials=faust_credentials(settings),
    )


# Faust's web settings that STREAMS_HEALTH_* decide. Faust also reads each from its own
# environment variable (WEB_PORT, WEB_BIND, APP_WEB_TABLES_ENABLED ...; with APP_ENV_PREFIX,
# <prefix>_WEB_PORT ...), and there the environment wins over the values create_app passes:
# a WEB_PORT that Kubernetes puts in every pod of a namespace with a Service named "web"
# (`tcp://10.0.0.1:80`) would stop the worker. `environment_without` keeps them from Faust.
_FAUST_WEB_SETTINGS = ("web_enabled", "web_port", "web_bind", "web_router_enabled", "web_tables_enabled",
                       "web_stats_enabled", "web_graph_enabled", "web_metrics_enabled")


def _faust_web_settings(settings: Settings) -> dict:
    """The health server: STREAMS_HEALTH_PORT on STREAMS_HEALTH_BIND, on both sources, with
    Faust's built-in pages off (also left out by `_OwnPagesWeb`)."""
    return dict(web_enabled=settings.health_port > 0, web_port=settings.health_port or 8080,
                web_bind=settings.health_bind, web_router_enabled=False, web_tables_enabled=False,
                web_stats_enabled=False, web_graph_enabled=False, web_metrics_enabled=False)


def create_app(settings: Settings) -> faust.App:
    agent = settings.source == "faust"
    app = (_AgentApp if agent else _App)(
        settings.app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.kafka_bootstrap.split(",")],
        **_faust_web_settings(settings),
        env=environment_without(_FAUST_WEB_SETTINGS),
        datadir=str(settings.model_cache.parent / "faust-data"),
        logging_config=logging_config(settings.log_level, settings.log_format),
        autodiscover=list(settings.app_modules) or False,  # users' agents, tables, pages
        **(_faust_settings(settings) if agent else {}),
    )
    # STREAMS_HEALTH_PORT alone turns the server on or off, also under `faust -A streams.app
    # worker` (its --with-web/--without-web flag, on by default, would set conf.web_enabled).
    app.boot_strategy.enable_web = settings.health_port > 0
    app.conf.streams_settings = settings  # for tests and the CLI
    app.runtime = None  # type: ignore[attr-defined]
    # The source: what health, metrics and shutdown read (state, alive(), runtime).
    app.source = AgentSource(settings) if agent else None  # type: ignore[attr-defined]
    if agent:
        _add_agent(app, settings)

    @app.service
    class Enrichment(Service):
        """Loads the runtime (unless the CLI already did), runs the loop, and on shutdown
        lets the batch in flight finish within the grace period."""

        async def on_start(self) -> None:
            _check_installation(agent)
            if app.runtime is None:
                app.runtime = await _runtime(app, settings)
            if agent:
                app.source.attach(app.runtime)
            else:  # `streams worker` subscribed a consumer early (cli._early_consumer)
                app.source = EnrichmentLoop(app.runtime, getattr(app, "early_consumer", None)).start()

        async def on_stop(self) -> None:
            runner = app.source
            if not isinstance(runner, EnrichmentLoop):
                return
            log.info("shutting down: finishing the batch in flight (grace %.0fs)", settings.shutdown_grace_s)
            if not await asyncio.to_thread(runner.stop, settings.shutdown_grace_s):
                exit_now(EXIT_UNFINISHED_BATCH, f"batch in flight did not finish within "
                                                f"{settings.shutdown_grace_s:.0f}s; exiting without committing it")

    add_health_pages(app)
    return app


def startup_failure(exc: Exception) -> str:
    """What to tell the operator when the runtime could not load: a model or schema error says
    what to fix in its own words; anything else (the broker unreachable) is named by its type."""
    return str(exc) if isinstance(exc, (ModelLoadError, SchemaError)) else f"{type(exc).__name__}: {exc}"


async def _runtime(app: faust.App, settings: Settings) -> Runtime:
    """The runtime `streams worker` started loading before Faust (`app.runtime_loading`), or
    loaded now. A model, schema or broker that fails it stops the worker with the reason, on
    stderr and in the log, and status 2, as `streams worker` does on the librdkafka source:
    nothing was taken yet, so nothing is lost."""
    loading = getattr(app, "runtime_loading", None)
    try:
        if loading is not None:
            return await asyncio.wrap_future(loading)
        return await asyncio.to_thread(Runtime.load, settings)
    except Exception as exc:  # noqa: BLE001 - stated, then the process stops
        exit_now(EXIT_STARTUP, startup_failure(exc), stderr=True)


def _check_installation(agent: bool) -> None:
    """A Faust or aiokafka release the patches of their internals were not written for
    (streams/source/faust_patches.py), or on the agent a Kafka codec aiokafka cannot
    decompress, is a broken installation: stop before taking any event (78), never
    dead-letter what a Java producer compressed with lz4, zstd or snappy."""
    problem = check_installed_versions()
    missing = missing_codecs() if agent else []
    if problem is None and missing:
        problem = (f"aiokafka cannot decompress {', '.join(missing)} batches in this installation "
                   "(Java producers' compression.type): install cramjam (`make setup` does), or "
                   "run STREAMS_SOURCE=librdkafka")
    if problem is not None:
        exit_now(EXIT_FATAL, problem, stderr=True)


def _add_agent(app: faust.App, settings: Settings) -> None:
    source: AgentSource = app.source
    install_patches()
    for route in settings.topics:  # one agent per input topic: Faust's CLI names each topic
        topic = app.topic(route.input, key_serializer="raw", value_serializer="raw", acks=True)

        async def enrich(stream, topic=route.input):
            """Enrich one input topic: batches of max_batch events (an LLM topic's sized by
            time), acked after delivery."""
            await source.consume(app, stream, topic)

        app.agent(topic, name=f"streams.enrich.{route.input}", concurrency=1)(enrich)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        source.assigned(assigned)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        source.revoked(revoked)

    @app.task
    async def watch() -> None:
        await source.watch(app)


settings = Settings()
app = create_app(settings)
