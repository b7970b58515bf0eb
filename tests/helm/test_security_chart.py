"""The chart's side of one security story (issue 23): the registry's TLS files and timeout,
and every scenario's rendered environment is one the worker's settings accept."""

from __future__ import annotations

import os

import pytest

from streams.settings import Settings
from tests.helm.chart import SCENARIOS, config, container, env_of, pod_specs, render, render_error

REGISTRY_TLS = ("schemaRegistry.tls.existingSecret=registry-tls", "schemaRegistry.tls.certKey=tls.crt",
                "schemaRegistry.tls.keyKey=tls.key")


def test_the_registry_gets_a_timeout_and_by_default_no_tls_files_of_its_own():
    docs = render("sasl")
    cfg = config(docs)
    assert cfg["STREAMS_SCHEMA_REGISTRY_TIMEOUT_S"] == "10"
    assert not any(k.startswith("STREAMS_SCHEMA_REGISTRY_SSL_") for k in cfg)  # the Kafka ones serve
    assert config(render("sasl", "schemaRegistry.timeoutS=2.5"))["STREAMS_SCHEMA_REGISTRY_TIMEOUT_S"] == "2.5"


def test_the_registry_tls_secret_is_mounted_for_the_worker_and_the_replay_job():
    docs = render("sasl", *REGISTRY_TLS, "replay.enabled=true", "replay.topic=orders.notes",
                  "replay.from=2026-01-01T00:00:00Z")
    cfg = config(docs)
    assert (cfg["STREAMS_SCHEMA_REGISTRY_SSL_CAFILE"], cfg["STREAMS_SCHEMA_REGISTRY_SSL_CERTFILE"],
            cfg["STREAMS_SCHEMA_REGISTRY_SSL_KEYFILE"]) == (
        "/etc/streams/registry-tls/ca.crt", "/etc/streams/registry-tls/tls.crt", "/etc/streams/registry-tls/tls.key")
    specs = pod_specs(docs)
    assert {where.split("/")[0] for where, _ in specs} == {"Deployment", "Job"}
    for where, spec in specs:
        volume = next(v for v in spec["volumes"] if v["name"] == "registry-tls")
        assert volume["secret"]["secretName"] == "registry-tls", where
        name = "worker" if where.startswith("Deployment") else "replay"
        mount = next(m for m in container(spec, name)["volumeMounts"] if m["name"] == "registry-tls")
        assert (mount["mountPath"], mount["readOnly"]) == ("/etc/streams/registry-tls", True), where


@pytest.mark.parametrize("sets, message", [
    (("schemaRegistry.url=http://registry:8081", "schemaRegistry.tls.existingSecret=registry-tls"),
     "schemaRegistry.tls.existingSecret is set but schemaRegistry.url"),
    (("schemaRegistry.tls.existingSecret=registry-tls", "schemaRegistry.tls.certKey=tls.crt"),
     "schemaRegistry.tls.certKey and schemaRegistry.tls.keyKey go together"),
    (("schemaRegistry.tls.certKey=tls.crt", "schemaRegistry.tls.keyKey=tls.key"),
     "schemaRegistry.tls.certKey/keyKey need schemaRegistry.tls.existingSecret"),
    (("schemaRegistry.timeoutS=0",), "schemaRegistry.timeoutS must be greater than 0"),
])
def test_registry_tls_values_that_cannot_work_fail_rendering(sets, message):
    assert message in render_error("sasl", *sets)


@pytest.mark.parametrize("scenario, sets", [(s, ()) for s in SCENARIOS] + [("sasl", REGISTRY_TLS)])
def test_the_worker_settings_accept_every_rendered_environment(monkeypatch, scenario, sets):
    """The ConfigMap and the Secret references of the worker, as the pod would see them: the
    settings' start-up checks (SASL credentials, TLS files with a TLS protocol...) pass."""
    for name in list(os.environ):
        if name.startswith("STREAMS_"):
            monkeypatch.delenv(name)
    docs = render(scenario, *sets)
    for name, value in config(docs).items():
        monkeypatch.setenv(name, value)
    worker = next(spec for where, spec in pod_specs(docs) if where.startswith("Deployment"))
    for name, var in env_of(container(worker, "worker")).items():
        if name.startswith("STREAMS_"):
            monkeypatch.setenv(name, var.get("value", "from-a-secret"))
    settings = Settings()
    settings.librdkafka_config()
    conf = settings.schema_registry_config()
    if scenario == "sasl":
        assert conf["ssl.ca.location"].startswith("/etc/streams/registry-tls/" if sets else "/etc/streams/kafka-tls/")
