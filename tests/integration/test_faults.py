"""A topic that refuses writes, against a real worker subprocess (issue 12, "fault tests with
real clients that fail on cue"). tansu has no ACLs and no `max.message.bytes`, so a
Kafka-protocol proxy (tests/fixtures/fault_proxy.py) answers the worker's Produce requests
with the error a real broker would give:

- the output topic refuses one record (MESSAGE_TOO_LARGE): that record is dead-lettered as
  `output_rejected`, the neighbours that shared its produce batch are enriched;
- the DLQ topic refuses a dead letter that carries the original bytes (MESSAGE_TOO_LARGE): it is
  re-sent bare, saying what it omitted;
- the output topic answers a batch with OUT_OF_ORDER_SEQUENCE_NUMBER, a fatal error of the
  idempotent producer: the worker renews its producer and sends the batch again; nothing is
  lost, nothing dead-lettered (it had hung until the delivery timeout, 300 s);
- the output topic refuses the worker (TOPIC_AUTHORIZATION_FAILED): the worker exits 78 without
  committing; restarted once writes are allowed, it enriches every event.

A misclassified error retries forever: every wait here is bounded and says what it waited for."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.kafka import consumer, ensure_topics
from streams.source.base import EXIT_FATAL
from tests.fixtures.fault_proxy import (INVALID_RECORD, MESSAGE_TOO_LARGE, OUT_OF_ORDER_SEQUENCE_NUMBER,
                                       TOPIC_AUTHORIZATION_FAILED, FaultyBroker)
from tests.fixtures.kafka_io import Collected, Scenario, WorkerProcess, collect, json_events, produce_recorded

pytestmark = pytest.mark.integration

ERR = "__streams.errors."


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """A tansu of its own that advertises the proxy, so every client stays behind it."""
    broker = FaultyBroker(tmp_path_factory.mktemp("faulty") / "tansu.log").start()
    yield broker
    broker.stop()


@pytest.fixture
def scenario(faulty, tiny_models, model_cache, tmp_path) -> Scenario:
    scenario = Scenario(faulty.bootstrap, tiny_models, model_cache, tmp_path)
    ensure_topics(scenario.settings)  # input, output and DLQ, so refusals can name them
    return scenario


def write(scenario: Scenario, events: list[tuple[bytes, bytes]]) -> int:
    """All into partition 0, in order; returns the end offset."""
    positions = produce_recorded(scenario.settings, [(k.decode(), scenario.input, 0, k, v, [])
                                                     for k, v in events])
    return max(p.offset for p in positions.values()) + 1


def committed(scenario: Scenario) -> int:
    reader = consumer(scenario.settings, scenario.settings.app_id)
    try:
        (tp,) = reader.committed([TopicPartition(scenario.input, 0)], timeout=10)
        return tp.offset
    finally:
        reader.close()


def wait_committed(scenario: Scenario, end: int, worker: WorkerProcess, timeout: float = 30) -> int:
    """The commit follows the acknowledgements: wait for it (bounded)."""
    deadline = time.monotonic() + timeout
    while (offset := committed(scenario)) < end and time.monotonic() < deadline and worker.proc.poll() is None:
        time.sleep(0.5)
    return offset


def run_until(scenario: Scenario, worker: WorkerProcess, until, timeout: float = 60) -> Collected:
    """Outputs and dead letters until `until` holds, the worker exits, or the timeout."""
    return collect(scenario.settings, scenario, timeout=timeout,
                   until=lambda got: worker.proc.poll() is not None or until(got))


def test_the_proxy_alone_changes_nothing(faulty):
    """A produce/consume round trip through the proxy: every record, in order, headers kept."""
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    prod = Producer({"bootstrap.servers": faulty.bootstrap, "acks": "all", "enable.idempotence": True,
                     "linger.ms": 5})
    sent = [(f"k{i}".encode(), f"v{i}".encode() * (i % 50)) for i in range(3000)]
    for key, value in sent:
        prod.produce(topic, key=key, value=value, partition=0, headers=[("h", key)])
        prod.poll(0)
    assert prod.flush(30) == 0
    cons = Consumer({"bootstrap.servers": faulty.bootstrap, "group.id": topic, "auto.offset.reset": "earliest",
                     "session.timeout.ms": 6000})
    cons.subscribe([topic])
    got, deadline = [], time.monotonic() + 30
    while len(got) < len(sent) and time.monotonic() < deadline:
        got += [(m.key(), m.value(), m.headers()) for m in cons.consume(1000, 0.5) if not m.error()]
    cons.close()
    assert [(k, v) for k, v, _ in got] == sent
    assert all(h == [("h", k)] for k, _, h in got)
    assert faulty.proxy.stats.produce_requests > 0 and not faulty.proxy.stats.refused_batches
    # ApiVersions was rewritten: every Produce is one the proxy can decode (else it could not refuse)
    assert faulty.proxy.stats.produce_versions == {8}, faulty.proxy.stats.produce_versions


@pytest.mark.parametrize("code,name", [(MESSAGE_TOO_LARGE, b"MSG_SIZE_TOO_LARGE"), (INVALID_RECORD, b"INVALID_RECORD")])
def test_an_output_refused_for_good_is_dead_lettered_and_its_neighbours_enriched(faulty, scenario, code, name):
    """The broker refuses the whole partition batch holding the record, so the neighbours that
    shared it get the same error: the worker must find the one it refuses alone."""
    events = json_events(40)
    victim = events[7][0]
    faulty.proxy.refuse(scenario.output, code, key=victim)  # this record, every time
    end = write(scenario, events)
    want = {k.decode() for k, _ in events} - {victim.decode()}
    worker = WorkerProcess(scenario).start()
    try:
        got = run_until(scenario, worker, lambda got: want <= got.enriched_ids and got.dead)
        offset = wait_committed(scenario, end, worker)
        alive = worker.proc.poll() is None
    finally:
        exit_code = worker.stop()
        faulty.proxy.allow(scenario.output)
    tail = worker.log()[-3000:]
    assert faulty.proxy.refused(scenario.output) >= 1, "the proxy never saw the victim's batch"
    assert alive, f"the worker died:\n{tail}"
    assert want <= got.enriched_ids, f"neighbours not enriched: {sorted(want - got.enriched_ids)}\n{tail}"
    assert victim.decode() not in got.enriched_ids
    reasons = [(k, h.get(ERR + "reason")) for k, _, h in got.dead]
    assert reasons == [(victim, b"output_rejected")], f"dead letters: {reasons}"
    key, value, headers = got.dead[0]
    assert value == dict(events)[victim] and headers[ERR + "offset"] == b"7"
    assert name in headers[ERR + "exception.message"]
    assert offset == end, f"committed {offset}, end {end}"
    assert exit_code == 0, tail


def test_a_dead_letter_refused_as_too_large_is_resent_bare(faulty, scenario):
    events = json_events(20)
    poison = (b"poison", b"this is not json " * 100)
    events.insert(5, poison)
    # Like a DLQ topic with a small max.message.bytes: any record carrying the original bytes.
    faulty.proxy.refuse(scenario.dlq, MESSAGE_TOO_LARGE, larger_than=1000)
    end = write(scenario, events)
    want = {k.decode() for k, _ in events} - {"poison"}
    worker = WorkerProcess(scenario).start()
    try:
        got = run_until(scenario, worker, lambda got: want <= got.enriched_ids and got.dead)
        offset = wait_committed(scenario, end, worker)
        alive = worker.proc.poll() is None
    finally:
        exit_code = worker.stop()
        faulty.proxy.allow(scenario.dlq)
    tail = worker.log()[-3000:]
    assert faulty.proxy.refused(scenario.dlq) >= 1, "the proxy never refused the dead letter"
    assert alive, f"the worker died:\n{tail}"
    assert want <= got.enriched_ids, sorted(want - got.enriched_ids)
    assert got.dead, f"no dead letter: the refused one was not re-sent bare\n{tail}"
    assert len(got.dead) == 1, [h.get(ERR + "reason") for _, _, h in got.dead]
    key, value, headers = got.dead[0]
    assert key == b"poison" and value == b""
    assert headers[ERR + "reason"] == b"invalid_json"
    assert headers[ERR + "omitted"] == b"value,headers"
    assert (headers[ERR + "topic"], headers[ERR + "partition"], headers[ERR + "offset"]) == \
        (scenario.input.encode(), b"0", b"5")
    assert offset == end, f"committed {offset}, end {end}"
    assert exit_code == 0, tail


def test_a_producer_that_lost_its_sequence_is_renewed_and_nothing_is_lost(faulty, scenario):
    events = json_events(30)
    faulty.proxy.refuse(scenario.output, OUT_OF_ORDER_SEQUENCE_NUMBER, times=1)
    end = write(scenario, events)
    want = {k.decode() for k, _ in events}
    worker = WorkerProcess(scenario).start()
    try:
        got = run_until(scenario, worker, lambda got: want <= got.enriched_ids, timeout=60)
        offset = wait_committed(scenario, end, worker)
        alive = worker.proc.poll() is None
    finally:
        exit_code = worker.stop()
        faulty.proxy.allow(scenario.output)
    tail = worker.log()[-3000:]
    assert faulty.proxy.refused(scenario.output) == 1, "the proxy never answered the batch"
    assert alive, f"the worker died:\n{tail}"
    assert want <= got.enriched_ids, f"not enriched: {sorted(want - got.enriched_ids)}\n{tail}"
    assert not got.dead, [h.get(ERR + "reason") for _, _, h in got.dead]
    assert "lost its idempotence state" in worker.log()
    assert offset == end, f"committed {offset}, end {end}"
    assert exit_code == 0, tail


def test_an_unauthorized_output_topic_stops_the_worker_without_committing(faulty, scenario):
    events = json_events(30)
    faulty.proxy.refuse(scenario.output, TOPIC_AUTHORIZATION_FAILED)
    end = write(scenario, events)
    worker = WorkerProcess(scenario).start()
    try:
        worker.proc.wait(90)
    except subprocess.TimeoutExpired:
        pass
    finally:
        exit_code = worker.stop()  # None-safe: only signals a live worker
    log = worker.log()
    last = "\n".join(log.strip().splitlines()[-3:])
    assert faulty.proxy.refused(scenario.output) >= 1, f"the worker never wrote to the output:\n{log[-3000:]}"
    assert exit_code == EXIT_FATAL, f"exit status {exit_code} (a retried refusal never exits):\n{log[-3000:]}"
    assert "TOPIC_AUTHORIZATION_FAILED" in last and scenario.output in last, last
    # Nothing (librdkafka), or the first offset handed out (the Faust agent commits it before its
    # first batch: docs/sources.md); never past the refused batch.
    assert committed(scenario) <= 0, "the group committed past a batch whose outputs were refused"

    faulty.proxy.allow(scenario.output)
    want = {k.decode() for k, _ in events}
    again = WorkerProcess(scenario, "restarted").start()
    try:
        got = run_until(scenario, again, lambda got: want <= got.enriched_ids)
        offset = wait_committed(scenario, end, again)
    finally:
        again.stop()
    assert want <= got.enriched_ids, f"lost: {sorted(want - got.enriched_ids)}\n{again.log()[-3000:]}"
    assert not got.dead, [h.get(ERR + "reason") for _, _, h in got.dead]
    assert offset == end, f"committed {offset}, end {end}"
    assert json.loads(events[0][1])["event_id"] in got.enriched_ids
