"""A Runtime with no broker (its producer a stand-in: enrich_records never sends, and a real
librdkafka producer would log connection errors all through the run), the no-op
engine that fails on cue, and telemetry objects with in-memory span exporters and metric
readers, injected per test (the OTel global providers are never touched)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Sequence

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streams.engine import LabelSet, NoopEngine
from streams.records import InRecord
from streams.runtime import Runtime
from streams.serde import SchemaCatalog
from streams.settings import Settings
from streams.telemetry import Telemetry

TOPIC = "orders.notes"
POISON = "<poison>"
GROUP = "test-group"


class PoisonableEngine(NoopEngine):
    """The no-op engine, except that any batch holding a poisoned text raises."""

    def infer(self, texts: Sequence[str], labels: LabelSet | None, topic: str | None = None):
        if any(POISON in t for t in texts):
            raise RuntimeError("cannot infer this batch")
        return super().infer(texts, labels, topic)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(kafka_bootstrap="127.0.0.1:1", worker_id="test-worker", app_id=GROUP,
                    schema_registry_url=f"mock://telemetry-{uuid.uuid4().hex}")


class NoProducer:
    retrying = None

    def __init__(self, max_message_bytes: int = 1_000_000):
        self.max_message_bytes = max_message_bytes

    def fits(self, record) -> bool:
        return True


@pytest.fixture(scope="session")
def base_runtime(settings) -> Runtime:
    catalog = SchemaCatalog.from_settings(settings)
    catalog.ensure_registered()
    return Runtime(settings, PoisonableEngine(), catalog, NoProducer(), telemetry=Telemetry.disabled(GROUP))


@dataclass
class Captured:
    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader


@pytest.fixture
def captured() -> Captured:
    """Tracing and metrics on, into memory (plus the Prometheus registry)."""
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = Telemetry.create(service_name="streams-test", group=GROUP,
                                 span_processors=[SimpleSpanProcessor(spans)], metric_readers=[reader])
    yield Captured(telemetry, spans, reader)
    telemetry.shutdown()


@pytest.fixture
def runtime(base_runtime, captured) -> Runtime:
    """The shared runtime, holding this test's telemetry."""
    previous = base_runtime.telemetry
    base_runtime.telemetry = captured.telemetry
    yield base_runtime
    base_runtime.telemetry = previous


def traceparent(trace_id: int, span_id: int, sampled: bool = True) -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}".encode()


def event(event_id: str, text: str = "please leave the parcel at the door") -> bytes:
    return json.dumps({"event_id": event_id, "text": text}).encode()


def record(offset: int, value: bytes | None, headers=(), partition: int = 0,
           timestamp_ms: int | None = None, key: bytes | None = b"key") -> InRecord:
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000) - 1500
    return InRecord(TOPIC, partition, offset, timestamp_ms, key, value, list(headers))
