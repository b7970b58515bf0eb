"""Decode one input record into an `InputEvent`, or say exactly why not.

Bad records are data, not exceptions: `decode_input` returns a `DecodeError` that the agent
dead-letters with the original bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAGIC_BYTE = 0


@dataclass(frozen=True, slots=True)
class DecodeError:
    reason: str  # short machine-readable class, e.g. "invalid_json", "missing_field"
    message: str  # human-readable; never contains the event text


class InputEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str
    text: str
    event_type: str | None = None
    occurred_at: datetime | None = None
    customer_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)  # a factory: no deepcopy per event

    @field_validator("event_id", "text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _null_metadata(cls, value):
        return {} if value is None else value


def _validate(payload, fmt: str) -> InputEvent | DecodeError:
    if not isinstance(payload, dict):
        return DecodeError("not_an_object", f"{fmt} value is a {type(payload).__name__}, not an object")
    try:
        return InputEvent.model_validate(payload)
    except ValidationError as exc:
        missing = [".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "missing"]
        if missing:
            return DecodeError("missing_field", f"required field(s) missing: {', '.join(missing)}")
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return DecodeError("invalid_field", problems)


def decode_input(value: bytes | None, topic: str, catalog, max_bytes: int) -> InputEvent | DecodeError | None:
    """None for a tombstone (skipped, not an error)."""
    if value is None:
        return None
    if len(value) == 0:
        return DecodeError("empty_value", "the record value is 0 bytes")
    if len(value) > max_bytes:  # checked before any parsing
        return DecodeError("too_large", f"value is {len(value)} bytes, the cap is {max_bytes}")
    if value[0] == MAGIC_BYTE:
        if len(value) < 5:
            return DecodeError("invalid_avro", "Confluent framing needs 5 header bytes")
        try:
            payload = catalog.decode(value, topic)
        except Exception as exc:  # registry miss, truncated or corrupt body
            text = str(exc)
            reason = "unknown_schema_id" if "Not Found" in text or "40400" in text else "invalid_avro"
            schema_id = int.from_bytes(value[1:5], "big")
            return DecodeError(reason, f"Avro (schema id {schema_id}): {type(exc).__name__}: {text}")
        return _validate(payload, "Avro")
    try:  # the common case in one pass (pydantic parses the JSON bytes itself)
        return InputEvent.model_validate_json(value)
    except ValidationError:
        pass  # the path below says exactly what is wrong
    try:
        # Decode explicitly: json.loads on bytes would guess UTF-16/32 and accept them.
        payload = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return DecodeError("invalid_utf8", f"value is not UTF-8: {exc.reason} at byte {exc.start}")
    except ValueError as exc:
        return DecodeError("invalid_json", f"value is neither Confluent Avro nor JSON: {exc.msg} "
                                           f"at line {exc.lineno} column {exc.colno}")
    except RecursionError:
        return DecodeError("invalid_json", "JSON nested too deeply")
    return _validate(payload, "JSON")
