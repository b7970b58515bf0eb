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

from .consume import BatchConsumer
from .pipeline import Runtime, enrich_records
from .records import InRecord

log = logging.getLogger("streams.worker")

EXIT_UNFINISHED_BATCH = 70  # exit status when a batch could not finish: it was not committed


class EnrichmentLoop:
    def __init__(self, runtime: Runtime, consumer: BatchConsumer | None = None):
        self.runtime = runtime
        settings = runtime.settings
        self.consumer = consumer or BatchConsumer(settings, [r.input for r in settings.topics])
        self.stopping = threading.Event()
        self.batches = 0
        self._reported_lag: dict = {}
        self._thread: threading.Thread | None = None

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
        for topic, recs in by_topic.items():
            result = enrich_records(self.runtime, self.runtime.settings.route(topic), recs,
                                    received_ns=received_ns, defer_trace_end=True)
            results.append(result)
            out.extend(result.out)
            log.info("batch %s: %d enriched, %d dead-lettered, %d tombstones, inference %.0f ms",
                     topic, result.enriched, result.dead, result.tombstones, result.inference_ms)
        # The broker's acknowledgements for every output and dead letter, then the commit.
        sent = time.perf_counter()
        try:
            self.runtime.producer.deliver(out)
        except BaseException as exc:
            for result in results:
                result.end_trace(exc)
            raise
        produce_s = time.perf_counter() - sent
        for result in results:
            result.end_trace()  # the send spans end at the acknowledgement
        self.consumer.commit(records)
        for topic, recs in by_topic.items():
            telemetry.record_produce(topic, produce_s)
            telemetry.add_in_flight(-len(recs), topic)
        self.batches += 1

    def _report_lag(self) -> None:
        """Consumer lag per partition, from librdkafka's statistics (every 5 s)."""
        lag = self.consumer.state.lag
        if lag is not self._reported_lag:
            self._reported_lag = lag
            for (topic, partition), value in lag.items():
                self.runtime.telemetry.record_lag(topic, partition, value)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Until `stop()`: a batch in progress always finishes (delivered and committed)."""
        try:
            while not self.stopping.is_set():
                records = self.consumer.take()
                if records:
                    self.process(records)
                self._report_lag()
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
