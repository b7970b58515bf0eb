"""streams.compare.compare: the pure join of two enriched topics, with hand-computed figures
(the command against the embedded broker: tests/integration/test_compare.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from rich.console import Console

from streams.compare import Enriched, Side, compare, report

SECRET_TEXT = "maria gonzalez"  # an entity's text: must never be printed


def rec(eid: str, label: str = "billing", score: float = 0.9, *, topic: str = "tickets",
        entities=(), fields=..., processed_ms: int = 0, models=(("classification", "clf", "v1"),)) -> dict:
    record = {
        "event_id": eid,
        "source": {"topic": topic, "partition": 0, "offset": 0, "timestamp": None},
        "entities": [{"label": lb, "text": SECRET_TEXT, "start": s, "end": e, "score": 0.5}
                     for lb, s, e in entities],
        "classification": {"label": label, "score": score, "scores": []},
        "models": [{"task": t, "name": n, "version": v} for t, n, v in models],
        "processed_at": datetime.fromtimestamp(processed_ms / 1000, timezone.utc),
        "inference_ms": 1.0,
    }
    if fields is not ...:  # absent: a topic without typed fields (the plain schema)
        record["fields"] = fields
    return record


def side(topic: str, *records: dict, partition: int = 0) -> Side:
    """Records at offsets 0, 1, 2, ... of one partition."""
    return Side(topic, [Enriched(partition, i, r) for i, r in enumerate(records)], read=len(records))


def only(comparison):
    [t] = comparison.topics
    return t


def test_duplicates_keep_the_last_by_offset_and_are_counted():
    a = side("A", rec("e1", "billing"), rec("e2", "billing"), rec("e1", "delivery"))  # e1 again, later
    b = side("B", rec("e1", "delivery"), rec("e2", "billing"), rec("e2", "billing"), rec("e2", "billing"))
    t = only(compare(a, b))
    assert (t.joined, t.only_a, t.only_b) == (2, 0, 0)
    assert (t.duplicates_a, t.duplicates_b) == (1, 2)
    assert t.label_agreement == 1.0  # A's e1 is its later record, "delivery" (the first said billing)
    assert t.confusion == {"billing": {"billing": 1}, "delivery": {"delivery": 1}}


def test_duplicates_order_by_offset_not_by_list_order():
    a = Side("A", [Enriched(0, 7, rec("e1", "delivery")), Enriched(0, 3, rec("e1", "billing"))])
    t = only(compare(a, side("B", rec("e1", "delivery"))))
    assert t.duplicates_a == 1 and t.confusion == {"delivery": {"delivery": 1}}


def test_duplicates_across_partitions_keep_the_later_processed():
    a = Side("A", [Enriched(0, 9, rec("e1", "delivery", processed_ms=1000)),
                   Enriched(1, 0, rec("e1", "billing", processed_ms=500))])
    t = only(compare(a, side("B", rec("e1", "delivery"))))
    assert t.duplicates_a == 1 and t.confusion == {"delivery": {"delivery": 1}}


def test_events_only_in_one_side_are_counted_not_joined():
    a = side("A", rec("e1"), rec("e2"), rec("e3"))
    b = side("B", rec("e2"), rec("e3"), rec("e4"), rec("e5"))
    t = only(compare(a, b))
    assert (t.joined, t.only_a, t.only_b) == (2, 1, 2)
    assert t.samples["only_a"] == ["e1"] and t.samples["only_b"] == ["e4", "e5"]
    assert sum(n for row in t.confusion.values() for n in row.values()) == 2


def test_confusion_table_and_label_agreement():
    a_labels = ["billing", "billing", "delivery", "delivery", "delivery"]
    b_labels = ["billing", "delivery", "delivery", "delivery", "billing"]
    a = side("A", *[rec(f"e{i}", lb) for i, lb in enumerate(a_labels)])
    b = side("B", *[rec(f"e{i}", lb) for i, lb in enumerate(b_labels)])
    t = only(compare(a, b))
    assert t.confusion == {"billing": {"billing": 1, "delivery": 1}, "delivery": {"billing": 1, "delivery": 2}}
    assert t.label_agreement == pytest.approx(3 / 5)
    assert t.samples["label_differs"] == ["e1", "e4"]


def test_label_sets_that_differ_give_a_rectangular_table():
    a = side("A", rec("e1", "billing"), rec("e2", "delivery"))
    b = side("B", rec("e1", "payment"), rec("e2", "shipping"))
    t = only(compare(a, b))
    assert t.label_agreement == 0.0
    assert t.confusion == {"billing": {"payment": 1}, "delivery": {"shipping": 1}}
    assert t.score_shift["n"] == 0 and t.score_shift["mean_abs"] is None


def test_score_shift_where_labels_agree():
    a = side("A", rec("e1", score=0.9), rec("e2", score=0.8), rec("e3", score=0.5), rec("e4", "x", score=0.1))
    b = side("B", rec("e1", score=0.85), rec("e2", score=0.8), rec("e3", score=0.7), rec("e4", "y", score=0.9))
    s = only(compare(a, b)).score_shift  # e4's labels differ: not a shift
    assert s["n"] == 3
    assert s["mean_abs"] == pytest.approx((0.05 + 0 + 0.2) / 3)
    assert s["p95_abs"] == pytest.approx(0.2)  # nearest rank: ceil(0.95 * 3) = the 3rd of 3
    assert s["max_abs"] == pytest.approx(0.2)
    assert s["mean_signed"] == pytest.approx((-0.05 + 0 + 0.2) / 3)


def test_entity_span_precision_recall_f1():
    a = side("A", rec("e1", entities=[("EMAIL", 0, 5), ("CITY", 10, 16)]), rec("e2", entities=[("GIVEN_NAME", 0, 4)]))
    b = side("B", rec("e1", entities=[("EMAIL", 0, 5), ("CITY", 10, 15)]),
             rec("e2", entities=[("GIVEN_NAME", 0, 4), ("CITY", 20, 25)]))
    ents = only(compare(a, b)).entities
    o = ents["overall"]
    assert (o["true"], o["predicted"], o["tp"]) == (3, 4, 2)
    assert o["precision"] == pytest.approx(2 / 4)
    assert o["recall"] == pytest.approx(2 / 3)
    assert o["f1"] == pytest.approx(4 / 7)
    assert ents["per_type"]["CITY"] == {"true": 1, "predicted": 2, "tp": 0, "precision": 0.0, "recall": 0.0,
                                        "f1": 0.0}
    assert ents["per_type"]["EMAIL"]["f1"] == 1.0


def test_same_spans_give_f1_one_and_no_spans_give_none():
    spans = [("EMAIL", 3, 9)]
    same = only(compare(side("A", rec("e1", entities=spans)), side("B", rec("e1", entities=spans))))
    assert same.entities["overall"]["f1"] == 1.0
    none = only(compare(side("A", rec("e1")), side("B", rec("e1"))))
    assert none.entities["overall"]["f1"] is None and none.entities["per_type"] == {}


def test_typed_fields_equal_and_null_shares():
    a = side("A", rec("e1", fields={"order_id": "1", "amount": None}),
             rec("e2", fields={"order_id": None, "amount": None}),
             rec("e3", fields=None), rec("e4"))
    b = side("B", rec("e1", fields={"order_id": "1", "amount": 5.0}),
             rec("e2", fields=None),  # B has no fields record here: every field null
             rec("e3", fields=None), rec("e4"))
    f = only(compare(a, b)).fields  # e3, e4: no fields on either side, not counted
    assert f["order_id"] == {"n": 2, "equal": 1.0, "null_a": 0.5, "null_b": 0.5}
    assert f["amount"] == {"n": 2, "equal": 0.5, "null_a": 1.0, "null_b": 0.5}


def test_no_fields_anywhere_gives_no_field_figures():
    assert only(compare(side("A", rec("e1")), side("B", rec("e1")))).fields == {}


def test_input_topics_are_compared_apart():
    a = side("A", rec("e1", topic="tickets"), rec("e1", "delivery", topic="notes"))
    b = side("B", rec("e1", topic="tickets"), rec("e1", "billing", topic="notes"))
    c = compare(a, b)
    by_topic = {t.input_topic: t for t in c.topics}
    assert set(by_topic) == {"notes", "tickets"}
    assert (by_topic["notes"].joined, by_topic["notes"].label_agreement) == (1, 0.0)
    assert (by_topic["tickets"].joined, by_topic["tickets"].label_agreement) == (1, 1.0)
    assert by_topic["notes"].duplicates_a == 0  # the same id in another input topic is no duplicate


def test_undecodable_and_unusable_records_are_counted_and_json_has_every_figure():
    a = side("A", rec("e1"), {"not": "an enriched event"})
    a.undecodable.update({"SerializationError": 2})
    b = side("B", rec("e1"))
    b.outside = 4
    c = compare(a, b)
    assert (c.unusable_a, c.undecodable_a, c.outside_b) == (1, {"SerializationError": 2}, 4)
    assert only(c).joined == 1
    data = json.loads(json.dumps(c.to_json()))
    assert data["topics"][0]["models_a"] == ["classification:clf@v1"]
    assert data["topics"][0]["entities"]["overall"]["f1"] is None
    assert data["undecodable_a"] == {"SerializationError": 2}


def test_report_prints_figures_and_never_event_text():
    a = side("A", rec("e1", entities=[("GIVEN_NAME", 0, 5)], fields={"order_id": "1"}), rec("e2"))
    b = side("B", rec("e1", "delivery", entities=[("GIVEN_NAME", 0, 5)], fields={"order_id": "1"}))
    console = Console(record=True, width=200)
    for part in report(compare(a, b)):
        console.print(part)
    text = console.export_text()
    assert "joined 1, only in A 1, only in B 0" in text
    assert "agreement 0.0% (0 of 1)" in text
    assert "order_id" in text and "GIVEN_NAME" in text
    assert SECRET_TEXT not in text


def test_chart_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from streams.compare import plot

    a = side("A", rec("e1", entities=[("EMAIL", 0, 5)], fields={"order_id": "1"}), rec("e2", "delivery"))
    b = side("B", rec("e1", entities=[("EMAIL", 0, 5)], fields={"order_id": "2"}), rec("e2", "billing"))
    path = plot(compare(a, b), tmp_path / "out" / "compare.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
