"""Redaction (issue 28): the pure functions over text and spans (streams/redact.py), the policy in
the settings, and the pipeline's outputs: `redacted_text` in the enriched record, the redacted
copy of the input beside it, and the pseudonym key kept out of logs and dead letters."""

from __future__ import annotations

import json
import logging
import re
import uuid

import numpy
import pytest
from pydantic import ValidationError

from streams.engine import Classification, Inference, NoopEngine
from streams.engine.types import Entity
from streams.pipeline import enrich_records
from streams.records import InRecord
from streams.redact import Pseudonymizer, RedactionPolicy, Redactor, normalise, plan
from streams.runtime import Runtime, deliver
from streams.serde import SchemaCatalog
from streams.settings import Settings
from streams.telemetry import Telemetry
from tests.fixtures.producers import RefusingProducer

KEY = "k" * 8 + "SECRET-redaction-key-0123456789"
OTHER_KEY = "another-secret-key-of-enough-bytes"
ALL = RedactionPolicy()  # every type replaced


def span(label, start, end):
    return {"label": label, "start": start, "end": end}


def redact(text, spans, policy=ALL, key=KEY):
    return Redactor(policy, Pseudonymizer(key.encode(), "k1")).redact(text, spans)


# -- operators -------------------------------------------------------------------------------------

def test_each_operator():
    text = "Mail ann@example.com or call 555-123-4567, Ann Lee."
    spans = [span("EMAIL", 5, 20), span("PHONE", 29, 41), span("GIVEN_NAME", 43, 46), span("SURNAME", 47, 50)]
    policy = RedactionPolicy(types={"EMAIL": "pseudonym", "PHONE": "mask", "GIVEN_NAME": "replace",
                                    "SURNAME": "drop"})
    out = redact(text, spans, policy)
    assert re.fullmatch(r"Mail <EMAIL:k1:[0-9a-f]{16}> or call \*{12}, <GIVEN_NAME> \.", out), out
    fixed = RedactionPolicy(types={"PHONE": "mask"}, mask_char="#", mask_length=4)
    assert redact("call 555-123-4567 now", [span("PHONE", 5, 17)], fixed) == "call #### now"
    assert redact("call 555-123-4567 now", [span("PHONE", 5, 17)],
                  RedactionPolicy(types={"PHONE": "keep"})) == "call 555-123-4567 now"


def test_types_without_an_operator_get_the_default_which_fails_closed():
    assert redact("Ann in Denver", [span("CITY", 7, 13)], RedactionPolicy(types={"EMAIL": "mask"})) == \
        "Ann in <CITY>"
    assert redact("Ann in Denver", [span("CITY", 7, 13)], RedactionPolicy(default="keep")) == "Ann in Denver"
    assert RedactionPolicy(types={"email": "drop"}).operator("EMAIL") == "drop"


def test_pseudonyms_are_stable_normalised_and_differ_by_key():
    one = redact("JOE@Example.com", [span("EMAIL", 0, 15)], RedactionPolicy(default="pseudonym"))
    again = redact("x joe@example.com", [span("EMAIL", 2, 17)], RedactionPolicy(default="pseudonym"))
    assert one == again.removeprefix("x ")
    other = redact("joe@example.com", [span("EMAIL", 0, 15)], RedactionPolicy(default="pseudonym"),
                   key=OTHER_KEY)
    assert other != one and other.startswith("<EMAIL:k1:")
    assert normalise("PHONE", "(555) 123-4567") == normalise("PHONE", "555.123.4567") == "5551234567"
    assert normalise("GIVEN_NAME", "  ÅSA\u00a0 ") == "åsa"
    with pytest.raises(ValueError):
        Pseudonymizer(b"short", "k1")
    with pytest.raises(ValueError):
        Pseudonymizer(KEY.encode(), "k1>")
    assert KEY not in repr(Pseudonymizer(KEY.encode(), "k1"))
    assert KEY not in repr(Redactor(ALL, Pseudonymizer(KEY.encode(), "k1")))


def test_pseudonym_needs_a_key():
    with pytest.raises(ValueError, match="STREAMS_REDACTION_KEY"):
        Redactor(RedactionPolicy(types={"EMAIL": "pseudonym"}))


# -- spans: overlap, windows, Unicode, hostile ---------------------------------------------------

