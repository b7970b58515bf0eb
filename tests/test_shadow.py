"""A route's candidate (shadow traffic): on its share of the events it runs after the live
configuration, its records go to `<output>.shadow` stamped with its name, never to the live
output; its failures are dead-lettered to its own DLQ (or retried with the batch when the
registry fails), and never block, change or lose a live record. With fakes: the broker-backed
run of a worker with a candidate is tests/integration/test_shadow.py."""

from __future__ import annotations

import json
import uuid

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from streams.engine import Classification, Entity, Inference, ModelInfo, NoopEngine
from streams.errors import RetriableError
from streams.pipeline import enrich_records
from streams.records import InRecord
from streams.runtime import Runtime, deliver
from streams.serde import SchemaCatalog
from streams.settings import Settings
from streams.telemetry import Telemetry
from tests.fixtures.producers import RefusingProducer

TOPIC = "t.in"
LABELS = {"billing": "money", "delivery": "a parcel"}


class Primary(NoopEngine):
    """Label billing; one entity, at 0:4."""

    def infer(self, texts, labels, topic=None):
        return [Inference([Entity("PER", t[:4], 0, 4, 0.9)], Classification("billing", 0.9, {"billing": 0.9}))
                for t in texts]


class Other(NoopEngine):
    """The candidate: label delivery for texts with "parcel", else billing; entity 0:4 and
    5:9; fails on texts with FAIL (alone), or on everything when `broken`."""

    models = [ModelInfo("entities", "other-ner", "2"), ModelInfo("classification", "other-clf", "2")]

    def __init__(self, broken: bool = False):
        self.broken, self.calls = broken, 0

    def infer(self, texts, labels, topic=None):
        self.calls += 1
        if self.broken:
            raise RuntimeError("the candidate's model is broken")
        out = []
        for t in texts:
            if "FAIL" in t:
                out.append(RuntimeError("the candidate failed on this text"))
                continue
            label = "delivery" if "parcel" in t else "billing"
            out.append(Inference([Entity("PER", t[:4], 0, 4, 0.9), Entity("LOC", t[5:9], 5, 9, 0.8)],
                                 Classification(label, 0.7, {label: 0.7})))
        return out


def _runtime(share: float = 100, candidate_engine=None, producer=None, telemetry=None, **candidate) -> Runtime:
    settings = Settings(topics=[{"input": TOPIC, "labels": LABELS,
                                 "candidate": {"name": "next", "share": share, **candidate}}], worker_id="w1",
                        schema_registry_url=f"mock://shadow-{uuid.uuid4().hex}")
    catalog = SchemaCatalog.from_settings(settings)  # the shadow output's subject among the outputs
    runtime = Runtime(settings, Primary(), catalog, producer or RefusingProducer(),
                      telemetry=telemetry or Telemetry.disabled(),
                      candidates={TOPIC: candidate_engine or Other()})
    return runtime


def _records(n: int, texts=None) -> list[InRecord]:
    texts = texts or [f"Anna Oslo ticket {i} about a parcel" if i % 2 else f"Bert Rome ticket {i}" for i in range(n)]
    return [InRecord(TOPIC, i % 2, i // 2, 1_700_000_000_000, f"k{i}".encode(),
                     json.dumps({"event_id": f"e{i}", "text": t}).encode(), [("h", b"v")])
            for i, t in enumerate(texts)]


def _decoded(runtime, out, topic):
    return [runtime.catalog.decode(r.value, topic) for r in out if r.topic == topic]


def test_candidate_records_go_to_the_shadow_topic_stamped_and_live_records_are_unchanged():
    runtime = _runtime()
    route = runtime.settings.route(TOPIC)
    result = enrich_records(runtime, route, _records(6), emit=runtime.producer.send)

    live = _decoded(runtime, result.out, TOPIC + ".enriched")
    shadow = _decoded(runtime, result.out, TOPIC + ".enriched.shadow")
    assert sorted(r["event_id"] for r in live) == [f"e{i}" for i in range(6)]
    assert sorted(r["event_id"] for r in shadow) == [f"e{i}" for i in range(6)]
    assert result.enriched == 6 and result.dead == 0  # the result counts live records only
    # Live: the route's models and no candidate; shadow: the candidate's models and its name.
    assert {r["classification"]["label"] for r in live} == {"billing"}
    assert all(r["stamp"]["candidate"] is None for r in live)
    assert all(r["stamp"]["candidate"] == "next" for r in shadow)
    assert {m["name"] for r in shadow for m in r["models"]} == {"other-ner", "other-clf"}
    assert {m["name"] for r in live for m in r["models"]} == {"noop"}
    assert {r["classification"]["label"] for r in shadow} == {"billing", "delivery"}
    # Same key and headers as the live record: the shadow topic is co-partitioned with it.
    keys = {(r.topic, r.source.offset, r.source.partition): (r.key, r.headers) for r in result.out}
    for (topic, offset, partition), value in keys.items():
        if topic.endswith(".shadow"):
            assert value == keys[(TOPIC + ".enriched", offset, partition)]
    # The live records leave first, and each topic gets each partition's records in offset order.
    kinds = [r.kind for r in runtime.producer.sent]
    assert kinds == ["output"] * 6 + ["shadow"] * 6
    for topic in (TOPIC + ".enriched", TOPIC + ".enriched.shadow"):
        for partition in (0, 1):
            offsets = [r.source.offset for r in result.out if r.topic == topic and r.source.partition == partition]
            assert offsets == sorted(offsets) and len(offsets) == 3


