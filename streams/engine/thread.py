"""The one thread that runs every model call of a worker: loading, warm-up and inference.

On CPU, torch parallelises each op over an OpenMP team, and GNU OpenMP (libgomp) keeps one team
per thread that ever started parallel work. Its workers spin between ops only while libgomp
manages no more threads than there are cores; past that they sleep and wake on a futex for every
op. A worker that warmed its models up on the main thread and ran them on another held two teams:
the LLM's many small ops per token ran ~30 % slower (SmolLM2 on 2 cores, same texts: 38.6 s on the
thread that had loaded the model, 54.9 s on another; user CPU 194 % against 124 %). Every model
call goes through this thread, whichever thread asks (the CLI's main thread, Faust's loop, the
librdkafka loop, replay), so the process keeps one team, and the models are never called
concurrently."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from collections.abc import Callable
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

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """`fn(*args, **kwargs)` on the inference thread; its result or its exception here.
        Called from the inference thread itself, it runs at once (no deadlock)."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        future: Future = Future()
        self._calls.put((future, fn, args, kwargs))
        self._ensure_started()
        return future.result()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            future, fn, args, kwargs = self._calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which decides
                future.set_exception(exc)


inference_thread = InferenceThread()