def test_overlapping_duplicate_and_touching_spans_merge():
    text = "Write to Maria Gonzalez now"
    # Two windows of a long text found the same name twice, one of them cut differently.
    spans = [span("GIVEN_NAME", 9, 14), span("GIVEN_NAME", 9, 14), span("SURNAME", 15, 23),
             span("SURNAME", 12, 23)]
    assert redact(text, spans) == "Write to <SURNAME> now"  # one span: the label of the longest part
    # Touching spans of one type are one value (a window boundary inside it) ...
    assert redact("id 123456 ok", [span("TAX_ID", 3, 6), span("TAX_ID", 6, 9)]) == "id <TAX_ID> ok"
    # ... of two types, two values.
    assert redact("12Main", [span("BUILDING_NUMBER", 0, 2), span("STREET_NAME", 2, 6)]) == \
        "<BUILDING_NUMBER><STREET_NAME>"
    # The most protective operator of the merged parts wins.
    policy = RedactionPolicy(types={"EMAIL": "pseudonym", "GIVEN_NAME": "drop"})
    assert redact("x ann@x.io y", [span("EMAIL", 2, 10), span("GIVEN_NAME", 2, 5)], policy) == "x  y"
    assert [(r.start, r.end) for r in plan("abcdefgh", [span("CITY", 4, 6), span("CITY", 0, 8)], ALL)] == [(0, 8)]


def test_unicode_offsets_are_code_points_and_whole_characters():
    emoji = "Hi 👩🏽‍💻 Zoë, call me"
    start = emoji.index("Zoë")
    assert redact(emoji, [span("GIVEN_NAME", start, start + 3)]) == "Hi 👩🏽‍💻 <GIVEN_NAME>, call me"
    # A name written with a combining accent: a span that stops before the accent takes it too.
    combining = "Dear Jose\u0301, thanks"
    assert redact(combining, [span("GIVEN_NAME", 5, 9)]) == "Dear <GIVEN_NAME>, thanks"
    # A span that starts on the accent starts at its letter.
    assert redact(combining, [span("GIVEN_NAME", 9, 10)]) == "Dear Jos<GIVEN_NAME>, thanks"
    # An emoji span cut inside its ZWJ sequence takes the whole sequence.
    family = "a 👨‍👩‍👧 b"
    assert redact(family, [span("GIVEN_NAME", 2, 3)]) == "a <GIVEN_NAME> b"
    assert redact(family, [span("GIVEN_NAME", 4, 5)]) == "a <GIVEN_NAME> b"  # from its middle too
    rtl = "שלום דנה כהן, תודה"
    start = rtl.index("דנה")
    assert redact(rtl, [span("GIVEN_NAME", start, start + 3), span("SURNAME", start + 4, start + 7)]) == \
        "שלום <GIVEN_NAME> <SURNAME>, תודה"
    masked = RedactionPolicy(default="mask")
    assert redact("名前は山田です", [span("SURNAME", 3, 5)], masked) == "名前は**です"


def test_spans_at_the_edges_empty_and_hostile():
    text = "Ann met Bob"
    assert redact(text, [span("GIVEN_NAME", 0, 3), span("GIVEN_NAME", 8, 11)]) == "<GIVEN_NAME> met <GIVEN_NAME>"
    assert redact(text, [span("GIVEN_NAME", 0, 11)]) == "<GIVEN_NAME>"
    hostile = [span("GIVEN_NAME", 4, 4), span("GIVEN_NAME", 7, 2), span("GIVEN_NAME", -5, -1),
               span("GIVEN_NAME", 50, 60), span("GIVEN_NAME", None, 3), span("GIVEN_NAME", 0.0, 3.0),
               span("GIVEN_NAME", True, 3), span("GIVEN_NAME", "0", "3"), {"label": "X"}, object(), None]
    assert redact(text, hostile) == text
    # Out of range ends are clipped, not dropped: the part inside the text is still personal data.
    assert redact(text, [span("GIVEN_NAME", 8, 10**12), span("GIVEN_NAME", -10**12, 3)]) == \
        "<GIVEN_NAME> met <GIVEN_NAME>"
    # A label cannot write markup or a fake token into the text.
    assert redact(text, [span("<EMAIL:k1:00>", 0, 3), span(None, 8, 11)]) == "<EMAILK100> met <PII>"
    assert redact("", [span("EMAIL", 0, 5)]) == ""
    assert redact(text, []) == text
    entity = Entity("GIVEN_NAME", "Ann", 0, 3, 0.9)  # the engine's entities work as they are
    assert redact(text, [entity]) == "<GIVEN_NAME> met Bob"
    assert redact(text, [span("GIVEN_NAME", numpy.int64(8), numpy.int64(11))]) == "Ann met <GIVEN_NAME>"


# -- settings ------------------------------------------------------------------------------------

PSEUDONYM_ROUTE = [{"input": "t.in", "redact": {"types": {"EMAIL": "pseudonym"}, "copy_topic": "t.in.redacted"}}]


