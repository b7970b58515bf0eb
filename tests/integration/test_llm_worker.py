"""The worker with the real SmolLM2-135M-Instruct through the real broker: support tickets take
their label (and typed fields) from the LLM, entities from the encoder NER; every event gets
exactly one outcome; the typed fields come back decoded from the topic's output schema."""

from __future__ import annotations

import json
import re

import fastavro
import pytest

from streams import samples
from streams.serde.fields import load_field_record
from streams.settings import REPO_ROOT, SUPPORT_TICKET_LABELS, Settings
from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect, produce

pytestmark = [pytest.mark.integration, pytest.mark.models]

TICKETS = samples.events("support.tickets")[:3]


@pytest.fixture
def scenario(broker, tiny_models, tmp_path) -> Scenario:
    s = Scenario(broker.bootstrap, tiny_models, Settings().model_cache, tmp_path)
    s.extra_env = {"STREAMS_TOPICS": json.dumps([{
        "input": s.input, "labels": SUPPORT_TICKET_LABELS, "label_from": "llm",
        "fields": "SupportTicketFields"}]),
        "STREAMS_LLM_MAX_NEW_TOKENS": "128", "STREAMS_LLM_RETRY_MAX_NEW_TOKENS": "256",
        # A batch sized by time: at well under one event per second on a CPU, one event each.
        "STREAMS_LLM_BATCH_BUDGET_S": "1"}
    return s


def test_llm_labels_and_fields_through_the_broker(scenario):
    settings = scenario.settings
    produce(settings, scenario.input, [(r["event_id"].encode(), json.dumps(
        {"event_id": r["event_id"], "text": r["text"]}).encode()) for r in TICKETS])
    worker = WorkerProcess(scenario).start()
    wanted = {r["event_id"] for r in TICKETS}
    try:
        got = collect(settings, scenario, timeout=600,
                      until=lambda c: len(c.enriched_ids | {k.decode() for k, _, _ in c.dead}) >= 3)
    finally:
        code = worker.stop()
    log = worker.log()
    assert code == 0, log[-3000:]
    dead = {k.decode(): h["__streams.errors.reason"].decode() for k, _, h in got.dead}
    assert got.enriched_ids | set(dead) == wanted and not got.enriched_ids & set(dead)
    assert set(dead.values()) <= {"llm_truncated"}, dead  # the only per-event LLM failure
    assert len(got.enriched_ids) >= 2, dead  # the model finishes most tickets within the caps
    record_fields = load_field_record(REPO_ROOT / "schemas", "SupportTicketFields")
    for _, record in got.enriched:
        cls = record["classification"]
        assert cls["label"] in SUPPORT_TICKET_LABELS
        assert abs(sum(s["score"] for s in cls["scores"]) - 1.0) < 1e-3 and 0 < cls["score"] <= 1
        assert cls["score"] == max(s["score"] for s in cls["scores"])
        models = {m["task"]: m["name"] for m in record["models"]}
        assert models["classification"] == models["fields"] == "SmolLM2-135M-Instruct-Q4_1"
        assert models["entities"] != models["classification"]  # the encoder NER (tiny here)
        # Typed in the topic's output schema (the field record embedded), decoded as such.
        assert fastavro.validate(record["fields"], fastavro.parse_schema(record_fields),
                                 raise_errors=False), record["fields"]
        print(record["event_id"], cls["label"], round(cls["score"], 2), record["fields"])
    assert "prepared" in log and "Maria" not in log  # no event text at info level
    # The source took what the engine can finish within the budget: never the whole backlog.
    sizes = [int(a) + int(b) for a, b in re.findall(r"batch [^:]+: (\d+) enriched, (\d+) dead-lettered", log)]
    assert sizes and max(sizes) == 1 and sum(sizes) == 3, sizes
