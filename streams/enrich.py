"""Model output + input event -> the EnrichedEvent record (a dict shaped like
schemas/EnrichedEvent.avsc, plus `fields` where the topic declares a field record, see
serde/registry.py). Knows nothing of Kafka clients."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from .engine import Inference, ModelInfo
from .serde import InputEvent


@dataclass(slots=True)  # not frozen: made per event, and frozen costs 4x to construct
class SourceRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None


def enriched_record(event: InputEvent, inference: Inference, source: SourceRecord,
                    models: list[ModelInfo], inference_ms: float, redacted_text: str | None = None,
                    stamp: dict | None = None) -> dict:
    """`stamp`: the route's stamp (streams/stamp.py, made once per route at start-up and shared
    by its records, never changed); None writes null."""
    return {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "customer_id": event.customer_id,
        "occurred_at": event.occurred_at,
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset,
                   "timestamp": (datetime.fromtimestamp(source.timestamp_ms / 1000, timezone.utc)
                                 if source.timestamp_ms is not None else None)},
        "entities": [{"label": e.label, "text": e.text, "start": e.start, "end": e.end,
                      "score": e.score}
                     for e in inference.entities],
        "classification": {
            "label": inference.classification.label,
            "score": inference.classification.score,
            "scores": [{"label": k, "score": v} for k, v in inference.classification.scores.items()],
        },
        "models": [{"task": m.task, "name": m.name, "version": m.version} for m in models],
        "processed_at": datetime.now(timezone.utc),
        "inference_ms": float(inference_ms),
        # Typed fields (topics with a field record; the plain schema ignores the key) and the
        # LLM's confidence in each.
        "field_confidence": inference.field_confidence,
        # The text with personal data redacted (routes with a redaction policy; else null).
        "redacted_text": redacted_text,
        # What made the record besides the models: digests of labels, prompt, examples, fields.
        "stamp": stamp,
        "fields": inference.fields,
    }


def redacted_copy(event: InputEvent, redacted_text: str, original: bytes, topic: str, catalog) -> bytes:
    """The input event again with its text redacted, in the input's own format: Confluent Avro
    (InputEvent, under `topic`'s subject) when the input was Avro, else JSON. Only the contract's
    fields are written; keys the input schema does not know are left out, as they may hold
    personal data nobody has looked at."""
    if original[:1] == b"\x00":
        return catalog.encode_copy(event.model_dump() | {"text": redacted_text}, topic)
    return json.dumps(event.model_dump(mode="json") | {"text": redacted_text}, ensure_ascii=False).encode()