def test_a_pseudonym_policy_without_a_key_is_a_settings_error(monkeypatch):
    monkeypatch.setenv("STREAMS_TOPICS", json.dumps(PSEUDONYM_ROUTE))
    monkeypatch.delenv("STREAMS_REDACTION_KEY", raising=False)
    with pytest.raises(ValidationError, match="t.in uses pseudonym: set STREAMS_REDACTION_KEY"):
        Settings()
    monkeypatch.setenv("STREAMS_REDACTION_KEY", KEY[:10])  # too short: the message never shows it
    with pytest.raises(ValidationError) as err:
        Settings()
    assert "at least 16 bytes" in str(err.value) and KEY[:10] not in str(err.value)
    monkeypatch.setenv("STREAMS_REDACTION_KEY", KEY)
    s = Settings()
    assert KEY not in repr(s) and KEY not in str(s.model_dump())
    assert s.route("t.in").produces == ["t.in.enriched", "t.in.dlq", "t.in.redacted"]
    assert s.redactors()["t.in"].redact("a@b.c", [span("EMAIL", 0, 5)]).startswith("<EMAIL:k1:")


def test_a_misspelt_policy_key_is_a_settings_error():
    with pytest.raises(ValidationError, match="copy-topic"):
        Settings(topics=[{"input": "t.in", "redact": {"copy-topic": "t.in.redacted"}}])


def test_a_copy_topic_must_be_a_topic_of_its_own():
    with pytest.raises(ValidationError, match="copy topics must be topics of their own: t.in.enriched"):
        Settings(topics=[{"input": "t.in", "redact": {"copy_topic": "t.in.enriched"}}])


def test_the_default_routes_redact_support_tickets_without_a_key():
    s = Settings(redaction_key=None)
    assert s.route("support.tickets").redact == RedactionPolicy()
    assert s.route("orders.notes").redact is None
    assert set(s.redactors()) == {"support.tickets"}


# -- the pipeline ----------------------------------------------------------------------------------

class FindingEngine(NoopEngine):
    """Finds emails and capitalised words after "I am" (enough to redact something)."""

    def infer(self, texts, labels, topic=None):
        out = []
        for text in texts:
            if "CRASH" in text:
                out.append(RuntimeError("model failed"))
                continue
            ents = [Entity("EMAIL", m.group(), m.start(), m.end(), 0.99)
                    for m in re.finditer(r"\S+@\S+\.\w+", text)]
            ents += [Entity("GIVEN_NAME", m.group(1), m.start(1), m.end(1), 0.9)
                     for m in re.finditer(r"I am (\w+)", text)]
            out.append(Inference(sorted(ents, key=lambda e: e.start), Classification("billing", 1.0, {"billing": 1.0})))
        return out


def _runtime(policy: dict, key: str | None = KEY) -> Runtime:
    settings = Settings(topics=[{"input": "t.in", "labels": {"billing": "money"}, "redact": policy}],
                        redaction_key=key, worker_id="w1")
    catalog = SchemaCatalog(f"mock://redact-{uuid.uuid4().hex}", settings.schema_dir, ["t.in"], ["t.in.enriched"],
                            copy_topics=[r.copy_topic for r in settings.topics if r.copy_topic])
    runtime = Runtime(settings, FindingEngine(), catalog, RefusingProducer("copy"), telemetry=Telemetry.disabled())
    runtime.engine.runs_models = False
    return runtime


def _rec(offset, value: bytes, partition=0) -> InRecord:
    return InRecord("t.in", partition, offset, 1_700_000_000_000, b"k", value, [("h", b"v")])


