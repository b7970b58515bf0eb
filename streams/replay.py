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
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, TopicPartition

from .kafka import consumer as make_consumer
from .settings import Settings

if TYPE_CHECKING:  # the pipeline imports torch (~4 s): `offsets reset` never needs it
    from .pipeline import Runtime
    from .records import InRecord

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
                end_ms: int, done_below: dict[int, int] | None = None) -> tuple[dict[int, int], dict[int, int]]:
    """Records per partition inside the time range (read, not estimated: offsets may lie), and
    how many of them lie below `done_below[partition]`: what an interrupted run of this replay
    already enriched (its group's committed offsets)."""
    counts = {r.partition: 0 for r in ranges}
    done = {r.partition: 0 for r in ranges}
    below = done_below or {}
    cons = make_consumer(settings, f"streams-replay-count-{uuid.uuid4().hex[:8]}")
    try:
        for batch in read_range(cons, topic, ranges, end_ms, batch_size=1000, resume=False):
            for r in batch:
                if r.timestamp_ms is None or r.timestamp_ms >= start_ms:
                    counts[r.partition] += 1
                    if r.offset < below.get(r.partition, -1):
                        done[r.partition] += 1
    finally:
        cons.close()
    return counts, done


def replayed_offsets(settings: Settings, topic: str, ranges: list[PartitionRange], rid: str) -> dict[int, int]:
    """Where an earlier run of this replay stopped: its group's committed offset per partition
    (none: not started)."""
    committed = committed_offsets(settings, replay_group(rid),
                                  [TopicPartition(topic, r.partition) for r in ranges])
    return {p: o for (_, p), o in committed.items() if o >= 0}


def replay_group(rid: str) -> str:
    return f"streams-replay-{rid}"


def read_range(cons: Consumer, topic: str, ranges: list[PartitionRange], end_ms: int, *,
               batch_size: int, resume: bool = True):
    """Yield batches of records (pipeline InRecords) from each range's start (or, with
    `resume`, the group's committed offset) until a record at/after end_ms, or the
    partition's end. Commits nothing."""
    from .records import InRecord

    for msgs in read_messages(cons, topic, ranges, end_ms, batch_size=batch_size, resume=resume):
        yield [InRecord(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value(),
                        list(m.headers() or [])) for m in msgs]


def read_messages(cons: Consumer, topic: str, ranges: list[PartitionRange], end_ms: int, *,
                  batch_size: int, resume: bool = True):
    """read_range's reading, as confluent_kafka Messages: for callers that need no pipeline
    (importing it loads torch, seconds)."""
    tps = [TopicPartition(topic, r.partition) for r in ranges]
    committed = {tp.partition: tp.offset for tp in cons.committed(tps, timeout=15)} if resume else {}
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
        batch = []
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
            batch.append(msg)
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
    from .pipeline import enrich_records

    route = settings.route(topic).model_copy(update={"output": output})
    version = ",".join(sorted({m.version for m in runtime.engine.models}))
    progress = Progress()
    cons = make_consumer(settings, replay_group(rid))

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


class GroupActiveError(ValueError):
    """The group has members (or is rebalancing): its offsets belong to them."""


# Resetting is allowed only in these states, as kafka-consumer-groups --reset-offsets allows
# ("Assignments can only be reset if the group is inactive"). Anything else refuses:
# STABLE, a rebalance, and UNKNOWN (a state this client cannot name; the embedded tansu broker
# reports "Unknown" and "Assigning" while a classic group rebalances).
INACTIVE_STATES = frozenset({"EMPTY", "DEAD"})
DESCRIBE_TIMEOUT_S = 15.0


def _state_name(state) -> str:
    return getattr(state, "name", None) or str(state).upper()


def group_is_active(description) -> bool:
    """Active unless the group is EMPTY or DEAD with no members listed. `description` is a
    confluent_kafka ConsumerGroupDescription, or None for a group the broker does not know.

    The state decides even when no members are listed: the embedded tansu broker answers
    librdkafka's ConsumerGroupDescribe (the KIP-848 API, which librdkafka >= 2.10 asks first)
    for classic groups with an empty member list, so only its state tells a live group."""
    if description is None:
        return False
    return bool(description.members) or _state_name(description.state) not in INACTIVE_STATES


