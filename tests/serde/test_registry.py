"""SchemaCatalog: enriched records through Avro, Confluent framing, deterministic mock ids."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from streams.engine import Classification, Entity, Inference, ModelInfo
from streams.enrich import SourceRecord, enriched_record
from streams.serde import InputEvent, SchemaCatalog, decode_input
from streams.serde.registry import SchemaError, subject
from streams.settings import REPO_ROOT

INPUTS = ["orders.notes", "support.tickets"]
OUTPUTS = [f"{t}.enriched" for t in INPUTS]


def make_catalog(**kwargs) -> SchemaCatalog:
    return SchemaCatalog(f"mock://unit-registry-{uuid.uuid4().hex}", REPO_ROOT / "schemas",
                         INPUTS, OUTPUTS, **kwargs)


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return make_catalog()


@pytest.fixture
def record() -> dict:
    text = "Hi, I am Maria, maria@example.com"
    event = InputEvent(event_id="tkt-1", text=text, event_type="ticket.created", customer_id="c-1",
                       occurred_at=datetime(2024, 5, 1, 10, tzinfo=timezone.utc))
    inference = Inference(
        [Entity("GIVEN_NAME", "Maria", 9, 14, 0.97), Entity("EMAIL", "maria@example.com", 16, 33, 0.8)],
        Classification("billing", 0.75, {"billing": 0.75, "delivery": 0.25}))
    models = [ModelInfo("entities", "ner", "v1"), ModelInfo("classification", "clf", "v2")]
    source = SourceRecord("support.tickets", 3, 42, 1_714_557_600_123)
    return enriched_record(event, inference, source, models, inference_ms=12.5)


def test_enriched_round_trip(catalog, record):
    decoded = catalog.decode(catalog.encode_enriched(record, OUTPUTS[1]), OUTPUTS[1])
    for key in ("event_id", "event_type", "customer_id", "occurred_at", "models", "inference_ms"):
        assert decoded[key] == record[key], key
    assert decoded["source"] == {"topic": "support.tickets", "partition": 3, "offset": 42,
                                 "timestamp": datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)}
    assert [(e["label"], e["text"], e["start"], e["end"]) for e in decoded["entities"]] == \
        [("GIVEN_NAME", "Maria", 9, 14), ("EMAIL", "maria@example.com", 16, 33)]
    assert [e["score"] for e in decoded["entities"]] == pytest.approx([0.97, 0.8], rel=1e-6)  # Avro float
    assert decoded["classification"]["label"] == "billing"
    assert [s["label"] for s in decoded["classification"]["scores"]] == ["billing", "delivery"]
    # timestamp-millis: processed_at survives to the millisecond
    assert abs(decoded["processed_at"] - record["processed_at"]).total_seconds() < 0.001


def test_confluent_framing(catalog, record):
    value = catalog.encode_enriched(record, OUTPUTS[0])
    assert value[0] == 0
    schema_id = int.from_bytes(value[1:5], "big")
    assert schema_id == catalog.client.get_latest_version(subject(OUTPUTS[0])).schema_id


def test_fast_encoder_writes_the_confluent_serializers_bytes(catalog, record):
    """encode_enriched bypasses AvroSerializer's per-call lookups; the bytes must not change.
    One AvroSerializer per topic: a single instance shared across subjects reuses the last
    subject's schema id (its `_schema_id` cache), which on a mock registry is the wrong id."""
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    no_entities = record | {"entities": []}
    for _ in range(2):  # the second round hits every cache
        for topic in OUTPUTS:
            reference = AvroSerializer(catalog.client, catalog.enriched_schema,
                                       conf={"auto.register.schemas": False})
            ctx = SerializationContext(topic, MessageField.VALUE)
            for rec in (record, no_entities):
                assert catalog.encode_enriched(rec, topic) == reference(rec, ctx), topic
    ids = {int.from_bytes(catalog.encode_enriched(record, t)[1:5], "big") for t in OUTPUTS}
    assert ids == {catalog.client.get_latest_version(subject(t)).schema_id for t in OUTPUTS}


def test_two_processes_agree_on_ids(record):
    """Two mock registries (two processes) register the same subjects in the same order."""
    producer, worker = make_catalog(), make_catalog()
    producer.ensure_registered()
    worker.ensure_registered()
    for topic in INPUTS + OUTPUTS:
        assert (producer.client.get_latest_version(subject(topic)).schema_id
                == worker.client.get_latest_version(subject(topic)).schema_id), topic
    # so bytes written by one are read by the other
    value = producer.encode_input({"event_id": "e", "text": "hello", "metadata": {}}, INPUTS[1])
    assert decode_input(value, INPUTS[1], worker, 10_000) == InputEvent(event_id="e", text="hello")
    enriched = producer.encode_enriched(record, OUTPUTS[1])
    assert worker.decode(enriched, OUTPUTS[1])["event_id"] == "tkt-1"


def test_lookup_only_against_empty_registry_fails_at_start():
    catalog = make_catalog(auto_register=False)
    with pytest.raises(SchemaError, match=r"orders\.notes-value"):
        catalog.ensure_registered()


def test_fast_decoder_reads_what_the_confluent_deserializer_reads(catalog, record):
    """decode() skips AvroDeserializer's per-call subject and rule lookups; its records must
    not change, for enriched records and Avro inputs alike."""
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    reference = AvroDeserializer(catalog.client)
    values = [(catalog.encode_enriched(record, OUTPUTS[1]), OUTPUTS[1]),
              (catalog.encode_enriched(record | {"entities": [], "occurred_at": None}, OUTPUTS[0]), OUTPUTS[0]),
              (catalog.encode_input({"event_id": "e", "text": "hello", "metadata": {"k": "v"}}, INPUTS[1]), INPUTS[1])]
    for _ in range(2):  # the second round reads the cached writer schemas
        for value, topic in values:
            assert catalog.decode(value, topic) == reference(value, SerializationContext(topic, MessageField.VALUE))


def test_fast_decoder_errors(catalog, record):
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from confluent_kafka.serialization import SerializationError

    with pytest.raises(SchemaRegistryError, match="40400"):
        catalog.decode(b"\x00" + (9999).to_bytes(4, "big") + b"\x02e\x04hi", OUTPUTS[1])
    with pytest.raises(SerializationError):
        catalog.decode(b"\x00\x00\x00\x00\x01", OUTPUTS[1])  # a header and no body
    with pytest.raises(SerializationError):
        catalog.decode(b'{"event_id": "e"}', OUTPUTS[1])  # JSON, not Confluent Avro
    value = catalog.encode_enriched(record, OUTPUTS[1])
    with pytest.raises(Exception):
        catalog.decode(value[:-10], OUTPUTS[1])  # truncated body
