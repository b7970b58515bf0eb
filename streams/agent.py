"""The Faust agent source (STREAMS_SOURCE=faust): `@app.agent` over the input topics.

The agent takes micro-batches with `take_batches` (Faust's `noack_take` with the librdkafka
source's window rule), turns
the events into `InRecord`s and hands them to the same `BatchProcessor` as the librdkafka
loop, in a thread of its own (the event loop keeps heartbeating and serving health). Only
after the broker acknowledged a batch's outputs and dead letters are its events acked, one by
one in offset order; Faust then commits, per partition, the end of the run of consecutive
acked offsets (faust/transport/consumer.py `Consumer._new_offset`, ~1097-1151).

Faust 0.15.3's commit traps (docs/sources.md) are closed here, not in Faust:
- nothing escapes the agent body: an exception would crash the actor, and the supervisor
  would restart it with acks re-enabled, committing past the failed batch. A FatalError exits
  78, anything unexpected 70, both without acking;
- before the first batch of a partition is processed, a committed offset exists for it (the
  batch's first offset), because `_new_offset`'s guard against an unacked head is skipped while
  the committed offset is None or 0;
- acks are in offset order, only after delivery. A rebalance waits for them: Faust's
  `_on_partitions_revoked` waits until every event handed to the agent is acked
  (`Consumer.wait_empty`), so a batch in flight is delivered, acked and committed before its
  partitions move; skipping acks instead would hang that wait;
- concurrency=1: one batch in flight, so acked offsets are always a prefix of what was read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from faust.transport.drivers import aiokafka as aiokafka_driver
from mode import Service

try:  # aiokafka decompresses snappy, lz4 and zstd with cramjam; corrupt input raises this
    from cramjam import DecompressionError
except ImportError:  # the worker refuses to start without it (app._check_agent_installation)
    class DecompressionError(Exception):  # type: ignore[no-redef]
        pass
from mode.services import WaitResults

from .consume import ConsumerState
from .errors import FatalError
from .kafka import OMITTED_HEADERS
from .pipeline import Runtime
from .records import InRecord
from .settings import Settings
from .worker import EXIT_FATAL, EXIT_UNFINISHED_BATCH, BatchProcessor

log = logging.getLogger("streams.agent")

BAD_HEADERS = [(OMITTED_HEADERS, b"a header name is not valid UTF-8; read the headers at the "
                                 b"source coordinates")]


class Undecodable(tuple):
    """Stands in for the headers of a record aiokafka could not decode (a batch whose
    compression bits lie, a header name that is not UTF-8): `error` says why. A type, not a
    header name, so no producer can forge it."""

    error: str = ""


def _placeholder(tp, offset: int, error: str):
    from aiokafka.structs import ConsumerRecord

    headers = Undecodable()
    headers.error = error
    return ConsumerRecord(tp.topic, tp.partition, offset, None, 0, None, None, None, -1, -1, headers)


class OffsetGaps:
    """Offsets the fetcher passed without a record for the agent: transaction markers, batches
    of aborted transactions (read_committed), records removed by compaction. Faust commits the
    end of the run of consecutive acked offsets, so without these it stops one short of a
    partition whose last offset is a transaction marker (lag 1 forever), and stops for good
    before any gap it did not note itself (faust 0.15.3 notes one only when the previous
    offset read is non-zero), while its list of acked offsets grows by one per event.

    Written by the aiokafka consumer thread (`_unpack_records`), read by Faust's commit
    (`_new_offset`) on the event loop: a lock. A range is a fact about the log (no record
    there for this consumer), so it stays true whatever the consumer seeks to; ranges below
    the committed offset are dropped at every commit and a revoked partition's at the revoke."""

    def __init__(self) -> None:
        self._ranges: dict[tuple[str, int], list[list[int]]] = {}
        self._lock = threading.Lock()

    def skipped(self, tp: tuple[str, int], start: int, end: int) -> None:
        if end <= start:
            return
        with self._lock:
            ranges = self._ranges.setdefault(tp, [])
            if ranges and ranges[-1][1] >= start and ranges[-1][0] <= start:
                ranges[-1][1] = max(ranges[-1][1], end)
            else:
                ranges.append([start, end])
                ranges.sort()

    def advance(self, tp: tuple[str, int], offset: int) -> int:
        """`offset`, moved past every noted range it falls into."""
        with self._lock:
            for start, end in self._ranges.get(tp, ()):
                if start <= offset < end:
                    offset = end
        return offset

    def forget_below(self, tp: tuple[str, int], offset: int) -> None:
        with self._lock:
            ranges = self._ranges.get(tp)
            if ranges:
                ranges[:] = [r for r in ranges if r[1] > offset]

    def forget(self, tps) -> None:
        with self._lock:
            for tp in tps:
                self._ranges.pop((tp[0], tp[1]), None)

    def held(self, tp: tuple[str, int] | None = None) -> int:
        """Ranges noted now, for one partition or all (tests: memory stays bounded)."""
        with self._lock:
            if tp is not None:
                return len(self._ranges.get((tp[0], tp[1]), ()))
            return sum(len(r) for r in self._ranges.values())


