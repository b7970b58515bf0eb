"""The plain records the steps hand each other: what a source took from Kafka, what the sink
produces. Shared by source, pipeline, sink and telemetry; imports none of them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)  # not frozen: made per event, and frozen costs 4x to construct
class InRecord:
    """A consumed Kafka record, whichever client read it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    # Set when the Kafka client could not hand the record out (a corrupt or lying batch):
    # the client's error. Key, value and headers are then unknown; the record is dead-lettered
    # by its coordinates.
    client_error: str | None = None


@dataclass(slots=True)  # not frozen: made per event, and frozen costs 4x to construct
class OutRecord:
    """A record to produce: an enriched event or a dead letter."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None
    # What it is: "output" (an enriched event), "copy" (a redacted copy of the input), "shadow"
    # (a route's candidate's enriched event, to its shadow topic), "dlq" (a
    # dead letter with the original bytes), "dlq_bare" (a dead letter with provenance only), and
    # the record it was made from: a refused output or dead letter is re-made from it.
    kind: str = "output"
    source: InRecord | None = None
