"""The LLM engine on a tiny random causal LM (tests/fixtures/tiny_llm.py): outputs valid by
construction, label probabilities, batched == alone, prefix cache == none, verbatim entity
offsets, the token cap's retry and its dead letter through the one pipeline."""

from __future__ import annotations

import math
import uuid

import fastavro
import pytest

from streams.engine import NoopEngine
from streams.engine.llm import LLMEngine, LLMResult, LLMTask, LLMTruncated
from streams.engine.topics import TopicEngines, TopicPlan
from tests.fixtures.tiny_llm import TINY_FIELD_SCHEMA, TINY_LABELS, TINY_FIELDS
from tests.fixtures.tiny_llm import tiny_engine as engine

LABELS = TINY_LABELS
TEXTS = ["Hello, my name is Maria Gonzalez and I was charged twice.",
         "My parcel has not arrived.", "Thanks!", "Gift wrap it, leave at the door, it is fragile.",
         "Maria", "Denver tracking says the parcel is late and my order was charged twice for it."]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/engine/conftest.py


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return engine(tiny_dir, max_batch=4)


def test_outputs_are_valid_and_labels_are_probabilities(llm):
    parsed = fastavro.parse_schema(TINY_FIELDS)
    results = llm.generate(TEXTS, "tickets")
    assert len(results) == len(TEXTS)
    for r in results:
        assert isinstance(r, LLMResult), r
        assert fastavro.validate(r.fields, parsed, raise_errors=False), r.fields
        c = r.classification
        assert c.label in LABELS.labels and set(c.scores) == set(LABELS.labels)
        assert math.isclose(sum(c.scores.values()), 1.0, rel_tol=1e-6)
        assert c.score == max(c.scores.values()) == c.scores[c.label]
        assert 0.0 < c.score < 1.0  # a probability from the model, not a constant
    assert len({r.classification.score for r in results}) > 1  # it depends on the text


def test_batched_equals_one_at_a_time_and_prefix_cache_equals_none(llm, tiny_dir):
    key = lambda r: (r.classification.label, round(r.classification.score, 4), r.fields)  # noqa: E731
    batched = [key(r) for r in llm.generate(TEXTS, "tickets")]
    alone = [key(llm.generate([t], "tickets")[0]) for t in TEXTS]
    assert batched == alone
    no_cache = engine(tiny_dir, max_batch=4, prefix_cache=False)
    assert no_cache.tasks["tickets"].prefix_cache is None and llm.tasks["tickets"].prefix_cache is not None
    assert [key(r) for r in no_cache.generate(TEXTS, "tickets")] == batched


def test_continuous_batching_refills_finished_rows_within_the_limits(tiny_dir):
    """A row that finished leaves the batch and the next text takes its place: with 2 places and
    6 texts there are several prefills, never more than 2 rows, and fewer steps than if each
    pair of texts had waited for its longer output; results still equal one-at-a-time."""
    two = engine(tiny_dir, max_batch=2)
    key = lambda r: (r.classification.label, round(r.classification.score, 4), r.fields)  # noqa: E731
    results = two.generate(TEXTS, "tickets")
    stats = two.last_pass
    assert stats["max_rows"] == 2 and stats["prefills"] >= 3
    lengths = [r.output_tokens for r in results]
    assert stats["row_steps"] == sum(lengths)  # every row stepped exactly up to its stop token
    by_prompt = sorted(range(len(TEXTS)), key=lambda i: len(two.prompt_ids("tickets", [TEXTS[i]])[0]))
    static = sum(max(lengths[i] for i in by_prompt[k:k + 2]) for k in range(0, len(TEXTS), 2))
    assert stats["steps"] <= static
    assert [key(r) for r in results] == [key(two.generate([t], "tickets")[0]) for t in TEXTS]


def test_a_generation_pass_reports_one_batch_fill_inside_an_inference_call(llm, monkeypatch):
    """The mean of the pass's rows per decoding step over the rows a step may hold: one value
    per pass, nothing per token; none from a call outside `infer` (the warm-up's)."""
    from streams.engine import llm as llm_module
    from streams.engine.thread import InferenceThread

    runner = InferenceThread("test-llm-fill")
    fills: list = []
    runner.on_batch_fill = lambda fill, engine: fills.append((fill, engine))
    monkeypatch.setattr(llm_module, "inference_thread", runner)
    runner.call(llm.generate, TEXTS[:3], "tickets")
    assert fills == []
    runner.infer(llm.generate, TEXTS[:3], "tickets")
    stats = llm.last_pass
    limit = llm.rows_per_step(len(llm.tasks["tickets"].prefix_ids),
                              max(len(p) for p in llm.prompt_ids("tickets", TEXTS[:3])), llm.max_new_tokens)
    assert fills[-1] == (pytest.approx(stats["row_steps"] / (stats["steps"] * limit)), "llm")
    assert all(engine == "llm" and 0 < fill <= 1 for fill, engine in fills)
    assert len(fills) <= 2  # one per pass: the first, and the retry of outputs cut off, if any
    assert fills[0][0] <= 3 / 4  # 3 texts in places for 4: never full