def test_share_picks_the_same_events_by_id_every_time_and_share_0_runs_nothing():
    engine = Other()
    runtime = _runtime(share=0, candidate_engine=engine)
    result = enrich_records(runtime, runtime.settings.route(TOPIC), _records(20))
    assert [r.kind for r in result.out] == ["output"] * 20
    assert engine.calls <= 1  # at most an empty call: no text reached the candidate

    half = _runtime(share=50)
    records = _records(400)
    first = {r.source.offset * 2 + r.source.partition for r in
             enrich_records(half, half.settings.route(TOPIC), records).out if r.kind == "shadow"}
    again = {r.source.offset * 2 + r.source.partition for r in
             enrich_records(half, half.settings.route(TOPIC), records).out if r.kind == "shadow"}
    assert first == again
    assert 150 < len(first) < 250  # about half
    candidate = half.settings.route(TOPIC).candidate
    assert first == {i for i in range(400) if candidate.takes(f"e{i}")}


def test_a_candidate_failing_on_an_event_dead_letters_it_to_the_shadow_dlq_only():
    runtime = _runtime()
    texts = ["Anna Oslo fine", "Bert FAIL here", "Cleo Lima fine"]
    result = enrich_records(runtime, runtime.settings.route(TOPIC), _records(3, texts))
    by_topic = {}
    for r in result.out:
        by_topic.setdefault(r.topic, []).append(r)
    assert len(by_topic[TOPIC + ".enriched"]) == 3  # every live record, the failed one's too
    assert len(by_topic[TOPIC + ".enriched.shadow"]) == 2
    [dead] = by_topic[TOPIC + ".dlq.shadow"]
    headers = dict(dead.headers)
    assert headers["__streams.errors.reason"] == b"inference_error"
    assert dead.value == _records(3, texts)[1].value  # the original bytes, with provenance
    assert TOPIC + ".dlq" not in by_topic
    assert result.dead == 0 and result.enriched == 3


def test_a_broken_candidate_dead_letters_its_share_and_the_live_path_goes_on():
    runtime = _runtime(candidate_engine=Other(broken=True))
    result = enrich_records(runtime, runtime.settings.route(TOPIC), _records(4))
    topics = [r.topic for r in result.out]
    assert topics.count(TOPIC + ".enriched") == 4
    assert topics.count(TOPIC + ".dlq.shadow") == 4
    assert {dict(r.headers)["__streams.errors.reason"] for r in result.out if r.kind == "dlq"} == \
        {b"candidate_failed"}


def test_a_shadow_record_the_broker_refuses_is_dead_lettered_to_the_shadow_dlq():
    producer = RefusingProducer("shadow")
    runtime = _runtime(producer=producer)
    result = enrich_records(runtime, runtime.settings.route(TOPIC), _records(2))
    deliver(runtime, result.out)
    dead = [r for r in producer.sent if r.kind == "dlq"]
    assert [r.topic for r in dead] == [TOPIC + ".dlq.shadow"] * 2
    assert {dict(r.headers)["__streams.errors.reason"] for r in dead} == {b"shadow_rejected"}
    assert sum(r.topic == TOPIC + ".enriched" for r in producer.sent) == 2


def test_a_registry_failure_on_a_shadow_record_retries_the_whole_batch():
    runtime = _runtime()
    encode = runtime.catalog.encode_enriched

    def failing(record, topic):
        if topic.endswith(".shadow"):
            raise RetriableError("registry", "the registry does not answer")
        return encode(record, topic)

    runtime.catalog.encode_enriched = failing
    with pytest.raises(RetriableError):
        enrich_records(runtime, runtime.settings.route(TOPIC), _records(2))


def test_a_replayed_route_runs_no_candidate():
    runtime = _runtime()
    route = runtime.settings.route(TOPIC).model_copy(update={"output": "t.replay", "candidate": None})
    runtime.catalog.register_output("t.replay", like=TOPIC + ".enriched")
    result = enrich_records(runtime, route, _records(3))
    assert {r.topic for r in result.out} == {"t.replay"}
    assert runtime.settings.without_candidates().route(TOPIC).candidate is None


