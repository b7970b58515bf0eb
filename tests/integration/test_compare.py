"""streams compare against the embedded broker: the live worker's output (A) against a replay of
the same events with a relabelled topic (B), as an operator runs it (the pure figures:
tests/test_compare.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from confluent_kafka import Producer, TopicPartition

from streams.kafka import consumer
from tests.fixtures.kafka_io import LABELS, Scenario, WorkerProcess, collect, json_events, produce

pytestmark = pytest.mark.integration
N = 30
DUPLICATES = 3
# "delivery" renamed, with its description: the zero-shot classifier compares the text with the
# descriptions, so B's choice is A's under the new name, with the same scores.
RELABELLED = {"billing": LABELS["billing"], "shipping": LABELS["delivery"]}
RENAMED = {"billing": "billing", "delivery": "shipping"}


def _cli(scenario: Scenario, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "streams", *args],
                              env=os.environ | scenario.env | {"COLUMNS": "200"} | (env or {}),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`streams {' '.join(args)}` did not finish within {timeout:.0f}s: {exc.stdout!r}")


def _redeliver(settings, topic: str, count: int) -> None:
    """At-least-once delivery, played: the first `count` records of `topic` written once more,
    byte for byte, to the same partition."""
    c = consumer(settings, f"copy-{time.monotonic_ns()}")
    c.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    taken, deadline = [], time.monotonic() + 20
    while len(taken) < count and time.monotonic() < deadline:
        taken += [m for m in c.consume(count, 0.5) if not m.error()]
    c.close()
    assert len(taken) >= count
    prod = Producer(settings.librdkafka_config() | {"acks": "all"})
    for m in taken[:count]:
        prod.produce(topic, key=m.key(), value=m.value(), partition=m.partition())
    assert prod.flush(30) == 0


@pytest.fixture(scope="module")
def live_and_replayed(broker, tiny_models, model_cache, tmp_path_factory):
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path_factory.mktemp("compare"))
    settings = scenario.settings
    produce(settings, scenario.input, json_events(N, prefix="cmp"))
    worker = WorkerProcess(scenario, "live").start()
    try:
        got = collect(settings, scenario, until=lambda c: len(c.enriched_ids) >= N, timeout=90)
    finally:
        worker.stop()
    assert len(got.enriched_ids) == N, worker.log()[-3000:]
    replayed = f"{scenario.name}.relabelled"
    relabel = {"STREAMS_TOPICS": json.dumps([{"input": scenario.input, "labels": RELABELLED}])}
    run = _cli(scenario, "replay", "--topic", scenario.input, "--from-offset", "0", "--output-topic", replayed,
               "--model-version", "relabelled", env=relabel)
    assert run.returncode == 0, run.stderr + run.stdout
    assert f"read {N}, enriched {N}, dead-lettered 0" in run.stdout, run.stdout
    _redeliver(settings, replayed, DUPLICATES)
    prod = Producer(settings.librdkafka_config() | {"acks": "all"})
    prod.produce(scenario.output, key=b"junk", value=b"not avro", partition=0)  # undecodable
    assert prod.flush(30) == 0
    return scenario, replayed, got


def test_compare_joins_every_event_and_sees_the_relabelling(live_and_replayed, tmp_path):
    scenario, replayed, live = live_and_replayed
    out_json, out_png = tmp_path / "compare.json", tmp_path / "compare.png"
    run = _cli(scenario, "compare", scenario.output, replayed, "--json", str(out_json), "--chart", str(out_png))
    assert run.returncode == 0, run.stderr + run.stdout
    print(run.stdout)  # docs/replay.md shows this output
    data = json.loads(out_json.read_text())
    assert (data["read_a"], data["read_b"]) == (N + 1, N + DUPLICATES)
    assert data["undecodable_a"] == {"SerializationError": 1} and data["undecodable_b"] == {}
    [t] = data["topics"]
    assert t["input_topic"] == scenario.input
    assert (t["joined"], t["only_a"], t["only_b"]) == (N, 0, 0)
    assert (t["duplicates_a"], t["duplicates_b"]) == (0, DUPLICATES)

    # Labels: B chose what A chose, under the new name; only "billing" kept its name.
    a_labels = {r["event_id"]: r["classification"]["label"] for _, r in live.enriched}
    expected: dict[str, dict[str, int]] = {}
    for label in a_labels.values():
        row = expected.setdefault(label, {})
        row[RENAMED[label]] = row.get(RENAMED[label], 0) + 1
    assert t["confusion"] == expected
    billing = sum(label == "billing" for label in a_labels.values())
    assert t["label_agreement"] == pytest.approx(billing / N)
    assert t["label_agreement"] < 1  # the label sets differ
    assert t["score_shift"]["n"] == billing
    if billing:  # same model, same descriptions: the same scores
        assert t["score_shift"]["max_abs"] < 1e-3

    # Entities: the same NER model ran on both sides.
    spans = sum(len(r["entities"]) for _, r in live.enriched)
    overall = t["entities"]["overall"]
    assert overall["true"] == overall["predicted"] == overall["tp"] == spans
    assert overall["f1"] == (1.0 if spans else None)
    assert t["fields"] == {}  # this topic has no typed fields
    assert any(m.endswith("@relabelled") for m in t["models_b"]) and not any(
        m.endswith("@relabelled") for m in t["models_a"])

    assert f"joined {N}, only in A 0, only in B 0; duplicates dropped: A 0, B {DUPLICATES}" in run.stdout
    assert "undecodable: A 1 (1 SerializationError), B 0" in run.stdout
    assert "labels, A (rows) x B (columns)" in run.stdout
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    texts = {json.loads(v)["text"] for _, v in json_events(3)}
    assert not any(text in run.stdout for text in texts)  # never the events' text


def test_a_range_selects_by_the_input_events_time(live_and_replayed):
    scenario, replayed, _ = live_and_replayed
    y2k_ms = 946684800000  # 2000-01-01T00:00:00Z, as epoch ms
    before = _cli(scenario, "compare", scenario.output, replayed, "--to", str(y2k_ms))
    assert before.returncode == 0, before.stderr + before.stdout
    assert f"outside the time range: A {N}, B {N + DUPLICATES}" in before.stdout, before.stdout
    assert "nothing to compare" in before.stdout
    future_ms = int(time.time() * 1000) + 3600_000
    everything = _cli(scenario, "compare", scenario.output, replayed, "--from", "2000-01-01T00:00:00Z",
                      "--to", str(future_ms))
    assert everything.returncode == 0, everything.stderr + everything.stdout
    assert f"joined {N}, only in A 0, only in B 0" in everything.stdout, everything.stdout
    assert "outside the time range: A 0, B 0" in everything.stdout, everything.stdout


def test_a_missing_topic_is_a_message(live_and_replayed):
    scenario, _, _ = live_and_replayed
    run = _cli(scenario, "compare", scenario.output, f"{scenario.name}.nope")
    assert run.returncode == 2, run.stdout
    assert "does not exist" in run.stdout and "Traceback" not in run.stderr
