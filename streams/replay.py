"""Re-enrich a time range of an input topic: `streams replay`.

A range is bounded by offsets and by the records' own timestamps. Each partition is read from
the offset ListOffsets gives for --from (a lower bound) to its end offset when the replay
started; every record in between is read, and those stamped outside [--from, --to) are
skipped and counted. A partition never ends at its first out-of-range timestamp: one
out-of-order timestamp must not hide the in-range records after it. The end offset is the
listed high watermark, raised to where a fetch reports the end of the partition (the embedded
tansu broker lists the high watermark low: its last batch's first offset + 1), and a partition
ends at it even when its last records are control records (transaction markers), which never
reach the application.

The replay reads with its own consumer group (`streams-replay-<replay id>`, never the live
worker's) and commits after every acknowledged batch, so an interrupted run resumes where it
stopped when started again with the same arguments (same replay id)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, TopicPartition

from .kafka import consumer as make_consumer
from .kafka import UndecodableRecords, is_undecodable, to_record
from .settings import Settings

if TYPE_CHECKING:  # the pipeline imports torch (~4 s): `offsets reset` never needs it
    from .runtime import Runtime
    from .records import InRecord

log = logging.getLogger(__name__)

REPLAY_HEADER = "streams.replay.id"
DELIVERY_TIMEOUT_S = 120.0  # an operator command gives up (exit non-zero) rather than wait forever
# A partition whose reader reports its end below the range's end offset (read_committed stops
# at an open transaction) and gets nothing more for this long is ended there, with a warning.
IDLE_END_S = 10.0
PROBE_S = 5.0  # how long plan() reads to find where each partition really ends
# Readers report the end of a partition (how a trailing control record is seen) and never fall
# back to auto.offset.reset: an offset out of range is an error, not "replay from the start".
READER_CONF = {"enable.partition.eof": True, "auto.offset.reset": "error"}


@dataclass
class PartitionRange:
    partition: int
    start: int  # first offset to read (may be low: timestamps filter)
    end: int  # end offset (exclusive): the partition's end when the replay started
    note: str | None = None  # what the plan changed (a clamped --from-offset), for the operator


@dataclass
class Progress:
    read: int = 0
    enriched: int = 0
    dead: int = 0
    skipped: int = 0  # read, but stamped outside the time range


def in_range(ts: int | None, start_ms: int, end_ms: int) -> bool:
    """Inside [start_ms, end_ms) by the record's own timestamp; a record without one (None or
    negative) is bounded by offsets alone."""
    return ts is None or ts < 0 or start_ms <= ts < end_ms


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
    """Offsets to read per partition. --from-offset is checked against both ends: before the
    beginning it is clamped to the beginning (the range's note says so), past the end it is
    refused (ValueError): a fetch out of range would fall back to auto.offset.reset."""
    probe = make_consumer(settings, f"streams-replay-probe-{uuid.uuid4().hex[:8]}", **READER_CONF)
    try:
        meta = probe.list_topics(topic, timeout=15).topics.get(topic)
        if meta is None or meta.error is not None:
            raise ValueError(f"topic {topic!r} does not exist")
        chosen = sorted(meta.partitions) if not partitions else partitions
        missing = set(chosen) - set(meta.partitions)
        if missing:
            raise ValueError(f"topic {topic!r} has no partition(s) {sorted(missing)}")
        listed = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=15) for p in chosen}
        ends = _log_ends(probe, topic, listed)
        if from_offset is not None:
            past = [p for p in chosen if from_offset > ends[p]]
            if past:
                where = ", ".join(f"partition {p} ends at offset {ends[p]}" for p in past)
                raise ValueError(f"--from-offset {from_offset} is past the end: {where}; refusing "
                                 "(a fetch out of range would restart from auto.offset.reset)")
        else:
            hints = probe.offsets_for_times([TopicPartition(topic, p, start_ms) for p in chosen], timeout=15)
        ranges = []
        for i, p in enumerate(chosen):
            low, end = listed[p][0], ends[p]
            note = None
            if from_offset is not None:
                start = max(low, from_offset)
                if from_offset < low:
                    note = (f"--from-offset {from_offset} is before the beginning of partition {p} "
                            f"(offset {low}): clamped to {low}")
            else:
                hint = hints[i].offset
                # -1: no record at/after the time (real Kafka) -> nothing to read; anything else
                # is a lower bound (tansu answers 0 for its last batch) that timestamps refine.
                start = end if hint < 0 else max(low, min(hint, end))
            ranges.append(PartitionRange(p, start, end, note))
        return ranges
    finally:
        probe.close()


def _log_ends(probe: Consumer, topic: str, listed: dict[int, tuple[int, int]]) -> dict[int, int]:
    """Each partition's end offset: the listed high watermark, raised to where a fetch from
    just below it reports the end of the partition. On real Kafka the two agree (unless records
    arrive meanwhile); tansu lists its last batch's first offset + 1, which would cut the rest
    of that batch out of the range. Bounded by PROBE_S: the listed value stands where no end
    was reported in time."""
    ends = {p: high for p, (_, high) in listed.items()}
    todo = {p: max(low, high - 1) for p, (low, high) in listed.items() if high > low}
    if not todo:
        return ends
    probe.assign([TopicPartition(topic, p, o) for p, o in todo.items()])
    deadline = time.monotonic() + PROBE_S
    try:
        while todo and time.monotonic() < deadline:
            for msg in probe.consume(1000, 0.5):
                p, err = msg.partition(), msg.error()
                if p not in todo:
                    continue
                if err is None:
                    ends[p] = max(ends[p], msg.offset() + 1)
                elif err.code() == KafkaError._PARTITION_EOF:
                    ends[p] = max(ends[p], msg.offset())
                    del todo[p]
    finally:
        probe.unassign()
    if todo:
        log.warning("replay plan: no end of partition reported within %.0fs for %s partition(s) %s; "
                    "using the listed high watermark", PROBE_S, topic, sorted(todo))
    return ends


def count_range(settings: Settings, topic: str, ranges: list[PartitionRange], start_ms: int,
                end_ms: int, done_below: dict[int, int] | None = None
                ) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """Per partition: records inside the time range (read, not estimated: offsets may lie), how
    many of them lie below `done_below[partition]` (what an interrupted run of this replay
    already enriched: its group's committed offsets), and records skipped as out of range.
    Reads exactly what run_replay reads, so the dry run and the replay agree."""
    counts = {r.partition: 0 for r in ranges}
    done = {r.partition: 0 for r in ranges}
    skipped = {r.partition: 0 for r in ranges}
    below = done_below or {}
    cons = make_consumer(settings, f"streams-replay-count-{uuid.uuid4().hex[:8]}", **READER_CONF)
    try:
        for batch in read_records(cons, topic, ranges, batch_size=1000, resume=False,
                                  refetches=settings.undecodable_refetches):
            for r in batch:
                p = r.partition
                if not in_range(r.timestamp_ms, start_ms, end_ms):
                    skipped[p] += 1
                    continue
                counts[p] += 1
                if r.offset < below.get(p, -1):
                    done[p] += 1
    finally:
        cons.close()
    return counts, done, skipped


def replayed_offsets(settings: Settings, topic: str, ranges: list[PartitionRange], rid: str) -> dict[int, int]:
    """Where an earlier run of this replay stopped: its group's committed offset per partition
    (none: not started)."""
    committed = committed_offsets(settings, replay_group(rid),
                                  [TopicPartition(topic, r.partition) for r in ranges])
    return {p: o for (_, p), o in committed.items() if o >= 0}


def replay_group(rid: str) -> str:
    return f"streams-replay-{rid}"


def read_records(cons: Consumer, topic: str, ranges: list[PartitionRange], *, batch_size: int,
                  resume: bool = True, stop_at_ms: int | None = None, stopped: dict[int, int] | None = None,
                  refetches: int = 3):
    """Yield batches of InRecords from each range's start (or, with `resume`, the group's committed offset
    where it is further) to its end offset: every data record in between, whatever its
    timestamp (callers filter and count). A partition ends at a record at/after its end
    offset, at a position at its end, or at an end-of-partition report at/after it (how
    trailing control records are seen). `cons` must be made with READER_CONF.

    `stop_at_ms` ends a partition instead at its first record stamped at/after that time (not
    yielded; its offset goes into `stopped`): `streams offsets reset` semantics. A record the
    client cannot decode comes out, after `refetches` fetches, as an InRecord with
    `client_error` set (`kafka.UndecodableRecords`, as the librdkafka source): replay
    dead-letters it, the counts count it, and the reader moves past it."""
    tps = [TopicPartition(topic, r.partition) for r in ranges]
    committed = {tp.partition: tp.offset for tp in cons.committed(tps, timeout=15)} if resume else {}
    end = {r.partition: r.end for r in ranges}
    position: dict[int, int] = {}
    for r in ranges:
        at = max(r.start, committed.get(r.partition, -1))
        if at < r.end:
            position[r.partition] = at
    cons.assign([TopicPartition(topic, p, o) for p, o in position.items()])
    short_since: dict[int, float] = {}  # partition -> when its reader reported an end below `end`

    def finish(p: int) -> None:
        del position[p]
        short_since.pop(p, None)
        cons.pause([TopicPartition(topic, p)])

    undecodable = UndecodableRecords(cons, refetches)
    while position:
        msgs = cons.consume(batch_size, 0.5)
        now = time.monotonic()
        batch = []
        errored: set[int] = set()  # partitions that met a bad batch in this fetch
        for msg in msgs:
            p, err = msg.partition(), msg.error()
            if p not in position or p in errored:
                continue
            if err is not None and is_undecodable(msg, err):
                errored.add(p)
                record = undecodable.record_for(msg, err)
                if record is not None:
                    short_since.pop(p, None)
                    position[p] = record.offset + 1
                    batch.append(record)
                continue
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= end[p]:
                        finish(p)
                    else:
                        short_since.setdefault(p, now)
                elif err.code() == KafkaError._AUTO_OFFSET_RESET:
                    raise ValueError(f"{topic}[{p}]: offset {position[p]} is out of range "
                                     f"(deleted by retention?): {err.str()}")
                else:
                    log.warning("replay read %s[%s]: %s", topic, p, err.str())
                continue
            short_since.pop(p, None)
            if msg.offset() >= end[p]:  # written after the replay started
                finish(p)
                continue
            ts = msg.timestamp()[1]
            if stop_at_ms is not None and ts is not None and ts >= stop_at_ms:
                if stopped is not None:
                    stopped[p] = msg.offset()
                finish(p)
                continue
            position[p] = msg.offset() + 1
            undecodable.decoded((topic, p))
            batch.append(to_record(msg))
        if batch:
            yield batch
        for p in list(position):
            if position[p] >= end[p]:
                finish(p)
            elif p in short_since and now - short_since[p] > IDLE_END_S:
                log.warning("replay read %s[%s]: the reader reports the end at offset %s, below the "
                            "range's end %s, for %.0fs (an open transaction?): ending there",
                            topic, p, position[p], end[p], IDLE_END_S)
                finish(p)


def run_replay(runtime: Runtime, settings: Settings, *, topic: str, start_ms: int, end_ms: int,
               ranges: list[PartitionRange], output: str, rid: str, limit: int | None = None,
               on_batch=None) -> Progress:
    """Enrich the range, produce (acks=all), then commit what was produced; `limit` stops
    after that many events (the next run resumes after them). Each batch goes through the
    workers' `BatchProcessor`: a registry, broker or accelerator that fails is waited out with
    the batch in hand (RETRY), exactly as in the worker; nothing is committed meanwhile."""
    from .source.base import BatchProcessor, ConsumerState

    if output in settings.routes:
        raise ValueError(f"output topic {output!r} is an input topic: refusing to replay into it")
    # A new output topic: its subject, with the schema of the route's own output topic.
    runtime.catalog.register_output(output, like=settings.route(topic).output)
    route = settings.route(topic).model_copy(update={"output": output, "candidate": None})  # no shadow
    version = ",".join(sorted({m.version for m in runtime.engine.models}))
    progress = Progress()
    cons = make_consumer(settings, replay_group(rid), **READER_CONF)

    def headers(rec: InRecord) -> list[tuple[str, bytes]]:
        return [(REPLAY_HEADER, rid.encode()),
                ("streams.replay.source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
                ("streams.replay.model.version", version.encode())]

    processor = BatchProcessor(runtime, ConsumerState(), lambda records: True, threading.Event(),
                               route_for=lambda _topic: route, extra_headers=headers,
                               deliver_timeout=DELIVERY_TIMEOUT_S)
    try:
        for batch in read_records(cons, topic, ranges, batch_size=settings.max_batch,
                                  refetches=settings.undecodable_refetches):
            if limit is not None:  # keep records up to the limit-th one in range
                inside = [i for i, r in enumerate(batch) if in_range(r.timestamp_ms, start_ms, end_ms)]
                room = limit - progress.read
                if len(inside) > room:
                    batch = batch[: inside[room]]
            wanted = [r for r in batch if in_range(r.timestamp_ms, start_ms, end_ms)]
            progress.skipped += len(batch) - len(wanted)
            if wanted:
                processor.process_until_done(wanted)
            progress.enriched, progress.dead = processor.enriched, processor.dead
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
    cons = make_consumer(settings, f"streams-offsets-{uuid.uuid4().hex[:8]}", **READER_CONF)
    try:
        for topic in topics:
            try:
                ranges = plan(settings, topic, when_ms, None, None)
            except ValueError as exc:
                raise ValueError(f"cannot reset group {group!r}: {exc}") from None
            # the first record at/after when_ms where there is one, else the partition's end
            stopped: dict[int, int] = {}
            for _ in read_records(cons, topic, ranges, batch_size=500, resume=False,
                                   stop_at_ms=when_ms, stopped=stopped):
                pass
            found = {r.partition: stopped.get(r.partition, r.end) for r in ranges}
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
