"""Avro field record -> JSON Schema: what the LLM decodes under must admit exactly the values
the topic's Avro record accepts (enums to their symbols, ["null", T] to a nullable T)."""

from __future__ import annotations

import json

import fastavro
import pytest

from streams.serde.fields import (FieldSchemaError, field_docs, field_schema, json_schema, load_field_record,
                                  load_field_schema)
from streams.engine.grounding import GROUNDED
from streams.settings import REPO_ROOT

RECORD = {"type": "record", "name": "R", "fields": [
    {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["low", "high"]}},
    {"name": "order_id", "type": ["null", "string"], "default": None, "doc": "the order"},
    {"name": "amount", "type": ["null", "double"], "default": None},
    {"name": "count", "type": "int"}, {"name": "big", "type": "long"},
    {"name": "ok", "type": "boolean"}, {"name": "note", "type": "string"}]}


def test_types_map_to_json_schema():
    schema = json_schema(RECORD)
    props = schema["properties"]
    assert list(props) == ["level", "order_id", "amount", "count", "big", "ok", "note"]  # Avro order
    assert schema["required"] == list(props) and schema["additionalProperties"] is False
    assert props["level"] == {"type": "string", "enum": ["low", "high"]}
    assert props["order_id"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert props["order_id"]["description"] == "the order"
    assert props["amount"]["anyOf"] == [{"type": "number"}, {"type": "null"}]
    assert props["count"]["type"] == "integer" and props["count"]["maximum"] == 2 ** 31 - 1
    assert props["big"]["type"] == "integer"
    assert props["ok"] == {"type": "boolean"} and props["note"] == {"type": "string"}


def test_support_ticket_record_loads_and_its_values_are_valid_avro():
    record = load_field_record(REPO_ROOT / "schemas", "SupportTicketFields")
    schema = json_schema(record)
    assert schema["properties"]["urgency"]["enum"] == ["low", "medium", "high", "critical"]
    value = {"urgency": "high", "order_id": None, "refund_amount": 84.2,
             "requested_action": "refund", "summary": "Charged twice."}
    assert fastavro.validate(value, fastavro.parse_schema(record), raise_errors=False)
    docs = dict(field_docs(record))
    assert "low, medium, high, critical" in docs["urgency"] and "or null" in docs["order_id"]


@pytest.mark.parametrize("bad", [
    {"name": "u", "type": ["null", "string", "int"]},  # a union the grammar cannot type
    {"name": "m", "type": {"type": "map", "values": "string"}},
    {"name": "n", "type": "SomeNamedType"}])
def test_unsupported_types_fail_at_start_up(bad):
    with pytest.raises(FieldSchemaError):
        json_schema({"type": "record", "name": "R", "fields": [bad]})


def test_missing_or_wrong_file(tmp_path):
    with pytest.raises(FieldSchemaError, match="no file"):
        load_field_record(tmp_path, "Nope")
    (tmp_path / "fields").mkdir()
    (tmp_path / "fields" / "E.avsc").write_text(json.dumps({"type": "enum", "name": "E", "symbols": ["a"]}))
    with pytest.raises(FieldSchemaError, match="not an Avro record"):
        load_field_record(tmp_path, "E")


def test_a_field_may_set_its_own_length_cap():
    """The others are capped by the LLM engine (tests/engine/test_llm_limits.py)."""
    record = {"type": "record", "name": "R", "fields": [
        {"name": "summary", "type": "string"},
        {"name": "code", "type": ["null", "string"], "maxLength": 12},
        {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["a", "b"]}}]}
    props = json_schema(record)["properties"]
    assert props["code"]["anyOf"][0]["maxLength"] == 12
    assert "maxLength" not in props["summary"] and "maxLength" not in props["kind"]


def test_the_llm_is_given_the_json_schema_with_the_prompts_field_lines():
    record = load_field_record(REPO_ROOT / "schemas", "SupportTicketFields")
    schema = load_field_schema(REPO_ROOT / "schemas", "SupportTicketFields")
    assert schema == field_schema(record)
    docs = dict(field_docs(record))
    assert {name: p["description"] for name, p in schema["properties"].items()} == docs
    strip = {name: {k: v for k, v in p.items() if k != "description"} for name, p in schema["properties"].items()}
    assert strip == {name: {k: v for k, v in p.items() if k != "description"}
                     for name, p in json_schema(record)["properties"].items()}


def test_grounded_fields_are_marked_for_the_engine():
    record = {"type": "record", "name": "R", "fields": [
        {"name": "order_id", "type": ["null", "string"], "default": None, "grounded": True},
        {"name": "amount", "type": ["null", "double"], "default": None, "grounded": True},
        {"name": "count", "type": ["null", "long"], "default": None, "grounded": True},
        {"name": "note", "type": ["null", "string"], "default": None, "grounded": False}]}
    props = json_schema(record)["properties"]
    assert props["order_id"] == {"anyOf": [{"type": "string"}, {"type": "null"}], GROUNDED: True}
    assert props["amount"][GROUNDED] is True and props["count"][GROUNDED] is True
    assert GROUNDED not in props["note"]
    shipped = load_field_schema(REPO_ROOT / "schemas", "SupportTicketFields")["properties"]
    assert [n for n, p in shipped.items() if p.get(GROUNDED)] == ["order_id", "refund_amount"]
    assert shipped["order_id"]["anyOf"][0]["maxLength"] == 40


@pytest.mark.parametrize("field, why", [
    ({"name": "order_id", "type": "string", "grounded": True}, "must be \\[\"null\", T\\]"),
    ({"name": "amount", "type": "double", "grounded": True}, "must be \\[\"null\", T\\]"),
    ({"name": "ok", "type": ["null", "boolean"], "default": None, "grounded": True}, "a string or a number"),
    ({"name": "kind", "type": ["null", {"type": "enum", "name": "K", "symbols": ["a"]}], "default": None,
      "grounded": True}, "a string or a number"),
    ({"name": "order_id", "type": ["null", "string"], "default": None, "grounded": "yes"}, "true or false"),
])
def test_a_grounded_field_must_be_a_nullable_string_or_number(field, why):
    with pytest.raises(FieldSchemaError, match=why) as raised:
        json_schema({"type": "record", "name": "R", "fields": [field]})
    assert f"R.{field['name']}" in str(raised.value)  # names the field
