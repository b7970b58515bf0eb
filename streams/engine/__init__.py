"""The inference engine: models, batching, windows and device. Knows nothing of Kafka,
Faust or Avro, so it can be tested and benchmarked with no broker running."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from .classify import SequenceClassifier, ZeroShotClassifier
from .loading import (DEFAULT_CLASSIFIER, DEFAULT_NER, ModelLoadError, architecture, choose_device,
                      choose_dtype, resolve_model)
from .ner import EntityExtractor
from .types import Classification, Entity, Inference, LabelSet, ModelInfo

__all__ = ["Engine", "NoopEngine", "Entity", "Classification", "Inference", "LabelSet", "ModelInfo",
           "ModelLoadError", "DEFAULT_NER", "DEFAULT_CLASSIFIER"]


class Engine:
    """Entity extraction + classification for a batch of texts, in one call."""

    def __init__(self, extractor: EntityExtractor, classifier, models: list[ModelInfo], device,
                 load_seconds: float = 0.0):
        self.extractor = extractor
        self.classifier = classifier
        self.models = models
        self.device = device
        self.load_seconds = load_seconds

    @classmethod
    def load(cls, ner: str = DEFAULT_NER, classifier: str = DEFAULT_CLASSIFIER, *,
             cache_dir: Path, device: str = "auto", max_batch: int = 32,
             max_tokens: int = 8192, model_version: str | None = None) -> "Engine":
        started = time.perf_counter()
        dev = choose_device(device)
        dtype = choose_dtype(dev)
        ner_dir, ner_info = resolve_model(ner, "entities", cache_dir)
        cls_dir, cls_info = resolve_model(classifier, "classification", cache_dir)
        ner_arch, cls_arch = architecture(ner_dir), architecture(cls_dir)
        if not ner_arch.endswith("ForTokenClassification"):
            raise ModelLoadError(f"entity model {ner!r} is a {ner_arch}, not a token-classification model")
        try:
            extractor = EntityExtractor(ner_dir, dev, dtype, max_batch=max_batch, max_tokens=max_tokens)
            if cls_arch.endswith("ForSequenceClassification"):
                clf = SequenceClassifier(cls_dir, dev, dtype, max_batch=max_batch, max_tokens=max_tokens)
            elif "For" in cls_arch:
                raise ModelLoadError(f"classifier {classifier!r} is a {cls_arch}: use a sequence-"
                                     "classification model or a plain encoder (zero-shot)")
            else:
                clf = ZeroShotClassifier(cls_dir, dev, dtype, max_batch=max_batch, max_tokens=max_tokens)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"could not load models: {exc}") from exc
        models = [ner_info, cls_info]
        if model_version:
            models = [ModelInfo(m.task, m.name, model_version) for m in models]
        return cls(extractor, clf, models, dev, time.perf_counter() - started)

    def infer(self, texts: Sequence[str], labels: LabelSet | None) -> list[Inference]:
        if not texts:
            return []
        entities = self.extractor.extract(texts)
        classes = self.classifier.classify(texts, labels)
        return [Inference(e, c) for e, c in zip(entities, classes)]


class NoopEngine:
    """No models: empty entities and the topic's first label. Measures what the stream alone
    can carry (`streams bench` "stream ceiling"); never a default."""

    device = "none"
    load_seconds = 0.0
    models = [ModelInfo("entities", "noop", "0"), ModelInfo("classification", "noop", "0")]

    def infer(self, texts: Sequence[str], labels: LabelSet | None) -> list[Inference]:
        label = labels.labels[0] if labels and labels.descriptions else "none"
        return [Inference([], Classification(label, 1.0, {label: 1.0})) for _ in texts]
