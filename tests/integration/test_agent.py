"""The commit rule under failure, on both sources (the Faust agent is where Faust 0.15.3's commit
traps live: docs/sources.md): no committed offset is ever ahead of an output the broker has not
acknowledged.

The proof is direct: while workers run, are killed, stop and rebalance, a sampler reads the
group's committed offsets every 0.2 s; at the end every offset below any committed offset ever
seen must have its enriched record in the output topic (outputs are acknowledged before the
commit, so an output that is missing then was never written)."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from streams.broker import free_port
from streams.kafka import consumer
from streams.source.base import EXIT_FATAL
from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect, json_events, produce_recorded
from tests.fixtures.registry_server import FakeRegistry  # noqa: F401 - fixture below
from tests.integration.test_dependencies import avro_events, registry  # noqa: F401 - fixture
from streams.serde import SchemaCatalog

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

PARTITIONS = 4
MAX_BATCH = 64
MAX_IN_FLIGHT = 256


def scenario_for(source: str, broker, tiny_models, model_cache, tmp_path, **env) -> Scenario:
    return Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path,
                    extra_env={"STREAMS_SOURCE": source, "STREAMS_MAX_BATCH": str(MAX_BATCH),
                               "STREAMS_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT), **env})


def in_flight_window(source: str) -> int:
    """Outputs that can be delivered and not yet committed when a worker dies: the batch in
    flight plus what was acked since the last commit (librdkafka: nothing, it commits every
    batch; Faust: up to broker_commit_every acks, plus its stream buffer) ."""
    if source == "librdkafka":
        return MAX_BATCH
    return 4 * MAX_BATCH + max(2 * MAX_BATCH, MAX_IN_FLIGHT) + MAX_BATCH


class CommitSampler:
    """Reads the group's committed offsets every 0.2 s (a reader outside the group)."""

    def __init__(self, scenario: Scenario):
        self.settings = scenario.settings
        self.tps = [TopicPartition(scenario.input, p) for p in range(PARTITIONS)]
        self.seen: dict[int, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        reader = consumer(self.settings, self.settings.app_id)
        try:
            while not self._stop.wait(0.2):
                try:
                    for tp in reader.committed(self.tps, timeout=5):
                        if tp.offset >= 0:
                            self.seen[tp.partition] = max(self.seen.get(tp.partition, -1), tp.offset)
                    self.samples += 1
                except Exception:  # noqa: BLE001 - a sample lost to a busy broker
                    pass
        finally:
            reader.close()

    def __enter__(self) -> "CommitSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def outputs_by_position(got) -> set[tuple[int, int]]:
    return {(r["source"]["partition"], r["source"]["offset"]) for _, r in got.enriched}


def read_outputs_covering(scenario: Scenario, sampler: CommitSampler, at_least: int = 0):
    """Everything in the output topics, read until every offset below a committed one has its
    output (or 60 s: then the assertion below says which are missing)."""
    def covered(c) -> bool:
        have = outputs_by_position(c)
        return len(c.enriched_ids) >= at_least and all(
            (p, o) in have for p, offset in sampler.seen.items() for o in range(offset))
    return collect(scenario.settings, scenario, until=covered, timeout=60)


def assert_nothing_committed_ahead(sampler: CommitSampler, got, label: str) -> None:
    have = outputs_by_position(got)
    assert sampler.samples > 0
    for partition, offset in sampler.seen.items():
        missing = [o for o in range(offset) if (partition, o) not in have]
        assert not missing, (f"{label}: partition {partition} committed at {offset} while offsets "
                             f"{missing[:5]} (of {len(missing)}) have no output")


def produce_spread(scenario: Scenario, events) -> None:
    produce_recorded(scenario.settings, [(k.decode(), scenario.input, i % PARTITIONS, k, v, [])
                                         for i, (k, v) in enumerate(events)])


@pytest.mark.parametrize("source", ["faust", "librdkafka"])
def test_sigkill_at_random_points_commits_nothing_ahead_of_an_output(
        source, broker, tiny_models, model_cache, tmp_path):
    scenario = scenario_for(source, broker, tiny_models, model_cache, tmp_path)
    settings = scenario.settings
    n, kills = 4000, 3
    events = json_events(n, prefix="k")
    produce_spread(scenario, events)
    rng = random.Random(14)
    window = in_flight_window(source)
    with CommitSampler(scenario) as sampler:
        for k in range(kills):
            worker = WorkerProcess(scenario, f"w{k}").start()
            try:
                # Wait for progress, then kill at a random moment of a running stream.
                target = (k + 1) * n // (kills + 2)
                got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= target
                              or worker.proc.poll() is not None, timeout=120)
                time.sleep(rng.uniform(0.0, 0.6))
                assert worker.proc.poll() is None, worker.log()[-3000:]
            finally:
                worker.kill()
            assert len(got.enriched_ids) < n, "the worker finished before it was killed: proves nothing"
        last = WorkerProcess(scenario, "last").start()
        try:
            got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= n, timeout=240)
        finally:
            code = last.stop()
    assert code == 0, last.log()[-3000:]
    missing = {f"k-{i}" for i in range(n)} - got.enriched_ids
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert_nothing_committed_ahead(sampler, got, source)
    duplicates = len(got.enriched) - len(got.enriched_ids)
    bound = kills * window
    print(f"\n[{source}] {kills} SIGKILLs in {n} events: 0 lost, {duplicates} duplicates "
          f"(bound {kills} x in-flight window {window} = {bound}); {sampler.samples} commit samples")
    assert duplicates <= bound


