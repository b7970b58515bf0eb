"""The worker against the real embedded broker: round trip, dead letters, SIGKILL."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect, json_events, produce
from streams.serde import SchemaCatalog

pytestmark = pytest.mark.integration


@pytest.fixture
def scenario(broker, tiny_models, model_cache, tmp_path) -> Scenario:
    return Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path)


def test_round_trip_json_and_avro(scenario):
    settings = scenario.settings
    json_records = json_events(250, prefix="json")
    catalog = SchemaCatalog.from_settings(settings)
    avro_records = [(f"avro-{i}".encode(), catalog.encode_input(
        {"event_id": f"avro-{i}", "text": "my parcel has not arrived", "event_type": "ticket.created",
         "customer_id": "c-1", "metadata": {"channel": "email"}}, scenario.input)) for i in range(50)]
    produce(settings, scenario.input, json_records + avro_records)
    worker = WorkerProcess(scenario).start()
    try:
        got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= 300)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    expected = {f"json-{i}" for i in range(250)} | {f"avro-{i}" for i in range(50)}
    assert got.enriched_ids == expected
    assert not got.dead
    for key, record in got.enriched:
        assert key == record["event_id"].encode()  # same key as the input
        assert record["source"]["topic"] == scenario.input
        assert record["source"]["offset"] >= 0
        assert record["classification"]["label"] in {"billing", "delivery"}
        assert {m["task"] for m in record["models"]} == {"entities", "classification"}
        assert record["inference_ms"] > 0
    avro = next(r for _, r in got.enriched if r["event_id"] == "avro-0")
    assert avro["event_type"] == "ticket.created" and avro["customer_id"] == "c-1"
    # Raw event text never reaches the info-level log (it holds personal data).
    assert "maria gonzalez" not in worker.log()


def test_bad_input_goes_to_dlq_and_worker_keeps_running(scenario):
    settings = scenario.settings
    good = json_events(20, prefix="good")
    bad = [
        (b"bad-json", b"{not json"),
        (b"bad-missing-text", json.dumps({"event_id": "x1"}).encode()),
        (b"bad-missing-id", json.dumps({"text": "hello"}).encode()),
        (b"bad-avro", b"\x00\x00\x00\x27\x0fgarbage"),
    ]
    produce(settings, scenario.input, good[:10] + bad + good[10:], headers=[("trace", b"abc")])
    worker = WorkerProcess(scenario).start()
    try:
        got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= 20 and len(c.dead) >= 4)
        # Still alive and working after the poison: a later event is enriched too.
        produce(settings, scenario.input, json_events(1, prefix="after"))
        later = collect(settings, scenario, until=lambda c: "after-0" in c.enriched_ids)
    finally:
        worker.stop()
    assert got.enriched_ids == {f"good-{i}" for i in range(20)}
    assert "after-0" in later.enriched_ids
    dead = {key: (value, headers) for key, value, headers in got.dead}
    assert set(dead) == {k for k, _ in bad}
    reasons = {k: h["__streams.errors.reason"].decode() for k, (_, h) in dead.items()}
    assert reasons == {b"bad-json": "invalid_json", b"bad-missing-text": "missing_field",
                       b"bad-missing-id": "missing_field", b"bad-avro": "unknown_schema_id"}
    for key, (value, headers) in dead.items():
        assert value == dict(bad)[key]  # the original bytes
        assert headers["__streams.errors.topic"].decode() == scenario.input
        assert int(headers["__streams.errors.partition"]) >= 0
        assert int(headers["__streams.errors.offset"]) >= 0
        assert headers["trace"] == b"abc"  # original headers kept
    assert b"text" in dead[b"bad-missing-text"][1]["__streams.errors.exception.message"]


def test_sigkill_mid_stream_loses_nothing(scenario):
    settings = scenario.settings
    n = 3000
    produce(settings, scenario.input, json_events(n, prefix="k"))
    first = WorkerProcess(scenario, "first").start()
    try:
        partial = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= 300, timeout=90)
        assert len(partial.enriched_ids) >= 300, first.log()[-3000:]
    finally:
        first.kill()  # SIGKILL: no shutdown, no final commit
    assert len(partial.enriched_ids) < n, "the worker finished before it was killed: test proves nothing"
    second = WorkerProcess(scenario, "second").start()
    try:
        got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= n, timeout=180)
    finally:
        second.stop()
    missing = {f"k-{i}" for i in range(n)} - got.enriched_ids
    assert not missing, f"{len(missing)} events lost after SIGKILL, e.g. {sorted(missing)[:5]}"
    duplicates = len(got.enriched) - len(got.enriched_ids)
    print(f"SIGKILL after {len(partial.enriched_ids)} of {n}: 0 lost, {duplicates} re-delivered")
