"""Health over HTTP on Faust's own web server: liveness and readiness for Kubernetes probes.

/livez   200 while the event loop answers (a blocked loop times the probe out)
/readyz  200 once the models are loaded and the consumer has joined its group, else 503
"""

from __future__ import annotations

import faust
from faust.web import Request, Response, View

LIVENESS_PATH = "/livez"
READINESS_PATH = "/readyz"


def readiness(app: faust.App) -> tuple[bool, dict]:
    consumer = app.consumer
    checks = {
        "models_loaded": getattr(app, "runtime", None) is not None,
        "consumer_started": bool(consumer.started),
        "not_rebalancing": not app.rebalancing,
        "assigned_partitions": len(consumer.assignment()) if consumer.started else 0,
    }
    ready = checks["models_loaded"] and checks["consumer_started"] and checks["not_rebalancing"]
    return ready, checks


def add_health_pages(app: faust.App) -> None:
    @app.page(LIVENESS_PATH)
    class Liveness(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page(READINESS_PATH)
    class Readiness(View):
        async def get(self, request: Request) -> Response:
            ready, checks = readiness(app)
            return self.json({"status": "ready" if ready else "not ready", **checks},
                             status=200 if ready else 503)
