"""Produce step: a librdkafka producer (acks=all, idempotent, batched in C) whose sends the
event loop can await until the broker has acknowledged them.

The worker waits for these acknowledgements before its input offsets may be committed; a send
that fails is sent again rather than raised, because an exception inside the agent would let
Faust ack the batch."""

from __future__ import annotations

import asyncio
import logging
import threading

from confluent_kafka import KafkaError, KafkaException, Producer

log = logging.getLogger("streams.produce")


class AckingProducer:
    def __init__(self, config: dict, loop: asyncio.AbstractEventLoop):
        self._producer = Producer(config | {"acks": "all", "enable.idempotence": True,
                                            "linger.ms": 5})
        self._loop = loop
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)  # runs delivery callbacks

    def _send_once(self, topic: str, key, value, headers) -> asyncio.Future:
        fut = self._loop.create_future()

        def delivered(err: KafkaError | None, _msg) -> None:
            self._loop.call_soon_threadsafe(_settle, fut, err)

        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
                return fut
            except BufferError:  # local queue full: wait for deliveries (backpressure)
                self._producer.poll(0.05)

    async def send(self, topic: str, key, value, headers=None) -> None:
        """Returns once the broker has acknowledged the record (retrying failed deliveries)."""
        attempt = 0
        while True:
            try:
                await self._send_once(topic, key, value, headers)
                return
            except KafkaException as exc:
                attempt += 1
                log.warning("delivery to %s failed (attempt %d), retrying: %s", topic, attempt, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))

    def close(self, timeout: float = 30.0) -> None:
        self._producer.flush(timeout)
        self._stopping.set()
        self._poller.join(timeout)


def _settle(fut: asyncio.Future, err: KafkaError | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(KafkaException(err))
