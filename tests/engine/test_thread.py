"""Every model call of a worker runs on one thread (streams/engine/thread.py): on CPU a second
thread calling torch gets its own OpenMP team, and two teams on 2 cores made the LLM ~30 % slower."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from streams.engine import Inference, NoopEngine
from streams.engine.thread import InferenceThread, inference_thread
from streams.runtime import Runtime
from streams.serde import SchemaCatalog
from streams.settings import Settings
from streams.telemetry import Telemetry


def test_calls_from_any_thread_run_on_the_one_inference_thread():
    runner = InferenceThread("test-inference")
    seen: list[threading.Thread] = []
    runner.call(lambda: seen.append(threading.current_thread()))
    other = threading.Thread(target=runner.call, args=(lambda: seen.append(threading.current_thread()),))
    other.start()
    other.join()
    assert len(seen) == 2 and seen[0] is seen[1]
    assert seen[0].name == "test-inference" and seen[0].daemon
    assert runner.call(lambda: runner.call(lambda: 7)) == 7  # a nested call runs at once
    with pytest.raises(ZeroDivisionError):
        runner.call(lambda: 1 / 0)
    assert runner.call(threading.current_thread) is seen[0]  # the thread survived the exception


class ThreadRecordingEngine(NoopEngine):
    runs_models = True  # stands for a torch engine (the no-op engine is called in place)

    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def warm_up(self) -> float:
        self.seen.append(("warm_up", threading.current_thread()))
        return 0.0

    def infer(self, texts, labels, topic=None) -> list[Inference]:
        self.seen.append(("infer", threading.current_thread()))
        return super().infer(texts, labels, topic)


def test_the_runtime_loads_warms_and_infers_on_the_inference_thread():
    seen: list = []
    settings = Settings()
    catalog = SchemaCatalog(f"mock://thread-{uuid.uuid4().hex}", settings.schema_dir,
                            [r.input for r in settings.topics], [r.output for r in settings.topics])
    runtime = Runtime(settings, NoopEngine(), catalog, producer=None, telemetry=Telemetry.disabled(),
                      engine_factory=lambda settings, telemetry: ThreadRecordingEngine(seen))
    runtime.reload_engine()  # from this (the main) thread
    labels = runtime.labels[settings.topics[0].input]
    runtime.infer(["hello"], labels)
    from_loop = threading.Thread(target=runtime.infer, args=(["hello"], labels), name="enrichment-loop")
    from_loop.start()
    from_loop.join()
    assert [step for step, _ in seen] == ["warm_up", "infer", "infer"]
    threads = {thread for _, thread in seen}
    assert threads == {inference_thread._thread}
    assert threading.current_thread() not in threads


# The engine's duty cycle: busy time is the time inside `infer` calls only.

def test_busy_seconds_count_inference_calls_not_loading():
    runner = InferenceThread("test-busy")
    runner.call(time.sleep, 0.05)  # loading and warm-up go through `call`: not busy
    assert runner.busy_seconds() == 0.0
    runner.infer(time.sleep, 0.05)
    after_one = runner.busy_seconds()
    assert 0.05 <= after_one < 0.5  # settled before `infer` returned
    with pytest.raises(ZeroDivisionError):
        runner.infer(lambda: (time.sleep(0.03), 1 / 0))
    assert runner.busy_seconds() >= after_one + 0.03  # a failed call worked too
    # A nested call runs inside the outer one's time: counted once.
    before = runner.busy_seconds()
    runner.infer(lambda: runner.infer(time.sleep, 0.2))
    assert 0.2 <= runner.busy_seconds() - before < 0.4  # counted twice it would be >= 0.4


def test_a_running_inference_call_is_busy_while_it_runs():
    """A scrape during a long batch sees it: the counter moves before the call returns."""
    runner = InferenceThread("test-busy-running")
    started, release = threading.Event(), threading.Event()
    caller = threading.Thread(target=runner.infer, args=(lambda: (started.set(), release.wait()),))
    caller.start()
    try:
        assert started.wait(10)
        time.sleep(0.1)
        mid = runner.busy_seconds()
        assert mid >= 0.09
        time.sleep(0.05)
        assert runner.busy_seconds() >= mid + 0.04  # still rising, never falling
    finally:
        release.set()
        caller.join()
    assert runner.busy_seconds() >= mid + 0.04


def test_batch_fill_is_reported_only_inside_inference_calls():
    runner = InferenceThread("test-fill")
    fills: list = []
    runner.on_batch_fill = lambda fill, engine: fills.append((fill, engine))
    runner.call(runner.batch_filled, 8, 8, "encoder")  # a warm-up pass
    runner.batch_filled(8, 8, "encoder")  # not on the thread at all (the bench's direct runs)
    assert fills == []
    runner.infer(runner.batch_filled, 3, 4, "encoder")
    runner.infer(runner.batch_filled, 5, 0, "llm")  # a capacity of 0 counts as 1, no division error
    assert fills == [(0.75, "encoder"), (5.0, "llm")]


def test_the_runtime_counts_its_inference_as_busy_time():
    settings = Settings()
    catalog = SchemaCatalog(f"mock://busy-{uuid.uuid4().hex}", settings.schema_dir,
                            [r.input for r in settings.topics], [r.output for r in settings.topics])

    class SlowEngine(ThreadRecordingEngine):
        def infer(self, texts, labels, topic=None):
            time.sleep(0.05)
            return super().infer(texts, labels, topic)

    runtime = Runtime(settings, SlowEngine([]), catalog, producer=None, telemetry=Telemetry.disabled())
    before = inference_thread.busy_seconds()
    runtime.infer(["hello"], runtime.labels[settings.topics[0].input])
    assert inference_thread.busy_seconds() - before >= 0.05
