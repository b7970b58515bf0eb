"""decode_input: every accepted shape, and the exact `reason` for every rejected one."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from streams.serde import DecodeError, InputEvent, SchemaCatalog, decode_input
from streams.settings import REPO_ROOT

TOPIC = "support.tickets"
MAX = 10_000
SECRET = "Maria Gonzalez lives at 48 Maple Avenue"  # stands for personal data in the text


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return SchemaCatalog(f"mock://unit-input-{uuid.uuid4().hex}", REPO_ROOT / "schemas",
                         [TOPIC], [f"{TOPIC}.enriched"])


def decode(value: bytes | None, catalog=None, max_bytes: int = MAX):
    return decode_input(value, TOPIC, catalog, max_bytes)


def as_json(obj) -> bytes:
    return json.dumps(obj).encode()


def test_json_with_every_field():
    event = decode(as_json({
        "event_id": "tkt-1", "text": "hello", "event_type": "ticket.created",
        "occurred_at": "2024-05-01T10:00:00Z", "customer_id": "c-1",
        "metadata": {"channel": "email"}, "unknown_field": 1}))
    assert event == InputEvent(event_id="tkt-1", text="hello", event_type="ticket.created",
                               occurred_at=datetime(2024, 5, 1, 10, tzinfo=timezone.utc),
                               customer_id="c-1", metadata={"channel": "email"})


def test_json_with_only_required_fields():
    event = decode(as_json({"event_id": "e", "text": "hi", "metadata": None}))
    assert (event.event_type, event.occurred_at, event.customer_id, event.metadata) == (None, None, None, {})


def test_avro_round_trip(catalog):
    record = {"event_id": "tkt-2", "text": "my parcel is late", "event_type": "ticket.created",
              "occurred_at": datetime(2024, 5, 1, 10, 30, tzinfo=timezone.utc),
              "customer_id": "c-2", "metadata": {"channel": "web"}}
    value = catalog.encode_input(record, TOPIC)
    assert value[0] == 0
    assert decode(value, catalog) == InputEvent(**record)


def test_tombstone_is_skipped_not_an_error():
    assert decode(None) is None


@pytest.mark.parametrize("value, reason", [
    (b"", "empty_value"),
    (b'{"event_id": "e", "text": ', "invalid_json"),
    (b'{"event_id": "e", "text": "caf\xe9"}', "invalid_utf8"),
    # UTF-16 was accepted when json.loads guessed the encoding; now it is rejected.
    ('{"event_id": "e", "text": "hi"}'.encode("utf-16-le"), "invalid_json"),
    (as_json({"text": "hello"}), "missing_field"),
    (as_json({"event_id": "e", "text": ""}), "invalid_field"),
    (as_json({"event_id": "e", "text": "   \n"}), "invalid_field"),
    (as_json({"event_id": " ", "text": "hi"}), "invalid_field"),
    (as_json({"event_id": "e", "text": 42}), "invalid_field"),
    (as_json({"event_id": 7, "text": "hi"}), "invalid_field"),
    (as_json({"event_id": "e", "text": "hi", "metadata": {"k": 1}}), "invalid_field"),
    (as_json({"event_id": "e", "text": "hi", "occurred_at": "yesterday"}), "invalid_field"),
    (as_json([{"event_id": "e", "text": "hi"}]), "not_an_object"),
    (b'"just a string"', "not_an_object"),
])
def test_bad_json_reasons(value, reason):
    result = decode(value)
    assert isinstance(result, DecodeError)
    assert result.reason == reason, result.message


def test_too_large_is_checked_before_parsing():
    assert decode(b"{" * 11, max_bytes=10).reason == "too_large"  # would be invalid_json
    ok = as_json({"event_id": "e", "text": "hi"})
    assert isinstance(decode(ok, max_bytes=len(ok)), InputEvent)
    assert decode(ok, max_bytes=len(ok) - 1).reason == "too_large"


def test_unknown_schema_id(catalog):
    result = decode(b"\x00" + (9999).to_bytes(4, "big") + b"\x02e\x04hi", catalog)
    assert result.reason == "unknown_schema_id"
    assert "9999" in result.message


def test_truncated_avro(catalog):
    value = catalog.encode_input({"event_id": "e", "text": "hello there", "metadata": {"k": "v"}}, TOPIC)
    assert decode(value[:-4], catalog).reason == "invalid_avro"
    assert decode(value[:3], catalog).reason == "invalid_avro"  # not even a full header


@pytest.mark.parametrize("value", [
    as_json({"text": SECRET}),  # missing event_id
    as_json({"event_id": "e", "text": SECRET, "occurred_at": SECRET}),
    as_json({"event_id": "e", "text": SECRET, "customer_id": 5}),
    as_json(SECRET),
    b'{"event_id": "e", "text": "' + SECRET.encode() + b'"',
])
def test_error_message_never_holds_the_text(value):
    result = decode(value)
    assert isinstance(result, DecodeError)
    assert "Maria" not in result.message and "Maple" not in result.message
