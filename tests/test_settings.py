"""One typed settings object from STREAMS_* variables; security reaches both Kafka clients."""

import json

import pytest
from confluent_kafka import Consumer, KafkaException, Producer

from streams.source.base import ConsumerState
from streams.source.librdkafka import consumer_config
from streams.settings import Settings


def test_defaults_target_the_embedded_broker(monkeypatch):
    for var in ("STREAMS_KAFKA_BOOTSTRAP", "STREAMS_TOPICS"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert [(r.input, r.output, r.dlq) for r in s.topics] == [
        ("orders.notes", "orders.notes.enriched", "orders.notes.dlq"),
        ("support.tickets", "support.tickets.enriched", "support.tickets.dlq")]
    assert "billing" in s.route("support.tickets").labels
    assert "gift" in s.route("orders.notes").labels


def test_topics_and_labels_from_environment(monkeypatch):
    monkeypatch.setenv("STREAMS_TOPICS", json.dumps(
        [{"input": "crm.emails", "output": "crm.tagged", "labels": {"sales": "wants to buy"}}]))
    monkeypatch.setenv("STREAMS_MAX_BATCH", "64")
    s = Settings()
    route = s.route("crm.emails")
    assert (route.output, route.dlq, route.labels) == ("crm.tagged", "crm.emails.dlq", {"sales": "wants to buy"})
    assert s.max_batch == 64


def test_sasl_settings_reach_both_clients_and_secrets_stay_hidden(monkeypatch):
    monkeypatch.setenv("STREAMS_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_USERNAME", "enricher")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_PASSWORD", "s3cret-pw")
    s = Settings()
    conf = s.librdkafka_config()
    assert conf["security.protocol"] == "sasl_plaintext"
    assert (conf["sasl.mechanism"], conf["sasl.username"], conf["sasl.password"]) == (
        "SCRAM-SHA-512", "enricher", "s3cret-pw")
    worker_conf = consumer_config(s, ConsumerState())  # the worker's consumer
    assert (worker_conf["sasl.mechanism"], worker_conf["sasl.username"], worker_conf["sasl.password"]) == (
        "SCRAM-SHA-512", "enricher", "s3cret-pw")
    Consumer(worker_conf).close()  # librdkafka accepts the combination
    assert "s3cret-pw" not in repr(s) and "s3cret-pw" not in str(s.model_dump())


def test_ssl_settings_reach_both_clients(monkeypatch):
    import certifi

    monkeypatch.setenv("STREAMS_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("STREAMS_KAFKA_SSL_CAFILE", certifi.where())
    s = Settings()
    conf = s.librdkafka_config()
    assert (conf["security.protocol"], conf["ssl.ca.location"]) == ("ssl", certifi.where())
    worker_conf = consumer_config(s, ConsumerState())
    assert (worker_conf["security.protocol"], worker_conf["ssl.ca.location"]) == ("ssl", certifi.where())
    # librdkafka loads the CA file when a client is created: a wrong path fails here.
    Consumer(worker_conf).close()
    Producer(conf)
    monkeypatch.setenv("STREAMS_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem")
    with pytest.raises(KafkaException, match="ssl.ca.location"):
        Producer(Settings().librdkafka_config())


@pytest.mark.parametrize("value, expected", [(None, None), ("true", True), ("false", False), ("1", True)])
def test_overlap_tokenization_setting(monkeypatch, value, expected):
    monkeypatch.delenv("STREAMS_OVERLAP_TOKENIZATION", raising=False)
    if value is not None:
        monkeypatch.setenv("STREAMS_OVERLAP_TOKENIZATION", value)
    assert Settings().overlap_tokenization is expected  # unset: auto (on with CUDA, off on CPU)


def test_runtime_load_passes_overlap_tokenization_and_warms_the_engine_up(monkeypatch):
    """Runtime.load hands the setting to EncoderEngine.load and warms the models up before any event."""
    from streams import engine as engine_package
    from streams.runtime import Runtime
    from streams.telemetry import Telemetry

    calls: list = []

    class FakeEngine(engine_package.NoopEngine):
        device, load_seconds, models, runs_models = "cpu", 1.0, [], True

        def warm_up(self):
            calls.append("warm_up")
            self.load_seconds += 0.5
            return 0.5

    def load(*args, **kwargs):
        calls.append(("load", kwargs["overlap_tokenization"], kwargs["quantize"]))
        return FakeEngine()

    class Stub:  # catalog and producer: no registry, no broker here
        pass

    monkeypatch.setattr(engine_package.EncoderEngine, "load", load)
    monkeypatch.setenv("STREAMS_OVERLAP_TOKENIZATION", "true")
    monkeypatch.setenv("STREAMS_QUANTIZE", "int8")
    runtime = Runtime.load(Settings(), telemetry=Telemetry.disabled(), catalog=Stub(), producer=Stub())
    assert calls == [("load", True, "int8"), "warm_up"]
    assert runtime.engine.load_seconds == 1.5  # the warm-up counts as loading
    calls.clear()
    monkeypatch.setenv("STREAMS_ENGINE", "noop")  # no models, nothing to warm up
    Runtime.load(Settings(), telemetry=Telemetry.disabled(), catalog=Stub(), producer=Stub())
    assert calls == []


def test_quantize_setting_takes_none_or_int8(monkeypatch):
    assert Settings().quantize == "none"
    monkeypatch.setenv("STREAMS_QUANTIZE", "int8")
    assert Settings().quantize == "int8"
    monkeypatch.setenv("STREAMS_QUANTIZE", "fp4")
    with pytest.raises(ValueError, match="quantize"):
        Settings()
