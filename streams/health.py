"""Health over HTTP on the Faust worker's web server, for Kubernetes probes.

Both sources (`app.source`: the librdkafka loop or the Faust agent) are a
`streams.source.Source`: `state` (a ConsumerState), `alive()` and `runtime`.

/livez   200 while the event loop answers and the source (the loop's thread, the agent) is
         alive and polling (a loop stuck longer than max_poll_interval_s is not live, unless it is
         waiting out a failed dependency, which it reports on /readyz, or its engine is still
         making progress: the LLM engine's last prefill or decoding step is more recent than
         max_poll_interval_s, so a long batch that progresses is not restarted), else 503
/readyz  200 once the models are loaded, the consumer has joined its group, a broker is
         reachable, no dependency is being waited for (registry, broker, accelerator) and no
         partition with lag has stood still for stall_after_s; else 503 with the failing checks
/metrics Prometheus text exposition of the OpenTelemetry metrics (streams.telemetry)
"""

from __future__ import annotations

import time

import faust
from faust.web import Request, Response, View

from .source.base import Source

LIVENESS_PATH = "/livez"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"


def liveness(app: faust.App) -> tuple[bool, dict]:
    runner: Source | None = getattr(app, "source", None)
    if runner is None or runner.runtime is None:  # still loading models: live, not ready
        return True, {"status": "ok", "loop": "starting"}
    now = time.monotonic()
    since_poll = now - runner.state.last_poll
    stuck_after = app.conf.streams_settings.max_poll_interval_s
    waiting = runner.state.degraded is not None or runner.runtime.producer.retrying is not None
    progress_at = runner.runtime.progress_at  # None where no engine measures it
    since_progress = None if progress_at is None else now - progress_at
    progressing = since_progress is not None and since_progress < stuck_after
    live = runner.alive() and (since_poll < stuck_after or waiting or progressing)
    body = {"status": "ok" if live else "stuck", "loop_alive": runner.alive(),
            "seconds_since_poll": round(since_poll, 1)}
    if since_progress is not None:
        body["seconds_since_progress"] = round(since_progress, 1)
    return live, body


def readiness(app: faust.App) -> tuple[bool, dict]:
    runner: Source | None = getattr(app, "source", None)
    if runner is not None and runner.runtime is None:
        runner = None
    state = runner.state if runner is not None else None
    checks = {
        "models_loaded": getattr(app, "runtime", None) is not None,
        "consumer_started": runner is not None and runner.alive(),
        "joined_group": bool(state and state.joined),
        "assigned_partitions": len(state.assigned) if state else 0,
        # None until librdkafka's first statistics report (5 s): unknown counts as reachable.
        "broker_reachable": bool(state) and state.brokers_up != 0,
        # What the worker waits for (a dependency failed), or null.
        "waiting_for": (state.degraded if state and state.degraded else
                        runner.runtime.producer.retrying if runner is not None else None),
        # Partitions with lag that have not advanced for stall_after_s.
        "stalled_partitions": state.stalled(app.conf.streams_settings.stall_after_s) if state else [],
    }
    ready = all(checks[k] for k in ("models_loaded", "consumer_started", "joined_group", "broker_reachable")) \
        and not checks["waiting_for"] and not checks["stalled_partitions"]
    runtime = getattr(app, "runtime", None)
    if runtime is not None:
        metrics = runtime.telemetry.metrics
        metrics.stalled.set(len(checks["stalled_partitions"]))
    else:
        from .telemetry import default_telemetry

        settings = app.conf.streams_settings
        metrics = default_telemetry(settings.app_id, settings.app_id).metrics
    metrics.ready.set(int(ready))
    metrics.models_loaded.set(int(runtime is not None))
    return ready, checks


def add_health_pages(app: faust.App) -> None:
    @app.page(LIVENESS_PATH)
    class Liveness(View):
        async def get(self, request: Request) -> Response:
            live, body = liveness(app)
            return self.json(body, status=200 if live else 503)

    @app.page(READINESS_PATH)
    class Readiness(View):
        async def get(self, request: Request) -> Response:
            ready, checks = readiness(app)
            return self.json({"status": "ready" if ready else "not ready", **checks},
                             status=200 if ready else 503)

    @app.page(METRICS_PATH)
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            from .telemetry import default_telemetry

            settings = app.conf.streams_settings
            readiness(app)  # the readiness gauges, current at every scrape
            runtime = getattr(app, "runtime", None)
            telemetry = runtime.telemetry if runtime is not None else \
                default_telemetry(settings.app_id, settings.app_id)
            body, content_type = telemetry.prometheus_text()
            # aiohttp takes the charset apart from the type; Prometheus text is UTF-8.
            media_type = ";".join(p for p in content_type.split(";") if "charset" not in p)
            return self.bytes(body, content_type=media_type.strip())
