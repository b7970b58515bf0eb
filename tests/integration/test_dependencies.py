"""A broken dependency is waited out (or stops the worker), never mistaken for bad data.

- the schema registry answers 500 for a while, then recovers: nothing is dead-lettered, the
  batch is retried, /readyz says what the worker waits for, every event is enriched;
- the registry refuses the credentials (401): the worker exits 78 (EXIT_FATAL) with a message
  that names the setting to fix, and commits nothing;
- the broker is frozen (SIGSTOP) for longer than the producer's delivery timeout: the worker
  sends the timed-out records again, with their headers, and loses nothing.

The registry is tests/fixtures/registry_server.py (no registry server installs here); the
clients (confluent-kafka's SchemaRegistryClient, librdkafka) and the broker are real."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import TopicPartition

from streams.broker import EmbeddedBroker, free_port
from streams.kafka import consumer
from streams.serde import SchemaCatalog
from streams.source.base import EXIT_FATAL
from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect, json_events, produce_recorded
from tests.fixtures.registry_server import FakeRegistry

pytestmark = pytest.mark.integration


def readyz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    except (OSError, ValueError):
        return 0, {}


class ReadinessWatch:
    """Polls /readyz in the background and keeps every answer."""

    def __init__(self, port: int):
        self.port, self.seen, self._stop = port, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.seen.append(readyz(self.port))

    def __enter__(self) -> "ReadinessWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def waited_for(self, what: str) -> bool:
        return any(status == 503 and what in str(body.get("waiting_for") or "") for status, body in self.seen)


def run_watched(scenario: Scenario, events: int, timeout: float):
    """A worker until it enriched `events` events or exited, /readyz watched meanwhile; then
    stopped. (worker, collected, watch, alive before the stop, exit status)."""
    worker = WorkerProcess(scenario).start()
    try:
        with ReadinessWatch(scenario.health_port) as watch:
            got = collect(scenario.settings, scenario, timeout=timeout,
                          until=lambda g: worker.proc.poll() is not None or len(g.enriched_ids) >= events)
        alive = worker.proc.poll() is None
    finally:
        code = worker.stop()
    return worker, got, watch, alive, code


@pytest.fixture
def registry():
    server = FakeRegistry().start()
    yield server
    server.stop()


def avro_events(catalog: SchemaCatalog, topic: str, n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    return [(f"{prefix}-{i}".encode(), catalog.encode_input(
        {"event_id": f"{prefix}-{i}", "text": "my parcel has not arrived, maria gonzalez"}, topic)) for i in range(n)]


def committed(settings, topic: str) -> dict[int, int]:
    reader = consumer(settings, settings.app_id)
    try:
        return {tp.partition: tp.offset for tp in reader.committed(
            [TopicPartition(topic, p) for p in range(settings.topic_partitions)], timeout=10)}
    finally:
        reader.close()


def test_a_registry_that_fails_then_recovers_is_waited_out(broker, tiny_models, model_cache, tmp_path, registry):
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path,
                        extra_env={"STREAMS_SCHEMA_REGISTRY_URL": registry.url,
                                   "STREAMS_RETRY_MAX_BACKOFF_S": "2", "STREAMS_STALL_AFTER_S": "2"})
    settings = scenario.settings
    catalog = SchemaCatalog.from_settings(settings)
    events = avro_events(catalog, scenario.input, 12, "avro") + json_events(12, "json")
    input_id = int.from_bytes(events[0][1][1:5], "big")
    registry.fail_id(input_id, *[500] * 22, 503, 429)  # the client retries 3 times per call itself
    produce_recorded(settings, [(k.decode(), scenario.input, i % 4, k, v, []) for i, (k, v) in enumerate(events)])
    worker, got, watch, alive, code = run_watched(scenario, len(events), timeout=150)
    log = worker.log()
    assert alive and code == 0, log[-3000:]
    assert not got.dead, [d[2].get("__streams.errors.reason") for d in got.dead]
    assert got.enriched_ids == {k.decode() for k, _ in events}
    assert not registry.id_failures[input_id], "the outage never happened"
    assert "retrying the batch" in log
    assert watch.waited_for("registry"), watch.seen[-5:]
    # The stall detector saw partitions with lag stand still meanwhile, and said which.
    assert any(body.get("stalled_partitions") for _, body in watch.seen), watch.seen[-5:]
    assert readyz(scenario.health_port)[0] == 0  # (the worker has stopped: no answer)


def test_a_registry_that_never_answers_is_timed_out_and_waited_out(broker, tiny_models, model_cache,
                                                                   tmp_path, registry):
    """A registry that accepts the connection and never answers (the client's default has no
    timeout: the batch thread would block for good). Each call times out, the batch is held and
    retried (RETRY: /readyz says it waits for the registry), nothing is dead-lettered, and once
    the registry answers again every event is enriched."""
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path,
                        extra_env={"STREAMS_SCHEMA_REGISTRY_URL": registry.url,
                                   "STREAMS_SCHEMA_REGISTRY_TIMEOUT_S": "0.5",
                                   "STREAMS_RETRY_MAX_BACKOFF_S": "1"})
    settings = scenario.settings
    catalog = SchemaCatalog.from_settings(settings)
    events = json_events(4, "json") + avro_events(catalog, scenario.input, 8, "avro")
    input_id = int.from_bytes(events[-1][1][1:5], "big")
    registry.hang_id(input_id, 12)  # the client tries 4 times per call: 3 held batches
    produce_recorded(settings, [(k.decode(), scenario.input, i % 4, k, v, []) for i, (k, v) in enumerate(events)])
    worker, got, watch, alive, code = run_watched(scenario, len(events), timeout=120)
    log = worker.log()
    assert alive and code == 0, log[-3000:]
    assert registry.hung == 12, f"{registry.hung} lookups hung: the outage never happened as planned"
    assert not got.dead, [d[2].get("__streams.errors.reason") for d in got.dead]
    assert got.enriched_ids == {k.decode() for k, _ in events}
    assert watch.waited_for("registry"), watch.seen[-5:]


def test_a_registry_that_refuses_the_credentials_stops_the_worker_without_commit(
        broker, tiny_models, model_cache, tmp_path, registry):
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path,
                        extra_env={"STREAMS_SCHEMA_REGISTRY_URL": registry.url})
    settings = scenario.settings
    catalog = SchemaCatalog.from_settings(settings)
    events = json_events(5, "before") + avro_events(catalog, scenario.input, 5, "avro")
    registry.fail_id(int.from_bytes(events[-1][1][1:5], "big"), *[401] * 100)
    produce_recorded(settings, [(k.decode(), scenario.input, 0, k, v, []) for k, v in events])
    worker = WorkerProcess(scenario).start()
    code = worker.wait_exit(90)
    log = worker.log()
    assert code == EXIT_FATAL, log[-3000:]
    assert "STREAMS_SCHEMA_REGISTRY_AUTH" in log.splitlines()[-1] or "STREAMS_SCHEMA_REGISTRY_AUTH" in log[-2000:]
    # Nothing committed past the batch that met the refusal, nothing dead-lettered.
    offset = committed(settings, scenario.input)[0]  # negative: nothing committed
    assert offset <= 5, f"committed {offset}, past the first Avro event (offset 5)"
    got = collect(settings, scenario, timeout=5, until=lambda g: False)
    assert not got.dead


def test_a_broker_frozen_past_the_delivery_timeout_loses_nothing(tiny_models, model_cache, tmp_path):
    with EmbeddedBroker(free_port(), log_path=tmp_path / "tansu.log") as own:
        scenario = Scenario(own.bootstrap, tiny_models, model_cache, tmp_path,
                            extra_env={"STREAMS_DELIVERY_TIMEOUT_S": "2", "STREAMS_RETRY_MAX_BACKOFF_S": "1"})
        settings = scenario.settings
        events = json_events(3000, "f")
        produce_recorded(settings, [(k.decode(), scenario.input, i % 4, k, v, [("tenant", b"acme-\x00\xff")])
                                    for i, (k, v) in enumerate(events)])
        worker = WorkerProcess(scenario).start()
        try:
            collect(settings, scenario, timeout=120, until=lambda g: worker.proc.poll() is not None
                    or len(g.enriched) >= 200)
            own.freeze()
            time.sleep(8)  # the delivery timeout is 2 s
            own.thaw()
            got = collect(settings, scenario, timeout=240, until=lambda g: worker.proc.poll() is not None
                          or len(g.enriched_ids) >= len(events))
            alive = worker.proc.poll() is None
        finally:
            code = worker.stop()
        log = worker.log()
        assert alive and code == 0, log[-3000:]
        assert got.enriched_ids == {k.decode() for k, _ in events}, len(got.enriched_ids)
        assert not got.dead
        assert "re-sending" in log, "no delivery timed out: the freeze missed the produce step"
        # Records sent again keep their headers (they used to lose them).
        assert all(h.get("tenant") == b"acme-\x00\xff" for h in got.enriched_headers)
