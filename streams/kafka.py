"""confluent-kafka clients for the operator side (topics, `streams produce`, `streams tail`),
built from the same settings as the worker so security reaches every client."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .errors import RECORD_UNDECODABLE, FatalError, sanitize
from .records import InRecord
from .settings import Settings

log = logging.getLogger("streams.kafka")


def admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.librdkafka_config())


# What every client of the service asks for, whatever it reads or writes:
# - committed data only (a Java transactional producer's aborted records are never enriched,
#   replayed or shown); librdkafka's default too, stated so no one reads it as an accident;
# - Java's default partitioner for keyed records: murmur2 of the key, so an enriched record
#   and its dead letter land in the partition a Java producer gives the same key (with equal
#   partition counts: the input's own), and Kafka Streams can join them. librdkafka's default,
#   consistent_random (CRC32), picks another partition for most keys.
ISOLATION = {"isolation.level": "read_committed"}
PARTITIONER = {"partitioner": "murmur2_random"}


def producer(settings: Settings, **extra) -> Producer:
    conf = settings.librdkafka_config() | {"acks": "all", "enable.idempotence": True,
                                           "linger.ms": 5} | PARTITIONER | extra
    return Producer(conf)


def consumer(settings: Settings, group_id: str, *, from_beginning: bool = True, **extra) -> Consumer:
    conf = settings.librdkafka_config() | {
        "group.id": group_id,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": False,
        "session.timeout.ms": int(settings.kafka_session_timeout_s * 1000),
        "topic.metadata.refresh.interval.ms": 2000,
    } | ISOLATION | extra
    return Consumer(conf)


OMITTED_HEADERS = "__streams.input.headers.omitted"


def read_headers(message) -> list[tuple[str, bytes]]:
    """A consumed record's headers, never an exception. Kafka allows any bytes as a header
    name; confluent-kafka decodes names as UTF-8 and raises on anything else (a Go, C or Rust
    producer can write them), without a way to read the raw bytes. Such a record keeps its
    key and value; its headers are replaced by one that says they were omitted, so the record
    itself (topic, partition, offset in the output) stays the place to read them."""
    try:
        # Called through map(): confluent-kafka 2.16's headers() returns normally with the
        # decode error still pending, and a call site Python 3.11 has specialized does not
        # check for that (the error then surfaces at some later, unrelated call). map() calls
        # through the generic path, which turns it into an exception here, every time.
        return next(map(Message.headers, (message,))) or []
    except (SystemError, UnicodeDecodeError, ValueError):
        return [(OMITTED_HEADERS, b"a header name is not valid UTF-8; read the headers at the "
                                  b"source coordinates")]


def to_record(message) -> InRecord:
    """A librdkafka message as the pipeline's record (the librdkafka source, replay); its
    headers never raise (`read_headers`)."""
    ts_type, ts = message.timestamp()
    return InRecord(message.topic(), message.partition(), message.offset(),
                    None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts,
                    message.key(), message.value(), read_headers(message))


@dataclass
class _Skip:
    """A batch the client failed to decode, starting at `base`: how often it was fetched, and
    the next offset to step to once it is being skipped record by record."""

    base: int
    fetches: int = 0
    next: int | None = None


class UndecodableRecords:
    """Records a librdkafka consumer fetched and cannot decode (a batch whose compression bits
    lie, a corrupt message): each failing batch is re-fetched `refetches` times (a transient
    fault passes), then its records come out one by one as `InRecord`s with `client_error`
    set, by their coordinates (dead-lettered, never a crash or a stall), each followed by a
    seek past it. The librdkafka source and replay both read through one."""

    def __init__(self, consumer: Consumer, refetches: int):
        self._consumer = consumer
        self.refetches = refetches
        self._skips: dict[tuple[str, int], _Skip] = {}

    def clear(self) -> None:
        self._skips.clear()

    def decoded(self, tp: tuple[str, int]) -> None:
        """A record of `tp` was decoded again: its bad batch is behind it."""
        self._skips.pop(tp, None)

    def record_for(self, m, err: KafkaError) -> InRecord | None:
        """The record to hand out for this error (and the seek past it), or None while the
        batch is re-fetched. Call it once per partition per fetch: the messages fetched after
        it, before the seek, are stale."""
        tp = (m.topic(), m.partition())
        base = m.offset()  # librdkafka reports the failing batch's first offset
        skip = self._skips.get(tp)
        if skip is None or skip.base != base:
            skip = self._skips[tp] = _Skip(base)
        if skip.next is None:
            skip.fetches += 1
            if skip.fetches < self.refetches:
                log.warning("%s[%d]@%d cannot be decoded by the client (%s); re-fetch %d of %d",
                            tp[0], tp[1], base, err.name(), skip.fetches, self.refetches)
                return None
            offset = base
        else:
            # The seek past the last skipped offset landed in the same batch: that offset is
            # part of it, and gets its own dead letter.
            offset = skip.next
        skip.next = offset + 1
        self._consumer.seek(TopicPartition(tp[0], tp[1], offset + 1))
        return InRecord(tp[0], tp[1], offset, None, None, None, [],
                        client_error=f"{err.name()}: {sanitize(err.str())}")


def is_undecodable(m, err: KafkaError) -> bool:
    """A fetched record the client cannot hand out (`UndecodableRecords` deals with it)."""
    return (err.code() in RECORD_UNDECODABLE and m.topic() is not None and m.offset() is not None
            and m.offset() >= 0)


def all_topics(settings: Settings) -> list[str]:
    return [t for r in settings.topics for t in (r.input, *r.produces)]


def ensure_topics(settings: Settings, topics: list[str] | None = None, timeout: float = 15.0) -> list[str]:
    """Create these topics (default: every configured input, output and DLQ topic) if missing,
    with the configured partitions and replication factor; returns the ones created. For
    operator commands and development (`streams produce`, `streams demo`): the worker itself
    only ever creates its output and DLQ topics (`ensure_output_topics`)."""
    client = admin(settings)
    wanted = topics or all_topics(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    missing = [NewTopic(t, num_partitions=settings.topic_partitions,
                        replication_factor=settings.topic_replication_factor)
               for t in dict.fromkeys(wanted) if t not in existing]
    if not missing:
        return []
    for topic, future in client.create_topics(missing, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return [t.topic for t in missing]


def ensure_output_topics(settings: Settings, timeout: float = 15.0) -> None:
    """At worker start-up: the output and DLQ topics must exist before the first produce.
    They are created only when `settings.creates_topics` (the embedded broker, or
    STREAMS_CREATE_TOPICS=true); on a real cluster a missing one stops the worker with a message
    (a platform team creates topics with its own partitions, replication and ACLs). Input topics
    are never created: a missing one is only reported (the subscription picks it up later)."""
    outputs = [t for r in settings.topics for t in r.produces]
    existing = set(admin(settings).list_topics(timeout=timeout).topics)
    absent_inputs = [r.input for r in settings.topics if r.input not in existing]
    if absent_inputs:
        log.warning("input topic(s) %s do not exist yet; the worker will read them once they do",
                    ", ".join(absent_inputs))
    missing = [t for t in outputs if t not in existing]
    if not missing:
        return
    if not settings.creates_topics:
        raise FatalError(f"output topic(s) {', '.join(missing)} do not exist: create them, or set "
                         "STREAMS_CREATE_TOPICS=true to let the worker create them")
    log.info("creating topics %s (%d partitions, replication factor %s)", ", ".join(missing),
             settings.topic_partitions, settings.topic_replication_factor)
    ensure_topics(settings, missing, timeout)
