"""LLM fields a Java service can act on (issue 26), on the tiny random LM: grounded fields are
null unless the text says them (and counted), every typed field has the constrained model's
probability for its value, and an entity list the model keeps writing is closed by the grammar."""

from __future__ import annotations

import math

import pytest

from streams.engine import NoopEngine
from streams.engine.llm import LLMResult, LLMTask, LLMTruncated, output_schema
from streams.engine.topics import TopicEngines, TopicPlan
from streams.serde.fields import field_schema
from tests.fixtures.tiny_llm import TINY_FIELD_SCHEMA, TINY_LABELS
from tests.fixtures.tiny_llm import tiny_engine as engine

TEXTS = ["Hello, my name is Maria Gonzalez and I was charged twice.", "My parcel has not arrived.",
         "Thanks!", "Gift wrap it, leave at the door, it is fragile."]
TICKET = "Charged twice for order 55821: two payments of $84.20. Maria"
GROUNDED = {"type": "record", "name": "Refund", "fields": [
    {"name": "urgency", "type": {"type": "enum", "name": "U", "symbols": ["low", "high"]}},
    {"name": "order_id", "type": ["null", "string"], "default": None, "grounded": True},
    {"name": "amount", "type": ["null", "double"], "default": None, "grounded": True},
    {"name": "note", "type": ["null", "string"], "default": None}]}
PEOPLE = ("GIVEN_NAME", "CITY")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/engine/conftest.py


@pytest.fixture(scope="module")
def llm(tiny_dir):
    ungrounded = []
    llm = engine(tiny_dir, max_batch=4, on_ungrounded=lambda topic, name: ungrounded.append((topic, name)))
    llm.add_task(LLMTask("refunds", None, None, field_schema(GROUNDED)))
    llm.ungrounded_seen = ungrounded
    return llm


def _tokens(llm, prepared, output: str) -> list[int]:
    return llm.tokenizer(output[len(prepared.forced):], add_special_tokens=False)["input_ids"]


def _parse(llm, task: str, text: str, output: str, greedy_p=None):
    prepared = llm.tasks[task]
    tokens = _tokens(llm, prepared, output)
    return llm._parse(prepared, text, tokens, greedy_p or [1.0] * len(tokens), [])


# ---- grounded fields ------------------------------------------------------------------------------

def test_grounded_values_the_text_contains_are_kept(llm):
    llm.ungrounded_seen.clear()
    r = _parse(llm, "refunds", TICKET,
               '{"fields": {"urgency": "high", "order_id": "55821", "amount": 84.2, "note": "made up"}}')
    assert isinstance(r, LLMResult) and r.ungrounded == [] and llm.ungrounded_seen == []
    assert r.fields == {"urgency": "high", "order_id": "55821", "amount": 84.2, "note": "made up"}


def test_invented_grounded_values_become_null_and_are_counted(llm):
    llm.ungrounded_seen.clear()
    r = _parse(llm, "refunds", TICKET,
               '{"fields": {"urgency": "low", "order_id": "A-10023", "amount": 8420, "note": "made up"}}')
    assert isinstance(r, LLMResult)
    # Only grounded fields are checked: `note` is not grounded and stays.
    assert r.fields == {"urgency": "low", "order_id": None, "amount": None, "note": "made up"}
    assert r.ungrounded == ["order_id", "amount"]
    assert llm.ungrounded_seen == [("refunds", "order_id"), ("refunds", "amount")]
    # A null the model wrote is no invention: nothing counted.
    llm.ungrounded_seen.clear()
    r = _parse(llm, "refunds", TICKET, '{"fields": {"urgency": "low", "order_id": null, "amount": null, "note": null}}')
    assert r.ungrounded == [] and llm.ungrounded_seen == []


