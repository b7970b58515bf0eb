"""One security story for every client (issue 23): the librdkafka consumer, producer and admin
client, Faust's aiokafka clients and the schema registry client get the same SASL mechanism,
credentials and TLS files from one set of settings; the health server serves our pages only,
on STREAMS_HEALTH_BIND."""

from __future__ import annotations

import asyncio
import datetime
import http.server
import ipaddress
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.app import create_app, faust_credentials
from streams.broker import free_port
from streams.source.base import ConsumerState
from streams.source.librdkafka import consumer_config
from streams.serde import SchemaCatalog
from streams.settings import Settings

SECRET = "s3cret-pw-sentinel"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Only what a test sets: no STREAMS_KAFKA_*/STREAMS_SCHEMA_REGISTRY_*/STREAMS_HEALTH_*
    (nor Faust's own web variables) from the environment the tests run in."""
    import os

    for name in list(os.environ):
        if name.startswith(("STREAMS_KAFKA_", "STREAMS_SCHEMA_REGISTRY_", "STREAMS_HEALTH_", "WEB_",
                            "APP_WEB_", "STREAMS_SOURCE")):
            monkeypatch.delenv(name)


# -- a small PKI: a CA, a server certificate for 127.0.0.1, a client certificate ----------------

def _write_pki(directory: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, *, ca=False, san=None, usage=None):
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def key_pem(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = cert("streams-test-ca", ca_key, "streams-test-ca", ca_key, ca=True)
    server = cert("127.0.0.1", server_key, "streams-test-ca", ca_key,
                  san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
                  usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = cert("streams-enricher", client_key, "streams-test-ca", ca_key,
                  usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    files = {"ca": ca.public_bytes(serialization.Encoding.PEM),
             "server": server.public_bytes(serialization.Encoding.PEM), "server_key": key_pem(server_key),
             "client": client.public_bytes(serialization.Encoding.PEM), "client_key": key_pem(client_key)}
    paths = {}
    for label, data in files.items():
        paths[label] = directory / f"{label}.pem"
        paths[label].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return _write_pki(tmp_path_factory.mktemp("pki"))


class _Registry(http.server.BaseHTTPRequestHandler):
    """Enough of a schema registry for `get_subjects`: GET /subjects -> []."""

    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps([]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mtls_registry(pki):
    """An https registry on 127.0.0.1 that requires a client certificate signed by the CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    context.load_cert_chain(str(pki["server"]), str(pki["server_key"]))
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda *args: None  # a refused handshake is the point of some tests
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _sasl_ssl(pki, registry_url="mock://security", **extra) -> Settings:
    return Settings(kafka_bootstrap="127.0.0.1:1", kafka_security_protocol="SASL_SSL",
                    kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="enricher",
                    kafka_sasl_password=SECRET, kafka_ssl_cafile=pki["ca"],
                    kafka_ssl_certfile=pki["client"], kafka_ssl_keyfile=pki["client_key"],
                    schema_registry_url=registry_url, **extra)


def _aiokafka_auth(settings: Settings) -> dict:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    return credentials_to_aiokafka_auth(faust_credentials(settings))


# -- PLAINTEXT --------------------------------------------------------------------------------

def test_plaintext_clients_get_no_security_and_the_registry_a_timeout():
    s = Settings(kafka_bootstrap="127.0.0.1:1")
    assert s.librdkafka_config() == {"bootstrap.servers": "127.0.0.1:1", "security.protocol": "plaintext"}
    assert faust_credentials(s) is None
    assert s.schema_registry_config() == {"url": "mock://streams", "timeout": 10.0}
    client = SchemaCatalog.from_settings(s).client
    assert client._rest_client.session.timeout.read == 10.0


# -- SASL_PLAINTEXT without a mechanism: PLAIN, for every client ----------------------------------

def test_sasl_without_a_mechanism_is_plain_for_every_client():
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    s = Settings(kafka_bootstrap="127.0.0.1:1", kafka_security_protocol="SASL_PLAINTEXT",
                 kafka_sasl_username="enricher", kafka_sasl_password=SECRET)
    assert s.kafka_sasl_mechanism == "PLAIN"
    conf = s.librdkafka_config()
    expected = {"security.protocol": "sasl_plaintext", "sasl.mechanism": "PLAIN",
                "sasl.username": "enricher", "sasl.password": SECRET}
    assert {k: conf[k] for k in expected} == expected
    assert not any(k.startswith("ssl.") for k in conf)
    worker = consumer_config(s, ConsumerState())  # the librdkafka source's consumer
    assert {k: worker[k] for k in expected} == expected
    # librdkafka takes the combination (a missing mechanism would have been GSSAPI).
    Consumer(worker).close()
    Producer(conf).flush(0)
    AdminClient(conf)
    auth = _aiokafka_auth(s)  # the agent's aiokafka consumer and producer
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == ("SASL_PLAINTEXT", "PLAIN")
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("enricher", SECRET)
    assert auth["ssl_context"] is None
    assert s.schema_registry_config() == {"url": "mock://streams", "timeout": 10.0}  # no TLS files
    assert SECRET not in repr(s)


@pytest.mark.parametrize("missing", ["username", "password", "both"])
def test_sasl_without_credentials_is_a_settings_error(missing):
    given = {"username": {"kafka_sasl_password": SECRET}, "password": {"kafka_sasl_username": "enricher"},
             "both": {}}[missing]
    with pytest.raises(ValidationError) as err:
        Settings(kafka_security_protocol="SASL_SSL", **given)
    message = str(err.value)
    for name in ("USERNAME", "PASSWORD"):
        assert (f"STREAMS_KAFKA_SASL_{name}" in message) == (missing in (name.lower(), "both")), message
    assert SECRET not in message  # hide_input_in_errors: a settings error never prints values


def test_an_empty_password_is_no_password(monkeypatch):
    monkeypatch.setenv("STREAMS_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_USERNAME", "enricher")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_PASSWORD", "")
    with pytest.raises(ValidationError, match="STREAMS_KAFKA_SASL_PASSWORD"):
        Settings()


@pytest.mark.parametrize("given, protocol, match", [
    ({"kafka_sasl_mechanism": "PLAIN"}, "SSL", "STREAMS_KAFKA_SASL_MECHANISM set"),
    ({"kafka_sasl_username": "enricher", "kafka_sasl_password": SECRET}, "PLAINTEXT",
     "STREAMS_KAFKA_SASL_USERNAME, STREAMS_KAFKA_SASL_PASSWORD set"),
    ({"kafka_ssl_cafile": "/etc/ca.pem"}, "SASL_PLAINTEXT", "STREAMS_KAFKA_SSL_CAFILE set"),
    ({"kafka_ssl_keyfile": "/etc/key.pem"}, "SSL", "STREAMS_KAFKA_SSL_KEYFILE needs STREAMS_KAFKA_SSL_CERTFILE"),
    ({"schema_registry_ssl_keyfile": "/etc/key.pem", "schema_registry_url": "https://r:8081"}, "PLAINTEXT",
     "STREAMS_SCHEMA_REGISTRY_SSL_KEYFILE needs STREAMS_SCHEMA_REGISTRY_SSL_CERTFILE"),
    ({"schema_registry_ssl_cafile": "/etc/ca.pem"}, "PLAINTEXT", "STREAMS_SCHEMA_REGISTRY_URL is not https"),
])
def test_security_settings_a_client_would_ignore_are_refused(given, protocol, match):
    extra = {"kafka_sasl_username": "u", "kafka_sasl_password": "p"} if protocol.startswith("SASL_") else {}
    with pytest.raises(ValidationError, match=match):
        Settings(kafka_security_protocol=protocol, **(extra | given))


# -- SASL_SSL with a CA and a client certificate ----------------------------------------------------

def test_sasl_ssl_files_reach_librdkafka_faust_and_the_registry(pki, mtls_registry):
    from confluent_kafka import Consumer, Producer

    s = _sasl_ssl(pki, mtls_registry)
    files = {"ssl.ca.location": str(pki["ca"]), "ssl.certificate.location": str(pki["client"]),
             "ssl.key.location": str(pki["client_key"])}
    conf = s.librdkafka_config()
    assert conf == {"bootstrap.servers": "127.0.0.1:1", "security.protocol": "sasl_ssl",
                    "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "enricher",
                    "sasl.password": SECRET, **files}
    worker = consumer_config(s, ConsumerState())
    assert {k: worker[k] for k in conf} == conf
    # librdkafka loads the CA, the certificate and its key when a client is created.
    Producer(conf).flush(0)
    Consumer(worker).close()

    auth = _aiokafka_auth(s)
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-256")
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("enricher", SECRET)
    # Faust's ssl context trusts the CA and presents the client certificate: the registry
    # server, which requires one, answers it.
    context: ssl.SSLContext = auth["ssl_context"]
    port = int(mtls_registry.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /subjects HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert tls.recv(64).startswith(b"HTTP/1.0 200")

    # The registry client falls back to the same files and gets through the mutual TLS.
    assert s.schema_registry_config() == {"url": mtls_registry, "timeout": 10.0, **files}
    assert SchemaCatalog.from_settings(s).client.get_subjects() == []


def test_the_registry_requires_the_client_certificate(pki, mtls_registry):
    """The controls for the test above: without the client certificate the registry refuses
    the client; without the CA the client refuses the registry."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    for conf, reason in (({"ssl.ca.location": str(pki["ca"])}, "certificate required"),
                         ({}, "certificate verify failed")):
        client = SchemaRegistryClient({"url": mtls_registry, "max.retries": 0, "timeout": 5, **conf})
        with pytest.raises(Exception, match=reason):
            client.get_subjects()


def test_the_registry_own_tls_files_win_and_keep_their_own_key(pki, tmp_path):
    own_ca = tmp_path / "registry-ca.pem"
    own_ca.write_bytes(pki["ca"].read_bytes())
    s = _sasl_ssl(pki, "https://registry:8081", schema_registry_ssl_cafile=own_ca)
    conf = s.schema_registry_config()
    assert (conf["ssl.ca.location"], conf["ssl.certificate.location"], conf["ssl.key.location"]) == (
        str(own_ca), str(pki["client"]), str(pki["client_key"]))  # the Kafka certificate and key
    bundled = tmp_path / "registry-client.pem"  # a certificate with its key in the same file
    bundled.write_bytes(pki["client"].read_bytes() + pki["client_key"].read_bytes())
    s = _sasl_ssl(pki, "https://registry:8081", schema_registry_ssl_certfile=bundled)
    conf = s.schema_registry_config()
    assert conf["ssl.certificate.location"] == str(bundled) and "ssl.key.location" not in conf
    SchemaCatalog.from_settings(s)  # the client loads the bundled certificate and key
    # An http registry gets no TLS files, not even the Kafka ones.
    assert "ssl.ca.location" not in _sasl_ssl(pki, "http://registry:8081").schema_registry_config()


def test_a_registry_that_never_answers_times_out():
    """confluent-kafka's client has no timeout by default (httpx timeout=None): one that
    accepts the connection and never answers would block the worker for good."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never answers
    try:
        s = Settings(schema_registry_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
                     schema_registry_timeout_s=0.5)
        assert s.schema_registry_config()["timeout"] == 0.5
        client = SchemaRegistryClient(s.schema_registry_config() | {"max.retries": 0})
        started = time.monotonic()
        with pytest.raises(Exception) as err:
            client.get_subjects()
        assert "Timeout" in type(err.value).__name__, repr(err.value)
        assert time.monotonic() - started < 5
    finally:
        silent.close()


# -- the health server: our pages only, on STREAMS_HEALTH_BIND ------------------------------------

FAUST_PAGES = ["/", "/router", "/router/", "/table", "/table/", "/graph", "/graph/", "/performance",
               "/performance/", "/stats/", "/assignment/"]


async def _serve_and_get(app, paths: list[str]) -> tuple[list, dict[str, int]]:
    import aiohttp

    web = app.web
    web.init_server()
    await web.start_server()
    try:
        bound = list(web._runner.addresses)
        port = app.conf.web_port
        statuses = {}
        async with aiohttp.ClientSession() as session:
            for path in paths:
                async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                    statuses[path] = resp.status
        return bound, statuses
    finally:
        await web.stop_server()


@pytest.mark.parametrize("source", ["faust", "librdkafka"])
def test_the_web_server_serves_our_pages_only_on_the_health_bind(monkeypatch, source):
    # Faust reads these from the environment, over what it is given; they must change nothing
    # (WEB_PORT is what Kubernetes sets in every pod when the namespace has a Service "web").
    monkeypatch.setenv("WEB_PORT", "tcp://10.0.0.1:80")
    monkeypatch.setenv("WEB_BIND", "0.0.0.0")
    monkeypatch.setenv("APP_WEB_TABLES_ENABLED", "true")
    monkeypatch.setenv("APP_WEB_ROUTER_ENABLED", "true")
    monkeypatch.setenv("APP_WEB_STATS_ENABLED", "true")
    port = free_port()
    app = create_app(Settings(source=source, health_port=port, health_bind="127.0.0.1"))
    assert (app.conf.web_port, app.conf.web_bind) == (port, "127.0.0.1")
    assert list(app.boot_strategy.web_server())  # the server starts with the worker
    bound, statuses = asyncio.run(_serve_and_get(app, ["/livez", "/readyz", "/metrics", *FAUST_PAGES]))
    assert bound == [("127.0.0.1", port)]
    assert statuses["/livez"] == 200 and statuses["/metrics"] == 200
    assert statuses["/readyz"] == 503  # no runtime yet
    assert {p: statuses[p] for p in FAUST_PAGES} == {p: 404 for p in FAUST_PAGES}
    routes = {r.resource.canonical for r in app.web.web_app.router.routes()}
    assert routes == {"/livez", "/readyz", "/metrics"}


def test_health_port_zero_turns_the_server_off_even_when_faust_is_told_otherwise():
    app = create_app(Settings(source="librdkafka", health_port=0))
    app.conf.web_enabled = True  # what `faust -A streams.app worker` does (--with-web, the default)
    assert list(app.boot_strategy.web_server()) == []
