"""Redaction in real worker processes (issue 28): pseudonyms agree between two workers that
hold the same key and differ under another key; the key reaches no log line, dead letter or
header; a pseudonym policy without a key stops the worker at start-up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.fixtures.kafka_io import LABELS, Scenario, WorkerProcess, collect, json_events, produce

pytestmark = pytest.mark.integration

KEY = "integration-SECRET-key-0123456789abcdef"
OTHER_KEY = "a-different-secret-key-9876543210"
TOKEN = re.compile(r"<[A-Z_]+:k1:[0-9a-f]{16}>")


def _scenario(broker, tiny_models, model_cache, tmp_path, key: str | None) -> Scenario:
    s = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path)
    s.extra_env["STREAMS_TOPICS"] = json.dumps(
        [{"input": s.input, "labels": LABELS, "redact": {"default": "pseudonym"}}])
    s.extra_env["STREAMS_LOG_LEVEL"] = "DEBUG"  # the key is in no line, even at debug level
    if key is not None:
        s.extra_env["STREAMS_REDACTION_KEY"] = key
    return s


def _run(scenario: Scenario, n: int) -> tuple[dict[str, str], list, str]:
    """Each event's redacted text, the dead letters, and the worker's log."""
    produce(scenario.settings, scenario.input, json_events(n, prefix="r") + [(b"bad", b"{not json")])
    worker = WorkerProcess(scenario).start()
    try:
        got = collect(scenario.settings, scenario, until=lambda c: len(c.enriched_ids) >= n and c.dead)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    return {r["event_id"]: r["redacted_text"] for _, r in got.enriched}, got.dead, worker.log()


def test_pseudonyms_agree_across_workers_with_one_key_and_differ_with_another(broker, tiny_models, model_cache,
                                                                               tmp_path):
    n = 12
    first, second, other = (_scenario(broker, tiny_models, model_cache, tmp_path, k) for k in (KEY, KEY, OTHER_KEY))
    a, dead_a, log_a = _run(first, n)
    b, dead_b, log_b = _run(second, n)
    c, dead_c, log_c = _run(other, n)
    assert len(a) == len(b) == len(c) == n
    tokens = [t for text in a.values() for t in TOKEN.findall(text)]
    assert tokens, f"no pseudonyms at all: the test proves nothing ({a})"
    assert a == b  # two processes, one key: the same tokens for the same values
    for event_id, text in a.items():
        assert TOKEN.sub("<>", text) == TOKEN.sub("<>", c[event_id])  # same spans ...
        if TOKEN.search(text):
            assert text != c[event_id]  # ... other tokens
    for dead, log in ((dead_a, log_a), (dead_b, log_b), (dead_c, log_c)):
        assert dead and all(KEY.encode() not in (value or b"") and OTHER_KEY.encode() not in (value or b"")
                            and not any(KEY.encode() in v or OTHER_KEY.encode() in v for v in headers.values())
                            for _, value, headers in dead)
        assert KEY not in log and OTHER_KEY not in log


def test_a_pseudonym_policy_without_a_key_stops_the_worker_at_start_up(broker, tiny_models, model_cache, tmp_path):
    s = _scenario(broker, tiny_models, model_cache, tmp_path, None)
    done = subprocess.run([sys.executable, "-m", "streams", "worker"], env={
        k: v for k, v in (os.environ | s.env).items() if k != "STREAMS_REDACTION_KEY"},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "uses pseudonym: set STREAMS_REDACTION_KEY" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
