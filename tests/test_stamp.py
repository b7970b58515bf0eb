"""The `stamp` of EnrichedEvent v4 (streams/stamp.py): what made a record besides its models.
Digests of a route's labels, LLM prompt, few-shot examples and field record, computed once per
route at start-up; on every enriched record; changed by exactly what they cover; the same in
every process. The LLM engine's side (its real prompt through the pipeline) is
tests/engine/test_llm_stamp.py; Java reads them in tests/contract/test_java_consumer.py."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from streams.engine import NoopEngine, Prompt
from streams.pipeline import enrich_records
from streams.records import InRecord
from streams.runtime import Runtime
from streams.serde import SchemaCatalog
from streams.serde.registry import subject
from streams.settings import REPO_ROOT, Settings, default_routes
from streams.stamp import (canonical_json, configured_stamps, digest, examples_digest, fields_digest,
                           labels_digest, prompt_digest, route_stamp)
from streams.telemetry import Telemetry

SCHEMAS = REPO_ROOT / "schemas"
LABELS = {"billing": "a charge, an invoice or a payment", "delivery": "a parcel that has not arrived"}
DIGEST = re.compile(r"sha256:[0-9a-f]{16}")
KEYS = ["labels_digest", "prompt_digest", "examples_digest", "fields_digest", "candidate"]


# -- the digest --------------------------------------------------------------------------------

def test_a_digest_is_sha256_of_canonical_json_cut_to_16_hex_digits():
    assert canonical_json({"b": 1, "a": ["x", "é"]}) == '{"a":["x","é"],"b":1}'.encode("utf-8")
    assert digest(LABELS) == "sha256:" + hashlib.sha256(
        b'{"billing":"a charge, an invoice or a payment","delivery":"a parcel that has not arrived"}'
    ).hexdigest()[:16]
    # Pinned: a change to the serialization would silently change every digest in production.
    assert labels_digest(LABELS) == "sha256:e07c1c4db462c94d"
    assert digest({"caf\u00e9": "na\u00efve \u2615"}) == "sha256:9b9d71c69b144ca0"  # UTF-8, not \u escapes
    assert DIGEST.fullmatch(digest([]))


def test_labels_digest_covers_names_and_descriptions_not_their_order():
    assert labels_digest(LABELS) == labels_digest(dict(reversed(LABELS.items())))
    assert labels_digest(LABELS) != labels_digest(LABELS | {"delivery": "a late parcel"})
    assert labels_digest(LABELS) != labels_digest({"billing": LABELS["billing"], "shipping": LABELS["delivery"]})
    assert labels_digest(LABELS) != labels_digest(LABELS | {"praise": ""})
    assert labels_digest({}) is None


def test_prompt_and_examples_digests_cover_what_they_say_and_nothing_else():
    base = Prompt("You read one message.", '{"label": "', (("hi", {"label": "praise"}),))
    same = Prompt("You read one message.", '{"label": "', (("hi", {"label": "praise"}),))
    assert (prompt_digest(base), examples_digest(base.examples)) == (prompt_digest(same), examples_digest(same.examples))
    system = Prompt("You read two messages.", base.assistant_prefix, base.examples)
    prefix = Prompt(base.system, "{", base.examples)
    example = Prompt(base.system, base.assistant_prefix, (("hi", {"label": "billing"}),))
    none = Prompt(base.system, base.assistant_prefix, ())
    assert prompt_digest(system) != prompt_digest(base) and prompt_digest(prefix) != prompt_digest(base)
    assert examples_digest(system.examples) == examples_digest(base.examples)
    assert prompt_digest(example) == prompt_digest(base) == prompt_digest(none)
    assert len({examples_digest(p.examples) for p in (base, example, none)}) == 3
    assert examples_digest(none.examples) == digest([])
    two = (("a", {"label": "x"}), ("b", {"label": "y"}))
    assert examples_digest(two) != examples_digest(two[::-1])  # prompt order counts


def test_fields_digest_covers_the_whole_field_record():
    record = json.loads((SCHEMAS / "fields" / "SupportTicketFields.avsc").read_text())
    assert fields_digest(record) == fields_digest(json.loads(json.dumps(record, indent=4)))  # layout aside
    changed = []
    for change in (lambda r: r["fields"][0].update(doc="How urgent."),  # what the LLM reads
                   lambda r: r["fields"][1].update(grounded=False),  # not in Avro's canonical form
                   lambda r: r["fields"].pop()):
        mutated = copy.deepcopy(record)
        change(mutated)
        changed.append(fields_digest(mutated))
    assert len(set(changed) | {fields_digest(record)}) == 4


# -- per route, from the settings ----------------------------------------------------------------

def llm_settings(tmp_path, **route) -> Settings:
    return Settings(topics=[{"input": "support.tickets", "labels": LABELS, "label_from": "llm",
                             "fields": "SupportTicketFields", **route}, {"input": "orders.notes", "labels": LABELS}],
                    schema_dir=SCHEMAS, llm_examples_dir=tmp_path, llm_few_shot=True)


def test_routes_get_the_digests_of_what_they_use(tmp_path):
    stamps = configured_stamps(llm_settings(tmp_path))
    llm, encoder = stamps["support.tickets"], stamps["orders.notes"]
    assert list(llm) == list(encoder) == KEYS
    assert all(DIGEST.fullmatch(llm[k]) for k in KEYS[:4]) and llm["candidate"] is None
    assert llm["examples_digest"] == digest([])  # no examples file in tmp_path: none in the prompt
    assert llm["fields_digest"] == fields_digest(json.loads((SCHEMAS / "fields" / "SupportTicketFields.avsc").read_text()))
    assert encoder == {"labels_digest": labels_digest(LABELS), "prompt_digest": None, "examples_digest": None,
                       "fields_digest": None, "candidate": None}
    assert llm["labels_digest"] == encoder["labels_digest"]  # the same label set, whichever engine


def test_each_digest_changes_with_what_it_covers_and_only_with_it(tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    row = {"text": "I was charged twice for A-1.", "output": {
        "label": "billing", "fields": {"urgency": "high", "order_id": "A-1", "refund_amount": None,
                                       "requested_action": "refund", "summary": "Charged twice."}}}
    (examples / "support.tickets.jsonl").write_text(json.dumps(row) + "\n")
    schema_dir = tmp_path / "schemas"
    (schema_dir / "fields").mkdir(parents=True)
    record = json.loads((SCHEMAS / "fields" / "SupportTicketFields.avsc").read_text())
    (schema_dir / "fields" / "SupportTicketFields.avsc").write_text(json.dumps(record))

    def stamp(labels=LABELS, few_shot=True, **kw) -> dict:
        settings = Settings(topics=[{"input": "support.tickets", "labels": labels, "label_from": "llm",
                                     "fields": "SupportTicketFields", **kw}],
                            schema_dir=schema_dir, llm_examples_dir=examples, llm_few_shot=few_shot)
        return configured_stamps(settings)["support.tickets"]

    def changed(before: dict, after: dict) -> set[str]:
        return {k for k in KEYS if before[k] != after[k]}

    base = stamp()
    assert base == stamp()  # nothing changed: nothing differs
    assert base["examples_digest"] != digest([])  # the example is in the prompt
    # Labels: the label set and the prompt that lists them.
    assert changed(base, stamp(labels=LABELS | {"delivery": "a late parcel"})) == {"labels_digest", "prompt_digest"}
    # Entities asked of the LLM: the prompt (and the examples, cut to what is asked).
    assert "prompt_digest" in changed(base, stamp(entities_from="llm"))
    # Few-shot off: the examples only.
    assert changed(base, stamp(few_shot=False)) == {"examples_digest"}
    # An example edited: the examples only.
    (examples / "support.tickets.jsonl").write_text(json.dumps(row | {"text": "Charged twice for A-1!"}) + "\n")
    assert changed(base, stamp()) == {"examples_digest"}
    (examples / "support.tickets.jsonl").write_text(json.dumps(row) + "\n")
    assert stamp() == base
    # The field record: a field's doc is also the prompt's line for it.
    record["fields"][0]["doc"] = "How urgent the ticket is, from the customer's words."
    (schema_dir / "fields" / "SupportTicketFields.avsc").write_text(json.dumps(record))
    assert changed(base, stamp()) == {"fields_digest", "prompt_digest"}
    # `grounded` is in neither the prompt nor Avro's canonical form: the fields digest still moves.
    record = json.loads((SCHEMAS / "fields" / "SupportTicketFields.avsc").read_text())
    record["fields"][1]["grounded"] = False
    (schema_dir / "fields" / "SupportTicketFields.avsc").write_text(json.dumps(record))
    assert changed(base, stamp()) == {"fields_digest"}


def test_the_stamps_are_the_same_in_another_process(tmp_path):
    """No hash seed, dict order or platform encoding in a digest: a fresh interpreter with
    another PYTHONHASHSEED, reading the same settings from the environment, agrees."""
    labels = LABELS | {"caf\u00e9": "d\u00e9j\u00e0 vu \u2615"}
    topics = [{"input": "support.tickets", "labels": labels, "label_from": "llm", "fields": "SupportTicketFields"},
              {"input": "orders.notes", "labels": labels}]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")} | {
        "PYTHONHASHSEED": "12345", "STREAMS_TOPICS": json.dumps(topics)}
    out = subprocess.run([sys.executable, "-m", "streams.stamp"], env=env, cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    there = {row["input"]: row["stamp"] for row in map(json.loads, out.splitlines())}
    here = configured_stamps(Settings(topics=topics))
    assert there == here and set(here) == {"support.tickets", "orders.notes"}
    assert here["support.tickets"]["labels_digest"] == labels_digest(dict(reversed(labels.items())))


# -- on every record, through the pipeline ---------------------------------------------------------

class PromptCounting(NoopEngine):
    """The no-op engine (like the encoder models: no prompt), counting `prompt_for` calls."""

    def __init__(self):
        self.prompt_calls = 0

    def prompt_for(self, topic):
        self.prompt_calls += 1
        return None


class Collect:
    max_message_bytes = 1_000_000

    def fits(self, record) -> bool:
        return True


def _runtime(topics: list[dict], engine) -> Runtime:
    settings = Settings(topics=topics, worker_id="w1", schema_registry_url=f"mock://stamp-{uuid.uuid4().hex}")
    catalog = SchemaCatalog.from_settings(settings)
    return Runtime(settings, engine, catalog, Collect(), telemetry=Telemetry.disabled())


def _records(topic: str, n: int) -> list[InRecord]:
    return [InRecord(topic, i % 2, i, 1_700_000_000_000, b"k", json.dumps({"event_id": f"e{i}", "text": f"text {i}"}).encode())
            for i in range(n)]


def test_every_enriched_record_carries_its_routes_stamp_computed_once_at_start_up():
    engine = PromptCounting()
    runtime = _runtime([{"input": "a", "labels": LABELS}, {"input": "b", "labels": {"praise": "thanks"}}], engine)
    assert engine.prompt_calls == 2  # once per route, at start-up
    got = {}
    for topic in ("a", "b"):
        route = runtime.settings.route(topic)
        result = enrich_records(runtime, route, _records(topic, 6))
        assert result.enriched == 6
        got[topic] = [runtime.catalog.decode(o.value, route.output)["stamp"] for o in result.out]
    assert engine.prompt_calls == 2  # never per event, nor per batch
    assert got["a"] == [{"labels_digest": labels_digest(LABELS), "prompt_digest": None, "examples_digest": None,
                         "fields_digest": None, "candidate": None}] * 6
    assert {s["labels_digest"] for s in got["b"]} == {labels_digest({"praise": "thanks"})}
    assert runtime.stamps == configured_stamps(runtime.settings)  # what the settings alone say


def test_a_route_with_typed_fields_stamps_its_field_record_and_prompt():
    """A fake LLM engine: its prompt's digests reach the record, beside the field record's."""
    prompt = Prompt("system prompt", "{", (("text", {"label": "billing"}),))

    class WithPrompt(NoopEngine):
        def prompt_for(self, topic):
            return prompt if topic == "support.tickets" else None

    runtime = _runtime([{"input": "support.tickets", "labels": LABELS, "label_from": "llm",
                         "fields": "SupportTicketFields"}], WithPrompt())
    route = runtime.settings.route("support.tickets")
    result = enrich_records(runtime, route, _records("support.tickets", 2))
    [stamp] = {json.dumps(runtime.catalog.decode(o.value, route.output)["stamp"]) for o in result.out}
    assert json.loads(stamp) == route_stamp(route, SCHEMAS, prompt) == {
        "labels_digest": labels_digest(LABELS), "prompt_digest": prompt_digest(prompt),
        "examples_digest": examples_digest(prompt.examples),
        "fields_digest": fields_digest(json.loads((SCHEMAS / "fields" / "SupportTicketFields.avsc").read_text())),
        "candidate": None}


# -- records written before v4 -----------------------------------------------------------------

def test_records_written_with_v3_still_decode():
    """A v3 record on the topic (written by a worker before this one) decodes by its writer
    schema, without a stamp; read with v4 as the reader schema, its stamp is null."""
    v3 = json.loads((SCHEMAS / "history" / "EnrichedEvent.v3.avsc").read_text())
    v4 = json.loads((SCHEMAS / "EnrichedEvent.avsc").read_text())
    catalog = SchemaCatalog(f"mock://stamp-v3-{uuid.uuid4().hex}", SCHEMAS, ["t"], ["t.enriched"])
    old_id = catalog.client.register_schema(subject("t.enriched"), Schema(json.dumps(v3), "AVRO"))
    catalog.ensure_registered()  # the current schema: a new version of the same subject
    assert catalog.client.get_latest_version(subject("t.enriched")).schema_id != old_id
    record = {"event_id": "old-1", "event_type": None, "customer_id": None, "occurred_at": None,
              "source": {"topic": "t", "partition": 0, "offset": 3, "timestamp": None}, "entities": [],
              "classification": {"label": "billing", "score": 1.0, "scores": []}, "models": [],
              "processed_at": datetime(2024, 5, 1, tzinfo=timezone.utc), "inference_ms": 1.0, "redacted_text": None,
              "field_confidence": None}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(v3), record)
    value = b"\x00" + old_id.to_bytes(4, "big") + body.getvalue()
    decoded = catalog.decode(value, "t.enriched")
    assert decoded["event_id"] == "old-1" and "stamp" not in decoded
    as_v4 = fastavro.schemaless_reader(io.BytesIO(body.getvalue()), fastavro.parse_schema(v3),
                                       fastavro.parse_schema(v4))
    assert as_v4["stamp"] is None and as_v4["event_id"] == "old-1"


@pytest.mark.parametrize("topic", ["orders.notes", "support.tickets"])
def test_default_routes_are_stamped(topic):
    stamp = configured_stamps(Settings(topics=default_routes()))[topic]
    assert DIGEST.fullmatch(stamp["labels_digest"]) and stamp["prompt_digest"] is None


def test_the_recompute_snippet_in_the_docs_runs_and_agrees(monkeypatch):
    """docs/contract.md shows how to recompute a digest without this package: it runs, and its
    pinned labels digest is this module's."""
    text = (REPO_ROOT / "docs" / "contract.md").read_text()
    [snippet] = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def digest(value)" in block]
    namespace: dict = {}
    monkeypatch.chdir(REPO_ROOT)  # the snippet opens schemas/... from the repository root
    exec(compile(snippet, "docs/contract.md", "exec"), namespace)  # noqa: S102 - our own docs
    assert namespace["digest"](namespace["labels"]) == labels_digest(namespace["labels"])
    record = json.loads((SCHEMAS / "fields" / "SupportTicketFields.avsc").read_text())
    assert namespace["digest"](record) == fields_digest(record)
