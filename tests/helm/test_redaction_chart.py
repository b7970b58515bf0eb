"""The chart's side of redaction (issue 28): a route's policy reaches STREAMS_TOPICS, the
pseudonym key only ever by reference to an existing Secret, and values that cannot work fail
rendering."""

from __future__ import annotations

import json
import os

import pytest

from streams.settings import Settings
from tests.helm.chart import config, container, env_of, pod_specs, render, render_error

ROUTE = ("config.topics[0].input=support.tickets", "config.topics[0].redact.types.EMAIL=pseudonym",
         "config.topics[0].redact.copy_topic=support.tickets.redacted")


def test_the_policy_and_the_key_secret_reach_the_worker_and_the_replay_job(monkeypatch):
    docs = render(None, *ROUTE, "redaction.existingSecret=pii-key", "redaction.keyId=k2",
                  "replay.enabled=true", "replay.topic=support.tickets", "replay.from=2026-01-01T00:00:00Z")
    cfg = config(docs)
    assert json.loads(cfg["STREAMS_TOPICS"])[0]["redact"] == {
        "types": {"EMAIL": "pseudonym"}, "copy_topic": "support.tickets.redacted"}
    assert cfg["STREAMS_REDACTION_KEY_ID"] == "k2" and "STREAMS_REDACTION_KEY" not in cfg
    specs = pod_specs(docs)
    assert {where.split("/")[0] for where, _ in specs} == {"Deployment", "Job"}
    for where, spec in specs:
        name = "worker" if where.startswith("Deployment") else "replay"
        ref = env_of(container(spec, name))["STREAMS_REDACTION_KEY"]
        assert ref == {"name": "STREAMS_REDACTION_KEY",
                       "valueFrom": {"secretKeyRef": {"name": "pii-key", "key": "redaction-key"}}}, where
    # The worker's settings accept what the pod sees (a key of the right length from the Secret).
    for name in list(os.environ):
        if name.startswith("STREAMS_"):
            monkeypatch.delenv(name)
    for name, value in cfg.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STREAMS_REDACTION_KEY", "a-key-from-the-secret-of-32-bytes")
    settings = Settings()
    assert settings.route("support.tickets").copy_topic == "support.tickets.redacted"
    assert settings.redactors()["support.tickets"].pseudonymizer.key_id == "k2"


def test_without_pseudonyms_no_secret_is_needed():
    docs = render(None, "config.topics[0].input=t", "config.topics[0].redact.types.EMAIL=mask")
    worker = next(spec for where, spec in pod_specs(docs) if where.startswith("Deployment"))
    assert "STREAMS_REDACTION_KEY" not in env_of(container(worker, "worker"))


@pytest.mark.parametrize("sets, message", [
    (ROUTE, "the redaction policy of support.tickets uses pseudonym: set redaction.existingSecret"),
    (("config.topics[0].input=t", "config.topics[0].redact.default=pseudonym"),
     "the redaction policy of t uses pseudonym"),
    (("redaction.key=not-here",), "redaction.key: the chart takes no keys as values"),
])
def test_redaction_values_that_cannot_work_fail_rendering(sets, message):
    assert message in render_error(None, *sets)
