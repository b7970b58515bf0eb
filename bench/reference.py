"""The obvious code, for `streams bench` to race against: a plain confluent-kafka loop.

consume(32) -> transformers pipelines at batch 32 on the same two models as the worker (Rampart
NER with aggregation "first", all-MiniLM-L6-v2 mean-pooled and compared with the label
descriptions) -> produce one JSON result per event -> flush (acks=all) -> commit. At-least-once,
like the worker. No bucketing, no micro-batching, no schemas: what a first version looks like.

    STREAMS_KAFKA_BOOTSTRAP=... STREAMS_APP_ID=group python bench/reference.py

Runs until killed. `streams bench` launches it as a subprocess and times it exactly like the
worker: process launch to the first and to the last output read back. Its settings are the
worker's (`Settings`): the bootstrap servers, the group (STREAMS_APP_ID; "reference" when
unset), the session timeout and the model cache."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # python bench/reference.py: the repository
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # root on the path, not bench/

import json  # noqa: E402

import numpy as np  # noqa: E402
from confluent_kafka import Consumer, Producer  # noqa: E402
from transformers import pipeline  # noqa: E402

from streams.engine.loading import resolve_model  # noqa: E402
from streams.settings import SUPPORT_TICKET_LABELS, Settings  # noqa: E402

TOPIC = "support.tickets"
BATCH = 32


def main() -> None:
    settings = Settings()
    cache = settings.model_cache
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

    bootstrap = settings.kafka_bootstrap
    consumer = Consumer({"bootstrap.servers": bootstrap,
                         "group.id": settings.app_id if "app_id" in settings.model_fields_set else "reference",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": int(settings.kafka_session_timeout_s * 1000)})
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