OFFSET_GAPS = OffsetGaps()


def install_record_reader() -> None:
    """aiokafka 0.14's `PartitionRecords._unpack_records`, rewritten here for three reasons:

    - a batch it cannot decode (compression bits that lie, a header name that is not UTF-8)
      raises inside Faust's fetcher, which crashes the worker, and the restarted worker meets
      the same batch (a crash loop). Here the records from the failure point to the end of
      that batch come out as placeholders (`Undecodable` headers): the agent dead-letters them
      by their coordinates and the partition moves on. The batch header (offsets) is read
      without decompressing, so every offset gets exactly one outcome;
    - a codec aiokafka cannot decompress (lz4, zstd or snappy without cramjam) is a broken
      installation, not bad data: the worker stops at once (exit 78) and names the package;
    - every offset it passes without a record (markers, aborted batches, compacted records)
      is noted in `OFFSET_GAPS`, so the commit can pass it.
    Transactions are read as aiokafka does (read_committed: aborted batches skipped). CRC
    failures are left to aiokafka (it re-fetches)."""
    from aiokafka.consumer import fetcher

    if getattr(fetcher.PartitionRecords, "_streams_guarded", False):
        return

    def _unpack_records(self):
        records = self._records
        tp = self._tp
        key = (tp.topic, tp.partition)
        while records.has_next():
            batch = records.next_batch()
            if self._check_crcs and not batch.validate_crc():
                raise fetcher.Errors.CorruptRecordException(f"Invalid CRC - {tp}")
            start = self.next_fetch_offset
            if self._isolation_level == fetcher.READ_COMMITTED and batch.producer_id is not None:
                self._consume_aborted_up_to(batch.base_offset)
                if batch.is_control_batch and self._contains_abort_marker(batch):
                    self._aborted_producers.discard(batch.producer_id)
                if batch.is_transactional and batch.producer_id in self._aborted_producers:
                    self.next_fetch_offset = batch.next_offset
                    OFFSET_GAPS.skipped(key, start, self.next_fetch_offset)
                    continue
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                OFFSET_GAPS.skipped(key, start, self.next_fetch_offset)
                continue
            try:
                for record in batch:
                    if record.offset < self.next_fetch_offset:
                        continue
                    consumer_record = self._consumer_record(tp, record)
                    OFFSET_GAPS.skipped(key, self.next_fetch_offset, record.offset)  # compaction
                    self.next_fetch_offset = record.offset + 1
                    yield consumer_record
            except (UnicodeDecodeError, ValueError, OSError, EOFError, RuntimeError,
                    fetcher.Errors.CorruptRecordException, DecompressionError) as exc:
                if isinstance(exc, fetcher.Errors.UnsupportedCodecError) and _codec_missing(exc):
                    log.critical("%s[%d]: a batch at %d..%d is compressed with a codec this "
                                 "installation cannot decode (%s). Install cramjam (`make setup` "
                                 "does) and restart; nothing of it was committed.", tp.topic,
                                 tp.partition, batch.base_offset, batch.next_offset - 1, exc)
                    _exit(EXIT_FATAL)
                error = f"{type(exc).__name__}: {exc}"[:300]
                log.error("%s[%d]: a batch at %d..%d cannot be decoded by aiokafka (%s); "
                          "dead-lettering its records from %d by their coordinates", tp.topic,
                          tp.partition, batch.base_offset, batch.next_offset - 1, type(exc).__name__,
                          self.next_fetch_offset)
                for offset in range(max(self.next_fetch_offset, batch.base_offset), batch.next_offset):
                    self.next_fetch_offset = offset + 1
                    yield _placeholder(tp, offset, error)
            OFFSET_GAPS.skipped(key, self.next_fetch_offset, batch.next_offset)
            self.next_fetch_offset = max(self.next_fetch_offset, batch.next_offset)

    fetcher.PartitionRecords._unpack_records = _unpack_records
    fetcher.PartitionRecords._streams_guarded = True