def test_rows_per_step_respects_the_token_budget(llm):
    small = LLMEngine.__new__(LLMEngine)
    small.max_batch, small.max_tokens = 8, 100
    assert small.rows_per_step(prefix=0, longest_prompt=40, cap=10) == 2
    assert small.rows_per_step(prefix=0, longest_prompt=400, cap=10) == 1  # one row always fits
    assert llm.rows_per_step(prefix=0, longest_prompt=1, cap=1) == llm.max_batch


def test_cut_off_output_is_retried_with_the_larger_cap_then_fails(tiny_dir, monkeypatch):
    retried = engine(tiny_dir, max_new_tokens=3, retry_max_new_tokens=96)
    caps = []
    original = retried._generate_pass
    monkeypatch.setattr(retried, "_generate_pass",
                        lambda prepared, prompts, cap, constrained: caps.append((len(prompts), cap))
                        or original(prepared, prompts, cap, constrained))
    results = retried.generate(TEXTS[:3], "tickets")
    assert caps == [(3, 3), (3, 96)]  # every output cut off at 3 tokens, all retried once
    assert all(isinstance(r, LLMResult) for r in results)

    failing = engine(tiny_dir, max_new_tokens=3, retry_max_new_tokens=4)
    results = failing.generate(TEXTS[:2], "tickets")
    assert all(isinstance(r, LLMTruncated) and r.reason == "llm_truncated" for r in results)


def test_entity_offsets_are_found_verbatim_and_invented_spans_dropped(llm):
    prepared = llm.tasks["tickets"]
    text = "Maria wrote to Maria's bank in Denver."
    items = [{"type": "GIVEN_NAME", "text": "Maria"}, {"type": "GIVEN_NAME", "text": "Maria"},
             {"type": "CITY", "text": "Denver"}, {"type": "CITY", "text": "Boston"},
             {"type": "CITY", "text": "denver"}]  # wrong case: not verbatim
    object.__setattr__(prepared.task, "entity_types", ("GIVEN_NAME", "CITY"))
    try:
        entities, dropped = llm._entities(prepared, text, [], [], "", items)
    finally:
        object.__setattr__(prepared.task, "entity_types", None)
    assert [(e.label, e.text, e.start, e.end) for e in entities] == [
        ("GIVEN_NAME", "Maria", 0, 5), ("GIVEN_NAME", "Maria", 15, 20), ("CITY", "Denver", 31, 37)]
    assert all(text[e.start:e.end] == e.text for e in entities)
    assert dropped == 2


def test_entities_from_the_llm_are_counted_when_dropped(tiny_dir):
    dropped = []
    llm = engine(tiny_dir, max_new_tokens=96, retry_max_new_tokens=160,
                 on_dropped_spans=lambda topic, n: dropped.append((topic, n)))
    llm.add_task(LLMTask("people", None, ("GIVEN_NAME", "CITY"), None))
    results = llm.generate(TEXTS[:3], "people")
    for text, r in zip(TEXTS, results):
        if isinstance(r, LLMResult):  # random weights may write a string until the cap
            assert all(text[e.start:e.end] == e.text for e in r.entities)
            assert r.classification is None and r.fields is None
    counted = sum(n for _, n in dropped)
    assert counted == sum(r.dropped_spans for r in results if isinstance(r, LLMResult))


def test_topic_engines_mix_encoder_and_llm(llm):
    plans = {"tickets": TopicPlan("tickets", LABELS, "encoder", "llm", TINY_FIELD_SCHEMA),
             "notes": TopicPlan("notes", LABELS, "encoder", "encoder", None)}
    engines = TopicEngines(plans, NoopEngine(), llm)
    [a] = engines.infer(["My parcel has not arrived."], LABELS, "tickets")
    [b] = llm.generate(["My parcel has not arrived."], "tickets")
    assert a.classification == b.classification and a.fields == b.fields and a.entities == []
    [n] = engines.infer(["x"], LABELS, "notes")
    assert n.classification.label == "billing" and n.fields is None  # the no-op encoder's label
    names = {(m.task, m.name) for m in engines.models_for("tickets")}
    assert ("classification", llm.info.name) in names and ("fields", llm.info.name) in names
    assert ("entities", "noop") in names


