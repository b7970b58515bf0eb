"""Grounded values (streams/engine/grounding.py): a number or string counts as grounded only when
the text writes it, in the formats people write amounts and ids in; near misses do not."""

from __future__ import annotations

from decimal import Decimal

import pytest

from streams import samples
from streams.engine.grounding import grounded, grounded_number, grounded_string, numbers_in, readings

TICKET = samples.events("support.tickets")[0]["text"]  # "... two payments of $84.20 ..."


@pytest.mark.parametrize("value, text", [
    (84.2, "two payments of $84.20 on the same day"),
    (84.2, "84,20 EUR"),
    (84.2, "EUR84.2"),
    (84, "84.00"),
    (1299.0, "total 1,299.00 today"),
    (1299, "total 1.299,00 \u20ac"),
    (1299, "costs 1,299"),
    (1.299, "costs 1,299"),  # a lone separator before 3 digits reads both ways
    (1299000, "1,299,000 units"),
    (1234567890, "order #1234567890"),
    (1234567890, "order 1234567890."),
    (20931, "Invoice INV-20931 lists"),
    (120, "I was billed $120."),
    (-5, "a balance of -$5 left"),
    (0.5, "0.5 kg"),
])
def test_numbers_written_in_common_formats_are_grounded(value, text):
    assert grounded_number(value, text) and grounded(value, text)


@pytest.mark.parametrize("value, text", [
    (84.21, "two payments of $84.20"),
    (8420, "two payments of $84.20"),
    (84.2, "842"),
    (555, "call 312-555-0147"),  # one part of a phone number
    (5, "on 2024-05-01"),  # one part of a date
    (5, "a balance of -$5 left"),  # the sign is part of the number
    (1299, "1.2.99"),
    (1e15, "no numbers here"),
    (12.5, ""),
])
def test_other_numbers_are_not(value, text):
    assert not grounded_number(value, text)


def test_readings_of_a_token():
    assert readings("84.20") == {Decimal("84.20")}
    assert readings("1,299") == {Decimal("1299"), Decimal("1.299")}
    assert readings("1,299.00") == {Decimal("1299.00")}
    assert readings("1.2.3") == set()
    assert numbers_in("$84.20 and 312-555-0147, INV-20931") == {Decimal("84.20"), Decimal("20931")}


@pytest.mark.parametrize("value, grounded_in_text", [
    ("55821", True), ("order 55821", True), ("ORDER\t 55821", True), ("maria", True),
    ("5582", False), ("55821 they", False), ("order 55822", False), ("", False), ("   ", False),
])
def test_strings_occur_case_and_whitespace_aside_on_word_boundaries(value, grounded_in_text):
    text = "I would like to return the running shoes from order  55821, they're too small. Maria's"
    assert grounded_string(value, text) is grounded_in_text


def test_only_strings_and_numbers_are_grounded():
    assert grounded(84.2, TICKET) and grounded("$84.20", TICKET) and grounded("Maria Gonzalez", TICKET)
    assert not grounded(True, "True 1") and not grounded(None, "None") and not grounded(["84.20"], TICKET)
    assert not grounded(float("nan"), "nan NaN")
