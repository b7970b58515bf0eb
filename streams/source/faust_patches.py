"""Every patch of Faust's and aiokafka's private internals, in one module, for exactly the
releases in `SUPPORTED`: `check_installed_versions` runs at start-up (streams.app) and stops the
worker with what to do on any other release. Each patch says what it replaces and why.

- `install_record_reader`: aiokafka's record reader (undecodable batches as data, a missing
  codec fatal, offsets without a record noted in `OFFSET_GAPS`, read_committed);
- `install_gap_aware_commit`: Faust's commit walks acked offsets and noted gaps;
- `install_leave_group_on_generation_zero`: aiokafka leaves its group for generation 0 too;
- `EagerTransport`: Faust's consumer with a cheaper hand-over per message, prompter fetches
  and read_committed;
- `OwnPagesWeb`, `HostApp`, `AgentHostApp`: Faust's App with its web server without Faust's
  own pages, and the agent's transport; `environment_without`: Faust's environment settings
  left out;
- `brokers_up`: the brokers the agent's consumer is connected to (for /readyz)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.web.drivers.aiohttp import Web as AiohttpWeb
from mode import Service
from mode.services import WaitResults

from .base import EXIT_FATAL, exit_now

try:  # aiokafka decompresses snappy, lz4 and zstd with cramjam; corrupt input raises this
    from cramjam import DecompressionError
except ImportError:  # the worker refuses to start without it (app._check_agent_installation)
    class DecompressionError(Exception):  # type: ignore[no-redef]
        pass

log = logging.getLogger("streams.source.faust")

def install_patches() -> None:
    """The agent's patches of aiokafka and Faust (idempotent)."""
    install_record_reader()
    install_gap_aware_commit()
    install_leave_group_on_generation_zero()


SUPPORTED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

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
                    if record.offset > self.next_fetch_offset:  # compaction left a hole
                        OFFSET_GAPS.skipped(key, self.next_fetch_offset, record.offset)
                    self.next_fetch_offset = record.offset + 1
                    yield consumer_record
            except (UnicodeDecodeError, ValueError, OSError, EOFError, RuntimeError,
                    fetcher.Errors.CorruptRecordException, DecompressionError) as exc:
                if isinstance(exc, fetcher.Errors.UnsupportedCodecError) and _codec_missing(exc):
                    exit_now(EXIT_FATAL, f"{tp.topic}[{tp.partition}]: a batch at {batch.base_offset}.."
                                         f"{batch.next_offset - 1} is compressed with a codec this "
                                         f"installation cannot decode ({exc}). Install cramjam (`make "
                                         "setup` does) and restart; nothing of it was committed.")
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

def _codec_missing(exc: Exception) -> bool:
    """aiokafka's UnsupportedCodecError for a known codec whose library is missing (a broken
    installation), as opposed to codec bits no Kafka codec has (a lying batch: bad data)."""
    return str(exc).startswith("Libraries for")

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

class PromptConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, its aiokafka consumer asking the broker to answer a fetch
    within `STREAMS_FETCH_MAX_WAIT_MS` (as the other source's librdkafka consumer) instead of
    Faust's fixed 1,500 ms (faust/transport/drivers/aiokafka.py `_create_worker_consumer`). On
    tansu the agent received its events in chunks every ~750 ms (it seems to hold an empty
    fetch until the wait ends; Kafka answers as soon as data arrives): at half the models'
    capacity, p50 latency 1.2 s against the librdkafka source's 0.6 s (`streams bench`, latency)."""

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts its fetcher.
        consumer._fetch_max_wait_ms = self.app.conf.streams_settings.fetch_max_wait_ms
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


class OwnPagesWeb(AiohttpWeb):
    """Faust's aiohttp web server without any of Faust's built-in pages: no /router (the
    cluster's topology), /table (table data), /graph, /performance, nor the statistics or the
    index at /. It serves what `app.page` adds: /livez, /readyz and /metrics (streams.health),
    and the pages of the modules in STREAMS_APP_MODULES."""

    default_blueprints = production_blueprints = debug_blueprints = optional_blueprints = ()


class HostApp(faust.App):
    """Faust's App serving only our pages (`App._new_web` -> `OwnPagesWeb`)."""

    def _new_web(self) -> OwnPagesWeb:
        return OwnPagesWeb(self)


class AgentHostApp(HostApp):
    """The agent's App: its consumer is `EagerConsumer` (`App._new_transport`)."""

    def _new_transport(self):
        return EagerTransport(self.conf.broker_consumer, self)


def environment_without(settings: tuple[str, ...]) -> dict[str, str]:
    """The process environment without the variables Faust would read these settings from
    (`faust.Settings.SETTINGS[name].env_name`, also behind an APP_ENV_PREFIX)."""
    names = {faust.Settings.SETTINGS[name].env_name for name in settings}
    return {key: value for key, value in os.environ.items()
            if not any(key == name or key.endswith(f"_{name}") for name in names)}
