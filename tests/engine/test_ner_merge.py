"""merge_adjacent: sub-word pieces of one entity become one span; separate entities stay apart."""

from __future__ import annotations

import pytest

from streams.engine.ner import merge_adjacent
from streams.engine.types import Entity


def pieces(text: str, label: str, parts: list[str], scores: list[float]) -> list[Entity]:
    """Entities for `parts`, found left to right in `text`."""
    out, pos = [], 0
    for part, score in zip(parts, scores):
        start = text.index(part, pos)
        out.append(Entity(label, part, start, start + len(part), score))
        pos = start + len(part)
    return out


def test_touching_email_pieces_merge():
    text = "Reach me at maria.gonzalez@example.com please"
    ents = pieces(text, "EMAIL", ["maria.", "gonzalez@", "example", ".", "com"], [0.5, 0.6, 0.7, 0.8, 0.9])
    [email] = merge_adjacent(text, ents)
    assert (email.text, email.start, email.end) == ("maria.gonzalez@example.com", 12, 38)
    assert email.text == text[email.start:email.end]
    assert email.score == pytest.approx(0.7)  # mean of the five pieces


def test_untagged_at_sign_is_bridged_for_email():
    text = "mail maria@example.com"
    ents = pieces(text, "EMAIL", ["maria", "example.com"], [0.4, 0.8])
    [email] = merge_adjacent(text, ents)
    assert (email.text, email.start, email.end, email.score) == ("maria@example.com", 5, 22, pytest.approx(0.6))


def test_at_sign_is_not_bridged_for_other_labels():
    text = "maria@example"
    ents = pieces(text, "GIVEN_NAME", ["maria", "example"], [0.5, 0.5])
    assert merge_adjacent(text, ents) == ents


def test_two_emails_separated_by_a_space_stay_two():
    text = "a@b.com c@d.com"
    ents = pieces(text, "EMAIL", ["a@b.com", "c@d.com"], [0.9, 0.9])
    assert [e.text for e in merge_adjacent(text, ents)] == ["a@b.com", "c@d.com"]


def test_city_words_joined_by_one_space_merge():
    text = "I live in New York now"
    ents = pieces(text, "CITY", ["New", "York"], [0.8, 0.6])
    [city] = merge_adjacent(text, ents)
    assert (city.label, city.text, city.start, city.end) == ("CITY", "New York", 10, 18)
    assert city.score == pytest.approx(0.7)


def test_wider_gaps_do_not_merge():
    for text in ("New  York", "New\n\nYork", "New, York"):
        ents = pieces(text, "CITY", ["New", "York"], [0.8, 0.6])
        assert len(merge_adjacent(text, ents)) == 2, repr(text)


def test_different_labels_never_merge():
    text = "MariaGonzalez Maria Gonzalez"
    ents = [Entity("GIVEN_NAME", "Maria", 0, 5, 0.9), Entity("SURNAME", "Gonzalez", 5, 13, 0.9),
            Entity("GIVEN_NAME", "Maria", 14, 19, 0.9), Entity("SURNAME", "Gonzalez", 20, 28, 0.9)]
    assert merge_adjacent(text, ents) == ents


def test_mean_score_over_three_pieces():
    text = "San Diego Bay"
    ents = pieces(text, "CITY", ["San", "Diego", "Bay"], [0.3, 0.6, 0.9])
    [city] = merge_adjacent(text, ents)
    assert city.text == "San Diego Bay"
    assert city.score == pytest.approx(0.6)
