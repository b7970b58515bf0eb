"""What the runtime asks of an engine, whichever models it runs. Every engine (the no-op one,
the encoder models, the per-topic mix with the LLM) offers all of it, trivially where a part
does not apply, so the runtime calls it without probing for attributes. No torch here."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from .types import Inference, LabelSet, ModelInfo, Prompt


@runtime_checkable
class Engine(Protocol):
    @property
    def device(self) -> object:
        """Where the models run: a torch.device, or "none" for an engine without models."""

    @property
    def load_seconds(self) -> float:
        """Seconds spent getting ready: loading, then warming up."""

    @property
    def runs_models(self) -> bool:
        """False for an engine that runs no torch: the runtime calls it in place instead of on
        the one inference thread (streams/engine/thread.py)."""

    @property
    def models(self) -> list[ModelInfo]:
        """Every model loaded, for the start-up metric and log."""

    @property
    def progress_at(self) -> float | None:
        """When the engine last made progress on a batch (time.monotonic()), for /livez to
        tell a long batch from a stuck one; None when it does not say."""

    def models_for(self, topic: str) -> list[ModelInfo]:
        """The models that produce a topic's records (its output's provenance)."""

    def prompt_for(self, topic: str) -> Prompt | None:
        """The prompt an LLM is given for a topic (its system prompt and few-shot examples, for
        the records' stamp); None where no LLM works on the topic (encoder models, no-op)."""

    def warm_up(self) -> float:
        """Run the models once at start-up; returns the seconds it took (0.0: nothing to do)."""

    def infer(self, texts: Sequence[str], labels: LabelSet | None,
              topic: str | None = None) -> list[Inference | Exception]:
        """One result per text, in order: an `Inference`, or the text's own exception (it failed
        alone while the engine works; its `reason` names the dead letter). An exception raised
        instead concerns the whole batch (the runtime splits it and retries the halves)."""

    def max_events_for(self, topic: str, budget_s: float) -> int | None:
        """Events of `topic` expected to finish within `budget_s`; None: no cap from here."""

    def close(self) -> None:
        """Release what the engine holds (threads); the models stay loaded."""
