"""streams replay against the embedded broker (streams offsets reset: test_offsets_reset.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from confluent_kafka import Producer, TopicPartition

from streams.kafka import consumer, ensure_topics
from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect

pytestmark = pytest.mark.integration
HOUR = 3600 * 1000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


def _cli(scenario: Scenario, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams", *args], env=os.environ | scenario.env,
                          capture_output=True, text=True, timeout=300)


def _committed(settings, group: str, topic: str) -> dict[int, int]:
    c = consumer(settings, group)
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        return {tp.partition: tp.offset for tp in c.committed(tps, timeout=15)}
    finally:
        c.close()


@pytest.fixture(scope="module")
def history(broker, tiny_models, model_cache, tmp_path_factory):
    """Three batches written 3, 2 and 1 hours ago (record timestamps), enriched once live."""
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path_factory.mktemp("replay"))
    settings = scenario.settings
    ensure_topics(settings)
    now = int(time.time() * 1000)
    stamps = {"a": now - 3 * HOUR, "b": now - 2 * HOUR, "c": now - 1 * HOUR}
    prod = Producer(settings.librdkafka_config() | {"acks": "all"})
    for prefix, ts in stamps.items():
        for i in range(30):
            eid = f"{prefix}-{i}"
            prod.produce(scenario.input, key=eid.encode(), timestamp=ts + i,
                         value=json.dumps({"event_id": eid, "text": "my parcel has not arrived"}).encode())
    assert prod.flush(30) == 0
    worker = WorkerProcess(scenario, "live").start()
    collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= 90)
    worker.stop()
    live_group = settings.app_id
    return scenario, stamps, live_group, _committed(settings, live_group, scenario.input)


def _replayed(scenario, rid_filter=None) -> list[tuple[dict, dict[str, bytes]]]:
    settings = scenario.settings
    from streams.serde import SchemaCatalog

    catalog = SchemaCatalog.from_settings(settings)
    c = consumer(settings, f"check-{time.monotonic_ns()}")
    c.subscribe([scenario.output])
    out, idle = [], time.monotonic()
    while time.monotonic() - idle < 5:
        for m in c.consume(500, 0.5):
            if m.error():
                continue
            idle = time.monotonic()
            headers = dict(m.headers() or [])
            if "streams.replay.id" in headers and (rid_filter is None or headers["streams.replay.id"] == rid_filter):
                out.append((catalog.decode(m.value(), m.topic()), headers))
    c.close()
    return out


def test_replay_middle_window_only_with_new_version(history):
    scenario, stamps, live_group, live_before = history
    window = (_iso(stamps["b"] - 60_000), _iso(stamps["b"] + 30 * 60_000))
    dry = _cli(scenario, "replay", "--topic", scenario.input, "--from", window[0], "--to", window[1], "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "30 records would be re-enriched" in dry.stdout
    assert _replayed(scenario) == []  # the dry run wrote nothing

    run = _cli(scenario, "replay", "--topic", scenario.input, "--from", window[0], "--to", window[1],
               "--model-version", "v2-test")
    assert run.returncode == 0, run.stderr + run.stdout
    assert "read 30, enriched 30" in run.stdout
    replayed = _replayed(scenario)
    assert sorted(r["event_id"] for r, _ in replayed) == sorted(f"b-{i}" for i in range(30))
    for record, headers in replayed:
        assert {m["version"] for m in record["models"]} == {"v2-test"}
        assert headers["streams.replay.model.version"] == b"v2-test"
        topic, partition, offset = headers["streams.replay.source"].decode().rsplit("/", 2)
        assert (topic, int(partition), int(offset)) == (record["source"]["topic"],
                                                         record["source"]["partition"], record["source"]["offset"])
    assert _committed(scenario.settings, live_group, scenario.input) == live_before


def test_interrupted_replay_resumes_without_gaps(history):
    scenario, stamps, _, _ = history
    args = ["replay", "--topic", scenario.input, "--from", _iso(stamps["c"] - 60_000),
            "--model-version", "v3-resume"]
    first = _cli(scenario, *args, "--limit", "7")
    assert first.returncode == 0, first.stderr
    assert "read 7," in first.stdout
    dry = _cli(scenario, *args, "--dry-run")  # what is left, from the replay group's offsets
    assert dry.returncode == 0, dry.stderr
    assert "7 of 30 records were replayed by an earlier run" in dry.stdout
    assert "23 records would be re-enriched" in dry.stdout
    second = _cli(scenario, *args)
    assert second.returncode == 0, second.stderr
    assert "resuming replay" in second.stdout and "read 23," in second.stdout
    ids = [r["event_id"] for r, h in _replayed(scenario) if h["streams.replay.model.version"] == b"v3-resume"]
    assert sorted(ids) == sorted(f"c-{i}" for i in range(30))  # every one, exactly once


def test_empty_and_future_ranges_are_messages_not_errors(history):
    scenario, stamps, _, _ = history
    future = _cli(scenario, "replay", "--topic", scenario.input, "--from", _iso(int(time.time() * 1000) + HOUR))
    assert future.returncode == 0 and "nothing to replay" in future.stdout
    before_any = _cli(scenario, "replay", "--topic", scenario.input, "--from", _iso(stamps["a"] - 2 * HOUR),
                      "--to", _iso(stamps["a"] - HOUR))
    assert before_any.returncode == 0 and "nothing to replay" in before_any.stdout