@pytest.mark.parametrize("source", ["faust", "librdkafka"])
def test_a_second_worker_joining_mid_batch_commits_nothing_ahead(
        source, broker, tiny_models, model_cache, tmp_path):
    """A rebalance while batches are in flight (events keep arriving while the second worker
    joins): the first worker's batch finishes before its partitions move, or is not
    committed; nothing is lost, nothing committed ahead of its output."""
    scenario = scenario_for(source, broker, tiny_models, model_cache, tmp_path)
    settings = scenario.settings
    sent: list[str] = []
    stop = threading.Event()

    def feed() -> None:  # ~400 events/s until told to stop
        i = 0
        while not stop.is_set():
            batch = json_events(40, prefix=f"r{i}")
            produce_spread(scenario, batch)
            sent.extend(k.decode() for k, _ in batch)
            i += 1
            time.sleep(0.1)

    feeder = threading.Thread(target=feed, daemon=True)
    with CommitSampler(scenario) as sampler:
        first = WorkerProcess(scenario, "first").start()
        second = None
        feeder.start()
        try:
            collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= 300, timeout=120)
            # Same group and topics, its own health port.
            second = WorkerProcess(dataclasses.replace(scenario, health_port=free_port()), "second").start()
            deadline = time.monotonic() + 90
            while "assigned" not in second.log() and time.monotonic() < deadline:
                assert second.proc.poll() is None, second.log()[-3000:]
                time.sleep(0.5)
            time.sleep(3)  # both workers take batches after the rebalance
            stop.set()
            feeder.join()
            got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= len(sent), timeout=240)
            alive = first.proc.poll() is None and second.proc.poll() is None
        finally:
            stop.set()
            codes = [first.stop(), second.stop() if second else None]
    logs = first.log()[-2000:] + (second.log()[-2000:] if second else "")
    assert alive and codes == [0, 0], logs
    assert got.enriched_ids == set(sent)
    assert_nothing_committed_ahead(sampler, got, source)
    assert "revoked" in first.log(), "no rebalance happened: proves nothing"
    print(f"\n[{source}] rebalance mid-stream: {len(sent)} events, 0 lost, "
          f"{len(got.enriched) - len(sent)} duplicates")


@pytest.mark.parametrize("source", ["faust", "librdkafka"])
def test_sigterm_drains_the_batch_in_flight_within_the_grace_period(
        source, broker, tiny_models, model_cache, tmp_path):
    grace = 20.0
    scenario = scenario_for(source, broker, tiny_models, model_cache, tmp_path,
                            STREAMS_SHUTDOWN_GRACE_S=str(grace))
    settings = scenario.settings
    n = 4000
    produce_spread(scenario, json_events(n, prefix="t"))
    with CommitSampler(scenario) as sampler:
        worker = WorkerProcess(scenario).start()
        try:
            partial = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= 400, timeout=120)
            assert worker.proc.poll() is None, worker.log()[-3000:]
        finally:
            t0 = time.monotonic()
            code = worker.stop(timeout=grace + 15)
            took = time.monotonic() - t0
        time.sleep(0.6)  # a last commit sample after the worker left
    assert len(partial.enriched_ids) < n, "finished before SIGTERM: proves nothing"
    assert code == 0 and took < grace + 5, f"exit {code} after {took:.1f}s\n" + worker.log()[-3000:]
    got = read_outputs_covering(scenario, sampler, len(partial.enriched_ids))
    assert_nothing_committed_ahead(sampler, got, source)
    # The drain committed what it delivered: a restart re-delivers at most one window.
    done = sum(sampler.seen.values())
    assert done >= len(partial.enriched_ids) - in_flight_window(source), (done, len(partial.enriched_ids))
    print(f"\n[{source}] SIGTERM: exit 0 in {took:.1f}s (grace {grace:.0f}s), committed {done}, "
          f"delivered {len(got.enriched_ids)}")


