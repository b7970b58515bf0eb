"""Commit order in the worker loop: a batch's offsets are committed only after the broker has
acknowledged every output of that batch, and only up to the batch's last record.

The loop is driven with stand-in consumer/producer objects that record the order of calls
(the real clients cannot be made to fail on cue); the same loop against the real broker is
covered by tests/integration (SIGKILL, poison, SIGTERM) and the BatchConsumer test below."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from streams.source.base import ConsumerState
from streams.source.librdkafka import BatchConsumer
from streams.engine import NoopEngine
from streams.kafka import ensure_topics
from streams import pipeline
from streams.errors import FatalError, RetriableError
from streams.records import InRecord
from streams.runtime import Runtime, acking_producer
from streams.serde import SchemaCatalog
from streams.settings import Settings
from streams.telemetry import Telemetry
from streams.source.librdkafka import EnrichmentLoop
from tests.fixtures.kafka_io import produce

TOPIC = "orders.notes"


def _value(i: int) -> bytes:
    return json.dumps({"event_id": f"e{i}", "text": "leave it at the door"}).encode()


class CallLog:
    max_message_bytes = 1_000_000
    retrying = None

    def __init__(self, fail_delivery: bool = False):
        self.calls: list[tuple] = []
        self.fail_delivery = fail_delivery
        self.state = ConsumerState()

    # producer side
    def fits(self, record) -> bool:
        return True

    def send(self, records):
        self.calls.append(("send", len(records)))

    def deliver(self, records, timeout=None, *, sent=False):
        self.calls.append(("deliver", len(records)))
        if self.fail_delivery:
            raise TimeoutError("broker gone")
        return []

    # consumer side
    def commit(self, records):
        self.calls.append(("commit", sorted({(r.partition, r.offset) for r in records})[-1]))
        return True


@pytest.fixture
def runtime():
    settings = Settings()
    catalog = SchemaCatalog(f"mock://loop-{uuid.uuid4().hex}", settings.schema_dir,
                            [r.input for r in settings.topics], [r.output for r in settings.topics])
    return Runtime(settings, NoopEngine(), catalog, CallLog(), telemetry=Telemetry.disabled())


def _records(n: int, partition: int = 0) -> list[InRecord]:
    return [InRecord(TOPIC, partition, 10 + i, 1_700_000_000_000, b"k", _value(i)) for i in range(n)]


def test_commit_comes_after_every_output_is_acknowledged(runtime):
    log = CallLog()
    runtime.producer = log
    loop = EnrichmentLoop(runtime, consumer=log)
    batch = _records(5) + [InRecord(TOPIC, 1, 3, None, b"bad", b"{not json")]
    loop.process(batch)
    # The dead letter leads its partition, so it leaves at once; then the 5 enriched as they are
    # ready; all acknowledged, then the commit
    assert log.calls == [("send", 1), ("send", 5), ("deliver", 6), ("commit", (1, 3))]


def test_a_batch_that_cannot_be_delivered_is_not_committed(runtime):
    log = CallLog(fail_delivery=True)
    runtime.producer = log
    loop = EnrichmentLoop(runtime, consumer=log)
    with pytest.raises(TimeoutError):
        loop.process(_records(3))
    assert [c[0] for c in log.calls] == ["send", "deliver"]


class BrokenEngine(NoopEngine):
    """Fails every text, the probe text too: a sticky accelerator error."""

    device, runs_models = "cpu", True

    def __init__(self):
        self.calls = 0

    def infer(self, texts, labels, topic=None):
        self.calls += 1
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_an_engine_broken_on_every_input_is_reloaded_once_then_fatal(runtime):
    log = CallLog()
    runtime.producer = log
    runtime.engine = BrokenEngine()
    reloads = []
    runtime.engine_factory = lambda settings, telemetry: reloads.append(1) or BrokenEngine()
    loop = EnrichmentLoop(runtime, consumer=log)
    with pytest.raises(FatalError, match="after a reload"):
        loop.process_until_done(_records(4))
    assert reloads == [1]
    assert log.calls == []  # nothing delivered, nothing committed, nothing dead-lettered


def test_an_engine_that_recovers_after_a_reload_enriches_the_batch(runtime):
    log = CallLog()
    runtime.producer = log
    runtime.engine = BrokenEngine()
    runtime.engine_factory = lambda settings, telemetry: NoopEngine()
    loop = EnrichmentLoop(runtime, consumer=log)
    assert loop.process_until_done(_records(4))
    assert log.calls == [("send", 4), ("deliver", 4), ("commit", (0, 13))]


def test_a_dependency_failure_is_retried_without_dead_letters(runtime, monkeypatch):
    """The registry (or any dependency) fails twice: the same batch is processed again, nothing
    is dead-lettered meanwhile, and the worker says what it waits for."""
    log = CallLog()
    runtime.producer = log
    runtime.settings = runtime.settings.model_copy(update={"retry_max_backoff_s": 0.01})
    failures = iter([RetriableError("registry", "HTTP 503"), RetriableError("registry", "timeout")])
    real = pipeline.decode_input
    seen_degraded = []

    def flaky(value, topic, catalog, max_bytes):
        err = next(failures, None)
        if err is not None:
            seen_degraded.append(loop.consumer.state.degraded)
            raise err
        return real(value, topic, catalog, max_bytes)

    monkeypatch.setattr(pipeline, "decode_input", flaky)
    loop = EnrichmentLoop(runtime, consumer=log)
    assert loop.process_until_done(_records(3))
    assert log.calls == [("send", 3), ("deliver", 3), ("commit", (0, 12))]
    assert seen_degraded == [None, "registry: HTTP 503"]
    assert loop.consumer.state.degraded is None


def test_batch_consumer_commits_the_offset_after_each_partitions_last_record(broker):
    """Real broker: take a batch, commit it, and a new member of the group resumes after it."""
    name = f"bc{uuid.uuid4().hex[:6]}"
    settings = Settings(kafka_bootstrap=broker.bootstrap, app_id=f"g-{name}", kafka_session_timeout_s=6,
                        topics=[{"input": name}], max_batch=7, max_wait_s=0.5, topic_partitions=1)
    ensure_topics(settings)
    produce(settings, name, [(f"k{i}".encode(), _value(i)) for i in range(10)])

    first = BatchConsumer(settings, [name])
    batch: list[InRecord] = []
    for _ in range(60):
        batch = first.take()
        if batch:
            break
    assert [r.offset for r in batch] == list(range(7))  # count-bounded: max_batch
    assert first.state.joined and first.state.assigned == [(name, 0)]
    assert first.commit(batch)
    first.close()

    second = BatchConsumer(settings, [name])
    rest: list[InRecord] = []
    for _ in range(60):
        rest += second.take()
        if len(rest) >= 3:
            break
    second.close()
    assert [r.offset for r in rest] == [7, 8, 9]
    assert rest[0].value == _value(7) and rest[0].key == b"k7" and rest[0].timestamp_ms


class ChunkLog(NoopEngine):
    """The no-op engine, logging each call into the CallLog (and, optionally, what a hook
    sees at that moment)."""

    def __init__(self, log: CallLog, hook=None):
        self.log, self.hook = log, hook

    def infer(self, texts, labels, topic=None):
        self.log.calls.append(("infer", len(texts)))
        if self.hook is not None:
            self.hook()
        return super().infer(texts, labels, topic)


def test_outputs_leave_group_by_group_and_the_commit_waits_for_every_ack(runtime):
    """A micro-batch of 70 from one partition: a first group of 8 (a quarter of the model
    batch), then groups of 32; each group's outputs are sent as soon as its forward passes are
    done, before the next group is inferred; the commit comes once, after the
    acknowledgements of all 70, never between groups."""
    log = CallLog()
    runtime.producer = log
    runtime.engine = ChunkLog(log)
    runtime.settings = runtime.settings.model_copy(update={"output_chunk": 32})
    loop = EnrichmentLoop(runtime, consumer=log)
    loop.process(_records(70))
    assert log.calls == [("infer", 8), ("send", 8), ("infer", 32), ("send", 32), ("infer", 30),
                         ("send", 30), ("deliver", 70), ("commit", (0, 79))]


def test_nothing_is_committed_when_a_sent_group_is_not_acknowledged(runtime):
    """Groups already sent, then the acknowledgements fail: no commit at all (the batch is
    re-delivered whole), not even up to the groups that went out first."""
    log = CallLog(fail_delivery=True)
    runtime.producer = log
    runtime.engine = ChunkLog(log)
    runtime.settings = runtime.settings.model_copy(update={"output_chunk": 32})
    loop = EnrichmentLoop(runtime, consumer=log)
    with pytest.raises(TimeoutError):
        loop.process(_records(40))
    assert [c[0] for c in log.calls] == ["infer", "send", "infer", "send", "deliver"]


@pytest.mark.integration
def test_first_outputs_reach_the_broker_while_the_batch_is_still_inferred(broker):
    """Real broker, real producer: when the engine starts on the third group of a micro-batch,
    the first group's enriched records can already be read from the output topic; the commit
    (a recorder here) comes after all of them were acknowledged."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from streams.kafka import consumer

    name = f"chunks{uuid.uuid4().hex[:6]}"
    settings = Settings(kafka_bootstrap=broker.bootstrap, topics=[{"input": name, "labels": {"a": "b"}}],
                        topic_partitions=1, output_chunk=10, model_batch=10,
                        schema_registry_url=f"mock://chunks-{uuid.uuid4().hex}")
    ensure_topics(settings)
    catalog = SchemaCatalog.from_settings(settings)
    rt = Runtime(settings, NoopEngine(), catalog, acking_producer(settings), telemetry=Telemetry.disabled())
    reader = consumer(settings, f"r-{name}")
    reader.assign([TopicPartition(f"{name}.enriched", 0, OFFSET_BEGINNING)])
    seen: list[int] = []
    read: list = []

    class Recorder(CallLog):
        def commit(self, records):
            read.extend(m for m in reader.consume(100, 2.0) if not m.error())
            return super().commit(records)

    def hook():
        # Groups of 2 (a quarter of the model batch), 10, 10 and 3: the engine's third call is
        # the third group, after the first two (12 records) were sent.
        if len(log.calls) == 3:
            deadline = time.monotonic() + 10
            while len(read) < 12 and time.monotonic() < deadline:
                read.extend(m for m in reader.consume(10, 0.5) if not m.error())
            seen.append(len(read))

    log = Recorder()
    rt.engine = ChunkLog(log, hook)
    loop = EnrichmentLoop(rt, consumer=log)
    loop.process([InRecord(name, 0, i, 1_700_000_000_000, f"k{i}".encode(), _value(i)) for i in range(25)])
    deadline = time.monotonic() + 10
    while len(read) < 25 and time.monotonic() < deadline:
        read.extend(m for m in reader.consume(100, 0.5) if not m.error())
    reader.close()
    rt.producer._producer.flush(5)
    assert seen == [12]  # the first groups were on the broker before the third was inferred
    assert sorted(m.key() for m in read) == sorted(f"k{i}".encode() for i in range(25))
    assert log.calls[-1] == ("commit", (0, 24))
