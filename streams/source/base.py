"""What every source shares, below "take": the consumer state health reads, the batch
processor (enrich, deliver, then commit), the exit policy, and the `Source` protocol.

A source takes micro-batches from Kafka (`librdkafka.py`: a librdkafka consumer in a thread;
`faust.py`: a Faust agent) and hands each to one `BatchProcessor`; it commits only what the
processor says was delivered, in offset order. Nothing here knows Faust or librdkafka."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, NoReturn, Protocol

from ..errors import FatalError, RetriableError
from ..pipeline import enrich_records
from ..records import InRecord
from ..runtime import Runtime, deliver
from ..settings import TopicRoute

log = logging.getLogger("streams.source")

EXIT_UNFINISHED_BATCH = 70  # exit status when a batch could not finish: it was not committed
EXIT_FATAL = 78  # a fatal error (EX_CONFIG): what to fix is in the last log line


def exit_now(status: int, message: str | None = None, *, stderr: bool = False) -> NoReturn:
    """The exit policy, one place: say why (critical; on stderr too for a start-up failure, as
    `error: ...`), flush the logs, and leave at once, without Python's shutdown (no atexit
    handler, no Faust or librdkafka close that could commit or hang): what was not acked or
    committed is re-delivered."""
    if message:
        log.critical(message)
        if stderr:
            print(f"error: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(status)


def exit_for(exc: BaseException, where: str) -> NoReturn:
    """What a source does with an error that escaped its batch: a FatalError exits 78 with
    what to fix, anything else 70; neither commits the batch in progress."""
    if isinstance(exc, FatalError):
        exit_now(EXIT_FATAL, f"fatal: {exc}. Exiting without committing the batch in progress.")
    log.critical("unexpected error in %s; exiting without committing the batch", where, exc_info=exc)
    exit_now(EXIT_UNFINISHED_BATCH)


@dataclass
class ConsumerState:
    """What health checks and metrics read; written by librdkafka's callbacks."""

    joined: bool = False  # has been given an assignment since the last revoke
    assigned: list[tuple[str, int]] = field(default_factory=list)
    brokers_up: int | None = None  # from the last statistics report; None before the first
    last_poll: float = field(default_factory=time.monotonic)
    lag: dict[tuple[str, int], int] = field(default_factory=dict)  # consumer lag per partition
    # Per partition: the next offset to process and when it last moved (the stall detector).
    progress: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    # Per partition: since when records taken from it wait to be committed.
    pending: dict[tuple[str, int], float] = field(default_factory=dict)
    assigned_at: float = field(default_factory=time.monotonic)
    # Why the worker is not processing right now (a dependency it waits for), or None.
    degraded: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_assigned(self, partitions: list[tuple[str, int]]) -> None:
        """The group gave this worker these partitions (both sources' rebalance callbacks)."""
        now = time.monotonic()
        with self.lock:
            self.joined = True
            self.assigned = sorted(partitions)
            self.assigned_at = now
            self.progress.clear()
            self.pending.clear()
        log.info("assigned %d partitions: %s", len(partitions),
                 ", ".join(f"{t}[{p}]" for t, p in sorted(partitions)) or "none")

    def on_revoked(self, count: int) -> None:
        """The group took this worker's partitions away (a rebalance, or the member was lost)."""
        with self.lock:
            self.joined = False
            self.assigned = []
            self.pending.clear()
        log.info("revoked %d partitions", count)

    def taken(self, records: list[InRecord]) -> None:
        """The loop took these records; they are pending until committed."""
        now = time.monotonic()
        with self.lock:
            for rec in records:
                self.pending.setdefault((rec.topic, rec.partition), now)

    def advance(self, records: list[InRecord]) -> None:
        """The loop finished (committed) these records."""
        now = time.monotonic()
        with self.lock:
            for rec in records:
                tp = (rec.topic, rec.partition)
                self.progress[tp] = (rec.offset + 1, now)
                self.pending.pop(tp, None)

    def stalled(self, after_s: float) -> list[str]:
        """Partitions that have not moved for `after_s` seconds while they have work: records
        taken and not yet committed, or lag (from librdkafka's statistics, which only arrive
        while the loop polls)."""
        now = time.monotonic()
        with self.lock:
            lag, assigned = dict(self.lag), list(self.assigned)
            progress, pending = dict(self.progress), dict(self.pending)
        out = []
        for tp in assigned:
            _, moved = progress.get(tp, (None, self.assigned_at))
            if tp in pending and now - pending[tp] > after_s:
                out.append(f"{tp[0]}[{tp[1]}]")
            elif lag.get(tp, 0) > 0 and now - moved > after_s:
                out.append(f"{tp[0]}[{tp[1]}]")
        return out


@dataclass
class BatchWindow:
    """The batch rule of every source: records that queued while the previous batch was out
    go at once, without a window (up to `size()`); otherwise the window opens with the first
    record to arrive and closes after `max_wait_s` or at `size()` records. `size()` is
    `max_batch`, or less where the runtime says a topic's batch must be smaller (an LLM
    topic's is sized by its measured rate: `Runtime.max_events_for`), read before each batch."""

    max_batch: int
    max_wait_s: float
    limit: Callable[[], int | None] = lambda: None

    def size(self) -> int:
        return max(1, min(self.limit() or self.max_batch, self.max_batch))


