"""Schemas from `schemas/`, registered or looked up in a Confluent schema registry under the
`<topic>-value` subjects, and the serializers bound to them.

An output topic whose route declares typed `fields` (an Avro record in `schemas/fields/`) gets
its own EnrichedEvent: the plain one plus a field `fields: ["null", <that record>]`, default
null (`compose_enriched`). The record name stays `io.streams.enrichment.EnrichedEvent`, so a
reader of the plain schema still reads it (it skips `fields`) and a reader of the composed one
reads old plain records (`fields` null). Topics without fields keep the plain schema.

`mock://` registries live inside one process and number schemas in registration order, so
every process registers the same subjects in the same order (the settings' order): a worker,
`streams produce` and `streams tail` then agree on ids without a registry server."""

from __future__ import annotations

import io
import json
import struct
from functools import cached_property
from pathlib import Path

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from ..errors import FatalError, RetriableError, describe
from .fields import FieldSchemaError, load_field_record


class SchemaError(RuntimeError):
    pass


def load_schema(schema_dir: Path, name: str) -> Schema:
    path = schema_dir / f"{name}.avsc"
    try:
        text = path.read_text()
        json.loads(text)
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read Avro schema {path}: {exc}") from exc
    return Schema(text, "AVRO")


FIELDS_FIELD_DOC = ("Typed fields an LLM extracted from the text, as the topic's field record "
                    "declares them; null when the event was enriched without them.")


def compose_enriched(enriched: dict, field_record: dict) -> dict:
    """EnrichedEvent with one more field, `fields: ["null", field_record]`, default null.
    Appended last and optional: BACKWARD compatible with the plain schema in both directions.
    The field record keeps its own namespace (io.streams.enrichment.fields)."""
    names = {f["name"] for f in enriched["fields"]}
    if "fields" in names:
        raise SchemaError("EnrichedEvent already has a field named 'fields'")
    return {**enriched, "fields": [*enriched["fields"], {
        "name": "fields", "type": ["null", field_record], "default": None, "doc": FIELDS_FIELD_DOC}]}


def composed_schema_text(schema_dir: Path, field_name: str) -> str:
    """The output schema of a topic with typed fields `field_name`, as registered (indented
    JSON, so the same text is also the committed `schemas/enriched/` file)."""
    enriched = json.loads(load_schema(schema_dir, "EnrichedEvent").schema_str)
    try:
        record = load_field_record(schema_dir, field_name)
    except FieldSchemaError as exc:
        raise SchemaError(str(exc)) from exc
    return json.dumps(compose_enriched(enriched, record), indent=2, ensure_ascii=False) + "\n"


def composed_schema_path(schema_dir: Path, field_name: str) -> Path:
    """Where `make schemas` writes a composed output schema, for Java code generation
    (examples/java-consumer/pom.xml) and Java readers without a registry."""
    return schema_dir / "enriched" / f"EnrichedEvent.{field_name}.avsc"


def write_composed_schemas(schema_dir: Path) -> list[Path]:
    """`make schemas`: one composed output schema per field record in schemas/fields/."""
    written = []
    for record in sorted((schema_dir / "fields").glob("*.avsc")):
        path = composed_schema_path(schema_dir, record.stem)
        path.parent.mkdir(exist_ok=True)
        path.write_text(composed_schema_text(schema_dir, record.stem))
        written.append(path)
    return written


def subject(topic: str) -> str:
    """Confluent's TopicNameStrategy."""
    return f"{topic}-value"


def registry_failure(exc: Exception, what: str) -> Exception:
    """What a failed call for the worker's own schemas means: the registry is down or slow
    (RETRY: the batch waits, /readyz says "registry"), or it refuses this worker (401/403) or
    lacks the subject the worker publishes under (404: not registered, auto-registration
    off), which no retry fixes (EXIT, what to fix in the message). Never the record's fault,
    so never a dead letter."""
    status = getattr(exc, "http_status_code", None)
    if status in (401, 403):
        return FatalError(f"the schema registry refused the credentials (HTTP {status}) while "
                          f"{what}: check STREAMS_SCHEMA_REGISTRY_AUTH")
    if status == 404:
        return FatalError(f"the schema registry does not have the schema while {what}: register it "
                          "(`make schemas` writes it) or set STREAMS_SCHEMA_AUTO_REGISTER=true")
    return RetriableError("registry", f"{what}: {describe(exc)}")


