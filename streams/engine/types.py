"""Plain result types of the engine: no torch, no Kafka, no Avro."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Entity:
    label: str
    text: str
    start: int  # character offset into the original text
    end: int  # exclusive
    score: float


@dataclass(frozen=True, slots=True)
class Classification:
    label: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)  # every label, best first


@dataclass(frozen=True, slots=True)
class Inference:
    entities: list[Entity]
    classification: Classification
    # Typed fields a generative model extracted (LLM engine), keyed by field name, values
    # JSON-like and valid against the topic's field record; None when the topic has none.
    fields: dict[str, object] | None = None
    # Per typed field, the probability the grammar-constrained LLM gave the value it wrote (the
    # product over that value's tokens; see streams/engine/llm.py); None without typed fields.
    field_confidence: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    task: str  # "entities" or "classification"
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class Prompt:
    """What an LLM is told for a topic besides each event's text, as the engine built it at
    start-up: the system prompt, the start of the answer the engine writes for the model, and
    the few-shot examples actually in the prompt, as (text, output) pairs (none when few-shot
    is off). The record's stamp carries digests of it (streams/stamp.py)."""

    system: str
    assistant_prefix: str
    examples: tuple[tuple[str, dict], ...] = ()


@dataclass(frozen=True, slots=True)
class LabelSet:
    """Zero-shot labels for one input topic: label -> description the text is compared to."""

    descriptions: tuple[tuple[str, str], ...]

    @classmethod
    def from_mapping(cls, mapping: dict[str, str]) -> "LabelSet":
        return cls(tuple(mapping.items()))

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.descriptions]