def test_agreement_with_the_live_records_is_metered():
    reader = InMemoryMetricReader()
    telemetry = Telemetry.create(service_name="t", group="g", metric_readers=[reader])
    try:
        runtime = _runtime(telemetry=telemetry)
        texts = ["Anna Oslo a parcel", "Bert Rome bill", "Cleo FAIL", "Dora Lima bill"]
        enrich_records(runtime, runtime.settings.route(TOPIC), _records(4, texts))
        found = {}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        found[(m.name, tuple(sorted((k, v) for k, v in p.attributes.items()
                                                    if k not in ("messaging.destination.name", "candidate"))))] = getattr(p, "value", None)
        assert found[("streams.shadow.events", (("outcome", "enriched"),))] == 3
        assert found[("streams.shadow.events", (("outcome", "dead_lettered"), ("reason", "inference_error")))] == 1
        assert found[("streams.shadow.compared", ())] == 3
        assert found[("streams.shadow.labels_agreed", ())] == 2  # "a parcel": delivery against billing
        assert found[("streams.shadow.entity_spans", (("side", "live"),))] == 3
        assert found[("streams.shadow.entity_spans", (("side", "candidate"),))] == 6
        assert found[("streams.shadow.entity_spans", (("side", "matched"),))] == 3
        text = telemetry.prometheus_text()[0].decode()
        assert 'streams_shadow_labels_agreed_total{candidate="next"' in text
    finally:
        telemetry.shutdown()


def test_candidate_settings_change_only_what_the_candidate_names():
    settings = Settings(topics=[{"input": TOPIC, "labels": LABELS, "fields": None,
                                 "candidate": {"name": "llm-labels", "label_from": "llm",
                                               "labels": {"a": "b"}, "llm_model": "other-llm"}}])
    route = settings.route(TOPIC)
    mine = settings.candidate_settings(route)
    assert [r.output for r in mine.topics] == [TOPIC + ".enriched.shadow"]
    assert mine.route(TOPIC).label_from == "llm" and mine.route(TOPIC).labels == {"a": "b"}
    assert mine.route(TOPIC).entities_from == "encoder"
    assert mine.llm_model == "other-llm" and mine.ner_model == settings.ner_model
    assert settings.route(TOPIC).candidate is not None  # the worker's own settings unchanged
    assert TOPIC + ".enriched.shadow" in route.produces and TOPIC + ".dlq.shadow" in route.produces
    with pytest.raises(ValueError, match="topics of their own"):
        Settings(topics=[{"input": TOPIC, "candidate": {"name": "x", "output": TOPIC + ".enriched"}}])
    with pytest.raises(ValueError):
        Settings(topics=[{"input": TOPIC, "candidate": {"name": "x", "shares": 5}}])
    with pytest.raises(ValueError):
        Settings(topics=[{"input": TOPIC, "candidate": {"name": "x", "share": 101}}])


class Timed(NoopEngine):
    """An engine that says how many events it finishes within a budget, and when it last made
    progress (as the LLM engine does)."""

    def __init__(self, per_budget: int | None, progress_at: float | None = None):
        self.per_budget, self.progress_at = per_budget, progress_at

    def max_events_for(self, topic, budget_s):
        return self.per_budget


def test_an_llm_candidate_shares_the_batch_budget_and_counts_as_progress():
    """The source sizes its batches so that the route's and the candidate's LLM time together
    fit the budget; /livez counts a candidate's decoding steps as progress."""
    def runtime(route_n, candidate_n, share, progress=(None, None)):
        r = _runtime(share=share, candidate_engine=Timed(candidate_n, progress[1]))
        r.engine = Timed(route_n, progress[0])
        return r

    assert runtime(None, None, 100).max_events_for(TOPIC) is None  # no LLM anywhere: max_batch
    assert runtime(25, None, 100).max_events_for(TOPIC) == 25  # as without a candidate
    assert runtime(None, 20, 100).max_events_for(TOPIC) == 20  # an LLM candidate on every event
    assert runtime(None, 20, 50).max_events_for(TOPIC) == 40  # on half of them
    assert runtime(None, 20, 0).max_events_for(TOPIC) is None  # on none
    assert runtime(25, 20, 100).max_events_for(TOPIC) == 11  # 1 / (1/25 + 1/20)
    assert runtime(None, 1000, 100).max_events_for(TOPIC) == 256  # never above max_batch
    assert runtime(None, 20, 100, (None, 7.0)).progress_at == 7.0
    assert runtime(None, 20, 100, (9.0, 7.0)).progress_at == 9.0
    assert runtime(None, 20, 100).progress_at is None
