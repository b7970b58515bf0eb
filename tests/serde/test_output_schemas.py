"""Per-topic output schemas: a route with a field record publishes EnrichedEvent + `fields`
under its own `<output>-value` subject; every other output keeps the plain EnrichedEvent."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.engine import Classification, Inference, ModelInfo
from streams.enrich import SourceRecord, enriched_record
from streams.serde import InputEvent, SchemaCatalog
from streams.serde.registry import (SchemaError, compose_enriched, composed_schema_path,
                                    composed_schema_text, subject)
from streams.settings import REPO_ROOT, Settings

SCHEMAS = REPO_ROOT / "schemas"
INPUTS = ["orders.notes", "support.tickets"]
PLAIN, TYPED = [f"{t}.enriched" for t in INPUTS]
FIELDS = {"urgency": "high", "order_id": "A-1", "refund_amount": 12.5, "requested_action": "refund",
          "summary": "Charged twice for order A-1, wants \u20ac12.50 back."}


def make_catalog(**kwargs) -> SchemaCatalog:
    return SchemaCatalog(f"mock://unit-fields-{uuid.uuid4().hex}", SCHEMAS, INPUTS, [PLAIN, TYPED],
                         output_fields={TYPED: "SupportTicketFields"}, **kwargs)


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return make_catalog()


def record(fields: dict | None) -> dict:
    event = InputEvent(event_id="tkt-9", text="charged twice", event_type=None, customer_id="c-1",
                       occurred_at=datetime(2024, 5, 1, 10, tzinfo=timezone.utc))
    inference = Inference([], Classification("billing", 0.9, {"billing": 0.9, "delivery": 0.1}), fields=fields)
    return enriched_record(event, inference, SourceRecord("support.tickets", 0, 7, None),
                           [ModelInfo("classification", "llm", "v1")], inference_ms=2.0)


def test_each_output_subject_holds_its_own_schema(catalog):
    catalog.ensure_registered()
    plain = catalog.client.get_latest_version(subject(PLAIN)).schema.schema_str
    typed = json.loads(catalog.client.get_latest_version(subject(TYPED)).schema.schema_str)
    assert plain == (SCHEMAS / "EnrichedEvent.avsc").read_text()  # unchanged for topics without fields
    enriched = json.loads(plain)
    assert typed["name"] == "EnrichedEvent" and typed["namespace"] == "io.streams.enrichment"
    assert typed["fields"][:-1] == enriched["fields"]
    last = typed["fields"][-1]
    assert (last["name"], last["type"][0], last["default"]) == ("fields", "null", None)
    assert last["type"][1]["name"] == "SupportTicketFields"
    assert last["type"][1]["namespace"] == "io.streams.enrichment.fields"  # Java package


def test_typed_fields_round_trip_and_null_fields(catalog):
    for fields in (FIELDS, FIELDS | {"order_id": None, "refund_amount": None}, None):
        assert catalog.decode(catalog.encode_enriched(record(fields), TYPED), TYPED)["fields"] == fields


def test_plain_topic_output_has_no_fields(catalog):
    decoded = catalog.decode(catalog.encode_enriched(record(None), PLAIN), PLAIN)
    assert "fields" not in decoded
    assert decoded["event_id"] == "tkt-9"


def test_fast_encoder_writes_the_confluent_serializers_bytes_per_topic(catalog):
    for topic, fields in ((TYPED, FIELDS), (TYPED, None), (PLAIN, None)):
        reference = AvroSerializer(catalog.client, catalog.enriched_schema_for(topic),
                                   conf={"auto.register.schemas": False})
        rec = record(fields)
        assert catalog.encode_enriched(rec, topic) == reference(rec, SerializationContext(topic, MessageField.VALUE))
    ids = {t: int.from_bytes(catalog.encode_enriched(record(None), t)[1:5], "big") for t in (PLAIN, TYPED)}
    assert ids == {t: catalog.client.get_latest_version(subject(t)).schema_id for t in (PLAIN, TYPED)}
    assert ids[PLAIN] != ids[TYPED]


@pytest.mark.parametrize("bad", [{"urgency": "urgent"}, {"refund_amount": "12 EUR"}, {"summary": None}])
def test_values_outside_the_field_record_do_not_encode(catalog, bad):
    """The pipeline dead-letters these as encode_error; the LLM engine never produces them."""
    with pytest.raises((ValueError, TypeError)):
        catalog.encode_enriched(record(FIELDS | bad), TYPED)


def test_settings_routes_reach_the_catalog(monkeypatch):
    monkeypatch.setenv("STREAMS_SCHEMA_REGISTRY_URL", f"mock://unit-fields-{uuid.uuid4().hex}")
    monkeypatch.setenv("STREAMS_TOPICS", json.dumps([
        {"input": "orders.notes"}, {"input": "support.tickets", "fields": "SupportTicketFields",
                                    "label_from": "llm"}]))
    catalog = SchemaCatalog.from_settings(Settings())
    assert catalog.output_fields == {TYPED: "SupportTicketFields"}
    assert catalog.enriched_schema_for(PLAIN) is catalog.enriched_schema
    assert "SupportTicketFields" in catalog.enriched_schema_for(TYPED).schema_str


def test_a_missing_field_record_stops_the_catalog_at_construction():
    with pytest.raises(SchemaError, match=r"fields/NoSuchFields\.avsc"):
        SchemaCatalog(f"mock://unit-fields-{uuid.uuid4().hex}", SCHEMAS, INPUTS, [PLAIN, TYPED],
                      output_fields={TYPED: "NoSuchFields"})
    with pytest.raises(SchemaError, match="not outputs"):
        SchemaCatalog(f"mock://unit-fields-{uuid.uuid4().hex}", SCHEMAS, INPUTS, [PLAIN],
                      output_fields={TYPED: "SupportTicketFields"})


def test_lookup_only_needs_the_composed_schema_registered():
    """In production (auto-register off) the operator registers the composed schema: a subject
    that holds only the plain EnrichedEvent stops the worker at start-up, naming the subject."""
    catalog = make_catalog(auto_register=False)
    for topic in INPUTS:
        catalog.client.register_schema(subject(topic), catalog.input_schema)
    for topic in (PLAIN, TYPED):
        catalog.client.register_schema(subject(topic), catalog.enriched_schema)
    with pytest.raises(SchemaError, match=r"support\.tickets\.enriched-value"):
        catalog.ensure_registered()
    catalog.client.register_schema(subject(TYPED), catalog.enriched_schema_for(TYPED))
    catalog.ensure_registered()
    assert sorted(catalog.client.get_versions(subject(TYPED))) == [1, 2]


def test_committed_composed_schemas_match_what_the_service_registers():
    """schemas/enriched/ is what Java generates classes from (`make schemas` writes it)."""
    records = sorted(p.stem for p in (SCHEMAS / "fields").glob("*.avsc"))
    assert records, "no field records"
    committed = sorted((SCHEMAS / "enriched").glob("*.avsc"))
    assert committed == [composed_schema_path(SCHEMAS, name) for name in records], \
        "one schemas/enriched/EnrichedEvent.<FieldRecord>.avsc per field record: run `make schemas`"
    for name in records:
        assert composed_schema_path(SCHEMAS, name).read_text() == composed_schema_text(SCHEMAS, name), \
            f"{composed_schema_path(SCHEMAS, name)} is stale: run `make schemas`"


def test_compose_refuses_a_clash():
    enriched = json.loads((SCHEMAS / "EnrichedEvent.avsc").read_text())
    composed = compose_enriched(enriched, {"type": "record", "name": "F", "fields": []})
    with pytest.raises(SchemaError, match="already has"):
        compose_enriched(composed, {"type": "record", "name": "F", "fields": []})



def test_field_confidence_round_trips_beside_the_fields(catalog):
    """The LLM's per-field confidence (EnrichedEvent v2, a nullable map<double>): published on
    a topic with a field record, null without one; the plain schema has it too, always null."""
    confidence = {"urgency": 0.93, "order_id": 1.0, "refund_amount": 2.5e-7, "requested_action": 0.5,
                  "summary": 1e-30}
    event = InputEvent(event_id="tkt-9", text="charged twice", event_type=None, customer_id=None,
                       occurred_at=None)
    inference = Inference([], Classification("billing", 0.9, {"billing": 0.9}), fields=FIELDS,
                          field_confidence=confidence)
    rec = enriched_record(event, inference, SourceRecord("support.tickets", 0, 7, None),
                          [ModelInfo("fields", "llm", "v1")], inference_ms=2.0)
    decoded = catalog.decode(catalog.encode_enriched(rec, TYPED), TYPED)
    assert decoded["field_confidence"] == confidence and decoded["fields"] == FIELDS
    assert catalog.decode(catalog.encode_enriched(record(FIELDS), TYPED), TYPED)["field_confidence"] is None
    typed = json.loads(catalog.enriched_schema_for(TYPED).schema_str)
    assert [f["name"] for f in typed["fields"][-2:]] == ["field_confidence", "fields"]
    assert catalog.decode(catalog.encode_enriched(record(None), PLAIN), PLAIN)["field_confidence"] is None
