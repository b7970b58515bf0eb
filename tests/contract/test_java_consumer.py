"""A plain Java consumer (examples/java-consumer: kafka-clients + Avro GenericDatumReader, no
registry client) reads what the worker publishes: every event, with the same event ids,
labels and entities as the Python side decodes; and, on a topic with a field record, the typed
fields (an enum symbol, nullable strings and doubles) and the LLM's confidence in each exactly
as the Python side encoded them; and every record's stamp (what made it besides the models).

Needs `make java-consumer` (run by `make test`); without it the test fails and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

import pytest
from confluent_kafka import TopicPartition

from streams.engine import Classification, Entity, Inference, ModelInfo
from streams.enrich import SourceRecord, enriched_record
from streams.kafka import consumer
from streams.serde import InputEvent, SchemaCatalog
from streams.serde.registry import composed_schema_path, subject
from streams.stamp import configured_stamps, labels_digest
from tests.contract.java import classpath
from tests.fixtures.kafka_io import LABELS, Scenario, WorkerProcess, collect, json_events, produce

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


def java_consumer(cp: str, bootstrap: str, topic: str, group: str, schema, expected: int,
                  timeout_s: int = 120) -> subprocess.Popen:
    return subprocess.Popen(
        ["java", "-cp", cp, "io.streams.examples.EnrichedEventConsumer", bootstrap, topic, group,
         str(schema), str(expected), str(timeout_s)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(java: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        out, err = java.communicate(timeout=timeout)
    finally:
        if java.poll() is None:
            java.kill()
            java.communicate()
    assert java.returncode == 0, f"java exit {java.returncode}\nstderr:\n{err[-3000:]}\nstdout:\n{out[-2000:]}"
    return out, err


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
    java = java_consumer(cp, scenario.bootstrap, scenario.output, group,
                         settings.schema_dir / "EnrichedEvent.avsc", N)
    try:
        got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= N)
        out, err = finish(java, timeout=150)
        java_s = time.monotonic() - started
    finally:
        if java.poll() is None:
            java.kill()
            java.communicate()
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    print(f"java consumer: {N} events in {java_s:.1f} s (worker start included); {err.strip()}")

    assert got.enriched_ids == expected_ids
    python_side = {summary(r["event_id"], r["classification"]["label"], r["entities"]) for _, r in got.enriched}
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    java_side = {summary(j["event_id"], j["label"], j["entities"]) for j in lines}
    assert {s[0] for s in java_side} == expected_ids
    assert java_side == python_side
    assert any(s[2] for s in python_side), "no event has entities: the comparison proves little"

    # The framing the Java side read: the key, and the schema id the worker registered (every
    # process registers the same subjects in the same order, see docs/contract.md).
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
    assert all("fields" not in j for j in lines), "a topic without a field record has no `fields`"
    assert all(j["field_confidence"] is None for j in lines)  # nor confidences: the map is null

    # What made them besides the models (EnrichedEvent v4 `stamp`): the route's labels, no LLM
    # prompt or examples, no field record; one stamp on every record, read alike by Java.
    stamp = {"labels_digest": labels_digest(LABELS), "prompt_digest": None, "examples_digest": None,
             "fields_digest": None, "candidate": None}
    assert configured_stamps(settings)[scenario.input] == stamp  # recomputed from the settings alone
    assert all(r["stamp"] == stamp for _, r in got.enriched)
    assert all(j["stamp"] == stamp for j in lines), lines[0]


# Typed fields as the LLM engine hands them over (Inference.fields): values valid against
# schemas/fields/SupportTicketFields.avsc. Non-ASCII, quotes, an integral and a fractional
# refund, nulls, and one event enriched without fields (the union's null branch). Each with the
# LLM's confidence per field (Inference.field_confidence), None where it has none.
TYPED = [
    ("tf-1", {"urgency": "critical", "order_id": "A-10023", "refund_amount": 49.99,
              "requested_action": "refund", "summary": "Cliente cobrado dos veces: \u00bfreembolso? \u20ac49,99"}),
    ("tf-2", {"urgency": "low", "order_id": None, "refund_amount": None,
              "requested_action": "none", "summary": "Praise for the \"fast\" delivery \U0001F600"}),
    ("tf-3", {"urgency": "high", "order_id": "\u65e5\u672c-77", "refund_amount": 120.0,
              "requested_action": "replacement", "summary": "Kaputte Lieferung, M\u00fcller bittet um Ersatz."}),
    ("tf-4", {"urgency": "medium", "order_id": "B-1", "refund_amount": 1e-3,
              "requested_action": "cancel_order", "summary": "tab\there, backslash \\ and newline\nin one"}),
    ("tf-5", None),
]
CONFIDENCE = {
    "tf-1": {"urgency": 0.9375, "order_id": 0.8123456789012345, "refund_amount": 0.5,
             "requested_action": 1.0, "summary": 3.2e-12},
    "tf-2": {"urgency": 0.25, "order_id": 0.99, "refund_amount": 0.97, "requested_action": 0.6,
             "summary": 1e-300},
    "tf-3": {"urgency": 1.0, "order_id": 0.0, "refund_amount": 0.75, "requested_action": 0.125,
             "summary": 0.001},
    "tf-4": None,  # fields without confidences (the map's null branch)
    "tf-5": None,
}
# Each record's stamp (EnrichedEvent v4): every digest set on an LLM route with typed fields,
# one with nulls and a candidate, and one record without a stamp (the union's null branch).
LLM_STAMP = {"labels_digest": "sha256:0123456789abcdef", "prompt_digest": "sha256:fedcba9876543210",
             "examples_digest": "sha256:00000000000000ff", "fields_digest": "sha256:a1b2c3d4e5f60789",
             "candidate": None}
STAMPS = {"tf-1": LLM_STAMP, "tf-2": LLM_STAMP, "tf-3": LLM_STAMP,
          "tf-4": {"labels_digest": "sha256:0123456789abcdef", "prompt_digest": None, "examples_digest": None,
                   "fields_digest": None, "candidate": "cand-\u00e9 \"2\""},
          "tf-5": None}


def test_java_consumer_reads_the_typed_fields_python_encoded(broker, tmp_path):
    """Records encoded by the real SchemaCatalog for a route with `fields`, through the broker,
    read by the Java consumer with the committed composed schema: every typed value is the one
    Python encoded, with its Avro type (an enum symbol, a double, a null branch)."""
    cp = classpath()
    scenario = Scenario(broker.bootstrap, {"ner": "unused", "encoder": "unused"}, tmp_path, tmp_path)  # no worker
    scenario.extra_env["STREAMS_TOPICS"] = json.dumps(
        [{"input": scenario.input, "labels": LABELS, "fields": "SupportTicketFields"}])
    settings = scenario.settings
    catalog = SchemaCatalog.from_settings(settings)
    schema_file = composed_schema_path(settings.schema_dir, "SupportTicketFields")
    # What the service registers for the subject is the committed file Java reads.
    assert catalog.enriched_schema_for(scenario.output).schema_str == schema_file.read_text()

    records = []
    for i, (event_id, fields) in enumerate(TYPED):
        event = InputEvent(event_id=event_id, text="ticket text", event_type="ticket.created",
                           customer_id=None, occurred_at=datetime(2026, 1, 2, 3, tzinfo=timezone.utc))
        inference = Inference([Entity("ORDER_ID", "A-10023", 0, 7, 1.0)],
                              Classification("billing", 0.8, {"billing": 0.8, "delivery": 0.2}), fields=fields,
                              field_confidence=CONFIDENCE[event_id])
        record = enriched_record(event, inference, SourceRecord(scenario.input, 0, i, 1_767_000_000_000),
                                 [ModelInfo("classification", "smollm2", "t")], inference_ms=3.0,
                                 stamp=STAMPS[event_id])
        records.append((event_id.encode(), catalog.encode_enriched(record, scenario.output)))
    produce(settings, scenario.output, records)

    java = java_consumer(cp, scenario.bootstrap, scenario.output, f"java-fields-{scenario.name}",
                         schema_file, len(TYPED), timeout_s=90)
    got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= len(TYPED), timeout=90)
    out, _ = finish(java, timeout=120)

    expected = dict(TYPED)
    python_side = {r["event_id"]: r["fields"] for _, r in got.enriched}
    assert python_side == expected  # the Python reader decodes them back unchanged
    assert {r["event_id"]: r["field_confidence"] for _, r in got.enriched} == CONFIDENCE
    # So does `streams tail --json`, in its own process (its own mock registry, same ids).
    tail = subprocess.run([sys.executable, "-m", "streams", "tail", "--topic", scenario.output, "--count",
                           str(len(TYPED)), "--json", "--timeout", "60"], env=os.environ | scenario.env,
                          capture_output=True, text=True, timeout=120)
    tailed = [json.loads(line) for line in tail.stdout.splitlines() if line.startswith("{")]
    assert {r["event_id"]: r["fields"] for r in tailed} == expected, tail.stdout + tail.stderr
    assert {r["event_id"]: r["field_confidence"] for r in tailed} == CONFIDENCE
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert sorted(j["event_id"] for j in lines) == sorted(expected)
    avro_type = {"urgency": "enum", "requested_action": "enum", "summary": "string",
                 "order_id": "string", "refund_amount": "double"}
    # Java reads each field's confidence as the double Python wrote (Double.toString round-trips).
    assert {j["event_id"]: j["field_confidence"] for j in lines} == CONFIDENCE
    # And each record's stamp, digest by digest, null branches included.
    assert {r["event_id"]: r["stamp"] for _, r in got.enriched} == STAMPS
    assert {j["event_id"]: j["stamp"] for j in lines} == STAMPS
    for j in lines:
        want = expected[j["event_id"]]
        if want is None:
            assert j["fields"] is None, j
            continue
        assert {k: v["value"] for k, v in j["fields"].items()} == want, j["event_id"]
        assert {k: v["type"] for k, v in j["fields"].items()} == \
            {k: "null" if want[k] is None else t for k, t in avro_type.items()}, j["event_id"]
        assert j["schema_id"] == catalog.client.get_latest_version(subject(scenario.output)).schema_id


def test_java_consumer_reads_the_redacted_text_and_the_redacted_copy(scenario):
    """A redacting route (issue 28) with a copy topic, Avro input: the worker publishes
    `redacted_text` in the enriched record and an InputEvent with the redacted text to the copy
    topic; Java reads both, and what it prints is what Python decoded."""
    cp = classpath()
    copy_topic = f"{scenario.input}.redacted"
    scenario.extra_env["STREAMS_TOPICS"] = json.dumps(
        [{"input": scenario.input, "labels": LABELS, "redact": {"types": {"EMAIL": "mask"}, "copy_topic": copy_topic}}])
    settings = scenario.settings
    catalog = SchemaCatalog.from_settings(settings)
    events = [(f"red-{i}", text) for i, (_, text) in enumerate(SPECIAL * 3)]
    produce(settings, scenario.input, [(eid.encode(), catalog.encode_input({"event_id": eid, "text": text}, scenario.input))
                                       for eid, text in events])
    worker = WorkerProcess(scenario).start()
    try:
        got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= len(events))
        enriched = java_consumer(cp, scenario.bootstrap, scenario.output, f"java-red-{scenario.name}",
                                 settings.schema_dir / "EnrichedEvent.avsc", len(events), timeout_s=90)
        copies = java_consumer(cp, scenario.bootstrap, copy_topic, f"java-copy-{scenario.name}",
                               settings.schema_dir / "InputEvent.avsc", len(events), timeout_s=90)
        out, _ = finish(enriched, timeout=120)
        copied, _ = finish(copies, timeout=120)
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    python_side = {r["event_id"]: r["redacted_text"] for _, r in got.enriched}
    assert set(python_side) == {eid for eid, _ in events} and None not in python_side.values()
    assert any(python_side[eid] != text for eid, text in events), "nothing was redacted: the test proves little"
    java_side = {j["event_id"]: j["redacted_text"] for j in (json.loads(x) for x in out.splitlines() if x.strip())}
    assert java_side == python_side
    copy_side = {j["event_id"]: j["text"] for j in (json.loads(x) for x in copied.splitlines() if x.strip())}
    assert copy_side == python_side  # the copy carries exactly the redacted text
