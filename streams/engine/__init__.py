"""The inference engine: models, batching, windows and device. Knows nothing of Kafka,
Faust or Avro, so it can be tested and benchmarked with no broker running.

Every engine offers the `Engine` protocol (streams.engine.protocol). Importing this package
does not import torch: `EncoderEngine` (streams.engine.encoder) is imported when first named,
so the Faust app (`faust -A streams.app agents`, the agent's consumer joining its group while
the models load) starts without paying torch's import."""

from __future__ import annotations

from typing import Sequence

from .loading import DEFAULT_CLASSIFIER, DEFAULT_NER, ModelLoadError
from .protocol import Engine
from .types import Classification, Entity, Inference, LabelSet, ModelInfo, Prompt

__all__ = ["Engine", "EncoderEngine", "NoopEngine", "Entity", "Classification", "Inference", "LabelSet",
           "ModelInfo", "Prompt", "ModelLoadError", "DEFAULT_NER", "DEFAULT_CLASSIFIER"]


def __getattr__(name: str):
    if name in ("EncoderEngine", "quantize_int8"):
        from . import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class NoopEngine:
    """No models: empty entities and the topic's first label. Measures what the stream alone
    can carry (`streams bench` "stream ceiling"); never a default."""

    device = "none"
    load_seconds = 0.0
    runs_models = False  # called in place: no torch, so no need for the inference thread
    progress_at = None
    models = [ModelInfo("entities", "noop", "0"), ModelInfo("classification", "noop", "0")]

    def models_for(self, topic: str) -> list[ModelInfo]:
        return self.models

    def prompt_for(self, topic: str) -> Prompt | None:
        return None

    def warm_up(self) -> float:
        return 0.0

    def infer(self, texts: Sequence[str], labels: LabelSet | None,
              topic: str | None = None) -> list[Inference]:
        label = labels.labels[0] if labels and labels.descriptions else "none"
        result = Inference([], Classification(label, 1.0, {label: 1.0}))  # immutable: shared
        return [result] * len(texts)

    def max_events_for(self, topic: str, budget_s: float) -> int | None:
        return None

    def close(self) -> None:
        pass
