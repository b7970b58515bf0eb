"""Every error has one home: this table says what the worker does with each class of failure.

- **bad data** (`DLQ`): the record itself is wrong. It is dead-lettered with its reason and
  provenance, its neighbours go on, its offset is committed.
- **broken dependency** (`RETRY`): a broker, the schema registry or the accelerator is down
  or overloaded. Nothing is dead-lettered: the worker keeps the batch, pauses, retries with
  backoff, reports not-ready on /readyz and in `streams.worker.degraded`, and never commits past it.
- **fatal** (`EXIT`): retrying cannot help (fenced, refused credentials, a model that fails on
  every input after a reload, invalid configuration). The process exits non-zero without
  committing the batch, with a message that says what to fix; the batch is re-delivered.

`ERROR_TABLE` is the table docs/delivery.md shows (a test keeps the two equal)."""

from __future__ import annotations

import re
from typing import Literal

from confluent_kafka import KafkaError

Action = Literal["DLQ", "RETRY", "EXIT"]


class RetriableError(RuntimeError):
    """A dependency failed; the same batch will be retried. `dependency` names it."""

    def __init__(self, dependency: str, message: str):
        super().__init__(f"{dependency}: {message}")
        self.dependency = dependency


class FatalError(RuntimeError):
    """Retrying cannot help: exit non-zero without committing. The message says what to fix."""


# (what happened, where it is detected, action, DLQ reason or what the worker does)
ERROR_TABLE: list[tuple[str, str, Action, str]] = [
    ("value is not UTF-8 / not JSON / not an object", "decode", "DLQ", "invalid_utf8, invalid_json, not_an_object"),
    ("JSON that no parser limit accepts (huge integers, deep nesting)", "decode", "DLQ", "invalid_json"),
    ("required field missing or of the wrong type", "decode", "DLQ", "missing_field, invalid_field"),
    ("value of 0 bytes / over STREAMS_MAX_TEXT_BYTES", "decode", "DLQ", "empty_value, too_large"),
    ("Avro frame truncated or corrupt", "decode", "DLQ", "invalid_avro"),
    ("Avro schema id unknown to the registry (404)", "decode", "DLQ", "unknown_schema_id"),
    ("record the Kafka client cannot decode (corrupt or lying batch)", "take", "DLQ",
     "undecodable_record, after STREAMS_UNDECODABLE_REFETCHES re-fetches, by coordinates"),
    ("header name that is not UTF-8", "take", "DLQ", "no: the event is enriched; its headers are "
     "replaced by `__streams.input.headers.omitted`"),
    ("one event fails in the model while a probe text passes", "infer", "DLQ", "inference_error"),
    ("LLM output cut off by the token cap after one retry", "infer", "DLQ", "llm_truncated"),
    ("LLM output not the schema's JSON, or a non-finite number in a field that cannot be null",
     "infer", "DLQ", "llm_invalid_output"),
    ("text longer than STREAMS_LLM_MAX_INPUT_TOKENS tokens (an LLM topic)", "infer", "DLQ",
     "too_long_for_model"),
    ("enriched record cannot be encoded", "encode", "DLQ", "encode_error"),
    ("enriched record (or its redacted copy) larger than the producer's limit", "produce", "DLQ", "output_too_large"),
    ("enriched record refused by the broker for this record only (too large, invalid)",
     "produce", "DLQ", "output_rejected"),
    ("redacted copy (redact.copy_topic) refused by the broker for this record only", "produce", "DLQ",
     "copy_rejected: the enriched record went out"),
    ("dead letter larger than the limit / refused as too large", "produce", "DLQ",
     "sent without the original value or headers; `__streams.errors.omitted` says which"),
    ("a null value (tombstone)", "decode", "DLQ", "no: skipped and counted (streams.events.tombstones)"),
    ("schema registry unreachable, timeout, 5xx, 429", "decode, encode", "RETRY",
     "registry: every call has a timeout (STREAMS_SCHEMA_REGISTRY_TIMEOUT_S)"),
    ("broker unreachable, delivery timed out, leader changes", "produce", "RETRY", "broker"),
    ("the model fails on a probe text too (accelerator error)", "infer", "RETRY",
     "accelerator: the models are reloaded once; if they still fail, EXIT"),
    ("schema registry refuses the credentials (401, 403)", "decode, encode", "EXIT", "fix STREAMS_SCHEMA_REGISTRY_AUTH"),
    ("the output topic's subject is missing from the registry (404)", "encode", "EXIT",
     "register the schema, or STREAMS_SCHEMA_AUTO_REGISTER=true"),
    ("a codec the Kafka client cannot decompress (lz4, zstd, snappy without cramjam)", "take", "EXIT",
     "install cramjam (`make setup` does); checked at start-up too"),
    ("the idempotent producer's state is lost (fenced epoch, sequence gap; e.g. after an outage)",
     "produce", "RETRY", "broker: a new producer sends the batch again, once; if it is fenced too, EXIT"),
    ("authorization or authentication failed, invalid configuration",
     "produce", "EXIT", "fix the credentials, ACLs or settings named in the message"),
    ("models fail on every input after a reload", "infer", "EXIT", "check the device and the model"),
]


