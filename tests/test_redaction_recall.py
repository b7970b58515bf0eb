"""`streams redaction-recall` (issue 28): the labelled generator covers every type the entity
model claims, and the measure counts exactly the labelled characters no redaction covers."""

from __future__ import annotations

from collections import Counter

from bench.pii_corpus import TYPES, pii_texts
from bench.redaction_recall import measure, run
from streams.settings import Settings


def test_the_corpus_labels_every_type_often_and_its_spans_hold_their_values():
    texts = pii_texts(240)
    assert len(texts) == 240 and pii_texts(240) == texts  # deterministic
    counts = Counter(label for t in texts for label, _, _ in t.pii)
    assert set(counts) == set(TYPES) and min(counts.values()) >= 60, counts
    for t in texts:
        for label, start, end in t.pii:
            value = t.text[start:end]
            assert value and value == value.strip(), (label, value)


def test_measure_counts_the_characters_left():
    texts = pii_texts(20)
    found = [[{"label": l, "start": s, "end": e} for l, s, e in t.pii] for t in texts]
    perfect = measure(texts, found)
    assert perfect["all"]["chars_left"] == 0 and perfect["other_chars_redacted"] == 0
    # The model misses every URL and finds only the first half of each phone and each email.
    half = ("PHONE", "EMAIL")
    partial = [[({"label": l, "start": s, "end": s + (e - s) // 2} if l in half else {"label": l, "start": s, "end": e})
                for l, s, e in t.pii if l != "URL"] for t in texts]
    rows = {r["label"]: r for r in measure(texts, partial)["types"]}
    assert rows["URL"]["left_share"] == 1.0 and rows["URL"]["values_whole"] == rows["URL"]["values"] > 0
    phones = [(s, e) for t in texts for l, s, e in t.pii if l == "PHONE"]
    assert phones and rows["PHONE"]["chars_left"] == sum((e - s) - (e - s) // 2 for s, e in phones)
    assert rows["PHONE"]["values_whole"] == 0
    # Half an email is redacted whole: the span grows to the address it lies in.
    assert rows["EMAIL"]["values"] > 0 and rows["EMAIL"]["chars_left"] == 0
    # A span over text that is not personal data counts as over-redaction, not recall.
    over = measure(texts[:1], [[{"label": "CITY", "start": 0, "end": 5}]])
    assert over["other_chars_redacted"] == 5


def test_run_uses_the_configured_entity_model(tiny_models, model_cache):
    report = run(8, settings=Settings(ner_model=str(tiny_models["ner"]), classifier_model=str(tiny_models["encoder"]),
                                      model_cache=model_cache, device="cpu"))
    assert report["texts"] == 8 and report["all"]["values"] > 0
    assert {r["label"] for r in report["types"]} == set(TYPES)