@pytest.mark.parametrize("source", ["faust", "librdkafka"])
@pytest.mark.parametrize("after_s", [0.0, 1.5])
def test_sigterm_during_start_up_exits_0_and_takes_nothing(
        source, after_s, broker, tiny_models, model_cache, tmp_path):
    """A rollout can stop a pod while torch imports and the models load, before Faust's signal
    handlers exist: the worker exits 0 at once (never killed by the signal), and a worker that
    starts next takes every event."""
    scenario = scenario_for(source, broker, tiny_models, model_cache, tmp_path)
    n = 200
    produce_spread(scenario, json_events(n, prefix="s"))
    worker = WorkerProcess(scenario, "early").start()
    deadline = time.monotonic() + 30
    while not worker.log().strip() and time.monotonic() < deadline:  # its first log line
        time.sleep(0.02)
    time.sleep(after_s)
    assert worker.proc.poll() is None, worker.log()[-3000:]
    t0 = time.monotonic()
    code = worker.stop(timeout=30)
    took = time.monotonic() - t0
    assert code == 0 and took < 15, f"exit {code} after {took:.1f}s\n" + worker.log()[-3000:]
    last = WorkerProcess(scenario, "next").start()
    try:
        got = collect(scenario.settings, scenario, until=lambda c: len(c.enriched_ids) >= n, timeout=120)
    finally:
        last.stop()
    assert len(got.enriched_ids) == n, last.log()[-3000:]


def test_a_fatal_error_on_the_first_batch_of_a_fresh_group_commits_nothing(
        broker, tiny_models, model_cache, tmp_path, registry):  # noqa: F811
    """Faust 0.15.3 trap: with no committed offset, `_new_offset` commits the end of whatever
    was acked; a body that raised on the first batch committed every partition to its end.
    The agent exits 78 without acking: every partition stays at its start."""
    scenario = scenario_for("faust", broker, tiny_models, model_cache, tmp_path,
                            STREAMS_SCHEMA_REGISTRY_URL=registry.url)
    settings = scenario.settings
    catalog = SchemaCatalog.from_settings(settings)
    events = avro_events(catalog, scenario.input, 200, "avro")
    registry.fail_id(int.from_bytes(events[0][1][1:5], "big"), *[401] * 1000)
    produce_spread(scenario, events)
    with CommitSampler(scenario) as sampler:
        worker = WorkerProcess(scenario).start()
        try:
            worker.proc.wait(90)
        finally:
            worker.stop()
        time.sleep(0.6)
    assert worker.proc.returncode == EXIT_FATAL, worker.log()[-3000:]
    assert all(offset == 0 for offset in sampler.seen.values()), sampler.seen
    got = collect(settings, scenario, until=lambda c: False, timeout=12)
    assert not got.enriched and not got.dead


@pytest.mark.parametrize("source", ["librdkafka", "faust"])
def test_readiness_reports_a_broker_that_went_away(source, tiny_models, model_cache, tmp_path):
    """/readyz says `broker_reachable: false` (503) once the broker is gone, on both sources
    (librdkafka: its statistics; the Faust agent: aiokafka's open connections)."""
    from streams.broker import EmbeddedBroker
    from streams.kafka import ensure_topics
    from tests.integration.test_health import _get as _get_json

    with EmbeddedBroker(free_port(), log_path=tmp_path / "tansu.log") as own:
        scenario = Scenario(own.bootstrap, tiny_models, model_cache, tmp_path,
                            extra_env={"STREAMS_SOURCE": source})
        ensure_topics(scenario.settings)
        worker = WorkerProcess(scenario).start()
        try:
            deadline, status = time.monotonic() + 90, None
            while time.monotonic() < deadline and status != 200:
                try:
                    status, body = _get_json(scenario.health_port, "/readyz")
                except OSError:
                    pass  # not listening yet
                time.sleep(0.5)
            assert status == 200 and body["broker_reachable"], worker.log()[-2000:]
            own.stop()
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and body["broker_reachable"]:
                time.sleep(1)
                status, body = _get_json(scenario.health_port, "/readyz")
            assert status == 503 and body["broker_reachable"] is False, body
        finally:
            worker.kill()


def test_an_agent_without_the_codec_library_stops_at_start_up_and_says_which(broker, tiny_models,
                                                                            model_cache, tmp_path):
    """cramjam hidden from the worker (a broken image, a hand-made venv): aiokafka could not
    decompress a Java producer's lz4, zstd or snappy batches, which would make every such record
    a dead letter. The agent refuses to start (78) and names the package; nothing is taken."""
    shim = tmp_path / "no-cramjam"
    shim.mkdir()
    (shim / "cramjam.py").write_text("raise ImportError('cramjam hidden by the test')\n")
    scenario = scenario_for("faust", broker, tiny_models, model_cache, tmp_path,
                            PYTHONPATH=f"{shim}:{REPO}")
    produce_spread(scenario, json_events(8, "codec"))
    worker = WorkerProcess(scenario).start()
    code = worker.wait_exit(90)
    log = worker.log()
    assert code == EXIT_FATAL, log[-3000:]
    assert "cramjam" in log and "lz4" in log, log[-2000:]
    got = collect(scenario.settings, scenario, timeout=5, until=lambda g: False)
    assert not got.enriched and not got.dead
