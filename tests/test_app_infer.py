"""Runtime.infer: a failing batch is split in halves and retried, so only the events that still
fail alone become InferenceFailure (dead-lettered as inference_error); their neighbours are
enriched, in order.

The real engine cannot be made to fail on cue, so a fake one stands in. `Runtime.__init__` is
skipped by a subclass that sets only `engine`, the one attribute `infer` reads. The method under
test, and its recursion through `self.infer`, are the real ones."""

from __future__ import annotations

import importlib
import math
from typing import Sequence

import pytest

from streams.errors import RetriableError
from streams.engine import Classification, Inference, LabelSet, NoopEngine
from streams.runtime import PROBE_TEXT, InferenceFailure, Runtime

POISON = "<poison>"
LABELS = LabelSet.from_mapping({"billing": "a charge", "delivery": "a parcel"})


class EngineOnlyRuntime(Runtime):
    def __init__(self, engine):  # noqa: D107 - see the module docstring
        self.engine = engine


class FakeEngine(NoopEngine):
    """Echoes each text back as its classification label, so order can be checked; raises
    `exc_type` for any batch that `fails(batch)` says is bad. Records every call."""

    runs_models = True  # on the inference thread, as a torch engine

    def __init__(self, fails, exc_type: type[BaseException] = RuntimeError):
        self.fails = fails
        self.exc_type = exc_type
        self.calls: list[tuple[list[str], bool]] = []

    def infer(self, texts: Sequence[str], labels: LabelSet | None, topic: str | None = None) -> list[Inference]:
        batch = list(texts)
        failed = self.fails(batch)
        self.calls.append((batch, failed))
        if failed:
            raise self.exc_type(f"cannot infer a batch of {len(batch)}")
        return [Inference([], Classification(t, 1.0, {t: 1.0})) for t in batch]


def contains_poison(batch: list[str]) -> bool:
    return any(POISON in t for t in batch)


@pytest.fixture
def freed(monkeypatch) -> list[int]:
    """Counts the accelerator-memory release that precedes every retry."""
    calls: list[int] = []
    home = importlib.import_module(Runtime.infer.__module__)  # wherever Runtime lives now
    monkeypatch.setattr(home, "_free_accelerator_memory", lambda: calls.append(1))
    return calls


def texts_with_poison_at(n: int, *poisoned: int) -> list[str]:
    return [f"{POISON} text {i}" if i in poisoned else f"text {i}" for i in range(n)]


def assert_results(texts: list[str], results: list, poisoned: set[int], exc_type) -> None:
    assert len(results) == len(texts)
    for i, (text, result) in enumerate(zip(texts, results)):
        if i in poisoned:
            assert isinstance(result, InferenceFailure), (i, result)
            assert isinstance(result.exc, exc_type)
        else:
            assert isinstance(result, Inference), (i, result)
            assert result.classification.label == text  # the right result at the right index


@pytest.mark.parametrize("exc_type", [RuntimeError, ValueError, MemoryError], ids=lambda e: e.__name__)
def test_one_poisoned_text_in_eight_fails_alone(exc_type, freed):
    texts = texts_with_poison_at(8, 5)
    engine = FakeEngine(contains_poison, exc_type)
    results = EngineOnlyRuntime(engine).infer(texts, LABELS)

    assert_results(texts, results, {5}, exc_type)
    assert sum(isinstance(r, Inference) for r in results) == 7
    # Every good text was inferred successfully exactly once; the poisoned one never was.
    succeeded = [t for batch, failed in engine.calls if not failed for t in batch if t != PROBE_TEXT]
    assert sorted(succeeded) == sorted(t for i, t in enumerate(texts) if i != 5)
    # Bisection: the whole batch, then two halves per level down to the single bad text; then
    # one probe text, which passes: the failure is the event's, not the engine's.
    assert len(engine.calls) <= 2 * math.ceil(math.log2(len(texts))) + 2
    assert engine.calls[-1] == ([PROBE_TEXT], False)
    assert len(freed) == sum(failed for _, failed in engine.calls)  # memory freed before each retry


def test_torch_out_of_memory_is_handled_like_any_failure(freed):
    torch = pytest.importorskip("torch")
    texts = texts_with_poison_at(8, 2)
    engine = FakeEngine(contains_poison, torch.cuda.OutOfMemoryError)
    results = EngineOnlyRuntime(engine).infer(texts, LABELS)
    assert_results(texts, results, {2}, torch.cuda.OutOfMemoryError)


def test_out_of_memory_on_large_batches_only_loses_nothing(freed):
    """Out of memory because the batch is too big, not because of any event: the halves fit,
    so every event is enriched and none is dead-lettered."""
    texts = texts_with_poison_at(8)
    engine = FakeEngine(lambda batch: len(batch) > 2, MemoryError)
    results = EngineOnlyRuntime(engine).infer(texts, LABELS)
    assert_results(texts, results, set(), MemoryError)
    assert max(len(b) for b, failed in engine.calls if not failed) == 2


@pytest.mark.parametrize("n, poisoned", [
    (8, {0, 7}),  # both ends
    (8, {3, 4}),  # across the first split
    (7, {6}),  # odd length
    (8, set(range(8))),  # every text
    (1, {0}),  # a batch of one
    (1, set()),
    (5, set()),
])
def test_several_or_no_poisoned_texts(n, poisoned, freed):
    texts = texts_with_poison_at(n, *poisoned)
    engine = FakeEngine(contains_poison, ValueError)
    results = EngineOnlyRuntime(engine).infer(texts, LABELS)
    assert_results(texts, results, poisoned, ValueError)
    if not poisoned:
        assert len(engine.calls) == 1 and not freed


def test_an_empty_batch_needs_no_inference(freed):
    assert EngineOnlyRuntime(FakeEngine(contains_poison)).infer([], LABELS) == []


def test_an_interrupt_is_not_swallowed(freed):
    """Only Exceptions are contained to their events; KeyboardInterrupt/SystemExit still stop."""
    engine = FakeEngine(contains_poison, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        EngineOnlyRuntime(engine).infer(texts_with_poison_at(4, 1), LABELS)


def test_an_engine_that_fails_on_a_probe_text_too_is_broken_not_the_events(freed):
    """A sticky accelerator error fails every text: no event is dead-lettered; the batch is
    handed back to the worker as a dependency failure (it reloads the models, then retries)."""
    engine = FakeEngine(lambda batch: True, RuntimeError)
    with pytest.raises(RetriableError) as raised:
        EngineOnlyRuntime(engine).infer(texts_with_poison_at(4, 1), LABELS)
    assert raised.value.dependency == "accelerator"
    assert engine.calls[-1] == ([PROBE_TEXT], True)
