"""Per topic, which engine does what: entities and label from the encoder models or the LLM,
typed fields from the LLM. One `infer` for the pipeline whatever the mix; an engine a
configuration does not use is not loaded."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .protocol import Engine
from .types import Classification, Inference, LabelSet, ModelInfo, Prompt

if TYPE_CHECKING:
    from .llm import LLMEngine

NO_CLASSIFICATION = Classification("none", 1.0, {"none": 1.0})


@dataclass(frozen=True)
class TopicPlan:
    topic: str
    labels: LabelSet
    entities_from: str  # "encoder" | "llm"
    label_from: str  # "encoder" | "llm"
    fields: dict | None  # JSON Schema of the typed fields (from the LLM), or None

    @property
    def uses_encoder(self) -> bool:
        return self.entities_from == "encoder" or self.label_from == "encoder"

    @property
    def uses_llm(self) -> bool:
        return self.entities_from == "llm" or self.label_from == "llm" or self.fields is not None


class TopicEngines:
    """The encoder engine (or None), the LLM engine (or None) and each topic's plan. `infer`
    returns, per text, an `Inference` or the text's own exception (an LLM output cut off by the
    token cap, say), which the pipeline dead-letters with that exception's `reason`. An
    exception raised instead concerns the whole batch (Runtime.infer splits and retries)."""

    def __init__(self, plans: dict[str, TopicPlan], encoder: Engine | None = None,
                 llm: LLMEngine | None = None):
        self.plans = plans
        self.encoder = encoder
        self.llm = llm
        self.device = llm.device if llm is not None else encoder.device if encoder is not None else "none"
        self.load_seconds = (encoder.load_seconds if encoder is not None else 0.0) + \
            (llm.load_seconds if llm is not None else 0.0)

    @property
    def runs_models(self) -> bool:
        return self.llm is not None or (self.encoder is not None and self.encoder.runs_models)

    @property
    def models(self) -> list[ModelInfo]:
        out = list(self.encoder.models) if self.encoder is not None else []
        if self.llm is not None:
            out.append(self.llm.info)
        return out

    def models_for(self, topic: str) -> list[ModelInfo]:
        """The models that produced a topic's records: one entry per task."""
        plan = self.plans[topic]
        encoder = {m.task: m for m in self.encoder.models} if self.encoder is not None else {}
        llm = self.llm.info if self.llm is not None else None

        def of(task: str, source: str) -> list[ModelInfo]:
            if source == "llm":
                return [ModelInfo(task, llm.name, llm.version)]
            return [encoder[task]] if task in encoder else []

        out = of("entities", plan.entities_from) + of("classification", plan.label_from)
        if plan.fields is not None:
            out += of("fields", "llm")
        return out

    def prompt_for(self, topic: str) -> Prompt | None:
        """The LLM's prompt for a topic that uses it (as prepared at start-up); else None."""
        plan = self.plans.get(topic)
        if plan is None or not plan.uses_llm or self.llm is None:
            return None
        return self.llm.prompt_for(topic)

    def max_events_for(self, topic: str, budget_s: float) -> int | None:
        """Events of `topic` the LLM is expected to finish within `budget_s`, from its measured
        time per event; None when the topic does not use the LLM (no cap from here)."""
        plan = self.plans.get(topic)
        if plan is None or not plan.uses_llm or self.llm is None:
            return None
        return self.llm.max_events(topic, budget_s)

    @property
    def progress_at(self) -> float | None:
        """When the LLM last made progress (time.monotonic()); None without an LLM."""
        return self.llm.progress_at if self.llm is not None else None

    def warm_up(self) -> float:
        started = time.perf_counter()
        if self.encoder is not None:
            self.encoder.warm_up()
        if self.llm is not None:
            self.llm.warm_up()
        seconds = time.perf_counter() - started
        self.load_seconds += seconds
        return seconds

    def infer(self, texts: Sequence[str], labels: LabelSet | None, topic: str | None = None) -> list:
        if not texts:
            return []
        plan = self.plans[topic]
        encoded = self.encoder.infer(texts, labels, topic) if plan.uses_encoder else None
        generated = self.llm.generate(texts, topic) if plan.uses_llm else None
        out: list = []
        for i in range(len(texts)):
            gen = generated[i] if generated is not None else None
            if isinstance(gen, Exception):
                out.append(gen)
                continue
            enc = encoded[i] if encoded is not None else None
            entities = gen.entities if plan.entities_from == "llm" else enc.entities
            label = gen.classification if plan.label_from == "llm" else enc.classification
            typed = plan.fields is not None
            out.append(Inference(entities, label or NO_CLASSIFICATION, gen.fields if typed else None,
                                 gen.field_confidence if typed else None))
        return out

    def close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()
