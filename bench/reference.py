"""The obvious code, for `streams bench` to race against: a plain confluent-kafka loop.

consume(32) -> the Rampart NER through its transformers pipeline at batch 32 (aggregation
"first") and all-MiniLM-L6-v2 called directly (one padded forward pass per batch, mean pooling,
cosine with the label descriptions) -> produce one JSON result per event -> flush (acks=all) ->
commit. At-least-once, like the worker. No bucketing, no micro-batching, no schemas, fp32 on CPU
(fp16 on a GPU): what a good engineer writes in an afternoon (`ReferenceModels`, which the bench
also times alone, without Kafka).

    STREAMS_KAFKA_BOOTSTRAP=... STREAMS_APP_ID=group python bench/reference.py

Runs until killed; prints "ready" once its models are loaded and its consumer has partitions.
`streams bench` launches it as a subprocess and times it exactly like the worker: process launch
to ready, to the first and to the last output read back. Its settings are the worker's
(`Settings`): the bootstrap servers, the group (STREAMS_APP_ID; "reference" when unset), the
session timeout and the model cache."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # python bench/reference.py: the repository
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # root on the path, not bench/

import json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer, pipeline  # noqa: E402

from streams.engine.loading import resolve_model  # noqa: E402
from streams.settings import SUPPORT_TICKET_LABELS, Settings  # noqa: E402

TOPIC = "support.tickets"
BATCH = 32


class ReferenceModels:
    """The two models as a first version calls them: the NER pipeline, MiniLM's forward pass."""

    def __init__(self, ner_dir: Path, minilm_dir: Path, labels: dict[str, str], device: str | None = None):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.ner = pipeline("token-classification", model=str(ner_dir), aggregation_strategy="first",
                            device=device, dtype=dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
        self.model = AutoModel.from_pretrained(minilm_dir, dtype=dtype).to(device).eval()
        self.device = device
        self.labels = list(labels)
        self.label_vectors = self.embed(list(labels.values()))

    @classmethod
    def built_in(cls, cache: Path, labels: dict[str, str]) -> "ReferenceModels":
        """The worker's default models, the same files."""
        ner_dir, _ = resolve_model("rampart", "entities", cache)
        minilm_dir, _ = resolve_model("all-minilm-l6-v2", "classification", cache)
        return cls(ner_dir, minilm_dir, labels)

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> np.ndarray:
        inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=256,
                                return_tensors="pt").to(self.device)
        hidden = self.model(**inputs).last_hidden_state.float()
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        vectors = ((hidden * mask).sum(1) / mask.sum(1)).cpu().numpy()
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def entities(self, texts: list[str]) -> list[list[dict]]:
        return self.ner(texts, batch_size=BATCH)

    def classify(self, texts: list[str]) -> list[str]:
        best = (self.embed(texts) @ self.label_vectors.T).argmax(axis=1)
        return [self.labels[i] for i in best]


def main() -> None:
    from confluent_kafka import Consumer, Producer  # here: the GPU bench imports this module without it

    settings = Settings()
    models = ReferenceModels.built_in(settings.model_cache, SUPPORT_TICKET_LABELS)
    bootstrap = settings.kafka_bootstrap
    consumer = Consumer({"bootstrap.servers": bootstrap,
                         "group.id": settings.app_id if "app_id" in settings.model_fields_set else "reference",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": int(settings.kafka_session_timeout_s * 1000)})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})

    def assigned(consumer, partitions) -> None:
        print("ready", flush=True)

    consumer.subscribe([TOPIC], on_assign=assigned)
    while True:
        messages = [m for m in consumer.consume(BATCH, 1.0) if not m.error()]
        if not messages:
            continue
        events = [json.loads(m.value()) for m in messages]
        texts = [e["text"] for e in events]
        entities = models.entities(texts)
        labels = models.classify(texts)
        for m, event, found, label in zip(messages, events, entities, labels):
            producer.produce(f"{TOPIC}.enriched", key=m.key(), value=json.dumps({
                "event_id": event["event_id"], "label": label,
                "entities": [{"label": e["entity_group"], "start": int(e["start"]), "end": int(e["end"]),
                              "score": float(e["score"])} for e in found]}).encode())
        producer.flush()
        consumer.commit(asynchronous=False)


if __name__ == "__main__":
    main()
