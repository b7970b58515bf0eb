"""Decode one input record into an `InputEvent`, or say exactly why not.

Bad records are data, not exceptions: `decode_input` returns a `DecodeError` that the agent
dead-letters with the original bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import FatalError, RetriableError, describe, sanitize

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
        return _invalid(exc)


def _where(loc: tuple) -> str:
    """A pydantic error location with the input's own keys (metadata keys, which may be
    personal data) replaced: only the schema's field names and list indexes are kept."""
    return ".".join(p if p in InputEvent.model_fields else "[key]" if isinstance(p, str) else f"[{p}]"
                    for p in loc) or "value"


def _invalid(exc: ValidationError) -> DecodeError:
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    missing = [_where(e["loc"]) for e in errors if e["type"] == "missing"]
    if missing:
        return DecodeError("missing_field", f"required field(s) missing: {', '.join(missing)}")
    return DecodeError("invalid_field", sanitize("; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors)))


def _registry_failure(exc: Exception, schema_id: int) -> DecodeError:
    """A schema id the registry does not know is bad data; a registry that cannot answer is a
    broken dependency (the batch is retried); one that refuses our credentials is fatal."""
    status = getattr(exc, "http_status_code", None)
    if status == 404:
        return DecodeError("unknown_schema_id", f"Avro (schema id {schema_id}): {describe(exc)}")
    if status in (401, 403):
        raise FatalError(f"the schema registry refused the credentials (HTTP {status}) while "
                         f"resolving schema id {schema_id}: check STREAMS_SCHEMA_REGISTRY_AUTH") from exc
    raise RetriableError("registry", f"schema id {schema_id}: {describe(exc)}") from exc


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
        schema_id = int.from_bytes(value[1:5], "big")
        try:
            schema = catalog.writer_schema(schema_id)
        except Exception as exc:  # noqa: BLE001 - sorted into bad data / dependency / fatal
            return _registry_failure(exc, schema_id)
        try:
            payload = catalog.decode_body(value, schema)
        except Exception as exc:  # noqa: BLE001 - a truncated or corrupt body is bad data
            return DecodeError("invalid_avro", f"Avro (schema id {schema_id}): {describe(exc)}")
        return _validate(payload, "Avro")
    try:  # the common case in one pass (pydantic parses the JSON bytes itself)
        return InputEvent.model_validate_json(value)
    except ValidationError:
        pass  # the path below says exactly what is wrong
    except Exception:  # noqa: BLE001 - whatever the fast parser raises, the path below explains
        pass
    try:
        # Decode explicitly: json.loads on bytes would guess UTF-16/32 and accept them.
        payload = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return DecodeError("invalid_utf8", f"value is not UTF-8: {exc.reason} at byte {exc.start}")
    except json.JSONDecodeError as exc:
        return DecodeError("invalid_json", f"value is neither Confluent Avro nor JSON: {exc.msg} "
                                           f"at line {exc.lineno} column {exc.colno}")
    except RecursionError:
        return DecodeError("invalid_json", "JSON nested too deeply")
    except Exception as exc:  # noqa: BLE001 - e.g. an integer over Python's 4,300-digit limit
        return DecodeError("invalid_json", f"JSON the parser refuses: {describe(exc)}")
    try:
        return _validate(payload, "JSON")
    except Exception as exc:  # noqa: BLE001 - a validator's own failure is still this record's
        return DecodeError("invalid_field", describe(exc))
