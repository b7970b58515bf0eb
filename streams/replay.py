"""Re-enrich a time range of an input topic: `streams replay`.

Offsets from timestamps are only a starting hint: the range is bounded by the records' own
timestamps (skip records before --from, stop a partition at the first record at or after --to,
or at its end). That stays correct on real Kafka and on brokers whose ListOffsets-by-time or
high watermark read low (the embedded tansu broker does both).

The replay reads with its own consumer group (`streams-replay-<replay id>`, never the live
worker's) and commits after every acknowledged batch, so an interrupted run resumes where it
stopped when started again with the same arguments (same replay id)."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from confluent_kafka import Consumer, TopicPartition

from .kafka import consumer as make_consumer
from .pipeline import InRecord, Runtime, enrich_records
from .settings import Settings

REPLAY_HEADER = "streams.replay.id"
IDLE_END_S = 3.0  # a partition with nothing more to read for this long is at its end


@dataclass
class PartitionRange:
    partition: int
    start: int  # first offset to read (a hint may start earlier; timestamps filter)
    end_hint: int  # high watermark when the replay started


@dataclass
class Progress:
    read: int = 0
    enriched: int = 0
    dead: int = 0
    skipped: int = 0  # outside the time range


def replay_id(topic: str, start: str, end: str | None, partitions: list[int] | None,
              output: str, model_version: str | None) -> str:
    """Same arguments -> same id -> same consumer group: re-running resumes. An open end
    ("until now") is part of the id as given, not as the clock read it."""
    key = f"{topic}|{start}|{end or 'now'}|{partitions}|{output}|{model_version}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def to_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


def plan(settings: Settings, topic: str, start_ms: int | None, partitions: list[int] | None,
         from_offset: int | None) -> list[PartitionRange]:
    probe = make_consumer(settings, f"streams-replay-probe-{uuid.uuid4().hex[:8]}")
    try:
        meta = probe.list_topics(topic, timeout=15).topics.get(topic)
        if meta is None or meta.error is not None:
            raise ValueError(f"topic {topic!r} does not exist")
        chosen = sorted(meta.partitions) if not partitions else partitions
        missing = set(chosen) - set(meta.partitions)
        if missing:
            raise ValueError(f"topic {topic!r} has no partition(s) {sorted(missing)}")
        ranges = []
        if from_offset is None:
            hints = probe.offsets_for_times([TopicPartition(topic, p, start_ms) for p in chosen], timeout=15)
        for i, p in enumerate(chosen):
            low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            if from_offset is not None:
                start = max(low, from_offset)
            else:
                hint = hints[i].offset
                # -1: no record at/after the time (real Kafka) -> start at the end; anything
                # else is a lower bound that timestamps refine while reading.
                start = high if hint < 0 else max(low, min(hint, high))
            ranges.append(PartitionRange(p, start, high))
        return ranges
    finally:
        probe.close()


def count_range(settings: Settings, topic: str, ranges: list[PartitionRange], start_ms: int,
                end_ms: int) -> dict[int, int]:
    """Records per partition inside the time range (read, not estimated: offsets may lie)."""
    counts = {r.partition: 0 for r in ranges}
    cons = make_consumer(settings, f"streams-replay-count-{uuid.uuid4().hex[:8]}")
    try:
        for batch in read_range(cons, topic, ranges, end_ms, batch_size=1000):
            for r in batch:
                if r.timestamp_ms is None or r.timestamp_ms >= start_ms:
                    counts[r.partition] += 1
    finally:
        cons.close()
    return counts


def read_range(cons: Consumer, topic: str, ranges: list[PartitionRange], end_ms: int, *,
               batch_size: int):
    """Yield batches of records from each range's start (or the group's committed offset, to
    resume) until a record at/after end_ms, or the partition's end. Commits nothing."""
    tps = [TopicPartition(topic, r.partition) for r in ranges]
    committed = {tp.partition: tp.offset for tp in cons.committed(tps, timeout=15)}
    assign = [TopicPartition(topic, r.partition,
                             committed[r.partition] if committed.get(r.partition, -1) >= 0 else r.start)
              for r in ranges]
    cons.assign(assign)
    end_hint = {r.partition: r.end_hint for r in ranges}
    position = {tp.partition: tp.offset for tp in assign}
    last_seen = {p: time.monotonic() for p in position}
    while position:
        msgs = cons.consume(batch_size, 0.5)
        now = time.monotonic()
        batch: list[InRecord] = []
        for msg in msgs:
            p = msg.partition()
            if msg.error() or p not in position:
                continue
            last_seen[p] = now
            _, ts = msg.timestamp()
            if ts is not None and ts >= end_ms:  # past the range: this partition is done
                del position[p]
                cons.pause([TopicPartition(topic, p)])
                continue
            position[p] = msg.offset() + 1
            batch.append(InRecord(msg.topic(), p, msg.offset(), ts, msg.key(), msg.value(),
                                  list(msg.headers() or [])))
        if batch:
            yield batch
        for p in list(position):  # at the end: past the start-time high watermark and idle
            if position[p] >= end_hint[p] and now - last_seen[p] > IDLE_END_S:
                del position[p]
                cons.pause([TopicPartition(topic, p)])