def install_gap_aware_commit() -> None:
    """Faust 0.15.3's `Consumer._new_offset` (faust/transport/consumer.py ~1097-1151) commits
    the end of the first run of consecutive acked offsets, guarded against an unacked head
    only when the committed offset is non-zero, and its gaps come from offsets the stream saw
    jump (one off: a gap can swallow the next real record). This one walks from the committed
    offset through acked offsets and the ranges `OFFSET_GAPS` noted, and stops at the first
    offset that is neither: nothing unacked is ever passed, and after a transaction marker or
    compacted records the commit still reaches the end of the partition. What it passed is
    dropped from the acked list, so that list stays as long as the batch in flight."""
    from faust.transport import consumer as faust_consumer

    cls = faust_consumer.Consumer
    if getattr(cls, "_streams_gap_aware", False):
        return

    def _new_offset(self, tp):
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if committed is None:  # the agent commits a start offset before any ack: wait for it
            return None
        key = (tp.topic, tp.partition)
        acked.sort()
        position, done = committed, 0
        while True:
            while done < len(acked) and acked[done] < position:
                done += 1
            if done < len(acked) and acked[done] == position:
                position += 1
                done += 1
                continue
            moved = OFFSET_GAPS.advance(key, position)
            if moved == position:
                break
            position = moved
        if done:
            passed = acked[:done]
            del acked[:done]
            self._acked_index[tp].difference_update(passed)
        gaps = self._gap.get(tp)
        if gaps:
            gaps.chop(0, position)
        OFFSET_GAPS.forget_below(key, position)
        return position if position > committed else None

    cls._new_offset = _new_offset
    cls._streams_gap_aware = True


SUPPORTED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


def _codec_missing(exc: Exception) -> bool:
    """aiokafka's UnsupportedCodecError for a known codec whose library is missing (a broken
    installation), as opposed to codec bits no Kafka codec has (a lying batch: bad data)."""
    return str(exc).startswith("Libraries for")


