"""The worker's data path, one micro-batch at a time, top to bottom:

    take (consume)  ->  enrich (decode, infer, encode)  ->  deliver (produce, acks=all)  ->  commit

It runs in its own thread, so the event loop that serves health and metrics never waits on a
forward pass. Nothing here knows Faust: `streams.app` hosts it in a Faust worker, tests and the
benchmark can drive it directly."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from typing import Callable

from .consume import BatchConsumer, ConsumerState
from .errors import FatalError, RetriableError
from .pipeline import Runtime, deliver, enrich_records
from .records import InRecord

log = logging.getLogger("streams.worker")

EXIT_UNFINISHED_BATCH = 70  # exit status when a batch could not finish: it was not committed
EXIT_FATAL = 78  # a fatal error (EX_CONFIG): what to fix is in the last log line


class BatchProcessor:
    """Everything below "take", shared by both sources: enrich a batch, sending its outputs
    and dead letters group by group as they are ready, wait until the broker acknowledged
    every one (acks=all), then `commit(records)`, retried while a dependency is down. The
    commit covers the whole batch and comes only after its last acknowledgement, so no
    committed offset ever passes an output that was not acknowledged.
    `commit` is the source's: librdkafka commits synchronously; the Faust agent acks its
    events itself once this returns (so it passes a no-op)."""

    def __init__(self, runtime: Runtime, state: ConsumerState,
                 commit: Callable[[list[InRecord]], bool], stopping: threading.Event):
        self.runtime = runtime
        self.state = state
        self.commit = commit
        self.stopping = stopping
        self.batches = 0

    # -- one batch ---------------------------------------------------------------------------
    def process(self, records: list[InRecord]) -> None:
        received_ns = time.time_ns()
        telemetry = self.runtime.telemetry
        by_topic: dict[str, list[InRecord]] = defaultdict(list)
        for rec in records:
            by_topic[rec.topic].append(rec)
        for topic, recs in by_topic.items():
            telemetry.add_in_flight(len(recs), topic)
        out, results = [], []
        # Each group of outputs leaves as soon as its forward passes are done (`send`), while
        # the next group runs; the commit below still waits for every acknowledgement.
        send = self.runtime.producer.send
        try:
            for topic, recs in by_topic.items():
                result = enrich_records(self.runtime, self.runtime.settings.route(topic), recs,
                                        received_ns=received_ns, defer_trace_end=True, emit=send)
                results.append(result)
                out.extend(result.out)
                log.info("batch %s: %d enriched, %d dead-lettered, %d tombstones, inference %.0f ms",
                         topic, result.enriched, result.dead, result.tombstones, result.inference_ms)
        except BaseException as exc:  # a dependency failed: the batch will be retried whole
            for result in results:
                result.end_trace(exc)
            for topic, recs in by_topic.items():
                telemetry.add_in_flight(-len(recs), topic)
            raise
        # The broker's acknowledgements for every output and dead letter, then the commit.
        sent = time.perf_counter()
        try:
            deliver(self.runtime, out, sent=True)
        except BaseException as exc:
            for result in results:
                result.end_trace(exc)
            raise
        produce_s = time.perf_counter() - sent
        for result in results:
            result.end_trace()  # the send spans end at the acknowledgement
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


class EnrichmentLoop:
    """The librdkafka source: `BatchConsumer.take` in a thread, each batch through the shared
    `BatchProcessor`, committed synchronously after delivery."""

    def __init__(self, runtime: Runtime, consumer: BatchConsumer | None = None):
        self.runtime = runtime
        settings = runtime.settings
        self.consumer = consumer or BatchConsumer(settings, [r.input for r in settings.topics])
        self.stopping = threading.Event()
        self.processor = BatchProcessor(runtime, self.consumer.state, self.consumer.commit, self.stopping)
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
                records = self.consumer.take(self.runtime.max_events())
                if records:
                    self.process_until_done(records)
                elif time.monotonic() - passed_at > 1.0:
                    self.consumer.commit_passed()
                    passed_at = time.monotonic()
                self._report_lag()
        except FatalError as exc:
            log.critical("fatal: %s. Exiting without committing the batch in progress.", exc)
            logging.shutdown()
            os._exit(EXIT_FATAL)
        except BaseException:  # noqa: BLE001 - the batch in progress was not committed
            log.exception("unexpected error in the worker loop; exiting without committing the batch")
            logging.shutdown()
            os._exit(EXIT_UNFINISHED_BATCH)
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
