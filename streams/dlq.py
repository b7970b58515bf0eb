"""Dead-letter records: the original key, value and headers, plus provenance headers in the
style of Kafka's KIP-1034, so an operator can see why and where from without the worker logs."""

from __future__ import annotations

import hashlib
import traceback
from datetime import datetime, timezone
from typing import Callable

from .errors import sanitize
from .records import InRecord, OutRecord

PREFIX = "__streams.errors."
OMITTED = PREFIX + "omitted"  # what a bare dead letter left out of the original
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


def no_headers(rec: InRecord) -> list[tuple[str, bytes]]:
    return []


def dead_letter(rec: InRecord, topic: str, reason: str, message: str, error_class: str, *,
                worker_id: str, fits: Callable[[OutRecord], bool], exc: BaseException | None = None,
                more: Callable[[InRecord], list[tuple[str, bytes]]] = no_headers,
                trace_context: list[tuple[str, bytes]] | None = None, bare: bool = False) -> OutRecord:
    """The dead letter of one input record, for the DLQ `topic`: its key, bytes and headers plus
    provenance, or, when that would not `fit` the producer's limit (or `bare`), provenance alone
    with `__streams.errors.omitted` naming what was left out: the original stays in the input
    topic at the coordinates the headers give. `more(rec)`: headers added (replay markers)."""
    def provenance(original_headers) -> list[tuple[str, bytes]]:
        return dlq_headers(original_headers=original_headers, reason=reason, message=message,
                           error_class=error_class, topic=rec.topic, partition=rec.partition,
                           offset=rec.offset, timestamp_ms=rec.timestamp_ms, worker_id=worker_id,
                           exc=exc, trace_context=trace_context)

    if rec.client_error is not None:
        return OutRecord(topic, None, b"", [*provenance(rec.headers), (OMITTED, b"key,value,headers"),
                                            *more(rec)], "dlq_bare", rec)
    out = OutRecord(topic, rec.key, rec.value or b"", [*provenance(rec.headers), *more(rec)], "dlq", rec)
    if not bare and fits(out):
        return out
    key = rec.key if rec.key is not None and len(rec.key) <= 1024 else None
    omitted = "value,headers" if key is not None or rec.key is None else "key,value,headers"
    return OutRecord(topic, key, b"", [*provenance([]), (OMITTED, omitted.encode()), *more(rec)],
                     "dlq_bare", rec)