def test_enriched_record_carries_the_redacted_text_and_the_copy_goes_with_it(caplog):
    runtime = _runtime({"types": {"EMAIL": "pseudonym", "GIVEN_NAME": "replace"}, "copy_topic": "t.in.redacted"})
    route = runtime.settings.route("t.in")
    catalog = runtime.catalog
    ticket = {"event_id": "e1", "text": "I am Ann, mail ann@x.io", "customer_id": "c1",
              "metadata": {"tier": "gold"}, "unknown_key": "dropped"}
    avro = catalog.encode_input({"event_id": "e2", "text": "I am Bo: bo@x.io", "metadata": {}}, "t.in")
    records = [_rec(0, json.dumps(ticket).encode()), _rec(1, avro), _rec(2, b'{"event_id": "e3", "text": "CRASH"}')]
    with caplog.at_level(logging.DEBUG):
        result = enrich_records(runtime, route, records)
    kinds = [(r.topic, r.kind, r.source.offset) for r in result.out]
    assert kinds == [("t.in.enriched", "output", 0), ("t.in.redacted", "copy", 0),
                     ("t.in.enriched", "output", 1), ("t.in.redacted", "copy", 1), ("t.in.dlq", "dlq", 2)]
    enriched = catalog.decode(result.out[0].value, "t.in.enriched")
    assert re.fullmatch(r"I am <GIVEN_NAME>, mail <EMAIL:k1:[0-9a-f]{16}>", enriched["redacted_text"])
    assert enriched["entities"][0]["text"] == "Ann"  # the entities still name what was found
    copy = json.loads(result.out[1].value)  # JSON in, JSON out: the contract's fields only
    assert copy == {"event_id": "e1", "text": enriched["redacted_text"], "event_type": None,
                    "occurred_at": None, "customer_id": "c1", "metadata": {"tier": "gold"}}
    assert result.out[1].key == b"k" and result.out[1].headers == [("h", b"v")]
    avro_copy = catalog.decode(result.out[3].value, "t.in.redacted")  # Avro in, Avro (InputEvent) out
    assert avro_copy["event_id"] == "e2" and re.fullmatch(r"I am <GIVEN_NAME>: <EMAIL:k1:[0-9a-f]{16}>",
                                                          avro_copy["text"])
    # The key is in no log line, no dead letter, no header.
    assert KEY not in caplog.text
    assert all(KEY.encode() not in (r.value or b"") and all(KEY.encode() not in v for _, v in r.headers or [])
               for r in result.out)
    # A copy the broker refuses is dead-lettered in its place (the enriched record went out).
    with caplog.at_level(logging.DEBUG):
        deliver(runtime, result.out)
    reasons = [dict(r.headers)["__streams.errors.reason"] for r in runtime.producer.sent if r.topic == "t.in.dlq"]
    assert b"copy_rejected" in reasons
    assert KEY not in caplog.text


def test_topics_without_a_policy_publish_null_and_no_copy():
    runtime = _runtime({"types": {"EMAIL": "mask"}})
    settings = Settings(topics=[{"input": "t.in", "labels": {"billing": "money"}}])
    runtime.redactors = settings.redactors()
    result = enrich_records(runtime, runtime.settings.route("t.in"),
                            [_rec(0, b'{"event_id": "e1", "text": "I am Ann"}')])
    assert [r.kind for r in result.out] == ["output"]
    assert runtime.catalog.decode(result.out[0].value, "t.in.enriched")["redacted_text"] is None


def test_the_same_value_gets_the_same_pseudonym_in_two_runtimes_and_another_with_another_key():
    policy = {"types": {"EMAIL": "pseudonym"}}
    texts = []
    for key in (KEY, KEY, OTHER_KEY):
        runtime = _runtime(policy, key)
        result = enrich_records(runtime, runtime.settings.route("t.in"),
                                [_rec(0, b'{"event_id": "e1", "text": "mail ann@x.io"}')])
        texts.append(runtime.catalog.decode(result.out[0].value, "t.in.enriched")["redacted_text"])
    assert texts[0] == texts[1] != texts[2]


def test_a_copy_too_large_dead_letters_the_event_whole():
    runtime = _runtime({"types": {"EMAIL": "pseudonym"}, "copy_topic": "t.in.redacted"})
    runtime.producer.fits = lambda record: record.kind != "copy"
    result = enrich_records(runtime, runtime.settings.route("t.in"),
                            [_rec(0, b'{"event_id": "e1", "text": "mail ann@x.io"}')])
    assert [(r.kind, dict(r.headers)["__streams.errors.reason"]) for r in result.out] == [("dlq", b"output_too_large")]
    assert b"the redacted copy would be" in dict(result.out[0].headers)["__streams.errors.exception.message"]


def test_an_email_or_url_span_covers_the_whole_address():
    """The entity model often tags only an email's local part (`julia.demir` of
    `julia.demir@example.co.uk`): the redaction takes the whole address, never the text or
    punctuation around it, and a hostile run of characters is not scanned without end."""
    text = "Mail julia.demir@example.co.uk. or (see https://shop.example.com/o/123), thanks"
    assert redact(text, [span("EMAIL", 5, 16), span("URL", 44, 60)]) == \
        "Mail <EMAIL>. or (see <URL>), thanks"
    assert redact("name: julia, ok", [span("EMAIL", 6, 11)]) == "name: <EMAIL>, ok"  # no "@": as found
    long = "x" * 10_000 + "@example.com"
    assert redact(long, [span("EMAIL", 0, 3)]) == "<EMAIL>" + long[3:]  # "@" beyond the scan: as found
