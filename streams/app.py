"""The Faust worker that hosts the enrichment loop.

Faust gives the process its lifecycle (start-up, SIGTERM/SIGINT, logging) and the HTTP server
for health and metrics. The records themselves go through `streams.worker.EnrichmentLoop`, a
librdkafka batch consumer in its own thread: Faust's per-event stream cost ~280 µs of CPU per
event here, which capped a worker near 3,000 events/s, below what one GPU consumes. So Faust's
own Kafka consumer and producer are not started (`_HostOnly`), and the consumer group is the
loop's (`STREAMS_APP_ID`). `faust -A streams.app worker` and `streams worker` both run this."""

from __future__ import annotations

import asyncio
import logging
import os

import faust
from faust.app.base import BootStrategy
from mode import Service

from .health import add_health_pages
from .pipeline import Runtime
from .settings import Settings
from .telemetry import logging_config
from .worker import EXIT_UNFINISHED_BATCH, EnrichmentLoop

log = logging.getLogger("streams.app")


class _HostOnly(BootStrategy):
    """Sensors and the web server; no Faust Kafka clients (the loop has its own)."""

    enable_kafka = False


class _App(faust.App):
    BootStrategy = _HostOnly


def create_app(settings: Settings) -> faust.App:
    app = _App(
        settings.app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.kafka_bootstrap.split(",")],
        web_enabled=settings.health_port > 0,
        web_port=settings.health_port or 8080,
        web_bind=settings.health_bind,
        datadir=str(settings.model_cache.parent / "faust-data"),
        logging_config=logging_config(settings.log_level, settings.log_format),
    )
    app.conf.streams_settings = settings  # for tests and the CLI
    app.runtime = None  # type: ignore[attr-defined]
    app.loop_runner = None  # type: ignore[attr-defined]

    @app.service
    class Enrichment(Service):
        """Loads the runtime (unless the CLI already did), runs the loop, and on shutdown
        lets the batch in flight finish within the grace period."""

        async def on_start(self) -> None:
            if app.runtime is None:
                app.runtime = await asyncio.to_thread(Runtime.load, settings)
            app.loop_runner = EnrichmentLoop(app.runtime).start()

        async def on_stop(self) -> None:
            runner: EnrichmentLoop | None = app.loop_runner
            if runner is None:
                return
            log.info("shutting down: finishing the batch in flight (grace %.0fs)", settings.shutdown_grace_s)
            if not await asyncio.to_thread(runner.stop, settings.shutdown_grace_s):
                log.error("batch in flight did not finish within %.0fs; exiting without committing it",
                          settings.shutdown_grace_s)
                logging.shutdown()
                os._exit(EXIT_UNFINISHED_BATCH)

    add_health_pages(app)
    return app


settings = Settings()
app = create_app(settings)
