"""The LLM engine's side of the records' stamp (EnrichedEvent v4, streams/stamp.py), on the tiny
random LM: the prompt and few-shot examples the engine actually built for a topic are what the
stamp digests, the same digests `python -m streams.stamp` computes from the settings alone, and
every record the pipeline enriches through the LLM carries them."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest

from streams.engine import NoopEngine
from streams.engine.llm import LLMEngine
from streams.engine.topics import TopicEngines
from streams.pipeline import enrich_records
from streams.records import InRecord
from streams.runtime import Runtime, llm_task, topic_plans
from streams.serde import SchemaCatalog
from streams.settings import REPO_ROOT, Settings
from streams.stamp import configured_stamps, digest, examples_digest, labels_digest, prompt_digest
from streams.telemetry import Telemetry
from tests.fixtures.tiny_llm import TINY_LABELS, write_tiny_field_record

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/engine/conftest.py

LABELS = dict(TINY_LABELS.descriptions)
EXAMPLES = [{"text": "I was charged twice.", "output": {"label": "billing", "fields": {"urgency": "high", "flagged": None}}},
            {"text": "Thanks a lot!", "output": {"label": "praise", "fields": {"urgency": "low", "flagged": False}}},
            {"text": "Not one of the labels.", "output": {"label": "other", "fields": {"urgency": "low", "flagged": None}}}]


class NoProducer:
    def fits(self, record) -> bool:
        return True


@pytest.fixture
def setup(tmp_path):
    schema_dir = tmp_path / "schemas"
    schema_dir.mkdir()
    for name in ("EnrichedEvent.avsc", "InputEvent.avsc"):
        shutil.copy(REPO_ROOT / "schemas" / name, schema_dir / name)
    write_tiny_field_record(schema_dir)
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "tickets.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    return schema_dir, examples


def settings_for(schema_dir, examples, few_shot: bool) -> Settings:
    return Settings(topics=[{"input": "tickets", "labels": LABELS, "label_from": "llm", "fields": "TinyFields"}],
                    schema_dir=schema_dir, llm_examples_dir=examples, llm_few_shot=few_shot, worker_id="w",
                    schema_registry_url=f"mock://llm-stamp-{uuid.uuid4().hex}", kafka_bootstrap="127.0.0.1:1")


def runtime_for(tiny_dir, settings: Settings) -> Runtime:
    """The runtime as `Runtime.load` wires it for an LLM topic (the task from `llm_task`), with
    the tiny LM, and the no-op engine for the entities."""
    llm = LLMEngine.load(str(tiny_dir), cache_dir=tiny_dir.parent / "cache", device="cpu", dtype="float32",
                         max_new_tokens=48, retry_max_new_tokens=64, few_shot=settings.llm_few_shot,
                         examples_dir=settings.llm_examples_dir)
    plans = topic_plans(settings)
    llm.add_task(llm_task(plans["tickets"], settings))
    catalog = SchemaCatalog.from_settings(settings)
    catalog.ensure_registered()
    return Runtime(settings, TopicEngines(plans, NoopEngine(), llm), catalog, NoProducer(), telemetry=Telemetry.disabled())


def test_llm_records_carry_the_digests_of_the_prompt_the_engine_built(tiny_dir, setup):
    schema_dir, examples = setup
    settings = settings_for(schema_dir, examples, few_shot=True)
    runtime = runtime_for(tiny_dir, settings)
    prompt = runtime.engine.prompt_for("tickets")
    assert [text for text, _ in prompt.examples] == [e["text"] for e in EXAMPLES[:2]]  # "other" is no label
    assert "- billing: a charge" in prompt.system  # the labels, as the LLM reads them
    stamp = runtime.stamps["tickets"]
    assert stamp == {"labels_digest": labels_digest(LABELS), "prompt_digest": prompt_digest(prompt),
                     "examples_digest": examples_digest(prompt.examples),
                     "fields_digest": digest(json.loads((schema_dir / "fields" / "TinyFields.avsc").read_text())),
                     "candidate": None}
    # What the settings alone say (`python -m streams.stamp`) is what the engine used.
    assert configured_stamps(settings)["tickets"] == stamp

    route = settings.route("tickets")
    records = [InRecord("tickets", 0, i, 1_700_000_000_000, b"k",
                        json.dumps({"event_id": f"e{i}", "text": t}).encode())
               for i, t in enumerate(["Thanks!", "My parcel has not arrived.", "Charged twice, refund please."])]
    result = enrich_records(runtime, route, records)
    enriched = [runtime.catalog.decode(o.value, route.output) for o in result.out if o.topic == route.output]
    assert enriched and len(enriched) == result.enriched
    assert all(r["stamp"] == stamp for r in enriched)
    assert all(r["fields"] is not None for r in enriched)

    # Few-shot off: the same prompt, no examples, the same labels and field record.
    plain = runtime_for(tiny_dir, settings_for(schema_dir, examples, few_shot=False)).stamps["tickets"]
    assert plain == stamp | {"examples_digest": digest([])}
