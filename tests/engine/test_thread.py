"""Every model call of a worker runs on one thread (streams/engine/thread.py): on CPU a second
thread calling torch gets its own OpenMP team, and two teams on 2 cores made the LLM ~30 % slower."""

from __future__ import annotations

import threading
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
