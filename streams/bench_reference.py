"""The obvious code, for `streams bench` to race against: a plain confluent-kafka loop.

consume(32) -> transformers pipelines at batch 32 on the same two models as the worker (Rampart
NER with aggregation "first", all-MiniLM-L6-v2 mean-pooled and compared with the label
descriptions) -> produce one JSON result per event -> flush (acks=all) -> commit. At-least-once,
like the worker. No bucketing, no micro-batching, no schemas: what a first version looks like.

    STREAMS_KAFKA_BOOTSTRAP=... STREAMS_APP_ID=group python -m streams.bench_reference

Runs until killed. `streams bench` launches it as a subprocess and times it exactly like the
worker: process launch to the first and to the last output read back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer
from transformers import pipeline

from streams.engine.loading import resolve_model
from streams.settings import SUPPORT_TICKET_LABELS

TOPIC = "support.tickets"
BATCH = 32


def main() -> None:
    cache = Path(os.environ.get("STREAMS_MODEL_CACHE", Path.home() / ".cache" / "streams" / "models"))
    ner_dir, _ = resolve_model("rampart", "entities", cache)  # the worker's models, same files
    minilm_dir, _ = resolve_model("all-minilm-l6-v2", "classification", cache)
    ner = pipeline("token-classification", model=str(ner_dir), aggregation_strategy="first")
    embed = pipeline("feature-extraction", model=str(minilm_dir),
                     tokenize_kwargs={"truncation": True, "max_length": 256})

    def vectors(texts: list[str]) -> np.ndarray:
        vecs = np.stack([np.asarray(o[0]).mean(axis=0) for o in embed(texts, batch_size=BATCH)])
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    labels = list(SUPPORT_TICKET_LABELS)
    label_vecs = vectors(list(SUPPORT_TICKET_LABELS.values()))

    bootstrap = os.environ.get("STREAMS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    consumer = Consumer({"bootstrap.servers": bootstrap,
                         "group.id": os.environ.get("STREAMS_APP_ID", "reference"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": int(float(os.environ.get("STREAMS_KAFKA_SESSION_TIMEOUT_S", "10")) * 1000)})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    consumer.subscribe([TOPIC])
    while True:
        messages = [m for m in consumer.consume(BATCH, 1.0) if not m.error()]
        if not messages:
            continue
        events = [json.loads(m.value()) for m in messages]
        texts = [e["text"] for e in events]
        entities = ner(texts, batch_size=BATCH)
        best = (vectors(texts) @ label_vecs.T).argmax(axis=1)
        for m, event, found, label in zip(messages, events, entities, best):
            producer.produce(f"{TOPIC}.enriched", key=m.key(), value=json.dumps({
                "event_id": event["event_id"], "label": labels[label],
                "entities": [{"label": e["entity_group"], "start": int(e["start"]), "end": int(e["end"]),
                              "score": float(e["score"])} for e in found]}).encode())
        producer.flush()
        consumer.commit(asynchronous=False)


if __name__ == "__main__":
    main()