def test_generated_grounded_values_are_in_the_text_or_null(llm):
    from streams.engine.grounding import grounded

    results = llm.generate([TICKET, *TEXTS], "refunds")
    done = [(t, r) for t, r in zip([TICKET, *TEXTS], results) if isinstance(r, LLMResult)]
    assert done
    for text, r in done:
        for name in ("order_id", "amount"):
            assert r.fields[name] is None or grounded(r.fields[name], text), (name, r.fields)


def test_a_control_character_inside_a_string_is_text(llm):
    """xgrammar's length-capped strings admit a tab (any character but quote, backslash, CR,
    LF): strict JSON parsing used to dead-letter such an output as llm_invalid_output."""
    r = _parse(llm, "refunds", TICKET, '{"fields": {"urgency": "low", "order_id": null, "amount": null, '
                                       '"note": "a\tb\x01c"}}')
    assert isinstance(r, LLMResult) and r.fields["note"] == "a\tb\x01c"


# ---- per-field confidence -------------------------------------------------------------------------

def test_field_confidence_is_the_product_of_the_value_tokens_probabilities(llm):
    output = '{"fields": {"urgency": "high", "order_id": "55821", "amount": 84.2, "note": null}}'
    prepared = llm.tasks["refunds"]
    tokens = _tokens(llm, prepared, output)
    ends = [len(prepared.forced + llm.tokenizer.decode(tokens[: k + 1])) for k in range(len(tokens))]
    starts = [0, *ends[:-1]]
    at = output.index("84.2")  # the amount's value: the tokens that wrote "84.2"
    inside = [k for k in range(len(tokens)) if starts[k] < at + 4 and ends[k] > at]
    assert inside
    greedy_p = [1.0] * len(tokens)
    for k in inside:
        greedy_p[k] = 0.5
    r = _parse(llm, "refunds", TICKET, output, greedy_p)
    assert set(r.field_confidence) == {"urgency", "order_id", "amount", "note"}
    assert math.isclose(r.field_confidence["amount"], 0.5 ** len(inside))  # a product, not a mean
    assert all(r.field_confidence[k] == 1.0 for k in ("urgency", "order_id", "note"))
    # The token that opens a string (the choice against null) counts for that field.
    at = output.index('"55821"')
    opening = next(k for k in range(len(tokens)) if ends[k] > at)
    greedy_p = [1.0] * len(tokens)
    greedy_p[opening] = 0.25
    assert math.isclose(_parse(llm, "refunds", TICKET, output, greedy_p).field_confidence["order_id"], 0.25)


def test_a_nulled_field_keeps_the_confidence_of_what_the_model_wrote(llm):
    output = '{"fields": {"urgency": "high", "order_id": "99999", "amount": null, "note": null}}'
    tokens = _tokens(llm, llm.tasks["refunds"], output)
    r = _parse(llm, "refunds", TICKET, output, [0.9] * len(tokens))
    assert r.fields["order_id"] is None and r.ungrounded == ["order_id"]
    assert 0.0 < r.field_confidence["order_id"] < 0.9  # several tokens at 0.9 wrote "99999"


def test_generated_fields_have_probabilities_batched_as_alone(llm):
    batched = llm.generate(TEXTS, "tickets")
    alone = [llm.generate([t], "tickets")[0] for t in TEXTS]
    for a, b in zip(batched, alone):
        assert isinstance(a, LLMResult) and set(a.field_confidence) == set(a.fields) == {"urgency", "flagged"}
        assert all(0.0 < p <= 1.0 for p in a.field_confidence.values())
        for name, p in a.field_confidence.items():
            assert math.isclose(p, b.field_confidence[name], rel_tol=1e-3)
    assert len({r.field_confidence["urgency"] for r in batched}) > 1  # from the model, per text