class SchemaCatalog:
    def __init__(self, registry_url: str, schema_dir: Path, input_topics: list[str],
                 output_topics: list[str], *, auto_register: bool = True, basic_auth: str | None = None,
                 output_fields: dict[str, str] | None = None, client_conf: dict | None = None,
                 copy_topics: list[str] | None = None):
        """`output_fields`: output topic -> the name of its field record (schemas/fields/);
        output topics not in it get the plain EnrichedEvent. `copy_topics`: topics that take
        redacted copies of input events (streams/redact.py), under the InputEvent schema. `client_conf`: more of the
        SchemaRegistryClient's conf (`Settings.schema_registry_config()`: TLS files, timeout)."""
        conf = {**(client_conf or {}), "url": registry_url}
        if basic_auth:
            conf["basic.auth.user.info"] = basic_auth
        self.client = SchemaRegistryClient.new_client(conf)
        self.input_schema = load_schema(schema_dir, "InputEvent")
        self.enriched_schema = load_schema(schema_dir, "EnrichedEvent")
        self.input_topics = list(input_topics)
        self.output_topics = list(output_topics)
        self.output_fields = dict(output_fields or {})
        self.copy_topics = list(copy_topics or ())
        unknown = sorted(set(self.output_fields) - set(self.output_topics))
        if unknown:
            raise SchemaError(f"field records for topics that are not outputs: {unknown}")
        # One composed schema per field record, shared by the topics that declare it.
        composed = {name: Schema(composed_schema_text(schema_dir, name), "AVRO")
                    for name in dict.fromkeys(self.output_fields.values())}
        self._output_schemas: dict[str, Schema] = {
            t: composed[self.output_fields[t]] if t in self.output_fields else self.enriched_schema
            for t in self.output_topics}
        self.auto_register = auto_register
        self._ready = False
        self._writers: dict[str, tuple[bytes, dict]] = {}  # output topic -> (wire prefix, parsed schema)
        self._parsed: dict[str, dict] = {}  # schema text -> parsed schema (fastavro)
        self._writer_schemas: dict[int, dict] = {}  # schema id -> parsed writer schema

    @classmethod
    def from_settings(cls, settings) -> "SchemaCatalog":
        # The whole client conf (url, basic auth, TLS files, timeout) from the settings.
        # The candidates' shadow outputs are output topics as any other (`Settings.shadow_routes`).
        outputs = [*settings.topics, *settings.shadow_routes()]
        return cls(settings.schema_registry_url, settings.schema_dir,
                   [r.input for r in settings.topics], [r.output for r in outputs],
                   auto_register=settings.schema_auto_register,
                   output_fields={r.output: r.fields for r in outputs if r.fields},
                   client_conf=settings.schema_registry_config(),
                   copy_topics=[r.copy_topic for r in settings.topics if r.copy_topic])

    def enriched_schema_for(self, topic: str) -> Schema:
        """The schema of `topic`'s `<topic>-value` subject: composed with the topic's field
        record, or the plain EnrichedEvent."""
        try:
            return self._output_schemas[topic]
        except KeyError:
            raise SchemaError(f"{topic} is not an output topic of this catalog") from None

    def ensure_registered(self) -> None:
        """Register (dev) or look up (production) every subject now, so a registry problem
        stops the worker at start-up rather than at the first event."""
        if self._ready:
            return
        pairs = [(t, self.input_schema) for t in self.input_topics] + \
                [(t, self._output_schemas[t]) for t in self.output_topics] + \
                [(t, self.input_schema) for t in self.copy_topics]  # last: earlier ids stay as they were
        for topic, schema in pairs:
            try:
                if self.auto_register:
                    self.client.register_schema(subject(topic), schema)
                else:
                    self.client.lookup_schema(subject(topic), schema)
            except Exception as exc:
                raise SchemaError(f"schema registry: subject {subject(topic)}: {exc}") from exc
        self._ready = True

    def register_output(self, topic: str, like: str | None = None) -> None:
        """One more output topic (a replay's --output-topic) with the schema of the output topic
        `like` (the route's own; default the plain EnrichedEvent): registered, or looked up where
        auto-registration is off, like the configured ones; encoding then finds its subject."""
        if topic not in self.output_topics:
            self.output_topics.append(topic)
            self._output_schemas[topic] = self._output_schemas[like] if like else self.enriched_schema
            self._ready = False
        self.ensure_registered()

    def _serializer(self, schema: Schema) -> AvroSerializer:
        self.ensure_registered()
        # Registered above; the serializer only looks the id up (same Schema object).
        return AvroSerializer(self.client, schema, conf={"auto.register.schemas": False})

    @cached_property
    def input_serializer(self) -> AvroSerializer:
        return self._serializer(self.input_schema)

    def _writer_for(self, topic: str) -> tuple[bytes, dict]:
        """The wire prefix (magic byte, subject's schema id) and parsed schema of an output
        topic, looked up in the registry once per topic."""
        found = self._writers.get(topic)
        if found is None:
            schema = self.input_schema if topic in self.copy_topics else self.enriched_schema_for(topic)
            self.ensure_registered()
            try:
                registered = self.client.lookup_schema(subject(topic), schema)
            except Exception as exc:  # noqa: BLE001 - sorted: never the record's fault
                raise registry_failure(exc, f"looking up subject {subject(topic)}") from exc
            parsed = self._parsed.get(schema.schema_str)
            if parsed is None:
                parsed = self._parsed[schema.schema_str] = parse_schema(json.loads(schema.schema_str))
            found = self._writers[topic] = (struct.pack(">bI", 0, registered.schema_id), parsed)
        return found

    def encode_enriched(self, record: dict, topic: str) -> bytes:
        """Confluent wire format: magic byte 0, the subject's 4-byte schema id (looked up in
        the registry once per topic), then Avro binary from fastavro with the topic's schema.
        The same bytes as an AvroSerializer of that schema (tests/serde asserts it) at a third
        of its cost per record, which spends most of its time on per-call subject and rule
        lookups. A record's `fields` is ignored on topics without a field record. A copy topic's
        record is an InputEvent (`encode_copy`)."""
        prefix, parsed = self._writer_for(topic)
        buf = io.BytesIO()
        buf.write(prefix)
        schemaless_writer(buf, parsed, record)
        return buf.getvalue()

    encode_copy = encode_enriched  # the same fast path, with the copy topic's InputEvent schema

    def encode_input(self, record: dict, topic: str) -> bytes:
        return self.input_serializer(record, SerializationContext(topic, MessageField.VALUE))

    def writer_schema(self, schema_id: int) -> dict:
        """The parsed writer schema for an id, fetched from the registry once per id."""
        parsed = self._writer_schemas.get(schema_id)
        if parsed is None:
            self.ensure_registered()
            schema = self.client.get_schema(schema_id)  # SchemaRegistryError when unknown
            if (schema.schema_type or "AVRO") != "AVRO":
                raise SchemaError(f"schema id {schema_id} is {schema.schema_type}, not AVRO")
            parsed = self._writer_schemas[schema_id] = parse_schema(json.loads(schema.schema_str))
        return parsed

    def decode(self, value: bytes, topic: str) -> dict:
        """Confluent wire format -> the record as its writer wrote it (what AvroDeserializer
        without a reader schema returns, tested), at a fifth of its cost: that one resolves the
        subject and its rules on every call. `topic` is kept for the Confluent signature."""
        if len(value) <= 5 or value[0] != 0:
            raise SerializationError(f"not Confluent Avro: {len(value)} bytes, magic byte "
                                     f"{value[0] if value else None}")
        return self.decode_body(value, self.writer_schema(int.from_bytes(value[1:5], "big")))

    @staticmethod
    def decode_body(value: bytes, writer_schema: dict) -> dict:
        """The Avro body after the 5-byte Confluent header, read with its writer schema."""
        return schemaless_reader(io.BytesIO(value[5:]), writer_schema, None)
