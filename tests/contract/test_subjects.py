"""Subjects follow Confluent's TopicNameStrategy (`<topic>-value`); schemas are registered when
auto-register is on (dev) and only looked up when it is off (production)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from streams.serde import SchemaCatalog
from streams.serde.registry import SchemaError, subject
from streams.settings import REPO_ROOT, Settings

INPUTS = ["orders.notes", "support.tickets"]
OUTPUTS = [f"{t}.enriched" for t in INPUTS]
SUBJECTS = sorted(f"{t}-value" for t in INPUTS + OUTPUTS)


def make_catalog(**kwargs) -> SchemaCatalog:
    return SchemaCatalog(f"mock://contract-{uuid.uuid4().hex}", REPO_ROOT / "schemas", INPUTS, OUTPUTS,
                         **kwargs)


def test_subject_is_topic_name_strategy():
    assert subject("support.tickets.enriched") == "support.tickets.enriched-value"
    assert subject("orders.notes") == "orders.notes-value"


def test_auto_register_registers_every_subject_once():
    catalog = make_catalog(auto_register=True)
    catalog.ensure_registered()
    catalog.ensure_registered()  # idempotent
    assert sorted(catalog.client.get_subjects()) == SUBJECTS
    for topic in OUTPUTS:
        versions = catalog.client.get_versions(subject(topic))
        assert versions == [1], topic
        registered = catalog.client.get_latest_version(subject(topic)).schema
        assert registered.schema_str == catalog.enriched_schema.schema_str


def test_lookup_only_uses_what_is_registered_and_registers_nothing():
    catalog = make_catalog(auto_register=False)
    for topic in INPUTS:  # an operator registered these, the worker registers nothing
        catalog.client.register_schema(subject(topic), catalog.input_schema)
    for topic in OUTPUTS:
        catalog.client.register_schema(subject(topic), catalog.enriched_schema)
    ids = {s: catalog.client.get_latest_version(s).schema_id for s in SUBJECTS}
    catalog.ensure_registered()
    assert sorted(catalog.client.get_subjects()) == SUBJECTS
    assert {s: catalog.client.get_versions(s) for s in SUBJECTS} == {s: [1] for s in SUBJECTS}
    value = catalog.encode_enriched(_minimal_enriched(), OUTPUTS[0])
    assert int.from_bytes(value[1:5], "big") == ids[f"{OUTPUTS[0]}-value"]


def test_lookup_only_names_the_missing_subject():
    catalog = make_catalog(auto_register=False)
    catalog.client.register_schema(subject(INPUTS[0]), catalog.input_schema)
    catalog.client.register_schema(subject(INPUTS[1]), catalog.input_schema)
    with pytest.raises(SchemaError, match=r"orders\.notes\.enriched-value"):
        catalog.ensure_registered()


@pytest.mark.parametrize("env, expected", [({}, True), ({"STREAMS_SCHEMA_AUTO_REGISTER": "false"}, False),
                                           ({"STREAMS_SCHEMA_AUTO_REGISTER": "true"}, True)])
def test_auto_register_setting_reaches_the_catalog(monkeypatch, env, expected):
    monkeypatch.delenv("STREAMS_SCHEMA_AUTO_REGISTER", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("STREAMS_SCHEMA_REGISTRY_URL", f"mock://contract-{uuid.uuid4().hex}")
    settings = Settings()
    assert settings.schema_auto_register is expected
    assert SchemaCatalog.from_settings(settings).auto_register is expected


def _minimal_enriched() -> dict:
    return {"event_id": "e-1", "event_type": None, "customer_id": None, "occurred_at": None,
            "source": {"topic": INPUTS[0], "partition": 0, "offset": 1, "timestamp": None},
            "entities": [], "classification": {"label": "gift", "score": 1.0, "scores": []},
            "models": [], "processed_at": datetime.now(timezone.utc), "inference_ms": 1.0}
