"""Produce step: a librdkafka producer (acks=all, idempotent, batched in C) and one call that
returns only when the broker has acknowledged every record of a batch, or refused it for good.

The worker commits its input offsets after this returns, never before (at-least-once). Failed
deliveries are sorted by `streams.errors.classify_delivery`:
- RETRY (broker down, timed out): the same record (headers included) is sent again with
  backoff, for as long as it takes; `retrying` says why meanwhile (/readyz reads it);
- DLQ (this record is refused: too large, invalid): returned to the caller, who dead-letters it,
  once it was refused when sent alone (the broker refuses whole batches);
- EXIT (fenced, not authorized, invalid configuration): `FatalError`.

`deliver` adds the dead letters: a refused record is dead-lettered in its place."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, Producer

from .dlq import PREFIX, dead_letter
from .errors import FatalError, classify_delivery, producer_state_lost, sanitize
from .kafka import PARTITIONER
from .records import OutRecord

log = logging.getLogger("streams.produce")

RECORD_OVERHEAD = 128  # bytes librdkafka adds to a record (lengths, varints, batch share)
HEADER_OVERHEAD = 8


def record_size(record: OutRecord) -> int:
    """An upper bound on the bytes a record takes against message.max.bytes."""
    size = RECORD_OVERHEAD + len(record.key or b"") + len(record.value or b"")
    for name, value in record.headers or ():
        size += HEADER_OVERHEAD + len(name.encode("utf-8", "surrogateescape")) + len(value or b"")
    return size


class AckingProducer:
    def __init__(self, config: dict, *, max_message_bytes: int = 1_000_000,
                 max_backoff_s: float = 30.0):
        self.max_message_bytes = max_message_bytes
        self.max_backoff_s = max_backoff_s
        self._config = config | {"acks": "all", "enable.idempotence": True, "linger.ms": 5,
                                 "message.max.bytes": max_message_bytes} | PARTITIONER
        self._producer = Producer(self._config)
        # Failed deliveries, appended by librdkafka's callbacks and drained by `deliver`. A deque,
        # not a list under a lock: after a fatal error confluent-kafka runs the delivery callbacks
        # with its exception already set, so the first C call in a callback raises; a lock
        # acquired there is never released (the next callback waited on it for ever), where
        # deque.append has done its work before the error surfaces.
        self._failed: deque[tuple[OutRecord, KafkaError]] = deque()
        self.retrying: str | None = None  # why deliveries are being retried right now

    def fits(self, record: OutRecord) -> bool:
        return record_size(record) <= self.max_message_bytes

    def _produce(self, record: OutRecord) -> None:
        def delivered(err, _msg, record=record) -> None:  # the record itself, headers and all
            if err is not None:
                self._failed.append((record, err))

        while True:
            try:
                self._producer.produce(record.topic, key=record.key, value=record.value,
                                       headers=record.headers, on_delivery=delivered)
                return
            except BufferError:  # local queue full: let deliveries drain (backpressure)
                self._producer.poll(0.05)
            except KafkaException as exc:  # refused before it left: sorted like a delivery error
                self._failed.append((record, exc.args[0]))
                return

    def send(self, records: list[OutRecord]) -> None:
        """Hand records to librdkafka now, without waiting: they leave while the caller works
        on. Their acknowledgements are awaited, and failures handled, by `deliver(..., sent=True)`."""
        for record in records:
            self._produce(record)
        self._producer.poll(0)

    def deliver(self, records: list[OutRecord], timeout: float | None = None, *,
                sent: bool = False) -> list[tuple[OutRecord, str]]:
        """Returns once the broker has acknowledged every record except those it refused for
        good, which come back with the reason. With a timeout, raises TimeoutError when that
        cannot happen in time; without one it keeps trying (the worker's shutdown grace
        bounds it). `sent`: the records already went out through `send`; they are not
        produced again unless their delivery fails.

        The broker refuses a whole partition batch, not a record: every record that shared a
        refused batch gets the error. So a record refused while others were in flight is sent
        again alone, and only a record refused on its own is returned."""
        deadline = None if timeout is None else time.monotonic() + timeout
        rejected: list[tuple[OutRecord, str]] = []
        suspects: list[OutRecord] = []  # refused alongside others: each goes again alone
        attempt = 0
        renewed = False
        try:
            while records or suspects:
                if not records:
                    records, suspects = suspects[:1], suspects[1:]
                alone = len(records) == 1
                if not sent:
                    for record in records:
                        self._produce(record)
                sent = False  # retries and suspects are produced here
                while self._flush() > 0:
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"records not acknowledged within {timeout:.0f}s")
                failed = self._drain()
                records = []
                lost = next((err for _, err in failed if producer_state_lost(err)), None)
                if lost is not None:
                    if renewed:
                        raise FatalError(f"a new producer was fenced too ({lost.name()}: "
                                         f"{sanitize(lost.str())}): another process may be using this "
                                         "producer's identity; check the deployment")
                    renewed = True
                    failed = self._renew(failed, lost)
                for record, err in failed:
                    action = _action(err)
                    if action == "EXIT":
                        raise FatalError(f"the broker refused to take {record.topic!r}: {err.name()} "
                                         f"({sanitize(err.str())}); check the producer's credentials, "
                                         "ACLs and settings")
                    if action == "DLQ" and alone:
                        rejected.append((record, f"{err.name()}: {sanitize(err.str())}"))
                    elif action == "DLQ":
                        suspects.append(record)
                    else:
                        records.append(record)
                if records:
                    attempt += 1
                    retried = [err for _, err in failed if _action(err) == "RETRY"]
                    self.retrying = f"broker: {retried[0].name()}"
                    log.warning("%d deliveries failed (attempt %d), re-sending: %s", len(records),
                                attempt, sanitize(retried[0].str()))
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"{len(records)} records could not be delivered")
                    time.sleep(min(self.max_backoff_s, 0.2 * 2 ** attempt))
        finally:
            self.retrying = None
        return rejected

    def _flush(self) -> int:
        """librdkafka's flush for up to a second: the records still unacknowledged. A fatal
        error (the idempotent producer lost its sequence) surfaces as an exception raised out
        of the delivery callbacks, which have recorded their reports all the same: those say
        what to do (`producer_state_lost`: a new producer)."""
        try:
            return self._producer.flush(1.0)
        except (KafkaException, SystemError) as exc:
            cause = exc.__cause__ if isinstance(exc, SystemError) else exc
            log.warning("the producer raised through its delivery callbacks: %s",
                        sanitize(str(cause or exc)))
            return 1

    def _drain(self) -> list[tuple[OutRecord, KafkaError]]:
        """The failed deliveries recorded so far, taken out (safe against callbacks on other
        threads: each popleft is atomic)."""
        failed = []
        while True:
            try:
                failed.append(self._failed.popleft())
            except IndexError:
                return failed

    def _renew(self, failed: list[tuple[OutRecord, KafkaError]], why: KafkaError) -> list[tuple[OutRecord, KafkaError]]:
        """Replace a producer whose idempotence state is lost by a new one (a new producer id);
        every record the old one still held comes back as failed, to be sent again."""
        log.warning("the producer lost its idempotence state (%s); sending the batch again with a "
                    "new producer", why.name())
        old = self._producer
        old.purge()
        old.flush(5.0)
        failed = failed + self._drain()
        self._producer = Producer(self._config)
        seen: set[int] = set()
        return [(r, e) for r, e in failed if id(r) not in seen and not seen.add(id(r))]


def _action(err: KafkaError):
    """A lost idempotence state is retried with a new producer (`_renew`); the rest as classified."""
    return "RETRY" if producer_state_lost(err) else classify_delivery(err)


# What a refused output is called in the log, and the reason of the dead letter in its place.
OUTPUTS = {"output": ("enriched record", "output_rejected"), "copy": ("redacted copy", "copy_rejected"),
           "shadow": ("candidate's record", "shadow_rejected")}


def deliver(producer: AckingProducer, out: list[OutRecord], timeout: float | None = None, *,
            sent: bool = False, worker_id: str, dlq_topic: Callable[[OutRecord], str]) -> None:
    """Produce a batch's records and wait for the broker's acknowledgements. An output (an
    enriched record, a redacted copy, a candidate's shadow record) the broker refuses for good
    is dead-lettered in its place (to `dlq_topic(that record)`); a refused dead letter goes again,
    to the same topic, without the original bytes and headers; a refused bare dead letter is
    fatal (the DLQ topic itself does not take records). `sent`: `out` was already handed to
    `producer.send`; only the acknowledgements are awaited."""
    rejected = producer.deliver(out, timeout, sent=sent)
    while rejected:
        again = []
        for record, why in rejected:
            rec = record.source
            if record.kind in OUTPUTS:  # the enriched record, its redacted copy, a shadow record
                what, reason = OUTPUTS[record.kind]
                log.warning("the broker refused the %s of %s[%d]@%d (%s); dead-lettering it",
                            what, rec.topic, rec.partition, rec.offset, why)
                again.append(dead_letter(rec, dlq_topic(record), reason, why, "KafkaError",
                                         worker_id=worker_id, fits=producer.fits))
            elif record.kind == "dlq":
                log.warning("the broker refused the dead letter of %s[%d]@%d (%s); sending it without "
                            "the original bytes", rec.topic, rec.partition, rec.offset, why)
                reason = dict(record.headers or []).get(PREFIX + "reason", b"unknown").decode()
                again.append(dead_letter(rec, record.topic, reason, why, "KafkaError",
                                         worker_id=worker_id, fits=producer.fits, bare=True))
            else:
                raise FatalError(f"the DLQ topic {record.topic!r} refuses even a bare dead letter ({why}): "
                                 "check its configuration (max.message.bytes, ACLs)")
        rejected = producer.deliver(again, timeout)
