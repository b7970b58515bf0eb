"""The one thread that runs every model call of a worker: loading, warm-up and inference.

On CPU, torch parallelises each op over an OpenMP team, and GNU OpenMP (libgomp) keeps one team
per thread that ever started parallel work. Its workers spin between ops only while libgomp
manages no more threads than there are cores; past that they sleep and wake on a futex for every
op. A worker that warmed its models up on the main thread and ran them on another held two teams:
the LLM's many small ops per token ran ~30 % slower (SmolLM2 on 2 cores, same texts: 38.6 s on the
thread that had loaded the model, 54.9 s on another; user CPU 194 % against 124 %). Every model
call goes through this thread, whichever thread asks (the CLI's main thread, Faust's loop, the
librdkafka loop, replay), so the process keeps one team, and the models are never called
concurrently.

Being the one place model work runs, it also meters the engine's duty cycle (telemetry reads it:
`StreamMetrics.watch_engine`): `busy_seconds()` is the time spent in calls made with `infer`
(the inference calls), the running one included; loading and warm-up go through `call` and do
not count. Forward passes made inside an `infer` call report their batch fill (`batch_filled`)
to `on_batch_fill`; warm-up passes and direct calls (the bench's engine runs) report nothing."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TypeVar

T = TypeVar("T")


class InferenceThread:
    """A daemon thread that runs submitted calls one at a time (a daemon, unlike a
    ThreadPoolExecutor's worker: a forward pass that never returns must not keep the process
    from exiting after its grace period)."""

    def __init__(self, name: str = "inference"):
        self.name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # (fill, engine) of each forward pass an `infer` call makes: the telemetry's histogram.
        self.on_batch_fill: Callable[[float, str], None] | None = None
        self._busy = 0.0  # seconds of the `infer` calls that have returned
        self._busy_since: float | None = None  # perf_counter() when the running `infer` call began
        self._busy_lock = threading.Lock()

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """`fn(*args, **kwargs)` on the inference thread; its result or its exception here.
        Called from the inference thread itself, it runs at once (no deadlock)."""
        return self._submit(False, fn, args, kwargs)

    def infer(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """`call`, counted as model work: its time on the thread is busy time and its forward
        passes report their batch fill. A nested call runs inside the outer call's time."""
        return self._submit(True, fn, args, kwargs)

    def busy_seconds(self) -> float:
        """Seconds spent in `infer` calls since the thread was made, the running one included,
        so a long batch shows as busy while it runs; never decreases."""
        with self._busy_lock:
            since = self._busy_since
            return self._busy + (time.perf_counter() - since if since is not None else 0.0)

    def batch_filled(self, rows: int, capacity: int, engine: str) -> None:
        """A forward pass of `rows` rows where the engine's limits allow `capacity` at that
        length: its fill goes to `on_batch_fill`, when an `infer` call is running here."""
        listener = self.on_batch_fill
        if listener is not None and self._busy_since is not None \
                and threading.current_thread() is self._thread:
            listener(rows / max(1, capacity), engine)

    def _submit(self, counted: bool, fn: Callable[..., T], args, kwargs) -> T:
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        future: Future = Future()
        self._calls.put((future, counted, fn, args, kwargs))
        self._ensure_started()
        return future.result()

    @contextmanager
    def _busy_while(self) -> Iterator[None]:
        """Counts the block's time as busy; settled before the caller gets the result, so
        what it reads afterwards includes its own call."""
        with self._busy_lock:
            self._busy_since = time.perf_counter()
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy += time.perf_counter() - self._busy_since
                self._busy_since = None

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            future, counted, fn, args, kwargs = self._calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                with self._busy_while() if counted else nullcontext():
                    result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which decides
                future.set_exception(exc)
            else:
                future.set_result(result)


inference_thread = InferenceThread()