def run_replay(runtime: Runtime, settings: Settings, *, topic: str, start_ms: int, end_ms: int,
               ranges: list[PartitionRange], output: str, rid: str, limit: int | None = None,
               on_batch=None) -> Progress:
    """Enrich the range, produce (acks=all), then commit what was produced; `limit` stops
    after that many events (the next run resumes after them)."""
    route = settings.route(topic).model_copy(update={"output": output})
    version = ",".join(sorted({m.version for m in runtime.engine.models}))
    progress = Progress()
    cons = make_consumer(settings, f"streams-replay-{rid}")

    def headers(rec: InRecord) -> list[tuple[str, bytes]]:
        return [(REPLAY_HEADER, rid.encode()),
                ("streams.replay.source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
                ("streams.replay.model.version", version.encode())]

    try:
        for batch in read_range(cons, topic, ranges, end_ms, batch_size=settings.max_batch):
            if limit is not None:  # keep records up to the limit-th one in range
                in_range = [i for i, r in enumerate(batch) if r.timestamp_ms is None or r.timestamp_ms >= start_ms]
                room = limit - progress.read
                if len(in_range) > room:
                    batch = batch[: in_range[room]] if room < len(in_range) else batch
            wanted = [r for r in batch if r.timestamp_ms is None or r.timestamp_ms >= start_ms]
            progress.skipped += len(batch) - len(wanted)
            for partition in sorted({r.partition for r in wanted}):
                recs = [r for r in wanted if r.partition == partition]
                result = enrich_records(runtime, route, recs, extra_headers=headers)
                runtime.producer.send_all_blocking(result.out)
                progress.enriched += result.enriched
                progress.dead += result.dead
            progress.read += len(wanted)
            done: dict[int, int] = {}
            for r in batch:
                done[r.partition] = r.offset + 1
            if done:  # produced and acknowledged: now the replay group may move on
                cons.commit(offsets=[TopicPartition(topic, p, o) for p, o in done.items()],
                            asynchronous=False)
            if on_batch:
                on_batch(progress, wanted)
            if limit is not None and progress.read >= limit:
                break
    finally:
        cons.close()
    return progress


def group_is_active(description) -> bool:
    """Active as kafka-consumer-groups sees it: members joined, or a rebalance under way.
    (The embedded tansu broker lists no members and always reports STABLE: it cannot tell.)"""
    from confluent_kafka import ConsumerGroupState

    rebalancing = {ConsumerGroupState.PREPARING_REBALANCING, ConsumerGroupState.COMPLETING_REBALANCING}
    return bool(description.members) or description.state in rebalancing


def _describe_group(settings: Settings, group: str, attempts: int = 4):
    """A fresh client per attempt: a DescribeGroups request that gets no answer (seen on the
    embedded broker) is retried rather than waited on; no answer at all means refuse."""
    from .kafka import admin

    for _ in range(attempts):
        future = admin(settings).describe_consumer_groups([group], request_timeout=8)[group]
        try:
            return future.result(timeout=10)
        except TimeoutError:
            continue
    raise ValueError(f"the broker did not describe group {group!r} ({attempts} tries): refusing")


def refuse_if_active(settings: Settings, group: str) -> None:
    if group_is_active(_describe_group(settings, group)):
        raise ValueError(f"group {group!r} has active members: stop its workers first "
                         "(as kafka-consumer-groups --reset-offsets requires)")


def offsets_at(settings: Settings, group: str, topics: list[str], when_ms: int) -> list[TopicPartition]:
    """For each partition, the offset of the first record at/after `when_ms`, found by reading
    from the broker's hint (which may be low) rather than trusting it. Reads as a throwaway
    group; `group` is only named in errors."""
    new: list[TopicPartition] = []
    cons = make_consumer(settings, f"streams-offsets-{uuid.uuid4().hex[:8]}")
    try:
        for topic in topics:
            ranges = plan(settings, topic, when_ms, None, None)
            for r in ranges:
                found = r.end_hint  # nothing at/after the time: the end
                for batch in read_range(cons, topic, [r], 2**62, batch_size=500):
                    hit = next((x for x in batch if x.timestamp_ms is None or x.timestamp_ms >= when_ms), None)
                    if hit is not None:
                        found = hit.offset
                        break
                    found = batch[-1].offset + 1
                new.append(TopicPartition(topic, r.partition, found))
    finally:
        cons.close()
    return new


def reset_offsets(settings: Settings, group: str, offsets: list[TopicPartition]) -> None:
    """Call refuse_if_active first (the command does, once)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    from .kafka import admin

    futures = admin(settings).alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, offsets)], request_timeout=15)
    for fut in futures.values():
        fut.result()
