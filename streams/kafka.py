"""confluent-kafka clients for the operator side (topics, `streams produce`, `streams tail`),
built from the same settings as the worker so security reaches every client."""

from __future__ import annotations

import logging

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from .errors import FatalError
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


def all_topics(settings: Settings) -> list[str]:
    return [t for r in settings.topics for t in (r.input, r.output, r.dlq)]


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
    outputs = [t for r in settings.topics for t in (r.output, r.dlq)]
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
