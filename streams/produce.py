"""Produce step: a librdkafka producer (acks=all, idempotent, batched in C) and a way for the
event loop to await a whole batch of records until the broker has acknowledged every one.

The worker waits for these acknowledgements before its input offsets may be committed. A
record whose delivery fails is sent again rather than raised: an exception inside the agent
would let Faust ack the batch. One future per batch, not per record, keeps the loop free."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, Producer

log = logging.getLogger("streams.produce")


@dataclass(frozen=True, slots=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None


class _BatchDelivery:
    """Counts acknowledgements on the producer's poll thread; wakes the loop once at the end."""

    def __init__(self, loop: asyncio.AbstractEventLoop, records: list[OutRecord]):
        self.loop = loop
        self.future = loop.create_future()
        self.remaining = len(records)
        self.failed: list[tuple[OutRecord, KafkaError]] = []
        self.lock = threading.Lock()

    def callback(self, record: OutRecord):
        def delivered(err: KafkaError | None, _msg) -> None:
            with self.lock:
                if err is not None:
                    self.failed.append((record, err))
                self.remaining -= 1
                done = self.remaining == 0
            if done:
                self.loop.call_soon_threadsafe(_resolve, self.future)
        return delivered


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class AckingProducer:
    def __init__(self, config: dict):
        self._producer = Producer(config | {"acks": "all", "enable.idempotence": True,
                                            "linger.ms": 5})
        self._poller = threading.Thread(target=self._poll, name="producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while True:  # a daemon thread: it ends with the process
            self._producer.poll(0.1)  # runs delivery callbacks

    def _produce(self, record: OutRecord, on_delivery) -> None:
        while True:
            try:
                self._producer.produce(record.topic, key=record.key, value=record.value,
                                       headers=record.headers, on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: let deliveries drain (backpressure)
                self._producer.poll(0.05)

    async def send_all(self, records: list[OutRecord]) -> None:
        """Returns once the broker has acknowledged every record, re-sending failed ones."""
        attempt = 0
        while records:
            batch = _BatchDelivery(asyncio.get_running_loop(), records)
            for record in records:
                self._produce(record, batch.callback(record))
            await batch.future
            records = [record for record, _ in batch.failed]
            if records:
                attempt += 1
                log.warning("%d deliveries failed (attempt %d), re-sending: %s", len(records),
                            attempt, batch.failed[0][1])
                await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))

    def send_all_blocking(self, records: list[OutRecord], timeout: float = 120.0) -> None:
        """The same guarantee for synchronous callers (`streams replay`): every record is
        acknowledged when this returns; raises if that cannot happen within `timeout`."""
        deadline = time.monotonic() + timeout
        while records:
            failed: list[OutRecord] = []
            lock = threading.Lock()

            def on_delivery(record):
                def delivered(err, _msg):
                    if err is not None:
                        with lock:
                            failed.append(record)
                return delivered

            for record in records:
                self._produce(record, on_delivery(record))
            if self._producer.flush(max(0.0, deadline - time.monotonic())) > 0:
                raise TimeoutError(f"records not acknowledged within {timeout:.0f}s")
            records = failed
            if records and time.monotonic() > deadline:
                raise TimeoutError(f"{len(records)} records could not be delivered")
