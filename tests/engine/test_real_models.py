"""The real default models (Rampart NER + all-MiniLM-L6-v2) on the shipped samples: what a
person reading the text expects to come out."""

from __future__ import annotations

import pytest

from streams import samples
from streams.engine import EncoderEngine, LabelSet
from streams.engine.rampart import ensure_rampart_checkpoint, rampart_source_dir
from streams.settings import ORDER_NOTE_LABELS, SUPPORT_TICKET_LABELS

pytestmark = pytest.mark.models

TICKETS = LabelSet.from_mapping(SUPPORT_TICKET_LABELS)
NOTES = LabelSet.from_mapping(ORDER_NOTE_LABELS)
SAMPLES = {row["event_id"]: row["text"] for row in samples.events()}


@pytest.fixture(scope="module")
def engine(model_cache) -> EncoderEngine:
    return EncoderEngine.load(cache_dir=model_cache, device="cpu")


def run(engine: EncoderEngine, event_id: str, labels: LabelSet):
    text = SAMPLES[event_id]
    [result] = engine.infer([text], labels)
    for e in result.entities:
        assert e.text == text[e.start:e.end]
    return result.classification.label, {(e.label, e.text) for e in result.entities}


def test_default_models_are_named(engine):
    assert [(m.task, m.name) for m in engine.models] == [
        ("entities", "rampart-pii-ner"), ("classification", "all-MiniLM-L6-v2")]


def test_double_charge_ticket(engine):
    label, entities = run(engine, "tkt-1001", TICKETS)
    assert label == "billing"
    assert {("GIVEN_NAME", "Maria"), ("SURNAME", "Gonzalez"),
            ("EMAIL", "maria.gonzalez@example.com")} <= entities


def test_late_parcel_ticket(engine):
    label, entities = run(engine, "tkt-1002", TICKETS)
    assert label == "delivery"
    assert ("CITY", "Denver") in entities


def test_locked_account_ticket(engine):
    label, entities = run(engine, "tkt-1004", TICKETS)
    assert label == "account access"
    assert ("EMAIL", "d.okafor@mailbox.org") in entities


def test_new_address_note(engine):
    label, entities = run(engine, "ord-2003", NOTES)
    assert label == "address change"
    assert {("CITY", "San Diego"), ("ZIP_CODE", "92101")} <= entities


def test_gift_note(engine):
    label, entities = run(engine, "ord-2002", NOTES)
    assert label == "gift"
    assert ("GIVEN_NAME", "Laura") in entities


def test_batch_of_samples_matches_one_by_one(engine):
    ids = ["tkt-1001", "tkt-1003", "tkt-1004", "tkt-1010"]
    batched = engine.infer([SAMPLES[i] for i in ids], TICKETS)
    for event_id, together in zip(ids, batched):
        [alone] = engine.infer([SAMPLES[event_id]], TICKETS)
        assert [(e.label, e.start, e.end) for e in alone.entities] == \
            [(e.label, e.start, e.end) for e in together.entities]
        assert alone.classification.label == together.classification.label


def test_rampart_conversion_keeps_the_license(tmp_path):
    target = ensure_rampart_checkpoint(tmp_path)
    assert (target / "model.safetensors").stat().st_size > 10_000_000
    assert (target / "LICENSE").read_bytes() == (rampart_source_dir() / "LICENSE").read_bytes()
    assert (target / "config.json").is_file() and (target / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no .tmp left behind
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    assert ensure_rampart_checkpoint(tmp_path) == target  # second call reuses it
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime


def test_converted_checkpoint_loads_every_weight(tmp_path):
    from transformers import AutoModelForTokenClassification

    _, info = AutoModelForTokenClassification.from_pretrained(
        ensure_rampart_checkpoint(tmp_path), output_loading_info=True)
    assert info["missing_keys"] == [] and info["mismatched_keys"] == []
