"""A plain Java consumer (examples/java-consumer: kafka-clients + Avro GenericDatumReader, no
registry client) reads what the worker publishes: every event, with the same event ids,
labels and entities as the Python side decodes.

Needs `make java-consumer` (run by `make test`); without it the test fails and says so."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
from confluent_kafka import TopicPartition

from streams.kafka import consumer
from streams.serde import SchemaCatalog
from streams.serde.registry import subject
from tests.contract.java import classpath
from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect, json_events, produce

pytestmark = pytest.mark.integration

N = 40
# Ids and texts that a byte-level or escaping mistake on either side would garble.
SPECIAL = [
    ("java-\u00fc-\u00e9", "hello my name is Jos\u00e9 M\u00fcller, K\u00f6ln, i was charged twice"),
    ('java-"quoted"\\back', "the parcel has not arrived \U0001F600 tracking says denver"),
    ("java-tab\there", "gift wrap please, leave at door \u2014 thanks"),
    ("java-\u65e5\u672c", "maria gonzalez email maria@example.com please refund"),
]


@pytest.fixture
def scenario(broker, tiny_models, model_cache, tmp_path) -> Scenario:
    return Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path)


def summary(event_id: str, label: str, entities: list[dict]) -> tuple:
    return event_id, label, tuple((e["label"], e["text"], e["start"], e["end"]) for e in entities)


def test_java_consumer_reads_every_event_like_python(scenario):
    cp = classpath()  # fails here, before the worker starts, when the Java example is not built
    settings = scenario.settings
    records = json_events(N - len(SPECIAL), prefix="java") + [
        (eid.encode(), json.dumps({"event_id": eid, "text": text}).encode()) for eid, text in SPECIAL]
    expected_ids = {json.loads(v)["event_id"] for _, v in records}
    assert len(expected_ids) == N
    produce(settings, scenario.input, records)  # also creates the output topic

    group = f"java-consumer-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(scenario).start()
    started = time.monotonic()
    java = subprocess.Popen(
        ["java", "-cp", cp, "io.streams.examples.EnrichedEventConsumer", scenario.bootstrap,
         scenario.output, group, str(settings.schema_dir / "EnrichedEvent.avsc"), str(N), "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= N)
        out, err = java.communicate(timeout=150)
        java_s = time.monotonic() - started
    finally:
        if java.poll() is None:
            java.kill()
            java.communicate()
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    assert java.returncode == 0, f"java exit {java.returncode}\nstderr:\n{err[-3000:]}\nstdout:\n{out[-2000:]}"
    print(f"java consumer: {N} events in {java_s:.1f} s (worker start included); {err.strip()}")

    assert got.enriched_ids == expected_ids
    python_side = {summary(r["event_id"], r["classification"]["label"], r["entities"]) for _, r in got.enriched}
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    java_side = {summary(j["event_id"], j["label"], j["entities"]) for j in lines}
    assert {s[0] for s in java_side} == expected_ids
    assert java_side == python_side
    assert any(s[2] for s in python_side), "no event has entities: the comparison proves little"

    # The framing the Java side read: the key, and the schema id the worker registered (every
    # process registers the same subjects in the same order, see README).
    catalog = SchemaCatalog.from_settings(settings)
    catalog.ensure_registered()
    enriched_id = catalog.client.get_latest_version(subject(scenario.output)).schema_id
    for j in lines:
        assert j["key"] == j["event_id"]
        assert j["schema_id"] == enriched_id

    # Consumer group: the Java consumer committed what it read.
    last = {}
    for j in lines:
        last[j["partition"]] = max(last.get(j["partition"], -1), j["offset"])
    check = consumer(settings, group)
    try:
        committed = check.committed([TopicPartition(scenario.output, p) for p in last], timeout=15)
    finally:
        check.close()
    assert {tp.partition: tp.offset for tp in committed} == {p: o + 1 for p, o in last.items()}
