"""Produce step: a librdkafka producer (acks=all, idempotent, batched in C) and one call that
returns only when the broker has acknowledged every record of a batch.

The worker commits its input offsets after this returns, never before (at-least-once). A
record whose delivery fails is sent again rather than dropped or raised; a worker that cannot
deliver within its shutdown grace exits without committing, and the batch is re-delivered."""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Producer

from .records import OutRecord

log = logging.getLogger("streams.produce")


class AckingProducer:
    def __init__(self, config: dict):
        self._producer = Producer(config | {"acks": "all", "enable.idempotence": True,
                                            "linger.ms": 5})
        self._failed: list[tuple[OutRecord, object]] = []
        self._lock = threading.Lock()

    def _delivered(self, err, msg) -> None:
        if err is not None:
            with self._lock:
                self._failed.append((OutRecord(msg.topic(), msg.key(), msg.value() or b"",
                                               msg.headers()), err))

    def _produce(self, record: OutRecord) -> None:
        while True:
            try:
                self._producer.produce(record.topic, key=record.key, value=record.value,
                                       headers=record.headers, on_delivery=self._delivered)
                return
            except BufferError:  # local queue full: let deliveries drain (backpressure)
                self._producer.poll(0.05)

    def deliver(self, records: list[OutRecord], timeout: float | None = None) -> None:
        """Returns once the broker has acknowledged every record, re-sending failed ones with
        backoff. With a timeout, raises TimeoutError when that cannot happen in time; without
        one it keeps trying (the worker's shutdown grace bounds it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while records:
            for record in records:
                self._produce(record)
            while self._producer.flush(1.0) > 0:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"records not acknowledged within {timeout:.0f}s")
            with self._lock:
                failed, self._failed = self._failed, []
            records = [record for record, _ in failed]
            if records:
                attempt += 1
                log.warning("%d deliveries failed (attempt %d), re-sending: %s", len(records),
                            attempt, failed[0][1])
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{len(records)} records could not be delivered")
                time.sleep(min(5.0, 0.2 * 2 ** attempt))

    def send_all_blocking(self, records: list[OutRecord], timeout: float = 120.0) -> None:
        """`deliver` with a deadline, for operator commands (`streams replay`)."""
        self.deliver(records, timeout=timeout)