def check_installed_versions() -> str | None:
    """The patches in this module replace private internals of these exact releases; on any
    other the worker must not start (what to do instead is in the message)."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for name, wanted in SUPPORTED.items():
        try:
            got = version(name)
        except PackageNotFoundError:
            got = "not installed"
        if got != wanted:
            wrong.append(f"{name} {got} (needs {wanted})")
    if wrong:
        return ("the worker patches private internals of faust-streaming 0.15.3 and aiokafka "
                "0.14.0 (streams/agent.py, the web server in streams/app.py), and this "
                "installation has " + ", ".join(wrong) + ": install the versions pyproject.toml "
                "pins (`make setup`)")
    return None


def missing_codecs() -> list[str]:
    """Kafka codecs aiokafka cannot decompress in this installation (it needs cramjam for
    snappy, lz4 and zstd)."""
    from aiokafka import codec

    return [name for name, has in (("snappy", codec.has_snappy), ("lz4", codec.has_lz4),
                                   ("zstd", codec.has_zstd), ("gzip", codec.has_gzip)) if not has()]


def install_leave_group_on_generation_zero() -> None:
    """aiokafka 0.14 sends LeaveGroup on close only for a generation above 0
    (`GroupCoordinator._maybe_leave_group`), taking 0 for "never joined"; "never joined" is
    -1, and a broker may hand out generation 0 (tansu does). A stopped agent then stays in its
    group until the session times out, so `streams offsets reset` right after stopping it is
    refused. This leaves for any joined generation (>= 0 with a member id)."""
    from aiokafka.consumer import group_coordinator as gc

    coordinator = gc.GroupCoordinator
    if getattr(coordinator, "_streams_leaves_gen0", False):
        return
    original = coordinator._maybe_leave_group

    async def _maybe_leave_group(self):
        if (self.generation == 0 and self._group_instance_id is None
                and self.member_id != gc.JoinGroupRequest.UNKNOWN_MEMBER_ID):
            try:  # the original's minimal-effort request, for generation 0
                await self._send_req(gc.LeaveGroupRequest(self.group_id, self.member_id))
            except gc.Errors.KafkaError as err:
                log.warning("LeaveGroup request failed: %s", err)
            self.reset_generation()
            return
        await original(self)

    coordinator._maybe_leave_group = _maybe_leave_group
    coordinator._streams_leaves_gen0 = True


class _Resume:
    """Drives a coroutine that `EagerConsumer.wait_first` already started, from the future it
    waits on, so a task can finish it (what `await` would have done inline)."""

    __slots__ = ("blocker", "coro")

    def __init__(self, coro, blocker):
        self.coro, self.blocker = coro, blocker

    def __await__(self):
        coro, blocker = self.coro, self.blocker
        while True:
            try:
                sent = yield blocker
            except BaseException as exc:  # noqa: BLE001 - cancelled: handed to the callback
                try:
                    blocker = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    blocker = coro.send(sent)
                except StopIteration as done:
                    return done.value


class EagerWaitFirst(Service):
    """`Service.wait_first` that runs a coroutine first argument inline until it waits.

    `Consumer._drain_messages` (faust/transport/consumer.py ~1220) hands every message to the
    streams with `await self.wait_first(callback(message), self.suspend_flow.wait())`: four
    tasks and an `asyncio.wait` per event, ~30 % of the event loop's time here. The callback
    (the conductor putting the event into the stream's buffer) nearly always finishes without
    waiting; this runs it inline first and only when it does wait (a full buffer, flow control
    during a rebalance) hands the rest of it to Faust's `wait_first`, with the same outcome:
    the same winners, exceptions propagated, the others cancelled."""

    async def wait_first(self, *coros, timeout=None):
        first = coros[0] if coros else None
        if not asyncio.iscoroutine(first):
            return await super().wait_first(*coros, timeout=timeout)
        try:
            blocker = first.send(None)
        except BaseException as exc:
            for other in coros[1:]:
                if asyncio.iscoroutine(other):
                    other.close()  # never started: nothing to cancel
            if not isinstance(exc, StopIteration):
                raise
            if self._stopped.is_set() or self._crashed.is_set():
                return WaitResults([], [], True)
            return WaitResults([first], [exc.value], False)
        return await super().wait_first(_Resume(first, blocker), *coros[1:], timeout=timeout)


ISOLATION_LEVEL = "read_committed"
FETCH_MAX_WAIT_MS = 500  # librdkafka's fetch.wait.max.ms default: the other source's


class PromptConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, its aiokafka consumer asking the broker to answer a fetch
    within FETCH_MAX_WAIT_MS instead of Faust's fixed 1,500 ms
    (faust/transport/drivers/aiokafka.py `_create_worker_consumer`). On tansu the agent
    received its events in chunks every ~750 ms (it seems to hold an empty fetch until the
    wait ends; Kafka answers as soon as data arrives): at half the models' capacity, p50
    latency 1.2 s against the librdkafka source's 0.6 s (`streams bench`, latency)."""

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        # Committed data only, as the librdkafka source, replay and `streams tail` read: Faust
        # asks for read_uncommitted unless it runs its own transactions, and would enrich the
        # records of aborted transactions (a Kafka Streams exactly-once producer, an outbox).
        consumer._isolation_level = ISOLATION_LEVEL
        return consumer


class EagerConsumer(EagerWaitFirst, aiokafka_driver.Consumer):
    """Faust's aiokafka consumer with the cheaper hand-over of each message (`EagerWaitFirst`)
    and prompter fetches (`PromptConsumerThread`)."""

    def _new_consumer_thread(self):
        return PromptConsumerThread(self, loop=self.loop, beacon=self.beacon)


class EagerTransport(aiokafka_driver.Transport):
    Consumer = EagerConsumer


async def take_batches(stream, batch_size, max_wait_s: float):
    """Faust's `Stream.noack_take` (faust/streams.py line 683), with the librdkafka source's
    batch rule (`BatchConsumer.take`): events that queued while the previous batch was being
    processed go at once, without a window; otherwise the window opens with the first event to
    arrive and closes after `max_wait_s` or at `max_batch` events. `noack_take` waits a whole
    `within` after every batch, and events queued meanwhile wait through it: at half the
    models' capacity its batches grew to rate x (batch time + window), p50 latency 1.8 s
    against the loop's 0.6 s (`streams bench`, latency). Like `noack_take` it never acks (the
    agent acks after delivery) and yields Faust's events, in the order they were delivered.
    `batch_size`: a number, or a callable read before each batch (an LLM topic's batch is sized
    by the engine's measured rate, `Runtime.max_events_for`)."""
    limit = batch_size if callable(batch_size) else (lambda: batch_size)
    max_batch = max(1, limit())  # this batch's: `add` reads it as it changes
    buffer: list = []
    enough, consumed = asyncio.Event(), asyncio.Event()  # enough: the buffer holds `target`
    target = 1
    consuming: asyncio.Future | None = None  # set while a batch is out: adding waits for it
    blocked = 0  # 1 while an event waits in `add` for the batch out to be done

    def aim(n: int) -> None:
        nonlocal target
        target = n
        if len(buffer) >= n:
            enough.set()
        else:
            enough.clear()

    async def add(value):
        nonlocal consuming, blocked
        if consuming is not None:
            blocked = 1
            try:
                await consuming
            finally:
                blocked = 0
        event = stream.current_event
        if event is None:
            raise RuntimeError("the stream has no current event")
        buffer.append(event)
        if len(buffer) >= target:
            enough.set()
        if len(buffer) >= max_batch:
            consumed.clear()
            await stream.wait(consumed)  # never more than max_batch in one batch
        return value

    acks = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))
    queue = stream.channel.queue
    try:
        waiting = 0  # what queued while the previous batch was out
        while not stream.should_stop:
            max_batch = max(1, limit())
            if waiting:  # already here (within a loop turn or two): as many as waited, no window
                aim(min(waiting, max_batch))
                await stream.wait_for_stopped(enough, timeout=max_wait_s)
            else:  # nothing waited: the window opens with the first event
                aim(1)
                await stream.wait_for_stopped(enough, timeout=max_wait_s)
                if not buffer:
                    continue
                aim(max_batch)
                await stream.wait_for_stopped(enough, timeout=max_wait_s)
            if not buffer:
                waiting = 0
                continue
            consuming = stream.loop.create_future()
            try:
                yield list(buffer)
            finally:
                waiting = queue.qsize() + blocked
                buffer.clear()
                enough.clear()
                if not consuming.done():
                    consuming.set_result(None)
                consuming = None
                consumed.set()
    finally:
        stream.enable_acks = acks
        stream._processors.remove(add)


