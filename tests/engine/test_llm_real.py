"""The LLM engine with the real SmolLM2-135M-Instruct on the bundled support tickets (fp32, greedy,
CPU): batched output equals one-text-at-a-time output, and every output is valid against the
topic's schema (label in the label set, fields valid Avro of the topic's field record).

Kept to the 12 tickets' labels and 2 tickets' typed fields: on this shared 2-core machine fp32
generation runs at a few seconds per text, and SmolLM2-135M asked for entities often lists them
until the token cap (those outputs are dead-lettered as llm_truncated, tested on the tiny model)."""

from __future__ import annotations

import math

import fastavro
import pytest

from streams import samples
from streams.engine import LabelSet
from streams.engine.llm import RAMPART_ENTITY_TYPES, LLMEngine, LLMResult, LLMTask
from streams.serde.fields import field_schema, load_field_record
from streams.settings import REPO_ROOT, SUPPORT_TICKET_LABELS

pytestmark = pytest.mark.models

TICKETS = [r["text"] for r in samples.events("support.tickets")]
FIELDS = load_field_record(REPO_ROOT / "schemas", "SupportTicketFields")


@pytest.fixture(scope="module")
def llm(model_cache) -> LLMEngine:
    engine = LLMEngine.load(cache_dir=model_cache, device="cpu", dtype="float32", max_batch=12,
                            max_new_tokens=96, retry_max_new_tokens=192)
    engine.add_task(LLMTask("support.tickets", LabelSet.from_mapping(SUPPORT_TICKET_LABELS), None, None))
    engine.add_task(LLMTask("tickets.fields", LabelSet.from_mapping(SUPPORT_TICKET_LABELS), None,
                            field_schema(FIELDS)))
    return engine


def _key(r):
    if not isinstance(r, LLMResult):
        return type(r).__name__
    ents = [(e.label, e.text, e.start, e.end) for e in r.entities or []]
    return r.classification.label, ents, r.fields


def _check_valid(texts, results, labels, fields=None):
    parsed = fastavro.parse_schema(fields) if fields else None
    for text, r in zip(texts, results):
        assert isinstance(r, LLMResult), r
        c = r.classification
        assert c.label in labels and math.isclose(sum(c.scores.values()), 1.0, rel_tol=1e-6)
        assert 0.0 < c.score <= 1.0 and c.score == max(c.scores.values())
        for e in r.entities or []:
            assert text[e.start:e.end] == e.text and e.label in RAMPART_ENTITY_TYPES
        if parsed is not None:
            assert fastavro.validate(r.fields, parsed, raise_errors=False), r.fields


@pytest.mark.parametrize("topic,texts,labels", [("support.tickets", TICKETS, SUPPORT_TICKET_LABELS)])
def test_batched_equals_alone_and_all_valid_on_the_samples(llm, topic, texts, labels):
    batched = llm.generate(texts, topic)
    _check_valid(texts, batched, labels)
    alone = [llm.generate([t], topic)[0] for t in texts]
    assert [_key(r) for r in batched] == [_key(r) for r in alone]
    for a, b in zip(batched, alone):
        for label, score in a.classification.scores.items():
            assert math.isclose(score, b.classification.scores[label], abs_tol=1e-3)


def test_typed_fields_batched_equals_alone_and_valid_avro(llm):
    texts = TICKETS[:2]
    batched = llm.generate(texts, "tickets.fields")
    _check_valid(texts, batched, SUPPORT_TICKET_LABELS, FIELDS)
    alone = [llm.generate([t], "tickets.fields")[0] for t in texts]
    assert [_key(r) for r in batched] == [_key(r) for r in alone]
