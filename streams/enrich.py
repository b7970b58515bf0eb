"""Model output + input event -> the EnrichedEvent record (a dict shaped like
schemas/EnrichedEvent.avsc, plus `fields` where the topic declares a field record, see
serde/registry.py). Knows nothing of Kafka clients."""

from __future__ import annotations

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
                    models: list[ModelInfo], inference_ms: float) -> dict:
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
        # Typed fields (topics with a field record; the plain schema ignores the key).
        "fields": inference.fields,
    }
