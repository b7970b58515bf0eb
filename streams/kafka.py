"""confluent-kafka clients for the operator side (topics, `streams produce`, `streams tail`),
built from the same settings as the worker so security reaches every client."""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from .settings import Settings


def admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.librdkafka_config())


def producer(settings: Settings, **extra) -> Producer:
    conf = settings.librdkafka_config() | {"acks": "all", "enable.idempotence": True,
                                           "linger.ms": 5} | extra
    return Producer(conf)


def consumer(settings: Settings, group_id: str, *, from_beginning: bool = True, **extra) -> Consumer:
    conf = settings.librdkafka_config() | {
        "group.id": group_id,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": False,
        "session.timeout.ms": int(settings.kafka_session_timeout_s * 1000),
        "topic.metadata.refresh.interval.ms": 2000,
    } | extra
    return Consumer(conf)


def all_topics(settings: Settings) -> list[str]:
    return [t for r in settings.topics for t in (r.input, r.output, r.dlq)]


def ensure_topics(settings: Settings, topics: list[str] | None = None, timeout: float = 15.0) -> None:
    """Create the input, enriched and DLQ topics if missing. A consumer subscribed to a topic
    that does not exist yet may not see it for minutes, so topics exist before anyone reads."""
    client = admin(settings)
    wanted = topics or all_topics(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    missing = [NewTopic(t, num_partitions=settings.topic_partitions, replication_factor=1)
               for t in wanted if t not in existing]
    if not missing:
        return
    for topic, future in client.create_topics(missing, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