class Source(Protocol):
    """What the host (streams.app), health and the CLI need of a source."""

    state: ConsumerState
    runtime: Runtime | None

    @property
    def batches(self) -> int: ...

    def alive(self) -> bool: ...


class BatchProcessor:
    """Everything below "take", shared by both sources: enrich a batch, sending its outputs
    and dead letters group by group as they are ready, wait until the broker acknowledged
    every one (acks=all), then `commit(records)`, retried while a dependency is down. The
    commit covers the whole batch and comes only after its last acknowledgement, so no
    committed offset ever passes an output that was not acknowledged.
    `commit` is the source's: librdkafka commits synchronously; the Faust agent acks its
    events itself once this returns (so it passes a no-op)."""

    def __init__(self, runtime: Runtime, state: ConsumerState,
                 commit: Callable[[list[InRecord]], bool], stopping: threading.Event, *,
                 route_for: Callable[[str], TopicRoute] | None = None,
                 extra_headers: Callable[[InRecord], list[tuple[str, bytes]]] | None = None,
                 deliver_timeout: float | None = None):
        """`route_for` and `extra_headers`: a replay's own output topic and provenance headers
        (default: the configured route, no extra headers). `deliver_timeout`: an operator
        command gives up on a broker that does not acknowledge in time (TimeoutError) rather
        than wait it out as a worker does."""
        self.runtime = runtime
        self.state = state
        self.commit = commit
        self.stopping = stopping
        self.route_for = route_for or runtime.settings.route
        self.extra_headers = extra_headers
        self.deliver_timeout = deliver_timeout
        self.batches = 0
        self.enriched = self.dead = 0  # outcomes of the batches processed so far

    # -- one batch ---------------------------------------------------------------------------
    def process(self, records: list[InRecord]) -> None:
        received_ns = time.time_ns()
        telemetry = self.runtime.telemetry
        by_topic: dict[str, list[InRecord]] = defaultdict(list)
        for rec in records:
            by_topic[rec.topic].append(rec)
        for topic, recs in by_topic.items():
            telemetry.add_in_flight(len(recs), topic)
            telemetry.add_queued(len(recs), topic)  # every topic's wait for the engine, from now
        out, results = [], []
        handed = 0  # topics given to enrich_records, which takes them off the queue depth
        # Each group of outputs leaves as soon as its forward passes are done (`send`), while
        # the next group runs; the commit below still waits for every acknowledgement.
        send = self.runtime.producer.send
        try:
            for topic, recs in by_topic.items():
                handed += 1
                result = enrich_records(self.runtime, self.route_for(topic), recs, self.extra_headers,
                                        received_ns=received_ns, defer_trace_end=True, emit=send,
                                        queued=True)
                results.append(result)
                out.extend(result.out)
                log.info("batch %s: %d enriched, %d dead-lettered, %d tombstones, inference %.0f ms",
                         topic, result.enriched, result.dead, result.tombstones, result.inference_ms)
        except BaseException as exc:  # a dependency failed: the batch will be retried whole
            for result in results:
                result.end_trace(exc)
            for k, (topic, recs) in enumerate(by_topic.items()):
                telemetry.add_in_flight(-len(recs), topic)
                if k >= handed:
                    telemetry.add_queued(-len(recs), topic)
            raise
        # The broker's acknowledgements for every output and dead letter, then the commit.
        sent = time.perf_counter()
        try:
            deliver(self.runtime, out, self.deliver_timeout, sent=True)
        except BaseException as exc:
            for result in results:
                result.end_trace(exc)
            raise
        produce_s = time.perf_counter() - sent
        for result in results:
            result.end_trace()  # the send spans end at the acknowledgement
            self.enriched += result.enriched
            self.dead += result.dead
        if self.commit(records):
            self.state.advance(records)
        for topic, recs in by_topic.items():
            telemetry.record_produce(topic, produce_s)
            telemetry.add_in_flight(-len(recs), topic)
        self.batches += 1

    def process_until_done(self, records: list[InRecord]) -> bool:
        """`process`, retried with backoff while a dependency is down (nothing is dead-lettered
        and nothing committed meanwhile; /readyz says why). A broken engine is reloaded once;
        if it still fails, that is fatal. False when the batch was given up because the worker
        is stopping: it was not committed and will be re-delivered."""
        state, telemetry = self.state, self.runtime.telemetry
        attempt, reloaded = 0, False
        while True:
            try:
                self.process(records)
            except RetriableError as exc:
                if exc.dependency == "accelerator":
                    if reloaded:
                        raise FatalError(f"the models fail on every input after a reload ({exc}): "
                                         "check the device and the model") from exc
                    reloaded = True
                    log.error("%s; reloading the models", exc)
                    self.runtime.reload_engine()
                attempt += 1
                backoff = min(self.runtime.settings.retry_max_backoff_s, 0.5 * 2 ** attempt)
                state.degraded = str(exc)
                telemetry.record_retry(exc.dependency)
                log.warning("%s: retrying the batch of %d records in %.1fs (attempt %d); nothing "
                            "committed meanwhile", exc, len(records), backoff, attempt)
                if self.stopping.wait(backoff):
                    return False
                continue
            if state.degraded is not None:
                state.degraded = None
                telemetry.record_retry(None)
                log.info("recovered after %d retries", attempt)
            return True
