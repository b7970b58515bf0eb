"""Health endpoints over real HTTP against a running worker."""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streams.kafka import ensure_topics
from tests.helm.chart import render
from tests.helm.observability import CANDIDATE_ROW, dashboard_exprs, metric_names
from tests.helm.test_observability_chart import rule_exprs
from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect, json_events, produce

pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_liveness_and_readiness(broker, tiny_models, model_cache, tmp_path):
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path)
    ensure_topics(scenario.settings)  # the worker never creates its input topics
    worker = WorkerProcess(scenario).start()
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline:
            try:
                status, body = _get(scenario.health_port, "/readyz")
                if status == 200:
                    break
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        assert status == 200, worker.log()[-2000:]
        assert body["models_loaded"] and body["consumer_started"]
        live_status, live = _get(scenario.health_port, "/livez")
        assert live_status == 200 and live["status"] == "ok" and live["loop_alive"], live
        assert body["joined_group"] and body["broker_reachable"]
        produce(scenario.settings, scenario.input, json_events(5, prefix="h") + [(b"bad", b"{not json")])
        got = collect(scenario.settings, scenario, until=lambda c: len(c.enriched_ids) >= 5 and c.dead)
        assert len(got.enriched_ids) == 5
        # Every metric the chart's dashboard and alerts query is in this worker's /metrics.
        time.sleep(6)  # librdkafka's first statistics report (the lag) comes after 5 s
        _get(scenario.health_port, "/readyz")
        with urllib.request.urlopen(f"http://127.0.0.1:{scenario.health_port}/metrics", timeout=5) as resp:
            scraped = {line.split("{")[0].split(" ")[0] for line in resp.read().decode().splitlines()
                       if line and not line.startswith("#")}
        families = metric_names(scraped)  # histogram series -> their family
        # The candidate row's metrics come from a worker with a candidate (integration/test_shadow.py).
        used = metric_names(dashboard_exprs(without_rows=(CANDIDATE_ROW,)) + rule_exprs(render("observability")))
        assert used <= families, sorted(used - families)
        # `streams worker` re-executed itself on jemalloc (same pid), which make installs.
        assert "libjemalloc" in Path(f"/proc/{worker.proc.pid}/maps").read_text()
    finally:
        worker.stop()
