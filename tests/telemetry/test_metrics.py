"""Metrics of enrich_records and Runtime.load, read back with an InMemoryMetricReader and from
the Prometheus text exposition."""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from streams.pipeline import enrich_records
from streams.runtime import Runtime
from streams.telemetry import Telemetry

from .conftest import GROUP, POISON, TOPIC, NoProducer, event, record

P = "messaging.destination.partition.id"
D = "messaging.destination.name"


def points(reader: InMemoryMetricReader) -> dict[str, list]:
    data = reader.get_metrics_data()
    found: dict[str, list] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            assert sm.scope.name == "streams"
            for metric in sm.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def by_attrs(pts, *keys) -> dict:
    return {tuple(p.attributes.get(k) for k in keys): p for p in pts}


def mixed_batch(now_ms: int):
    return [
        record(1, event("a"), partition=0, timestamp_ms=now_ms - 2000),
        record(2, event("b"), partition=0, timestamp_ms=now_ms - 2000),
        record(3, b"not json", partition=0, timestamp_ms=now_ms - 2000),
        record(4, None, partition=0, timestamp_ms=now_ms - 2000),  # tombstone
        record(5, event("c"), partition=1, timestamp_ms=now_ms - 4000),
        record(6, event("d", f"{POISON}!"), partition=1, timestamp_ms=now_ms - 4000),
        record(7, b'{"event_id": "e"}', partition=1, timestamp_ms=now_ms - 4000),  # no text
        record(8, b"", partition=1, timestamp_ms=now_ms - 4000),
    ]


def test_counts_per_partition_and_reason(runtime, settings, captured):
    now_ms = int(time.time() * 1000)
    result = enrich_records(runtime, settings.route(TOPIC), mixed_batch(now_ms))
    assert (result.enriched, result.dead, result.tombstones) == (3, 4, 1)
    found = points(captured.metrics)

    consumed = by_attrs(found["streams.events.consumed"], D, P)
    assert {k: p.value for k, p in consumed.items()} == {(TOPIC, "0"): 4, (TOPIC, "1"): 4}
    enriched = by_attrs(found["streams.events.enriched"], D, P)
    assert {k: p.value for k, p in enriched.items()} == {(TOPIC, "0"): 2, (TOPIC, "1"): 1}
    tombstones = by_attrs(found["streams.events.tombstones"], D, P)
    assert {k: p.value for k, p in tombstones.items()} == {(TOPIC, "0"): 1}
    dead = by_attrs(found["streams.events.dead_lettered"], P, "reason")
    assert {k: p.value for k, p in dead.items()} == {
        ("0", "invalid_json"): 1, ("1", "inference_error"): 1, ("1", "missing_field"): 1,
        ("1", "empty_value"): 1}
    assert all(p.attributes[D] == TOPIC for p in dead.values())

    (size,) = found["streams.batch.size"]
    assert (size.count, size.sum, size.attributes) == (1, 8, {D: TOPIC})
    (inference,) = found["streams.inference.duration"]
    assert inference.count == 1 and 0 <= inference.sum == pytest.approx(result.inference_ms / 1000)
    (latency,) = found["streams.event.latency"]
    assert latency.count == 7  # every record but the tombstone
    assert latency.min == pytest.approx(2.0, abs=1.0) and latency.max == pytest.approx(4.0, abs=1.0)
    assert latency.sum == pytest.approx(3 * 2.0 + 4 * 4.0, abs=7 * 1.0)


def test_counts_accumulate_over_batches_and_skip_missing_timestamps(runtime, settings, captured):
    route = settings.route(TOPIC)
    enrich_records(runtime, route, [record(1, event("a")), record(2, event("b"))])
    enrich_records(runtime, route, [InRecordNoTs(3)])
    enrich_records(runtime, route, [])
    found = points(captured.metrics)
    assert sum(p.value for p in found["streams.events.consumed"]) == 3
    assert sum(p.value for p in found["streams.events.enriched"]) == 3
    assert "streams.events.dead_lettered" not in found
    (size,) = found["streams.batch.size"]
    assert (size.count, size.sum) == (2, 3)  # an empty batch records nothing
    (latency,) = found["streams.event.latency"]
    assert latency.count == 2  # the record without a timestamp has no latency


def InRecordNoTs(offset):  # noqa: N802 - reads like a constructor in the test above
    from streams.records import InRecord
    return InRecord(TOPIC, 0, offset, None, None, event(f"x{offset}"), [])


