"""The librdkafka source (STREAMS_SOURCE=librdkafka): a librdkafka consumer of the input topics
that hands out micro-batches, and the loop that runs them through the `BatchProcessor` in a
thread and commits synchronously after delivery.

A batch is what already waits locally (up to `max_batch` records), or, when nothing does, the
first record to arrive and what follows it within `max_wait_s`. Offsets are never committed
automatically: `commit(records)` commits, per partition, the offset after the last record of a
batch whose outputs the broker has already acknowledged. Batches run one at a time, so every
offset below a committed one is finished (at-least-once, no gaps). Faust's per-event stream
spent ~280 µs of CPU per event here; this path spends a few µs, which is what lets one worker
feed a GPU."""

from __future__ import annotations

import json
import logging
import threading
import time

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from ..errors import FatalError, consumer_error_is_fatal, sanitize
from ..kafka import ISOLATION, UndecodableRecords, is_undecodable, to_record
from ..records import InRecord
from ..runtime import Runtime
from ..settings import Settings
from .base import BatchProcessor, BatchWindow, ConsumerState, exit_for

log = logging.getLogger("streams.source.librdkafka")


def _lag(part: dict) -> int:
    """librdkafka's consumer lag; for a partition with nothing committed yet (a new group)
    it reports -1, so the lag is then counted from the partition's first offset."""
    lag = part.get("consumer_lag", -1)
    if lag >= 0:
        return lag
    hi, lo = part.get("hi_offset", -1), part.get("lo_offset", -1)
    return hi - max(lo, 0) if hi >= 0 else -1