def _describe_group(settings: Settings, group: str, timeout: float = DESCRIBE_TIMEOUT_S):
    """The group's description, or None where the broker has no such group. The AdminClient
    stays referenced until the answer is in: a dropped client never completes its futures
    (which looked like a broker that stopped answering)."""
    from confluent_kafka import KafkaError, KafkaException

    from .kafka import admin

    client = admin(settings)
    future = client.describe_consumer_groups([group], request_timeout=timeout)[group]
    try:
        return future.result(timeout=timeout + 5)
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND:
            return None
        raise ValueError(f"could not describe group {group!r}: {exc.args[0].str()}: refusing") from exc
    except TimeoutError:
        raise ValueError(f"the broker did not describe group {group!r} within {timeout + 5:.0f}s: "
                         "refusing") from None


def refuse_if_active(settings: Settings, group: str) -> None:
    description = _describe_group(settings, group)
    if group_is_active(description):
        members = len(description.members)
        listed = f", {members} member(s) listed" if members else ""
        raise GroupActiveError(
            f"group {group!r} is active (state {_state_name(description.state)}{listed}): "
            "stop its workers first (as kafka-consumer-groups --reset-offsets requires)")


def committed_offsets(settings: Settings, group: str, partitions: list[TopicPartition],
                      timeout: float = DESCRIBE_TIMEOUT_S) -> dict[tuple[str, int], int]:
    """The group's committed offset per (topic, partition); negative where it has none."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException

    from .kafka import admin

    client = admin(settings)
    wanted = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
    future = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, wanted)],
                                                request_timeout=timeout)[group]
    try:
        result = future.result(timeout=timeout + 5)
    except KafkaException as exc:
        raise ValueError(f"could not read group {group!r}'s offsets: {exc.args[0].str()}") from None
    except TimeoutError:
        raise ValueError(f"the broker did not list group {group!r}'s offsets within "
                         f"{timeout + 5:.0f}s") from None
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}


def offsets_at(settings: Settings, group: str, topics: list[str], when_ms: int) -> list[TopicPartition]:
    """For each partition, the offset of the first record at/after `when_ms` (the end where
    there is none). The broker's ListOffsets-by-time answer is only where reading starts (it
    may be low): each partition is read until its first record at/after the time, all
    partitions of a topic together, as a throwaway group. `group` is only named in errors."""
    new: list[TopicPartition] = []
    cons = make_consumer(settings, f"streams-offsets-{uuid.uuid4().hex[:8]}")
    try:
        for topic in topics:
            try:
                ranges = plan(settings, topic, when_ms, None, None)
            except ValueError as exc:
                raise ValueError(f"cannot reset group {group!r}: {exc}") from None
            # read_messages stops a partition at its first record at/after when_ms (not yielded)
            # or at its end: either way the offset after the last record yielded.
            found = {r.partition: r.start for r in ranges}
            for batch in read_messages(cons, topic, ranges, when_ms, batch_size=500):
                for msg in batch:
                    found[msg.partition()] = msg.offset() + 1
            new.extend(TopicPartition(topic, p, o) for p, o in sorted(found.items()))
    finally:
        cons.close()
    return new


# What the group coordinator answers an admin offset commit while the group has members
# (real Kafka and tansu alike): the broker's own guard against a member that joined after
# refuse_if_active looked.
_MEMBER_ERRORS = {"UNKNOWN_MEMBER_ID", "ILLEGAL_GENERATION", "REBALANCE_IN_PROGRESS"}


def reset_offsets(settings: Settings, group: str, offsets: list[TopicPartition],
                  timeout: float = DESCRIBE_TIMEOUT_S) -> None:
    """Commit `offsets` for `group` (call refuse_if_active first; the command does, once).
    Raises GroupActiveError where the broker refuses because the group has members, and
    ValueError for any other partition the broker did not take."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException

    from .kafka import admin

    client = admin(settings)
    future = client.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, offsets)],
                                                 request_timeout=timeout)[group]
    try:
        result = future.result(timeout=timeout + 5)
    except KafkaException as exc:
        err = exc.args[0]
        if err.name() in _MEMBER_ERRORS:
            raise GroupActiveError(f"the broker refused: group {group!r} has active members "
                                   f"({err.name()}): stop its workers first") from None
        raise ValueError(f"resetting group {group!r} failed: {err.str()}") from None
    except TimeoutError:
        raise ValueError(f"the broker did not answer the reset of group {group!r} within "
                         f"{timeout + 5:.0f}s: offsets may or may not have moved") from None
    failed = [tp for tp in result.topic_partitions if tp.error is not None]
    if any(tp.error.name() in _MEMBER_ERRORS for tp in failed):
        raise GroupActiveError(f"the broker refused: group {group!r} has active members "
                               f"({failed[0].error.name()}): stop its workers first")
    if failed:
        detail = ", ".join(f"{tp.topic}[{tp.partition}]: {tp.error.str()}" for tp in failed)
        raise ValueError(f"resetting group {group!r} failed for {detail}")