def test_metrics_recorded_with_tracing_off(runtime, settings):
    reader = InMemoryMetricReader()
    runtime.telemetry = Telemetry.create(group=GROUP, metric_readers=[reader], prometheus=False)
    assert not runtime.telemetry.tracing_enabled
    enrich_records(runtime, settings.route(TOPIC), [record(1, event("a")), record(2, b"x")])
    found = points(reader)
    assert sum(p.value for p in found["streams.events.consumed"]) == 2
    assert sum(p.value for p in found["streams.events.dead_lettered"]) == 1


def test_worker_loop_api(captured):
    telemetry = captured.telemetry
    telemetry.add_in_flight(10, TOPIC, 0)
    telemetry.add_in_flight(5, TOPIC, 1)
    telemetry.add_in_flight(-4, TOPIC, 0)
    telemetry.add_in_flight(0, TOPIC, 0)
    telemetry.record_produce(TOPIC, 0.25)
    telemetry.record_lag(TOPIC, 1, 42)
    telemetry.record_lag(TOPIC, 1, 40)
    found = points(captured.metrics)
    in_flight = by_attrs(found["streams.events.in_flight"], P)
    assert {k: p.value for k, p in in_flight.items()} == {("0",): 6, ("1",): 5}
    (produce,) = found["streams.produce.duration"]
    assert (produce.count, produce.sum) == (1, 0.25)
    (lag,) = found["streams.consumer.lag"]
    assert (lag.value, lag.attributes[P]) == (40, "1")


def test_runtime_load_records_the_model_load(settings, captured):
    noop = settings.model_copy(update={"engine": "noop"})
    runtime = Runtime.load(noop, telemetry=captured.telemetry, producer=NoProducer())  # no broker here
    assert runtime.telemetry is captured.telemetry
    (load,) = points(captured.metrics)["streams.model.load.duration"]
    assert load.value == 0.0
    assert load.attributes["streams.models"] == "entities=noop@0,classification=noop@0"
    assert load.attributes["streams.device"] == "none"


def test_prometheus_text(runtime, settings, captured):
    enrich_records(runtime, settings.route(TOPIC), [record(1, event("a"), partition=3), record(2, b"x", partition=3)])
    captured.telemetry.add_in_flight(7, TOPIC)
    body, content_type = captured.telemetry.prometheus_text()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert 'streams_events_consumed_total{messaging_destination_name="orders.notes",' \
           'messaging_destination_partition_id="3"' in text
    assert 'reason="invalid_json"' in text
    line = next(ln for ln in text.splitlines() if ln.startswith("streams_events_dead_lettered_total{"))
    assert line.endswith(" 1.0")
    assert "streams_event_latency_seconds_bucket{" in text
    assert "streams_inference_duration_seconds_count{" in text
    assert "streams_batch_size_bucket{" in text
    assert any(ln.startswith("streams_events_in_flight{") and ln.endswith(" 7.0") for ln in text.splitlines())
    assert 'service_name="streams-test"' in text  # target_info


def test_prometheus_on_by_default_and_empty_when_sdk_disabled(monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    telemetry = Telemetry.from_environment("streams-test", GROUP)
    telemetry.add_in_flight(3, TOPIC)
    body, _ = telemetry.prometheus_text()
    assert b"streams_events_in_flight{" in body
    telemetry.shutdown()

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    disabled = Telemetry.from_environment("streams-test", GROUP)
    assert not disabled.tracing_enabled
    disabled.add_in_flight(3, TOPIC)  # no-op instruments
    body, content_type = disabled.prometheus_text()
    assert body == b"" and content_type.startswith("text/plain")


def test_latency_of_a_large_batch_is_sampled_by_quantiles(runtime, settings, captured):
    """A 300-event batch records 32 latencies: its fastest and slowest, evenly spread between."""
    from streams.telemetry.metrics import LATENCY_SAMPLES_PER_BATCH, latency_samples

    now_ms = int(time.time() * 1000)
    batch = [record(i, event(f"q{i}"), timestamp_ms=now_ms - 1000 - 10 * i) for i in range(300)]
    enrich_records(runtime, settings.route(TOPIC), batch)
    found = points(captured.metrics)
    (latency,) = found["streams.event.latency"]
    assert latency.count == LATENCY_SAMPLES_PER_BATCH
    assert latency.min == pytest.approx(1.0, abs=0.5)          # the newest record
    assert latency.max == pytest.approx(1.0 + 2.99, abs=0.5)   # the oldest record
    assert latency.sum / latency.count == pytest.approx(1.0 + 1.495, abs=0.5)  # the mean holds
    assert sum(p.value for p in found["streams.events.consumed"]) == 300  # counters stay exact
    values = [float(v) for v in range(100)]
    assert latency_samples(values[:32]) == values[:32]
    sampled = latency_samples(values)
    assert len(sampled) == 32 and sampled[0] == 0.0 and sampled[-1] == 99.0 and sampled == sorted(sampled)