def test_inference_carries_field_confidence_only_for_topics_with_fields(llm):
    plans = {"tickets": TopicPlan("tickets", TINY_LABELS, "encoder", "llm", TINY_FIELD_SCHEMA),
             "labels": TopicPlan("labels", TINY_LABELS, "encoder", "llm", None)}
    llm.add_task(LLMTask("labels", TINY_LABELS, None, None))
    engines = TopicEngines(plans, NoopEngine(), llm)
    [typed] = engines.infer(TEXTS[:1], TINY_LABELS, "tickets")
    [direct] = llm.generate(TEXTS[:1], "tickets")
    assert typed.field_confidence == direct.field_confidence and set(typed.field_confidence) == set(typed.fields)
    [plain] = engines.infer(TEXTS[:1], TINY_LABELS, "labels")
    assert plain.fields is None and plain.field_confidence is None


# ---- entity lists that end ------------------------------------------------------------------------

def test_the_entity_list_and_its_texts_are_bounded_in_the_schema():
    task = LLMTask("t", None, PEOPLE, None)
    entities = output_schema(task, 120, max_entities=8, max_entity_chars=64)["properties"]["entities"]
    assert entities["maxItems"] == 8 and entities["items"]["properties"]["text"]["maxLength"] == 64
    unbounded = output_schema(task, 120)["properties"]["entities"]
    assert "maxItems" not in unbounded and unbounded["items"]["properties"]["text"]["maxLength"] == 120


def test_the_grammar_closes_the_entity_list_at_its_cap(tiny_dir):
    llm = engine(tiny_dir, max_entities=2, max_entity_chars=5)
    prepared = llm.add_task(LLMTask("people", None, PEOPLE, None))
    item = '{"type": "CITY", "text": "%s"}'
    assert prepared.matcher.fork().accept_string('"entities": [%s, %s]}' % (item % "Denve", item % "Maria"))
    assert not prepared.matcher.fork().accept_string('"entities": [%s, %s, ' % (item % "a", item % "b"))
    assert not prepared.matcher.fork().accept_string('"entities": [%s' % (item % "Denver"))  # 6 chars


def test_random_weights_that_list_entities_forever_now_finish(tiny_dir):
    """The tiny random LM writes an entity text until the token cap (dead-lettered
    llm_truncated); with the list and its texts capped every output ends within the caps."""
    caps = {"max_new_tokens": 160, "retry_max_new_tokens": 200}
    unbounded = engine(tiny_dir, max_entities=None, max_entity_chars=None, max_string_chars=None, **caps)
    unbounded.add_task(LLMTask("people", None, PEOPLE, None))
    assert any(isinstance(r, LLMTruncated) for r in unbounded.generate(TEXTS, "people"))
    bounded = engine(tiny_dir, max_entities=3, max_entity_chars=12, **caps)
    bounded.add_task(LLMTask("people", None, PEOPLE, None))
    results = bounded.generate(TEXTS, "people")
    assert all(isinstance(r, LLMResult) for r in results), results
    for text, r in zip(TEXTS, results):
        assert len(r.entities) + r.dropped_spans <= 3
        assert all(text[e.start:e.end] == e.text and len(e.text) <= 12 for e in r.entities)


def test_settings_and_telemetry_reach_the_engine(monkeypatch):
    """STREAMS_LLM_MAX_ENTITIES / _MAX_ENTITY_CHARS become the engine's caps (0: none), and
    values nulled by grounding are counted in streams.llm.ungrounded_values."""
    from streams import runtime
    from streams.engine.llm import LLMEngine
    from streams.settings import Settings
    from streams.telemetry import Telemetry

    seen = {}
    monkeypatch.setattr(LLMEngine, "load", classmethod(lambda cls, ref, **options: seen.update(options)))
    telemetry = Telemetry.disabled()
    runtime.load_llm(Settings(), telemetry)
    assert (seen["max_entities"], seen["max_entity_chars"]) == (8, 64)
    assert seen["on_ungrounded"] == telemetry.metrics.record_llm_ungrounded_value
    runtime.load_llm(Settings(llm_max_entities=0, llm_max_entity_chars=0))
    assert (seen["max_entities"], seen["max_entity_chars"]) == (None, None)
