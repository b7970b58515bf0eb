"""The Faust agent source (STREAMS_SOURCE=faust): `@app.agent` over the input topics.

The agent takes micro-batches with `take_batches` (Faust's `noack_take` with the librdkafka
source's window rule), turns the events into `InRecord`s and hands them to the same
`BatchProcessor` as the librdkafka loop, in a thread of its own (the event loop keeps
heartbeating and serving health). Only after the broker acknowledged a batch's outputs and dead
letters are its events acked, one by one in offset order; Faust then commits, per partition,
what `faust_patches.install_gap_aware_commit` finds: acked offsets and the gaps between them.

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
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..kafka import OMITTED_HEADERS
from ..records import InRecord
from ..runtime import Runtime
from ..settings import Settings
from .base import EXIT_UNFINISHED_BATCH, BatchProcessor, BatchWindow, ConsumerState, exit_for, exit_now
from .faust_patches import OFFSET_GAPS, Undecodable, brokers_up

log = logging.getLogger("streams.source.faust")

BAD_HEADERS = [(OMITTED_HEADERS, b"a header name is not valid UTF-8; read the headers at the "
                                 b"source coordinates")]


async def take_batches(stream, window: BatchWindow):
    """Faust's `Stream.noack_take` (faust/streams.py line 683), with the librdkafka source's
    batch rule (`BatchConsumer.take`): events that queued while the previous batch was being
    processed go at once, without a window; otherwise the window opens with the first event to
    arrive and closes after `max_wait_s` or at `max_batch` events. `noack_take` waits a whole
    `within` after every batch, and events queued meanwhile wait through it: at half the
    models' capacity its batches grew to rate x (batch time + window), p50 latency 1.8 s
    against the loop's 0.6 s (`streams bench`, latency). Like `noack_take` it never acks (the
    agent acks after delivery) and yields Faust's events, in the order they were delivered.
    The size is read before each batch (`BatchWindow.size()`)."""
    max_wait_s = window.max_wait_s
    max_batch = window.size()  # this batch's: `add` reads it as it changes
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
            max_batch = window.size()
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
        self.state.on_assigned([(tp.topic, tp.partition) for tp in tps if tp.topic in inputs])

    def revoked(self, tps) -> None:
        OFFSET_GAPS.forget(tps)
        self.state.on_revoked(len(tps))

    # -- the agent body --------------------------------------------------------------------
    async def consume(self, app, stream, topic: str | None = None) -> None:
        """The agent: never lets an exception out (see the module's docstring)."""
        self._running += 1
        try:
            await self.ready.wait()
            settings = self.settings
            runtime = self.runtime
            window = BatchWindow(settings.max_batch, settings.max_wait_s,
                                 lambda: runtime.max_events_for(topic) if topic else None)
            async for events in take_batches(stream, window):
                await self._batch(app, stream, events)
        except asyncio.CancelledError:
            self.stopping.set()  # the batch thread gives up its retries; nothing more is acked
            raise
        except BaseException as exc:  # noqa: BLE001 - the batch in progress was not acked
            exit_for(exc, "the agent")
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
            exit_now(EXIT_UNFINISHED_BATCH, f"batch in flight did not finish within {grace_s:.0f}s; "
                                            "exiting without committing it")

        timer = threading.Timer(grace_s, expire)
        timer.daemon = True
        timer.start()
        return timer
