"""Dead-letter records: the original key, value and headers, plus provenance headers in the
style of Kafka's KIP-1034, so an operator can see why and where from without the worker logs."""

from __future__ import annotations

import hashlib
import traceback
from datetime import datetime, timezone

from .errors import sanitize

PREFIX = "__streams.errors."
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})  # W3C trace context


def stack_digest(exc: BaseException | None) -> str:
    """Short stable id of where an exception came from (frames, not message)."""
    if exc is None:
        return ""
    frames = traceback.extract_tb(exc.__traceback__)
    where = "|".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.name}:{f.lineno}" for f in frames[-5:])
    return hashlib.sha1(f"{type(exc).__name__}|{where}".encode()).hexdigest()[:12]


def dlq_headers(*, original_headers, reason: str, message: str, error_class: str, topic: str,
                partition: int, offset: int, timestamp_ms: int | None, worker_id: str,
                exc: BaseException | None = None,
                trace_context: list[tuple[str, bytes]] | None = None) -> list[tuple[str, bytes]]:
    """`trace_context`: this worker's W3C `traceparent`/`tracestate` for the dead-letter record
    (tracing on); they replace the incoming ones, so a DLQ consumer continues this trace.
    Without it the original headers pass through unchanged (minus earlier provenance)."""
    headers = [(k, v if v is None or isinstance(v, bytes) else str(v).encode()) for k, v in (original_headers or [])
               if not k.startswith(PREFIX)]
    if trace_context is not None:
        headers = [(k, v) for k, v in headers if k.lower() not in TRACE_HEADERS] + list(trace_context)
    provenance = {
        "reason": reason,
        "exception.class.name": error_class,
        "exception.message": sanitize(message, 2000),
        "exception.stacktrace.digest": stack_digest(exc),
        "topic": topic,
        "partition": str(partition),
        "offset": str(offset),
        "timestamp": "" if timestamp_ms is None else str(timestamp_ms),
        "worker.id": worker_id,
        "failed.at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }
    return headers + [(PREFIX + k, v.encode()) for k, v in provenance.items()]
