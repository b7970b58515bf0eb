"""Per-topic typed fields: an Avro record in `schemas/fields/<name>.avsc`, and the JSON Schema
the LLM engine decodes under, derived from it, so every generated value is valid Avro by
construction (enums to their symbols, `["null", T]` to a nullable T). The engine is handed the
JSON Schema (`field_schema`) and knows nothing of Avro.

A field with the attribute `"grounded": true` (a nullable string or number) carries the JSON
Schema keyword `"x-grounded": true`: the engine nulls its value unless the input text says it
(streams/engine/grounding.py). It must be nullable, or there would be nothing to publish
instead of an invented value."""

from __future__ import annotations

import json
from pathlib import Path

from ..engine.grounding import GROUNDED

_PRIMITIVES = {"string": {"type": "string"}, "boolean": {"type": "boolean"},
               "int": {"type": "integer", "minimum": -(2 ** 31), "maximum": 2 ** 31 - 1},
               "long": {"type": "integer", "minimum": -(2 ** 63), "maximum": 2 ** 63 - 1},
               "float": {"type": "number"}, "double": {"type": "number"}}


class FieldSchemaError(ValueError):
    """A field record the LLM engine cannot express as a JSON Schema (or a missing file)."""


def load_field_record(schema_dir: Path, name: str) -> dict:
    """The Avro record `schemas/fields/<name>.avsc` (parsed JSON), checked to be a record."""
    path = Path(schema_dir) / "fields" / f"{name}.avsc"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FieldSchemaError(f"field record {name!r}: no file {path}") from exc
    except json.JSONDecodeError as exc:
        raise FieldSchemaError(f"field record {name!r}: {path} is not JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("type") != "record" or "fields" not in record:
        raise FieldSchemaError(f"field record {name!r}: {path} is not an Avro record")
    return record


def load_field_schema(schema_dir: Path, name: str) -> dict:
    """The JSON Schema the LLM engine is given for the field record `schemas/fields/<name>.avsc`."""
    return field_schema(load_field_record(schema_dir, name))


def field_schema(avro_record: dict) -> dict:
    """What the LLM engine is given for a topic's typed fields: `json_schema(avro_record)` with
    each property's description the line the prompt says of the field (`field_docs`)."""
    schema = json_schema(avro_record)
    docs = dict(field_docs(avro_record))
    schema["properties"] = {name: {**prop, "description": docs[name]}
                            for name, prop in schema["properties"].items()}
    return schema


def json_schema(avro_record: dict) -> dict:
    """The JSON Schema of an Avro record's values: an object with every field required (a
    nullable field is present with null), no extra properties, properties in the record's
    field order (the order the LLM writes them in). A field's own `"maxLength"` attribute caps
    its free-text strings (the engine caps the others at its own default)."""
    return _type(avro_record, avro_record.get("name", "record"))


def _type(avro, where: str, max_chars: int | None = None) -> dict:
    if isinstance(avro, str):
        if avro in _PRIMITIVES:
            out = dict(_PRIMITIVES[avro])
            if out.get("type") == "string" and max_chars:
                out["maxLength"] = max_chars
            return out
        if avro == "null":
            return {"type": "null"}
        raise FieldSchemaError(f"{where}: named type reference {avro!r} is not supported")
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        if len(branches) != 1 or len(avro) != 2:
            raise FieldSchemaError(f"{where}: only [\"null\", T] unions are supported, got {avro}")
        inner = _type(branches[0], where, max_chars)
        return {"anyOf": [inner, {"type": "null"}]}
    if not isinstance(avro, dict):
        raise FieldSchemaError(f"{where}: not an Avro type: {avro!r}")
    kind = avro.get("type")
    if kind == "enum":
        return {"type": "string", "enum": list(avro["symbols"])}
    if kind == "record":
        props = {f["name"]: _grounded(f, _described(_type(f["type"], f"{where}.{f['name']}",
                                                       f.get("maxLength", max_chars)), f.get("doc")),
                                      f"{where}.{f['name']}")
                 for f in avro["fields"]}
        return {"type": "object", "properties": props, "required": list(props),
                "additionalProperties": False}
    if kind == "array":
        return {"type": "array", "items": _type(avro["items"], f"{where}[]", max_chars)}
    if isinstance(kind, (str, list)) and not avro.get("logicalType"):
        return _type(kind, where, avro.get("maxLength", max_chars))
    raise FieldSchemaError(f"{where}: Avro type {kind!r} is not supported")


def _grounded(avro_field: dict, schema: dict, where: str) -> dict:
    """`schema` marked `x-grounded` when the field says `"grounded": true`, which only a
    nullable string or number may say (else FieldSchemaError, at start-up)."""
    flag = avro_field.get("grounded", False)
    if flag is False:
        return schema
    if flag is not True:
        raise FieldSchemaError(f"{where}: \"grounded\" must be true or false, got {flag!r}")
    branches = schema.get("anyOf", [])
    kinds = sorted(b.get("type") for b in branches if b.get("type") != "null")
    if len(branches) != 2 or kinds not in (["string"], ["number"], ["integer"]) or "enum" in branches[0]:
        raise FieldSchemaError(f"{where}: a grounded field must be [\"null\", T] with T a string or "
                               "a number (int, long, float, double), so that a value the text does "
                               "not contain can become null")
    return {**schema, GROUNDED: True}


def _described(schema: dict, doc: str | None) -> dict:
    return {**schema, "description": doc} if doc else schema


def field_docs(avro_record: dict) -> list[tuple[str, str]]:
    """(field name, what to write) per field, for the prompt: the field's doc, its enum symbols
    and whether it may be null."""
    out = []
    for f in avro_record["fields"]:
        t = f["type"]
        nullable = isinstance(t, list) and "null" in t
        inner = next((b for b in t if b != "null"), t) if isinstance(t, list) else t
        kind = inner.get("type") if isinstance(inner, dict) else inner
        parts = [f.get("doc") or ""]
        if kind == "enum":
            parts.append("one of: " + ", ".join(inner["symbols"]) + ".")
            if inner.get("doc"):
                parts.append(inner["doc"])
        else:
            parts.append(f"({'number' if kind in ('double', 'float', 'int', 'long') else kind}"
                         f"{' or null' if nullable else ''})")
        out.append((f["name"], " ".join(p for p in parts if p)))
    return out