def test_truncated_output_is_dead_lettered_through_the_pipeline(tiny_dir, monkeypatch):
    """The one pipeline: a text the LLM could not finish becomes a dead letter with reason
    llm_truncated; the other events of its batch are enriched."""
    from streams.pipeline import enrich_records
    from streams.records import InRecord
    from streams.runtime import Runtime
    from streams.serde import SchemaCatalog
    from streams.settings import Settings, TopicRoute
    from streams.telemetry import Telemetry

    llm = engine(tiny_dir, max_new_tokens=48, retry_max_new_tokens=64)
    real = llm.generate

    def generate(texts, topic):  # the text "LONG" is cut off for real: caps of 3 tokens
        out = real(texts, topic)
        long = [i for i, t in enumerate(texts) if t == "LONG"]
        if long:
            llm.max_new_tokens = llm.retry_max_new_tokens = 3
            try:
                cut = real([texts[i] for i in long], topic)
            finally:
                llm.max_new_tokens, llm.retry_max_new_tokens = 48, 64
            for i, r in zip(long, cut):
                out[i] = r
        return out

    monkeypatch.setattr(llm, "generate", generate)
    route = TopicRoute(input="tickets", labels={"billing": "a charge", "delivery": "a parcel",
                                                "praise": "thanks"}, label_from="llm")
    settings = Settings(kafka_bootstrap="127.0.0.1:1", topics=[route], worker_id="w",
                        schema_registry_url=f"mock://llm-{uuid.uuid4().hex}")
    catalog = SchemaCatalog.from_settings(settings)
    catalog.ensure_registered()
    llm.add_task(LLMTask("tickets", LABELS, None, None))
    engines = TopicEngines({"tickets": TopicPlan("tickets", LABELS, "encoder", "llm", None)},
                           NoopEngine(), llm)
    class NoProducer:  # enrich_records only sizes records (or not); nothing is produced here
        def fits(self, record) -> bool:
            return True

    runtime = Runtime(settings, engines, catalog, NoProducer(), telemetry=Telemetry.disabled())
    records = [InRecord("tickets", 0, i, 1_700_000_000_000, b"k",
                        ('{"event_id": "e%d", "text": "%s"}' % (i, t)).encode())
               for i, t in enumerate(["Thanks!", "LONG", "My parcel has not arrived."])]
    result = enrich_records(runtime, route, records)
    assert (result.enriched, result.dead) == (2, 1)
    [dead] = [o for o in result.out if o.topic == route.dlq]
    headers = dict(dead.headers)
    assert headers["__streams.errors.reason"] == b"llm_truncated"
    assert headers["__streams.errors.offset"] == b"1"
    assert {m.name for m in runtime.models["tickets"]} == {"noop", llm.info.name}


def test_runtime_loads_only_the_engines_the_topics_use(llm, tiny_dir, monkeypatch, tmp_path):
    from streams import engine as engine_package, runtime
    from streams.settings import Settings, TopicRoute
    from tests.fixtures.tiny_llm import write_tiny_field_record

    loaded = []
    monkeypatch.setattr(engine_package.EncoderEngine, "load", lambda *a, **k: loaded.append("encoder") or NoopEngine())
    monkeypatch.setattr(runtime, "load_llm", lambda s, t=None: loaded.append("llm") or engine(tiny_dir))
    write_tiny_field_record(tmp_path)
    labels = {"billing": "a charge", "delivery": "a parcel"}

    def load(*routes):
        loaded.clear()
        return runtime.load_engines(Settings(topics=list(routes), schema_dir=tmp_path))

    plain = load(TopicRoute(input="a", labels=labels))
    assert loaded == ["encoder"] and isinstance(plain, NoopEngine)  # as before: no LLM loaded
    only_llm = load(TopicRoute(input="a", labels=labels, entities_from="llm", label_from="llm"))
    assert loaded == ["llm"] and only_llm.encoder is None  # nothing uses the encoder
    assert only_llm.llm.tasks["a"].task.entity_types and only_llm.llm.tasks["a"].task.fields is None
    mixed = load(TopicRoute(input="a", labels=labels, label_from="llm", fields="TinyFields"),
                 TopicRoute(input="b", labels=labels))
    assert loaded == ["encoder", "llm"] and "a" in mixed.llm.tasks and "b" not in mixed.llm.tasks
    assert mixed.llm.tasks["a"].task.entity_types is None  # entities stay on the encoder
    assert mixed.llm.tasks["a"].task.fields == TINY_FIELD_SCHEMA  # the record's JSON Schema