# --- Kafka delivery errors -------------------------------------------------------------------
# Refused for this one record: retrying the same bytes gets the same answer.
_RECORD_REJECTED = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG, KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_TIMESTAMP,
}
# Whoever runs the worker must fix something: retrying cannot help.
_FATAL = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION, KafkaError.PRODUCER_FENCED, KafkaError._FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.INVALID_CONFIG, KafkaError._FATAL, KafkaError.UNSUPPORTED_VERSION,
    KafkaError.INVALID_REQUIRED_ACKS, KafkaError.POLICY_VIOLATION,
}


# The idempotent producer's own state is lost (its epoch fenced, sequence numbers out of order):
# librdkafka makes such errors fatal for the producer instance. After a broker outage that is
# what a broker answers the producer's epoch bump (tansu does), so a new producer (a new
# producer id) sends the records again, once per batch; if that one fails the same way, EXIT.
PRODUCER_STATE_LOST = {
    KafkaError.PRODUCER_FENCED, KafkaError._FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.UNKNOWN_PRODUCER_ID, KafkaError._FATAL,
    KafkaError._GAPLESS_GUARANTEE,
}


def producer_state_lost(err: KafkaError) -> bool:
    return err.code() in PRODUCER_STATE_LOST or (err.fatal() and err.code() not in _FATAL - PRODUCER_STATE_LOST)


def classify_delivery(err: KafkaError) -> Action:
    """What a failed delivery report means: DLQ (this record is refused), EXIT (fatal), or
    RETRY (anything else: librdkafka already retried within message.timeout.ms; the broker
    or the network is still the problem, so the worker waits it out)."""
    if err.fatal() or err.code() in _FATAL:
        return "EXIT"
    if err.code() in _RECORD_REJECTED:
        return "DLQ"
    return "RETRY"


# --- Consumer errors -------------------------------------------------------------------------
# The client fetched the record but cannot hand it out: after a few re-fetches it is data.
RECORD_UNDECODABLE = {
    KafkaError._BAD_COMPRESSION, KafkaError._BAD_MSG, KafkaError.INVALID_MSG,
    KafkaError._VALUE_DESERIALIZATION, KafkaError._KEY_DESERIALIZATION,
}


def consumer_error_is_fatal(err: KafkaError) -> bool:
    return err.fatal() or err.code() in _FATAL


# --- Text that reaches a log line or a DLQ header --------------------------------------------
_QUOTED = re.compile(r"""('(?:[^'\\]|\\.){12,}'|"(?:[^"\\]|\\.){12,}")""")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def sanitize(message: str, limit: int = 500) -> str:
    """A message safe for a log line or a header: quoted strings of 12+ characters (which may
    quote the event's text) replaced by their length, control characters and newlines escaped,
    at most `limit` characters."""
    message = _QUOTED.sub(lambda m: f"<{len(m.group(0)) - 2} chars>", message)
    message = _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), message)
    return message if len(message) <= limit else message[: limit - 1] + "…"


def describe(exc: BaseException, limit: int = 500) -> str:
    """`Class: message`, sanitized."""
    return sanitize(f"{type(exc).__name__}: {exc}", limit)
