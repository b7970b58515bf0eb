"""The error classes: the table in docs/delivery.md is ERROR_TABLE, and messages are sanitized."""

from __future__ import annotations

import re

from confluent_kafka import KafkaError

from streams.errors import ERROR_TABLE, classify_delivery, describe, producer_state_lost, sanitize
from streams.settings import REPO_ROOT


def test_the_docs_table_is_the_code_table():
    readme = (REPO_ROOT / "docs" / "delivery.md").read_text()
    block = re.search(r"<!-- error-table:start -->\n(.*?)\n<!-- error-table:end -->", readme, re.S).group(1)
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in block.splitlines()[2:]]
    assert rows == [list(r) for r in ERROR_TABLE]


def test_every_dlq_reason_the_code_writes_is_in_the_table():
    code = "\n".join(p.read_text() for p in (REPO_ROOT / "streams").rglob("*.py"))
    written = set(re.findall(r'DecodeError\("([a-z_0-9]+)"', code)) | {"undecodable_record", "output_too_large",
                                                                        "output_rejected", "copy_rejected", "encode_error",
                                                                        "inference_error"}
    table = " ".join(detail for *_, detail in ERROR_TABLE)
    assert not [r for r in written if r not in table]


def test_delivery_errors_are_sorted():
    assert classify_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)) == "DLQ"
    assert classify_delivery(KafkaError(KafkaError.INVALID_RECORD)) == "DLQ"
    assert classify_delivery(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)) == "EXIT"
    assert classify_delivery(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED)) == "EXIT"
    assert classify_delivery(KafkaError(KafkaError._MSG_TIMED_OUT)) == "RETRY"
    assert classify_delivery(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)) == "RETRY"
    assert producer_state_lost(KafkaError(KafkaError.PRODUCER_FENCED))
    assert not producer_state_lost(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))


def test_messages_are_sanitized_before_logs_and_headers():
    text = 'ValueError: "maria gonzalez lives at 5 elm street" is not\nvalid\x1b[31m'
    clean = sanitize(text)
    assert "maria" not in clean and "\n" not in clean and "\x1b" not in clean
    assert "<36 chars>" in clean and "\\n" in clean
    assert len(sanitize("x" * 5000, 100)) == 100
    assert describe(KeyError("k")) == "KeyError: 'k'"