def consumer_config(settings: Settings, state: ConsumerState) -> dict:
    def on_stats(payload: str) -> None:
        stats = json.loads(payload)
        up = sum(1 for b in stats.get("brokers", {}).values()
                 if b.get("nodeid", -1) >= 0 and b.get("state") == "UP")
        lag = {(topic, int(p)): _lag(part)
               for topic, t in stats.get("topics", {}).items()
               for p, part in t.get("partitions", {}).items()
               if int(p) >= 0 and _lag(part) >= 0}
        with state.lock:
            state.brokers_up = up
            state.lag = lag

    def on_error(err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            state.brokers_up = 0
        log.warning("kafka: %s", err)

    return settings.librdkafka_config() | {
        "group.id": settings.app_id,
        "client.id": f"{settings.app_id}-worker",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        **ISOLATION,
        "session.timeout.ms": int(settings.kafka_session_timeout_s * 1000),
        "heartbeat.interval.ms": max(1000, int(settings.kafka_session_timeout_s * 200)),
        "max.poll.interval.ms": int(settings.max_poll_interval_s * 1000),
        # Backpressure: librdkafka stops fetching once this many records wait locally.
        "queued.min.messages": settings.max_in_flight,
        "fetch.wait.max.ms": settings.fetch_max_wait_ms,
        "topic.metadata.refresh.interval.ms": 30_000,
        "statistics.interval.ms": 5_000,
        "stats_cb": on_stats,
        "error_cb": on_error,
    }

class BatchConsumer:
    def __init__(self, settings: Settings, topics: list[str]):
        self.settings = settings
        self.state = ConsumerState()

        # Per assigned partition: the offset committed last (this worker's, or the group's
        # as read once); and the partitions that skipped records after a seek past an
        # undecodable one, until a record of theirs is taken again (their position may lag
        # the seek until then, so it is not committed).
        self._committed: dict[tuple[str, int], int] = {}
        self._errored: set[tuple[str, int]] = set()
        self._consumer = Consumer(consumer_config(settings, self.state))
        self._undecodable = UndecodableRecords(self._consumer, settings.undecodable_refetches)
        self._consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_revoke)

    def _on_assign(self, _consumer, partitions: list[TopicPartition]) -> None:
        self._committed.clear()
        self.state.on_assigned([(tp.topic, tp.partition) for tp in partitions])

    def _on_revoke(self, _consumer, partitions: list[TopicPartition]) -> None:
        # Called inside take(), between batches: nothing is in flight, all is committed.
        self._undecodable.clear()
        self._committed.clear()
        self._errored.clear()
        self.state.on_revoked(len(partitions))

    def take(self, limit: int | None = None) -> list[InRecord]:
        """The next micro-batch of at most `limit` records (default max_batch; the loop passes
        its `BatchWindow.size()`), by the window rule (`BatchWindow`); empty when nothing
        arrived within max_wait_s. A record the client cannot decode comes back as an InRecord
        with `client_error` set (data, not an exception), once it has been re-fetched
        `undecodable_refetches` times."""
        max_batch = min(limit or self.settings.max_batch, self.settings.max_batch)
        # What already waits locally goes at once: those records have waited through the
        # previous batch already, and a window on top would only add to their latency. An
        # empty queue waits (up to max_wait_s) for a first record, and the batch window opens
        # with it: a burst that starts late in the wait is not cut in two (for an LLM, half a
        # burst is a whole extra decoding run).
        messages = self._consumer.consume(max_batch, 0)
        if not messages:
            messages = self._consumer.consume(1, self.settings.max_wait_s)
            if messages and max_batch > 1:
                messages += self._consumer.consume(max_batch - 1, self.settings.max_wait_s)
        self.state.last_poll = time.monotonic()
        records = []
        errored: set[tuple[str, int]] = set()
        for m in messages:
            err = m.error()
            if err is not None:
                self._on_error(m, err, records, errored)
                continue
            tp = (m.topic(), m.partition())
            if tp in errored:  # fetched before the seek past a bad batch took effect
                continue
            self._undecodable.decoded(tp)
            records.append(to_record(m))
        self._errored = (self._errored - {(r.topic, r.partition) for r in records
                                          if r.client_error is None}) | errored
        self.state.taken(records)
        return records

    def _on_error(self, m, err: KafkaError, records: list[InRecord], errored: set) -> None:
        code = err.code()
        if code == KafkaError._PARTITION_EOF:
            return
        if consumer_error_is_fatal(err):
            raise FatalError(f"the Kafka consumer cannot go on: {err.name()} ({sanitize(err.str())}); "
                             "check the credentials, ACLs and settings")
        if not is_undecodable(m, err):
            log.warning("consume error on %s[%s]: %s", m.topic(), m.partition(), sanitize(err.str()))
            return
        tp = (m.topic(), m.partition())
        if tp in errored:
            return  # one step per partition per take: the rest were fetched before the seek
        errored.add(tp)
        record = self._undecodable.record_for(m, err)
        if record is not None:
            records.append(record)

    def commit(self, records: list[InRecord]) -> bool:
        """Commit, per partition, the offset after the last record of the batch, or the
        consumer's position where that is further: past offsets that hold no record for this
        consumer (a transaction's commit or abort marker, an aborted transaction's records,
        records removed by compaction), which would otherwise leave the committed offset one
        short of the partition's end for good. The position never passes a record that was not
        handed out in a batch (batches run one at a time), except after a seek past an
        undecodable record, whose partition keeps the batch's own offset. Synchronous, so a
        returned True means the group coordinator has it. False (logged) when the partitions
        were taken away meanwhile: their records are re-delivered to the new owner."""
        next_offsets: dict[tuple[str, int], int] = {}
        for rec in records:
            key = (rec.topic, rec.partition)
            if rec.offset + 1 > next_offsets.get(key, OFFSET_INVALID):
                next_offsets[key] = rec.offset + 1
        for key, position in self._positions().items():
            if key in next_offsets or key in self._committed:
                if position > max(next_offsets.get(key, OFFSET_INVALID), self._committed.get(key, OFFSET_INVALID)):
                    next_offsets[key] = position
        if not next_offsets:
            return True
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed (%s); those records will be re-delivered", exc.args[0])
            return False
        self._committed.update(next_offsets)
        return True

    def commit_passed(self) -> None:
        """Between batches: commit positions that moved past offsets without a record since
        the last commit (a transaction marker that arrived after the partition's last record).
        The first time a partition is seen, its committed offset is read from the group."""
        unknown = [TopicPartition(t, p) for t, p in self.state.assigned if (t, p) not in self._committed]
        if unknown:
            try:
                for tp in self._consumer.committed(unknown, timeout=5):
                    self._committed[(tp.topic, tp.partition)] = tp.offset
            except KafkaException as exc:
                log.warning("could not read the committed offsets (%s)", exc.args[0])
                return
        if any(position > self._committed.get(key, OFFSET_INVALID) and self._committed.get(key, -1) >= 0
               for key, position in self._positions().items()):
            self.commit([])

    def _positions(self) -> dict[tuple[str, int], int]:
        assigned = [TopicPartition(t, p) for t, p in self.state.assigned if (t, p) not in self._errored]
        if not assigned:
            return {}
        try:
            return {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(assigned)
                    if tp.offset >= 0}
        except KafkaException:  # not assigned any more: nothing to add
            return {}

    def close(self) -> None:
        """Leave the group now, so its partitions move to other workers without waiting for
        the session timeout. A join still in flight (a stop during start-up or a rebalance) is
        let finish first, for at most a session timeout: tansu keeps a member that leaves
        mid-join as the leader of the next generation, and the group never settles again
        (docs/sources.md). What that wait fetches is dropped, uncommitted."""
        deadline = time.monotonic() + self.settings.kafka_session_timeout_s
        try:
            while not self.state.joined and time.monotonic() < deadline:
                self._consumer.consume(self.settings.max_batch, 0.2)
        except KafkaException:
            pass  # a fatal client error: leave as best it can
        self._consumer.close()


