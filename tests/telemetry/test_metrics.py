"""Metrics of enrich_records and Runtime.load, read back with an InMemoryMetricReader and from
the Prometheus text exposition."""

from __future__ import annotations

import dataclasses
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


# The engine's duty cycle, batch fill and the queue ahead of it.

def test_busy_seconds_and_duty_cycle_are_read_from_the_inference_thread(captured):
    """While a call runs the engine is busy all the time (duty cycle ~1); once it returned and
    the thread idles, the next collection's duty cycle is ~0; the counter never falls."""
    import threading

    from streams.engine.thread import InferenceThread

    runner = InferenceThread("test-duty")
    started, release = threading.Event(), threading.Event()
    caller = threading.Thread(target=runner.infer, args=(lambda: (started.set(), release.wait()),))
    caller.start()
    try:
        assert started.wait(10)
        captured.telemetry.metrics.watch_engine(runner)
        time.sleep(0.2)
        found = points(captured.metrics)
    finally:
        release.set()
        caller.join()
    (duty,) = found["streams.engine.duty_cycle"]
    assert duty.value == pytest.approx(1.0, abs=0.05)
    (busy,) = found["streams.engine.busy"]
    assert busy.value >= 0.2 and busy.attributes == {}  # one engine per process: no topic
    time.sleep(0.2)
    found = points(captured.metrics)
    assert found["streams.engine.duty_cycle"][0].value < 0.5
    assert busy.value <= found["streams.engine.busy"][0].value == pytest.approx(runner.busy_seconds())


def test_batch_fill_is_recorded_per_forward_pass_by_engine(captured):
    from streams.engine.thread import InferenceThread

    runner = InferenceThread("test-fill-metric")
    captured.telemetry.metrics.watch_engine(runner)
    runner.infer(lambda: [runner.batch_filled(rows, capacity, "encoder") for rows, capacity in [(32, 32), (16, 32), (3, 4)]])
    runner.infer(runner.batch_filled, 6, 16, "llm")
    fills = by_attrs(points(captured.metrics)["streams.engine.batch_fill"], "streams.engine")
    encoder, llm = fills[("encoder",)], fills[("llm",)]
    assert (encoder.count, encoder.sum, encoder.min, encoder.max) == (3, 2.25, 0.5, 1.0)
    assert (llm.count, llm.sum) == (1, 0.375)
    text = captured.telemetry.prometheus_text()[0].decode()
    assert 'streams_engine_batch_fill_bucket{le="0.5",' in text and "streams_engine_busy_seconds_total{" in text


class QueueSampling:
    """Stands in for the engine: reads the queue depth at each group it is given."""

    runs_models = False

    def __init__(self, engine, reader, fail: bool = False):
        self.engine, self.reader, self.fail, self.seen = engine, reader, fail, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def infer(self, texts, labels, topic=None):
        self.seen.append(queue_depth(self.reader))
        if self.fail:
            raise RuntimeError("the engine broke")
        return self.engine.infer(texts, labels, topic)


def queue_depth(reader) -> dict:
    return {p.attributes[D]: p.value for p in points(reader).get("streams.engine.queue_depth", [])}


def queue_batch() -> list:
    """40 events (groups of 8 and 32 with outputs emitted), a tombstone and an undecodable record."""
    return [record(i, event(f"w{i}")) for i in range(40)] + [record(40, None), record(41, b"x")]


@pytest.mark.parametrize("queued", [False, True])
def test_queue_depth_holds_the_events_not_yet_given_to_the_engine(runtime, settings, captured,
                                                                  monkeypatch, queued):
    """The second group waits while the first is inferred; then nothing waits. `queued`: the
    source counted the whole batch when it took it (tombstones and bad records included)."""
    sampling = QueueSampling(runtime.engine, captured.metrics)
    monkeypatch.setattr(runtime, "engine", sampling)
    if queued:
        captured.telemetry.add_queued(42, TOPIC)
    enrich_records(runtime, settings.route(TOPIC), queue_batch(), emit=lambda out: None, queued=queued)
    assert sampling.seen == [{TOPIC: 32}, {TOPIC: 0}]
    assert queue_depth(captured.metrics) == {TOPIC: 0}


def test_queue_depth_returns_to_zero_when_the_batch_fails(runtime, settings, captured, monkeypatch):
    """An engine broken on every input (the probe fails too): the batch is retried whole, so
    none of its events is left counted as waiting."""
    from streams.errors import RetriableError

    monkeypatch.setattr(runtime, "engine", QueueSampling(runtime.engine, captured.metrics, fail=True))
    captured.telemetry.add_queued(42, TOPIC)
    with pytest.raises(RetriableError):
        enrich_records(runtime, settings.route(TOPIC), queue_batch(), emit=lambda out: None, queued=True)
    assert queue_depth(captured.metrics) == {TOPIC: 0}


def test_a_topic_waits_in_the_queue_while_another_topic_of_the_batch_is_inferred(runtime, captured,
                                                                                monkeypatch):
    """The worker's BatchProcessor counts every topic of a batch when it takes it."""
    import threading

    from streams.source.base import BatchProcessor, ConsumerState

    class Acks(NoProducer):
        def send(self, records):
            pass

        def deliver(self, records, timeout=None, *, sent=False):
            return []

    sampling = QueueSampling(runtime.engine, captured.metrics)
    monkeypatch.setattr(runtime, "engine", sampling)
    monkeypatch.setattr(runtime, "producer", Acks())
    other = "support.tickets"
    batch = [record(i, event(f"t{i}")) for i in range(3)] + \
        [dataclasses.replace(record(i, event(f"s{i}")), topic=other) for i in range(5)]
    BatchProcessor(runtime, ConsumerState(), lambda records: True, threading.Event()).process(batch)
    assert sampling.seen == [{TOPIC: 0, other: 5}, {TOPIC: 0, other: 0}]
    assert queue_depth(captured.metrics) == {TOPIC: 0, other: 0}


def test_llm_ungrounded_values_are_counted_by_topic_and_field(captured):
    metrics = captured.telemetry.metrics
    for field in ("order_id", "order_id", "refund_amount"):
        metrics.record_llm_ungrounded_value("support.tickets", field)
    found = by_attrs(points(captured.metrics)["streams.llm.ungrounded_values"], D, "field")
    assert {k: p.value for k, p in found.items()} == {("support.tickets", "order_id"): 2,
                                                      ("support.tickets", "refund_amount"): 1}
    body, _ = captured.telemetry.prometheus_text()
    line = next(line for line in body.decode().splitlines()
                if line.startswith("streams_llm_ungrounded_values_total{") and 'field="order_id"' in line)
    assert 'messaging_destination_name="support.tickets"' in line and line.endswith(" 2.0")
