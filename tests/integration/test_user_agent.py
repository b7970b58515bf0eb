"""A Faust application users extend: their own agent (streams/examples/label_counts.py, listed
in STREAMS_APP_MODULES) runs in the same worker as the enrichment agent, reads its Avro
output and keeps a table; Faust's CLI lists both agents with their topics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import timezone

import pytest

from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect, json_events, produce

pytestmark = pytest.mark.integration

EXAMPLE = "streams.examples.label_counts"


def test_faust_cli_lists_the_enrichment_agent_and_a_users_agent_with_their_topics():
    env = os.environ | {"STREAMS_SOURCE": "faust", "STREAMS_APP_MODULES": json.dumps([EXAMPLE]),
                        "STREAMS_TOPICS": json.dumps([{"input": "a.in"}, {"input": "b.in"}])}
    done = subprocess.run([sys.executable, "-m", "faust", "-A", "streams.app", "agents"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {cells[0]: cells[1] for line in done.stdout.splitlines()
            if len(cells := [c.strip() for c in line.strip("|").split("|")]) >= 2 and cells[0].startswith("@")}
    assert rows == {"@streams.enrich.a.in": "a.in", "@streams.enrich.b.in": "b.in",
                    "@label_counts.a.in.enriched": "a.in.enriched",
                    "@label_counts.b.in.enriched": "b.in.enriched"}, done.stdout


def _page(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/label-counts/", timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def test_a_users_agent_counts_the_enriched_labels_per_hour_in_a_table(
        broker, tiny_models, model_cache, tmp_path):
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path,
                        extra_env={"STREAMS_SOURCE": "faust",
                                   "STREAMS_APP_MODULES": json.dumps([EXAMPLE])})
    settings = scenario.settings
    n = 12
    produce(settings, scenario.input, json_events(n, prefix="lc"))
    worker = WorkerProcess(scenario).start()
    try:
        got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= n
                      or worker.proc.poll() is not None, timeout=60)
        assert worker.proc.poll() is None, worker.log()[-3000:]
        assert len(got.enriched_ids) == n
        expected = Counter(
            f"{r['source']['timestamp'].astimezone(timezone.utc):%Y-%m-%dT%H:00Z} {r['classification']['label']}"
            for _, r in got.enriched)
        assert sum(expected.values()) == n  # every output once: the table must count each once
        deadline = time.monotonic() + 30
        counts = None
        while time.monotonic() < deadline:
            counts = _page(scenario.health_port)
            if counts == dict(expected):
                break
            time.sleep(0.5)
        assert counts == dict(expected), worker.log()[-3000:]
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