def _headers(raw) -> list[tuple[str, bytes]]:
    """aiokafka hands headers as (str, bytes) pairs; anything else (a name it kept as bytes)
    is replaced like `streams.kafka.read_headers` does for librdkafka."""
    if not raw:
        return []
    out = list(raw)
    for name, _ in out:
        if not isinstance(name, str):
            return list(BAD_HEADERS)
    return out


def to_record(message) -> InRecord:
    ts = message.timestamp
    if isinstance(message.headers, Undecodable):
        return InRecord(message.topic, message.partition, message.offset, None, None, None, [],
                        client_error=message.headers.error)
    return InRecord(message.topic, message.partition, message.offset,
                    None if ts is None else round(ts * 1000), message.key, message.value,
                    _headers(message.headers))


def brokers_up(consumer) -> int | None:
    """Brokers Faust's aiokafka consumer has an open connection to (what /readyz reports as
    `broker_reachable`; librdkafka's statistics give the other source the same count); None
    before the consumer started. A broker that went away closes its connections at once, and
    aiokafka's reconnects fail while it is down."""
    client = getattr(getattr(getattr(consumer, "_thread", None), "_consumer", None), "_client", None)
    if client is None:
        return None
    conns = list(client._conns.items())  # the consumer thread's dict: a copy, not an iterator
    return sum(1 for (node, _group), conn in conns if node != "bootstrap" and conn.connected())