class EnrichmentLoop:
    """The librdkafka source: `BatchConsumer.take` in a thread, each batch through the shared
    `BatchProcessor`, committed synchronously after delivery."""

    def __init__(self, runtime: Runtime, consumer: BatchConsumer | None = None):
        self.runtime = runtime
        settings = runtime.settings
        self.consumer = consumer or BatchConsumer(settings, [r.input for r in settings.topics])
        self.stopping = threading.Event()
        self.processor = BatchProcessor(runtime, self.consumer.state, self.consumer.commit, self.stopping)
        self.window = BatchWindow(settings.max_batch, settings.max_wait_s, runtime.max_events)
        self._reported_lag: dict = {}
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> ConsumerState:
        return self.consumer.state

    @property
    def batches(self) -> int:
        return self.processor.batches

    def process(self, records: list[InRecord]) -> None:
        self.processor.process(records)

    def process_until_done(self, records: list[InRecord]) -> bool:
        return self.processor.process_until_done(records)

    def _report_lag(self) -> None:
        """Consumer lag per partition, from librdkafka's statistics (every 5 s)."""
        lag = self.consumer.state.lag
        if lag is not self._reported_lag:
            self._reported_lag = lag
            for (topic, partition), value in lag.items():
                self.runtime.telemetry.record_lag(topic, partition, value)

    def run(self) -> None:
        """Until `stop()`: a batch in progress always finishes (delivered and committed)."""
        passed_at = time.monotonic()
        try:
            while not self.stopping.is_set():
                records = self.consumer.take(self.window.size())
                if records:
                    self.process_until_done(records)
                elif time.monotonic() - passed_at > 1.0:
                    self.consumer.commit_passed()
                    passed_at = time.monotonic()
                self._report_lag()
        except BaseException as exc:  # noqa: BLE001 - the batch in progress was not committed
            exit_for(exc, "the worker loop")
        self.consumer.close()
        log.info("worker loop stopped after %d batches; left the group", self.batches)

    def start(self) -> "EnrichmentLoop":
        self._thread = threading.Thread(target=self.run, name="enrichment-loop", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, grace_s: float) -> bool:
        """Ask the loop to stop after its batch in flight; True when it did within `grace_s`."""
        self.stopping.set()
        if self._thread is None:
            return True
        self._thread.join(grace_s)
        return not self._thread.is_alive()
