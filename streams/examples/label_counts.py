"""Your own agent in the enrichment app: counts the labels of `<input>.enriched` per hour.

Run it with the enrichment agent (one process, one consumer group):

    STREAMS_SOURCE=faust STREAMS_APP_MODULES='["streams.examples.label_counts"]' streams worker
    curl localhost:8080/label-counts/   # {"2026-12-02T14:00Z billing": 12, ...}

Copy it into your own package and list that module instead. The table's changelog and the
repartition topic are created by Faust where the worker creates topics (STREAMS_CREATE_TOPICS).
"""

from __future__ import annotations

from datetime import timezone

from streams.app import app, settings
from streams.serde import SchemaCatalog

catalog = SchemaCatalog.from_settings(settings)  # Confluent-framed Avro, as the worker wrote it
# "<hour> <label>" -> events; changelogged, so a restarted worker recovers it.
counts = app.Table("label-counts", key_type=str, value_type=int, default=int)


def hour_and_label(value: bytes) -> str:
    event = catalog.decode(value, "")
    when = event["source"]["timestamp"] or event["processed_at"]  # the input's Kafka time
    return f"{when.astimezone(timezone.utc):%Y-%m-%dT%H:00Z} {event['classification']['label']}"


def label_counter(output: str):
    async def count_labels(stream):
        """Re-keys each event by its hour and label (group_by: one worker owns each count),
        then counts it."""
        async for key, _ in stream.group_by(hour_and_label, name=f"{output}-hour-label").items():
            counts[key.decode() if isinstance(key, bytes) else key] += 1
    return count_labels


for route in settings.topics:  # one agent per enriched topic, like the enrichment agents
    topic = app.topic(route.output, key_serializer="raw", value_serializer="raw")
    app.agent(topic, name=f"label_counts.{route.output}")(label_counter(route.output))


@app.page("/label-counts/")
async def label_counts(web, request):
    return web.json(dict(counts.items()))