def _exit(status: int) -> None:
    logging.shutdown()
    os._exit(status)


class AgentSource:
    """What the agent and the health pages share: the consumer state (health, stall detector,
    lag), the runtime once loaded, and the batch processor."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = ConsumerState()
        self.runtime: Runtime | None = None
        self.processor: BatchProcessor | None = None
        self.stopping = threading.Event()
        self.ready = asyncio.Event()
        self.busy_since: float | None = None
        self._running = 0  # agents running (one per input topic)
        # One thread for the batches, so a batch never waits for a free thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-batch")

    @property
    def batches(self) -> int:
        return self.processor.batches if self.processor else 0

    def attach(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.processor = BatchProcessor(runtime, self.state, lambda records: True, self.stopping)
        self.ready.set()

    def alive(self) -> bool:
        return self._running == len(self.settings.topics)

    # -- assignment (Faust's signals) ------------------------------------------------------
    def assigned(self, tps) -> None:
        inputs = set(self.settings.routes)
        mine = sorted((tp.topic, tp.partition) for tp in tps if tp.topic in inputs)
        with self.state.lock:
            self.state.joined = True
            self.state.assigned = mine
            self.state.assigned_at = time.monotonic()
            self.state.progress.clear()
            self.state.pending.clear()
        log.info("assigned %d partitions: %s", len(mine),
                 ", ".join(f"{t}[{p}]" for t, p in mine) or "none")

    def revoked(self, tps) -> None:
        OFFSET_GAPS.forget(tps)
        with self.state.lock:
            self.state.joined = False
            self.state.assigned = []
            self.state.pending.clear()
        log.info("revoked %d partitions", len(tps))

    # -- the agent body --------------------------------------------------------------------
    async def consume(self, app, stream, topic: str | None = None) -> None:
        """The agent: never lets an exception out (see the module's docstring)."""
        self._running += 1
        try:
            await self.ready.wait()
            settings = self.settings
            runtime = self.runtime

            def batch_size() -> int:
                return (runtime.max_events_for(topic) if topic else None) or settings.max_batch

            async for events in take_batches(stream, batch_size, settings.max_wait_s):
                await self._batch(app, stream, events)
        except asyncio.CancelledError:
            self.stopping.set()  # the batch thread gives up its retries; nothing more is acked
            raise
        except FatalError as exc:
            log.critical("fatal: %s. Exiting without committing the batch in progress.", exc)
            _exit(EXIT_FATAL)
        except BaseException:  # noqa: BLE001 - the batch in progress was not acked
            log.exception("unexpected error in the agent; exiting without committing the batch")
            _exit(EXIT_UNFINISHED_BATCH)
        finally:
            self._running -= 1

    async def _batch(self, app, stream, events) -> None:
        records = [to_record(e.message) for e in events]
        await self._ensure_committed(app, records)
        self.state.taken(records)
        self.busy_since = time.monotonic()
        self.state.last_poll = self.busy_since
        try:
            loop = asyncio.get_running_loop()
            done = await loop.run_in_executor(self._executor, self.processor.process_until_done, records)
        finally:
            self.busy_since = None
            self.state.last_poll = time.monotonic()
        if not done:  # given up because the worker stops: not acked, re-delivered
            log.warning("stopping: the batch of %d records was not finished; not acked", len(records))
            return
        for event in events:  # buffer order: offset order per partition
            await stream.ack(event)

    async def _ensure_committed(self, app, records: list[InRecord]) -> None:
        """A committed offset for every partition of the batch before any of it is acked:
        the first offset the agent was handed is where this assignment starts."""
        consumer = app.consumer
        committed = consumer._committed_offset
        first: dict = {}
        for rec in records:
            if (rec.topic, rec.partition) not in first:
                first[(rec.topic, rec.partition)] = rec.offset
        missing = {}
        for (topic, partition), offset in first.items():
            tp = consumer._new_topicpartition(topic, partition)
            if committed.get(tp) is None:
                missing[tp] = offset
        if missing:
            if not await consumer._commit(missing):  # a rebalance: the next batch tries again
                log.warning("could not commit the start offsets of %d partitions", len(missing))
                return
            committed.update(missing)
            log.info("committed start offsets %s", ", ".join(f"{tp.topic}[{tp.partition}]@{o}"
                                                              for tp, o in missing.items()))

    async def watch(self, app) -> None:
        """Every second: the event loop answers (liveness) and the lag per partition."""
        while True:
            await asyncio.sleep(1.0)
            if self.busy_since is None:
                self.state.last_poll = time.monotonic()
            consumer = app._consumer
            if consumer is None or self.runtime is None:
                continue
            up = brokers_up(consumer)
            if up is not None:
                self.state.brokers_up = up
            lag = {}
            with self.state.lock:
                assigned, progress = list(self.state.assigned), dict(self.state.progress)
            for topic, partition in assigned:
                tp = consumer._new_topicpartition(topic, partition)
                try:
                    high = consumer.highwater(tp)
                except Exception:  # noqa: BLE001 - not known yet
                    continue
                # What was processed, or the committed offset where that is further: a commit
                # that passed a transaction marker ends the lag, which the stall detector reads.
                done = max((o for o in (progress.get((topic, partition), (None,))[0],
                                        consumer._committed_offset.get(tp)) if o is not None), default=None)
                if high is not None and done is not None:
                    lag[(topic, partition)] = max(0, high - done)
            with self.state.lock:
                self.state.lag = lag
            for (topic, partition), value in lag.items():
                self.runtime.telemetry.record_lag(topic, partition, value)

    def shutdown_guard(self, grace_s: float) -> threading.Timer:
        """Exit 70 if the batch in flight has not finished within the grace period: nothing
        of it is acked, so nothing of it is committed."""
        def expire() -> None:
            log.error("batch in flight did not finish within %.0fs; exiting without committing it", grace_s)
            _exit(EXIT_UNFINISHED_BATCH)

        timer = threading.Timer(grace_s, expire)
        timer.daemon = True
        timer.start()
        return timer
