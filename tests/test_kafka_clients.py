"""What every Kafka client of the service asks for: committed data only (read_committed), and
Java's default partitioner (murmur2) for what it produces, checked on the real broker against
Kafka's own murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`, ported below)."""

from __future__ import annotations

import uuid

import pytest
from streams.source.base import ConsumerState
from streams.source.librdkafka import consumer_config
from streams.kafka import ISOLATION, ensure_topics
from streams.kafka import consumer as make_consumer
from streams.kafka import producer as make_producer
from streams.produce import AckingProducer
from streams.records import OutRecord
from streams.settings import Settings, TopicRoute


def java_murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2 (seed 0x9747b28c), as Java's default partitioner calls it."""
    length = len(data)
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[i * 4:i * 4 + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = data[length - rest:]
    if rest == 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key: bytes, partitions: int) -> int:
    return (java_murmur2(key) & 0x7FFFFFFF) % partitions  # Utils.toPositive(murmur2(key)) % n


def test_kafka_murmur2_port_matches_known_values():
    # Values from Kafka's UtilsTest.testMurmur2
    assert java_murmur2(b"21") - (1 << 32) == -973932308
    assert java_murmur2(b"foobar") - (1 << 32) == -790332482
    assert java_murmur2(b"a-little-bit-long-string") - (1 << 32) == -985981536
    assert java_murmur2(b"a-little-bit-longer-string") - (1 << 32) == -1486304829


def test_every_consumer_asks_for_committed_data_only(monkeypatch):
    """The embedded broker serves aborted records even to read_committed readers (docs/broker.md),
    so what each client asks for is what can be checked here."""
    settings = Settings()
    assert consumer_config(settings, ConsumerState())["isolation.level"] == "read_committed"
    assert ISOLATION == {"isolation.level": "read_committed"}
    seen = {}

    class Capture:  # what the real Consumer would be built with (`streams tail`, replay, offsets)
        def __init__(self, conf):
            seen.update(conf)

    monkeypatch.setattr("streams.kafka.Consumer", Capture)
    make_consumer(settings, "g", from_beginning=False)
    assert seen["isolation.level"] == "read_committed"



@pytest.mark.integration
def test_enriched_records_land_in_the_partition_java_gives_their_key(broker):
    name = f"part-{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka_bootstrap=broker.bootstrap, topic_partitions=4,
                        topics=[TopicRoute(input=f"{name}.in")])
    ensure_topics(settings)
    keys = [f"order-{i}".encode() for i in range(40)] + ["Jos\u00e9".encode(), b"x", b"12345678901"]
    producer = AckingProducer(settings.librdkafka_config())
    records = [OutRecord(f"{name}.in.enriched", key, b"v", [], "output", None) for key in keys]
    assert producer.deliver(records, timeout=30) == []
    plain = make_producer(settings)  # `streams produce` and friends
    for key in keys:
        plain.produce(f"{name}.in.dlq", key=key, value=b"v")
    assert plain.flush(30) == 0
    reader = make_consumer(settings, f"check-{name}")
    reader.subscribe([f"{name}.in.enriched", f"{name}.in.dlq"])
    got = {}
    try:
        import time

        deadline = time.monotonic() + 60
        while len(got) < 2 * len(keys) and time.monotonic() < deadline:
            for m in reader.consume(100, 0.5):
                if not m.error():
                    got[(m.topic(), m.key())] = m.partition()
    finally:
        reader.close()
    assert len(got) == 2 * len(keys)
    wrong = {k: p for (t, k), p in got.items() if p != java_partition(k, 4)}
    assert not wrong, wrong
    assert len(set(got.values())) == 4  # spread over every partition: the check means something
